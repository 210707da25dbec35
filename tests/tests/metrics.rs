//! End-to-end: Istio's standard metrics and the reload counters, scraped
//! from a real waypoint's admin `/metrics` after real requests.

use std::time::Duration;

use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug_tests::harness::*;

/// The value of the one series of `name` whose line has every label of `labels`.
fn series(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = text.lines().filter(|l| {
        l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want))
    });
    let line = found.next()?;
    assert!(
        found.next().is_none(),
        "more than one {name} series has {labels:?}"
    );
    line.rsplit(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_under_istio_waypoint_labels() {
    let rig = rig("").await;
    let baggage = [(
        "baggage",
        "k8s.deployment.name=frontend,k8s.namespace.name=web,service.version=v2",
    )];
    for _ in 0..3 {
        let r = send(rig.http, "GET", "alpha.test", "/", &baggage, "").await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let plain = send(rig.http, "GET", "alpha.test", "/", &[], "").await;
    assert_eq!(plain.status, 200);
    // Nothing listens on port 1: the upstream connection fails.
    let down = send(rig.http, "GET", "gone.test", "/", &[], "").await;
    assert_eq!(down.status, 503, "{down:?}");

    let text = admin_get(rig.admin, "/metrics").await.body;
    let alpha = [
        r#"reporter="waypoint""#,
        r#"destination_service="alpha.test""#,
        r#"destination_service_name="alpha""#,
        r#"destination_service_namespace="alpha""#,
        r#"destination_workload="upstream""#,
        r#"destination_workload_namespace="test""#,
        r#"request_protocol="http""#,
        r#"response_code="200""#,
        r#"response_flags="-""#,
        r#"connection_security_policy="none""#,
    ];
    let from_frontend: Vec<&str> = alpha
        .iter()
        .copied()
        .chain([
            r#"source_workload="frontend""#,
            r#"source_workload_namespace="web""#,
            r#"source_version="v2""#,
        ])
        .collect();
    assert_eq!(
        series(&text, "istio_requests_total", &from_frontend),
        Some(3.0),
        "in\n{text}"
    );
    assert_eq!(
        series(
            &text,
            "istio_requests_total",
            &[alpha.as_slice(), &[r#"source_workload="unknown""#]].concat()
        ),
        Some(1.0),
        "a caller without baggage is its own pair"
    );
    assert_eq!(
        series(
            &text,
            "istio_request_duration_milliseconds_count",
            &from_frontend
        ),
        Some(3.0)
    );
    assert_eq!(
        series(&text, "istio_response_bytes_count", &from_frontend),
        Some(3.0)
    );
    let sum = series(&text, "istio_response_bytes_sum", &from_frontend).unwrap();
    assert!(sum > 3.0 * 20.0, "response sizes counted: {sum}");
    assert_eq!(
        series(
            &text,
            "istio_requests_total",
            &[
                r#"destination_service="gone.test""#,
                r#"response_code="503""#,
                r#"response_flags="UF""#
            ]
        ),
        Some(1.0),
        "an upstream connection failure is flagged UF, as Envoy does"
    );
    // Our own families are still there, in the same exposition.
    assert!(
        text.contains(r#"wayplug_requests_total{namespace="alpha",code="200"} 4"#),
        "{text}"
    );
    assert_eq!(text.matches("# EOF").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_counted_by_result_and_reason() {
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!("wayplug-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("waypoint.yaml");
    let first = config_yaml(up.addr, "");
    std::fs::write(&path, &first).unwrap();
    let config = Config::from_yaml(&first, "waypoint.yaml", &dir).unwrap();
    let waypoint = Waypoint::start(config, Default::default()).await.unwrap();
    let admin = waypoint.admin_addr.unwrap();
    let waypoint = std::sync::Arc::new(waypoint);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = {
        let waypoint = waypoint.clone();
        let path = path.clone();
        tokio::spawn(async move {
            waypoint
                .follow_config(&path, Duration::from_millis(50), async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let count = |result: &'static str, reason: &'static str| async move {
        let text = admin_get(admin, "/metrics").await.body;
        series(
            &text,
            "wayplug_config_reloads_total",
            &[
                &format!(r#"result="{result}""#),
                &format!(r#"reason="{reason}""#),
            ],
        )
    };

    // The follower reads the file once when it starts and applies only later
    // changes: change it until one is applied, which also proves it is running.
    let mut applied = None;
    for attempt in 0..5 {
        std::fs::write(
            &path,
            format!("{first}\ndrainTimeoutMs: {}\n", 1000 + attempt),
        )
        .unwrap();
        applied = eventually(|| async { count("ok", "applied").await }).await;
        if applied.is_some() {
            break;
        }
    }
    assert_eq!(applied, Some(1.0));

    std::fs::write(&path, "listeners: [not, a, map").unwrap();
    let parse = eventually(|| async { count("rejected", "parse").await }).await;
    assert_eq!(parse, Some(1.0));
    // Read again at every check, counted once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count("rejected", "parse").await,
        Some(1.0),
        "a file that does not parse counts once"
    );

    // A listener change needs a restart: refused with that reason.
    std::fs::write(
        &path,
        first.replace("admin: \"127.0.0.1:0\"", "admin: \"127.0.0.1:1\""),
    )
    .unwrap();
    let restart = eventually(|| async { count("rejected", "restart_required").await }).await;
    assert_eq!(restart, Some(1.0));

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower stops")
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
