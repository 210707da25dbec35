//! HBONE end to end, over real mTLS on loopback.
//!
//! The cast: a ztunnel stand-in (our own HBONE client with the identity `web/frontend`), the
//! waypoint under test (`shop/waypoint`), a destination stand-in playing the ztunnel in front of
//! an HBONE workload (`shop/backend` on 127.0.0.2: it checks that each CONNECT names the IP it
//! was dialed on and comes from the waypoint's identity, then forwards to a local target), the
//! recording upstream and a TCP echo server. Every network wait is bounded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug::tls::{self, Acceptor, CertStore, Connector, DevCa, IssuedCert, SpiffeId};
use wayplug_tests::harness::{self, Upstream, eventually, fixture_url};

/// Upper bound of any single step.
const STEP: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);
const SHOP_VIP: &str = "10.0.0.10:80";
const RAW_VIP: &str = "10.0.0.11:7000";
const PLAIN_VIP: &str = "10.0.0.20:7000";
const DOWN_VIP: &str = "10.0.0.30:80";
const GONE_VIP: &str = "10.0.0.31:80";
const VAULT_VIP: &str = "10.0.0.40:80";
/// `bank`: an allowlist plugin that answers 401 without `x-role: teller`. Port 80 is HTTP by
/// default (the namespace has plugins), 81 is declared HTTP2; both lead to a byte sink. Port
/// 5432 is declared TCP and leads to the echo server.
const BANK_VIP: &str = "10.0.0.50:80";
const BANK_SINK_VIP: &str = "10.0.0.51:80";
const BANK_SINK_H2_VIP: &str = "10.0.0.51:81";
const BANK_DB_VIP: &str = "10.0.0.50:5432";

async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "wayplug-hbone-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A development mesh: one CA for `cluster.local` and a directory per workload identity.
struct Mesh {
    ca: DevCa,
    dir: TempDir,
}

impl Mesh {
    fn new() -> Mesh {
        Mesh {
            ca: DevCa::generate("cluster.local").unwrap(),
            dir: TempDir::new("mesh"),
        }
    }

    fn identity_dir(&self, ns: &str, sa: &str) -> PathBuf {
        let dir = self.dir.0.join(format!("{ns}-{sa}"));
        self.ca.write_workload_dir(&dir, ns, sa).unwrap();
        dir
    }

