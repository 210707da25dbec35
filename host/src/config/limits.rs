//! Timeouts and connection limits of the data path: what a slow, silent or greedy client (or
//! upstream) can hold open. They apply to both downstream listeners (plaintext, and the HTTP
//! served inside HBONE tunnels) and to the waypoint's requests to upstreams.

use std::time::Duration;

use serde::{Deserialize, Serialize};

type FieldError = (String, String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// A request head (request line and headers) must arrive within this long; a connection's
    /// first request (HTTP/1.1 head, or the HTTP/2 preface and first HEADERS) too. nginx's
    /// `client_header_timeout` is 60 s.
    #[serde(default = "default_request_header_timeout_ms")]
    pub request_header_timeout_ms: u64,
    /// A connection with no request in flight and no bytes either way for this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A connection with requests in flight but no bytes either way for this long is closed
    /// (Envoy's `stream_idle_timeout` default is 5 min).
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Open downstream connections per listener; more are accepted and closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Budget of a TCP connect to an upstream endpoint.
    #[serde(default = "default_upstream_connect_timeout_ms")]
    pub upstream_connect_timeout_ms: u64,
    /// From sending a request upstream to its response head; past it the client gets 504.
    #[serde(default = "default_upstream_response_timeout_ms")]
    pub upstream_response_timeout_ms: u64,
}

fn default_request_header_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    300_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_upstream_connect_timeout_ms() -> u64 {
    5_000
}
fn default_upstream_response_timeout_ms() -> u64 {
    60_000
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            request_header_timeout_ms: default_request_header_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            stream_idle_timeout_ms: default_stream_idle_timeout_ms(),
            max_connections: default_max_connections(),
            upstream_connect_timeout_ms: default_upstream_connect_timeout_ms(),
            upstream_response_timeout_ms: default_upstream_response_timeout_ms(),
        }
    }
}

impl LimitsConfig {
    pub fn request_header_timeout(&self) -> Duration {
        Duration::from_millis(self.request_header_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_idle_timeout_ms)
    }
    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_connect_timeout_ms)
    }
    pub fn upstream_response_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_response_timeout_ms)
    }

    pub(super) fn validate(&self) -> Result<(), FieldError> {
        // Upper bounds keep a typo (an extra zero or two) from disabling a limit in effect.
        let ranges: [(&str, u64, u64, u64); 5] = [
            (
                "requestHeaderTimeoutMs",
                self.request_header_timeout_ms,
                10,
                600_000,
            ),
            ("idleTimeoutMs", self.idle_timeout_ms, 10, 3_600_000),
            (
                "streamIdleTimeoutMs",
                self.stream_idle_timeout_ms,
                10,
                86_400_000,
            ),
            (
                "upstreamConnectTimeoutMs",
                self.upstream_connect_timeout_ms,
                1,
                300_000,
            ),
            (
                "upstreamResponseTimeoutMs",
                self.upstream_response_timeout_ms,
                1,
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
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err((
                "maxConnections".into(),
                format!("{} is out of range (1..=1000000)", self.max_connections),
            ));
        }
        Ok(())
    }
}
