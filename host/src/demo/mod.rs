//! `wayplug run` with no config: a demo waypoint with two namespaces, each
//! with its own plugin chain, in front of a built-in echo upstream, reachable
//! over plaintext HTTP and over HBONE (with development certificates made at
//! start).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::{self, Config};
use crate::plugin::registry::Builtins;
use crate::tls::{self, DevCa, SpiffeId};

/// The demo's development identities, in Istio's file layout.
#[derive(Debug, Clone)]
pub struct DemoCerts {
    /// The development CA (`wayplug certs issue --ca DIR` makes more identities).
    pub ca: PathBuf,
    pub waypoint: PathBuf,
    pub waypoint_id: SpiffeId,
    /// `web/frontend`: admitted to `shop`, refused by `bank`'s L4 rules.
    pub frontend: PathBuf,
    /// `tellers/desk`: admitted to `bank`.
    pub teller: PathBuf,
}

/// Makes a CA and the demo's identities under `dir`.
pub fn write_certs(dir: &Path) -> Result<DemoCerts, tls::Error> {
    let ca = DevCa::generate("cluster.local")?;
    let certs = DemoCerts {
        ca: dir.join("ca"),
        waypoint: dir.join("waypoint"),
        waypoint_id: SpiffeId::new("cluster.local", "demo", "waypoint")?,
        frontend: dir.join("web-frontend"),
        teller: dir.join("tellers-desk"),
    };
    ca.save(&certs.ca)?;
    ca.write_workload_dir(&certs.waypoint, "demo", "waypoint")?;
    ca.write_workload_dir(&certs.frontend, "web", "frontend")?;
    ca.write_workload_dir(&certs.teller, "tellers", "desk")?;
    Ok(certs)
}

/// Plugins compiled into the binary, usable as `builtin://NAME`.
pub fn builtins() -> Builtins {
    BTreeMap::from([
        (
            "header-allowlist",
            &include_bytes!(concat!(
                env!("OUT_DIR"),
                "/demo/header_allowlist_proxywasm.wasm"
            ))[..],
        ),
        (
            "add-headers",
            &include_bytes!(concat!(env!("OUT_DIR"), "/demo/add_headers_proxywasm.wasm"))[..],
        ),
        (
            "authz",
            &include_bytes!(concat!(env!("OUT_DIR"), "/builtin/wayplug_authz.wasm"))[..],
        ),
        (
            "route",
            &include_bytes!(concat!(env!("OUT_DIR"), "/builtin/wayplug_route.wasm"))[..],
        ),
    ])
}

/// The `store` namespace's two backends, each an echo that says which it is.
#[derive(Debug, Clone, Copy)]
pub struct StoreBackends {
    pub web: SocketAddr,
    pub api: SocketAddr,
}

impl StoreBackends {
    pub async fn start() -> std::io::Result<StoreBackends> {
        Ok(StoreBackends {
            web: start_labelled_echo("store-web").await?,
            api: start_labelled_echo("store-api").await?,
        })
    }
}

/// The `store` namespace's policies, as Kubernetes YAML: an
/// AuthorizationPolicy with one CEL condition, and an HTTPRoute that sends
/// `/api` to one backend (adding a header) and the rest to the other.
pub const STORE_POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: store-users, namespace: store }
spec:
  targetRefs: [{ kind: Service, group: "", name: store }]
  action: ALLOW
  rules:
    - when: [{ key: cel, values: ["request.headers['x-user'] in ['alice', 'bob']"] }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: store, namespace: store }
spec:
  parentRefs: [{ group: "", kind: Service, name: store }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /api } }]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: { set: [{ name: x-wayplug-route, value: store-api }] }
      backendRefs: [{ name: store-api, port: 80 }]
    - backendRefs: [{ name: store-web, port: 80 }]
"#;

/// Writes [`STORE_POLICIES`] into `dir/policies` and returns that folder,
/// the demo's `policyDir`.
pub fn write_policies(dir: &Path) -> std::io::Result<PathBuf> {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(policies.join("store.yaml"), STORE_POLICIES)?;
    Ok(policies)
}

/// The demo config, pointing `shop` and `bank` at the echo upstream and
/// `store`'s two backends at theirs.
pub fn config(
    echo: SocketAddr,
    store: StoreBackends,
    certs: &DemoCerts,
    policy_dir: &Path,
) -> Result<Config, config::Error> {
    let port = echo.port();
    let (web, api) = (store.web.port(), store.api.port());
    let policy_dir = policy_dir.display();
    let cert_dir = certs.waypoint.display();
    let yaml = format!(
        r#"
listeners:
  http: "127.0.0.1:15006"
  admin: "127.0.0.1:15000"
  hbone: "127.0.0.1:15008"
identity:
  certDir: "{cert_dir}"
policyDir: "{policy_dir}"
services:
  - {{ name: shop, namespace: shop, hostname: shop.demo.svc, vips: ["/10.96.0.10"], ports: {{ 80: {port} }} }}
  - {{ name: bank, namespace: bank, hostname: bank.demo.svc, vips: ["/10.96.0.11"], ports: {{ 80: {port} }}, appProtocols: {{ 80: HTTP }} }}
  - {{ name: store, namespace: store, hostname: store.demo.svc, vips: ["/10.96.0.12"], ports: {{ 80: {web} }} }}
  - {{ name: store-web, namespace: store, hostname: store-web.demo.svc, ports: {{ 80: {web} }} }}
  - {{ name: store-api, namespace: store, hostname: store-api.demo.svc, ports: {{ 80: {api} }} }}
workloads:
  - uid: demo//v1/Pod/demo/echo
    name: echo
    namespace: demo
    serviceAccount: echo
    workloadIps: ["127.0.0.1"]
    protocol: TCP
    services:
      shop/shop.demo.svc: {{ 80: {port} }}
      bank/bank.demo.svc: {{ 80: {port} }}
      store/store.demo.svc: {{ 80: {web} }}
      store/store-web.demo.svc: {{ 80: {web} }}
      store/store-api.demo.svc: {{ 80: {api} }}
namespaces:
  shop:
    plugins:
      - name: allowlist
        url: builtin://header-allowlist
        phase: AUTHZ
        pluginConfig: {{ header: x-user, allow: [alice, bob] }}
      - name: stamp
        url: builtin://add-headers
        pluginConfig:
          request: {{ x-wayplug-namespace: shop }}
          response: {{ x-served-by: wayplug-demo }}
  bank:
    plugins:
      - name: tellers-only
        url: builtin://header-allowlist
        phase: AUTHZ
        failStrategy: FAIL_CLOSE
        pluginConfig: {{ header: x-role, allow: [teller], deny_status: 401 }}
    authorization:
      allow: [ {{ namespaces: [tellers] }} ]
"#
    );
    Config::from_yaml(&yaml, "<embedded demo config>", std::path::Path::new("."))
}

