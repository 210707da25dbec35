//! The configuration files of one run: the backend, nginx and haproxy as
//! plain reverse proxies, the waypoint with one namespace per scenario, the
//! HBONE terminator in front of the backend, and the scale configs.

use std::path::Path;

use serde_json::json;

pub const BACKEND: &str = "127.0.0.1:18080";
/// The backend as the HBONE terminator reaches it (its workload address).
pub const BACKEND_TERMINATED: &str = "127.0.0.3:18090";
pub const NGINX: &str = "127.0.0.1:18081";
pub const HAPROXY: &str = "127.0.0.1:18082";
pub const WAYPOINT_HTTP: &str = "127.0.0.1:18083";
pub const WAYPOINT_ADMIN: &str = "127.0.0.1:18084";
pub const WAYPOINT_HBONE: &str = "127.0.0.1:18085";
pub const TERMINATOR_ADMIN: &str = "127.0.0.1:18086";
pub const TERMINATOR_HBONE_PORT: u16 = 25008;
pub const TUNNEL_L4: &str = "127.0.0.1:18087";
pub const TUNNEL_FULL: &str = "127.0.0.1:18088";
pub const SCALE_ADMIN: &str = "127.0.0.1:18094";
/// VIPs the tunnels ask for.
pub const VIP_L4: &str = "10.1.0.6:80";
pub const VIP_FULL: &str = "10.1.0.7:80";

/// JSON text as YAML, with numeric keys (service ports) unquoted: YAML reads
/// `"80":` as a string key, and ports are numbers.
fn yaml(config: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(config).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find('"') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with("\":") {
            out.push_str(&after[..digits]);
            out.push(':');
            rest = &after[digits + 2..];
        } else {
            // Copy the whole string literal (escapes included) untouched.
            let mut end = 0;
            let bytes = after.as_bytes();
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            let end = end.min(after.len());
            out.push('"');
            out.push_str(&after[..end]);
            out.push('"');
            rest = after.get(end + 1..).unwrap_or_default();
        }
    }
    out.push_str(rest);
    out
}

/// The 1 KB body every request gets.
pub fn body() -> String {
    "x".repeat(1024)
}

/// What both nginx configs share: one worker in the foreground, its pid,
/// error log and temporary files under `dir`, no access log, unlimited
/// keep-alive requests. `name` names the pid and error log files; `http`
/// goes inside the `http` block.
fn nginx(dir: &Path, name: &str, http: &str) -> String {
    format!(
        r#"worker_processes 1;
daemon off;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
{http}}}
"#,
        dir = dir.display(),
    )
}

/// nginx answering 1 KB on the backend addresses: one worker, keep-alive.
pub fn nginx_backend(dir: &Path) -> String {
    let server = format!(
        r#"    server {{
        listen {BACKEND} reuseport;
        listen {BACKEND_TERMINATED};
        default_type text/plain;
        location / {{ return 200 "{body}"; }}
    }}
"#,
        body = body()
    );
    nginx(dir, "backend", &server)
}

