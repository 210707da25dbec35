//! Decision time of `builtin://authz` for one ALLOW policy of 20 rules, two
//! of them with CEL conditions; every request walks all 20 rules and runs
//! both expressions.
//!
//! - `authz/native_evaluate`: the evaluator alone, natively (no Wasm).
//! - `authz/filter`: the guest work of one request: the component call
//!   (context creation, `on-request`, end-of-request callbacks).
//! - `authz/pipeline_deny`: a whole request through `Pipeline::handle`, in
//!   process, denied after the last rule, so no socket or upstream is
//!   involved.
//!
//! Run: `cargo bench -p wayplug-tests --bench authz` (`WAYPLUG_BENCH_AUTHZ`
//! names another build of the plugin to measure instead of the built-in).

use std::path::Path;
use std::sync::Arc;
use wayplug_tests::bench;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};
use wayplug::config::{Config, PluginSpec};
use wayplug::exchange::{Exchange, RequestHead};
use wayplug::metrics::Metrics;
use wayplug::plugin::callout::Callouts;
use wayplug::plugin::engine::Engine;
use wayplug::plugin::{Plugin, Registry};
use wayplug_authz::Authz;
use wayplug_sdk::Policy as _;

fn policy() -> Value {
    let mut rules: Vec<Value> = (0..18)
        .map(|i| json!({"to": [{"operation": {"methods": ["GET"], "paths": [format!("/svc{i}/*")]}}]}))
        .collect();
    rules.push(json!({
        "to": [{"operation": {"paths": ["/orders/*"]}}],
        "when": [{"key": "cel", "values": ["request.headers['x-user'] == 'bob'"]}]
    }));
    rules.push(json!({
        "to": [{"operation": {"paths": ["/orders/*"]}}],
        "when": [{"key": "cel", "values": ["request.url_path.matches('^/orders/[0-9]+$') && source.address != ''"]}]
    }));
    json!({"policies": [{
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "twenty", "namespace": "bench"},
        "spec": {
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "rules": rules,
        }
    }]})
}

fn spec() -> PluginSpec {
    // `WAYPLUG_BENCH_AUTHZ=/path/to/wayplug_authz.wasm` measures another
    // build of the plugin (another guest profile, say) in its place.
    let url = std::env::var("WAYPLUG_BENCH_AUTHZ")
        .map_or_else(|_| "builtin://authz".to_owned(), |p| format!("file://{p}"));
    serde_json::from_value(json!({
        "name": "authz",
        "url": url,
        "pluginConfig": policy(),
    }))
    .unwrap()
}

const YAML: &str = r#"
listeners: { http: null, admin: null }
sandbox: { instancesPerPlugin: 1 }
services:
  - { name: api, namespace: bench, hostname: api.bench, ports: { 80: 9 } }
workloads:
  - { uid: u, name: api, namespace: bench, workloadIps: ["127.0.0.1"], services: { bench/api.bench: { 80: 9 } } }
"#;

fn head(path: &str) -> RequestHead {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("x-user", "alice"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("x-request-id", "0123456789abcdef0123456789abcdef"),
    ] {
        headers.insert(k, v.parse().unwrap());
    }
    RequestHead {
        method: Method::GET,
        scheme: "http".into(),
        authority: "api.bench".into(),
        path: path.into(),
        headers,
    }
}

fn bench(c: &mut Criterion) {
    let native = wayplug_sdk::testing::configure::<Authz>(&policy().to_string()).unwrap();
    let req = wayplug_sdk::Request::builder()
        .path("/orders/42")
        .header("x-user", "alice")
        .build();
    c.bench_function("authz/native_evaluate", |b| {
        b.iter(|| {
            let out = native.decide(&req, wayplug_authz::Protocol::Http).unwrap();
            assert!(out.allowed);
        })
    });
    assert!(native.on_request(&req).is_allow());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut config = Config::from_yaml(YAML, "bench.yaml", Path::new(".")).unwrap();
    // The optimized code plugins run on, from the first iteration.
    config.sandbox.compiler = wayplug::config::Compiler::Optimizing;
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::new(&config.sandbox).unwrap();
    let registry = Arc::new(Registry::new(
        engine,
        metrics.clone(),
        Arc::new(Callouts::new(Default::default())),
        config.sandbox.clone(),
        wayplug::demo::builtins(),
    ));
    // The services the requests go to; the chain under test is installed next to them.
    rt.block_on(registry.apply(config.clone())).unwrap();
    let chain = rt
        .block_on(registry.build_chain("bench", &[spec()], Path::new(".")))
        .unwrap();
    let plugin: Arc<Plugin> = chain.plugins[0].clone();
    registry.install("bench", Some(chain));

    c.bench_function("authz/filter", |b| {
        b.iter(|| {
            let ex = Arc::new(Exchange::new(bench::info(), head("/orders/42")));
            let mut f = plugin.new_filter(&ex, false).unwrap();
            f.on_request_headers(true).unwrap();
            assert!(ex.lock().local_response.is_none(), "allowed by rule 19");
            f.finish();
        })
    });

    let pipeline = bench::pipeline(registry.clone(), metrics.clone());
    let conn = bench::conn();
    c.bench_function("authz/pipeline_deny", |b| {
        b.to_async(&rt).iter(|| async {
            let req = Request::builder()
                .uri("/orders/abc")
                .header("host", "api.bench")
                .header("x-user", "alice")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = pipeline.handle(req, &conn).await.unwrap();
            assert_eq!(resp.status(), 403);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
