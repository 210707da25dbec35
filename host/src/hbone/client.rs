//! The HBONE client: tunnels to endpoints whose workload speaks HBONE.
//!
//! A tunnel is one HTTP/2 CONNECT stream to `endpoint_ip:15008` with `:authority`
//! `endpoint_ip:target_port`, inside mTLS where we present the waypoint's certificate and the
//! server must present the workload's SPIFFE identity.
//!
//! Pool invariants:
//! - Connections are keyed by (dialed address, expected identity): a connection verified for
//!   one identity is never used for another.
//! - A connection carries at most `max_streams_per_connection` tunnels; the count is taken
//!   under the pool lock when a tunnel is checked out and given back when the tunnel is
//!   dropped, so it never overshoots.
//! - Only one dial per key is in flight: callers that find no room wait for it rather than
//!   each opening a connection of their own.
//! - A connection with no tunnel for `idle_timeout` is dropped from the pool, which closes it;
//!   closed connections are dropped whenever they are seen.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::HboneConfig;
use crate::discovery::Endpoint;
use crate::tls::{self, Connector, SpiffeId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TCP connect to {addr} failed: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("mTLS with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: Box<tls::Error>,
    },
    #[error("HTTP/2 with {addr} failed: {source}")]
    H2 {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("{addr} refused CONNECT {authority} with status {status}")]
    Refused {
        addr: SocketAddr,
        authority: SocketAddr,
        status: StatusCode,
    },
    #[error("no tunnel to {authority} via {addr} within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        authority: SocketAddr,
        timeout: Duration,
    },
    #[error("endpoint {endpoint} has no valid SPIFFE identity: {source}")]
    Identity {
        endpoint: SocketAddr,
        source: Box<tls::Error>,
    },
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Budget of a whole tunnel setup: TCP, TLS, HTTP/2 and the CONNECT answer.
    pub connect_timeout: Duration,
    pub max_streams_per_connection: usize,
    pub idle_timeout: Duration,
    /// Port the destination ztunnels accept HBONE on.
    pub destination_port: u16,
}

impl From<&HboneConfig> for ClientSettings {
    fn from(c: &HboneConfig) -> Self {
        ClientSettings {
            connect_timeout: c.connect_timeout(),
            max_streams_per_connection: c.max_streams_per_connection,
            idle_timeout: c.pool_idle_timeout(),
            destination_port: c.destination_port,
        }
    }
}

/// Where a tunnel goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The destination's HBONE listener, `endpoint_ip:15008`.
    pub dial: SocketAddr,
    /// What the tunnel asks for: `endpoint_ip:target_port`.
    pub authority: SocketAddr,
    /// Who must answer at `dial`.
    pub identity: SpiffeId,
}

