//! The waypoint's configuration file.
//!
//! One YAML document describes the listeners, the sandbox limits, the named
//! upstreams plugins may call out to, the mesh's services and workloads (in the
//! shape of ztunnel's local config, so one file can describe the mesh for both),
//! and the plugin chain of every namespace (in Istio's WasmPlugin vocabulary).
//!
//! Everything is checked when the file is loaded: unknown fields, bad values and
//! dangling references are errors that name the file, the field and the reason.

mod access_log;
mod discovery;
mod hbone;
mod limits;
mod oci;
mod plugin;
mod upstream;

pub use access_log::{AccessLogConfig, AccessLogFormat};
pub use discovery::{
    AppProtocol, LocalWorkload, Protocol, ServiceConfig, WaypointAddress, parse_network_address,
};
pub use limits::LimitsConfig;
pub use upstream::{UpstreamTls, UpstreamTlsClient};

/// The IP of a `network/ip` address that validation already accepted.
pub fn discovery_address(s: &str) -> Result<std::net::IpAddr, String> {
    parse_network_address(s).map(|(_, ip)| ip)
}
pub use hbone::{HboneConfig, IdentityConfig, L4Authorization, L4Rule};
pub use oci::{OciConfig, OciReference, OciTag, PullPolicy};
pub use plugin::{
    EnvSource, EnvVar, FailStrategy, Phase, PluginSpec, PluginType, PluginUrl, ShadowSpec, VmConfig,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {source}")]
    Parse {
        origin: String,
        source: serde_norway::Error,
    },
    #[error("config {origin}: field `{field}`: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
}

/// The whole configuration, as loaded and validated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listeners: Listeners,
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Named HTTP upstreams that plugins may reach with `dispatch_http_call`
    /// (Envoy calls these clusters).
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    #[serde(default)]
    pub workloads: Vec<LocalWorkload>,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// The waypoint's mesh certificate; needed by the HBONE listener and to
    /// reach HBONE endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    #[serde(default)]
    pub hbone: HboneConfig,
    /// Timeouts and connection caps of both listeners and of requests to upstreams.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How `oci://` plugins are pulled: credentials, timeouts, size caps.
    #[serde(default)]
    pub oci: OciConfig,
    /// The per-request access log (applied on reload too).
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// A folder of Kubernetes YAML (AuthorizationPolicy, HTTPRoute,
    /// WasmPlugin) compiled into the namespace chains and watched for
    /// changes; relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_dir: Option<PathBuf>,
    /// How often `policyDir` is checked for changes.
    #[serde(default = "default_policy_poll_interval_ms")]
    pub policy_poll_interval_ms: u64,
    /// On shutdown, how long open connections and tunnels may take to
    /// finish before they are closed.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Where compiled plugins are kept across restarts (relative to the
    /// config file); none by default. Code read from it is executed: it
    /// must be writable by the proxy's user only (checked at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Where relative `file://` plugin URLs are resolved from: the config
    /// file's directory (not part of the file itself).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where the config came from, for error messages and the config dump.
    #[serde(skip)]
    pub origin: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listeners {
    /// Plaintext HTTP/1.1 and h2c listener for L7 traffic. `null` disables it.
    #[serde(default = "default_http_listener")]
    pub http: Option<SocketAddr>,
    /// Admin listener: readiness, metrics, config dump. Keep it on loopback.
    #[serde(default = "default_admin_listener")]
    pub admin: Option<SocketAddr>,
    /// HBONE (mTLS HTTP/2 CONNECT) listener for tunnels from ztunnel,
    /// usually `0.0.0.0:15008`. Absent or `null`: no HBONE listener.
    #[serde(default)]
    pub hbone: Option<SocketAddr>,
}

fn default_http_listener() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 15006)))
}

fn default_admin_listener() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 15000)))
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            http: default_http_listener(),
            admin: default_admin_listener(),
            hbone: None,
        }
    }
}

