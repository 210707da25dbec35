//! What both downstream listeners share: serving one connection as HTTP under the configured
//! timeouts (`limits:`), and capping how many connections a listener holds open.
//!
//! Invariants:
//! - A connection's bytes reach only hyper, which hands parsed requests to the pipeline. Bytes
//!   that are not HTTP end the connection (hyper answers 400 where it can); nothing here ever
//!   copies them anywhere.
//! - Every connection has a deadline at all times: its first request within
//!   `requestHeaderTimeoutMs`; then, measured from the last byte either way,
//!   `idleTimeoutMs` while no request is in flight and `streamIdleTimeoutMs` while one is.
//!   HTTP/1.1 heads are also timed by hyper's own header timer, which runs while a connection
//!   waits for its next request too.
//! - A listener at `maxConnections` closes new connections at once, logs that once per episode
//!   (until a tenth of its capacity is free again) and counts each refusal.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::LimitsConfig;
use crate::http::body::{Holding, ProxyBody};
use crate::http::pipeline::StreamReset;
use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub listener: String,
    pub reason: String,
}

/// The downstream connection metrics, registered once per process.
#[derive(Clone)]
pub struct DownstreamMetrics {
    open: Family<ListenerLabels, Gauge>,
    refused: Family<ListenerLabels, Counter>,
    closed: Family<ClosedLabels, Counter>,
}

impl DownstreamMetrics {
    pub fn new(metrics: &Metrics) -> DownstreamMetrics {
        let m = DownstreamMetrics {
            open: Family::default(),
            refused: Family::default(),
            closed: Family::default(),
        };
        metrics.register(
            "downstream_connections",
            "Open downstream connections, by listener",
            m.open.clone(),
        );
        metrics.register(
            "downstream_connections_refused",
            "Connections closed on accept because the listener was at limits.maxConnections",
            m.refused.clone(),
        );
        metrics.register(
            "downstream_connections_closed",
            "Connections the waypoint closed: not_http (bytes that are not HTTP where HTTP is \
             required), header_timeout, idle_timeout, stream_idle_timeout",
            m.closed.clone(),
        );
        m
    }

    pub fn closed(&self, listener: &str, reason: &str) {
        self.closed
            .get_or_create(&ClosedLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// At most `maxConnections` open connections on one listener.
pub struct ConnectionLimit {
    listener: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    /// Set from the first refusal until enough slots are free again: one log line per episode.
    saturated: AtomicBool,
    refused_in_episode: AtomicU64,
    metrics: DownstreamMetrics,
}

/// One admitted connection; its slot is free again when this drops.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl ConnectionLimit {
    pub fn new(listener: &'static str, max: usize, metrics: DownstreamMetrics) -> ConnectionLimit {
        ConnectionLimit {
            listener,
            max,
            slots: Arc::new(Semaphore::new(max)),
            saturated: AtomicBool::new(false),
            refused_in_episode: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn listener(&self) -> &'static str {
        self.listener
    }

    pub fn metrics(&self) -> &DownstreamMetrics {
        &self.metrics
    }

    /// A slot for a connection just accepted from `source`, or `None`: close it.
    pub fn admit(&self, source: SocketAddr) -> Option<Admitted> {
        let labels = ListenerLabels {
            listener: self.listener.to_owned(),
        };
        let free = self.slots.available_permits();
        if self.saturated.load(Ordering::Relaxed) && free >= (self.max / 10).max(1) {
            self.saturated.store(false, Ordering::Relaxed);
            let refused = self.refused_in_episode.swap(0, Ordering::Relaxed);
            tracing::info!(
                listener = self.listener,
                max_connections = self.max,
                refused,
                "listener accepts connections again"
            );
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let open = self.metrics.open.get_or_create(&labels).clone();
                open.inc();
                Some(Admitted {
                    _permit: permit,
                    open,
                })
            }
            Err(_) => {
                self.metrics.refused.get_or_create(&labels).inc();
                self.refused_in_episode.fetch_add(1, Ordering::Relaxed);
                if !self.saturated.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        listener = self.listener,
                        max_connections = self.max,
                        %source,
                        "listener reached limits.maxConnections: new connections are closed \
                         until open ones finish (counted in \
                         wayplug_downstream_connections_refused_total)"
                    );
                }
                None
            }
        }
    }
}