impl Target {
    pub fn for_endpoint(endpoint: &Endpoint, hbone_port: u16) -> Result<Target, Error> {
        let identity = SpiffeId::new(
            &endpoint.trust_domain,
            &endpoint.namespace,
            &endpoint.service_account,
        )
        .map_err(|source| Error::Identity {
            endpoint: endpoint.address,
            source: Box::new(source),
        })?;
        Ok(Target {
            dial: SocketAddr::new(endpoint.address.ip(), hbone_port),
            authority: endpoint.address,
            identity,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    dial: SocketAddr,
    identity: SpiffeId,
}

struct Conn {
    id: u64,
    sender: http2::SendRequest<Empty<Bytes>>,
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
}

struct Inner {
    connector: Connector,
    settings: ClientSettings,
    conns: Mutex<HashMap<Key, Vec<Arc<Conn>>>>,
    dialing: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
}

/// Opens HBONE tunnels, pooling the connections under them. Cheap to share behind an `Arc`.
pub struct Client {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A TCP connection with the socket options every hop of the tunnel path wants: no Nagle
/// (delayed ACKs would add ~40 ms stalls to small writes) and keepalive.
pub async fn tcp_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_keepalive(true)?;
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

impl Client {
    /// Must be called inside a Tokio runtime: it starts the idle sweeper.
    pub fn new(connector: Connector, settings: ClientSettings) -> Client {
        let inner = Arc::new(Inner {
            connector,
            settings,
            conns: Mutex::default(),
            dialing: Mutex::default(),
            next_id: AtomicU64::new(0),
        });
        let every = (inner.settings.idle_timeout / 2)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        tokio::spawn(sweep(Arc::downgrade(&inner), every));
        Client { inner }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// Opens a tunnel to `target`, sending `headers` (traceparent, baggage, forwarded) with the
    /// CONNECT. Succeeds only once the destination answered 200.
    pub async fn connect(&self, target: &Target, headers: &HeaderMap) -> Result<Tunnel, Error> {
        let timeout = self.inner.settings.connect_timeout;
        match tokio::time::timeout(timeout, self.inner.connect(target, headers)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                addr: target.dial,
                authority: target.authority,
                timeout,
            }),
        }
    }

    /// Open pooled connections, for tests and the admin page.
    pub fn connection_count(&self) -> usize {
        lock(&self.inner.conns)
            .values()
            .flatten()
            .filter(|c| !c.sender.is_closed())
            .count()
    }
}

async fn sweep(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let idle_timeout = inner.settings.idle_timeout;
        let mut conns = lock(&inner.conns);
        for list in conns.values_mut() {
            list.retain(|c| {
                let idle = c.streams.load(Ordering::Acquire) == 0
                    && lock(&c.idle_since).elapsed() >= idle_timeout;
                if idle {
                    tracing::debug!(conn = c.id, "closing idle HBONE connection");
                }
                !idle && !c.sender.is_closed()
            });
        }
        conns.retain(|_, list| !list.is_empty());
        drop(conns);
        // Dial gates nobody is waiting on.
        lock(&inner.dialing).retain(|_, gate| Arc::strong_count(gate) > 1);
    }
}

impl Inner {
    async fn connect(&self, target: &Target, headers: &HeaderMap) -> Result<Tunnel, Error> {
        let key = Key {
            dial: target.dial,
            identity: target.identity.clone(),
        };
        let (mut lease, mut sender, mut fresh) = self.lease(&key).await?;
        let mut req = Some(connect_request(target, headers));
        loop {
            let sent = sender
                .try_send_request(req.take().expect("a request to send"))
                .await;
            let resp = match sent {
                Ok(resp) => resp,
                Err(mut e) => {
                    // A pooled connection that closed before taking the request: once more on
                    // a fresh one.
                    if let (false, Some(unsent)) = (fresh, e.take_message()) {
                        tracing::debug!(conn = lease.conn.id, error = %e.error(), "pooled HBONE connection went away; dialing anew");
                        self.forget(&key, lease.conn.id);
                        req = Some(unsent);
                        (lease, sender, fresh) = self.lease(&key).await?;
                        continue;
                    }
                    return Err(Error::H2 {
                        addr: target.dial,
                        source: e.into_error(),
                    });
                }
            };
            if resp.status() != StatusCode::OK {
                return Err(Error::Refused {
                    addr: target.dial,
                    authority: target.authority,
                    status: resp.status(),
                });
            }
            let upgraded = hyper::upgrade::on(resp).await.map_err(|source| Error::H2 {
                addr: target.dial,
                source,
            })?;
            return Ok(Tunnel {
                io: TokioIo::new(upgraded),
                _lease: lease,
            });
        }
    }

    /// A stream slot on a connection for `key`: an existing one with room, or a new one.
    /// The flag says whether the connection was just dialed.
    async fn lease(
        &self,
        key: &Key,
    ) -> Result<(Lease, http2::SendRequest<Empty<Bytes>>, bool), Error> {
        if let Some((lease, sender)) = self.checkout(key) {
            return Ok((lease, sender, false));
        }
        let gate = lock(&self.dialing).entry(key.clone()).or_default().clone();
        let _dialing = gate.lock().await;
        if let Some((lease, sender)) = self.checkout(key) {
            return Ok((lease, sender, false));
        }
        let conn = self.dial(key).await?;
        let sender = conn.sender.clone();
        lock(&self.conns)
            .entry(key.clone())
            .or_default()
            .push(conn.clone());
        Ok((Lease { conn }, sender, true))
    }

    fn checkout(&self, key: &Key) -> Option<(Lease, http2::SendRequest<Empty<Bytes>>)> {
        let mut conns = lock(&self.conns);
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.sender.is_closed());
        let max = self.settings.max_streams_per_connection;
        let conn = list
            .iter()
            .find(|c| c.streams.load(Ordering::Acquire) < max)?
            .clone();
        conn.streams.fetch_add(1, Ordering::AcqRel);
        let sender = conn.sender.clone();
        Some((Lease { conn }, sender))
    }

    fn forget(&self, key: &Key, id: u64) {
        if let Some(list) = lock(&self.conns).get_mut(key) {
            list.retain(|c| c.id != id);
        }
    }

    async fn dial(&self, key: &Key) -> Result<Arc<Conn>, Error> {
        let addr = key.dial;
        let tcp = tcp_connect(addr)
            .await
            .map_err(|source| Error::Tcp { addr, source })?;
        let (tls, _) = self
            .connector
            .connect(tcp, addr.ip(), vec![key.identity.clone()])
            .await
            .map_err(|source| Error::Tls {
                addr,
                source: Box::new(source),
            })?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME_SIZE)
            .max_header_list_size(super::MAX_HEADER_LIST_SIZE)
            .adaptive_window(false)
            .keep_alive_interval(super::PING_INTERVAL)
            .keep_alive_timeout(super::PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| Error::H2 { addr, source })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(conn = id, %addr, error = %e, "HBONE connection ended with an error");
            }
        });
        tracing::debug!(conn = id, %addr, identity = %key.identity, "HBONE connection established");
        Ok(Arc::new(Conn {
            id,
            sender,
            streams: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        }))
    }
}

