//! How long a waypoint takes to become ready, and how long a change to its
//! config file takes until the new version answers.
//!
//! - `ready`: `WAYPLUG_BENCH_NAMESPACES` namespaces (default 50), each with
//!   `builtin://authz`, `builtin://route` and the `config` fixture, from a
//!   config file to listening. With `WAYPLUG_BENCH_CACHE=1` it runs twice on
//!   one `cacheDir`: cold, then warm.
//! - `change`: 10 namespaces; one value of one plugin's configuration is
//!   changed in the file (the `config` fixture's stamp); the time from the
//!   file being written to the first response carrying the new stamp. Then a
//!   plugin file is replaced by a module the waypoint never compiled (cold),
//!   and by one it already has (warm): the time until a request went through
//!   the new module.
//!
//! Each case runs once per invocation: a start with a cold compiler takes
//! seconds, so criterion's sampling would take many minutes on CI-sized
//! machines. Run: `cargo bench -p wayplug-tests --bench live`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::Digest;
use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug_tests::harness::{Upstream, send, upstream};

fn namespace_yaml(i: usize, stamp: &str, fixture: &Path) -> String {
    format!(
        r#"
  ns{i}:
    plugins:
      - name: authz
        url: builtin://authz
        pluginConfig:
          policies:
            - apiVersion: security.istio.io/v1
              kind: AuthorizationPolicy
              metadata: {{ name: allow-get, namespace: ns{i} }}
              spec:
                action: ALLOW
                rules: [ {{ to: [ {{ operation: {{ methods: ["GET"] }} }} ] }} ]
      - name: route
        url: builtin://route
        pluginConfig:
          services: [ {{ namespace: ns{i}, name: svc{i}, hostname: svc{i}.bench, ports: [80] }} ]
          routes:
            - apiVersion: gateway.networking.k8s.io/v1
              kind: HTTPRoute
              metadata: {{ name: r{i}, namespace: ns{i} }}
              spec:
                parentRefs: [ {{ group: "", kind: Service, name: svc{i} }} ]
                rules: [ {{ backendRefs: [ {{ name: svc{i}, port: 80 }} ] }} ]
      - name: stamp
        url: file://{fixture}
        pluginConfig: {{ header: x-stamp, value: "{stamp}", deny_paths: [] }}
"#,
        fixture = fixture.display()
    )
}

/// A config of `n` namespaces; namespace 0's stamp is `stamp0`, its stamp
/// plugin is `fixture0`.
fn config_yaml(
    n: usize,
    upstream: SocketAddr,
    stamp0: &str,
    fixture0: &Path,
    fixture: &Path,
    cache: Option<&Path>,
) -> String {
    let port = upstream.port();
    let mut y = String::from("listeners: { http: \"127.0.0.1:0\", admin: null }\n");
    // Every plugin instance the chains may hold fits, next to a reload's.
    y += &format!(
        "sandbox: {{ instancesPerPlugin: 1, requestsPerComponent: 2, maxInstances: {}, memoryLimitMiB: 16 }}\n",
        (n * 7 * 2).max(64)
    );
    if let Some(dir) = cache {
        y += &format!("cacheDir: {}\n", dir.display());
    }
    y += "services:\n";
    for i in 0..n {
        y += &format!(
            "  - {{ name: svc{i}, namespace: ns{i}, hostname: svc{i}.bench, ports: {{ 80: {port} }} }}\n"
        );
    }
    y += "workloads:\n  - uid: bench//v1/Pod/bench/up\n    name: up\n    namespace: bench\n    workloadIps: [\"127.0.0.1\"]\n    services:\n";
    for i in 0..n {
        y += &format!("      ns{i}/svc{i}.bench: {{ 80: {port} }}\n");
    }
    y += "namespaces:\n";
    for i in 0..n {
        if i == 0 {
            y += &namespace_yaml(0, stamp0, fixture0);
        } else {
            y += &namespace_yaml(i, &format!("v1-{i}"), fixture);
        }
    }
    y
}

fn dir(name: &str) -> tempfile::TempDir {
    // Removed when dropped, also when the test fails.
    tempfile::Builder::new()
        .prefix(&format!("wayplug-bench-{name}-"))
        .tempdir()
        .unwrap()
}

