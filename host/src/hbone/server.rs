//! The HBONE listener: what ztunnel sends a service's traffic to.
//!
//! A connection: TCP, then the mTLS handshake (bounded by `handshakeTimeoutMs`; the client
//! certificate must chain to the mesh roots and belong to our trust domain), then HTTP/2 with
//! ztunnel's settings. Each stream is one tunnel, handled in named phases:
//!
//! 1. request: CONNECT only, `:authority` strictly `ip:port`;
//! 2. destination: a service VIP and port, or a workload address;
//! 3. authorization: the namespace's L4 rules against the peer's identity and the port;
//! 4. upstream: pick an endpoint and open the connection to it (TCP, or a tunnel of our own if
//!    the workload speaks HBONE).
//!
//! Any failure so far answers the CONNECT with its status (400, 401, 503) and nothing else
//! happens. Only then 200, and the stream is served as the service port's configured protocol
//! says ([`super::protocol`]): as HTTP through the namespace's plugin chain (bytes that are not
//! HTTP close the tunnel, and the upstream connection opened for it never sees a byte), or as
//! bytes copied both ways with half-close. What the client sends never changes which.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::drain::Watch;
use super::protocol::Serving;
use super::{BAGGAGE, Error, FORWARDED, TRACEPARENT, authz, parse_authority};
use crate::config::{Config, HboneConfig, LimitsConfig};
use crate::discovery::{Destination, Endpoint};
use crate::downstream::{self, ConnectionLimit, End, Mode};
use crate::exchange::PeerIdentity;
use crate::http::upstream::Conn;
use crate::http::{ConnInfo, Pipeline};
use crate::tls::Acceptor;

/// Everything the listener needs; shared by its connections.
pub struct Inbound {
    acceptor: Acceptor,
    pipeline: Arc<Pipeline>,
    settings: HboneConfig,
    limits: LimitsConfig,
    cap: Arc<ConnectionLimit>,
}

/// One mTLS connection's facts, shared by its streams.
struct Peer {
    source: SocketAddr,
    local: SocketAddr,
    identity: PeerIdentity,
}

/// A tunnel that passed every check, with its upstream connection open.
struct Opened {
    addr: SocketAddr,
    destination: Destination,
    endpoint: Arc<Endpoint>,
    upstream: Conn,
    /// `traceparent`, `baggage` and `forwarded` from the CONNECT.
    context: HeaderMap,
    serving: Serving,
}

type Tunnel = TokioIo<Upgraded>;

impl Inbound {
    /// Listener settings come from `config`; namespace rules are read per tunnel from the
    /// pipeline's snapshot of the config in force, so reloads apply to new tunnels.
    /// `cap` bounds the listener's TCP connections (each carries many tunnels).
    pub fn new(
        acceptor: Acceptor,
        pipeline: Arc<Pipeline>,
        config: Arc<ArcSwap<Config>>,
        cap: Arc<ConnectionLimit>,
    ) -> Inbound {
        let (settings, limits) = {
            let c = config.load();
            (c.hbone.clone(), c.limits.clone())
        };
        Inbound {
            acceptor,
            pipeline,
            settings,
            limits,
            cap,
        }
    }
}

/// Accepts connections until the drain begins.
pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>, drain: Watch) {
    let mut stop = drain.clone();
    loop {
        let (stream, source) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HBONE accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.draining() => return,
        };
        let Some(admitted) = inbound.cap.admit(source) else {
            drop(stream);
            continue;
        };
        let inbound = inbound.clone();
        let drain = drain.clone();
        let span = tracing::debug_span!("hbone", %source);
        tokio::spawn(
            async move {
                let _admitted = admitted;
                inbound.connection(stream, source, drain).await
            }
            .instrument(span),
        );
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = code;
    resp
}

impl Inbound {
    async fn connection(self: Arc<Self>, stream: TcpStream, source: SocketAddr, mut drain: Watch) {
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let timeout = self.settings.handshake_timeout();
        let accepted = tokio::select! {
            r = tokio::time::timeout(timeout, self.acceptor.accept(stream)) => r,
            _ = drain.draining() => return,
        };
        let (tls, peer) = match accepted {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::info!(target: "wayplug::access", %source, error = %e, "HBONE connection refused");
                return;
            }
            Err(_) => {
                tracing::info!(target: "wayplug::access", %source, timeout_ms = timeout.as_millis() as u64, "HBONE handshake timed out");
                return;
            }
        };
        let peer = Arc::new(Peer {
            source,
            local,
            identity: PeerIdentity {
                trust_domain: peer.id.trust_domain().to_owned(),
                namespace: peer.id.namespace().to_owned(),
                service_account: peer.id.service_account().to_owned(),
            },
        });
        tracing::debug!(%source, principal = %peer.identity.principal(), "HBONE connection accepted");