/// nginx as a plain HTTP/1.1 reverse proxy with upstream keep-alive.
pub fn nginx_proxy(dir: &Path) -> String {
    let proxy = format!(
        r#"    upstream backend {{ server {BACKEND}; keepalive 64; }}
    server {{
        listen {NGINX};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"#
    );
    nginx(dir, "nginx", &proxy)
}

/// haproxy in HTTP mode, one thread, connections to the backend reused.
pub fn haproxy() -> String {
    format!(
        r#"global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend in
    bind {HAPROXY}
    default_backend out
backend out
    server backend {BACKEND}
"#
    )
}

/// Plugin files the scenarios load.
pub struct Plugins {
    pub allowlist_proxywasm: String,
    pub allowlist_component: String,
    pub response_header: String,
}

impl Plugins {
    /// The plugins `build.rs` compiled for this binary.
    pub fn built() -> Plugins {
        let url = |file: &str| {
            let path = std::path::Path::new(env!("WAYPLUG_BENCH_PLUGINS")).join(file);
            assert!(path.is_file(), "plugin {} was not built", path.display());
            format!("file://{}", path.display())
        };
        Plugins {
            allowlist_proxywasm: url("header_allowlist_proxywasm.wasm"),
            allowlist_component: url("header_allowlist.wasm"),
            response_header: url("response_header.wasm"),
        }
    }
}

/// An ALLOW policy of 20 rules, two with CEL; a bench request (`GET /`,
/// `x-user: alice`) walks all of them and is allowed by the last.
fn authz_policy(namespace: &str) -> serde_json::Value {
    let mut rules: Vec<serde_json::Value> = (0..18)
        .map(|i| json!({"to": [{"operation": {"methods": ["GET"], "paths": [format!("/svc{i}/*")]}}]}))
        .collect();
    rules.push(json!({
        "to": [{"operation": {"paths": ["/orders/*"]}}],
        "when": [{"key": "cel", "values": ["request.url_path.matches('^/orders/[0-9]+$')"]}]
    }));
    rules.push(json!({
        "to": [{"operation": {"methods": ["GET"], "paths": ["/"]}}],
        "when": [{"key": "cel", "values": ["request.headers['x-user'] == 'alice'"]}]
    }));
    json!({"policies": [{
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "twenty", "namespace": namespace},
        "spec": {
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "rules": rules,
        }
    }]})
}

fn entry(name: &str, url: &str, config: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "url": url, "phase": "AUTHZ", "pluginConfig": config})
}

fn allow_config() -> serde_json::Value {
    json!({"header": "x-user", "allow": ["alice", "bob"]})
}

/// The three plugins of a scale namespace: both allowlists and the 20-rule policy.
fn three(p: &Plugins, namespace: &str) -> serde_json::Value {
    json!([
        entry("allowlist-pw", &p.allowlist_proxywasm, allow_config()),
        entry("allowlist-comp", &p.allowlist_component, allow_config()),
        entry("authz", "builtin://authz", authz_policy(namespace)),
    ])
}

