//! Bad config files and bad plugins are refused with errors that say what is
//! wrong, and a running waypoint keeps its config when a reload is bad.

use std::path::Path;
use std::time::Duration;

use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug_tests::harness::*;

async fn start_err(yaml: &str) -> String {
    let config = match Config::from_yaml(yaml, "bad.yaml", Path::new("/nonexistent")) {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    match Waypoint::start(config, Default::default()).await {
        Ok(_) => panic!("config must be refused:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_refused_with_reasons() {
    let headers = fixture_url("headers");
    // Removed when dropped, also when the test fails.
    let dir_guard = tempfile::Builder::new()
        .prefix("wayplug-bad-")
        .tempdir()
        .unwrap();
    let dir = dir_guard.path();
    let not_wasm = dir.join("not.wasm");
    std::fs::write(&not_wasm, b"definitely not wasm").unwrap();
    let zeros = "0".repeat(64);
    let cases: Vec<(String, &str)> = vec![
        (
            "listeners: { http: 127.0.0.1:0 }\nbogus: true".into(),
            "unknown field `bogus`",
        ),
        (
            format!(
                "namespaces: {{ a: {{ plugins: [ {{ name: p, url: \"{headers}\", sha256: {zeros} }} ] }} }}"
            ),
            "sha256 mismatch",
        ),
        (
            "namespaces: { a: { plugins: [ { name: p, url: \"file://missing.wasm\" } ] } }".into(),
            "cannot read /nonexistent/missing.wasm",
        ),
        (
            format!(
                "namespaces: {{ a: {{ plugins: [ {{ name: p, url: \"file://{}\" }} ] }} }}",
                not_wasm.display()
            ),
            // `definitely not wasm`: one line naming the first bytes.
            "not a loadable WebAssembly module: bad magic bytes 64 65 66 69 (a module starts with 00 61 73 6d)",
        ),
        (
            "namespaces: { a: { plugins: [ { name: p, url: \"builtin://nope\" } ] } }".into(),
            "no builtin plugin named `nope`",
        ),
        (
            "namespaces: { a: { plugins: [ { name: p, url: \"ftp://reg/p.wasm\" } ] } }".into(),
            "only file://, builtin:// and oci://",
        ),
        (
            "namespaces: { a: { plugins: [ { name: p, url: \"oci://reg/P:1\" } ] } }".into(),
            "repository `P` must be lowercase",
        ),
        (
            "namespaces: { a: { plugins: [ { name: p, url: \"file://x.wasm\", imagePullPolicy: Always } ] } }".into(),
            "imagePullPolicy`: applies only to oci:// urls",
        ),
        (
            "namespaces: { a: { plugins: [ { name: p, url: \"file://x.wasm\", shadow: { url: \"file://y.wasm\", timeoutMs: 0 } } ] } }".into(),
            "shadow.timeoutMs`: must be between 1 and 60000",
        ),
        (
            "sandbox: { memoryLimitMiB: 0 }".into(),
            "sandbox.memoryLimitMiB",
        ),
    ];
    for (yaml, want) in cases {
        let yaml = format!("listeners: {{ http: \"127.0.0.1:0\", admin: null }}\n{yaml}");
        let yaml = yaml.replacen("listeners: { http: 127.0.0.1:0 }\n", "", 1);
        let err = start_err(&yaml).await;
        assert!(err.contains(want), "`{err}` lacks `{want}` for:\n{yaml}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_chains_without_dropping_requests_and_refuses_bad_ones() {
    let up = upstream().await;
    let with = |plugin: &str| {
        config_yaml(
            up.addr,
            &format!(
                "namespaces:\n  alpha:\n    plugins:\n      - name: p\n        url: {}\n",
                fixture_url(plugin)
            ),
        )
    };
    let config = Config::from_yaml(&with("headers"), "t.yaml", Path::new(".")).unwrap();
    let wp = Waypoint::start(config, Default::default()).await.unwrap();
    let http = wp.http_addr.unwrap();

    // Slow requests in flight across the swap all finish.
    let inflight: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move { send(http, "GET", "alpha.test", "/slow", &[], "").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let next = Config::from_yaml(&with("metrics"), "t.yaml", Path::new(".")).unwrap();
    wp.reload(next).await.unwrap();
    for r in inflight {
        assert_eq!(r.await.unwrap().status, 200);
    }
    send(http, "GET", "alpha.test", "/after", &[], "").await;
    let seen = up.last();
    assert!(
        seen.headers.get("x-metric-value").is_some(),
        "the new chain serves new requests"
    );
    assert!(
        seen.headers.get("x-fixture-headers").is_none(),
        "the old chain is gone"
    );

    // A broken plugin in a reload changes nothing.
    let mut bad = Config::from_yaml(&with("headers"), "t.yaml", Path::new(".")).unwrap();
    bad.namespaces.get_mut("alpha").unwrap().plugins[0].sha256 = Some("0".repeat(64));
    let err = wp.reload(bad).await.unwrap_err().to_string();
    assert!(err.contains("sha256 mismatch"), "{err}");
    send(http, "GET", "alpha.test", "/still", &[], "").await;
    assert!(
        up.last().headers.get("x-metric-value").is_some(),
        "the running chain stays"
    );

    // Removing the namespace's plugins applies too.
    let none = Config::from_yaml(&config_yaml(up.addr, ""), "t.yaml", Path::new(".")).unwrap();
    wp.reload(none).await.unwrap();
    send(http, "GET", "alpha.test", "/bare", &[], "").await;
    assert!(up.last().headers.get("x-metric-value").is_none());
    wp.shutdown().await;
}

fn capacity_yaml(max: u32, strategy: &str) -> String {
    format!(
        r#"listeners: {{ http: "127.0.0.1:0", admin: null }}
sandbox: {{ maxInstances: {max}, instancesPerPlugin: 2, requestsPerComponent: 4 }}
namespaces:
  a:
    plugins:
      - {{ name: p1, url: "{}", failStrategy: {strategy} }}
      - {{ name: p2, url: "{}" }}
      - {{ name: c1, url: "{}", pluginConfig: {{}} }}
"#,
        fixture_url("headers"),
        fixture_url("metrics"),
        component_url("component-misbehave"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_instances_is_checked_against_what_the_plugins_need() {
    // 2 Proxy-Wasm plugins × 2 VMs, one FAIL_RELOAD replacement, and a
    // component with 2 ready instances plus 4 requests at once: 11.
    let err = start_err(&capacity_yaml(10, "FAIL_RELOAD")).await;
    for want in [
        "sandbox.maxInstances is 10, but this config needs 11 plugin instances at once",
        "2 Proxy-Wasm plugin(s) × 2 instancesPerPlugin = 4",
        "1 component plugin(s) × (2 instancesPerPlugin ready + 4 requestsPerComponent) = 6",
        "1 FAIL_RELOAD replacement(s)",
    ] {
        assert!(err.contains(want), "`{err}` lacks `{want}`");
    }
    // Exactly enough starts.
    let fits =
        Config::from_yaml(&capacity_yaml(11, "FAIL_RELOAD"), "t.yaml", Path::new(".")).unwrap();
    let wp = Waypoint::start(fits, Default::default()).await.unwrap();
    wp.shutdown().await;
    // Without FAIL_RELOAD, no replacement is reserved.
    let fits =
        Config::from_yaml(&capacity_yaml(10, "FAIL_CLOSE"), "t.yaml", Path::new(".")).unwrap();
    let wp = Waypoint::start(fits, Default::default()).await.unwrap();

    // The same config again rebuilds nothing, so it needs no new slots.
    let again =
        Config::from_yaml(&capacity_yaml(10, "FAIL_CLOSE"), "t.yaml", Path::new(".")).unwrap();
    wp.reload(again).await.unwrap();
    // A rebuilt entry must fit next to the running chains, which live until
    // the swap: 10 running + 2 for the changed Proxy-Wasm plugin > 10.
    let changed =
        Config::from_yaml(&capacity_yaml(10, "FAIL_OPEN"), "t.yaml", Path::new(".")).unwrap();
    let err = wp.reload(changed).await.unwrap_err().to_string();
    assert!(
        err.contains("needs 12 plugin instances at once")
            && err.contains("1 Proxy-Wasm plugin(s) × 2 instancesPerPlugin = 2")
            && err.contains("plus 10 held by the running config until the swap"),
        "{err}"
    );
    wp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_caught_half_written_is_read_again() {
    let up = upstream().await;
    let with = |plugin: &str| {
        config_yaml(
            up.addr,
            &format!(
                "namespaces:\n  alpha:\n    plugins:\n      - name: p\n        url: {}\n",
                fixture_url(plugin)
            ),
        )
    };
    // Removed when dropped, also when the test fails.
    let dir_guard = tempfile::Builder::new()
        .prefix("wayplug-half-")
        .tempdir()
        .unwrap();
    let dir = dir_guard.path();
    let path = dir.join("wayplug.yaml");
    std::fs::write(&path, with("headers")).unwrap();
    let wp = Waypoint::start(Config::load(&path).unwrap(), Default::default())
        .await
        .unwrap();
    let http = wp.http_addr.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watch = wp.follow_config(&path, Duration::from_millis(50), async {
        let _ = stopped.await;
    });
    let test = async {
        // The writer is caught half-way: the file stops inside a mapping.
        let full = with("metrics");
        let cut = full.find("{ name: alpha").unwrap() + 5;
        std::fs::write(&path, &full[..cut]).unwrap();
        let half_written = std::fs::metadata(&path).unwrap().modified().unwrap();
        // Long enough for the watcher to read it and fail to parse it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let r = send(http, "GET", "alpha.test", "/during", &[], "").await;
        assert_eq!(r.status, 200);
        assert!(
            up.last().headers.get("x-fixture-headers").is_some(),
            "the running config stays while the file does not parse"
        );
        // The rest arrives within the same timestamp tick: same mtime.
        std::fs::write(&path, &full).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(half_written)
            .unwrap();
        let applied = eventually(|| async {
            send(http, "GET", "alpha.test", "/after", &[], "").await;
            up.last().headers.get("x-metric-value").map(|_| ())
        })
        .await;
        assert!(applied.is_some(), "the completed file was never applied");
        let _ = stop.send(());
    };
    tokio::join!(watch, test);
    wp.shutdown().await;
}

/// Service `s.test` in namespace `service_ns`; the `headers` fixture (which
/// answers 403 to requests carrying `x-deny`) on namespace `plugin_ns`.
fn swap_yaml(upstream: std::net::SocketAddr, service_ns: &str, plugin_ns: &str) -> String {
    let port = upstream.port();
    format!(
        r#"listeners: {{ http: "127.0.0.1:0", admin: null }}
services:
  - {{ name: s, namespace: {service_ns}, hostname: s.test, ports: {{ 80: {port} }} }}
workloads:
  - uid: u
    name: up
    namespace: test
    workloadIps: ["127.0.0.1"]
    services: {{ {service_ns}/s.test: {{ 80: {port} }} }}
namespaces:
  {plugin_ns}:
    plugins:
      - {{ name: deny, url: "{}" }}
"#,
        fixture_url("headers"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_discovery_and_chains_together() {
    // Config A puts s.test in namespace `one` and the denying plugin on
    // `two`; config B the other way round. Either config lets s.test
    // through; only new chains with old discovery (or the reverse) deny it.
    let up = upstream().await;
    let a =
        || Config::from_yaml(&swap_yaml(up.addr, "one", "two"), "a.yaml", Path::new(".")).unwrap();
    let b =
        || Config::from_yaml(&swap_yaml(up.addr, "two", "one"), "b.yaml", Path::new(".")).unwrap();
    let wp = Waypoint::start(a(), Default::default()).await.unwrap();
    let http = wp.http_addr.unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut denied = 0;
                for _ in 0..2000 {
                    if done.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    let r = send(http, "GET", "s.test", "/", &[("x-deny", "1")], "").await;
                    if r.status != 200 {
                        denied += 1;
                    }
                }
                denied
            })
        })
        .collect();
    for i in 0..20 {
        let next = if i % 2 == 0 { b() } else { a() };
        wp.reload(next).await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for c in clients {
        assert_eq!(
            c.await.unwrap(),
            0,
            "a request saw chains and discovery of different configs"
        );
    }
    wp.shutdown().await;
}