/// How the connection's HTTP is told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1, or HTTP/2 when the connection opens with its preface.
    Auto,
    /// HTTP/2 with prior knowledge only.
    Http2Only,
}

/// Why a connection ended.
#[derive(Debug)]
pub enum End {
    /// The client closed it, or it finished after a graceful shutdown.
    Done,
    /// It ended with an error after at least one request.
    Failed(String),
    /// The bytes were not HTTP (or ended inside the first request head).
    NotHttp(String),
    /// No complete request head within `requestHeaderTimeoutMs`.
    HeaderTimeout,
    /// No request in flight and no bytes for `idleTimeoutMs`.
    Idle,
    /// Requests in flight but no bytes for `streamIdleTimeoutMs`.
    StreamIdle,
    /// Shutdown's deadline passed.
    Forced,
}

impl End {
    /// The `reason` label of `wayplug_downstream_connections_closed_total`, for the endings
    /// the waypoint chose.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            End::NotHttp(_) => Some("not_http"),
            End::HeaderTimeout => Some("header_timeout"),
            End::Idle => Some("idle_timeout"),
            End::StreamIdle => Some("stream_idle_timeout"),
            End::Done | End::Failed(_) | End::Forced => None,
        }
    }
}

/// What happened on a connection: its requests and how it ended.
#[derive(Debug)]
pub struct Served {
    pub requests: u64,
    pub end: End,
}

/// Per-connection activity, shared by the IO wrapper, the requests and the watchdog.
struct Activity {
    base: Instant,
    /// Milliseconds after `base` of the last byte read or written.
    last: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Woken when a request starts or ends: that can bring the deadline forward. Bytes only
    /// ever push it back, so they need no wake-up.
    phase: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            phase: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// The deadline in force now, and what passing it means.
    fn deadline(&self, limits: &LimitsConfig) -> (Instant, End) {
        if self.requests.load(Ordering::Relaxed) == 0 {
            let first = self.base + limits.request_header_timeout();
            let idle = self.last() + limits.idle_timeout();
            return if idle < first {
                (idle, End::Idle)
            } else {
                (first, End::HeaderTimeout)
            };
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            (self.last() + limits.stream_idle_timeout(), End::StreamIdle)
        } else {
            (self.last() + limits.idle_timeout(), End::Idle)
        }
    }
}

/// A request in flight until its response body is finished or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
        self.0.phase.notify_one();
    }
}

/// The connection's byte stream, noting when bytes move.
struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
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

fn builder(mode: Mode, limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_header_timeout());
    // No HTTP/2 keepalive pings here: they would count as traffic and keep an idle connection
    // open. Dead peers are found by the idle timeouts instead.
    // Extended CONNECT (RFC 8441) carries WebSocket over HTTP/2.
    b.http2().timer(TokioTimer::new()).enable_connect_protocol();
    match mode {
        Mode::Auto => b,
        Mode::Http2Only => b.http2_only(),
    }
}

/// Serves `io` as HTTP, each request through `handle`, until the client is done, a limit ends
/// the connection, or shutdown: `stop` starts a graceful one (GOAWAY, or close once idle) and
/// `forced`, after it, closes whatever is left.
pub async fn serve_http<IO, H, Fut>(
    io: IO,
    mode: Mode,
    limits: &LimitsConfig,
    handle: H,
    stop: impl Future<Output = ()>,
    forced: impl Future<Output = ()>,
) -> Served
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, StreamReset>> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = Watched {
        io,
        activity: activity.clone(),
    };
    let tracked = activity.clone();
    let service = service_fn(move |req| {
        let handle = handle.clone();
        let activity = tracked.clone();
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.phase.notify_one();
        let guard = InFlight(activity);
        async move {
            let resp = handle(req).await?;
            Ok::<_, StreamReset>(resp.map(|body| Holding::new(body, guard)))
        }
    });
    let builder = builder(mode, limits);
    let io = TokioIo::new(io);
    let end = match mode {
        // HTTP/1.1 needs the upgrade-aware connection for `Upgrade:` requests.
        Mode::Auto => {
            let served = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(served);
            drive(
                served,
                |c| c.graceful_shutdown(),
                &activity,
                limits,
                stop,
                forced,
            )
            .await
        }
        // The upgrade-aware connection always sniffs for the HTTP/2 preface and falls back to
        // HTTP/1.1, which would ignore `http2_only`; HTTP/2 CONNECT needs no help.
        Mode::Http2Only => {
            let served = builder.serve_connection(io, service);
            tokio::pin!(served);
            drive(
                served,
                |c| c.graceful_shutdown(),
                &activity,
                limits,
                stop,
                forced,
            )
            .await
        }
    };
    Served {
        requests: activity.requests.load(Ordering::Relaxed),
        end,
    }
}

