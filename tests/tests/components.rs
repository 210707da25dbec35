//! End-to-end: component plugins built with the SDK, through the real
//! waypoint, alone and mixed with Proxy-Wasm plugins.

use std::path::Path;

use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug_tests::harness::*;

fn entry(name: &str, url: &str, extra: &str) -> String {
    format!("      - name: {name}\n        url: {url}\n{extra}")
}

fn ns(name: &str, entries: &[String]) -> String {
    format!("namespaces:\n  {name}:\n    plugins:\n{}", entries.join(""))
}

const ALLOWLIST: &str =
    "        phase: AUTHZ\n        pluginConfig: { header: x-user, allow: [alice, bob] }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_allowlist_allows_and_denies() {
    let rig = rig(&ns(
        "alpha",
        &[entry(
            "allow",
            &component_url("header-allowlist"),
            ALLOWLIST,
        )],
    ))
    .await;
    let ok = send(
        rig.http,
        "GET",
        "alpha.test",
        "/orders",
        &[("x-user", "alice")],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(rig.upstream.last().headers["x-wayplug-user"], "alice");
    let no = send(
        rig.http,
        "GET",
        "alpha.test",
        "/orders",
        &[("x-user", "mallory")],
        "",
    )
    .await;
    assert_eq!(no.status, 403);
    assert_eq!(no.body, "denied: x-user 'mallory' is not allowed");
    assert_eq!(no.header("x-wayplug-denied-by"), Some("allow"));
    let missing = send_h2(rig.http, "GET", "alpha.test", "/orders", &[], "").await;
    assert_eq!(missing.status, 403);
    assert_eq!(missing.body, "denied: missing x-user");
    assert_eq!(rig.upstream.count(), 1);
    let dump = admin_get(rig.admin, "/config_dump").await;
    assert!(
        dump.body.contains("\"kind\": \"component\""),
        "{}",
        dump.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_and_proxy_wasm_mix_in_one_chain() {
    let chain = ns(
        "alpha",
        &[
            // Listed first but runs last: unspecified phase.
            entry("hdr", &fixture_url("headers"), ""),
            entry("allow", &component_url("header-allowlist"), ALLOWLIST),
            entry(
                "stamp",
                &component_url("response-header"),
                "        phase: STATS\n        pluginConfig: { name: x-stamp, value: component }\n",
            ),
        ],
    );
    let rig = rig(&chain).await;
    let ok = send(
        rig.http,
        "GET",
        "alpha.test",
        "/mix",
        &[("x-user", "bob")],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        ok.header("x-stamp"),
        Some("component"),
        "component response hook ran"
    );
    assert_eq!(
        ok.header("x-fixture-response"),
        Some("ok"),
        "proxy-wasm response callback ran"
    );
    let seen = rig.upstream.last();
    assert_eq!(seen.headers["x-wayplug-user"], "bob");
    assert_eq!(seen.headers["x-fixture-headers"], "seen");
    // The component denies before the Proxy-Wasm plugin ever sees the request.
    let no = send(
        rig.http,
        "GET",
        "alpha.test",
        "/mix",
        &[("x-user", "eve"), ("x-deny", "1")],
        "",
    )
    .await;
    assert_eq!(no.status, 403);
    assert!(no.body.starts_with("denied: x-user 'eve'"), "{}", no.body);
    assert_eq!(
        no.header("x-fixture-response"),
        None,
        "later plugins never saw the request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_routing_sends_requests_to_the_chosen_service() {
    let main = upstream().await;
    let acme = upstream().await;
    let yaml = format!(
        r#"
listeners: {{ http: "127.0.0.1:0", admin: "127.0.0.1:0" }}
services:
  - {{ name: api, namespace: shop, hostname: api.shop.test, ports: {{ 80: {m} }} }}
  - {{ name: acme, namespace: shop, hostname: acme.shop.test, ports: {{ 80: {a} }} }}
workloads:
  - {{ uid: u1, name: main, namespace: shop, workloadIps: ["127.0.0.1"], services: {{ shop/api.shop.test: {{ 80: {m} }} }} }}
  - {{ uid: u2, name: acme, namespace: shop, workloadIps: ["127.0.0.1"], services: {{ shop/acme.shop.test: {{ 80: {a} }} }} }}
namespaces:
  shop:
    plugins:
      - name: tenants
        url: {url}
        pluginConfig:
          header: x-tenant
          tenants: {{ acme: acme.shop.test, ghost: ghost.shop.test }}
          default: api.shop.test
"#,
        m = main.addr.port(),
        a = acme.addr.port(),
        url = component_url("tenant-routing"),
    );
    let config = Config::from_yaml(&yaml, "t.yaml", Path::new(".")).unwrap();
    let wp = Waypoint::start(config, Default::default()).await.unwrap();
    let http = wp.http_addr.unwrap();
    let r = send(
        http,
        "GET",
        "api.shop.test",
        "/x",
        &[("x-tenant", "acme")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(acme.count(), 1);
    assert_eq!(acme.last().headers["x-wayplug-tenant"], "acme");
    let r = send(
        http,
        "GET",
        "api.shop.test",
        "/x",
        &[("x-tenant", "other")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(main.count(), 1);
    assert_eq!(main.last().headers["x-wayplug-tenant"], "default");
    let r = send(
        http,
        "GET",
        "api.shop.test",
        "/x",
        &[("x-tenant", "ghost")],
        "",
    )
    .await;
    assert_eq!(
        r.status, 500,
        "a route to an unknown service answers 500, as Envoy does: {r:?}"
    );
    assert!(
        r.body
            .contains("routed to backend `ghost.shop.test:80`, which the waypoint does not know"),
        "{}",
        r.body
    );
    wp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_see_request_identity_and_destination_and_share_kv() {
    let rig = rig(&ns(
        "alpha",
        &[entry(
            "echo",
            &component_url("component-misbehave"),
            "        pluginConfig: { mode: echo }\n",
        )],
    ))
    .await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let r = send(rig.http, "GET", "alpha.test", "/p/q?x=1", &[], "").await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = rig.upstream.last();
        assert_eq!(seen.headers["x-c-destination"], "alpha/alpha.test:80");
        assert_eq!(
            seen.headers["x-c-principal"], "none",
            "plaintext callers have no identity"
        );
        assert_eq!(seen.headers["x-c-path"], "/p/q");
        assert_eq!(seen.headers["x-c-query"], "x=1");
        assert_eq!(seen.headers["x-c-mode"], "echo");
        counts.push(seen.headers["x-c-count"].to_str().unwrap().to_owned());
    }
    assert_eq!(
        counts,
        ["1", "2", "3"],
        "instances share one key-value store"
    );
}

fn misbehave(strategy: &str) -> String {
    format!(
        "sandbox: {{ callTimeoutMs: 50, memoryLimitMiB: 16 }}\n{}",
        ns(
            "alpha",
            &[entry(
                "bad",
                &component_url("component-misbehave"),
                &format!("        failStrategy: {strategy}\n        pluginConfig: {{}}\n"),
            )],
        )
    )
}

const KINDS: [(&str, &str); 4] = [
    ("loop", "exceeded its time limit"),
    ("alloc", "exceeded its memory limit of 16 MiB"),
    ("trap", "trapped"),
    (
        "bad-decision",
        "returned a decision the waypoint cannot apply: status 99",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_sandbox_fail_close_and_recovery() {
    let rig = rig(&misbehave("FAIL_CLOSE")).await;
    assert_misbehaviour_fails_closed(&rig, &KINDS).await;
}

/// The baseline compiler's code runs under the same limits: a loop is
/// stopped at its deadline, memory growth refused past the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_sandbox_holds_on_baseline_code() {
    let config = misbehave("FAIL_CLOSE").replace(
        "memoryLimitMiB: 16 }",
        "memoryLimitMiB: 16, compiler: baseline, tieredCompileMinKiB: 0 }",
    );
    let rig = rig(&config).await;
    let dump = admin_get(rig.admin, "/api/namespaces").await;
    let list: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    assert_eq!(
        list["namespaces"]["alpha"]["plugins"][0]["code"], "baseline",
        "{list}"
    );
    assert_misbehaviour_fails_closed(&rig, &KINDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_sandbox_fail_open_and_reload() {
    let open = rig(&misbehave("FAIL_OPEN")).await;
    for (kind, _) in KINDS {
        let r = send(
            open.http,
            "GET",
            "alpha.test",
            "/open",
            &[("x-misbehave", kind)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{kind}: {r:?}");
        assert!(
            open.upstream.last().headers.get("x-c-mode").is_none(),
            "the plugin was skipped"
        );
    }
    // Deterministic misbehaviour fails the retry too, so the request fails
    // closed after exactly two attempts.
    let reload = rig(&misbehave("FAIL_RELOAD")).await;
    assert_misbehaviour_fails_closed(&reload, &KINDS).await;
    assert_trap_and_retry_counted(&reload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_rejection_fails_the_load_and_keeps_the_running_chain() {
    let up = upstream().await;
    let good = config_yaml(
        up.addr,
        &ns(
            "alpha",
            &[entry(
                "c",
                &component_url("component-misbehave"),
                "        pluginConfig: { mode: good }\n",
            )],
        ),
    );
    let bad = config_yaml(
        up.addr,
        &ns(
            "alpha",
            &[entry(
                "c",
                &component_url("component-misbehave"),
                "        pluginConfig: { reject: true }\n",
            )],
        ),
    );
    let typo = config_yaml(
        up.addr,
        &ns(
            "alpha",
            &[entry(
                "c",
                &component_url("component-misbehave"),
                "        pluginConfig: { mdoe: x }\n",
            )],
        ),
    );

    let err = match Waypoint::start(
        Config::from_yaml(&bad, "t.yaml", Path::new(".")).unwrap(),
        Default::default(),
    )
    .await
    {
        Ok(_) => panic!("a rejected configuration must not load"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("plugin `c` in namespace `alpha` failed to start"),
        "{err}"
    );
    assert!(
        err.contains("`reject` is set: this configuration is refused on purpose"),
        "{err}"
    );

    let wp = Waypoint::start(
        Config::from_yaml(&good, "t.yaml", Path::new(".")).unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let http = wp.http_addr.unwrap();
    for yaml in [&bad, &typo] {
        let err = wp
            .reload(Config::from_yaml(yaml, "t.yaml", Path::new(".")).unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("configure rejected the plugin configuration"),
            "{err}"
        );
        let r = send(http, "GET", "alpha.test", "/", &[], "").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            up.last().headers["x-c-mode"],
            "good",
            "the running chain is untouched"
        );
    }
    wp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_hook_sees_whole_bodies_and_can_rewrite_or_refuse() {
    let cfg = "        pluginConfig: { max_bytes: 40000, forbidden: [DROP TABLE], replace: { secret: \"[hidden]\" } }\n";
    let rig = rig(&ns(
        "alpha",
        &[entry("guard", &component_url("body-guard"), cfg)],
    ))
    .await;
    let body = "the secret is out; ".repeat(1000);
    let r = send(rig.http, "POST", "alpha.test", "/echo", &[], &body).await;
    assert_eq!(r.status, 200, "{:?}", r.status);
    let want = body.replace("secret", "[hidden]");
    assert_eq!(String::from_utf8_lossy(&rig.upstream.last().body), want);
    assert_eq!(
        rig.upstream.last().headers["content-length"],
        want.len().to_string().as_str()
    );
    let bad = send(
        rig.http,
        "POST",
        "alpha.test",
        "/echo",
        &[],
        "1; DROP TABLE users",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body, "body contains forbidden text");
    let big = send(
        rig.http,
        "POST",
        "alpha.test",
        "/echo",
        &[],
        &"x".repeat(40001),
    )
    .await;
    assert_eq!(big.status, 413);
    assert_eq!(
        rig.upstream.count(),
        1,
        "refused bodies never reach the upstream"
    );
    let empty = send(rig.http, "GET", "alpha.test", "/nobody", &[], "").await;
    assert_eq!(
        empty.status, 200,
        "requests without a body pass the hook with an empty body"
    );
}
