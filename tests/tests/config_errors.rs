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
    let dir = std::env::temp_dir().join(format!("wayplug-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
            "namespaces: { a: { plugins: [ { name: p, url: \"oci://reg/p:1\" } ] } }".into(),
            "only file:// and builtin://",
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
    let _ = std::fs::remove_dir_all(dir);
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