/// The waypoint under test: one namespace per L7 scenario (service
/// `<ns>.bench`), an L4 service and the full HBONE path's service.
pub fn waypoint(
    p: &Plugins,
    identity: &Path,
    access_log: Option<bool>,
    sandbox: Option<serde_json::Value>,
) -> String {
    let ns = json!({
        "none": {"plugins": []},
        "pw": {"plugins": [entry("allowlist-pw", &p.allowlist_proxywasm, allow_config())]},
        "comp": {"plugins": [entry("allowlist-comp", &p.allowlist_component, allow_config())]},
        "authz": {"plugins": [entry("authz", "builtin://authz", authz_policy("authz"))]},
        "chain5": {"plugins": [
            entry("allowlist-pw", &p.allowlist_proxywasm, allow_config()),
            entry("allowlist-comp", &p.allowlist_component, allow_config()),
            entry("authz", "builtin://authz", authz_policy("chain5")),
            entry("stamp", &p.response_header, json!({"name": "x-served-by", "value": "wayplug"})),
            entry("allowlist-pw-2", &p.allowlist_proxywasm, allow_config()),
        ]},
        "full": {"plugins": [entry("allowlist-pw", &p.allowlist_proxywasm, allow_config())]},
    });
    let backend_port = BACKEND.rsplit(':').next().unwrap_or("18080");
    let term_port = BACKEND_TERMINATED.rsplit(':').next().unwrap_or("18090");
    let mut services = Vec::new();
    let mut wl_services = serde_json::Map::new();
    for (i, name) in ["none", "pw", "comp", "authz", "chain5"].iter().enumerate() {
        let host = format!("{name}.bench");
        services.push(json!({"name": name, "namespace": name, "hostname": host,
            "vips": [format!("/10.1.0.{}", i + 1)], "ports": {"80": backend_port.parse::<u16>().unwrap_or(18080)}}));
        wl_services.insert(
            format!("{name}/{host}"),
            json!({"80": backend_port.parse::<u16>().unwrap_or(18080)}),
        );
    }
    services.push(json!({"name": "l4", "namespace": "l4", "hostname": "l4.bench",
        "vips": [format!("/{}", VIP_L4.split(':').next().unwrap_or_default())],
        "ports": {"80": backend_port.parse::<u16>().unwrap_or(18080)}, "appProtocols": {"80": "TCP"}}));
    wl_services.insert(
        "l4/l4.bench".into(),
        json!({"80": backend_port.parse::<u16>().unwrap_or(18080)}),
    );
    services.push(json!({"name": "full", "namespace": "full", "hostname": "full.bench",
        "vips": [format!("/{}", VIP_FULL.split(':').next().unwrap_or_default())],
        "ports": {"80": term_port.parse::<u16>().unwrap_or(18090)}, "appProtocols": {"80": "HTTP"}}));
    let config = json!({
        "listeners": {"http": WAYPOINT_HTTP, "admin": WAYPOINT_ADMIN, "hbone": WAYPOINT_HBONE},
        "identity": {"certDir": identity.display().to_string()},
        "hbone": {"destinationPort": TERMINATOR_HBONE_PORT},
        "services": services,
        "workloads": [
            {"uid": "backend-1", "name": "backend-1", "namespace": "none", "workloadIps": ["127.0.0.1"],
             "protocol": "TCP", "services": wl_services},
            {"uid": "full-1", "name": "full-1", "namespace": "full", "serviceAccount": "backend",
             "workloadIps": ["127.0.0.3"], "protocol": "HBONE",
             "services": {"full/full.bench": {"80": term_port.parse::<u16>().unwrap_or(18090)}}},
        ],
        "namespaces": ns,
    });
    let mut config = config;
    if let Some(sandbox) = sandbox {
        config["sandbox"] = sandbox;
    }
    if let Some(enabled) = access_log {
        config["accessLog"] = json!({"enabled": enabled});
    }
    yaml(&config)
}

/// The waypoint callgrind runs: the no-plugin, Proxy-Wasm and component namespaces only.
pub fn profile(p: &Plugins, legacy: bool) -> String {
    let backend_port: u16 = BACKEND
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(18080);
    let names = ["none", "pw", "comp"];
    let services: Vec<_> = names
        .iter()
        .map(|n| json!({"name": n, "namespace": n, "hostname": format!("{n}.bench"), "ports": {"80": backend_port}}))
        .collect();
    let mut wl = serde_json::Map::new();
    for n in names {
        wl.insert(format!("{n}/{n}.bench"), json!({"80": backend_port}));
    }
    let mut config = json!({
        "listeners": {"http": WAYPOINT_HTTP, "admin": WAYPOINT_ADMIN},
        // Valgrind cannot reserve the pooling allocator's address space for
        // the default 256 instances; these namespaces need four.
        "sandbox": {"maxInstances": 8, "instancesPerPlugin": 1, "requestsPerComponent": 2},
        // The plugin-file poll re-reads and hashes every module; under
        // valgrind's slow clock a poll lands in every counted window and
        // outweighs the requests, though it is no per-request cost.
        "policyPollIntervalMs": 60000,
        "services": services,
        "workloads": [{"uid": "backend-1", "name": "backend-1", "namespace": "none",
            "workloadIps": ["127.0.0.1"], "services": wl}],
        "namespaces": {
            "pw": {"plugins": [entry("allowlist-pw", &p.allowlist_proxywasm, allow_config())]},
            "comp": {"plugins": [entry("allowlist-comp", &p.allowlist_component, allow_config())]},
        },
    });
    if !legacy {
        config["accessLog"] = json!({"enabled": true});
    }
    yaml(&config)
}

