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
    // Removed when dropped, also when the test fails.
    let dir_guard = tempfile::Builder::new()
        .prefix("wayplug-metrics-")
        .tempdir()
        .unwrap();
    let dir = dir_guard.path();
    let path = dir.join("waypoint.yaml");
    let first = config_yaml(up.addr, "");
    std::fs::write(&path, &first).unwrap();
    let config = Config::from_yaml(&first, "waypoint.yaml", dir).unwrap();
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
}

/// Reads from `s` until `done` says the bytes so far are complete; bounded
/// to 64 KiB and 5 s.
async fn read_until(s: &mut tokio::net::TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) && got.len() < 64 << 10 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("peer answers within 5 s")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// A chunked message is complete at its last chunk; a head without a body
/// at its blank line.
fn chunked_done(b: &[u8]) -> bool {
    b.windows(5).any(|w| w == b"0\r\n\r\n")
}

/// An HTTP/1.1 message as chunks of `sizes` bytes of `fill`.
fn chunks(sizes: &[usize], fill: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for &n in sizes {
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(fill, n));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_byte_metrics_count_chunked_bodies() {
    use tokio::io::AsyncWriteExt;
    // An upstream that reads the whole request, then answers 2500 bytes
    // in chunks with no Content-Length.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                read_until(&mut s, chunked_done).await;
                let mut reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                reply.extend(chunks(&[1000, 1000, 500], b'#'));
                let _ = s.write_all(&reply).await;
            });
        }
    });
    let yaml = config_yaml(up, "");
    let config = Config::from_yaml(&yaml, "test.yaml", std::path::Path::new(".")).unwrap();
    let waypoint = Waypoint::start(config, Default::default()).await.unwrap();
    let (http, admin) = (waypoint.http_addr.unwrap(), waypoint.admin_addr.unwrap());

    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    let mut request =
        b"POST /upload HTTP/1.1\r\nhost: alpha.test\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    request.extend(chunks(&[1500, 1500], b'q'));
    s.write_all(&request).await.unwrap();
    let answer = read_until(&mut s, chunked_done).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        answer.iter().filter(|&&b| b == b'#').count(),
        2500,
        "{text}"
    );
    drop(s);

    // The request's metrics are recorded once its exchange is done.
    let labels = [
        r#"destination_service="alpha.test""#,
        r#"response_code="200""#,
    ];
    let mut scraped = String::new();
    for _ in 0..50 {
        scraped = admin_get(admin, "/metrics").await.body;
        if series(&scraped, "istio_request_bytes_count", &labels) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let request_bytes = series(&scraped, "istio_request_bytes_sum", &labels).unwrap();
    let response_bytes = series(&scraped, "istio_response_bytes_sum", &labels).unwrap();
    // Body bytes as counted, plus a head of well under a kilobyte (a
    // chunked body used to count nothing).
    assert!(
        (3000.0..3500.0).contains(&request_bytes),
        "request bytes {request_bytes} in\n{scraped}"
    );
    assert!(
        (2500.0..3000.0).contains(&response_bytes),
        "response bytes {response_bytes} in\n{scraped}"
    );
    waypoint.shutdown().await;
}
