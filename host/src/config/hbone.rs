//! The HBONE side of the config: the waypoint's mesh identity, tunnel tuning,
//! and the per-namespace connection-level (L4) authorization rules.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tls::{self, SpiffeId};

type FieldError = (String, String);

/// The waypoint's identity: an Istio workload certificate mounted as files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    /// Directory holding `cert-chain.pem`, `key.pem` and `root-cert.pem`.
    /// Relative paths resolve from the config file's directory.
    pub cert_dir: PathBuf,
    /// Trust domain HBONE clients must belong to. Defaults to the trust
    /// domain of the waypoint's own certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// How often the certificate files are checked for rotation.
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_interval_ms() -> u64 {
    tls::DEFAULT_RELOAD_INTERVAL.as_millis() as u64
}

impl IdentityConfig {
    pub fn cert_dir(&self, base_dir: &Path) -> PathBuf {
        base_dir.join(&self.cert_dir)
    }

    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.reload_interval_ms)
    }

    pub(super) fn validate(&self) -> Result<(), FieldError> {
        if self.cert_dir.as_os_str().is_empty() {
            return Err(("certDir".into(), "must not be empty".into()));
        }
        if let Some(td) = &self.trust_domain {
            // SpiffeId applies the SPIFFE trust-domain rules; its reason names the problem.
            if let Err(e) = SpiffeId::new(td, "ns", "sa") {
                let reason = match e {
                    tls::Error::InvalidSpiffeId { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(("trustDomain".into(), reason));
            }
        }
        if !(100..=3_600_000).contains(&self.reload_interval_ms) {
            return Err((
                "reloadIntervalMs".into(),
                format!(
                    "{} is out of range (100..=3600000)",
                    self.reload_interval_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Tuning of HBONE tunnels, in and out. The defaults follow ztunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HboneConfig {
    /// Budget of an inbound TLS handshake.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Budget of an outbound connection (TCP connect, plus TLS and CONNECT
    /// for an HBONE endpoint).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Removed: tunnels are no longer classified by their first bytes (a client could choose
    /// its own treatment). Kept only to refuse old configs with a reason.
    #[serde(default, skip_serializing)]
    pub sniff_timeout_ms: Option<u64>,
    /// Port the destination ztunnels accept HBONE on.
    #[serde(default = "default_destination_port")]
    pub destination_port: u16,
    /// Streams the HBONE listener allows per connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Streams the HBONE client opens on one connection before dialing another.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: usize,
    /// An outbound HBONE connection with no stream for this long is closed.
    #[serde(default = "default_pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_destination_port() -> u16 {
    15008
}
fn default_max_concurrent_streams() -> u32 {
    200
}
fn default_max_streams_per_connection() -> usize {
    100
}
fn default_pool_idle_timeout_ms() -> u64 {
    60_000
}

impl Default for HboneConfig {
    fn default() -> Self {
        HboneConfig {
            handshake_timeout_ms: default_handshake_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            sniff_timeout_ms: None,
            destination_port: default_destination_port(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_streams_per_connection: default_max_streams_per_connection(),
            pool_idle_timeout_ms: default_pool_idle_timeout_ms(),
        }
    }
}

impl HboneConfig {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn pool_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_idle_timeout_ms)
    }

    pub(super) fn validate(&self) -> Result<(), FieldError> {
        if self.sniff_timeout_ms.is_some() {
            return Err((
                "sniffTimeoutMs".into(),
                "is no longer supported: whether a tunnel is served as HTTP (through the \
                 namespace's plugins) or as TCP is decided per service port, by \
                 `services[].appProtocols`, never by the tunnel's first bytes"
                    .into(),
            ));
        }
        let ranges: [(&str, u64, u64, u64); 3] = [
            ("handshakeTimeoutMs", self.handshake_timeout_ms, 1, 300_000),
            ("connectTimeoutMs", self.connect_timeout_ms, 1, 300_000),
            (
                "poolIdleTimeoutMs",
                self.pool_idle_timeout_ms,
                100,
                3_600_000,
            ),
        ];
        for (field, value, lo, hi) in ranges {
            if !(lo..=hi).contains(&value) {
                return Err((
                    field.into(),
                    format!("{value} is out of range ({lo}..={hi})"),
                ));
            }
        }
        if self.destination_port == 0 {
            return Err(("destinationPort".into(), "must not be 0".into()));
        }
        if self.max_concurrent_streams == 0 {
            return Err(("maxConcurrentStreams".into(), "must be at least 1".into()));
        }
        if !(1..=1000).contains(&self.max_streams_per_connection) {
            return Err((
                "maxStreamsPerConnection".into(),
                format!(
                    "{} is out of range (1..=1000)",
                    self.max_streams_per_connection
                ),
            ));
        }
        Ok(())
    }
}

/// Connection-level authorization of one namespace, checked for every HBONE
/// tunnel before any byte is forwarded. In the order Istio evaluates
/// AuthorizationPolicy: any matching `deny` rule denies; otherwise, if there
/// are `allow` rules, one of them must match; with neither, all is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Authorization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<L4Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<L4Rule>,
}

impl L4Authorization {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), FieldError> {
        for (list, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, rule) in rules.iter().enumerate() {
                rule.validate()
                    .map_err(|(f, reason)| (format!("{list}[{i}].{f}"), reason))?;
            }
        }
        Ok(())
    }
}

/// One rule. Fields are ANDed, values within a field ORed, an absent field
/// matches anything. Strings match exactly, by `prefix*`, by `*suffix`, or
/// `*` for any non-empty value. Principals are SPIFFE ids without
/// `spiffe://` (`cluster.local/ns/web/sa/frontend`), as in Istio.
/// Ports are the port the tunnel's `:authority` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
}

impl L4Rule {
    fn validate(&self) -> Result<(), FieldError> {
        let strings = [
            ("principals", &self.principals),
            ("notPrincipals", &self.not_principals),
            ("namespaces", &self.namespaces),
            ("notNamespaces", &self.not_namespaces),
        ];
        for (field, values) in strings {
            for (i, v) in values.iter().enumerate() {
                if v.is_empty() {
                    return Err((format!("{field}[{i}]"), "must not be empty".into()));
                }
                if field.ends_with("rincipals") && v.starts_with("spiffe://") {
                    return Err((
                        format!("{field}[{i}]"),
                        format!(
                            "`{v}`: write principals without `spiffe://`, as Istio does \
                             (e.g. `cluster.local/ns/web/sa/frontend`)"
                        ),
                    ));
                }
            }
        }
        for (field, ports) in [("ports", &self.ports), ("notPorts", &self.not_ports)] {
            if ports.contains(&0) {
                return Err((field.into(), "port 0 never matches".into()));
            }
        }
        Ok(())
    }
}
