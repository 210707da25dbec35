//! The plaintext listener under `limits:` and the Host rules: slow, silent, greedy and
//! ambiguous clients, and upstreams that do not answer. Small timeouts, loopback only, every
//! wait bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug_tests::harness::{self, admin_get, eventually, send, send_h2};

const STEP: Duration = Duration::from_secs(10);

struct Rig {
    waypoint: Waypoint,
    http: SocketAddr,
    admin: SocketAddr,
    upstream: harness::Upstream,
}

/// A waypoint with `ok.test` (the recording upstream), `hang.test` (accepts, never answers)
/// and `full.test` (a listener whose backlog is full: connects hang), under `limits`.
async fn rig(limits: &str) -> Rig {
    let upstream = harness::upstream().await;
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let full_port = full_backlog().await;
    let up = upstream.addr.port();
    let yaml = format!(
        r#"
listeners: {{ http: "127.0.0.1:0", admin: "127.0.0.1:0" }}
limits: {limits}
services:
  - {{ name: ok, namespace: ok, hostname: ok.test, ports: {{ 80: {up} }} }}
  - {{ name: hang, namespace: ok, hostname: hang.test, ports: {{ 80: {hang_port} }} }}
  - {{ name: full, namespace: ok, hostname: full.test, ports: {{ 80: {full_port} }} }}
workloads:
  - uid: u
    name: u
    namespace: ok
    workloadIps: ["127.0.0.1"]
    services:
      ok/ok.test: {{ 80: {up} }}
      ok/hang.test: {{ 80: {hang_port} }}
      ok/full.test: {{ 80: {full_port} }}
"#
    );
    let config = Config::from_yaml(&yaml, "limits-test.yaml", std::path::Path::new(".")).unwrap();
    let waypoint = Waypoint::start(config, Default::default()).await.unwrap();
    Rig {
        http: waypoint.http_addr.unwrap(),
        admin: waypoint.admin_addr.unwrap(),
        waypoint,
        upstream,
    }
}

/// A port whose listener never accepts and whose backlog is already full, so a new connect
/// gets no answer (the kernel drops its SYN). The listener and its queued clients are leaked
/// for the rest of the test process.
async fn full_backlog() -> u16 {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => queued.push(s),
            _ => break,
        }
    }
    Box::leak(Box::new((listener, queued)));
    addr.port()
}

/// Reads until the peer closes (or fails), bounded; returns what came and when it ended.
async fn until_closed(stream: &mut TcpStream, started: Instant) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut got))
        .await
        .expect("the waypoint closed the connection");
    (got, started.elapsed())
}

