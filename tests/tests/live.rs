//! Changing policy live: a plugin replaced under load, refused reloads, plugins,
//! namespaces and callout upstreams added and removed while serving, entries that
//! did not change keeping their plugins, replaced plugin files noticed, the
//! on-disk cache of compiled plugins, and the admin API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug_tests::harness::{Reply, admin_get, auth_service, eventually, send};

/// An upstream that answers with the request's `x-stamp` (what the stamping
/// plugin set) and `x-auth-result` as response headers, so a client sees
/// which plugin version handled its request.
async fn stamp_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                    for name in ["x-stamp", "x-auth-result", "x-ticks"] {
                        if let Some(v) = req.headers().get(name) {
                            resp.headers_mut().insert(name, v.clone());
                        }
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn fixture(name: &str) -> PathBuf {
    wayplug_tests::fixture(name)
}

/// The `config` fixture stamping `x-stamp: <stamp>`.
fn stamp_plugin(name: &str, url: &Path, stamp: &str) -> String {
    format!(
        "      - {{ name: {name}, url: \"file://{}\", pluginConfig: {{ header: x-stamp, value: \"{stamp}\", deny_paths: [] }} }}\n",
        url.display()
    )
}

/// Services `<ns>.test` for `alpha`, `beta` and `gamma`, backed by `up`;
/// `extra` adds top-level YAML (namespaces, upstreams, cacheDir).
fn yaml(up: SocketAddr, extra: &str) -> String {
    let port = up.port();
    let mut y = String::from("listeners: { http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\" }\n");
    y += "sandbox: { instancesPerPlugin: 2, requestsPerComponent: 4 }\nservices:\n";
    for ns in ["alpha", "beta", "gamma"] {
        y += &format!(
            "  - {{ name: {ns}, namespace: {ns}, hostname: {ns}.test, ports: {{ 80: {port} }} }}\n"
        );
    }
    y += "workloads:\n  - { uid: u, name: up, namespace: test, workloadIps: [\"127.0.0.1\"], services: { ";
    for ns in ["alpha", "beta", "gamma"] {
        y += &format!("{ns}/{ns}.test: {{ 80: {port} }}, ");
    }
    y += "} }\n";
    y + extra
}

fn temp_dir(name: &str) -> tempfile::TempDir {
    // Removed when dropped, also when the test fails.
    tempfile::Builder::new()
        .prefix(&format!("wayplug-live-{name}-"))
        .tempdir()
        .unwrap()
}

async fn start(yaml: &str) -> Waypoint {
    let config = Config::from_yaml(yaml, "live.yaml", Path::new(".")).expect("valid config");
    Waypoint::start(config, wayplug::demo::builtins())
        .await
        .expect("waypoint starts")
}

async fn get(http: SocketAddr, ns: &str) -> Reply {
    // The callout fixture's auth service allows `/allowed...` only.
    send(http, "GET", &format!("{ns}.test"), "/allowed", &[], "").await
}

async fn stamp_of(http: SocketAddr, ns: &str) -> Option<String> {
    let r = get(http, ns).await;
    assert_eq!(r.status, 200, "{ns}: {}", r.body);
    r.header("x-stamp").map(str::to_owned)
}

/// Follows `path` on `wp` while `test` runs.
async fn following<F: std::future::Future<Output = ()>>(wp: &Waypoint, path: &Path, test: F) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follow = wp.follow_config(path, Duration::from_secs(2), async {
        let _ = stopped.await;
    });
    let run = async {
        test.await;
        let _ = stop.send(());
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(follow, run);
    })
    .await
    .expect("the test finished within 120 s");
}