/// The demo's upstream: answers every request with what it received, so the
/// plugins' header changes are visible.
pub async fn start_echo() -> std::io::Result<SocketAddr> {
    start_labelled_echo("echo").await
}

/// An echo upstream whose answers start with `served by <label>`.
pub async fn start_labelled_echo(label: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut text = format!("served by {label}\n{} {}\n", parts.method, parts.uri);
                    for (k, v) in &parts.headers {
                        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                    }
                    if !body.is_empty() {
                        text.push('\n');
                        text.push_str(&String::from_utf8_lossy(&body));
                        text.push('\n');
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// How to reach the demo over HBONE; `exe` is how to invoke this binary.
pub fn hbone_instructions(hbone: SocketAddr, certs: &DemoCerts, exe: &str) -> String {
    let id = &certs.waypoint_id;
    let (frontend, teller) = (certs.frontend.display(), certs.teller.display());
    format!(
        "HBONE (mTLS + HTTP/2 CONNECT, as from ztunnel) on {hbone}, as {id}.
Development certificates: {dir} (CA in {ca}).
`wayplug tunnel` plays ztunnel: each connection to its local port becomes a CONNECT to a VIP.

  # as web/frontend, to the shop VIP: the plugins see source.principal, and the echo shows
  # the traceparent and forwarded headers the tunnel carried
  {exe} tunnel --listen 127.0.0.1:15101 --waypoint {hbone} --to 10.96.0.10:80 \\
      --identity {frontend} --expect {id} &
  curl -i -H 'x-user: alice' http://127.0.0.1:15101/cart
  # bank admits tunnels only from namespace tellers: web/frontend is refused (401 in the logs)
  {exe} tunnel --listen 127.0.0.1:15102 --waypoint {hbone} --to 10.96.0.11:80 \\
      --identity {frontend} --expect {id} &
  curl -i -H 'x-role: teller' http://127.0.0.1:15102/balance
  # as tellers/desk it gets through
  {exe} tunnel --listen 127.0.0.1:15103 --waypoint {hbone} --to 10.96.0.11:80 \\
      --identity {teller} --expect {id} &
  curl -i -H 'x-role: teller' http://127.0.0.1:15103/balance
",
        dir = certs.waypoint.parent().unwrap_or(&certs.waypoint).display(),
        ca = certs.ca.display(),
    )
}

/// What to try once the demo is up.
pub fn instructions(http: SocketAddr, admin: Option<SocketAddr>) -> String {
    let mut s = format!(
        "Wayplug demo waypoint listening on http://{http}

Namespace `shop` runs allowlist (x-user must be alice or bob) then stamp (adds headers).
Namespace `bank` runs tellers-only (x-role must be teller, else 401).
Namespace `store` is configured by Kubernetes YAML in the policyDir: an AuthorizationPolicy
(CEL: x-user must be alice or bob) and an HTTPRoute (/api to store-api with a header, the rest
to store-web).

  # allowed: the echo upstream shows the headers the plugins added
  curl -i -H 'host: shop.demo.svc' -H 'x-user: alice' http://{http}/cart
  # denied by the shop allowlist (403)
  curl -i -H 'host: shop.demo.svc' -H 'x-user: mallory' http://{http}/cart
  # allowed in bank, denied (401) without the role
  curl -i -H 'host: bank.demo.svc' -H 'x-role: teller' http://{http}/balance
  curl -i -H 'host: bank.demo.svc' http://{http}/balance
  # store: routed to store-web, then by path to store-api (which sees x-wayplug-route)
  curl -i -H 'host: store.demo.svc' -H 'x-user: alice' http://{http}/
  curl -i -H 'host: store.demo.svc' -H 'x-user: alice' http://{http}/api/items
  # denied by the AuthorizationPolicy's CEL condition (403 RBAC: access denied)
  curl -i -H 'host: store.demo.svc' -H 'x-user: mallory' http://{http}/api/items
  # HTTP/2 (h2c prior knowledge) works on the same port
  curl -i --http2-prior-knowledge -H 'host: shop.demo.svc' -H 'x-user: bob' http://{http}/
"
    );
    if let Some(admin) = admin {
        s.push_str(&format!(
            "  # metrics and the loaded plugins with their sha256
  curl -s http://{admin}/metrics | grep wayplug_
  curl -s http://{admin}/config_dump
"
        ));
    }
    s
}