async fn metric(admin: SocketAddr, want: &str) {
    let found = eventually(|| async {
        let body = admin_get(admin, "/metrics").await.body;
        body.contains(want).then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "missing `{want}` in\n{}",
        admin_get(admin, "/metrics").await.body
    );
}

#[tokio::test]
async fn ambiguous_hosts_are_refused_over_http1_and_h2c() {
    let rig = rig("{}").await;
    let cases = [
        (false, vec![("host", "ok.test")], "2 Host headers"),
        (true, vec![("host", "hang.test")], "disagrees"),
        (
            true,
            vec![("host", "ok.test"), ("host", "ok.test")],
            "2 Host headers",
        ),
    ];
    for (h2, extra, why) in cases {
        let r = if h2 {
            send_h2(rig.http, "GET", "ok.test", "/", &extra, "").await
        } else {
            send(rig.http, "GET", "ok.test", "/", &extra, "").await
        };
        assert_eq!(r.status, 400, "h2={h2} {extra:?}: {r:?}");
        assert!(r.body.contains(why), "{}", r.body);
    }
    // HTTP/1.1 absolute-form against Host, written by hand.
    let mut s = TcpStream::connect(rig.http).await.unwrap();
    s.write_all(b"GET http://hang.test/ HTTP/1.1\r\nhost: ok.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = until_closed(&mut s, Instant::now()).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("disagrees"), "{got}");
    assert_eq!(rig.upstream.count(), 0);
    // Consistent spellings still pass.
    let r = send_h2(
        rig.http,
        "GET",
        "ok.test",
        "/",
        &[("host", "OK.test:80")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        send(rig.http, "GET", "ok.test", "/", &[], "").await.status,
        200
    );
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn slow_and_silent_clients_are_closed_after_the_header_timeout() {
    let rig = rig("{ requestHeaderTimeoutMs: 500 }").await;
    // Silent: not a byte.
    let started = Instant::now();
    let mut silent = TcpStream::connect(rig.http).await.unwrap();
    let (_, took) = until_closed(&mut silent, started).await;
    assert!(took >= Duration::from_millis(450), "{took:?}");

    // Slowloris: a header byte every 100 ms, for at most 5 s.
    let started = Instant::now();
    let mut slow = TcpStream::connect(rig.http).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: ok.test\r\nx-a: ")
        .await
        .unwrap();
    let mut closed = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = [0u8; 512];
        if slow.write_all(b"a").await.is_err()
            || tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf))
                .await
                .is_ok()
        {
            closed = Some(started.elapsed());
            break;
        }
    }
    let took = closed.expect("the slow head was cut off");
    assert!(took >= Duration::from_millis(450), "{took:?}");
    // A slow h2c preface is bounded the same way.
    let started = Instant::now();
    let mut h2 = TcpStream::connect(rig.http).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (_, took) = until_closed(&mut h2, started).await;
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert_eq!(rig.upstream.count(), 0);
    metric(
        rig.admin,
        r#"wayplug_downstream_connections_closed_total{listener="http",reason="header_timeout"} 3"#,
    )
    .await;
    // Prompt clients are served meanwhile.
    assert_eq!(
        send(rig.http, "GET", "ok.test", "/", &[], "").await.status,
        200
    );
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let rig = rig("{ idleTimeoutMs: 300, requestHeaderTimeoutMs: 5000 }").await;
    let mut s = TcpStream::connect(rig.http).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: ok.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(STEP, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let (rest, took) = until_closed(&mut s, started).await;
    assert!(rest.is_empty() || !rest.starts_with(b"HTTP"), "{rest:?}");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(
        took < Duration::from_millis(4500),
        "the header timer did not do it: {took:?}"
    );
    metric(
        rig.admin,
        r#"wayplug_downstream_connections_closed_total{listener="http",reason="idle_timeout"} 1"#,
    )
    .await;
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_a_504() {
    let rig = rig("{ upstreamResponseTimeoutMs: 300 }").await;
    let started = Instant::now();
    let r = send(rig.http, "GET", "hang.test", "/", &[], "").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        r.body
            .contains("sent no response head within 300 ms (limits.upstreamResponseTimeoutMs)"),
        "{}",
        r.body
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    let r = send_h2(rig.http, "GET", "hang.test", "/", &[], "").await;
    assert_eq!(r.status, 504, "{r:?}");
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn a_quiet_request_in_flight_is_closed_after_the_stream_idle_timeout() {
    let rig = rig("{ streamIdleTimeoutMs: 400, upstreamResponseTimeoutMs: 20000 }").await;
    let started = Instant::now();
    let mut s = TcpStream::connect(rig.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: hang.test\r\n\r\n")
        .await
        .unwrap();
    let (got, took) = until_closed(&mut s, started).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(took >= Duration::from_millis(350), "{took:?}");
    metric(
        rig.admin,
        r#"wayplug_downstream_connections_closed_total{listener="http",reason="stream_idle_timeout"} 1"#,
    )
    .await;
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn a_connect_that_gets_no_answer_times_out() {
    let rig = rig("{ upstreamConnectTimeoutMs: 300 }").await;
    let r = send(rig.http, "GET", "full.test", "/", &[], "").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body
            .contains("no answer within 300 ms (limits.upstreamConnectTimeoutMs)"),
        "{}",
        r.body
    );
    rig.waypoint.shutdown().await;
}

#[tokio::test]
async fn a_full_listener_closes_new_connections_and_recovers() {
    let rig = rig("{ maxConnections: 2, requestHeaderTimeoutMs: 8000 }").await;
    let first = TcpStream::connect(rig.http).await.unwrap();
    let _second = TcpStream::connect(rig.http).await.unwrap();
    metric(
        rig.admin,
        r#"wayplug_downstream_connections{listener="http"} 2"#,
    )
    .await;
    for _ in 0..2 {
        let mut extra = TcpStream::connect(rig.http).await.unwrap();
        let _ = extra
            .write_all(b"GET / HTTP/1.1\r\nhost: ok.test\r\n\r\n")
            .await;
        let (got, _) = until_closed(&mut extra, Instant::now()).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    metric(
        rig.admin,
        r#"wayplug_downstream_connections_refused_total{listener="http"} 2"#,
    )
    .await;
    assert_eq!(rig.upstream.count(), 0);
    drop(first);
    let http = rig.http;
    let ok = eventually(|| async move {
        let mut s = TcpStream::connect(http).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: ok.test\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let (got, _) = until_closed(&mut s, Instant::now()).await;
        got.starts_with(b"HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(ok.is_some(), "a freed slot serves again");
    rig.waypoint.shutdown().await;
}
