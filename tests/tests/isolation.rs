//! Isolation between the requests a plugin serves: callout answers reach the
//! request that asked, a component crash fails only its own request, a
//! Proxy-Wasm VM crash fails exactly the requests pinned to it, FAIL_RELOAD
//! renews the slot that failed, and a failed callback leaves nothing behind.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use wayplug_tests::harness::*;

/// Callouts are answered in batches of this many, so their answers reach
/// the plugin's instance at the same moment.
const BATCH: usize = 8;

/// A callout target that answers 200 `ok:<x-original-path>` for paths under
/// `/allowed`, 403 otherwise, holding each answer until `BATCH` callouts are
/// waiting (or 2 s passed).
async fn batching_auth_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(BATCH));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let barrier = barrier.clone();
                    async move {
                        let path = req
                            .headers()
                            .get("x-original-path")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let _ = tokio::time::timeout(Duration::from_secs(2), barrier.wait()).await;
                        let resp = if path.starts_with("/allowed") {
                            Response::new(Full::new(Bytes::from(format!("ok:{path}"))))
                        } else {
                            let mut r = Response::new(Full::new(Bytes::from("no")));
                            *r.status_mut() = StatusCode::FORBIDDEN;
                            r
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callouts_on_one_instance_each_get_their_own_answer() {
    let auth = batching_auth_service().await;
    let rig = rig(&format!(
        "sandbox: {{ instancesPerPlugin: 1 }}\nupstreams:\n  auth: {{ address: \"{auth}\" }}\nnamespaces:\n  alpha:\n    plugins:\n      - name: callout\n        url: {}\n",
        fixture_url("callout")
    ))
    .await;
    let http = rig.http;
    let requests: Vec<_> = (0..5 * BATCH)
        .map(|i| {
            let path = if i % 2 == 0 {
                format!("/allowed/{i}")
            } else {
                format!("/denied/{i}")
            };
            tokio::spawn(async move {
                let r = send(http, "GET", "alpha.test", &path, &[], "").await;
                (path, r)
            })
        })
        .collect();
    for r in requests {
        let (path, reply) = r.await.unwrap();
        if path.starts_with("/allowed") {
            assert_eq!(reply.status, 200, "{path}: {reply:?}");
            assert_eq!(reply.body, format!("upstream saw {path}"));
        } else {
            assert_eq!(reply.status, 403, "{path}: {reply:?}");
            assert_eq!(reply.body, "callout denied: 403", "{path}");
        }
    }
    // Every admitted request carries the answer to its own callout.
    let seen = rig.upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5 * BATCH / 2);
    for s in seen {
        assert_eq!(
            s.headers["x-auth-result"],
            format!("ok:{}", s.path).as_str(),
            "{} got another request's answer",
            s.path
        );
    }
}

fn one_plugin(sandbox: &str, url: &str, strategy: &str) -> String {
    format!(
        "sandbox: {{ {sandbox} }}\nnamespaces:\n  alpha:\n    plugins:\n      - name: bad\n        url: {url}\n        failStrategy: {strategy}\n        pluginConfig: {{}}\n"
    )
}

/// Starts `n` requests for `/slow` (the upstream answers after 200 ms) and
/// waits until the upstream has seen all of them, so each has passed the
/// request phase of the chain.
async fn slow_requests_in_flight(rig: &Rig, n: usize) -> Vec<tokio::task::JoinHandle<Reply>> {
    let http = rig.http;
    let before = rig.upstream.count();
    let handles = (0..n)
        .map(|_| {
            tokio::spawn(async move { send(http, "GET", "alpha.test", "/slow", &[], "").await })
        })
        .collect();
    let arrived = eventually(|| async { (rig.upstream.count() >= before + n).then_some(()) }).await;
    assert!(arrived.is_some(), "the slow requests reached the upstream");
    handles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_component_fails_only_its_own_request() {
    let rig = rig(&one_plugin(
        "instancesPerPlugin: 1",
        &component_url("component-misbehave"),
        "FAIL_CLOSE",
    ))
    .await;
    let slow = slow_requests_in_flight(&rig, 6).await;
    let trap = send(
        rig.http,
        "GET",
        "alpha.test",
        "/",
        &[("x-misbehave", "trap")],
        "",
    )
    .await;
    assert_eq!(trap.status, 503, "{trap:?}");
    assert!(trap.body.contains("trapped"), "{}", trap.body);
    for r in slow {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "a request on another instance failed: {r:?}");
        assert_eq!(r.body, "upstream saw /slow");
    }
    let m = admin_get(rig.admin, "/metrics").await;
    let want = r#"wayplug_plugin_failures_total{namespace="alpha",plugin="bad",reason="trap"} 1"#;
    assert!(m.body.contains(want), "missing `{want}` in:\n{}", m.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pinned_to_a_crashed_proxy_wasm_vm_fail_at_their_next_callback() {
    // Envoy's VM semantics: the requests in flight on the VM that crashed
    // fail when they next need it (here: their response headers), each per
    // its plugin's failStrategy; later requests get a fresh VM.
    let rig = rig(&one_plugin(
        "instancesPerPlugin: 1",
        &fixture_url("misbehave"),
        "FAIL_CLOSE",
    ))
    .await;
    let slow = slow_requests_in_flight(&rig, 3).await;
    let trap = send(
        rig.http,
        "GET",
        "alpha.test",
        "/",
        &[("x-misbehave", "trap")],
        "",
    )
    .await;
    assert_eq!(trap.status, 503, "{trap:?}");
    for r in slow {
        let r = r.await.unwrap();
        assert_eq!(r.status, 503, "{r:?}");
        assert!(
            r.body.contains("its instance had already failed"),
            "{}",
            r.body
        );
    }
    let after = send(rig.http, "GET", "alpha.test", "/", &[], "").await;
    assert_eq!(after.status, 200, "{after:?}");
}

fn live_instances(dump: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(dump).unwrap();
    v["chains"]["alpha"][0]["liveInstances"]
        .as_u64()
        .unwrap_or_else(|| panic!("no liveInstances in {dump}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_reload_renews_the_slot_that_failed() {
    let rig = rig(&one_plugin(
        "instancesPerPlugin: 2",
        &fixture_url("misbehave"),
        "FAIL_RELOAD",
    ))
    .await;
    // Slot 0 holds the load-time instance; a worker whose home is slot 1
    // fills that one. Which worker serves a request is tokio's choice, so
    // one or two slots are live now.
    for _ in 0..2 {
        assert_eq!(
            send(rig.http, "GET", "alpha.test", "/", &[], "")
                .await
                .status,
            200
        );
    }
    let live = live_instances(&admin_get(rig.admin, "/config_dump").await.body);
    assert!((1..=2).contains(&live), "{live} live instances");
    // The next request traps on its slot's VM, and so does its retry on
    // that slot's replacement; any other slot keeps its healthy instance.
    let trap = send(
        rig.http,
        "GET",
        "alpha.test",
        "/",
        &[("x-misbehave", "trap")],
        "",
    )
    .await;
    assert_eq!(trap.status, 503, "{trap:?}");
    assert_trap_and_retry_counted(&rig).await;
    // Its slot may have been empty until this request filled it, so one
    // slot at most lost its instance: never the other's.
    let after = live_instances(&admin_get(rig.admin, "/config_dump").await.body);
    assert!(
        after + 1 >= live && after <= live,
        "only the slot that failed was renewed (and failed again): {live} live before, {after} after"
    );
    // Later requests are served: by the healthy slot, or by a fresh VM in
    // the failed one.
    for _ in 0..2 {
        assert_eq!(
            send(rig.http, "GET", "alpha.test", "/", &[], "")
                .await
                .status,
            200
        );
    }
    assert!(live_instances(&admin_get(rig.admin, "/config_dump").await.body) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_discards_what_a_failed_callback_did() {
    // `bad` adds a header and sends a local 418, then traps; `good` runs
    // after it and must not find the 418 waiting.
    let rig = rig(&format!(
        "namespaces:\n  alpha:\n    plugins:\n      - name: bad\n        url: {}\n        priority: 10\n        failStrategy: FAIL_OPEN\n      - name: good\n        url: {}\n",
        fixture_url("misbehave"),
        fixture_url("headers"),
    ))
    .await;
    let r = send(
        rig.http,
        "GET",
        "alpha.test",
        "/partial",
        &[("x-misbehave", "respond-then-trap")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "upstream saw /partial");
    let seen = rig.upstream.last();
    assert!(
        seen.headers.get("x-misbehave-partial").is_none(),
        "the failed callback's header change reached the upstream"
    );
    assert!(
        seen.headers.get("x-fixture-headers").is_some(),
        "the plugin after it ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_discards_a_component_route_whose_headers_were_refused() {
    let rig = rig(&one_plugin(
        "callTimeoutMs: 100",
        &component_url("component-misbehave"),
        "FAIL_OPEN",
    ))
    .await;
    let r = send(
        rig.http,
        "GET",
        "alpha.test",
        "/r",
        &[("x-misbehave", "bad-route")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "the route to gone.test was applied: {r:?}");
    assert_eq!(r.body, "upstream saw /r");
    assert!(
        rig.upstream.last().headers.get("x-c-partial").is_none(),
        "a header of the refused decision reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_serves_at_most_requests_per_component_at_once() {
    // The response hook keeps each request's instance until the response
    // arrives, so three slow requests need three instances.
    let rig = rig(&format!(
        "sandbox: {{ requestsPerComponent: 2 }}\nnamespaces:\n  alpha:\n    plugins:\n      - name: stamp\n        url: {}\n        failStrategy: FAIL_CLOSE\n        pluginConfig: {{ name: x-stamp, value: c }}\n",
        component_url("response-header")
    ))
    .await;
    let http = rig.http;
    let requests: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move { send(http, "GET", "alpha.test", "/slow", &[], "").await })
        })
        .collect();
    let mut codes = Vec::new();
    for r in requests {
        let r = r.await.unwrap();
        if r.status == 503 {
            assert!(r.body.contains("already serves 2 requests"), "{}", r.body);
        } else {
            assert_eq!(r.header("x-stamp"), Some("c"), "{r:?}");
        }
        codes.push(r.status.as_u16());
    }
    codes.sort();
    assert_eq!(codes, vec![200, 200, 503]);
    // Finished requests gave their instances back.
    let after = send(rig.http, "GET", "alpha.test", "/", &[], "").await;
    assert_eq!(after.status, 200, "{after:?}");
    let m = admin_get(rig.admin, "/metrics").await;
    let want = r#"wayplug_plugin_failures_total{namespace="alpha",plugin="stamp",reason="busy"} 1"#;
    assert!(m.body.contains(want), "missing `{want}` in:\n{}", m.body);
}