    fn store(&self, ns: &str, sa: &str) -> Arc<CertStore> {
        CertStore::load(self.identity_dir(ns, sa)).unwrap()
    }
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Test servers: TCP echo and the destination ztunnel stand-in.

/// Echoes every byte as it arrives; after the client's end of stream (half-close) it sends
/// `\n-- N bytes --\n` and closes. Returns its address and a count of accepted connections.
async fn echo_server(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut total = 0usize;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            total += n;
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = stream
                    .write_all(format!("\n-- {total} bytes --\n").as_bytes())
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// Accepts connections and counts the bytes they send, never answering: an upstream that must
/// never hear from a refused tunnel.
async fn sink_server(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    count.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, received)
}

/// What the destination stand-in saw of one CONNECT.
#[derive(Debug, Clone)]
struct Seen {
    authority: String,
    dialed: SocketAddr,
    peer: String,
    traceparent: Option<String>,
    status: u16,
}

struct Destination {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

/// An HBONE server in front of workload `ip`, with its own identity. A CONNECT must name `ip`
/// (the address it was dialed on) and a port in `routes`, and come from `expected_peer`;
/// the tunnel then goes to `routes[port]`.
async fn destination(
    mesh: &Mesh,
    ip: &str,
    ns: &str,
    sa: &str,
    expected_peer: SpiffeId,
    routes: HashMap<u16, SocketAddr>,
) -> Destination {
    let store = mesh.store(ns, sa);
    let acceptor = Acceptor::new(store, "cluster.local").unwrap();
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let connections = Arc::new(AtomicUsize::new(0));
    let (record, count) = (seen.clone(), connections.clone());
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let (acceptor, record, routes) = (acceptor.clone(), record.clone(), routes.clone());
            let expected_peer = expected_peer.clone();
            tokio::spawn(async move {
                let dialed = stream.local_addr().unwrap();
                let Ok((tls, peer)) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (record, routes) = (record.clone(), routes.clone());
                        let peer_ok = peer.id == expected_peer;
                        let peer_name = peer.id.principal();
                        async move {
                            let authority = req
                                .uri()
                                .authority()
                                .map(|a| a.to_string())
                                .unwrap_or_default();
                            let target = authority.parse::<SocketAddr>().ok();
                            let status = match target {
                                _ if req.method() != Method::CONNECT => StatusCode::BAD_REQUEST,
                                None => StatusCode::BAD_REQUEST,
                                Some(t) if t.ip() != dialed.ip() => StatusCode::BAD_REQUEST,
                                Some(_) if !peer_ok => StatusCode::UNAUTHORIZED,
                                Some(t) if !routes.contains_key(&t.port()) => {
                                    StatusCode::SERVICE_UNAVAILABLE
                                }
                                Some(_) => StatusCode::OK,
                            };
                            record.lock().unwrap().push(Seen {
                                authority,
                                dialed,
                                peer: peer_name,
                                traceparent: req
                                    .headers()
                                    .get("traceparent")
                                    .map(|v| v.to_str().unwrap().to_owned()),
                                status: status.as_u16(),
                            });
                            let mut resp = Response::new(Empty::<Bytes>::new());
                            *resp.status_mut() = status;
                            if status == StatusCode::OK {
                                let to = routes[&target.unwrap().port()];
                                let upstream = TcpStream::connect(to).await;
                                let Ok(mut upstream) = upstream else {
                                    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                    return Ok::<_, Infallible>(resp);
                                };
                                tokio::spawn(async move {
                                    if let Ok(up) = hyper::upgrade::on(req).await {
                                        let mut up = TokioIo::new(up);
                                        let _ =
                                            tokio::io::copy_bidirectional(&mut up, &mut upstream)
                                                .await;
                                    }
                                });
                            }
                            Ok(resp)
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Destination {
        addr,
        seen,
        connections,
    }
}

// ---------------------------------------------------------------------------------------------
// The ztunnel stand-in.

/// Presents a fixed certificate (or none), whatever the store says: for the refusal tests.
#[derive(Debug)]
struct Present(Option<Arc<CertifiedKey>>);

impl ResolvesClientCert for Present {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
    fn has_certs(&self) -> bool {
        self.0.is_some()
    }
}

fn certified_key(issued: &IssuedCert) -> Arc<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let signer = tls::crypto_provider()
        .key_provider
        .load_private_key(key)
        .unwrap();
    Arc::new(CertifiedKey::new(chain, signer))
}

/// An HBONE connection from the ztunnel stand-in to the waypoint.
#[derive(Clone)]
struct Ztunnel {
    sender: http2::SendRequest<Empty<Bytes>>,
    /// The leaf certificate the waypoint presented.
    server_leaf: CertificateDer<'static>,
}

/// Dials the waypoint with `config` (TLS 1.3, ALPN h2, our identity) and ztunnel's HTTP/2
/// settings. Errors are returned as text: the refusal tests look at them.
async fn ztunnel(waypoint: SocketAddr, config: Arc<ClientConfig>) -> Result<Ztunnel, String> {
    let tcp = TcpStream::connect(waypoint)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(waypoint.ip().into()), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let server_leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(1024 * 1024)
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(conn);
    Ok(Ztunnel {
        sender,
        server_leaf,
    })
}

impl Ztunnel {
    /// Sends a request on a new stream; `Ok` carries the status (and the tunnel on 200).
    async fn request(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Option<Upgraded>), String> {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let mut sender = self.sender.clone();
        let resp = step("CONNECT", sender.send_request(req))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Ok((status, None));
        }
        let up = step("upgrade", hyper::upgrade::on(resp))
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, Some(up)))
    }

    async fn connect(&self, authority: &str, headers: &[(&str, &str)]) -> StatusCode {
        self.request(Method::CONNECT, authority, headers)
            .await
            .unwrap_or_else(|e| panic!("CONNECT {authority}: {e}"))
            .0
    }

    async fn tunnel(&self, authority: &str, headers: &[(&str, &str)]) -> Upgraded {
        match self.request(Method::CONNECT, authority, headers).await {
            Ok((StatusCode::OK, Some(up))) => up,
            other => panic!("CONNECT {authority}: {other:?}"),
        }
    }
}

/// A reply to a request sent inside a tunnel.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: String,
}

