//! gRPC callouts (`proxy_grpc_call`, `proxy_grpc_stream`) to the named
//! upstreams of the config, over HTTP/2: h2c, or TLS with ALPN `h2` when the
//! upstream has a `tls` section.
//!
//! Plugins hand over serialized messages, so the codec passes bytes through;
//! framing, status and metadata handling are tonic's. What reaches the
//! plugin follows Envoy: a unary call ends in exactly one message (OK) or
//! one close with a status; a stream delivers initial metadata, messages,
//! trailing metadata and a close, in that order, each only once it arrived.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::Uri;
use http::uri::PathAndQuery;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::connect::UpstreamConnector;
use crate::config::UpstreamConfig;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Largest message a plugin may send or receive on a gRPC callout (gRPC's
/// own default receive limit).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 4 << 20;

/// gRPC status codes the host itself produces.
pub const DEADLINE_EXCEEDED: u32 = Code::DeadlineExceeded as u32;

/// A gRPC status as `proxy_on_grpc_close` and `proxy_get_status` hand it
/// to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: u32,
    pub message: String,
}

impl GrpcStatus {
    fn from_tonic(status: &Status) -> GrpcStatus {
        GrpcStatus {
            code: status.code() as u32,
            message: status.message().to_owned(),
        }
    }
}

/// One event of a gRPC stream, in the order it arrived.
#[derive(Debug, Clone)]
pub enum GrpcEvent {
    InitialMetadata(Pairs),
    Message(Bytes),
    TrailingMetadata(Pairs),
    Close(GrpcStatus),
}

struct GrpcUpstream {
    name: String,
    channel: Channel,
    origin: Uri,
    default_timeout: Duration,
}

/// A configured upstream a plugin named, resolved when the call is made.
#[derive(Clone)]
pub struct GrpcTarget(Arc<GrpcUpstream>);

impl GrpcTarget {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The timeout a call gets when the plugin passes 0.
    pub fn default_timeout(&self) -> Duration {
        self.0.default_timeout
    }
}

/// One gRPC call or stream, before it starts.
pub struct GrpcCallSpec {
    pub target: GrpcTarget,
    pub path: PathAndQuery,
    pub metadata: http::HeaderMap,
}

impl GrpcCallSpec {
    /// `None` when service and method do not make a request path.
    pub fn new(
        target: GrpcTarget,
        service: &str,
        method: &str,
        metadata: http::HeaderMap,
    ) -> Option<GrpcCallSpec> {
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        let path = PathAndQuery::try_from(format!("/{service}/{method}")).ok()?;
        if path.query().is_some() {
            return None;
        }
        Some(GrpcCallSpec {
            target,
            path,
            metadata,
        })
    }

    fn client(&self) -> tonic::client::Grpc<Channel> {
        let upstream = &self.target.0;
        tonic::client::Grpc::with_origin(upstream.channel.clone(), upstream.origin.clone())
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut req = tonic::Request::from_parts(
            MetadataMap::from_headers(self.metadata.clone()),
            tonic::Extensions::default(),
            message,
        );
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    }

