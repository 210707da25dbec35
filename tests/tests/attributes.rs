//! End-to-end: the stream attributes a Proxy-Wasm plugin reads, as the
//! waypoint records them on the real data path, with Envoy's encodings.

use std::time::{SystemTime, UNIX_EPOCH};

use wayplug_tests::harness::*;

fn config() -> String {
    format!(
        "namespaces:\n  alpha:\n    plugins:\n      - name: attrs\n        url: {}\n        pluginName: attrs-root\n        vmConfig: {{ vmId: attrs-vm }}\n",
        fixture_url("attributes")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reads_the_stream_attributes_envoy_provides() {
    let rig = rig(&config()).await;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let reply = send(rig.http, "POST", "alpha.test", "/items", &[], "hello").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let attr = |n: &str| {
        reply
            .header(&format!("x-attr-{n}"))
            .unwrap_or_else(|| panic!("no x-attr-{n} in {reply:?}"))
            .to_owned()
    };
    let int = |n: &str| -> i64 {
        attr(n)
            .parse()
            .unwrap_or_else(|_| panic!("{n} = {}", attr(n)))
    };

    let time = int("request-time");
    assert!(
        time >= before - 1_000_000_000 && time <= before + 10_000_000_000,
        "request.time {time} is nanoseconds since the epoch (sent at {before})"
    );
    assert_eq!(int("request-size"), 5);
    assert_eq!(
        int("request-total-size") - int("request-headers-bytes"),
        5,
        "total size is the body bytes received plus the headers"
    );
    assert!(int("request-headers-bytes") > "alpha.test".len() as i64);
    assert_eq!(
        attr("request-duration"),
        "missing",
        "the exchange is not over"
    );
    assert_eq!(int("response-code"), 200);
    assert_eq!(int("response-size"), 0, "nothing sent downstream yet");
    assert_eq!(int("response-flags"), 0);
    // A plain HTTP 200: Envoy infers UNKNOWN.
    assert_eq!(int("response-grpc-status"), 2);
    assert_eq!(attr("response-code-details"), "via_upstream");
    assert_eq!(
        attr("upstream-address"),
        format!("127.0.0.1:{}", rig.upstream.addr.port())
    );
    assert_eq!(int("upstream-port"), rig.upstream.addr.port() as i64);
    assert_eq!(attr("cluster-name"), "outbound|80||alpha.test");
    assert_eq!(attr("route-name"), "default");
    assert_eq!(attr("plugin-name"), "attrs");
    assert_eq!(attr("plugin-root-id"), "attrs-root");
    assert_eq!(attr("plugin-vm-id"), "attrs-vm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_raises_envoys_flag() {
    // gone.test's only endpoint is port 1 on loopback, where nobody listens.
    let cfg = config().replace("alpha:", "beta:");
    let rig = rig(&cfg).await;
    let reply = send(rig.http, "GET", "gone.test", "/", &[], "").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    // UF (upstream connection failure) is 0x20 in Envoy's flags.
    assert_eq!(reply.header("x-attr-response-flags"), Some("32"));
    assert_eq!(
        reply.header("x-attr-response-code-details"),
        Some("upstream_reset_before_response_started{connection_failure}")
    );
    assert_eq!(reply.header("x-attr-upstream-port"), Some("1"));
    assert_eq!(
        reply.header("x-attr-cluster-name"),
        Some("outbound|80||gone.test")
    );
    assert_eq!(
        reply.header("x-attr-response-grpc-status"),
        Some("14"),
        "503 infers UNAVAILABLE"
    );
}