/// Limits every plugin instance runs under.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxConfig {
    /// Wall-clock budget of one guest call (one callback), in milliseconds.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Linear-memory cap of one plugin instance, in MiB.
    #[serde(default = "default_memory_limit_mib", rename = "memoryLimitMiB")]
    pub memory_limit_mib: u64,
    /// Proxy-Wasm: VMs kept per plugin; requests are spread over them.
    /// Components: ready instances kept per plugin, each used by one request.
    #[serde(default = "default_instances_per_plugin")]
    pub instances_per_plugin: usize,
    /// Requests one component plugin may serve at once, each on an instance
    /// of its own; one more fails per the plugin's failStrategy.
    #[serde(default = "default_requests_per_component")]
    pub requests_per_component: usize,
    /// How long a request may stay paused by a plugin (waiting for a callout,
    /// say) before the plugin counts as failed.
    #[serde(default = "default_paused_request_timeout_ms")]
    pub paused_request_timeout_ms: u64,
    /// Upper bound on plugin instances alive at once in this process (sizes
    /// the pooling allocator). Checked at load against what the plugins
    /// need: see `plugin::registry::Capacity`.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Largest request or response body a plugin may ask to buffer, in bytes.
    #[serde(default = "default_max_buffered_body")]
    pub max_buffered_body_bytes: usize,
    /// Most entries a header or trailer map may reach through a plugin's
    /// edits (Envoy's `max_headers_count`).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Most bytes (names plus values) a header or trailer map may reach
    /// through a plugin's edits (Envoy's `max_request_headers_kb`: 60 KiB).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// How plugins are compiled: `tiered` (modules and components of at
    /// least `tieredCompileMinKiB` are first compiled by the baseline
    /// compiler, Winch, about five times quicker to compile and slower to
    /// run; they serve on that code at once and move to optimized Cranelift
    /// code compiled in the background), `optimizing` (Cranelift only) or
    /// `baseline` (those plugins stay on Winch code: short-lived runs). An
    /// entry of the compiled-plugin cache is used whenever there is one.
    #[serde(default)]
    pub compiler: Compiler,
    #[serde(
        default = "default_tiered_compile_min_kib",
        rename = "tieredCompileMinKiB"
    )]
    pub tiered_compile_min_kib: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Compiler {
    #[default]
    Tiered,
    Optimizing,
    Baseline,
}

/// A plugin this large takes Cranelift about a quarter of a second on one
/// core, several times what Winch takes; smaller ones compile optimized at
/// once, since two compilations would cost more than the wait they save.
fn default_tiered_compile_min_kib() -> u64 {
    128
}

fn default_call_timeout_ms() -> u64 {
    100
}
fn default_memory_limit_mib() -> u64 {
    64
}
fn default_instances_per_plugin() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
}
fn default_requests_per_component() -> usize {
    32
}
fn default_paused_request_timeout_ms() -> u64 {
    30_000
}
fn default_max_instances() -> u32 {
    256
}
fn default_max_buffered_body() -> usize {
    16 * 1024 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_header_bytes() -> usize {
    60 * 1024
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            call_timeout_ms: default_call_timeout_ms(),
            memory_limit_mib: default_memory_limit_mib(),
            instances_per_plugin: default_instances_per_plugin(),
            requests_per_component: default_requests_per_component(),
            paused_request_timeout_ms: default_paused_request_timeout_ms(),
            max_instances: default_max_instances(),
            max_buffered_body_bytes: default_max_buffered_body(),
            max_headers: default_max_headers(),
            max_header_bytes: default_max_header_bytes(),
            compiler: Compiler::Tiered,
            tiered_compile_min_kib: default_tiered_compile_min_kib(),
        }
    }
}