    /// A unary call: the answer's one message, or the status it failed
    /// with. Past `timeout` the call is abandoned as DEADLINE_EXCEEDED.
    pub async fn unary(self, message: Bytes, timeout: Duration) -> Result<Bytes, GrpcStatus> {
        let mut client = self.client();
        let req = self.request(message, Some(timeout));
        let call = async {
            client
                .ready()
                .await
                .map_err(|s| GrpcStatus::from_tonic(&s))?;
            client
                .unary(req, self.path.clone(), RawCodec)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| GrpcStatus::from_tonic(&s))
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(GrpcStatus {
                code: DEADLINE_EXCEEDED,
                message: format!("deadline exceeded after {} ms", timeout.as_millis()),
            }),
        }
    }

    /// A stream: messages from `outgoing` go out until it closes (the
    /// plugin's half-close); every event is handed to `deliver` in order.
    /// `deliver` answers false once nobody listens (the plugin cancelled),
    /// which ends the stream.
    pub async fn stream(
        self,
        outgoing: mpsc::Receiver<Bytes>,
        mut deliver: impl FnMut(GrpcEvent) -> bool + Send,
    ) {
        let mut client = self.client();
        let requests = futures_util::stream::unfold(outgoing, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        let req = self.request(requests, None);
        if let Err(s) = client.ready().await {
            deliver(GrpcEvent::Close(GrpcStatus::from_tonic(&s)));
            return;
        }
        let mut body = match client.streaming(req, self.path.clone(), RawCodec).await {
            Ok(resp) => {
                let (metadata, body, _) = resp.into_parts();
                if !deliver(GrpcEvent::InitialMetadata(pairs(metadata))) {
                    return;
                }
                body
            }
            Err(status) => {
                // A trailers-only answer: its metadata are the trailers.
                close_with(&mut deliver, &status);
                return;
            }
        };
        loop {
            match body.message().await {
                Ok(Some(m)) => {
                    if !deliver(GrpcEvent::Message(m)) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    close_with(&mut deliver, &status);
                    return;
                }
            }
        }
        match body.trailers().await {
            Ok(trailers) => {
                if !deliver(GrpcEvent::TrailingMetadata(
                    trailers.map(pairs).unwrap_or_default(),
                )) {
                    return;
                }
                deliver(GrpcEvent::Close(GrpcStatus {
                    code: 0,
                    message: String::new(),
                }));
            }
            Err(status) => close_with(&mut deliver, &status),
        }
    }
}

fn close_with(deliver: &mut impl FnMut(GrpcEvent) -> bool, status: &Status) {
    let trailers = pairs(status.metadata().clone());
    if !trailers.is_empty() && !deliver(GrpcEvent::TrailingMetadata(trailers)) {
        return;
    }
    deliver(GrpcEvent::Close(GrpcStatus::from_tonic(status)));
}

fn pairs(metadata: MetadataMap) -> Pairs {
    metadata
        .into_headers()
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// The gRPC upstreams, by name.
pub struct GrpcCallouts {
    upstreams: HashMap<String, GrpcTarget>,
}

impl GrpcCallouts {
    pub fn new(upstreams: &BTreeMap<String, UpstreamConfig>) -> GrpcCallouts {
        let upstreams = upstreams
            .iter()
            .filter_map(|(name, u)| {
                // The config was checked at load; files that changed since
                // then leave this upstream out of gRPC callouts.
                let tls = match u.tls.as_ref().map(|t| t.client(u.address.ip())).transpose() {
                    Ok(tls) => tls,
                    Err((field, reason)) => {
                        tracing::error!(upstream = %name, field, %reason, "gRPC upstream's TLS setup failed; gRPC callouts to it are refused");
                        return None;
                    }
                };
                let scheme = if tls.is_some() { "https" } else { "http" };
                // The authority gRPC servers see: the upstream's name, as
                // Envoy uses the cluster name (its address if the name is
                // no valid authority).
                let origin = Uri::try_from(format!("{scheme}://{name}"))
                    .or_else(|_| Uri::try_from(format!("{scheme}://{}", u.address)))
                    .ok()?;
                let client = Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build(UpstreamConnector::new(u.address, tls));
                let upstream = GrpcUpstream {
                    name: name.clone(),
                    channel: Channel {
                        client,
                        upstream: name.clone().into(),
                    },
                    origin,
                    default_timeout: Duration::from_millis(u.timeout_ms),
                };
                Some((name.clone(), GrpcTarget(Arc::new(upstream))))
            })
            .collect();
        GrpcCallouts { upstreams }
    }

    pub fn target(&self, name: &str) -> Option<GrpcTarget> {
        self.upstreams.get(name).cloned()
    }
}

/// hyper's pooled HTTP/2 client as tonic's transport; a failure to reach
/// the upstream is UNAVAILABLE, as gRPC clients report it.
#[derive(Clone)]
struct Channel {
    client: Client<UpstreamConnector, tonic::body::Body>,
    upstream: Arc<str>,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, Status>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ResponseFuture {
        let client = self.client.clone();
        let upstream = self.upstream.clone();
        Box::pin(async move {
            client.request(req).await.map_err(|e| {
                Status::unavailable(format!(
                    "upstream `{upstream}`: connect error or disconnect: {}",
                    error_chain(&e)
                ))
            })
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Passes serialized messages through: plugins encode and decode them.
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