fn connect_request(target: &Target, headers: &HeaderMap) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = http::Uri::from_maybe_shared(target.authority.to_string())
        .expect("a socket address is a valid authority");
    *req.headers_mut() = headers.clone();
    req
}

/// A tunnel's hold on its connection's stream count.
struct Lease {
    conn: Arc<Conn>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.conn.idle_since) = Instant::now();
        }
    }
}

/// An open tunnel: a byte stream to the endpoint. Shutting down the write side sends
/// END_STREAM (a half-close); reads end when the far side does the same.
pub struct Tunnel {
    io: TokioIo<Upgraded>,
    _lease: Lease,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("conn", &self._lease.conn.id)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use http::Response;
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::tls::{Acceptor, CertStore, DevCa};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "wayplug-hbone-client-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// An HBONE server that echoes every tunnel, refuses port 9999 with 503, and counts the
    /// connections it accepts.
    async fn echo_server(acceptor: Acceptor) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok((tls, _)) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let mut resp = Response::new(Empty::<Bytes>::new());
                        if req.uri().port_u16() == Some(9999) {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            return Ok::<_, std::convert::Infallible>(resp);
                        }
                        tokio::spawn(async move {
                            if let Ok(up) = hyper::upgrade::on(req).await {
                                let (mut rd, mut wr) = tokio::io::split(TokioIo::new(up));
                                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                                let _ = wr.shutdown().await;
                            }
                        });
                        Ok(resp)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn pool_caps_streams_per_connection_and_closes_idle_connections() {
        let dir = TempDir::new();
        let ca = DevCa::generate("cluster.local").unwrap();
        let server_id = ca
            .write_workload_dir(&dir.0.join("server"), "shop", "backend")
            .unwrap();
        ca.write_workload_dir(&dir.0.join("client"), "shop", "waypoint")
            .unwrap();
        let acceptor = Acceptor::new(
            CertStore::load(dir.0.join("server")).unwrap(),
            "cluster.local",
        )
        .unwrap();
        let (addr, accepted) = echo_server(acceptor).await;
        let client = Arc::new(Client::new(
            Connector::new(CertStore::load(dir.0.join("client")).unwrap()),
            ClientSettings {
                connect_timeout: Duration::from_secs(10),
                max_streams_per_connection: 4,
                idle_timeout: Duration::from_millis(200),
                destination_port: addr.port(),
            },
        ));
        let target = Target {
            dial: addr,
            authority: "127.0.0.1:8080".parse().unwrap(),
            identity: server_id.clone(),
        };

        // Ten tunnels at once: three connections (4 + 4 + 2), each dialed once.
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (client, target) = (client.clone(), target.clone());
            tasks.push(tokio::spawn(async move {
                client.connect(&target, &HeaderMap::new()).await
            }));
        }
        let mut tunnels = Vec::new();
        for t in tasks {
            tunnels.push(t.await.unwrap().expect("tunnel opens"));
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
        assert_eq!(client.connection_count(), 3);

        // Each tunnel is its own byte stream, with half-close.
        for (i, t) in tunnels.iter_mut().enumerate() {
            let msg = format!("tunnel {i}");
            t.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(10), t.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(buf, msg.as_bytes());
        }
        let mut last = tunnels.pop().unwrap();
        last.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), last.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
        drop(last);

        // A freed slot is reused rather than dialing again.
        let again = client.connect(&target, &HeaderMap::new()).await.unwrap();
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
        drop(again);

        // Refusals say what happened.
        let refused = Target {
            authority: "127.0.0.1:9999".parse().unwrap(),
            ..target.clone()
        };
        let err = client
            .connect(&refused, &HeaderMap::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Refused { status, .. } if status == StatusCode::SERVICE_UNAVAILABLE),
            "{err}"
        );
        let impostor = Target {
            identity: SpiffeId::new("cluster.local", "shop", "someone-else").unwrap(),
            ..target.clone()
        };
        let err = client
            .connect(&impostor, &HeaderMap::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err}");
        assert!(err.to_string().contains("someone-else"), "{err}");

        // Once every tunnel is gone, idle connections are closed.
        drop(tunnels);
        let mut open = client.connection_count();
        for _ in 0..100 {
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            open = client.connection_count();
        }
        assert_eq!(open, 0, "idle connections still pooled");
    }
}
