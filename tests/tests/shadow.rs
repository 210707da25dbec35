//! Shadow rollouts: a candidate decides beside the serving plugin, its
//! effects discarded, its differences counted, sampled and promotable.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use wayplug_tests::harness::{Rig, admin_get, eventually, rig, send};
use wayplug_tests::{fixture, proxy_wasm_example};

/// Everything logged at `wayplug::shadow`, for the whole test binary.
fn shadow_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("wayplug::shadow=info")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per binary");
        log
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn allowlist_url() -> String {
    format!(
        "file://{}",
        proxy_wasm_example("header-allowlist-proxywasm").display()
    )
}

/// The counter's value for these labels, if the series exists.
async fn metric(rig: &Rig, series: &str) -> Option<u64> {
    let text = admin_get(rig.admin, "/metrics").await.body;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_denies_what_the_serving_plugin_allows_is_counted_and_never_answers() {
    let log = shadow_log();
    let url = allowlist_url();
    // Serving: alice and bob. Candidate: the same module, alice only.
    let extra = format!(
        r#"
namespaces:
  alpha:
    plugins:
      - name: allow
        url: "{url}"
        pluginConfig: {{ header: x-user, allow: [alice, bob] }}
        shadow:
          url: "{url}"
          pluginConfig: {{ header: x-user, allow: [alice] }}
"#
    );
    let rig = rig(&extra).await;
    for i in 0..5 {
        let id = format!("bob-{i}");
        let reply = send(
            rig.http,
            "GET",
            "alpha.test",
            "/orders",
            &[("x-user", "bob"), ("x-request-id", &id)],
            "",
        )
        .await;
        assert_eq!(
            reply.status, 200,
            "the serving plugin's decision: {}",
            reply.body
        );
        assert_eq!(reply.header("x-wayplug-denied-by"), None);
        let seen = rig.upstream.last();
        assert_eq!(
            seen.headers
                .get("x-wayplug-user")
                .and_then(|v| v.to_str().ok()),
            Some("bob"),
            "the serving plugin's header change, and only one copy of it"
        );
        assert_eq!(seen.headers.get_all("x-wayplug-user").iter().count(), 1);
    }
    for _ in 0..3 {
        let reply = send(
            rig.http,
            "GET",
            "alpha.test",
            "/",
            &[("x-user", "alice")],
            "",
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let reply = send(
        rig.http,
        "GET",
        "alpha.test",
        "/",
        &[("x-user", "mallory")],
        "",
    )
    .await;
    assert_eq!(reply.status, 403, "both deny: the serving plugin answers");
    assert_eq!(
        rig.upstream.count(),
        8,
        "every allowed request reached the upstream once"
    );

    let differences = r#"wayplug_shadow_differences_total{namespace="alpha",plugin="allow",serving="continue",candidate="respond_403"}"#;
    let counted =
        eventually(|| async { metric(&rig, differences).await.filter(|&n| n == 5) }).await;
    assert_eq!(counted, Some(5), "each of bob's requests is one difference");
    let same =
        r#"wayplug_shadow_evaluations_total{namespace="alpha",plugin="allow",result="same"}"#;
    let same = eventually(|| async { metric(&rig, same).await.filter(|&n| n == 4) }).await;
    assert_eq!(same, Some(4), "alice's three and mallory's one agree");

    // The sampled log line names the request.
    let line = {
        let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        text.lines()
            .find(|l| l.contains("id=bob-0"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no shadow log line for bob-0 in:\n{text}"))
    };
    for want in [
        "shadow candidate decided differently",
        "namespace=alpha",
        "plugin=allow",
        "method=GET",
        "authority=alpha.test",
        "path=/orders",
        "serving=continue",
        "candidate=respond 403",
    ] {
        assert!(line.contains(want), "`{line}` lacks `{want}`");
    }

    // The admin report has the counts and the request summaries.
    let report: serde_json::Value =
        serde_json::from_str(&admin_get(rig.admin, "/shadow").await.body).unwrap();
    let entry = &report["alpha"]["allow"];
    assert_eq!(entry["counts"]["different"], 5, "{report}");
    assert_eq!(entry["counts"]["same"], 4, "{report}");
    let first = &entry["differences"][0];
    assert_eq!(first["request_id"], "bob-0", "{report}");
    assert_eq!(first["path"], "/orders");
    assert_eq!(first["serving"]["decision"], "continue");
    assert_eq!(first["candidate"]["decision"], "respond");
    assert_eq!(first["candidate"]["status"], 403);

    // Promotion: the candidate serves, in one swap.
    let refused = send(
        rig.admin,
        "POST",
        "admin",
        "/shadow/promote?namespace=alpha&plugin=nope",
        &[],
        "",
    )
    .await;
    assert_eq!(refused.status, 404, "{}", refused.body);
    let promoted = send(
        rig.admin,
        "POST",
        "admin",
        "/shadow/promote?namespace=alpha&plugin=allow",
        &[],
        "",
    )
    .await;
    assert_eq!(promoted.status, 200, "{}", promoted.body);
    let reply = send(rig.http, "GET", "alpha.test", "/", &[("x-user", "bob")], "").await;
    assert_eq!(reply.status, 403, "bob is denied by the promoted version");
    assert_eq!(reply.header("x-wayplug-denied-by"), Some("allow"));
    let reply = send(
        rig.http,
        "GET",
        "alpha.test",
        "/",
        &[("x-user", "alice")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    let report = admin_get(rig.admin, "/shadow").await.body;
    assert_eq!(report.trim(), "{}", "no candidate is left");
    let again = send(
        rig.admin,
        "POST",
        "admin",
        "/shadow/promote?namespace=alpha&plugin=allow",
        &[],
        "",
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let dump = admin_get(rig.admin, "/config_dump").await.body;
    assert!(
        !dump.contains("shadow"),
        "the entry is the candidate's now: {dump}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_counted_and_the_serving_answer_stands() {
    let _ = shadow_log();
    let serving = format!("file://{}", fixture("headers").display());
    let candidate = format!("file://{}", fixture("misbehave").display());
    let extra = format!(
        r#"
namespaces:
  alpha:
    plugins:
      - name: guard
        url: "{serving}"
        shadow: {{ url: "{candidate}" }}
"#
    );
    let rig = rig(&extra).await;
    for kind in ["loop", "trap"] {
        let reply = send(
            rig.http,
            "GET",
            "alpha.test",
            "/",
            &[("x-misbehave", kind)],
            "",
        )
        .await;
        assert_eq!(reply.status, 200, "{kind}: {}", reply.body);
        assert_eq!(reply.header("x-fixture-response"), Some("ok"), "{kind}");
    }
    let failed = r#"wayplug_shadow_differences_total{namespace="alpha",plugin="guard",serving="continue",candidate="failed"}"#;
    let counted = eventually(|| async { metric(&rig, failed).await.filter(|&n| n == 2) }).await;
    assert_eq!(counted, Some(2), "a loop and a trap, each a difference");
    let metrics = admin_get(rig.admin, "/metrics").await.body;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("wayplug_plugin_failures_total") && l.contains("guard")),
        "the candidate's failures are not the serving plugin's:\n{metrics}"
    );
}
