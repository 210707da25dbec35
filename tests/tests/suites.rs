//! Policy suites (`wayplug::testing`): the suites in `tests/suites/` run
//! through the proxy's own pipeline offline, their decisions snapshotted
//! with insta; explanations, coverage, `--against`, the Proxy-Wasm decision
//! property, and recording live traffic into a suite that replays to the
//! same decisions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug::testing::report::{self, SuiteReport};
use wayplug::testing::{OfflineWaypoint, Other, Suite, against, coverage, snapshot};
use wayplug_tests::harness;

fn suites_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("suites")
}

async fn run(
    name: &str,
) -> (
    Suite,
    Arc<OfflineWaypoint>,
    Vec<wayplug::testing::CaseResult>,
) {
    let suite = Suite::load(&suites_dir().join(name)).expect("suite loads");
    let waypoint = Arc::new(
        OfflineWaypoint::build(&suite, None)
            .await
            .expect("waypoint loads"),
    );
    let results = tokio::time::timeout(Duration::from_secs(60), waypoint.run(&suite.cases, 4))
        .await
        .expect("suite ran within 60 s");
    (suite, waypoint, results)
}

fn text(suite: &Suite, results: &[wayplug::testing::CaseResult], explain: bool) -> String {
    report::text(
        &SuiteReport {
            suite: suite.name.clone(),
            file: suite.path.display().to_string(),
            cases: results.to_vec(),
            coverage: None,
            changes: None,
            snapshots: Vec::new(),
        },
        explain,
    )
}

fn assert_passed_and_snapshot(suite: &Suite, results: &[wayplug::testing::CaseResult]) {
    assert!(
        results.len() >= 10,
        "{}: {} cases",
        suite.name,
        results.len()
    );
    assert!(
        results.iter().all(|r| r.passed()),
        "{}",
        text(suite, results, true)
    );
    for r in results {
        let id = format!(
            "{}-{}",
            snapshot::slug(&suite.name),
            snapshot::slug(&r.name)
        );
        insta::assert_yaml_snapshot!(id, r.outcome);
    }
}

#[tokio::test]
async fn multi_namespace_suite_with_identities_passes_and_matches_its_snapshots() {
    let (suite, _, results) = run("mesh.yaml").await;
    assert_passed_and_snapshot(&suite, &results);
}

/// Loading a waypoint compiles its built-in components, which dominates
/// the cost of a suite: everything about the store's config shares one.
#[tokio::test]
async fn store_suite_snapshots_explain_coverage_against_and_failures() {
    let (suite, waypoint, results) = run("store.yaml").await;
    assert_passed_and_snapshot(&suite, &results);
    explain_names_the_rule_or_why_none_matched(&suite, &results);
    coverage_lists_the_rules_no_case_exercised(&suite, &waypoint, &results).await;
    against_lists_every_case_whose_decision_changed(&suite, &results).await;
    // failing.yaml names the same config, so the same waypoint runs it.
    let failing = Suite::load(&suites_dir().join("failing.yaml")).unwrap();
    let failed = waypoint.run(&failing.cases, 2).await;
    a_failing_expectation_names_the_case_the_expected_and_the_actual_value(&failing, &failed);
}

fn explain_names_the_rule_or_why_none_matched(
    suite: &Suite,
    results: &[wayplug::testing::CaseResult],
) {
    let out = text(suite, results, true);
    for want in [
        "why: [authorizationpolicy] AuthorizationPolicy/store/store-users rule 0 -> allow",
        "why: [httproute] HTTPRoute/store/store rule 1 -> redirect",
        // No ALLOW rule matched: the record says so rather than naming one.
        "why: [authorizationpolicy] no single policy -> deny: no rule of the",
        "why: [authorizationpolicy] AuthorizationPolicy/store/no-admin rule 0 -> deny",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

async fn coverage_lists_the_rules_no_case_exercised(
    suite: &Suite,
    waypoint: &Arc<OfflineWaypoint>,
    results: &[wayplug::testing::CaseResult],
) {
    let all = coverage::rules(&waypoint.namespaces);
    let names: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "AuthorizationPolicy/store/no-admin rule 0",
            "AuthorizationPolicy/store/store-users rule 0",
            "AuthorizationPolicy/store/store-users rule 1",
            "HTTPRoute/store/store rule 0",
            "HTTPRoute/store/store rule 1",
            "HTTPRoute/store/store rule 2",
        ]
    );
    let full = coverage::coverage(&all, results);
    assert!(full.missed.is_empty(), "{:?}", full.missed);
    assert_eq!(full.percent(), 100.0);

    // The first case alone: alice through the api route.
    let first = waypoint.run(&suite.cases[..1], 1).await;
    let part = coverage::coverage(&all, &first);
    let missed: Vec<String> = part.missed.iter().map(ToString::to_string).collect();
    assert_eq!(
        missed,
        [
            "AuthorizationPolicy/store/no-admin rule 0",
            "AuthorizationPolicy/store/store-users rule 1",
            "HTTPRoute/store/store rule 1",
            "HTTPRoute/store/store rule 2",
        ]
    );
    assert!(
        (part.percent() - 100.0 / 3.0).abs() < 0.01,
        "{}",
        part.percent()
    );
}