impl SandboxConfig {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
    pub fn memory_limit_bytes(&self) -> usize {
        (self.memory_limit_mib as usize) << 20
    }
    /// The size from which components start on baseline code; `None` when
    /// only the optimizing compiler is used.
    pub fn tier_min_bytes(&self) -> Option<usize> {
        (self.compiler != Compiler::Optimizing)
            .then(|| (self.tiered_compile_min_kib as usize).saturating_mul(1024))
    }
    pub fn paused_request_timeout(&self) -> Duration {
        Duration::from_millis(self.paused_request_timeout_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `ip:port` of the upstream.
    pub address: SocketAddr,
    /// Default per-call timeout when the plugin passes none, in milliseconds.
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
    /// TLS for gRPC callouts to this upstream; absent: h2c.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

fn default_upstream_timeout_ms() -> u64 {
    5_000
}

fn default_policy_poll_interval_ms() -> u64 {
    2_000
}

fn default_drain_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceConfig {
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
    /// Connection-level rules for HBONE tunnels into this namespace.
    #[serde(default, skip_serializing_if = "L4Authorization::is_empty")]
    pub authorization: L4Authorization,
}

impl Default for Config {
    /// What an empty file means: every default, no services, no plugins.
    fn default() -> Config {
        Config::from_yaml("{}", "defaults", Path::new(".")).expect("the defaults are valid")
    }
}

impl Config {
    /// Loads and validates a config file. Relative plugin paths resolve from
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::from_yaml(&text, &path.display().to_string(), &base)
    }

    /// Parses and validates YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str, base_dir: &Path) -> Result<Config, Error> {
        let mut config: Config = serde_norway::from_str(text).map_err(|source| Error::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        config.base_dir = base_dir.to_owned();
        config.origin = origin.to_owned();
        for tls in config.upstreams.values_mut().filter_map(|u| u.tls.as_mut()) {
            tls.resolve(base_dir);
        }
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            origin: self.origin.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The policy folder, resolved from the config file's directory.
    pub fn policy_dir(&self) -> Option<PathBuf> {
        self.policy_dir.as_ref().map(|d| self.base_dir.join(d))
    }

    /// The compiled-plugin cache folder, resolved from the config file's
    /// directory.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|d| self.base_dir.join(d))
    }

    pub fn policy_poll_interval(&self) -> Duration {
        Duration::from_millis(self.policy_poll_interval_ms)
    }

    /// How long shutdown waits for open connections.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// Checks everything a file is checked for (a changed copy of a loaded
    /// config, say).
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_hbone()?;
        for (name, u) in &self.upstreams {
            if let Some(tls) = &u.tls {
                tls.client(u.address.ip()).map_err(|(f, reason)| {
                    self.invalid(format!("upstreams.{name}.tls.{f}"), reason)
                })?;
            }
        }
        self.limits
            .validate()
            .map_err(|(f, reason)| self.invalid(format!("limits.{f}"), reason))?;
        self.oci
            .validate()
            .map_err(|(f, reason)| self.invalid(format!("oci.{f}"), reason))?;
        let sb = &self.sandbox;
        if !(50..=60_000).contains(&self.policy_poll_interval_ms) {
            return Err(self.invalid(
                "policyPollIntervalMs",
                format!(
                    "{} is out of range (50..=60000)",
                    self.policy_poll_interval_ms
                ),
            ));
        }
        if sb.call_timeout_ms == 0 || sb.call_timeout_ms > 60_000 {
            return Err(self.invalid(
                "sandbox.callTimeoutMs",
                format!("{} is out of range (1..=60000)", sb.call_timeout_ms),
            ));
        }
        if sb.memory_limit_mib == 0 || sb.memory_limit_mib > 4096 {
            return Err(self.invalid(
                "sandbox.memoryLimitMiB",
                format!("{} is out of range (1..=4096)", sb.memory_limit_mib),
            ));
        }
        if sb.instances_per_plugin == 0 || sb.instances_per_plugin > 64 {
            return Err(self.invalid(
                "sandbox.instancesPerPlugin",
                format!("{} is out of range (1..=64)", sb.instances_per_plugin),
            ));
        }
        if sb.requests_per_component == 0 || sb.requests_per_component > 100_000 {
            return Err(self.invalid(
                "sandbox.requestsPerComponent",
                format!("{} is out of range (1..=100000)", sb.requests_per_component),
            ));
        }
        // `http::HeaderMap` cannot hold more than 32768 entries.
        if sb.max_headers == 0 || sb.max_headers > 10_000 {
            return Err(self.invalid(
                "sandbox.maxHeaders",
                format!("{} is out of range (1..=10000)", sb.max_headers),
            ));
        }
        if sb.max_header_bytes < 1024 || sb.max_header_bytes > 1 << 20 {
            return Err(self.invalid(
                "sandbox.maxHeaderBytes",
                format!("{} is out of range (1024..=1048576)", sb.max_header_bytes),
            ));
        }
        if sb.max_instances < 8 {
            return Err(self.invalid(
                "sandbox.maxInstances",
                format!("{} is too small (at least 8)", sb.max_instances),
            ));
        }
        for (i, svc) in self.services.iter().enumerate() {
            svc.validate().map_err(|(field, reason)| {
                self.invalid(format!("services[{i}].{field}"), reason)
            })?;
        }
        for (i, wl) in self.workloads.iter().enumerate() {
            wl.validate().map_err(|(field, reason)| {
                self.invalid(format!("workloads[{i}].{field}"), reason)
            })?;
            for key in wl.services.keys() {
                let known = self
                    .services
                    .iter()
                    .any(|s| format!("{}/{}", s.namespace, s.hostname) == *key);
                if !known {
                    return Err(self.invalid(
                        format!("workloads[{i}].services"),
                        format!("`{key}` names no service (expected `namespace/hostname` of an entry in `services`)"),
                    ));
                }
            }
        }
        for (ns, nsc) in &self.namespaces {
            if ns.is_empty() {
                return Err(self.invalid("namespaces", "namespace name is empty"));
            }
            nsc.authorization.validate().map_err(|(f, reason)| {
                self.invalid(format!("namespaces.{ns}.authorization.{f}"), reason)
            })?;
            let mut names = std::collections::HashSet::new();
            for (i, p) in nsc.plugins.iter().enumerate() {
                let field = format!("namespaces.{ns}.plugins[{i}]");
                p.validate()
                    .map_err(|(f, reason)| self.invalid(format!("{field}.{f}"), reason))?;
                if !names.insert(p.name.as_str()) {
                    return Err(self.invalid(
                        format!("{field}.name"),
                        format!("plugin name `{}` is used twice in namespace `{ns}`", p.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_hbone(&self) -> Result<(), Error> {
        if let Some(id) = &self.identity {
            id.validate()
                .map_err(|(f, reason)| self.invalid(format!("identity.{f}"), reason))?;
        }
        self.hbone
            .validate()
            .map_err(|(f, reason)| self.invalid(format!("hbone.{f}"), reason))?;
        if self.drain_timeout_ms > 600_000 {
            return Err(self.invalid(
                "drainTimeoutMs",
                format!("{} is out of range (0..=600000)", self.drain_timeout_ms),
            ));
        }
        if self.identity.is_none() {
            if self.listeners.hbone.is_some() {
                return Err(self.invalid(
                    "listeners.hbone",
                    "the HBONE listener needs the waypoint's certificate: add an `identity` \
                     section with `certDir`",
                ));
            }
            if let Some(i) = self
                .workloads
                .iter()
                .position(|w| w.protocol == Protocol::Hbone)
            {
                return Err(self.invalid(
                    format!("workloads[{i}].protocol"),
                    "reaching an HBONE workload needs the waypoint's certificate: add an \
                     `identity` section with `certDir`",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, Error> {
        Config::from_yaml(yaml, "test.yaml", Path::new("/etc/wayplug"))
    }

    #[test]
    fn empty_document_gets_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c.sandbox.call_timeout_ms, 100);
        assert_eq!(c.sandbox.memory_limit_mib, 64);
        assert_eq!(c.sandbox.max_headers, 100);
        assert_eq!(c.sandbox.max_header_bytes, 60 * 1024);
        assert_eq!(c.sandbox.tier_min_bytes(), Some(128 << 10));
        assert_eq!(c.listeners.admin.unwrap().port(), 15000);
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"
listeners: { http: "127.0.0.1:0", admin: null }
sandbox: { callTimeoutMs: 50, memoryLimitMiB: 16 }
upstreams:
  auth: { address: "127.0.0.1:9000" }
services:
  - name: shop
    namespace: shop
    hostname: shop.shop.svc.cluster.local
    vips: ["/10.0.0.1"]
    ports: { 80: 8080 }
workloads:
  - uid: cluster1//v1/Pod/shop/shop-1
    name: shop-1
    namespace: shop
    serviceAccount: shop
    workloadIps: ["127.0.0.1"]
    protocol: TCP
    services:
      shop/shop.shop.svc.cluster.local: { 80: 8080 }
namespaces:
  shop:
    plugins:
      - name: allow
        url: file://plugins/allow.wasm
        phase: AUTHZ
        priority: 10
        failStrategy: FAIL_OPEN
        pluginConfig: { header: x-user, allow: [alice] }
        vmConfig:
          env:
            - { name: MODE, value: strict }
"#,
        )
        .unwrap();
        let p = &c.namespaces["shop"].plugins[0];
        assert_eq!(p.phase, Phase::Authz);
        assert_eq!(p.fail_strategy, FailStrategy::FailOpen);
        assert_eq!(
            p.url.resolve_file(&c.base_dir).unwrap(),
            PathBuf::from("/etc/wayplug/plugins/allow.wasm")
        );
        assert_eq!(
            p.plugin_config_bytes(),
            br#"{"allow":["alice"],"header":"x-user"}"#.to_vec()
        );
        assert_eq!(c.workloads[0].workload_ips[0].to_string(), "127.0.0.1");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("bogus: 1", "unknown field `bogus`"),
            ("sandbox: { callTimeoutMs: 0 }", "sandbox.callTimeoutMs"),
            ("sandbox: { maxHeaders: 40000 }", "sandbox.maxHeaders"),
            ("sandbox: { maxHeaderBytes: 10 }", "sandbox.maxHeaderBytes"),
            ("listeners: { http: nope }", "invalid socket address"),
            (
                "namespaces: { a: { plugins: [ { name: p, url: 'http://x/p.wasm' } ] } }",
                "namespaces.a.plugins[0]: plugin url `http://x/p.wasm`",
            ),
            (
                "namespaces: { a: { plugins: [ { name: p, url: 'file:///p.wasm', sha256: xyz } ] } }",
                "namespaces.a.plugins[0].sha256",
            ),
            (
                "namespaces: { a: { plugins: [ { name: p, url: 'file:///p.wasm', failStrategy: MAYBE } ] } }",
                "unknown variant `MAYBE`",
            ),
            (
                "sandbox: { compiler: fast }",
                "sandbox.compiler: unknown variant `fast`",
            ),
            (
                "namespaces: { a: { plugins: [ { name: p, url: 'file:///p.wasm' }, { name: p, url: 'file:///q.wasm' } ] } }",
                "used twice",
            ),
            (
                "namespaces: { a: { plugins: [ { name: p, url: 'file:///p.wasm', type: NETWORK } ] } }",
                "namespaces.a.plugins[0].type",
            ),
            (
                "workloads: [ { uid: u, name: n, namespace: a, workloadIps: [127.0.0.1], services: { a/missing: { 80: 80 } } } ]",
                "names no service",
            ),
            (
                "services: [ { name: s, namespace: a, hostname: '', ports: { 80: 80 } } ]",
                "services[0].hostname",
            ),
        ];
        for (yaml, expect) in cases {
            let err = parse(yaml).expect_err(yaml).to_string();
            assert!(
                err.contains(expect),
                "{yaml}: error `{err}` lacks `{expect}`"
            );
            assert!(err.contains("test.yaml"), "{err} does not name the file");
        }
    }

    #[test]
    fn hbone_sections_parse() {
        let c = parse(
            r#"
listeners: { hbone: "127.0.0.1:0" }
identity: { certDir: certs/waypoint, reloadIntervalMs: 500 }
hbone: { destinationPort: 25008 }
drainTimeoutMs: 1500
namespaces:
  shop:
    authorization:
      deny: [ { principals: ["cluster.local/ns/evil/sa/*"] } ]
      allow: [ { namespaces: [web], ports: [80] } ]
"#,
        )
        .unwrap();
        let id = c.identity.as_ref().unwrap();
        assert_eq!(
            id.cert_dir(&c.base_dir),
            PathBuf::from("/etc/wayplug/certs/waypoint")
        );
        assert_eq!(id.trust_domain, None);
        assert_eq!(c.hbone.destination_port, 25008);
        assert_eq!(c.hbone.max_streams_per_connection, 100);
        assert_eq!(c.drain_timeout(), Duration::from_millis(1500));
        let authz = &c.namespaces["shop"].authorization;
        assert_eq!(authz.allow[0].ports, vec![80]);
        // Defaults: no HBONE listener, no identity.
        let d = parse("{}").unwrap();
        assert_eq!(d.listeners.hbone, None);
        assert!(d.identity.is_none());
    }

    #[test]
    fn app_protocols_and_limits_parse_with_defaults() {
        let c = parse(
            r#"
services:
  - { name: s, namespace: a, hostname: s.a, ports: { 80: 8080, 5432: 5432, 9090: 9090 },
      appProtocols: { 5432: TCP, 9090: HTTP2 } }
limits: { requestHeaderTimeoutMs: 500, maxConnections: 3 }
"#,
        )
        .unwrap();
        let svc = &c.services[0];
        assert_eq!(svc.app_protocols.get(&5432), Some(&AppProtocol::Tcp));
        assert_eq!(svc.app_protocols.get(&9090), Some(&AppProtocol::Http2));
        assert_eq!(svc.app_protocols.get(&80), None);
        assert_eq!(
            c.limits.request_header_timeout(),
            Duration::from_millis(500)
        );
        assert_eq!(c.limits.max_connections, 3);
        let d = parse("{}").unwrap().limits;
        assert_eq!(d, LimitsConfig::default());
        assert!(d.request_header_timeout() <= Duration::from_secs(60));
        assert_eq!(d.idle_timeout(), Duration::from_secs(60));
        assert_eq!(d.stream_idle_timeout(), Duration::from_secs(300));
        assert_eq!(d.max_connections, 10_000);
        assert_eq!(d.upstream_connect_timeout(), Duration::from_secs(5));
        assert_eq!(d.upstream_response_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn hbone_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "listeners: { hbone: '127.0.0.1:0' }",
                "field `listeners.hbone`: the HBONE listener needs the waypoint's certificate",
            ),
            (
                "workloads: [ { uid: u, name: n, namespace: a, workloadIps: [127.0.0.1], protocol: HBONE } ]",
                "workloads[0].protocol",
            ),
            ("identity: { certDir: '' }", "identity.certDir"),
            (
                "identity: { certDir: d, trustDomain: Cluster.Local }",
                "identity.trustDomain`: the trust domain must be lowercase",
            ),
            (
                "identity: { certDir: d, reloadIntervalMs: 1 }",
                "identity.reloadIntervalMs",
            ),
            (
                "identity: { certDir: d, bogus: 1 }",
                "unknown field `bogus`",
            ),
            (
                "hbone: { handshakeTimeoutMs: 0 }",
                "hbone.handshakeTimeoutMs",
            ),
            ("hbone: { destinationPort: 0 }", "hbone.destinationPort"),
            (
                "hbone: { maxStreamsPerConnection: 0 }",
                "hbone.maxStreamsPerConnection",
            ),
            ("drainTimeoutMs: 9999999", "drainTimeoutMs"),
            (
                "hbone: { sniffTimeoutMs: 1000 }",
                "hbone.sniffTimeoutMs`: is no longer supported",
            ),
            (
                "services: [ { name: s, namespace: a, hostname: s.a, ports: { 80: 8080 }, appProtocols: { 81: HTTP } } ]",
                "services[0].appProtocols.81`: port 81 is not a service port of `s.a` (its `ports`: 80)",
            ),
            (
                "services: [ { name: s, namespace: a, hostname: s.a, ports: { 80: 8080 }, appProtocols: { 80: GRPC } } ]",
                "unknown variant `GRPC`, expected one of `HTTP`, `HTTP2`, `TCP`",
            ),
            (
                "limits: { requestHeaderTimeoutMs: 0 }",
                "limits.requestHeaderTimeoutMs",
            ),
            (
                "limits: { idleTimeoutMs: 99999999 }",
                "limits.idleTimeoutMs",
            ),
            (
                "limits: { streamIdleTimeoutMs: 1 }",
                "limits.streamIdleTimeoutMs",
            ),
            ("limits: { maxConnections: 0 }", "limits.maxConnections"),
            (
                "limits: { upstreamConnectTimeoutMs: 0 }",
                "limits.upstreamConnectTimeoutMs",
            ),
            (
                "limits: { upstreamResponseTimeoutMs: 0 }",
                "limits.upstreamResponseTimeoutMs",
            ),
            (
                "limits: { headerTimeout: 5 }",
                "unknown field `headerTimeout`",
            ),
            (
                "namespaces: { a: { authorization: { allow: [ { principals: ['spiffe://cluster.local/ns/a/sa/b'] } ] } } }",
                "namespaces.a.authorization.allow[0].principals[0]`: `spiffe://cluster.local/ns/a/sa/b`: write principals without `spiffe://`",
            ),
            (
                "namespaces: { a: { authorization: { deny: [ { ports: [0] } ] } } }",
                "namespaces.a.authorization.deny[0].ports",
            ),
            (
                "namespaces: { a: { authorization: { deny: [ { sourceIp: x } ] } } }",
                "unknown field `sourceIp`",
            ),
        ];
        for (yaml, expect) in cases {
            let err = parse(yaml).expect_err(yaml).to_string();
            assert!(
                err.contains(expect),
                "{yaml}: error `{err}` lacks `{expect}`"
            );
            assert!(err.contains("test.yaml"), "{err} does not name the file");
        }
    }
}
