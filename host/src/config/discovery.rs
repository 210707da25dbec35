//! Services and workloads, shaped like ztunnel's local config
//! (`LOCAL_XDS_PATH`), so one file can describe the mesh for both.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

type FieldError = (String, String);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub namespace: String,
    /// The service's DNS name, e.g. `reviews.bookinfo.svc.cluster.local`.
    pub hostname: String,
    /// Virtual IPs as `network/ip` (an empty network is the default one).
    #[serde(default)]
    pub vips: Vec<String>,
    /// Service port to target port.
    #[serde(default)]
    pub ports: BTreeMap<u16, u16>,
    /// What each service port carries, as Kubernetes' `appProtocol` says it (keys are service
    /// ports from `ports`). A port not listed is `HTTP` when the namespace has plugins, else
    /// `TCP`. It decides how HBONE tunnels to the port are served; the client has no say.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_protocols: BTreeMap<u16, AppProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// The application protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppProtocol {
    /// HTTP/1.1 (a tunnel that opens with the HTTP/2 preface is served as HTTP/2 too).
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP/2 with prior knowledge (h2c), as gRPC uses it.
    #[serde(rename = "HTTP2")]
    Http2,
    /// Opaque bytes: relayed as they are, past any L7 plugin.
    #[serde(rename = "TCP")]
    Tcp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointAddress {
    /// `network/ip` of the waypoint.
    pub destination: String,
    #[serde(default = "default_hbone_port")]
    pub hbone_mtls_port: u16,
}

fn default_hbone_port() -> u16 {
    15008
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// The workload's ztunnel accepts HBONE on port 15008.
    #[serde(rename = "HBONE")]
    Hbone,
    /// Plain TCP to the workload's port.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalWorkload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    pub workload_ips: Vec<IpAddr>,
    #[serde(default)]
    pub protocol: Protocol,
    /// `namespace/hostname` of each service this workload backs, with its
    /// service-port to target-port map.
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
    // Accepted so a ztunnel local config loads unchanged; not used here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

fn default_service_account() -> String {
    "default".into()
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

/// Parses ztunnel's `network/ip` address form (the network may be empty).
pub fn parse_network_address(s: &str) -> Result<(String, IpAddr), String> {
    let (network, ip) = s.split_once('/').unwrap_or(("", s));
    let ip = ip
        .parse()
        .map_err(|_| format!("`{s}` is not `network/ip` (e.g. `/10.0.0.1`)"))?;
    Ok((network.to_owned(), ip))
}

impl ServiceConfig {
    pub(super) fn validate(&self) -> Result<(), FieldError> {
        if self.hostname.is_empty() {
            return Err(("hostname".into(), "must not be empty".into()));
        }
        if self.namespace.is_empty() {
            return Err(("namespace".into(), "must not be empty".into()));
        }
        for (i, v) in self.vips.iter().enumerate() {
            parse_network_address(v).map_err(|r| (format!("vips[{i}]"), r))?;
        }
        if let Some(w) = &self.waypoint {
            parse_network_address(&w.destination)
                .map_err(|r| ("waypoint.destination".to_owned(), r))?;
        }
        for port in self.app_protocols.keys() {
            if !self.ports.contains_key(port) {
                let known: Vec<String> = self.ports.keys().map(u16::to_string).collect();
                return Err((
                    format!("appProtocols.{port}"),
                    format!(
                        "port {port} is not a service port of `{}` (its `ports`: {})",
                        self.hostname,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl LocalWorkload {
    pub(super) fn validate(&self) -> Result<(), FieldError> {
        if self.namespace.is_empty() {
            return Err(("namespace".into(), "must not be empty".into()));
        }
        if self.workload_ips.is_empty() {
            return Err(("workloadIps".into(), "needs at least one address".into()));
        }
        Ok(())
    }
}