async fn against_lists_every_case_whose_decision_changed(
    suite: &Suite,
    before: &[wayplug::testing::CaseResult],
) {
    let other = Other::from_path(&suites_dir().join("store/policies-v2"));
    let b = Arc::new(OfflineWaypoint::build(suite, Some(&other)).await.unwrap());
    let after = b.run(&suite.cases, 4).await;
    let changes = against::changes(before, &after);
    let names: Vec<&str> = changes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            // The catch-all rule moved from index 2 to 1: a different rule decided
            // (also for the auditor below).
            "users reach the store front [user=alice]",
            "users reach the store front [user=bob]",
            "the auditor reads by identity",
            "old links are redirected",
            "the upstream's answer reaches the client",
        ]
    );
    let bob = &changes[1];
    assert!(
        bob.before.starts_with("allow 200") && bob.after.starts_with("deny 403"),
        "{bob:?}"
    );
    let redirect = &changes[3];
    assert!(redirect.before.starts_with("deny 301"), "{redirect:?}");
    // The case's upstream answers 500: the request now reaches it.
    assert!(
        redirect.after.starts_with("allow 500")
            && redirect.after.contains("HTTPRoute/store/store[1]=route"),
        "{redirect:?}"
    );
}

fn a_failing_expectation_names_the_case_the_expected_and_the_actual_value(
    suite: &Suite,
    results: &[wayplug::testing::CaseResult],
) {
    let out = text(suite, results, false);
    assert!(out.contains("FAIL mallory expected in: deny 403"), "{out}");
    assert!(out.contains("allow: expected allow, got deny"), "{out}");
    assert!(out.contains("status: expected 200, got 403"), "{out}");
    assert!(out.contains("ok   alice passes: allow 200"), "{out}");
    assert!(out.contains("failing: 1 passed, 1 failed"), "{out}");
}

#[tokio::test]
async fn proxy_wasm_plugins_record_decisions_through_the_property() {
    let dir_guard = tempdir("pw");
    let dir = dir_guard.path();
    std::fs::write(
        dir.join("waypoint.yaml"),
        harness::config_yaml("127.0.0.1:9".parse().unwrap(), ""),
    )
    .unwrap();
    std::fs::write(
        dir.join("suite.yaml"),
        format!(
            r#"
config: waypoint.yaml
plugins:
  alpha: [{{ name: tier, url: "{}" }}]
defaults: {{ request: {{ service: alpha.test }} }}
cases:
  - name: gold
    request: {{ headers: {{ x-tier: gold }} }}
    expect:
      allow: true
      decisions: [{{ plugin: tier, policy: Tier/demo/gold, rule: 0, outcome: allow }}]
  - name: no tier
    expect:
      status: 403
      decidedBy: tier
      decisions: [{{ plugin: tier, policy: Tier/demo/gold, outcome: deny }}]
  - name: a bad record is dropped
    request: {{ headers: {{ x-tier: bad-record }} }}
    expect: {{ allow: true, decisions: [] }}
"#,
            harness::fixture_url("decision")
        ),
    )
    .unwrap();
    let suite = Suite::load(&dir.join("suite.yaml")).unwrap();
    let waypoint = Arc::new(OfflineWaypoint::build(&suite, None).await.unwrap());
    let results = waypoint.run(&suite.cases, 2).await;
    assert!(
        results.iter().all(|r| r.passed()),
        "{}",
        text(&suite, &results, true)
    );
    assert_eq!(results[0].outcome.decisions[0].detail, "gold tier");
}

