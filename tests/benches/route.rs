//! Route selection among 50 HTTPRoutes attached to one Service (the matching
//! rule has the lowest precedence, so every other entry is tried first).
//!
//! - `route/select_native_50`: the plugin's own work per request (the
//!   `wayplug_route` table, compiled natively).
//! - `route/pipeline_50`: a whole request through `Pipeline::handle` with
//!   `builtin://route` in the chain; the rule redirects, so no upstream is
//!   involved.
//!
//! Run: `cargo bench -p wayplug-tests --bench route`.

use std::path::Path;
use std::sync::Arc;
use wayplug_tests::bench;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use wayplug::config::{Config, PluginSpec};
use wayplug::metrics::Metrics;
use wayplug::plugin::Registry;
use wayplug::plugin::callout::Callouts;
use wayplug::plugin::engine::Engine;
use wayplug_sdk::Destination;

fn routes() -> Vec<Value> {
    (0..50)
        .map(|i| {
            let rule = if i == 49 {
                json!({"matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}],
                       "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "orders.bench"}}]})
            } else {
                json!({"matches": [{"path": {"type": "PathPrefix", "value": format!("/prefix-{i:02}/more")},
                                    "headers": [{"name": "x-tenant", "value": format!("t{i}")}]}],
                       "backendRefs": [{"name": "api", "port": 80}]})
            };
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": format!("r{i:02}"), "namespace": "bench"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api"}], "rules": [rule]},
            })
        })
        .collect()
}

fn plugin_config() -> Value {
    json!({
        "routes": routes(),
        "services": [{"namespace": "bench", "name": "api", "hostname": "api.bench", "ports": [80]}],
    })
}

const YAML: &str = r#"
listeners: { http: null, admin: null }
sandbox: { instancesPerPlugin: 1 }
services:
  - { name: api, namespace: bench, hostname: api.bench, ports: { 80: 9 } }
workloads:
  - { uid: u, name: api, namespace: bench, workloadIps: ["127.0.0.1"], services: { bench/api.bench: { 80: 9 } } }
"#;

fn bench(c: &mut Criterion) {
    let config: wayplug_route::Config = serde_json::from_value(plugin_config()).unwrap();
    let table = wayplug_route::compile(config).unwrap();
    let req = wayplug_sdk::Request::builder()
        .path("/orders/42?verbose=1")
        .header("x-tenant", "t7")
        .destination(Destination::new("api.bench", "bench", 80))
        .build();
    c.bench_function("route/select_native_50", |b| {
        b.iter(|| {
            let d = table.decide(&req, 0);
            assert_eq!(d.status(), Some(302));
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut config = Config::from_yaml(YAML, "bench.yaml", Path::new(".")).unwrap();
    // The optimized code plugins run on, from the first iteration.
    config.sandbox.compiler = wayplug::config::Compiler::Optimizing;
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(
        Engine::new(&config.sandbox).unwrap(),
        metrics.clone(),
        Arc::new(Callouts::new(Default::default())),
        config.sandbox.clone(),
        wayplug::demo::builtins(),
    ));
    // The services the requests go to; the chain under test is installed next to them.
    rt.block_on(registry.apply(config.clone())).unwrap();
    let spec: PluginSpec = serde_json::from_value(json!({
        "name": "httproute", "url": "builtin://route", "pluginConfig": plugin_config(),
    }))
    .unwrap();
    let chain = rt
        .block_on(registry.build_chain("bench", &[spec], Path::new(".")))
        .unwrap();
    registry.install("bench", Some(chain));
    let pipeline = bench::pipeline(registry.clone(), metrics);
    let conn = bench::conn();
    c.bench_function("route/pipeline_50", |b| {
        b.to_async(&rt).iter(|| async {
            let req = Request::builder()
                .uri("/orders/42?verbose=1")
                .header("host", "api.bench")
                .header("x-tenant", "t7")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = pipeline.handle(req, &conn).await.unwrap();
            assert_eq!(resp.status(), 302);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