async fn ready(n: usize, cache: Option<&Path>, label: &str) {
    let up = upstream().await;
    let d_guard = dir("ready");
    let d = d_guard.path();
    let fixture = wayplug_tests::fixture("config");
    let path = d.join("waypoint.yaml");
    std::fs::write(
        &path,
        config_yaml(n, up.addr, "v1-0", &fixture, &fixture, cache),
    )
    .unwrap();
    let started = Instant::now();
    let config = Config::load(&path).unwrap();
    let wp = Waypoint::start(config, wayplug::demo::builtins())
        .await
        .unwrap();
    let took = started.elapsed();
    let http = wp.http_addr.unwrap();
    let r = send(http, "GET", &format!("svc{}.bench", n - 1), "/", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(stamp(&up), format!("v1-{}", n - 1));
    println!(
        "live/ready/{n}x3/{label}: {:.3} s until listening",
        took.as_secs_f64()
    );
    if cache.is_some() {
        // Only optimized code is written to the cache: the next start finds
        // it once every plugin has moved off baseline code.
        let deadline = Instant::now() + Duration::from_secs(120);
        let on_baseline = || {
            let installed = wp.pipeline().registry().current();
            installed
                .chains
                .values()
                .flat_map(|c| c.plugins.iter())
                .any(|p| p.code() == "baseline")
        };
        while on_baseline() {
            assert!(
                Instant::now() < deadline,
                "plugins still on baseline code after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    wp.shutdown().await;
}

/// The stamp the last request reached the upstream with.
fn stamp(up: &Upstream) -> String {
    let seen = up.last();
    let v = seen
        .headers
        .get("x-stamp")
        .expect("the request was stamped");
    v.to_str().unwrap().to_owned()
}

/// Sends to namespace 0 until its stamp is `want`; the time since `since`.
async fn until_stamp(http: SocketAddr, up: &Upstream, want: &str, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(60);
    loop {
        let r = send(http, "GET", "svc0.bench", "/", &[], "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        if stamp(up) == want {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "{want} never answered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until namespace 0's stamp plugin is the module `sha256`, then
/// sends one request through it; the time since `since`.
async fn until_module(
    wp: &Waypoint,
    http: SocketAddr,
    up: &Upstream,
    sha256: &str,
    since: Instant,
) -> Duration {
    let deadline = since + Duration::from_secs(60);
    let registry = wp.pipeline().registry().clone();
    loop {
        let installed = registry.current();
        let plugins = &installed.chains["ns0"].plugins;
        if plugins
            .iter()
            .any(|p| p.name() == "stamp" && p.sha256 == sha256)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{sha256} never installed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = send(http, "GET", "svc0.bench", "/", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!stamp(up).is_empty());
    since.elapsed()
}

async fn change() {
    let n = 10;
    let up = upstream().await;
    let d_guard = dir("change");
    let d = d_guard.path();
    let fixture = wayplug_tests::fixture("config");
    // Namespace 0's stamp plugin is a file of its own, so it can be replaced.
    let own = d.join("stamp.wasm");
    std::fs::copy(&fixture, &own).unwrap();
    let path = d.join("waypoint.yaml");
    let write = |stamp: &str| {
        std::fs::write(&path, config_yaml(n, up.addr, stamp, &own, &fixture, None)).unwrap()
    };
    write("v1-0");
    let config = Config::load(&path).unwrap();
    let wp = Waypoint::start(config, wayplug::demo::builtins())
        .await
        .unwrap();
    let http = wp.http_addr.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let follow = async {
        // The interval `wayplug run` follows its config file with.
        wp.follow_config(&path, Duration::from_secs(2), async {
            let _ = stop_rx.await;
        })
        .await
    };
    let measure = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        write("v2-0");
        let took = until_stamp(http, &up, "v2-0", started).await;
        println!(
            "live/change/{n}x3/one-value: {:.1} ms until the new version answered",
            took.as_secs_f64() * 1e3
        );
        // The plugin file replaced (written aside, renamed into place) by a
        // module never compiled before: the same plugin with a custom section
        // appended, so new bytes and the same behaviour. Then put back: code
        // the other namespaces still use, so nothing is compiled.
        let original = std::fs::read(&fixture).unwrap();
        let mut other = original.clone();
        other.extend_from_slice(&[0, 6, 5, b'b', b'e', b'n', b'c', b'h']);
        for (label, bytes) in [("new-module-cold", &other), ("module-back-warm", &original)] {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let tmp = d.join("stamp.wasm.tmp");
            std::fs::write(&tmp, bytes).unwrap();
            let want = hex::encode(sha2::Sha256::digest(bytes));
            let started = Instant::now();
            std::fs::rename(&tmp, &own).unwrap();
            let took = until_module(&wp, http, &up, &want, started).await;
            println!(
                "live/change/{n}x3/{label}: {:.1} ms until the new version answered",
                took.as_secs_f64() * 1e3
            );
        }
        let _ = stop_tx.send(());
    };
    tokio::join!(follow, measure);
    wp.shutdown().await;
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks one case.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wants = |case: &str| filter.as_deref().is_none_or(|f| case.contains(f));
    let n: usize = std::env::var("WAYPLUG_BENCH_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if wants("ready") {
            if std::env::var_os("WAYPLUG_BENCH_CACHE").is_some() {
                let cache_guard = dir("cache");
                let cache = cache_guard.path();
                ready(n, Some(cache), "cold-cache").await;
                ready(n, Some(cache), "warm-cache").await;
            } else {
                ready(n, None, "no-disk-cache").await;
            }
        }
        if wants("change") {
            change().await;
        }
    });
}