/// Requests on one keep-alive connection until `total` reaches `until`;
/// every stamp seen, in order.
async fn one_connection(http: SocketAddr, total: Arc<AtomicUsize>, until: usize) -> Vec<String> {
    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut stamps = Vec::new();
    while total.fetch_add(1, Ordering::Relaxed) < until {
        let req = Request::builder()
            .uri("/")
            .header("host", "alpha.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("answered within 10 s")
            .expect("no failed request");
        assert_eq!(resp.status(), 200, "no failed request");
        let stamp = resp
            .headers()
            .get("x-stamp")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let _ = resp.into_body().collect().await.unwrap();
        stamps.push(stamp);
    }
    stamps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_replaced_under_load_answers_old_or_new_and_never_fails() {
    const CONNECTIONS: usize = 8;
    const REQUESTS: usize = 3_000;
    let up = stamp_upstream().await;
    let dir_guard = temp_dir("load");
    let dir = dir_guard.path();
    let path = dir.join("wayplug.yaml");
    let with = |stamp: &str| {
        yaml(
            up,
            &format!(
                "namespaces:\n  alpha:\n    plugins:\n{}",
                stamp_plugin("stamp", &fixture("config"), stamp)
            ),
        )
    };
    std::fs::write(&path, with("old")).unwrap();
    let wp = Waypoint::start(Config::load(&path).unwrap(), Default::default())
        .await
        .unwrap();
    let http = wp.http_addr.unwrap();
    let path2 = path.clone();
    following(&wp, &path, async move {
        let total = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|_| tokio::spawn(one_connection(http, total.clone(), REQUESTS)))
            .collect();
        // The swap lands while every connection is busy.
        while total.load(Ordering::Relaxed) < REQUESTS / 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        std::fs::write(&path2, with("new")).unwrap();
        let mut seen = Vec::new();
        for c in clients {
            seen.push(c.await.expect("client task"));
        }
        let all: Vec<&String> = seen.iter().flatten().collect();
        assert!(all.len() >= REQUESTS, "{} requests", all.len());
        assert!(
            all.iter().all(|s| *s == "old" || *s == "new"),
            "a response from neither version: {:?}",
            all.iter().find(|s| **s != "old" && **s != "new")
        );
        // One connection's requests are sequential: once one was answered
        // by the new version, every later one is too.
        for stamps in &seen {
            if let Some(first_new) = stamps.iter().position(|s| s == "new") {
                assert!(
                    stamps[first_new..].iter().all(|s| s == "new"),
                    "the old version answered after the new one"
                );
            }
        }
        let new = all.iter().filter(|s| **s == "new").count();
        assert!(new > 0, "the swap happened during the load");
        assert!(new < all.len(), "the old version served before the swap");
        assert_eq!(stamp_of(http, "alpha").await.as_deref(), Some("new"));
    })
    .await;
    wp.shutdown().await;
}

/// A core module that exports the Proxy-Wasm ABI version and loops forever
/// in its start function.
fn looping_start_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
            (memory (export "memory") 1)
            (func $spin (loop $l (br $l)))
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_context_create") (param i32 i32))
            (start $spin))"#,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reloads_name_their_reason_and_the_old_version_keeps_serving() {
    let up = stamp_upstream().await;
    let dir_guard = temp_dir("refused");
    let dir = dir_guard.path();
    let broken = dir.join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x01\0\0\0this is not a module").unwrap();
    let looping = dir.join("loop.wasm");
    std::fs::write(&looping, looping_start_module()).unwrap();
    let good = fixture("config");
    let with = |entry: String| yaml(up, &format!("namespaces:\n  alpha:\n    plugins:\n{entry}"));
    let wp = start(&with(stamp_plugin("stamp", &good, "old"))).await;
    let http = wp.http_addr.unwrap();
    let cases = [
        (
            "broken module",
            stamp_plugin("stamp", &broken, "new"),
            "not a loadable WebAssembly module",
        ),
        (
            "wrong sha256",
            format!(
                "      - {{ name: stamp, url: \"file://{}\", sha256: \"{}\", pluginConfig: {{ header: x-stamp, value: new, deny_paths: [] }} }}\n",
                good.display(),
                "ab".repeat(32)
            ),
            "sha256 mismatch",
        ),
        (
            "configuration the plugin rejects",
            format!(
                "      - {{ name: stamp, url: \"file://{}\", pluginConfig: {{ header: x-stamp }} }}\n",
                good.display()
            ),
            "invalid plugin configuration",
        ),
        (
            "loop in the start function",
            stamp_plugin("stamp", &looping, "new"),
            "failed to start",
        ),
    ];
    for (what, entry, reason) in cases {
        let config = Config::from_yaml(&with(entry), "live.yaml", Path::new(".")).unwrap();
        let started = std::time::Instant::now();
        let err = wp.reload(config).await.expect_err(what).to_string();
        assert!(err.contains(reason), "{what}: `{err}` lacks `{reason}`");
        assert!(err.contains("`stamp`"), "{what}: `{err}` names no plugin");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: refused within bounded time"
        );
        assert_eq!(
            stamp_of(http, "alpha").await.as_deref(),
            Some("old"),
            "{what}: the old version still serves"
        );
    }

    // A half-written config file: not applied, the old version serves, and the
    // completed file is.
    let path = dir.join("wayplug.yaml");
    std::fs::write(&path, with(stamp_plugin("stamp", &good, "old"))).unwrap();
    let path2 = path.clone();
    following(&wp, &path, async move {
        let full = with(stamp_plugin("stamp", &good, "new"));
        let cut = full.find("pluginConfig").unwrap();
        let half = &full[..cut];
        let reason = Config::from_yaml(half, "half.yaml", Path::new("."))
            .expect_err("half a file does not load")
            .to_string();
        assert!(reason.contains("half.yaml"), "{reason}");
        std::fs::write(&path2, half).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stamp_of(http, "alpha").await.as_deref(), Some("old"));
        std::fs::write(&path2, &full).unwrap();
        let applied = eventually(|| async {
            (stamp_of(http, "alpha").await.as_deref() == Some("new")).then_some(())
        })
        .await;
        assert!(applied.is_some(), "the completed file was applied");
    })
    .await;
    wp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_namespaces_and_callout_upstreams_change_live() {
    let up = stamp_upstream().await;
    let auth = auth_service().await;
    let dir_guard = temp_dir("change");
    let dir = dir_guard.path();
    let path = dir.join("wayplug.yaml");
    let good = fixture("config");
    let callout = format!(
        "      - {{ name: gate, url: \"file://{}\" }}\n",
        fixture("callout").display()
    );
    let alpha = format!(
        "  alpha:\n    plugins:\n{}",
        stamp_plugin("stamp", &good, "a1")
    );
    let write = |extra: String| std::fs::write(&path, yaml(up, &extra)).unwrap();
    write(format!("namespaces:\n{alpha}"));
    let wp = Waypoint::start(Config::load(&path).unwrap(), Default::default())
        .await
        .unwrap();
    let http = wp.http_addr.unwrap();
    let path2 = path.clone();
    let until = |ns: &'static str, want: Option<&'static str>| async move {
        eventually(|| async { (stamp_of(http, ns).await.as_deref() == want).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("{ns} never answered with stamp {want:?}"))
    };
    following(&wp, &path, async move {
        assert_eq!(stamp_of(http, "beta").await, None);
        // A plugin added to a namespace that had none.
        let beta = format!(
            "  beta:\n    plugins:\n{}",
            stamp_plugin("stamp", &good, "b1")
        );
        write(format!("namespaces:\n{alpha}{beta}"));
        until("beta", Some("b1")).await;
        // A second plugin in it, then removed again.
        let gate = format!(
            "  beta:\n    plugins:\n{}{callout}",
            stamp_plugin("stamp", &good, "b2")
        );
        write(format!(
            "upstreams: {{ auth: {{ address: \"{auth}\" }} }}\nnamespaces:\n{alpha}{gate}"
        ));
        until("beta", Some("b2")).await;
        let r = send(http, "GET", "beta.test", "/allowed", &[], "").await;
        assert_eq!(r.header("x-auth-result"), Some("ok-user"), "{}", r.body);
        // The callout's upstream removed live: the plugin's call fails.
        write(format!("namespaces:\n{alpha}{gate}"));
        let failed = eventually(|| async {
            let r = send(http, "GET", "beta.test", "/allowed", &[], "").await;
            (r.status == 500).then_some(r)
        })
        .await
        .expect("the removed upstream is gone");
        assert!(
            failed.body.contains("callout dispatch failed"),
            "{}",
            failed.body
        );
        // And added back, at once usable by the running plugin.
        write(format!(
            "upstreams: {{ auth: {{ address: \"{auth}\" }} }}\nnamespaces:\n{alpha}{gate}"
        ));
        let back = eventually(|| async {
            let r = send(http, "GET", "beta.test", "/allowed", &[], "").await;
            (r.status == 200).then_some(r)
        })
        .await
        .expect("the upstream is back");
        assert_eq!(back.header("x-auth-result"), Some("ok-user"));
        // A new namespace, then namespaces removed.
        let gamma = format!(
            "  gamma:\n    plugins:\n{}",
            stamp_plugin("stamp", &good, "g1")
        );
        write(format!("namespaces:\n{alpha}{gamma}"));
        until("gamma", Some("g1")).await;
        until("beta", None).await;
        write(String::new());
        until("alpha", None).await;
        until("gamma", None).await;
        let _ = path2;
    })
    .await;
    wp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_did_not_change_keep_their_plugins_and_code_compiles_once() {
    let up = stamp_upstream().await;
    let good = fixture("config");
    // builtin://authz in three namespaces, with three different policies.
    let authz = |ns: &str| {
        format!(
            "      - name: authz\n        url: builtin://authz\n        pluginConfig:\n          policies:\n            - {{ apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {{ name: p, namespace: {ns} }}, spec: {{ targetRefs: [ {{ kind: Service, group: \"\", name: {ns} }} ], action: DENY, rules: [ {{ to: [ {{ operation: {{ paths: [\"/{ns}-secret\"] }} }} ] }} ] }} }}\n"
        )
    };
    let config = |beta_stamp: &str| {
        let mut extra = String::from("namespaces:\n");
        for ns in ["alpha", "beta", "gamma"] {
            let stamp = if ns == "beta" { beta_stamp } else { ns };
            extra += &format!(
                "  {ns}:\n    plugins:\n{}{}",
                authz(ns),
                stamp_plugin("stamp", &good, stamp)
            );
        }
        yaml(up, &extra)
    };
    // Counting compilations: the optimizing compiler only (no background tier-up).
    let config = |stamp: &str| {
        config(stamp).replace(
            "requestsPerComponent: 4 }",
            "requestsPerComponent: 4, compiler: optimizing }",
        )
    };
    let wp = start(&config("b1")).await;
    let http = wp.http_addr.unwrap();
    let registry = wp.pipeline().registry().clone();
    // Two distinct modules: one compilation each, the other four entries reuse them.
    assert_eq!(registry.modules().made("compiled"), 2);
    assert_eq!(registry.modules().made("memory"), 4);
    let r = send(http, "GET", "alpha.test", "/alpha-secret", &[], "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let before = registry.current();

    let changed = Config::from_yaml(&config("b2"), "live.yaml", Path::new(".")).unwrap();
    wp.reload(changed).await.unwrap();
    let after = registry.current();
    assert_eq!(stamp_of(http, "beta").await.as_deref(), Some("b2"));
    // Only beta's stamp entry was rebuilt, from the code already compiled.
    assert_eq!(registry.modules().made("compiled"), 2);
    for ns in ["alpha", "gamma"] {
        assert!(
            Arc::ptr_eq(&before.chains[ns], &after.chains[ns]),
            "{ns}'s chain was kept whole"
        );
    }
    let plugin = |i: &wayplug::plugin::registry::Installed, name: &str| {
        i.chains["beta"]
            .plugins
            .iter()
            .find(|p| p.name() == name)
            .unwrap()
            .clone()
    };
    assert!(Arc::ptr_eq(
        &plugin(&before, "authz"),
        &plugin(&after, "authz")
    ));
    assert!(!Arc::ptr_eq(
        &plugin(&before, "stamp"),
        &plugin(&after, "stamp")
    ));
    assert_eq!(plugin(&after, "stamp").loaded.revision, after.revision);
    assert!(plugin(&after, "authz").loaded.revision < after.revision);
    let metrics = admin_get(wp.admin_addr.unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains("wayplug_plugin_modules_total{source=\"compiled\"} 2"),
        "{metrics}"
    );
    wp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_plugin_file_is_noticed_and_rebuilt() {
    let up = stamp_upstream().await;
    let dir_guard = temp_dir("replaced");
    let dir = dir_guard.path();
    let file = dir.join("stamp.wasm");
    std::fs::copy(fixture("config"), &file).unwrap();
    let wp = start(&yaml(
        up,
        &format!(
            "namespaces:\n  alpha:\n    plugins:\n{}",
            stamp_plugin("stamp", &file, "one")
        ),
    ))
    .await;
    let http = wp.http_addr.unwrap();
    let registry = wp.pipeline().registry().clone();
    let before = registry.current().chains["alpha"].plugins[0].sha256.clone();
    // Deployed the way tools do it: written aside, renamed over the old file.
    // The new module is the same plugin with a custom section: new bytes.
    let mut bytes = std::fs::read(fixture("config")).unwrap();
    bytes.extend_from_slice(&[0, 4, 3, b'n', b'e', b'w']);
    let tmp = dir.join("stamp.wasm.tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let rebuilt = eventually(|| async {
        let p = registry.current().chains["alpha"].plugins[0].clone();
        (p.sha256 != before).then_some(p)
    })
    .await
    .expect("the replaced file was noticed");
    assert_eq!(rebuilt.size, bytes.len());
    assert_eq!(stamp_of(http, "alpha").await.as_deref(), Some("one"));
    // A file replaced by something broken is refused; the plugin keeps serving.
    std::fs::write(&tmp, b"garbage").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        registry.current().chains["alpha"].plugins[0].sha256,
        rebuilt.sha256
    );
    assert_eq!(stamp_of(http, "alpha").await.as_deref(), Some("one"));
    wp.shutdown().await;
}

fn metric(text: &str, line: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
}

/// The admin API's `code` of plugin `name` in `ns`.
async fn code_of(admin: SocketAddr, ns: &str, name: &str) -> String {
    let (status, list) = api(admin, "GET", "/api/namespaces", "").await;
    assert_eq!(status, 200, "{list}");
    let plugins = list["namespaces"][ns]["plugins"]
        .as_array()
        .unwrap()
        .clone();
    let p = plugins.iter().find(|p| p["name"] == name).expect(name);
    p["code"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_plugins_serve_at_once_and_move_to_optimized_code_under_load() {
    let up = stamp_upstream().await;
    let dir_guard = temp_dir("tiered");
    let cache = dir_guard.path().join("cache");
    // Every plugin tiered, however small: in alpha a Proxy-Wasm module and
    // a component on every request, in beta a Proxy-Wasm VM that ticks.
    let extra = format!(
        "cacheDir: {}\nnamespaces:\n  alpha:\n    plugins:\n{}      - {{ name: comp, url: \"file://{}\", pluginConfig: {{ name: x-component, value: \"yes\" }} }}\n  beta:\n    plugins:\n      - {{ name: tick, url: \"file://{}\" }}\n",
        cache.display(),
        stamp_plugin("stamp", &fixture("config"), "t"),
        wayplug_tests::component("response-header").display(),
        fixture("tick").display()
    );
    let config = yaml(up, &extra).replace(
        "requestsPerComponent: 4 }",
        "requestsPerComponent: 4, tieredCompileMinKiB: 0 }",
    );
    let wp = start(&config).await;
    let (http, admin) = (wp.http_addr.unwrap(), wp.admin_addr.unwrap());
    let modules = |source| wp.pipeline().registry().modules().made(source);
    assert_eq!(
        (modules("baseline"), modules("compiled")),
        (3, 0),
        "every plugin started on baseline code"
    );
    for (ns, name) in [("alpha", "stamp"), ("alpha", "comp"), ("beta", "tick")] {
        assert_eq!(code_of(admin, ns, name).await, "baseline", "{ns}/{name}");
    }

    // Requests from two connections until every plugin has moved (at most
    // 60 s): each one decided by both plugins, on either code.
    let moved = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = |moved: Arc<std::sync::atomic::AtomicBool>| async move {
        let mut sent = 0;
        while !moved.load(Ordering::Relaxed) && sent < 20_000 {
            let r = get(http, "alpha").await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.header("x-component"), Some("yes"), "request {sent}");
            assert_eq!(r.header("x-stamp"), Some("t"));
            sent += 1;
        }
        sent
    };
    let watcher = {
        let moved = moved.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let on_baseline = || async {
                for (ns, name) in [("alpha", "stamp"), ("alpha", "comp"), ("beta", "tick")] {
                    if code_of(admin, ns, name).await != "optimized" {
                        return true;
                    }
                }
                false
            };
            while on_baseline().await {
                assert!(
                    Instant::now() < deadline,
                    "still on baseline code after 60 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            moved.store(true, Ordering::Relaxed);
        }
    };
    let (a, b, ()) = tokio::join!(load(moved.clone()), load(moved.clone()), watcher);
    assert!(a + b > 0);
    assert_eq!(modules("compiled"), 3);
    // After the move: still both plugins' decisions, from new instances.
    for _ in 0..8 {
        let r = get(http, "alpha").await;
        assert_eq!(r.header("x-component"), Some("yes"));
        assert_eq!(r.header("x-stamp"), Some("t"));
    }
    // The VM that replaced the ticking one set its own tick (in
    // `on_vm_start`, run again on the optimized code): the count it keeps
    // in shared data goes on growing.
    let ticks = || async {
        let r = get(http, "beta").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.header("x-ticks").unwrap().parse::<u64>().unwrap()
    };
    let before = ticks().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks().await < before + 3 {
        assert!(Instant::now() < deadline, "no tick after the move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only optimized code is written to the cache: a restart loads both
    // from disk and compiles nothing, on any tier.
    let entries = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count();
    assert_eq!(entries, 3);
    wp.shutdown().await;
    let wp = start(&config).await;
    let modules = |source| wp.pipeline().registry().modules().made(source);
    assert_eq!(
        (modules("compiled"), modules("baseline"), modules("disk")),
        (0, 0, 3)
    );
    assert_eq!(
        code_of(wp.admin_addr.unwrap(), "alpha", "comp").await,
        "optimized"
    );
    wp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_cache_restart_compiles_nothing_and_a_corrupt_entry_is_rebuilt() {
    let up = stamp_upstream().await;
    let dir_guard = temp_dir("cache");
    let dir = dir_guard.path();
    let cache = dir.join("cache");
    let extra = format!(
        "cacheDir: {}\nnamespaces:\n  alpha:\n    plugins:\n{}      - {{ name: comp, url: \"file://{}\", pluginConfig: {{ name: x-component, value: \"yes\" }} }}\n",
        cache.display(),
        stamp_plugin("stamp", &fixture("config"), "c"),
        wayplug_tests::component("response-header").display()
    );
    // Counting compilations: the optimizing compiler only (no background
    // tier-up, which would write the entries later).
    let config = yaml(up, &extra).replace(
        "requestsPerComponent: 4 }",
        "requestsPerComponent: 4, compiler: optimizing }",
    );
    let run = || async {
        let wp = start(&config).await;
        let text = admin_get(wp.admin_addr.unwrap(), "/metrics").await.body;
        let r = get(wp.http_addr.unwrap(), "alpha").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-stamp"), Some("c"));
        assert_eq!(r.header("x-component"), Some("yes"));
        wp.shutdown().await;
        let m = |source: &str| {
            metric(
                &text,
                &format!("wayplug_plugin_modules_total{{source=\"{source}\"}}"),
            )
            .unwrap_or(0)
        };
        let corrupt = metric(
            &text,
            "wayplug_plugin_cache_rejected_total{reason=\"corrupt\"}",
        )
        .unwrap_or(0);
        (m("compiled"), m("disk"), corrupt)
    };
    assert_eq!(run().await, (2, 0, 0), "cold: both compiled");
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(run().await, (0, 2, 0), "warm: nothing compiled");
    // One entry damaged on disk: ignored, counted, compiled and written again.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&entries[0], &bytes).unwrap();
    assert_eq!(run().await, (1, 1, 1), "corrupt entry rebuilt");
    assert_eq!(run().await, (0, 2, 0), "and warm again");

    // A cache folder others may write to is refused before anything loads.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = Config::from_yaml(&config, "live.yaml", Path::new(".")).unwrap();
    let err = Waypoint::start(config, Default::default())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("lets group or others write"), "{err}");
}

async fn api(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let r = send(
        admin,
        method,
        "admin",
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await;
    let json = serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("not JSON: {}", r.body));
    (r.status.as_u16(), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_applies_and_refuses_changes() {
    let up = stamp_upstream().await;
    let file_yaml = yaml(
        up,
        &format!(
            "namespaces:\n  alpha:\n    plugins:\n{}",
            stamp_plugin("stamp", &fixture("config"), "file")
        ),
    );
    let wp = start(&file_yaml).await;
    let (http, admin) = (wp.http_addr.unwrap(), wp.admin_addr.unwrap());

    let (status, list) = api(admin, "GET", "/api/namespaces", "").await;
    assert_eq!(status, 200);
    let stamp = &list["namespaces"]["alpha"]["plugins"][0];
    assert_eq!(stamp["name"], "stamp");
    assert_eq!(stamp["sha256"].as_str().unwrap().len(), 64);
    assert!(stamp["loadedAt"].as_str().unwrap().contains('T'));
    assert!(stamp["loadMillis"].as_f64().unwrap() > 0.0);

    // An upload: the plugin's bytes, base64.
    let wasm =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(fixture("config")).unwrap());
    let entry = |value: &str| {
        serde_json::json!({
            "wasm": wasm,
            "pluginConfig": {"header": "x-stamp", "value": value, "deny_paths": []},
        })
        .to_string()
    };
    let (status, body) = api(
        admin,
        "PUT",
        "/api/namespaces/beta/plugins/stamp",
        &entry("api"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["namespaces"]["beta"]["plugins"][0]["name"], "stamp");
    assert_eq!(stamp_of(http, "beta").await.as_deref(), Some("api"));
    let dump = admin_get(admin, "/config_dump").await.body;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["chains"]["beta"][0]["name"], "stamp",
        "the dump shows API changes"
    );
    assert_eq!(
        dump["config"]["namespaces"]["beta"]["plugins"][0]["pluginConfig"]["value"],
        "api"
    );

    // Refusals: each answers 4xx with its reason, and nothing changes.
    let garbage = base64::engine::general_purpose::STANDARD.encode(b"\0asm\x01\0\0\0junk");
    let refusals: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "PUT",
            "/api/namespaces/beta/plugins/stamp",
            serde_json::json!({"wasm": garbage}).to_string(),
            422,
            "not a loadable WebAssembly module",
        ),
        (
            "PUT",
            "/api/namespaces/beta/plugins/stamp",
            serde_json::json!({"wasm": wasm, "pluginConfig": {"header": "x"}}).to_string(),
            422,
            "invalid plugin configuration",
        ),
        (
            "PUT",
            "/api/namespaces/beta/plugins/stamp",
            serde_json::json!({"url": "file:///nonexistent/p.wasm"}).to_string(),
            422,
            "cannot read /nonexistent/p.wasm",
        ),
        (
            "PUT",
            "/api/namespaces/beta/plugins/stamp",
            serde_json::json!({"url": "http://example/p.wasm"}).to_string(),
            400,
            "plugin url `http://example/p.wasm`",
        ),
        (
            "PUT",
            "/api/namespaces/beta/plugins/stamp",
            "{not json".into(),
            400,
            "not JSON",
        ),
        (
            "PUT",
            "/api/namespaces/beta/plugins/bad%20name",
            entry("x"),
            400,
            "may only use letters",
        ),
        (
            "DELETE",
            "/api/namespaces/beta/plugins/nope",
            String::new(),
            404,
            "has no plugin named `nope`",
        ),
        (
            "POST",
            "/api/namespaces/beta",
            String::new(),
            405,
            "use GET",
        ),
    ];
    for (method, path, body, want_status, reason) in refusals {
        let (status, answer) = api(admin, method, path, &body).await;
        assert_eq!(status, want_status, "{method} {path}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{method} {path}: `{error}` lacks `{reason}`"
        );
        assert_eq!(
            stamp_of(http, "beta").await.as_deref(),
            Some("api"),
            "{path}"
        );
    }

    // A whole chain replaced, then removed.
    let chain = serde_json::json!({"plugins": [
        {"name": "one", "wasm": wasm, "pluginConfig": {"header": "x-stamp", "value": "chain", "deny_paths": []}},
    ]});
    let (status, body) = api(admin, "PUT", "/api/namespaces/gamma", &chain.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stamp_of(http, "gamma").await.as_deref(), Some("chain"));
    let (status, _) = api(admin, "DELETE", "/api/namespaces/gamma", "").await;
    assert_eq!(status, 200);
    assert_eq!(stamp_of(http, "gamma").await, None);
    let (_, list) = api(admin, "GET", "/api/namespaces", "").await;
    assert_eq!(list["apiChanges"], 3);

    // The config file applied again replaces every API change.
    let config = Config::from_yaml(&file_yaml, "live.yaml", Path::new(".")).unwrap();
    wp.reload(config).await.unwrap();
    assert_eq!(stamp_of(http, "beta").await, None);
    assert_eq!(stamp_of(http, "alpha").await.as_deref(), Some("file"));
    let (_, list) = api(admin, "GET", "/api/namespaces", "").await;
    assert_eq!(list["apiChanges"], 0);
    wp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_no_entry_names_are_removed_and_their_folder_at_shutdown() {
    let up = stamp_upstream().await;
    let wp = start(&yaml(up, "")).await;
    let (http, admin) = (wp.http_addr.unwrap(), wp.admin_addr.unwrap());
    let module = std::fs::read(fixture("config")).unwrap();
    // The same plugin with a custom section appended: other bytes, another
    // sha256, the same behaviour.
    let variant = |tag: u8| {
        let mut m = module.clone();
        m.extend_from_slice(&[0, 2, 1, tag]);
        base64::engine::general_purpose::STANDARD.encode(m)
    };
    let put = |wasm: String, value: &'static str| async move {
        let body = serde_json::json!({
            "wasm": wasm,
            "pluginConfig": {"header": "x-stamp", "value": value, "deny_paths": []},
        });
        let (status, answer) = api(
            admin,
            "PUT",
            "/api/namespaces/beta/plugins/stamp",
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    };
    let kept_file = || async move {
        let dump = admin_get(admin, "/config_dump").await.body;
        let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
        let url = dump["config"]["namespaces"]["beta"]["plugins"][0]["url"]
            .as_str()
            .unwrap_or_else(|| panic!("no beta entry in {dump}"))
            .to_owned();
        PathBuf::from(url.strip_prefix("file://").unwrap())
    };

    put(variant(b'a'), "one").await;
    let first = kept_file().await;
    assert!(first.exists(), "{}", first.display());
    let folder = first.parent().unwrap().to_owned();

    put(variant(b'b'), "two").await;
    assert_eq!(stamp_of(http, "beta").await.as_deref(), Some("two"));
    let second = kept_file().await;
    assert_ne!(first, second);
    assert!(second.exists());
    assert!(!first.exists(), "the replaced entry's upload is removed");

    // A refused change leaves no file behind either.
    let junk = base64::engine::general_purpose::STANDARD.encode(b"\0asm\x01\0\0\0junk");
    let (status, _) = api(
        admin,
        "PUT",
        "/api/namespaces/beta/plugins/stamp",
        &serde_json::json!({"wasm": junk}).to_string(),
    )
    .await;
    assert_eq!(status, 422);
    // `.lock` tells other processes' sweeps that this folder's process runs.
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock")
            .collect()
    };
    assert_eq!(
        names(&folder),
        [second.file_name().unwrap().to_string_lossy().into_owned()]
    );

    let (status, _) = api(admin, "DELETE", "/api/namespaces/beta/plugins/stamp", "").await;
    assert_eq!(status, 200);
    assert!(!second.exists(), "the removed entry's upload is removed");

    put(variant(b'c'), "three").await;
    assert!(kept_file().await.exists());
    wp.shutdown().await;
    assert!(!folder.exists(), "no cacheDir: the folder goes at shutdown");
}
