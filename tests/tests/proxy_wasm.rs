//! End-to-end: Proxy-Wasm fixture plugins through the real listener to a
//! real upstream.

use wayplug_tests::harness::*;

fn chain(ns: &str, plugins: &[String]) -> String {
    format!("  {ns}:\n    plugins:\n{}", plugins.join(""))
}

fn plugin(name: &str, fixture: &str, extra: &str) -> String {
    format!(
        "      - name: {name}\n        url: {}\n{extra}",
        fixture_url(fixture)
    )
}

fn namespaces(chains: &[String]) -> String {
    format!("namespaces:\n{}", chains.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_plugin_allows_denies_and_mutates() {
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[plugin("hdr", "headers", "")],
    )]))
    .await;

    let ok = send(
        rig.http,
        "GET",
        "alpha.test",
        "/hello?x=1",
        &[
            ("x-replace-me", "old"),
            ("x-remove-me", "gone"),
            ("x-keep", "1"),
        ],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.body, "upstream saw /hello?x=1");
    assert_eq!(ok.header("x-fixture-response"), Some("ok"));
    assert_eq!(
        ok.header("x-upstream-secret"),
        None,
        "plugin removes the response header"
    );
    assert_eq!(ok.header("x-upstream"), Some("yes"));

    let seen = rig.upstream.last();
    let h = |n: &str| seen.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("x-fixture-headers").as_deref(), Some("seen"));
    assert_eq!(h("x-replace-me").as_deref(), Some("replaced"));
    assert_eq!(h("x-remove-me"), None);
    assert_eq!(h("x-keep").as_deref(), Some("1"));
    assert_eq!(h("x-wayplug-namespace").as_deref(), Some("alpha"));
    assert_eq!(h("x-plugin-name").as_deref(), Some("hdr"));
    assert_eq!(h("x-request-path").as_deref(), Some("/hello?x=1"));
    assert!(h("x-source-address").unwrap().starts_with("127.0.0.1:"));
    assert_eq!(h("host").as_deref(), Some("alpha.test"));
    assert!(h("x-request-id").is_some_and(|id| id.len() == 32));
    // 4 pseudo-headers + host-less request headers the plugin saw.
    let n: usize = h("x-seen-headers").unwrap().parse().unwrap();
    assert!(n >= 4 + 3, "saw {n} headers");

    let denied = send(rig.http, "GET", "alpha.test", "/x", &[("x-deny", "1")], "").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "denied by fixture-headers");
    assert_eq!(denied.header("x-denied-by"), Some("fixture-headers"));
    assert_eq!(
        denied.header("x-fixture-response"),
        Some("ok"),
        "the plugin's response callback runs on its local response"
    );
    assert_eq!(
        rig.upstream.count(),
        1,
        "denied request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_goes_through_the_same_chain() {
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[plugin("hdr", "headers", "")],
    )]))
    .await;
    let ok = send_h2(
        rig.http,
        "GET",
        "alpha.test",
        "/h2",
        &[("x-replace-me", "a")],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("x-fixture-response"), Some("ok"));
    let seen = rig.upstream.last();
    assert_eq!(seen.headers["x-replace-me"], "replaced");
    assert_eq!(
        seen.authority.as_deref(),
        Some("alpha.test"),
        "the upstream sees the service's authority, not the endpoint address"
    );
    let denied = send_h2(
        rig.http,
        "GET",
        "alpha.test",
        "/h2",
        &[("x-deny", "yes")],
        "",
    )
    .await;
    assert_eq!(denied.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated() {
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[plugin("hdr", "headers", "")],
    )]))
    .await;
    let beta = send(
        rig.http,
        "GET",
        "beta.test",
        "/b",
        &[("x-deny", "1"), ("x-remove-me", "stays")],
        "",
    )
    .await;
    assert_eq!(beta.status, 200, "alpha's plugin never runs for beta");
    assert_eq!(beta.header("x-upstream-secret"), Some("s3cret"));
    let seen = rig.upstream.last();
    assert!(seen.headers.get("x-fixture-headers").is_none());
    assert_eq!(seen.headers["x-remove-me"], "stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_plugin_rewrites_both_directions() {
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[plugin("body", "body", "")],
    )]))
    .await;
    let body = "my secret is a secret, ".repeat(2000);
    let reply = send(rig.http, "POST", "alpha.test", "/echo", &[], &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.status);
    let seen = rig.upstream.last();
    let want = body.replace("secret", "[redacted]");
    assert_eq!(String::from_utf8_lossy(&seen.body), want);
    assert_eq!(
        seen.headers["content-length"].to_str().unwrap(),
        want.len().to_string(),
        "the host fixes the length of a body a plugin rewrote"
    );
    // The echoed body comes back through the response rewrite.
    assert_eq!(reply.body, want);
    assert_eq!(reply.header("x-body-fixture"), Some("on"));
    let plain = send(rig.http, "GET", "alpha.test", "/plain", &[], "").await;
    assert_eq!(plain.body, "UPSTREAM-REWRITTEN saw /plain");
    assert_eq!(plain.header("content-length"), Some("29"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_configuration_and_environment() {
    let cfg = r#"        pluginConfig: { header: x-configured, value: "from config", deny_paths: [/admin] }
        vmConfig:
          env:
            - { name: FIXTURE_ENV, value: plugin-only }
"#;
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[plugin("cfg", "config", cfg)],
    )]))
    .await;
    let ok = send(rig.http, "GET", "alpha.test", "/ok", &[], "").await;
    assert_eq!(ok.status, 200);
    let seen = rig.upstream.last();
    assert_eq!(seen.headers["x-configured"], "from config");
    assert_eq!(seen.headers["x-fixture-env"], "plugin-only");
    assert!(
        seen.headers.get("x-fixture-home").is_none(),
        "the host's environment must not leak into plugins"
    );
    let denied = send(rig.http, "GET", "alpha.test", "/admin/users", &[], "").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "path denied by fixture-config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_callout_decides() {
    let auth = auth_service().await;
    let extra = format!(
        "upstreams:\n  auth: {{ address: \"{auth}\" }}\n  down: {{ address: \"127.0.0.1:1\", timeoutMs: 500 }}\n{}",
        namespaces(&[
            chain("alpha", &[plugin("callout", "callout", "")]),
            chain(
                "beta",
                &[plugin(
                    "callout",
                    "callout",
                    "        pluginConfig: { upstream: down }\n"
                )]
            ),
        ])
    );
    let rig = rig(&extra).await;
    let ok = send(rig.http, "GET", "alpha.test", "/allowed/page", &[], "").await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(rig.upstream.last().headers["x-auth-result"], "ok-user");
    let no = send(rig.http, "GET", "alpha.test", "/private", &[], "").await;
    assert_eq!(no.status, 403);
    assert_eq!(no.body, "callout denied: 403");
    // A callout to an unreachable upstream answers with no headers.
    let down = send(rig.http, "GET", "beta.test", "/allowed", &[], "").await;
    assert_eq!(down.status, 403, "{down:?}");
    assert!(down.body.starts_with("callout denied"), "{}", down.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_and_queues() {
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[plugin("shared", "shared", "")],
    )]))
    .await;
    let mut counts = Vec::new();
    for _ in 0..5 {
        let r = send(rig.http, "GET", "alpha.test", "/s", &[], "").await;
        assert_eq!(r.status, 200);
        counts.push(
            rig.upstream.last().headers["x-request-count"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Every instance of the plugin shares one counter.
    assert_eq!(counts, ["1", "2", "3", "4", "5"]);
    let queued = eventually(|| async {
        send(rig.http, "GET", "alpha.test", "/q", &[], "").await;
        let v: u64 = rig.upstream.last().headers["x-queued-seen"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        (v > 0).then_some(v)
    })
    .await;
    assert!(queued.is_some(), "queue consumer never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plugins_of_a_namespace_get_queues_of_their_own() {
    // Both register a queue named `events`; the VM id (by default the
    // plugin's name) keeps them apart.
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[
            plugin("first", "shared", ""),
            plugin("second", "shared", ""),
        ],
    )]))
    .await;
    let r = send(rig.http, "GET", "alpha.test", "/s", &[], "").await;
    assert_eq!(r.status, 200);
    let seen = rig.upstream.last();
    let first = seen
        .headers
        .get("x-queue-first")
        .expect("first resolved its queue");
    let second = seen
        .headers
        .get("x-queue-second")
        .expect("second resolved its queue");
    assert_ne!(first, second, "each plugin has its own `events` queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_metrics_are_exported() {
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[plugin("metrics", "metrics", "")],
    )]))
    .await;
    for i in 1..=3 {
        send(rig.http, "GET", "alpha.test", "/m", &[], "").await;
        assert_eq!(
            rig.upstream.last().headers["x-metric-value"],
            i.to_string().as_str()
        );
    }
    send(rig.http, "GET", "nowhere.test", "/", &[], "").await;
    let m = admin_get(rig.admin, "/metrics").await;
    assert_eq!(m.status, 200);
    for want in [
        r#"wayplug_plugin_counter_total{namespace="alpha",plugin="metrics",name="fixture_requests_total"} 3"#,
        r#"wayplug_plugin_gauge{namespace="alpha",plugin="metrics",name="fixture_last_path_len"} 2"#,
        r#"wayplug_plugin_histogram_count{namespace="alpha",plugin="metrics",name="fixture_path_len"} 3"#,
        r#"wayplug_requests_total{namespace="alpha",code="200"} 3"#,
        r#"wayplug_plugin_requests_total{namespace="alpha",plugin="metrics",code="200"} 3"#,
        r#"wayplug_requests_total{namespace="",code="404"} 1"#,
    ] {
        assert!(m.body.contains(want), "missing `{want}` in:\n{}", m.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_run() {
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[plugin("tick", "tick", "")],
    )]))
    .await;
    let ticks = eventually(|| async {
        send(rig.http, "GET", "alpha.test", "/t", &[], "").await;
        let v: u64 = rig.upstream.last().headers["x-ticks"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        (v >= 2).then_some(v)
    })
    .await;
    assert!(ticks.is_some(), "on_tick never ran twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_errors_are_clear() {
    let rig = rig("").await;
    let unknown = send(rig.http, "GET", "nowhere.test", "/", &[], "").await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown
            .body
            .contains("no service matches host `nowhere.test`"),
        "{}",
        unknown.body
    );
    let port = send(rig.http, "GET", "alpha.test:8080", "/", &[], "").await;
    assert_eq!(port.status, 404);
    assert!(port.body.contains("has no port 8080"), "{}", port.body);
    let down = send(rig.http, "GET", "gone.test", "/", &[], "").await;
    assert_eq!(down.status, 503);
    assert!(
        down.body.contains("cannot connect to upstream 127.0.0.1:1"),
        "{}",
        down.body
    );
    let by_vip = send(rig.http, "GET", "10.0.0.1", "/vip", &[], "").await;
    assert_eq!(by_vip.status, 200);
    let ready = admin_get(rig.admin, "/healthz/ready").await;
    assert_eq!(ready.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_lists_plugins_with_sha256() {
    let rig = rig(&namespaces(&[chain(
        "alpha",
        &[plugin("hdr", "headers", "        phase: AUTHN\n")],
    )]))
    .await;
    let dump = admin_get(rig.admin, "/config_dump").await;
    let v: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    let p = &v["chains"]["alpha"][0];
    assert_eq!(p["name"], "hdr");
    assert_eq!(p["kind"], "proxy-wasm");
    let bytes = std::fs::read(wayplug_tests::fixture("headers")).unwrap();
    use sha2::Digest;
    assert_eq!(p["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(
        v["config"]["namespaces"]["alpha"]["plugins"][0]["phase"],
        "AUTHN"
    );
}
