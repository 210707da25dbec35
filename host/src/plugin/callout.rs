//! HTTP callouts plugins make with `dispatch_http_call`, to the named
//! upstreams of the config (Envoy's clusters); gRPC callouts in `grpc`.

mod connect;
pub mod grpc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamConfig;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, Clone)]
pub struct CalloutTarget {
    pub name: String,
    pub address: SocketAddr,
    pub default_timeout: Duration,
}

pub struct CalloutRequest {
    target: CalloutTarget,
    request: Request<Full<Bytes>>,
    timeout: Duration,
}

/// A callout's answer as the plugin reads it. A failed call (refused,
/// timed out, reset) is an answer with no headers, as in Envoy.
#[derive(Debug, Default, Clone)]
pub struct CalloutResponse {
    pub headers: Pairs,
    pub body: Bytes,
    pub trailers: Pairs,
}

/// Callout responses larger than this are cut off and fail the call.
const MAX_CALLOUT_BODY: usize = 4 << 20;

impl CalloutRequest {
    /// `None` when the headers lack `:method`, `:path` or `:authority`, or
    /// hold something that is not a valid header.
    pub fn new(
        target: CalloutTarget,
        headers: Pairs,
        body: Vec<u8>,
        _trailers: Pairs,
        timeout_ms: u32,
    ) -> Option<Self> {
        let find = |name: &[u8]| {
            headers
                .iter()
                .find(|(k, _)| k.as_slice() == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        let method = Method::from_bytes(find(b":method")?.as_bytes()).ok()?;
        let path = find(b":path")?;
        let authority = find(b":authority")?;
        let uri = format!("http://{}{}", target.address, path);
        let mut builder = Request::builder().method(method).uri(uri);
        builder = builder.header(http::header::HOST, authority);
        for (k, v) in &headers {
            if k.starts_with(b":") {
                continue;
            }
            builder = builder.header(
                HeaderName::from_bytes(k).ok()?,
                HeaderValue::from_bytes(v).ok()?,
            );
        }
        let request = builder.body(Full::new(Bytes::from(body))).ok()?;
        let timeout = match timeout_ms {
            0 => target.default_timeout,
            ms => Duration::from_millis(ms as u64),
        };
        Some(CalloutRequest {
            target,
            request,
            timeout,
        })
    }
}

pub struct Callouts {
    /// Replaced as a whole when a config is installed, so callouts reach
    /// the upstreams of the config in force.
    upstreams: arc_swap::ArcSwap<BTreeMap<String, UpstreamConfig>>,
    client: Client<HttpConnector, Full<Bytes>>,
    grpc: arc_swap::ArcSwap<grpc::GrpcCallouts>,
}

impl Callouts {
    pub fn new(upstreams: BTreeMap<String, UpstreamConfig>) -> Callouts {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Callouts {
            grpc: arc_swap::ArcSwap::from_pointee(grpc::GrpcCallouts::new(&upstreams)),
            upstreams: arc_swap::ArcSwap::from_pointee(upstreams),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn set_upstreams(&self, upstreams: BTreeMap<String, UpstreamConfig>) {
        self.grpc
            .store(std::sync::Arc::new(grpc::GrpcCallouts::new(&upstreams)));
        self.upstreams.store(std::sync::Arc::new(upstreams));
    }

    /// The gRPC side of the upstreams in force.
    pub fn grpc(&self) -> arc_swap::Guard<std::sync::Arc<grpc::GrpcCallouts>> {
        self.grpc.load()
    }

    /// An upstream for HTTP callouts; TLS upstreams serve gRPC callouts
    /// only (this client speaks plaintext HTTP/1.1).
    pub fn upstream(&self, name: &str) -> Option<CalloutTarget> {
        let upstreams = self.upstreams.load();
        let u = upstreams.get(name).filter(|u| u.tls.is_none());
        u.map(|u| CalloutTarget {
            name: name.to_owned(),
            address: u.address,
            default_timeout: Duration::from_millis(u.timeout_ms),
        })
    }

    pub async fn call(&self, req: CalloutRequest) -> CalloutResponse {
        let name = req.target.name.clone();
        let fut = async {
            let resp = self
                .client
                .request(req.request)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let limited = http_body_util::Limited::new(body, MAX_CALLOUT_BODY);
            let collected = limited.collect().await.map_err(|e| e.to_string())?;
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            let mut headers: Pairs = vec![(
                b":status".to_vec(),
                parts.status.as_str().as_bytes().to_vec(),
            )];
            headers.extend(
                parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
            );
            let trailers = trailers
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            Ok::<_, String>(CalloutResponse {
                headers,
                body,
                trailers,
            })
        };
        match tokio::time::timeout(req.timeout, fut).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::warn!(upstream = %name, error = %e, "plugin callout failed");
                CalloutResponse::default()
            }
            Err(_) => {
                tracing::warn!(upstream = %name, timeout = ?req.timeout, "plugin callout timed out");
                CalloutResponse::default()
            }
        }
    }
}
