//! The client side: requests to service endpoints, pooled per endpoint.
//!
//! The upstream protocol follows the downstream one: HTTP/2 clients are
//! forwarded over h2c (prior knowledge), HTTP/1.1 clients over HTTP/1.1.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error};
use hyper_util::rt::TokioExecutor;

use super::body::ProxyBody;

pub struct Upstream {
    h1: Client<HttpConnector, ProxyBody>,
    h2: Client<HttpConnector, ProxyBody>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new()
    }
}

impl Upstream {
    pub fn new() -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Upstream { h1, h2 }
    }

    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        h2: bool,
    ) -> Result<Response<Incoming>, Error> {
        if h2 {
            self.h2.request(req).await
        } else {
            self.h1.request(req).await
        }
    }
}
