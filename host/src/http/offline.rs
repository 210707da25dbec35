//! The seam offline policy suites use: where a request goes once the chain
//! let it through, when it must not leave the process.

use std::future::Future;
use std::pin::Pin;

use http::{Request, Response};

use super::body::ProxyBody;
use crate::discovery::Endpoint;

/// An upstream inside the process. It gets the request exactly as the
/// pipeline would have sent it (after every plugin's changes and the route),
/// the hostname of the service it went to and the endpoint picked, and
/// answers it.
pub trait OfflineUpstream: Send + Sync {
    fn send(
        &self,
        req: Request<ProxyBody>,
        service: String,
        endpoint: Endpoint,
    ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;
}
