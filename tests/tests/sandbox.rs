//! The sandbox: a misbehaving plugin fails only its own request, as its
//! failStrategy says, and everything else keeps serving.

use wayplug_tests::harness::*;

fn misbehave_rig_yaml(strategy: &str) -> String {
    format!(
        r#"sandbox: {{ callTimeoutMs: 50, memoryLimitMiB: 16, instancesPerPlugin: 2 }}
namespaces:
  alpha:
    plugins:
      - name: bad
        url: {}
        failStrategy: {strategy}
  beta:
    plugins:
      - name: good
        url: {}
"#,
        fixture_url("misbehave"),
        fixture_url("headers"),
    )
}

const KINDS: [(&str, &str); 3] = [
    ("loop", "exceeded its time limit"),
    ("alloc", "exceeded its memory limit of 16 MiB"),
    ("trap", "trapped"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_close_answers_503_naming_the_plugin() {
    let rig = rig(&misbehave_rig_yaml("FAIL_CLOSE")).await;
    assert_misbehaviour_fails_closed(&rig, &KINDS).await;
    assert_eq!(rig.upstream.last().headers["x-misbehave"], "none");
    let trap_log = send(
        rig.http,
        "GET",
        "alpha.test",
        "/",
        &[("x-misbehave", "trap")],
        "",
    )
    .await;
    assert!(
        trap_log.body.contains("fixture trap"),
        "the plugin's panic message is reported: {}",
        trap_log.body
    );
    let m = admin_get(rig.admin, "/metrics").await;
    for reason in ["timeout", "out_of_memory", "trap"] {
        let want = format!(
            r#"wayplug_plugin_failures_total{{namespace="alpha",plugin="bad",reason="{reason}"}}"#
        );
        assert!(m.body.contains(&want), "missing {want}");
    }
    assert!(
        m.body
            .contains(r#"wayplug_requests_total{namespace="alpha",code="503"} 4"#),
        "{}",
        m.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_skips_the_plugin() {
    let rig = rig(&misbehave_rig_yaml("FAIL_OPEN")).await;
    for (kind, _) in KINDS {
        let r = send(
            rig.http,
            "GET",
            "alpha.test",
            "/open",
            &[("x-misbehave", kind)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{kind}: {r:?}");
        assert_eq!(r.body, "upstream saw /open");
    }
    let r = send(
        rig.http,
        "GET",
        "alpha.test",
        "/open",
        &[("x-misbehave-response", "trap")],
        "",
    )
    .await;
    assert_eq!(
        r.status, 200,
        "a trap in the response phase is skipped too: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_reload_retries_once_on_a_fresh_instance() {
    // The misbehaviour is deterministic, so the retry fails too and the
    // request fails closed, after exactly two attempts.
    let rig = rig(&misbehave_rig_yaml("FAIL_RELOAD")).await;
    assert_misbehaviour_fails_closed(&rig, &KINDS).await;
    assert_trap_and_retry_counted(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pointers_get_invalid_memory_access() {
    let rig = rig(&misbehave_rig_yaml("FAIL_CLOSE")).await;
    let r = send(
        rig.http,
        "GET",
        "alpha.test",
        "/",
        &[("x-misbehave", "bad-pointer")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let codes = rig.upstream.last().headers["x-bad-pointer-status"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!codes.is_empty());
    assert!(
        codes.split(',').all(|c| c == "6"),
        "every bad pointer is INVALID_MEMORY_ACCESS: {codes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_does_not_stop_other_namespaces() {
    let rig = rig(&misbehave_rig_yaml("FAIL_CLOSE")).await;
    let http = rig.http;
    let loops: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                send(
                    http,
                    "GET",
                    "alpha.test",
                    "/",
                    &[("x-misbehave", "loop")],
                    "",
                )
                .await
            })
        })
        .collect();
    for _ in 0..10 {
        let r = send(rig.http, "GET", "beta.test", "/", &[], "").await;
        assert_eq!(r.status, 200);
    }
    for l in loops {
        assert_eq!(l.await.unwrap().status, 503);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_that_fail_to_start_are_refused_with_the_reason() {
    for (plugin_config, want) in [
        (
            r#"{ fail_on: configure }"#,
            "proxy_on_configure returned false",
        ),
        (r#"{ fail_on: start }"#, "trapped"),
    ] {
        let up = upstream().await;
        let yaml = config_yaml(
            up.addr,
            &format!(
                "namespaces:\n  alpha:\n    plugins:\n      - name: bad\n        url: {}\n        pluginConfig: {plugin_config}\n",
                fixture_url("misbehave")
            ),
        );
        let config =
            wayplug::config::Config::from_yaml(&yaml, "t.yaml", std::path::Path::new(".")).unwrap();
        let err = match wayplug::app::Waypoint::start(config, Default::default()).await {
            Ok(_) => panic!("{plugin_config} must not load"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("plugin `bad` in namespace `alpha` failed to start"),
            "{err}"
        );
        assert!(err.contains(want), "{err} lacks {want}");
    }
}

/// What each `x-misbehave: abuse-<area>` request must get back from the
/// host (see the fixture's docs), and the limits its refusals count under.
const ABUSE: [(&str, &str, &[&str]); 7] = [
    ("abuse-random", "28,0,21", &["random_bytes"]),
    ("abuse-headers", "*,2,2,2", &["headers", "header_bytes"]),
    ("abuse-body", "2,16,2", &["body_bytes"]),
    (
        "abuse-shared",
        "2,2",
        &["shared_data_value", "shared_data_key"],
    ),
    ("abuse-queue", "10000,1", &["queue_items"]),
    ("abuse-metrics", "1000,2", &["metrics"]),
    (
        "abuse-properties",
        "2,256,2",
        &["property_bytes", "properties"],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_functions_refuse_what_exceeds_the_limits_and_count_it() {
    // A generous call budget: the floods make thousands of host calls in a
    // debug build, and time limits are not what this test is about.
    let rig = rig(&format!(
        r#"sandbox: {{ callTimeoutMs: 5000, memoryLimitMiB: 16, instancesPerPlugin: 1, maxBufferedBodyBytes: 1048576 }}
namespaces:
  alpha:
    plugins:
      - name: bad
        url: {}
  beta:
    plugins:
      - name: good
        url: {}
"#,
        fixture_url("misbehave"),
        fixture_url("headers"),
    ))
    .await;
    for (mode, want, _) in ABUSE {
        let r = send(
            rig.http,
            "GET",
            "alpha.test",
            "/abuse",
            &[("x-misbehave", mode)],
            "",
        )
        .await;
        assert_eq!(
            r.status, 200,
            "{mode}: the host survives and the plugin goes on: {r:?}"
        );
        let seen = rig.upstream.last();
        let got = seen.headers["x-abuse-status"].to_str().unwrap().to_owned();
        match want.strip_prefix("*,") {
            // Headers already on the request count against the limit of
            // 100, so the number added is a little under it.
            Some(rest) => {
                let (added, statuses) = got.split_once(',').unwrap();
                let added: usize = added.parse().unwrap();
                assert!((90..100).contains(&added), "{mode}: added {added}");
                assert_eq!(statuses, rest, "{mode}");
                assert!(
                    !seen.headers.contains_key("x-flood-0"),
                    "the flood was removed again"
                );
            }
            None => assert_eq!(got, want, "{mode}"),
        }
        assert!(
            seen.body.is_empty(),
            "{mode}: body cleared: {}",
            seen.body.len()
        );
        let ok = send(rig.http, "GET", "beta.test", "/", &[], "").await;
        assert_eq!(ok.status, 200, "after {mode}, other namespaces serve");
    }
    let m = admin_get(rig.admin, "/metrics").await;
    for (mode, _, limits) in ABUSE {
        for limit in limits {
            let want = format!(
                r#"wayplug_plugin_limit_violations_total{{namespace="alpha",plugin="bad",limit="{limit}"}}"#
            );
            assert!(m.body.contains(&want), "{mode}: missing {want}");
        }
    }
    assert!(
        !m.body
            .contains("wayplug_plugin_failures_total{namespace=\"alpha\""),
        "refusals are statuses, not plugin failures:\n{}",
        m.body
    );
    // The same instance keeps serving: nothing was poisoned.
    let r = send(rig.http, "GET", "alpha.test", "/", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(rig.upstream.last().headers["x-misbehave"], "none");
}
