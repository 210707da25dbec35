//! The client side: requests to service endpoints, over plain TCP or, for workloads that speak
//! HBONE, through a tunnel.
//!
//! The upstream protocol follows the downstream one: HTTP/2 clients are forwarded over h2c
//! (prior knowledge), HTTP/1.1 clients over HTTP/1.1.
//!
//! Connections are pooled per (endpoint address, transport, protocol). An HTTP/1.1 connection
//! carries one request at a time and goes back to the idle list as soon as its response head
//! has arrived; it is only taken again once hyper reports it ready, i.e. after that response
//! finished. An HTTP/2 connection is shared by every request to its endpoint. For an HBONE
//! endpoint each such connection is one tunnel, riding the HBONE client's pooled mTLS
//! connections. Idle connections are closed after [`IDLE_TIMEOUT`].

// Looked up per request; keys come from configuration, not clients.
use foldhash::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::ProxyBody;
use crate::config::Protocol;
use crate::discovery::Endpoint;
use crate::hbone::{self, Target, Tunnel};
use crate::tls::SpiffeId;

/// How long an upstream may take: to accept a TCP connection, and to answer a request with its
/// response head (`limits.upstreamConnectTimeoutMs`, `limits.upstreamResponseTimeoutMs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub response_headers: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: Duration::from_secs(5),
            response_headers: Duration::from_secs(60),
        }
    }
}
/// A pooled connection unused for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Connect(String),
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error(transparent)]
    Http(hyper::Error),
    #[error("no response head within {} ms (limits.upstreamResponseTimeoutMs)", .0.as_millis())]
    ResponseTimeout(Duration),
}

impl Error {
    /// Whether the request never reached the endpoint because no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_) | Error::Handshake(_))
    }

    /// Whether the endpoint took the request but sent no response head in time.
    pub fn is_response_timeout(&self) -> bool {
        matches!(self, Error::ResponseTimeout(_))
    }
}

/// A byte stream to an endpoint.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    Hbone(Tunnel),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Hbone(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Hbone(t) => Pin::new(t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Hbone(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Hbone(t) => Pin::new(t).poll_shutdown(cx),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    /// The identity an HBONE endpoint must prove; `None` for plain TCP.
    hbone: Option<SpiffeId>,
    h2: bool,
}

