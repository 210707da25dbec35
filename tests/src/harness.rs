//! In-process test rig: a recording upstream, a callout target, a waypoint
//! started from YAML on 127.0.0.1:0, and small HTTP/1.1 and h2c clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use wayplug::app::Waypoint;
use wayplug::config::Config;

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target's authority (HTTP/2 `:authority`), if any.
    pub authority: Option<String>,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Starts the test upstream. It answers `upstream saw <path>` with a
/// secret header, except: `/echo` echoes the body, `/status/N` answers N,
/// `/slow` waits 200 ms first.
pub async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let path = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        record.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            authority: parts.uri.authority().map(|a| a.to_string()),
                            path: path.clone(),
                            headers: parts.headers.clone(),
                            body: body.clone(),
                        });
                        let mut status = StatusCode::OK;
                        let reply = if path.starts_with("/echo") {
                            body
                        } else if let Some(code) = path.strip_prefix("/status/") {
                            status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
                            Bytes::from(format!("status {code}"))
                        } else {
                            if path.starts_with("/slow") {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Bytes::from(format!("upstream saw {path}"))
                        };
                        let mut resp = Response::new(Full::new(reply));
                        *resp.status_mut() = status;
                        resp.headers_mut()
                            .insert("x-upstream-secret", "s3cret".parse().unwrap());
                        resp.headers_mut()
                            .insert("x-upstream", "yes".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, seen }
}

/// A callout target: `GET /check` answers 200 `ok-user` when the
/// `x-original-path` header starts with `/allowed`, else 403.
pub async fn auth_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let allowed = req
                        .headers()
                        .get("x-original-path")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|p| p.starts_with("/allowed"));
                    let mut resp = Response::new(Full::new(Bytes::from(if allowed {
                        "ok-user"
                    } else {
                        "no"
                    })));
                    if !allowed {
                        *resp.status_mut() = StatusCode::FORBIDDEN;
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// `file://` URL of a fixture plugin.
pub fn fixture_url(name: &str) -> String {
    format!("file://{}", crate::fixture(name).display())
}

/// `file://` URL of a component plugin.
pub fn component_url(name: &str) -> String {
    format!("file://{}", crate::component(name).display())
}

/// A waypoint config with two namespaces' services (`alpha.test` in
/// `alpha`, `beta.test` in `beta`), both backed by `upstream`, plus the
/// given extra top-level YAML (namespaces, sandbox, upstreams).
pub fn config_yaml(upstream: SocketAddr, extra: &str) -> String {
    let port = upstream.port();
    format!(
        r#"
listeners: {{ http: "127.0.0.1:0", admin: "127.0.0.1:0" }}
services:
  - {{ name: alpha, namespace: alpha, hostname: alpha.test, vips: ["/10.0.0.1"], ports: {{ 80: {port} }} }}
  - {{ name: beta, namespace: beta, hostname: beta.test, ports: {{ 80: {port} }} }}
  - {{ name: gone, namespace: beta, hostname: gone.test, ports: {{ 80: 1 }} }}
workloads:
  - uid: test//v1/Pod/test/upstream
    name: upstream
    namespace: test
    workloadIps: ["127.0.0.1"]
    services:
      alpha/alpha.test: {{ 80: {port} }}
      beta/beta.test: {{ 80: {port} }}
  - uid: test//v1/Pod/test/gone
    name: gone
    namespace: test
    workloadIps: ["127.0.0.1"]
    services:
      beta/gone.test: {{ 80: 1 }}
{extra}
"#
    )
}

pub struct Rig {
    pub waypoint: Waypoint,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: Upstream,
}

/// Starts an upstream and a waypoint with `extra` YAML (see [`config_yaml`]).
pub async fn rig(extra: &str) -> Rig {
    let upstream = upstream().await;
    let yaml = config_yaml(upstream.addr, extra);
    let config = Config::from_yaml(&yaml, "test.yaml", std::path::Path::new("."))
        .expect("test config is valid");
    let waypoint = Waypoint::start(config, Default::default())
        .await
        .expect("waypoint starts");
    Rig {
        http: waypoint.http_addr.unwrap(),
        admin: waypoint.admin_addr.unwrap(),
        waypoint,
        upstream,
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 request over a fresh connection, bounded to 10 s.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    send_version(addr, false, method, host, path, headers, body).await
}

/// Like [`send`], over h2c with prior knowledge.
pub async fn send_h2(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    send_version(addr, true, method, host, path, headers, body).await
}

async fn send_version(
    addr: SocketAddr,
    h2: bool,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let io = TokioIo::new(stream);
        let mut req = Request::builder().method(method);
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
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("request finished within 10 s")
}

/// GET on the admin listener.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", "admin", path, &[], "").await
}

/// Polls `f` every 20 ms for up to 5 s until it returns `Some`.
pub async fn eventually<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..250 {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// For each `(kind, why)`: a request to `alpha.test` with `x-misbehave:
/// kind` must fail closed with a 503 that names plugin `bad` in namespace
/// `alpha`, says `why` and the strategy `strategy` reports (FAIL_CLOSE, also
/// for a FAIL_RELOAD whose retry failed), within 3 s; the next plain
/// request must succeed again on a fresh instance.
pub async fn assert_misbehaviour_fails_closed(rig: &Rig, kinds: &[(&str, &str)]) {
    for (kind, why) in kinds {
        let started = std::time::Instant::now();
        let r = send(
            rig.http,
            "GET",
            "alpha.test",
            "/",
            &[("x-misbehave", kind)],
            "",
        )
        .await;
        assert_eq!(r.status, 503, "{kind}: {r:?}");
        assert!(
            r.body.contains("plugin `bad` in namespace `alpha`"),
            "{kind}: {}",
            r.body
        );
        assert!(r.body.contains(why), "{kind}: `{}` lacks `{why}`", r.body);
        assert!(r.body.contains("FAIL_CLOSE"), "{kind}: {}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{kind} took {:?}",
            started.elapsed()
        );
        let ok = send(rig.http, "GET", "alpha.test", "/", &[], "").await;
        assert_eq!(ok.status, 200, "after {kind}: {ok:?}");
    }
}

/// After one `x-misbehave: trap` request under FAIL_RELOAD, plugin `bad`'s
/// trap must be counted twice: the failure and its retry on a fresh instance.
pub async fn assert_trap_and_retry_counted(rig: &Rig) {
    let m = admin_get(rig.admin, "/metrics").await;
    let want = r#"wayplug_plugin_failures_total{namespace="alpha",plugin="bad",reason="trap"} 2"#;
    assert!(m.body.contains(want), "missing `{want}` in:\n{}", m.body);
}