/// The destination's side of the full path: HBONE in, plain TCP to the backend.
pub fn terminator(identity: &Path, legacy: bool) -> String {
    let config = json!({
        "listeners": {"http": null, "admin": TERMINATOR_ADMIN,
            "hbone": format!("127.0.0.3:{TERMINATOR_HBONE_PORT}")},
        "identity": {"certDir": identity.display().to_string()},
        "workloads": [
            {"uid": "full-1", "name": "full-1", "namespace": "full", "serviceAccount": "backend",
             "workloadIps": ["127.0.0.3"], "protocol": "TCP"},
        ],
    });
    let mut config = config;
    if !legacy {
        config["accessLog"] = json!({"enabled": false});
    }
    yaml(&config)
}

/// A waypoint with `namespaces` namespaces of three plugins each (no listener but admin).
pub fn scale(p: &Plugins, namespaces: usize, cache_dir: Option<&Path>, legacy: bool) -> String {
    let mut ns = serde_json::Map::new();
    let mut services = Vec::new();
    for i in 0..namespaces {
        let name = format!("ns{i}");
        ns.insert(name.clone(), json!({"plugins": three(p, &name)}));
        services.push(
            json!({"name": "svc", "namespace": name, "hostname": format!("svc.{name}"),
            "ports": {"80": 18080}}),
        );
    }
    let config = json!({
        "listeners": {"http": null, "admin": SCALE_ADMIN},
        "sandbox": {"instancesPerPlugin": 1, "requestsPerComponent": 4, "maxInstances": 1000},
        "services": services,
        "namespaces": ns,
    });
    let mut config = config;
    if !legacy {
        config["accessLog"] = json!({"enabled": false});
    }
    if let Some(dir) = cache_dir {
        config["cacheDir"] = json!(dir.display().to_string());
    }
    yaml(&config)
}

/// The scale phase's waypoint with no namespace, as valgrind can run it: the
/// pooling allocator's reservation for 1000 instances is more address space
/// than valgrind gives a process.
pub fn idle_under_valgrind() -> String {
    let config = json!({
        "listeners": {"http": null, "admin": SCALE_ADMIN},
        "sandbox": {"instancesPerPlugin": 1, "requestsPerComponent": 4, "maxInstances": 8},
        "accessLog": {"enabled": false},
    });
    yaml(&config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_nginx_configs_share_the_preamble_and_keep_their_own_files() {
        let dir = std::path::Path::new("/w");
        let backend = super::nginx_backend(dir);
        let proxy = super::nginx_proxy(dir);
        for (text, name) in [(&backend, "backend"), (&proxy, "nginx")] {
            assert!(
                text.starts_with("worker_processes 1;\ndaemon off;\n"),
                "{text}"
            );
            assert!(text.contains(&format!("pid /w/{name}.pid;")), "{text}");
            assert!(
                text.contains(&format!("error_log /w/{name}-error.log warn;")),
                "{text}"
            );
            assert!(text.contains("    scgi_temp_path /w/tmp;\n    "), "{text}");
            assert!(text.ends_with("    }\n}\n"), "{text}");
        }
        assert!(backend.contains(&format!("return 200 \"{}\";", super::body())));
        assert!(proxy.contains("upstream backend {"), "{proxy}");
        assert!(
            proxy.contains("proxy_set_header Connection \"\";"),
            "{proxy}"
        );
    }

    #[test]
    fn numeric_keys_lose_their_quotes_and_nothing_else_does() {
        let v = serde_json::json!({"ports": {"80": 8080}, "s": "a\\\"80\":b", "n": "123"});
        let text = super::yaml(&v);
        assert!(text.contains("80: 8080"), "{text}");
        assert!(text.contains(r#""s": "a\\\"80\":b""#), "{text}");
        assert!(text.contains(r#""n": "123""#), "{text}");
    }
}