/// Polls the connection under its deadlines and the shutdown signals.
async fn drive<C>(
    mut served: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    limits: &LimitsConfig,
    stop: impl Future<Output = ()>,
    forced: impl Future<Output = ()>,
) -> End
where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    tokio::pin!(stop, forced);
    let mut stopping = false;
    loop {
        let (deadline, on_expiry) = activity.deadline(limits);
        tokio::select! {
            r = served.as_mut() => return ended(r, activity.requests.load(Ordering::Relaxed)),
            _ = activity.phase.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                // Activity may have moved the deadline while we slept.
                if activity.deadline(limits).0 <= Instant::now() {
                    return on_expiry;
                }
            }
            _ = &mut stop, if !stopping => {
                stopping = true;
                graceful_shutdown(served.as_mut());
            }
            _ = &mut forced, if stopping => return End::Forced,
        }
    }
}

fn ended(r: Result<(), Box<dyn std::error::Error + Send + Sync>>, requests: u64) -> End {
    let Err(e) = r else {
        return End::Done;
    };
    if let Some(h) = e.downcast_ref::<hyper::Error>()
        && h.is_timeout()
    {
        return End::HeaderTimeout;
    }
    if requests == 0 {
        End::NotHttp(e.to_string())
    } else {
        End::Failed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: usize) -> ConnectionLimit {
        ConnectionLimit::new("test", max, DownstreamMetrics::new(&Metrics::new()))
    }

    #[test]
    fn a_full_listener_refuses_until_a_tenth_is_free() {
        let l = limit(20);
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut held: Vec<Admitted> = (0..20).map(|_| l.admit(src).unwrap()).collect();
        assert!(l.admit(src).is_none());
        assert!(l.saturated.load(Ordering::Relaxed));
        assert!(l.admit(src).is_none());
        assert_eq!(l.refused_in_episode.load(Ordering::Relaxed), 2);
        // One slot free: admitted, but the episode goes on (no flapping log lines).
        held.pop();
        let one = l.admit(src).unwrap();
        assert!(l.saturated.load(Ordering::Relaxed));
        drop(one);
        held.truncate(17);
        let _again = l.admit(src).unwrap();
        assert!(!l.saturated.load(Ordering::Relaxed));
        assert_eq!(
            l.metrics
                .open
                .get_or_create(&ListenerLabels {
                    listener: "test".into()
                })
                .get(),
            18
        );
    }

    #[test]
    fn deadlines_follow_the_connection_phase() {
        let limits = LimitsConfig {
            request_header_timeout_ms: 1_000,
            idle_timeout_ms: 5_000,
            stream_idle_timeout_ms: 20_000,
            ..LimitsConfig::default()
        };
        let a = Activity::new();
        let (at, end) = a.deadline(&limits);
        assert_eq!(
            (at - a.base, end.reason()),
            (Duration::from_secs(1), Some("header_timeout"))
        );
        a.requests.fetch_add(1, Ordering::Relaxed);
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        // The last byte moved 3 s after the connection opened.
        a.last.store(3_000, Ordering::Relaxed);
        let (at, end) = a.deadline(&limits);
        assert_eq!(end.reason(), Some("stream_idle_timeout"));
        assert_eq!(at - a.base, Duration::from_secs(23));
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
        let (at, end) = a.deadline(&limits);
        assert_eq!(
            (at - a.base, end.reason()),
            (Duration::from_secs(8), Some("idle_timeout"))
        );
    }
}