        let this = self.clone();
        let stream_drain = drain.clone();
        let service = service_fn(move |req| {
            let this = this.clone();
            let peer = peer.clone();
            let drain = stream_drain.clone();
            async move { Ok::<_, Infallible>(this.stream(req, peer, drain).await) }
        });
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME_SIZE)
            .max_header_list_size(super::MAX_HEADER_LIST_SIZE)
            .max_concurrent_streams(self.settings.max_concurrent_streams)
            .adaptive_window(false)
            .keep_alive_interval(super::PING_INTERVAL)
            .keep_alive_timeout(super::PING_TIMEOUT);
        let served = builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(served);
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%source, error = %e, "HBONE connection ended with an error");
                }
                return;
            }
            _ = drain.draining() => {}
        }
        // GOAWAY: no new streams; open tunnels carry on until they end or the deadline.
        served.as_mut().graceful_shutdown();
        tokio::select! {
            _ = served.as_mut() => {}
            _ = drain.forced() => {}
        }
    }

    /// One CONNECT stream. The answer is sent when this returns; the tunnel itself is served
    /// by a task of its own once hyper hands over the stream.
    async fn stream(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<Peer>,
        drain: Watch,
    ) -> Response<Empty<Bytes>> {
        let start = Instant::now();
        let opened = match self.open(&req, &peer).await {
            Ok(o) => o,
            Err(e) => {
                let code = e.status();
                tracing::info!(
                    target: "wayplug::access",
                    source = %peer.source,
                    principal = %peer.identity.principal(),
                    authority = req.uri().authority().map(|a| a.as_str()).unwrap_or(""),
                    status = code.as_u16(),
                    error = %e,
                    "tunnel refused"
                );
                return status(code);
            }
        };
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    self.serve_tunnel(TokioIo::new(upgraded), opened, peer, drain, start)
                        .await
                }
                Err(e) => tracing::debug!(error = %e, "tunnel closed before it was established"),
            }
        });
        status(StatusCode::OK)
    }

    /// Everything that can fail before the 200.
    async fn open(&self, req: &Request<Incoming>, peer: &Peer) -> Result<Opened, Error> {
        if req.method() != Method::CONNECT {
            return Err(Error::NotConnect(req.method().clone()));
        }
        let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
        let addr = parse_authority(authority)?;

        // Discovery and authorization rules from the same config.
        let installed = self.pipeline.snapshot();
        let destination = installed
            .discovery
            .resolve_address(addr)
            .map_err(|source| Error::UnknownDestination { addr, source })?;
        let namespace = &destination.service.namespace;

        if let Some(ns) = installed.config.namespaces.get(namespace) {
            authz::check(&ns.authorization, &peer.identity, addr.port()).map_err(|reason| {
                Error::Denied {
                    principal: peer.identity.principal(),
                    addr,
                    namespace: namespace.clone(),
                    reason,
                }
            })?;
        }

        let has_chain = self
            .pipeline
            .registry()
            .chain(namespace)
            .is_some_and(|c| !c.plugins.is_empty());
        let serving = Serving::decide(destination.app_protocol(), has_chain);

        let endpoint = destination
            .pick_endpoint()
            .map_err(|source| Error::NoEndpoint { addr, source })?;
        let mut context = HeaderMap::new();
        for name in [TRACEPARENT, BAGGAGE, FORWARDED] {
            for v in req.headers().get_all(name) {
                context.append(name, v.clone());
            }
        }
        // ztunnel answers 200 only once the upstream connection is up; so do we.
        let upstream = self
            .pipeline
            .upstream()
            .connect(&endpoint, &context)
            .await
            .map_err(|e| Error::Upstream {
                endpoint: endpoint.address,
                reason: e.to_string(),
            })?;
        Ok(Opened {
            addr,
            destination,
            endpoint,
            upstream,
            context,
            serving,
        })
    }

    async fn serve_tunnel(
        &self,
        down: Tunnel,
        opened: Opened,
        peer: Arc<Peer>,
        drain: Watch,
        start: Instant,
    ) {
        let namespace = opened.destination.service.namespace.clone();
        let serving = opened.serving;
        let counts = Arc::new(Counts::default());
        let down = Metered {
            io: down,
            counts: counts.clone(),
        };
        let (addr, endpoint) = (opened.addr, opened.endpoint.address);
        let refused = match serving {
            Serving::Tcp => {
                let tcp = self.istio_tcp_open(&opened, &peer);
                relay(down, opened.upstream, drain).await;
                tcp.close(
                    counts.written.load(Ordering::Relaxed),
                    counts.read.load(Ordering::Relaxed),
                );
                None
            }
            Serving::Http(mode) => self.serve_http(down, mode, opened, &peer, drain).await,
        };
        if let Some(e) = &refused {
            // One line per refused tunnel, with what the client sent instead of HTTP.
            tracing::warn!(
                target: "wayplug::access",
                source = %peer.source,
                principal = %peer.identity.principal(),
                authority = %addr,
                namespace = %namespace,
                error = %e,
                "tunnel closed: the port is HTTP (services[].appProtocols, or the default for a \
                 namespace with plugins) and the bytes are not; nothing was forwarded"
            );
        }
        tracing::info!(
            target: "wayplug::access",
            source = %peer.source,
            principal = %peer.identity.principal(),
            authority = %addr,
            namespace = %namespace,
            endpoint = %endpoint,
            mode = serving.mode(),
            refused = refused.is_some(),
            bytes_from_caller = counts.read.load(Ordering::Relaxed),
            bytes_to_caller = counts.written.load(Ordering::Relaxed),
            duration_ms = start.elapsed().as_secs_f64() * 1000.0,
            "tunnel"
        );
    }

    /// Istio's TCP metrics for an L4 tunnel, under its pair's labels.
    fn istio_tcp_open(&self, opened: &Opened, peer: &Peer) -> crate::metrics::istio::TcpConnection {
        let principal = peer.identity.principal();
        let e = &opened.endpoint;
        let dest_principal = match e.protocol {
            crate::config::Protocol::Hbone => {
                format!(
                    "{}/ns/{}/sa/{}",
                    e.trust_domain, e.namespace, e.service_account
                )
            }
            crate::config::Protocol::Tcp => String::new(),
        };
        let service = &opened.destination.service;
        let pair = crate::metrics::istio::Pair {
            source_principal: &principal,
            source_namespace: &peer.identity.namespace,
            baggage: opened
                .context
                .get(crate::hbone::BAGGAGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
            destination_service: &service.hostname,
            destination_service_name: &service.name,
            destination_service_namespace: &service.namespace,
            destination_workload: &e.workload,
            destination_workload_namespace: &e.namespace,
            destination_principal: &dest_principal,
        };
        self.pipeline.metrics().istio.tcp_open(&pair)
    }

    /// L7: each request on the tunnel goes through the destination namespace's pipeline, which
    /// forwards it to an endpoint itself. Returns why the tunnel was refused if its bytes were
    /// not HTTP.
    async fn serve_http<IO>(
        &self,
        down: IO,
        mode: Mode,
        opened: Opened,
        peer: &Peer,
        drain: Watch,
    ) -> Option<String>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = Arc::new(ConnInfo {
            source: peer.source,
            local: peer.local,
            peer: Some(peer.identity.clone()),
            destination: Some(opened.destination),
        });
        let context = Arc::new(opened.context);
        let pipeline = self.pipeline.clone();
        // The connection opened to check the endpoint serves the first request, and joins the
        // pool only once one has been parsed: until then the upstream gets nothing.
        let first = Arc::new(std::sync::Mutex::new(Some((
            opened.endpoint,
            opened.upstream,
        ))));
        let handle = move |mut req: Request<Incoming>| {
            let pipeline = pipeline.clone();
            let info = info.clone();
            let first = first.clone();
            // Plugins see the tunnel's trace context and forwarding facts as request headers,
            // and the trace continues upstream with the request.
            for name in context.keys() {
                if !req.headers().contains_key(name) {
                    for v in context.get_all(name) {
                        req.headers_mut().append(name, v.clone());
                    }
                }
            }
            async move {
                let pending = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some((endpoint, conn)) = pending {
                    let h2 = req.version() == http::Version::HTTP_2;
                    pipeline.upstream().adopt(&endpoint, conn, h2).await;
                }
                pipeline.handle(req, &info).await
            }
        };
        let (mut stop, mut forced) = (drain.clone(), drain);
        let served = downstream::serve_http(
            down,
            mode,
            &self.limits,
            handle,
            async move { stop.draining().await },
            async move { forced.forced().await },
        )
        .await;
        if let Some(reason) = served.end.reason() {
            self.cap.metrics().closed(self.cap.listener(), reason);
        }
        match served.end {
            End::NotHttp(e) => Some(e),
            End::Failed(e) => {
                tracing::debug!(error = %e, "HTTP in tunnel ended with an error");
                None
            }
            _ => None,
        }
    }
}

/// L4: bytes both ways until both sides have finished; each side's end of stream is passed on
/// as a half-close.
async fn relay<D>(mut down: D, mut up: Conn, mut drain: Watch)
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel relay ended with an error");
            }
        }
        _ = drain.forced() => {}
    }
}

/// Bytes through a tunnel, for its access log line.
#[derive(Default)]
struct Counts {
    read: AtomicU64,
    written: AtomicU64,
}

/// The caller's side of a tunnel, counting what passes.
struct Metered<IO> {
    io: IO,
    counts: Arc<Counts>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Metered<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.counts.read.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Metered<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
