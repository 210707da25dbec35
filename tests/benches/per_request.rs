//! Per-request cost of a trivial policy, the same header allowlist written
//! for both plugin ABIs (`examples/header-allowlist` as a component,
//! `examples/header-allowlist-proxywasm` as a Proxy-Wasm module).
//!
//! - `filter/*`: one request's plugin work alone: context creation, the
//!   request-headers callback and the end-of-request callbacks.
//! - `pipeline_deny/*`: a whole request through `Pipeline::handle`, in
//!   process, denied by the plugin, so no socket or upstream is involved.
//!
//! Run: `cargo bench -p wayplug-tests --bench per_request`.

use std::path::Path;
use std::sync::Arc;
use wayplug_tests::bench;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Request};
use http_body_util::Full;
use wayplug::config::{Config, PluginSpec};
use wayplug::exchange::{Exchange, RequestHead};
use wayplug::metrics::Metrics;
use wayplug::plugin::callout::Callouts;
use wayplug::plugin::engine::Engine;
use wayplug::plugin::{Plugin, Registry};

const CONFIG: &str = r#"{"header": "x-user", "allow": ["alice", "bob"]}"#;

fn spec(url: String) -> PluginSpec {
    serde_json::from_value(serde_json::json!({
        "name": "allow",
        "url": url,
        "pluginConfig": serde_json::from_str::<serde_json::Value>(CONFIG).unwrap(),
    }))
    .unwrap()
}

fn urls() -> [(&'static str, String); 2] {
    let component = wayplug_tests::component("header-allowlist");
    let proxy_wasm = wayplug_tests::proxy_wasm_example("header-allowlist-proxywasm");
    [
        ("component", format!("file://{}", component.display())),
        ("proxy_wasm", format!("file://{}", proxy_wasm.display())),
    ]
}

fn yaml() -> String {
    r#"
listeners: { http: null, admin: null }
sandbox: { instancesPerPlugin: 1 }
services:
  - { name: api, namespace: bench, hostname: api.bench, ports: { 80: 9 } }
workloads:
  - { uid: u, name: api, namespace: bench, workloadIps: ["127.0.0.1"], services: { bench/api.bench: { 80: 9 } } }
"#
    .into()
}

fn head(user: &str) -> RequestHead {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("x-user", user),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("x-request-id", "0123456789abcdef0123456789abcdef"),
        ("x-forwarded-proto", "http"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ] {
        headers.insert(k, v.parse().unwrap());
    }
    RequestHead {
        method: Method::GET,
        scheme: "http".into(),
        authority: "api.bench".into(),
        path: "/orders/42?verbose=1".into(),
        headers,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = Config::from_yaml(&yaml(), "bench.yaml", Path::new(".")).unwrap();
    let metrics = Arc::new(Metrics::new());
    for (abi, url) in urls() {
        let engine = Engine::new(&config.sandbox).unwrap();
        let registry = Arc::new(Registry::new(
            engine,
            metrics.clone(),
            Arc::new(Callouts::new(Default::default())),
            config.sandbox.clone(),
            Default::default(),
        ));
        rt.block_on(registry.apply(config.clone())).unwrap();
        let chain = rt
            .block_on(registry.build_chain("bench", &[spec(url)], Path::new(".")))
            .unwrap();
        let plugin: Arc<Plugin> = chain.plugins[0].clone();
        registry.install("bench", Some(chain));

        c.bench_function(&format!("filter/{abi}/allow"), |b| {
            b.iter(|| {
                let ex = Arc::new(Exchange::new(bench::info(), head("alice")));
                let mut f = plugin.new_filter(&ex, false).unwrap();
                f.on_request_headers(true).unwrap();
                f.finish();
            })
        });

        let pipeline = bench::pipeline(registry.clone(), metrics.clone());
        let conn = bench::conn();
        c.bench_function(&format!("pipeline_deny/{abi}"), |b| {
            b.to_async(&rt).iter(|| async {
                let req = Request::builder()
                    .uri("/orders/42")
                    .header("host", "api.bench")
                    .header("x-user", "mallory")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = pipeline.handle(req, &conn).await.unwrap();
                assert_eq!(resp.status(), 403);
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