async fn read_reply(resp: Response<hyper::body::Incoming>) -> Reply {
    let status = resp.status();
    let body = step("response body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn get(path: &str, host: &str, headers: &[(&str, &str)], h2: bool) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(Method::GET);
    if h2 {
        req = req
            .uri(format!("http://{host}{path}"))
            .version(http::Version::HTTP_2);
    } else {
        req = req.uri(path).header("host", host);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

/// One HTTP/1.1 request over a fresh tunnel.
async fn h1_over(zt: &Ztunnel, path: &str) -> Reply {
    let tunnel = zt.tunnel(SHOP_VIP, &[]).await;
    let (mut sender, conn) = http1::handshake(tunnel).await.unwrap();
    tokio::spawn(conn);
    let resp = step(
        "request",
        sender.send_request(get(path, "shop", &[], false)),
    )
    .await
    .unwrap();
    read_reply(resp).await
}

// ---------------------------------------------------------------------------------------------
// The rig.

struct Rig {
    mesh: Mesh,
    waypoint: Waypoint,
    hbone: SocketAddr,
    waypoint_dir: PathBuf,
    upstream: Upstream,
    dest: Destination,
    echo_accepted: Arc<AtomicUsize>,
    vault_accepted: Arc<AtomicUsize>,
    /// Bytes the `bank` sink received.
    sink_received: Arc<AtomicUsize>,
    admin: SocketAddr,
    /// The ztunnel stand-in's client config: `web/frontend`, expecting the waypoint.
    client: Arc<ClientConfig>,
}

impl Rig {
    async fn ztunnel(&self) -> Ztunnel {
        ztunnel(self.hbone, self.client.clone())
            .await
            .expect("ztunnel stand-in connects")
    }

    /// A client config for `web/frontend` that presents `key` instead of its own certificate.
    fn client_presenting(&self, key: Option<Arc<CertifiedKey>>) -> Arc<ClientConfig> {
        let mut config = (*self.client).clone();
        config.client_auth_cert_resolver = Arc::new(Present(key));
        Arc::new(config)
    }
}

async fn rig(drain_timeout_ms: u64) -> Rig {
    let mesh = Mesh::new();
    let upstream = harness::upstream().await;
    let (echo, echo_accepted) = echo_server("127.0.0.1").await;
    let (vault, vault_accepted) = echo_server("127.0.0.1").await;
    let (sink, sink_received) = sink_server("127.0.0.1").await;
    let dest = destination(
        &mesh,
        "127.0.0.2",
        "shop",
        "backend",
        id("shop", "waypoint"),
        HashMap::from([(8080, upstream.addr), (7000, echo)]),
    )
    .await;
    let waypoint_dir = mesh.identity_dir("shop", "waypoint");
    let allowlist = wayplug_tests::proxy_wasm_example("header-allowlist-proxywasm");
    let yaml = format!(
        r#"
listeners: {{ http: null, admin: "127.0.0.1:0", hbone: "127.0.0.1:0" }}
identity: {{ certDir: "{waypoint_dir}", reloadIntervalMs: 100 }}
hbone: {{ destinationPort: {dest_port}, connectTimeoutMs: 2000, handshakeTimeoutMs: 1500 }}
limits: {{ requestHeaderTimeoutMs: 3000 }}
drainTimeoutMs: {drain_timeout_ms}
services:
  - {{ name: shop, namespace: shop, hostname: shop.shop.svc.cluster.local, vips: ["/10.0.0.10"], ports: {{ 80: 8080 }} }}
  - {{ name: raw, namespace: shop, hostname: raw.shop.svc.cluster.local, vips: ["/10.0.0.11"], ports: {{ 7000: 7000 }}, appProtocols: {{ 7000: TCP }} }}
  - {{ name: echo, namespace: plain, hostname: echo.plain.svc.cluster.local, vips: ["/10.0.0.20"], ports: {{ 7000: {echo_port} }} }}
  - {{ name: down, namespace: shop, hostname: down.shop.svc.cluster.local, vips: ["/10.0.0.30"], ports: {{ 80: 1 }} }}
  - {{ name: gone, namespace: shop, hostname: gone.shop.svc.cluster.local, vips: ["/10.0.0.31"], ports: {{ 80: 8080 }} }}
  - {{ name: vault, namespace: vault, hostname: vault.vault.svc.cluster.local, vips: ["/10.0.0.40"], ports: {{ 80: {vault_port} }} }}
  - {{ name: bank, namespace: bank, hostname: bank.bank.svc.cluster.local, vips: ["/10.0.0.50"], ports: {{ 80: {upstream_port}, 5432: {echo_port} }}, appProtocols: {{ 5432: TCP }} }}
  - {{ name: sink, namespace: bank, hostname: sink.bank.svc.cluster.local, vips: ["/10.0.0.51"], ports: {{ 80: {sink_port}, 81: {sink_port} }}, appProtocols: {{ 81: HTTP2 }} }}
workloads:
  - uid: shop-1
    name: shop-1
    namespace: shop
    serviceAccount: backend
    workloadIps: [127.0.0.2]
    protocol: HBONE
    services:
      shop/shop.shop.svc.cluster.local: {{ 80: 8080 }}
      shop/raw.shop.svc.cluster.local: {{ 7000: 7000 }}
  - uid: echo-1
    name: echo-1
    namespace: plain
    workloadIps: [127.0.0.1]
    services:
      plain/echo.plain.svc.cluster.local: {{ 7000: {echo_port} }}
      shop/down.shop.svc.cluster.local: {{ 80: 1 }}
      vault/vault.vault.svc.cluster.local: {{ 80: {vault_port} }}
      bank/bank.bank.svc.cluster.local: {{ 80: {upstream_port}, 5432: {echo_port} }}
      bank/sink.bank.svc.cluster.local: {{ 80: {sink_port}, 81: {sink_port} }}
  - uid: gone-1
    name: gone-1
    namespace: shop
    serviceAccount: backend
    workloadIps: [127.0.0.4]
    protocol: HBONE
    services:
      shop/gone.shop.svc.cluster.local: {{ 80: 8080 }}
namespaces:
  shop:
    plugins:
      - {{ name: peer, url: "{peer}" }}
  vault:
    authorization:
      allow: [ {{ namespaces: [admin] }} ]
  bank:
    plugins:
      - name: tellers-only
        url: "file://{allowlist}"
        pluginConfig: {{ header: x-role, allow: [teller], deny_status: 401 }}
"#,
        waypoint_dir = waypoint_dir.display(),
        dest_port = dest.addr.port(),
        echo_port = echo.port(),
        vault_port = vault.port(),
        upstream_port = upstream.addr.port(),
        sink_port = sink.port(),
        peer = fixture_url("peer"),
        allowlist = allowlist.display(),
    );
    let config = Config::from_yaml(&yaml, "hbone-test.yaml", Path::new(".")).unwrap();
    let waypoint = Waypoint::start(config, Default::default())
        .await
        .expect("waypoint starts");
    let hbone = waypoint.hbone_addr.expect("HBONE listener");
    let admin = waypoint.admin_addr.expect("admin listener");
    let client = Connector::new(mesh.store("web", "frontend"))
        .config(vec![id("shop", "waypoint")])
        .unwrap();
    Rig {
        mesh,
        waypoint,
        hbone,
        waypoint_dir,
        upstream,
        dest,
        echo_accepted,
        vault_accepted,
        sink_received,
        admin,
        client,
    }
}

/// Sends `data` through an opaque tunnel, half-closes, and returns everything read back.
async fn l4_round_trip(tunnel: Upgraded, data: &[u8], pause_first: Duration) -> Vec<u8> {
    let mut io = TokioIo::new(tunnel);
    tokio::time::sleep(pause_first).await;
    let (mut rd, mut wr) = tokio::io::split(&mut io);
    let write = async {
        wr.write_all(data).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let read = rd.read_to_end(&mut got);
    let (_, r) = step("L4 round trip", async { tokio::join!(write, read) }).await;
    r.unwrap();
    got
}

fn opaque_payload(len: usize) -> Vec<u8> {
    // Starts with a byte no HTTP request starts with; a simple LCG makes the rest.
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|i| {
            if i == 0 {
                return 0;
            }
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn http1_and_http2_reach_the_backend_through_a_second_hbone_hop() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let connect_headers = [
        ("traceparent", trace),
        ("baggage", "k8s.namespace.name=web,service.name=frontend"),
        (
            "forwarded",
            "for=\"10.1.0.5:41000\";host=shop.shop.svc.cluster.local",
        ),
    ];

    // HTTP/1.1: two requests on one tunnel.
    let tunnel = zt.tunnel(SHOP_VIP, &connect_headers).await;
    let (mut sender, conn) = http1::handshake(tunnel).await.unwrap();
    tokio::spawn(conn);
    for path in ["/one", "/two?x=1"] {
        let req = get(
            path,
            "shop.shop.svc.cluster.local",
            &[("x-from", "test")],
            false,
        );
        let reply = read_reply(step("h1 request", sender.send_request(req)).await.unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.body, format!("upstream saw {path}"));
        let seen = rig.upstream.last();
        let h = |name: &str| {
            seen.headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("upstream got no {name}: {:?}", seen.headers))
        };
        // The plugin saw the caller's identity, as Envoy would expose it.
        assert_eq!(h("x-peer-principal"), "cluster.local/ns/web/sa/frontend");
        assert_eq!(h("x-peer-namespace"), "web");
        assert_eq!(h("x-peer-mtls"), "true");
        assert_eq!(
            h("x-peer-uri-san"),
            "spiffe://cluster.local/ns/web/sa/frontend"
        );
        assert_eq!(h("x-peer-destination"), SHOP_VIP);
        // The tunnel's context reached the plugin and, with the request, the backend.
        assert_eq!(h("x-peer-traceparent"), trace);
        assert_eq!(h("x-peer-baggage"), connect_headers[1].1);
        assert_eq!(h("x-peer-forwarded"), connect_headers[2].1);
        assert_eq!(h("traceparent"), trace);
        assert_eq!(h("x-from"), "test");
    }
    assert_eq!(rig.upstream.count(), 2);

    // HTTP/2 (prior knowledge) in a second tunnel on the same connection, requests multiplexed.
    let tunnel = zt.tunnel(SHOP_VIP, &[]).await;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), tunnel)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..3 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = get(
                &format!("/h2/{i}"),
                "shop.shop.svc.cluster.local",
                &[],
                true,
            );
            read_reply(step("h2 request", sender.send_request(req)).await.unwrap()).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, format!("upstream saw /h2/{i}"));
    }
    assert_eq!(rig.upstream.count(), 5);
    let seen = rig.upstream.last();
    assert_eq!(
        seen.headers["x-peer-principal"],
        "cluster.local/ns/web/sa/frontend"
    );
    assert_eq!(seen.headers["x-peer-traceparent"], "missing");

    // A tunnel may name a workload address instead of a VIP: its namespace's chain applies.
    let tunnel = zt.tunnel("127.0.0.2:8080", &[]).await;
    let (mut sender, conn) = http1::handshake(tunnel).await.unwrap();
    tokio::spawn(conn);
    let req = get("/pod", "shop", &[], false);
    let reply = read_reply(step("pod request", sender.send_request(req)).await.unwrap()).await;
    assert_eq!(reply.body, "upstream saw /pod");
    let seen = rig.upstream.last();
    assert_eq!(seen.headers["x-peer-destination"], "127.0.0.2:8080");
    assert_eq!(seen.headers["x-peer-namespace"], "web");

    // The second hop: HBONE to the pod's IP, asking for pod_ip:target_port, from the waypoint.
    let seen = rig.dest.seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(s.status, 200, "{s:?}");
        assert_eq!(s.authority, "127.0.0.2:8080", "{s:?}");
        assert_eq!(s.dialed, rig.dest.addr);
        assert_eq!(s.peer, "cluster.local/ns/shop/sa/waypoint");
    }
    // The first tunnel's trace went on with the onward CONNECT.
    assert_eq!(seen[0].traceparent.as_deref(), Some(trace));
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn opaque_tcp_passes_byte_exact_both_ways_with_half_close() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let data = opaque_payload(300_000);
    let trailer = format!("\n-- {} bytes --\n", data.len());
    let expected = [data.as_slice(), trailer.as_bytes()].concat();

    // A namespace without plugins: L4 to a plain TCP endpoint.
    let got = l4_round_trip(zt.tunnel(PLAIN_VIP, &[]).await, &data, Duration::ZERO).await;
    assert!(got == expected, "plain: {} bytes back", got.len());
    assert_eq!(rig.echo_accepted.load(Ordering::Relaxed), 1);

    // A namespace with plugins, but a port declared TCP: L4 through the second HBONE hop.
    let got = l4_round_trip(zt.tunnel(RAW_VIP, &[]).await, &data, Duration::ZERO).await;
    assert!(got == expected, "via HBONE: {} bytes back", got.len());

    // Declared TCP stays TCP whatever the bytes look like, and whenever they come.
    let got = l4_round_trip(
        zt.tunnel(RAW_VIP, &[]).await,
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_millis(600),
    )
    .await;
    assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n\n-- 18 bytes --\n");
    assert_eq!(rig.upstream.count(), 0, "nothing went through the L7 path");

    let seen = rig.dest.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|s| s.authority == "127.0.0.2:7000" && s.status == 200),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 2);
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn tls_failures_refuse_the_connection_and_others_keep_working() {
    let rig = rig(5_000).await;
    let ca = &rig.mesh.ca;
    let web = id("web", "frontend");
    let now = SystemTime::now();
    let rogue_ca = DevCa::generate("cluster.local").unwrap();
    let cases: Vec<(&str, &str, Option<Arc<CertifiedKey>>)> = vec![
        ("no client certificate", "CertificateRequired", None),
        (
            "wrong trust domain",
            "CertificateUnknown",
            Some(certified_key(
                &ca.issue_for(
                    &SpiffeId::new("evil.example", "web", "frontend").unwrap(),
                    now - Duration::from_secs(60),
                    HOUR,
                )
                .unwrap(),
            )),
        ),
        (
            "expired certificate",
            "CertificateExpired",
            Some(certified_key(
                &ca.issue_for(&web, now - 3 * HOUR, HOUR).unwrap(),
            )),
        ),
        (
            "untrusted root",
            "UnknownCA",
            Some(certified_key(
                &rogue_ca.issue("web", "frontend", HOUR).unwrap(),
            )),
        ),
    ];
    let good = rig.ztunnel().await;
    for (what, alert, key) in cases {
        let before = rig.upstream.count();
        // TLS 1.3: the client finishes its side first and learns of the refusal from the
        // alert, so the failure shows on the first stream at the latest.
        let outcome = match ztunnel(rig.hbone, rig.client_presenting(key)).await {
            Err(e) => Err(e),
            Ok(zt) => zt
                .request(Method::CONNECT, SHOP_VIP, &[])
                .await
                .map(|r| r.0),
        };
        let err = outcome.expect_err(what);
        assert!(
            err.contains(&format!("received fatal alert: {alert}")),
            "{what}: {err}"
        );
        assert_eq!(
            rig.upstream.count(),
            before,
            "{what}: nothing was forwarded"
        );
        // An open connection and new ones keep working.
        assert_eq!(good.connect(SHOP_VIP, &[]).await, StatusCode::OK, "{what}");
        assert_eq!(
            h1_over(&rig.ztunnel().await, "/after").await.status,
            StatusCode::OK
        );
    }
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn refused_tunnels_get_ztunnel_statuses_and_forward_nothing() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let cases: &[(Method, &str, StatusCode)] = &[
        (Method::GET, "http://10.0.0.10:80/", StatusCode::BAD_REQUEST),
        (
            Method::POST,
            "http://10.0.0.10:80/",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::CONNECT,
            "shop.shop.svc.cluster.local:80",
            StatusCode::BAD_REQUEST,
        ),
        (Method::CONNECT, "10.0.0.10", StatusCode::BAD_REQUEST),
        (Method::CONNECT, "10.0.0.10:0", StatusCode::BAD_REQUEST),
        (Method::CONNECT, "10.0.0.010:80", StatusCode::BAD_REQUEST),
        (Method::CONNECT, "10.9.9.9:80", StatusCode::BAD_REQUEST),
        (Method::CONNECT, "10.0.0.10:81", StatusCode::BAD_REQUEST),
        (Method::CONNECT, VAULT_VIP, StatusCode::UNAUTHORIZED),
        (Method::CONNECT, DOWN_VIP, StatusCode::SERVICE_UNAVAILABLE),
        (Method::CONNECT, GONE_VIP, StatusCode::SERVICE_UNAVAILABLE),
    ];
    for (method, uri, want) in cases {
        let (status, _) = zt
            .request(method.clone(), uri, &[])
            .await
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
        assert_eq!(status, *want, "{method} {uri}");
        // The same connection keeps serving good tunnels.
        assert_eq!(
            zt.connect(PLAIN_VIP, &[]).await,
            StatusCode::OK,
            "after {method} {uri}"
        );
    }
    // Denied before any byte was forwarded: the vault endpoint was never dialed.
    assert_eq!(rig.vault_accepted.load(Ordering::Relaxed), 0);
    assert_eq!(rig.upstream.count(), 0);
    assert_eq!(
        h1_over(&zt, "/still-fine").await.body,
        "upstream saw /still-fine"
    );

    // An allowed namespace gets through to the same kind of endpoint.
    let admin = Connector::new(rig.mesh.store("admin", "ops"))
        .config(vec![id("shop", "waypoint")])
        .unwrap();
    let admin = ztunnel(rig.hbone, admin).await.unwrap();
    let got = l4_round_trip(
        admin.tunnel(VAULT_VIP, &[]).await,
        b"\x01open",
        Duration::ZERO,
    )
    .await;
    assert_eq!(got, b"\x01open\n-- 5 bytes --\n");
    assert_eq!(rig.vault_accepted.load(Ordering::Relaxed), 1);
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn many_streams_on_one_connection_and_many_connections() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let zt = zt.clone();
        tasks.push(tokio::spawn(async move {
            h1_over(&zt, &format!("/stream/{i}")).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let reply = step("stream", t).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, format!("upstream saw /stream/{i}"));
    }

    let mut tasks = Vec::new();
    for c in 0..8 {
        let zt = rig.ztunnel().await;
        for s in 0..5 {
            let zt = zt.clone();
            tasks.push(tokio::spawn(async move {
                let path = format!("/conn/{c}/{s}");
                (path.clone(), h1_over(&zt, &path).await)
            }));
        }
    }
    for t in tasks {
        let (path, reply) = step("connection", t).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, format!("upstream saw {path}"));
    }
    assert_eq!(rig.upstream.count(), 90);
    // The onward hop multiplexes: far fewer mTLS connections than tunnels.
    let dest_conns = rig.dest.connections.load(Ordering::Relaxed);
    assert!(
        (1..=3).contains(&dest_conns),
        "{dest_conns} onward connections"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn certificate_rotation_keeps_open_tunnels_and_serves_the_new_certificate() {
    let rig = rig(5_000).await;
    let store = rig.waypoint.cert_store().expect("identity").clone();
    let old_leaf = store.current().leaf().clone();
    let zt = rig.ztunnel().await;
    assert_eq!(zt.server_leaf, old_leaf);
    let mut open = TokioIo::new(zt.tunnel(PLAIN_VIP, &[]).await);
    step("echo", open.write_all(b"\x00before")).await.unwrap();
    let mut buf = [0u8; 7];
    step("echo", open.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"\x00before");

    let mut status = store.status();
    rig.mesh
        .ca
        .write_workload_dir(&rig.waypoint_dir, "shop", "waypoint")
        .unwrap();
    step("rotation", status.wait_for(|s| s.generation >= 1))
        .await
        .unwrap();
    let new_leaf = CertificateDer::pem_file_iter(rig.waypoint_dir.join(tls::CERT_CHAIN_FILE))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_ne!(new_leaf, old_leaf);

    // New connections get the new certificate and work.
    let fresh = rig.ztunnel().await;
    assert_eq!(fresh.server_leaf, new_leaf);
    assert_eq!(h1_over(&fresh, "/rotated").await.status, StatusCode::OK);

    // The tunnel opened before keeps flowing, and its connection takes new streams.
    step("echo", open.write_all(b"\x00after")).await.unwrap();
    let mut buf = [0u8; 6];
    step("echo", open.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"\x00after");
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    step("echo end", open.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(rest, b"\n-- 13 bytes --\n");
    assert_eq!(h1_over(&zt, "/old-connection").await.status, StatusCode::OK);
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn drain_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let tunnel = zt.tunnel(SHOP_VIP, &[]).await;
    let (mut sender, conn) = http1::handshake(tunnel).await.unwrap();
    tokio::spawn(conn);
    let slow = tokio::spawn(async move {
        let resp = step(
            "slow request",
            sender.send_request(get("/slow", "shop", &[], false)),
        )
        .await
        .unwrap();
        read_reply(resp).await
    });
    // The upstream has the request (and sleeps 200 ms before answering).
    let upstream = rig.upstream.clone();
    eventually(|| async { (upstream.count() == 1).then_some(()) })
        .await
        .expect("the slow request reached the upstream");

    let started = Instant::now();
    let hbone = rig.hbone;
    let shutdown = tokio::spawn(rig.waypoint.shutdown());
    eventually(|| async { TcpStream::connect(hbone).await.is_err().then_some(()) })
        .await
        .expect("new connections are refused while draining");

    let reply = step("slow reply", slow).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "upstream saw /slow");
    step("shutdown", shutdown).await.unwrap();
    // Finished because the tunnel did, not because the deadline passed.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn drain_deadline_closes_tunnels_that_do_not_finish() {
    let rig = rig(300).await;
    let zt = rig.ztunnel().await;
    let mut open = TokioIo::new(zt.tunnel(PLAIN_VIP, &[]).await);
    step("echo", open.write_all(b"\x00hi")).await.unwrap();
    let mut buf = [0u8; 3];
    step("echo", open.read_exact(&mut buf)).await.unwrap();

    let started = Instant::now();
    step("shutdown", rig.waypoint.shutdown()).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The tunnel is gone: reads end (or fail) instead of hanging.
    let mut rest = Vec::new();
    let _ = step("closed tunnel", open.read_to_end(&mut rest)).await;
    assert!(
        !rest.ends_with(b"bytes --\n"),
        "the echo server never saw a clean end"
    );
}

#[tokio::test]
async fn headers_of_the_tunnel_do_not_override_the_request() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let tunnel = zt
        .tunnel(
            SHOP_VIP,
            &[(
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01",
            )],
        )
        .await;
    let (mut sender, conn) = http1::handshake(tunnel).await.unwrap();
    tokio::spawn(conn);
    let own = "00-33333333333333333333333333333333-4444444444444444-01";
    let req = get("/own-trace", "shop", &[("traceparent", own)], false);
    let reply = read_reply(step("request", sender.send_request(req)).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = rig.upstream.last();
    assert_eq!(seen.headers["traceparent"], own);
    assert_eq!(seen.headers.get_all("traceparent").iter().count(), 1);
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let rig = rig(5_000).await;
    let mut silent = TcpStream::connect(rig.hbone).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    let read = step("silent client", silent.read(&mut buf)).await;
    let took = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    // Meanwhile and afterwards, others are served.
    assert_eq!(
        h1_over(&rig.ztunnel().await, "/next").await.status,
        StatusCode::OK
    );
    rig.waypoint.shutdown().await;
}

/// Writes `request` into a fresh tunnel `after` it opened and returns the response's status.
async fn raw_status(tunnel: Upgraded, request: &[u8], after: Duration) -> u16 {
    let mut io = TokioIo::new(tunnel);
    tokio::time::sleep(after).await;
    step("raw request", io.write_all(request)).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = step("raw response", io.read(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "tunnel closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_leading_crlf_or_late_first_bytes_still_meet_the_plugins() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let plain = b"GET /balance HTTP/1.1\r\nhost: bank\r\n\r\n".as_slice();
    let crlf = [b"\r\n".as_slice(), plain].concat();
    let teller = b"GET /balance HTTP/1.1\r\nhost: bank\r\nx-role: teller\r\n\r\n".as_slice();
    // Later than the first-bytes wait this waypoint used to decide L4 on (1 s by default).
    let late = Duration::from_millis(1500);
    let cases: [(&str, &[u8], Duration, u16); 5] = [
        ("plain", plain, Duration::ZERO, 401),
        ("leading CRLF", &crlf, Duration::ZERO, 401),
        ("late", plain, late, 401),
        ("late, leading CRLF", &crlf, late, 401),
        ("late, allowed", teller, late, 200),
    ];
    for (what, request, after, want) in cases {
        let status = raw_status(zt.tunnel(BANK_VIP, &[]).await, request, after).await;
        assert_eq!(status, want, "{what}");
    }
    assert_eq!(rig.upstream.count(), 1, "only the allowed request went on");
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn bytes_that_are_not_http_close_an_http_tunnel_and_reach_nobody() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let garbage = opaque_payload(4000);
    for (vip, h1) in [(BANK_SINK_VIP, true), (BANK_SINK_H2_VIP, false)] {
        let mut io = TokioIo::new(zt.tunnel(vip, &[]).await);
        // The waypoint may close before taking it all.
        let _ = step("garbage", io.write_all(&garbage)).await;
        let mut got = Vec::new();
        let _ = step("tunnel closes", io.read_to_end(&mut got)).await;
        // HTTP/1.1 is answered 400 before the close; HTTP/2 gets no HTTP/1.1 answer.
        assert_eq!(
            got.starts_with(b"HTTP/1.1 400"),
            h1,
            "{vip}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // An HTTP/1.1 request to the HTTP2 port is not HTTP/2 either.
    let mut io = TokioIo::new(zt.tunnel(BANK_SINK_H2_VIP, &[]).await);
    let _ = step(
        "h1 to h2",
        io.write_all(b"GET / HTTP/1.1\r\nhost: sink\r\nx-role: teller\r\n\r\n"),
    )
    .await;
    let mut got = Vec::new();
    let _ = step("tunnel closes", io.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // The sink's connections were opened before the 200, and never got a byte.
    assert_eq!(rig.sink_received.load(Ordering::Relaxed), 0);
    let want =
        r#"wayplug_downstream_connections_closed_total{listener="hbone",reason="not_http"} 3"#;
    let admin = rig.admin;
    let metrics = eventually(|| async {
        let m = harness::admin_get(admin, "/metrics").await.body;
        m.contains(want).then_some(m)
    })
    .await;
    assert!(metrics.is_some(), "missing `{want}`");

    // A port declared TCP in the same namespace relays, even bytes that look like HTTP.
    let request = b"GET /balance HTTP/1.1\r\nhost: bank\r\n\r\n";
    let got = l4_round_trip(zt.tunnel(BANK_DB_VIP, &[]).await, request, Duration::ZERO).await;
    assert_eq!(got, [request.as_slice(), b"\n-- 37 bytes --\n"].concat());
    assert_eq!(rig.upstream.count(), 0);
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn conflicting_hosts_in_a_tunnel_are_refused_before_the_plugins() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let twice = b"GET / HTTP/1.1\r\nhost: bank\r\nhost: shop\r\nx-role: teller\r\n\r\n";
    let status = raw_status(zt.tunnel(BANK_VIP, &[]).await, twice, Duration::ZERO).await;
    assert_eq!(status, 400, "two Host headers");
    let absolute = b"GET http://bank/ HTTP/1.1\r\nhost: shop\r\nx-role: teller\r\n\r\n";
    let status = raw_status(zt.tunnel(BANK_VIP, &[]).await, absolute, Duration::ZERO).await;
    assert_eq!(status, 400, "absolute-form target against Host");

    let tunnel = zt.tunnel(BANK_VIP, &[]).await;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), tunnel)
        .await
        .unwrap();
    tokio::spawn(conn);
    let teller = ("x-role", "teller");
    let cases = [
        (vec![teller, ("host", "shop")], StatusCode::BAD_REQUEST),
        (
            vec![teller, ("host", "bank"), ("host", "bank")],
            StatusCode::BAD_REQUEST,
        ),
        (vec![teller, ("host", "BANK")], StatusCode::OK),
        (vec![teller], StatusCode::OK),
    ];
    for (headers, want) in cases {
        let mut sender = sender.clone();
        let req = get("/", "bank", &headers, true);
        let reply = read_reply(step("h2 request", sender.send_request(req)).await.unwrap()).await;
        assert_eq!(reply.status, want, "{headers:?}: {}", reply.body);
        if want == StatusCode::BAD_REQUEST {
            assert!(reply.body.contains("Host header"), "{}", reply.body);
        }
    }
    assert_eq!(
        rig.upstream.count(),
        2,
        "only the consistent requests went on"
    );
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn a_request_head_sent_slowly_in_a_tunnel_is_cut_off() {
    let rig = rig(5_000).await;
    let zt = rig.ztunnel().await;
    let mut io = TokioIo::new(zt.tunnel(BANK_VIP, &[]).await);
    let started = Instant::now();
    step("head", io.write_all(b"GET / HTTP/1.1\r\nhost: bank\r\n"))
        .await
        .unwrap();
    // A header byte every 250 ms, for at most 8 s: the head never ends.
    let mut closed_after = None;
    for _ in 0..32 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if io.write_all(b"x").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), io.read(&mut buf)).await {
            closed_after = Some(started.elapsed());
            let _ = r;
            break;
        }
    }
    let took = closed_after.expect("the tunnel was closed while the head trickled in");
    // requestHeaderTimeoutMs is 3000 in this rig.
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert_eq!(rig.upstream.count(), 0);
    rig.waypoint.shutdown().await;
}