struct IdleH1 {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

struct SharedH2 {
    sender: http2::SendRequest<ProxyBody>,
    used: Instant,
}

pub struct Upstream {
    hbone: OnceLock<Arc<hbone::Client>>,
    timeouts: OnceLock<UpstreamTimeouts>,
    h1: Mutex<HashMap<Key, Vec<IdleH1>>>,
    h2: Mutex<HashMap<Key, SharedH2>>,
    /// Milliseconds after `born` of the last sweep: one atomic read per
    /// request decides whether a sweep is due, and only the request that
    /// wins the exchange sweeps.
    last_sweep: AtomicU64,
    born: Instant,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The CONNECT headers worth carrying to an HBONE endpoint: the request's trace context.
fn trace_context(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [hbone::TRACEPARENT, hbone::BAGGAGE] {
        if let Some(v) = headers.get(name) {
            out.insert(name, v.clone());
        }
    }
    out
}

impl Upstream {
    pub fn new() -> Upstream {
        Upstream {
            hbone: OnceLock::new(),
            timeouts: OnceLock::new(),
            h1: Mutex::default(),
            h2: Mutex::default(),
            last_sweep: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// Sets the connect and response-head timeouts. Only the first call has an effect.
    pub fn set_timeouts(&self, timeouts: UpstreamTimeouts) {
        let _ = self.timeouts.set(timeouts);
    }

    fn timeouts(&self) -> UpstreamTimeouts {
        self.timeouts.get().copied().unwrap_or_default()
    }

    /// Enables HBONE endpoints. Only the first call has an effect.
    pub fn set_hbone(&self, client: Arc<hbone::Client>) {
        let _ = self.hbone.set(client);
    }

    fn key(&self, endpoint: &Endpoint, h2: bool) -> Result<Key, Error> {
        let hbone = match endpoint.protocol {
            Protocol::Tcp => None,
            Protocol::Hbone => Some(
                self.target(endpoint)
                    .map_err(|e| Error::Connect(e.to_string()))?
                    .identity,
            ),
        };
        Ok(Key {
            addr: endpoint.address,
            hbone,
            h2,
        })
    }

    fn target(&self, endpoint: &Endpoint) -> Result<Target, hbone::client::Error> {
        let port = self
            .hbone
            .get()
            .map_or(15008, |c| c.settings().destination_port);
        Target::for_endpoint(endpoint, port)
    }

    /// Opens a byte stream to `endpoint`: plain TCP, or a tunnel for an HBONE workload (with
    /// `headers` on its CONNECT).
    pub async fn connect(&self, endpoint: &Endpoint, headers: &HeaderMap) -> Result<Conn, Error> {
        match endpoint.protocol {
            Protocol::Tcp => {
                let addr = endpoint.address;
                let budget = self.timeouts().connect;
                match tokio::time::timeout(budget, hbone::client::tcp_connect(addr)).await {
                    Ok(Ok(s)) => Ok(Conn::Tcp(s)),
                    Ok(Err(e)) => Err(Error::Connect(format!("TCP connect to {addr}: {e}"))),
                    Err(_) => Err(Error::Connect(format!(
                        "TCP connect to {addr}: no answer within {} ms \
                         (limits.upstreamConnectTimeoutMs)",
                        budget.as_millis()
                    ))),
                }
            }
            Protocol::Hbone => {
                let Some(client) = self.hbone.get() else {
                    return Err(Error::Connect(format!(
                        "{} is an HBONE workload, and reaching it needs the waypoint's \
                         identity (config section `identity`)",
                        endpoint.address
                    )));
                };
                let target = self
                    .target(endpoint)
                    .map_err(|e| Error::Connect(e.to_string()))?;
                client
                    .connect(&target, headers)
                    .await
                    .map(Conn::Hbone)
                    .map_err(|e| Error::Connect(e.to_string()))
            }
        }
    }

    /// Takes an already open stream to `endpoint` into the pool (a tunnel's upstream, opened
    /// to check the endpoint is reachable before answering the tunnel).
    pub async fn adopt(&self, endpoint: &Endpoint, conn: Conn, h2: bool) {
        let Ok(key) = self.key(endpoint, h2) else {
            return;
        };
        if h2 {
            if lock(&self.h2)
                .get(&key)
                .is_some_and(|s| !s.sender.is_closed())
            {
                return;
            }
            if let Ok(mut sender) = handshake_h2(conn).await {
                if !ready(sender.ready()).await {
                    return;
                }
                lock(&self.h2).insert(
                    key,
                    SharedH2 {
                        sender,
                        used: Instant::now(),
                    },
                );
            }
        } else if let Ok(mut sender) = handshake_h1(conn).await {
            // Pooled senders are only taken once ready; wait for the connection task to say so.
            if ready(sender.ready()).await {
                self.put_h1(key, sender);
            }
        }
    }

    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
        h2: bool,
        endpoint: &Endpoint,
    ) -> Result<Response<Incoming>, Error> {
        self.maybe_sweep();
        let key = self.key(endpoint, h2)?;
        let trace = trace_context(req.headers());
        if h2 {
            let mut pooled = self.shared_h2(&key);
            loop {
                let (mut sender, reused) = match pooled.take() {
                    Some(s) => (s, true),
                    None => {
                        // Boxed: connecting (TCP, or a TLS tunnel) is the largest state of
                        // this future and rare with pooling; inline it would be moved with
                        // every request's future.
                        let sender = Box::pin(self.open_h2(endpoint, &trace)).await?;
                        lock(&self.h2).insert(
                            key.clone(),
                            SharedH2 {
                                sender: sender.clone(),
                                used: Instant::now(),
                            },
                        );
                        (sender, false)
                    }
                };
                match response_head(sender.try_send_request(req), self.timeouts()).await? {
                    Ok(resp) => return Ok(resp),
                    Err(mut e) => match (reused, e.take_message()) {
                        (true, Some(unsent)) => {
                            lock(&self.h2).remove(&key);
                            req = unsent;
                        }
                        _ => return Err(Error::Http(e.into_error())),
                    },
                }
            }
        }
        // HTTP/1.1 on a connection of its own: the request target is origin-form.
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        loop {
            let (mut sender, reused) = match self.take_h1(&key) {
                Some(s) => (s, true),
                None => (Box::pin(self.open_h1(endpoint, &trace)).await?, false),
            };
            match response_head(sender.try_send_request(req), self.timeouts()).await? {
                Ok(resp) => {
                    // A connection that switched protocols is no longer HTTP.
                    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        self.put_h1(key, sender);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match (reused, e.take_message()) {
                    // The idle connection closed under us before taking the request.
                    (true, Some(unsent)) => req = unsent,
                    _ => return Err(Error::Http(e.into_error())),
                },
            }
        }
    }

    async fn open_h1(
        &self,
        endpoint: &Endpoint,
        trace: &HeaderMap,
    ) -> Result<http1::SendRequest<ProxyBody>, Error> {
        let conn = self.connect(endpoint, trace).await?;
        handshake_h1(conn).await.map_err(Error::Handshake)
    }

    async fn open_h2(
        &self,
        endpoint: &Endpoint,
        trace: &HeaderMap,
    ) -> Result<http2::SendRequest<ProxyBody>, Error> {
        let conn = self.connect(endpoint, trace).await?;
        handshake_h2(conn).await.map_err(Error::Handshake)
    }

    fn shared_h2(&self, key: &Key) -> Option<http2::SendRequest<ProxyBody>> {
        let mut map = lock(&self.h2);
        match map.get_mut(key) {
            Some(s) if !s.sender.is_closed() => {
                s.used = Instant::now();
                Some(s.sender.clone())
            }
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn take_h1(&self, key: &Key) -> Option<http1::SendRequest<ProxyBody>> {
        let mut map = lock(&self.h1);
        let list = map.get_mut(key)?;
        list.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
        let i = list.iter().position(|i| i.sender.is_ready())?;
        Some(list.swap_remove(i).sender)
    }

    fn put_h1(&self, key: Key, sender: http1::SendRequest<ProxyBody>) {
        let mut map = lock(&self.h1);
        let list = map.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(IdleH1 {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn maybe_sweep(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY.as_millis() as u64
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        lock(&self.h1).retain(|_, list| {
            list.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
            !list.is_empty()
        });
        lock(&self.h2).retain(|_, s| !s.sender.is_closed() && s.used.elapsed() < IDLE_TIMEOUT);
    }
}

/// A request's response head, within the response timeout. On timeout the request is
/// abandoned (its connection is not reused).
async fn response_head<F, T>(sent: F, timeouts: UpstreamTimeouts) -> Result<T, Error>
where
    F: std::future::Future<Output = T>,
{
    tokio::time::timeout(timeouts.response_headers, sent)
        .await
        .map_err(|_| Error::ResponseTimeout(timeouts.response_headers))
}

async fn ready(f: impl std::future::Future<Output = Result<(), hyper::Error>>) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), f).await,
        Ok(Ok(()))
    )
}

async fn handshake_h1(conn: Conn) -> Result<http1::SendRequest<ProxyBody>, hyper::Error> {
    let (sender, connection) = http1::handshake(TokioIo::new(conn)).await?;
    tokio::spawn(async move {
        // With upgrades, a 101 answer hands the connection to the request's
        // `hyper::upgrade::on` instead of closing it.
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended with an error");
        }
    });
    Ok(sender)
}

async fn handshake_h2(conn: Conn) -> Result<http2::SendRequest<ProxyBody>, hyper::Error> {
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(conn)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::http::body;

    const T: Duration = Duration::from_secs(10);

    /// A loopback server that counts the connections it accepted and
    /// answers each request with what it saw: `<authority> <path> <host>`.
    /// With `close`, it asks for the connection to be closed after each
    /// response.
    async fn server(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| async move {
                        let seen = format!(
                            "{} {} {}",
                            req.uri().authority().map_or("-", |a| a.as_str()),
                            req.uri().path(),
                            req.headers()
                                .get("host")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-"),
                        );
                        let mut resp = Response::new(http_body_util::Full::new(Bytes::from(seen)));
                        if close {
                            resp.headers_mut()
                                .insert("connection", "close".parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn endpoint(addr: SocketAddr, protocol: Protocol) -> Endpoint {
        Endpoint {
            address: addr,
            protocol,
            workload: "w".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            trust_domain: "cluster.local".into(),
        }
    }

    fn get(h2: bool) -> Request<ProxyBody> {
        Request::builder()
            .uri("http://svc.test:80/p?q=1")
            .header("host", "svc.test:80")
            .version(if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            })
            .body(body::empty())
            .unwrap()
    }

    async fn send(up: &Upstream, h2: bool, ep: &Endpoint) -> Result<String, Error> {
        let resp = tokio::time::timeout(T, up.send(get(h2), h2, ep))
            .await
            .expect("answered in time")?;
        let body = tokio::time::timeout(T, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn http1_reuses_a_connection_once_its_response_finished() {
        let (addr, accepted) = server(false).await;
        let up = Upstream::new();
        let ep = endpoint(addr, Protocol::Tcp);
        for _ in 0..3 {
            // Origin-form target, authority in Host.
            assert_eq!(send(&up, false, &ep).await.unwrap(), "- /p svc.test:80");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn http2_shares_one_connection_and_keeps_the_authority() {
        let (addr, accepted) = server(false).await;
        let up = Upstream::new();
        let ep = endpoint(addr, Protocol::Tcp);
        let (a, b, c) = tokio::join!(
            send(&up, true, &ep),
            send(&up, true, &ep),
            send(&up, true, &ep)
        );
        for r in [a, b, c] {
            assert_eq!(r.unwrap(), "svc.test:80 /p svc.test:80");
        }
        // The concurrent first requests may race to dial; later ones share.
        let first = accepted.load(Ordering::SeqCst);
        assert!((1..=3).contains(&first), "{first}");
        for _ in 0..3 {
            send(&up, true, &ep).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), first);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_reused() {
        let (addr, accepted) = server(true).await;
        let up = Upstream::new();
        let ep = endpoint(addr, Protocol::Tcp);
        for _ in 0..3 {
            assert_eq!(send(&up, false, &ep).await.unwrap(), "- /p svc.test:80");
            // Let the connection task see the close before the next take.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn errors_name_the_endpoint_and_what_is_missing() {
        let up = Upstream::new();
        // Nothing listens on port 1 of loopback.
        let refused = endpoint("127.0.0.1:1".parse().unwrap(), Protocol::Tcp);
        let err = send(&up, false, &refused).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
        assert!(
            err.to_string().contains("TCP connect to 127.0.0.1:1"),
            "{err}"
        );

        let hbone = endpoint("127.0.0.1:8080".parse().unwrap(), Protocol::Hbone);
        let err = send(&up, true, &hbone).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
        assert!(
            err.to_string().contains("is an HBONE workload")
                && err.to_string().contains("identity"),
            "{err}"
        );
    }
}
