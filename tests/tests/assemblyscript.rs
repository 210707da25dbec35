//! End-to-end: plugins built with the AssemblyScript SDK
//! (`@solo-io/proxy-runtime`, `tests/fixtures-as/`) behave exactly as their
//! Rust twins (`tests/fixtures/`): the same requests through a waypoint
//! running one or the other, in the same namespace under the same plugin
//! name, give the same status, body, response headers and headers at the
//! upstream.

use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug_tests::harness::*;

/// What a request produced, as a client and the upstream saw it.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    body: String,
    /// Response headers a plugin may touch (`x-*`), sorted.
    response: Vec<(String, String)>,
    /// `x-*` request headers the upstream received, sorted; `None` when
    /// the request never reached it.
    upstream: Option<Vec<(String, String)>>,
}

fn x_headers(h: &http::HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h
        .iter()
        // The request id is fresh per request.
        .filter(|(k, _)| k.as_str().starts_with("x-") && k.as_str() != "x-request-id")
        .map(|(k, v)| {
            let mut value = v.to_str().unwrap_or("<binary>").to_owned();
            // The client's port differs per connection.
            if k == "x-source-address" {
                value = value
                    .rsplit_once(':')
                    .map_or(value.clone(), |(ip, _)| ip.to_owned());
            }
            (k.as_str().to_owned(), value)
        })
        .collect();
    v.sort();
    v
}

type Req<'a> = (&'a str, &'a [(&'a str, &'a str)]);

async fn observe(rig: &Rig, requests: &[Req<'_>]) -> Vec<Seen> {
    let mut out = Vec::new();
    for (path, headers) in requests {
        let before = rig.upstream.count();
        let r = send(rig.http, "GET", "alpha.test", path, headers, "").await;
        let upstream =
            (rig.upstream.count() > before).then(|| x_headers(&rig.upstream.last().headers));
        out.push(Seen {
            status: r.status.as_u16(),
            body: r.body,
            response: x_headers(&r.headers),
            upstream,
        });
    }
    out
}

fn entry(url: &str, config: &str) -> String {
    format!(
        "namespaces:\n  alpha:\n    plugins:\n      - name: twin\n        url: {url}\n        pluginConfig: {config}\n"
    )
}

fn as_url(name: &str) -> String {
    format!("file://{}", wayplug_tests::as_fixture(name).display())
}

/// Runs `requests` against the Rust fixture and the AssemblyScript one
/// (each with `config` and `extra` YAML) and returns both observations.
async fn twins(
    rust: &str,
    assemblyscript: &str,
    config: &str,
    extra: &str,
    requests: &[Req<'_>],
) -> (Vec<Seen>, Vec<Seen>) {
    let r = rig(&format!("{extra}{}", entry(&fixture_url(rust), config))).await;
    let from_rust = observe(&r, requests).await;
    drop(r);
    let a = rig(&format!(
        "{extra}{}",
        entry(&as_url(assemblyscript), config)
    ))
    .await;
    let from_as = observe(&a, requests).await;
    (from_rust, from_as)
}

fn get<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.upstream
        .as_ref()?
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_local_response_match_the_rust_twin() {
    let requests: &[Req<'_>] = &[
        (
            "/hello?x=1",
            &[
                ("x-replace-me", "old"),
                ("x-remove-me", "gone"),
                ("x-keep", "1"),
            ],
        ),
        ("/plain", &[]),
        ("/denied", &[("x-deny", "yes")]),
    ];
    let (rust, assemblyscript) = twins("headers", "headers", "{}", "", requests).await;
    assert_eq!(rust, assemblyscript);
    // And what they agree on is the documented behaviour.
    let ok = &rust[0];
    assert_eq!(ok.status, 200);
    assert_eq!(get(ok, "x-fixture-headers"), Some("seen"));
    assert_eq!(get(ok, "x-replace-me"), Some("replaced"));
    assert_eq!(get(ok, "x-remove-me"), None);
    assert_eq!(get(ok, "x-keep"), Some("1"));
    assert_eq!(get(ok, "x-plugin-name"), Some("twin"));
    assert_eq!(get(ok, "x-wayplug-namespace"), Some("alpha"));
    assert_eq!(get(ok, "x-request-path"), Some("/hello?x=1"));
    assert_eq!(get(ok, "x-source-address"), Some("127.0.0.1"));
    assert!(
        ok.response
            .contains(&("x-fixture-response".into(), "ok".into()))
    );
    assert!(!ok.response.iter().any(|(k, _)| k == "x-upstream-secret"));
    let denied = &rust[2];
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "denied by fixture-headers");
    assert_eq!(denied.upstream, None);
    assert!(
        denied
            .response
            .contains(&("x-denied-by".into(), "fixture-headers".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_callout_matches_the_rust_twin() {
    let auth = auth_service().await;
    let upstreams = format!("upstreams:\n  auth: {{ address: \"{auth}\" }}\n");
    let requests: &[Req<'_>] = &[("/allowed/a", &[]), ("/nope", &[])];
    let (rust, assemblyscript) = twins("callout", "callout", "{}", &upstreams, requests).await;
    assert_eq!(rust, assemblyscript);
    assert_eq!(rust[0].status, 200);
    assert_eq!(get(&rust[0], "x-auth-result"), Some("ok-user"));
    assert_eq!(rust[1].status, 403);
    assert_eq!(rust[1].body, "callout denied: 403");

    // An upstream the config does not name: the dispatch fails at once.
    let (rust, assemblyscript) = twins(
        "callout",
        "callout",
        "{ upstream: elsewhere }",
        &upstreams,
        &[("/allowed/a", &[])],
    )
    .await;
    assert_eq!(rust, assemblyscript);
    assert_eq!(rust[0].status, 500);
    assert_eq!(rust[0].body, "callout dispatch failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_matches_the_rust_twin() {
    let config = r#"{ header: x-cfg, value: "v1", deny_paths: ["/admin", "/private"] }"#;
    let requests: &[Req<'_>] = &[("/ok", &[]), ("/admin/users", &[]), ("/private", &[])];
    let (rust, assemblyscript) = twins("config", "config", config, "", requests).await;
    assert_eq!(rust, assemblyscript);
    assert_eq!(get(&rust[0], "x-cfg"), Some("v1"));
    assert_eq!(rust[1].status, 403);
    assert_eq!(rust[1].body, "path denied by fixture-config");
    assert_eq!(rust[2].status, 403);

    // Both refuse a configuration with an unknown field, or none: the
    // waypoint does not start with either.
    for bad in [
        r#"{ header: x-cfg, value: v, deny_paths: [], extra: 1 }"#,
        "\"\"",
    ] {
        for url in [fixture_url("config"), as_url("config")] {
            let upstream = upstream().await;
            let yaml = config_yaml(upstream.addr, &entry(&url, bad));
            let config = Config::from_yaml(&yaml, "t.yaml", std::path::Path::new(".")).unwrap();
            let err = match Waypoint::start(config, Default::default()).await {
                Ok(_) => panic!("{url} accepted the configuration {bad}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("rejected its configuration"), "{url}: {err}");
        }
    }
}
