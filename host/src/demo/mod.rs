//! `wayplug run` with no config: a demo waypoint with two namespaces, each
//! with its own plugin chain, in front of a built-in echo upstream.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::{self, Config};
use crate::plugin::registry::Builtins;

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
    ])
}

/// The demo config, pointing both services at the echo upstream.
pub fn config(echo: SocketAddr) -> Result<Config, config::Error> {
    let port = echo.port();
    let yaml = format!(
        r#"
listeners:
  http: "127.0.0.1:15006"
  admin: "127.0.0.1:15000"
services:
  - {{ name: shop, namespace: shop, hostname: shop.demo.svc, vips: ["/10.96.0.10"], ports: {{ 80: {port} }} }}
  - {{ name: bank, namespace: bank, hostname: bank.demo.svc, vips: ["/10.96.0.11"], ports: {{ 80: {port} }} }}
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
"#
    );
    Config::from_yaml(&yaml, "<embedded demo config>", std::path::Path::new("."))
}

/// The demo's upstream: answers every request with what it received, so the
/// plugins' header changes are visible.
pub async fn start_echo() -> std::io::Result<SocketAddr> {
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
                    let mut text = format!("{} {}\n", parts.method, parts.uri);
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

/// What to try once the demo is up.
pub fn instructions(http: SocketAddr, admin: Option<SocketAddr>) -> String {
    let mut s = format!(
        "Wayplug demo waypoint listening on http://{http}

Namespace `shop` runs allowlist (x-user must be alice or bob) then stamp (adds headers).
Namespace `bank` runs tellers-only (x-role must be teller, else 401).

  # allowed: the echo upstream shows the headers the plugins added
  curl -i -H 'host: shop.demo.svc' -H 'x-user: alice' http://{http}/cart
  # denied by the shop allowlist (403)
  curl -i -H 'host: shop.demo.svc' -H 'x-user: mallory' http://{http}/cart
  # allowed in bank, denied (401) without the role
  curl -i -H 'host: bank.demo.svc' -H 'x-role: teller' http://{http}/balance
  curl -i -H 'host: bank.demo.svc' http://{http}/balance
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