fn tempdir(tag: &str) -> tempfile::TempDir {
    // Removed when dropped, also when the test fails.
    tempfile::Builder::new()
        .prefix(&format!("wayplug-suites-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Copies the store suite's waypoint and policies into `dir`, with the
/// store's backends on `upstream` so a live waypoint can serve them.
fn store_waypoint(dir: &Path, upstream: std::net::SocketAddr) -> PathBuf {
    let src = suites_dir().join("store");
    let yaml = std::fs::read_to_string(src.join("waypoint.yaml"))
        .unwrap()
        .replace("10.244.0.12", &upstream.ip().to_string())
        .replace("10.244.0.13", &upstream.ip().to_string())
        .replace("80: 8080", &format!("80: {}", upstream.port()))
        .replace("80: 8081", &format!("80: {}", upstream.port()));
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::copy(
        src.join("policies/store.yaml"),
        dir.join("policies/store.yaml"),
    )
    .unwrap();
    let path = dir.join("waypoint.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test]
async fn recorded_traffic_replays_to_the_same_decisions_without_secrets() {
    let dir_guard = tempdir("record");
    let dir = dir_guard.path();
    let upstream = harness::upstream().await;
    let config_path = store_waypoint(dir, upstream.addr);
    let waypoint = Waypoint::start(
        Config::load(&config_path).unwrap(),
        wayplug::demo::builtins(),
    )
    .await
    .unwrap();
    let (http, admin) = (waypoint.http_addr.unwrap(), waypoint.admin_addr.unwrap());
    let out = dir.join("recorded.yaml");
    let recording = tokio::spawn(wayplug::cli::record::run(wayplug::cli::RecordArgs {
        admin,
        out: out.clone(),
        count: 4,
        timeout: 20,
        config: "waypoint.yaml".into(),
        per_second: 1000,
        headers: None,
        redact: Some("x-session".into()),
    }));
    let armed = harness::eventually(|| async {
        let r = harness::admin_get(admin, "/record").await;
        r.body.contains("\"armed\":true").then_some(())
    })
    .await;
    assert!(armed.is_some(), "the recorder was armed");
    let host = "store.store.svc.cluster.local";
    let secret = [
        ("authorization", "Bearer s3cret-token"),
        ("cookie", "sid=s3cret-cookie"),
        ("x-session", "s3cret-session"),
    ];
    let requests: [(&str, &str, &str); 4] = [
        ("GET", "/api/items", "alice"),
        ("GET", "/cart", "mallory"),
        ("GET", "/admin", "alice"),
        ("GET", "/old/x", "bob"),
    ];
    let mut live = Vec::new();
    for (method, path, user) in requests {
        let mut headers = vec![("x-user", user)];
        headers.extend(secret);
        live.push(
            harness::send(http, method, host, path, &headers, "")
                .await
                .status
                .as_u16(),
        );
        // The recorder takes at most `perSecond` a second.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(live, [200, 403, 403, 301]);
    tokio::time::timeout(Duration::from_secs(30), recording)
        .await
        .expect("recording ended")
        .unwrap()
        .expect("recording succeeded");
    waypoint.shutdown().await;

    let file = std::fs::read_to_string(&out).unwrap();
    assert!(
        !file.contains("s3cret"),
        "a redacted value was written:\n{file}"
    );
    assert!(file.contains("REDACTED"), "{file}");
    assert!(
        file.contains("AuthorizationPolicy/store/no-admin"),
        "{file}"
    );

    let suite = Suite::load(&out).unwrap();
    assert_eq!(suite.cases.len(), 4);
    let offline = Arc::new(OfflineWaypoint::build(&suite, None).await.unwrap());
    let results = offline.run(&suite.cases, 2).await;
    assert!(
        results.iter().all(|r| r.passed()),
        "{}",
        text(&suite, &results, true)
    );
    let statuses: Vec<u16> = results.iter().map(|r| r.outcome.status).collect();
    assert_eq!(statuses, live);
}
