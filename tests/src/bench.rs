//! What the criterion benchmarks share: the request facts of the `bench`
//! namespace's `api.bench` service, the pipeline they drive and the
//! connection requests arrive on. Each bench keeps its own config, plugin
//! and request head, since those are what it measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use wayplug::exchange::RequestInfo;
use wayplug::http::pipeline::Limits;
use wayplug::http::{ConnInfo, Pipeline};
use wayplug::metrics::Metrics;
use wayplug::plugin::Registry;

/// The unchanging facts of a plaintext HTTP/1.1 request to `api.bench`.
pub fn info() -> RequestInfo {
    RequestInfo {
        id: "bench".into(),
        namespace: "bench".into(),
        service_hostname: "api.bench".into(),
        service_name: "api".into(),
        source: SocketAddr::from(([127, 0, 0, 1], 40000)),
        destination: SocketAddr::from(([127, 0, 0, 1], 80)),
        protocol: "HTTP/1.1",
        peer: None,
        start: SystemTime::now(),
    }
}

/// The pipeline over `registry`, with the limits every bench uses.
pub fn pipeline(registry: Arc<Registry>, metrics: Arc<Metrics>) -> Pipeline {
    Pipeline::new(
        registry,
        metrics,
        Limits {
            paused_request_timeout: Duration::from_secs(1),
            max_buffered_body: 1 << 20,
        },
    )
}

/// A plaintext connection from a loopback client to the HTTP listener.
pub fn conn() -> ConnInfo {
    ConnInfo {
        source: SocketAddr::from(([127, 0, 0, 1], 40000)),
        local: SocketAddr::from(([127, 0, 0, 1], 15006)),
        peer: None,
        destination: None,
    }
}
