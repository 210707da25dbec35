//! Policies from a `policyDir` of Kubernetes YAML, end to end: an
//! AuthorizationPolicy (with a CEL condition) and an HTTPRoute in front of
//! two backends, reached over HBONE with real mesh identities. Every network
//! wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug::tls::{CertStore, Connector, DevCa, SpiffeId};
use wayplug_tests::harness::{self, Upstream, eventually};

const STEP: Duration = Duration::from_secs(10);
const WEB_VIP: &str = "10.0.0.10:80";

async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// Removed when dropped, also when the test fails.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("wayplug-policies-{tag}-"))
        .tempdir()
        .unwrap()
}

const AUTHZ: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: web-callers, namespace: shop }
spec:
  targetRefs: [{ kind: Service, group: "", name: web }]
  action: ALLOW
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/web/sa/frontend"] } }]
      when: [{ key: cel, values: ["request.headers['x-user'] == 'alice'"] }]
"#;

fn route(default_backend: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: web, namespace: shop }}
spec:
  parentRefs: [{{ group: "", kind: Service, name: web, port: 80 }}]
  rules:
    - matches: [{{ path: {{ type: PathPrefix, value: /v2 }} }}]
      filters:
        - type: URLRewrite
          urlRewrite: {{ path: {{ type: ReplacePrefixMatch, replacePrefixMatch: / }} }}
      backendRefs: [{{ name: web-v2, port: 80 }}]
    - matches: [{{ path: {{ type: PathPrefix, value: / }} }}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {{ set: [{{ name: x-routed, value: {default_backend} }}] }}
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{{ name: x-route, value: {default_backend} }}]
            remove: [x-upstream-secret]
      backendRefs: [{{ name: {default_backend}, port: 80 }}]
"#
    )
}

struct Rig {
    waypoint: Waypoint,
    policy_dir: PathBuf,
    /// The certificates' and policies' folders, removed with the rig.
    _dirs: [tempfile::TempDir; 2],
    v1: Upstream,
    v2: Upstream,
    frontend: Arc<ClientConfig>,
    intruder: Arc<ClientConfig>,
}

async fn rig() -> Rig {
    let ca = DevCa::generate("cluster.local").unwrap();
    let certs_guard = temp_dir("certs");
    let certs = certs_guard.path().to_owned();
    let identity = |ns: &str, sa: &str| {
        let dir = certs.join(format!("{ns}-{sa}"));
        ca.write_workload_dir(&dir, ns, sa).unwrap();
        dir
    };
    let waypoint_dir = identity("shop", "waypoint");
    let waypoint_id = SpiffeId::new("cluster.local", "shop", "waypoint").unwrap();
    let client = |ns: &str, sa: &str| {
        Connector::new(CertStore::load(identity(ns, sa)).unwrap())
            .config(vec![waypoint_id.clone()])
            .unwrap()
    };
    let (v1, v2) = (harness::upstream().await, harness::upstream().await);
    let policy_guard = temp_dir("policy");
    let policy_dir = policy_guard.path().to_owned();
    std::fs::write(policy_dir.join("authz.yaml"), AUTHZ).unwrap();
    std::fs::write(policy_dir.join("route.yaml"), route("web")).unwrap();
    let yaml = format!(
        r#"
listeners: {{ http: null, admin: null, hbone: "127.0.0.1:0" }}
identity: {{ certDir: "{waypoint_dir}" }}
policyDir: "{policy_dir}"
policyPollIntervalMs: 50
services:
  - {{ name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/10.0.0.10"], ports: {{ 80: {v1} }} }}
  - {{ name: web-v2, namespace: shop, hostname: web-v2.shop.svc.cluster.local, vips: ["/10.0.0.12"], ports: {{ 80: {v2} }} }}
workloads:
  - uid: backends
    name: backends
    namespace: shop
    workloadIps: [127.0.0.1]
    services:
      shop/web.shop.svc.cluster.local: {{ 80: {v1} }}
      shop/web-v2.shop.svc.cluster.local: {{ 80: {v2} }}
"#,
        waypoint_dir = waypoint_dir.display(),
        policy_dir = policy_dir.display(),
        v1 = v1.addr.port(),
        v2 = v2.addr.port(),
    );
    let config = Config::from_yaml(&yaml, "policies-test.yaml", Path::new(".")).unwrap();
    let waypoint = Waypoint::start(config, wayplug::demo::builtins())
        .await
        .expect("waypoint starts");
    assert_eq!(waypoint.policy_errors(), Vec::<String>::new());
    Rig {
        waypoint,
        policy_dir,
        _dirs: [certs_guard, policy_guard],
        v1,
        v2,
        frontend: client("web", "frontend"),
        intruder: client("evil", "intruder"),
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

/// One HTTP/1.1 request inside a fresh HBONE tunnel to the web VIP, as the
/// ztunnel in front of the caller would send it.
async fn call(waypoint: SocketAddr, client: &Arc<ClientConfig>, path: &str, user: &str) -> Reply {
    let tcp = step("dial", TcpStream::connect(waypoint)).await.unwrap();
    let tls = step(
        "TLS",
        tokio_rustls::TlsConnector::from(client.clone())
            .connect(ServerName::IpAddress(waypoint.ip().into()), tcp),
    )
    .await
    .unwrap();
    let (mut h2, conn) = step(
        "HTTP/2",
        http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tls)),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri(WEB_VIP)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = step("CONNECT", h2.send_request(connect)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "CONNECT {WEB_VIP}");
    let tunnel = step("upgrade", hyper::upgrade::on(resp)).await.unwrap();
    let (mut sender, conn) = step("h1", http1::handshake(tunnel)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "web.shop.svc.cluster.local")
        .header("x-user", user)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = step("request", sender.send_request(req)).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = step("body", body.collect()).await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

impl Rig {
    fn addr(&self) -> SocketAddr {
        self.waypoint.hbone_addr.expect("HBONE listener")
    }

    /// The decisions every phase of the test expects while the route sends
    /// `/` to `default` (`v1` or `v2`).
    async fn assert_serving(&self, default: &str) {
        let (default_up, backend) = match default {
            "v1" => (&self.v1, "web"),
            _ => (&self.v2, "web-v2"),
        };
        let before = (self.v1.count(), self.v2.count());

        let r = call(self.addr(), &self.frontend, "/hello", "alice").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body, "upstream saw /hello");
        assert_eq!(r.headers["x-route"], backend, "ResponseHeaderModifier set");
        assert!(
            !r.headers.contains_key("x-upstream-secret"),
            "ResponseHeaderModifier remove: {:?}",
            r.headers
        );
        let seen = default_up.last();
        assert_eq!(seen.path, "/hello");
        assert_eq!(seen.headers["x-routed"], backend);

        let r = call(self.addr(), &self.frontend, "/v2/items?page=2", "alice").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body, "upstream saw /items?page=2", "prefix rewritten");
        assert_eq!(self.v2.last().path, "/items?page=2");

        // The CEL condition fails: RBAC denies, nothing reaches a backend.
        let counts = (self.v1.count(), self.v2.count());
        let r = call(self.addr(), &self.frontend, "/hello", "mallory").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
        assert_eq!(r.body, "RBAC: access denied");
        // The right header from the wrong identity.
        let r = call(self.addr(), &self.intruder, "/hello", "alice").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
        assert_eq!((self.v1.count(), self.v2.count()), counts);

        let total = |c: (usize, usize)| c.0 + c.1;
        assert_eq!(total((self.v1.count(), self.v2.count())), total(before) + 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_and_routing_from_kubernetes_yaml_over_hbone() {
    let rig = rig().await;
    rig.assert_serving("v1").await;

    // A changed route is picked up live.
    std::fs::write(rig.policy_dir.join("route.yaml"), route("web-v2")).unwrap();
    // Applying it recompiles the namespace's plugins (Cranelift, in a debug
    // build on a busy machine): allow up to 30 s.
    let mut switched = false;
    for _ in 0..150 {
        let r = call(rig.addr(), &rig.frontend, "/hello", "alice").await;
        if r.headers.get("x-route").is_some_and(|v| v == "web-v2") {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        switched,
        "the route change was not applied: {:?}",
        rig.waypoint.policy_errors()
    );
    rig.assert_serving("v2").await;
    rig.waypoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_named_and_the_previous_ones_keep_serving() {
    let rig = rig().await;
    let dir = &rig.policy_dir;
    // Each edit breaks one resource in its own way.
    let unknown_field =
        route("web").replace("backendRefs: [{ name: web,", "backendRefz: [{ name: web,");
    let bad_cel = AUTHZ.replace("== 'alice'", "== ");
    let ghost = route("web")
        .replace("name: web, namespace: shop", "name: ghost, namespace: shop")
        .replace(
            "backendRefs: [{ name: web, port: 80 }]",
            "backendRefs: [{ name: nowhere, port: 80 }]",
        );
    std::fs::write(dir.join("route.yaml"), unknown_field).unwrap();
    std::fs::write(dir.join("authz.yaml"), bad_cel).unwrap();
    std::fs::write(
        dir.join("more.yaml"),
        format!("{ghost}---\nmetadata: {{ name: [oops\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: skipped }}\n"),
    )
    .unwrap();

    let errors = eventually(|| async {
        let errors = rig.waypoint.policy_errors();
        (errors.len() == 4).then_some(errors)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "expected four errors, got {:#?}",
            rig.waypoint.policy_errors()
        )
    });
    let file = |name: &str| dir.join(name).display().to_string();
    let expect = [
        (
            file("authz.yaml"),
            "document 0: AuthorizationPolicy shop/web-callers:",
            "CEL expression `request.headers['x-user'] == ` does not compile",
        ),
        (
            file("more.yaml"),
            "document 0: HTTPRoute shop/ghost: field `spec.rules[1].backendRefs[0].name`:",
            "Service shop/nowhere is not known to the waypoint",
        ),
        (
            file("more.yaml"),
            "document 1: malformed YAML, document skipped:",
            "",
        ),
        (
            file("route.yaml"),
            "document 0: HTTPRoute shop/web: field `spec.rules[1].backendRefz`:",
            "unknown field `backendRefz`",
        ),
    ];
    for (error, (file, head, detail)) in errors.iter().zip(expect) {
        assert!(
            error.starts_with(&format!("{file}: {head}")) && error.contains(detail),
            "{error}\nexpected {file}: {head} ... {detail}"
        );
    }
    assert!(
        errors[0].ends_with("its previous version stays in force"),
        "{}",
        errors[0]
    );
    assert!(
        errors[3].ends_with("its previous version stays in force"),
        "{}",
        errors[3]
    );

    // The waypoint serves with the policies it had.
    rig.assert_serving("v1").await;
    rig.waypoint.shutdown().await;
}

/// The demo's `store` namespace does what `wayplug run` says it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_store_namespace_allows_denies_and_routes() {
    let dir_guard = temp_dir("demo");
    let dir = dir_guard.path();
    let echo = wayplug::demo::start_echo().await.unwrap();
    let store = wayplug::demo::StoreBackends::start().await.unwrap();
    let certs = wayplug::demo::write_certs(dir).unwrap();
    let policies = wayplug::demo::write_policies(dir).unwrap();
    let mut config = wayplug::demo::config(echo, store, &certs, &policies).unwrap();
    config.listeners.http = Some("127.0.0.1:0".parse().unwrap());
    config.listeners.admin = None;
    config.listeners.hbone = None;
    let waypoint = Waypoint::start(config, wayplug::demo::builtins())
        .await
        .expect("the demo starts");
    assert_eq!(waypoint.policy_errors(), Vec::<String>::new());
    let http = waypoint.http_addr.unwrap();
    let get = |path: &'static str, user: &'static str| async move {
        harness::send(http, "GET", "store.demo.svc", path, &[("x-user", user)], "").await
    };
    let r = step("store /", get("/", "alice")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.starts_with("served by store-web\nGET /\n"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("x-wayplug-route"), "{}", r.body);
    let r = step("store /api", get("/api/items", "bob")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.starts_with("served by store-api\nGET /api/items\n"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("x-wayplug-route: store-api\n"),
        "{}",
        r.body
    );
    let r = step("store denied", get("/api/items", "mallory")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body, "RBAC: access denied");
    waypoint.shutdown().await;
}
