//! The L7 data path: a plaintext HTTP/1.1 + h2c listener, the request
//! pipeline that runs each namespace's plugins, and the upstream client.
//!
//! Every error the data path can answer with is an [`Error`], and its HTTP
//! status is decided in one place, [`Error::status`].

pub mod access_log;
pub mod authority;
pub mod body;
pub mod offline;
pub mod pipeline;
pub mod server;
pub mod upstream;

use http::StatusCode;

pub use pipeline::{ConnInfo, Pipeline};

use crate::plugin::PluginFailure;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request names no host (no :authority and no Host header)")]
    MissingAuthority,
    #[error(transparent)]
    Authority(#[from] authority::Error),
    #[error(transparent)]
    Discovery(#[from] crate::discovery::Error),
    #[error("plugin `{plugin}` in namespace `{namespace}` {failure} (failStrategy FAIL_CLOSE)")]
    PluginFailed {
        plugin: String,
        namespace: String,
        failure: PluginFailure,
    },
    /// Envoy answers a route to a backend it does not know with 500.
    #[error(
        "plugin `{plugin}` in namespace `{namespace}` routed to backend `{backend}`, which the waypoint does not know: {reason}"
    )]
    UnknownBackend {
        plugin: String,
        namespace: String,
        backend: String,
        reason: String,
    },
    #[error("cannot connect to upstream {endpoint}: {reason}")]
    UpstreamConnect { endpoint: String, reason: String },
    #[error("upstream {endpoint} failed: {reason}")]
    Upstream { endpoint: String, reason: String },
    #[error("upstream {endpoint} sent {reason}")]
    UpstreamTimeout { endpoint: String, reason: String },
    #[error("the {which} body is larger than the {limit} bytes a plugin may buffer")]
    BodyTooLarge { which: &'static str, limit: usize },
    #[error("the downstream request body failed: {0}")]
    Downstream(String),
}

impl Error {
    /// Envoy's short response flag (`UF`, `NR`, ...) for Istio's
    /// `response_flags` label: the code of [`response_flags`](Self::response_flags).
    pub fn istio_response_flags(&self) -> &'static str {
        crate::exchange::response_flags::code(self.response_flags())
    }

    pub fn status(&self) -> StatusCode {
        use crate::discovery::Error as D;
        match self {
            Error::MissingAuthority | Error::Authority(_) => StatusCode::BAD_REQUEST,
            Error::Discovery(D::UnknownHost(_) | D::UnknownPort { .. }) => StatusCode::NOT_FOUND,
            Error::Discovery(D::NoEndpoints { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            Error::PluginFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::UnknownBackend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Error::UpstreamConnect { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            // Envoy's answers: the client sent too much (413), or the
            // upstream's answer could not be held for a plugin (500).
            Error::BodyTooLarge {
                which: "request", ..
            } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTooLarge { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Downstream(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The Envoy response flag a plugin reads in `response.flags` (0 for
    /// none); its short code comes from the same table. Every variant is
    /// named, so a new error needs a decision here.
    pub fn response_flags(&self) -> u64 {
        use crate::discovery::Error as D;
        use crate::exchange::response_flags as F;
        match self {
            // Envoy rejects a request it cannot parse (a missing or
            // conflicting Host, a broken body) as a downstream protocol error.
            Error::MissingAuthority | Error::Authority(_) | Error::Downstream(_) => {
                F::DOWNSTREAM_PROTOCOL_ERROR
            }
            Error::Discovery(D::UnknownHost(_) | D::UnknownPort { .. }) => F::NO_ROUTE_FOUND,
            Error::Discovery(D::NoEndpoints { .. }) => F::NO_HEALTHY_UPSTREAM,
            Error::UnknownBackend { .. } => F::NO_CLUSTER_FOUND,
            Error::UpstreamConnect { .. } => F::UPSTREAM_CONNECTION_FAILURE,
            Error::UpstreamTimeout { .. } => F::UPSTREAM_REQUEST_TIMEOUT,
            // Its code details say `protocol_error`: the same flag.
            Error::Upstream { .. } => F::UPSTREAM_PROTOCOL_ERROR,
            // Envoy raises no flag for a Wasm plugin's failure or a body
            // over the buffer limit: the status and details tell them apart.
            Error::PluginFailed { .. } | Error::BodyTooLarge { .. } => 0,
        }
    }

    /// Envoy's response code details for this error (`response.code_details`).
    pub fn code_details(&self) -> &'static str {
        use crate::discovery::Error as D;
        match self {
            Error::MissingAuthority | Error::Authority(_) => "missing_host_header",
            Error::Discovery(D::UnknownHost(_) | D::UnknownPort { .. }) => "route_not_found",
            Error::Discovery(D::NoEndpoints { .. }) => "no_healthy_upstream",
            Error::PluginFailed { .. } => "wasm_fail_stream",
            Error::UnknownBackend { .. } => "cluster_not_found",
            Error::UpstreamConnect { .. } => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            Error::Upstream { .. } => "upstream_reset_before_response_started{protocol_error}",
            Error::UpstreamTimeout { .. } => "response_timeout",
            Error::BodyTooLarge {
                which: "request", ..
            } => "request_payload_too_large",
            Error::BodyTooLarge { .. } => "response_payload_too_large",
            Error::Downstream(_) => "downstream_remote_disconnect",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Error as D;
    use crate::exchange::response_flags::{self as F, CODES};

    /// Every variant (the `match` in `response_flags` names each one, so a
    /// new variant fails to compile there first): its flag bit, and the
    /// short code Istio's label shows, read from the one table.
    #[test]
    fn flag_bits_and_short_codes_come_from_one_table() {
        let s = String::new;
        let cases: Vec<(Error, u64, &str)> = vec![
            (Error::MissingAuthority, F::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
            (
                Error::Authority(authority::Error::MissingHost),
                F::DOWNSTREAM_PROTOCOL_ERROR,
                "DPE",
            ),
            (Error::Downstream(s()), F::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
            (
                Error::Discovery(D::UnknownHost(s())),
                F::NO_ROUTE_FOUND,
                "NR",
            ),
            (
                Error::Discovery(D::UnknownPort {
                    service: s(),
                    port: 1,
                }),
                F::NO_ROUTE_FOUND,
                "NR",
            ),
            (
                Error::Discovery(D::NoEndpoints {
                    service: s(),
                    port: 1,
                }),
                F::NO_HEALTHY_UPSTREAM,
                "UH",
            ),
            (
                Error::UnknownBackend {
                    plugin: s(),
                    namespace: s(),
                    backend: s(),
                    reason: s(),
                },
                F::NO_CLUSTER_FOUND,
                "NC",
            ),
            (
                Error::UpstreamConnect {
                    endpoint: s(),
                    reason: s(),
                },
                F::UPSTREAM_CONNECTION_FAILURE,
                "UF",
            ),
            (
                Error::Upstream {
                    endpoint: s(),
                    reason: s(),
                },
                F::UPSTREAM_PROTOCOL_ERROR,
                "UPE",
            ),
            (
                Error::UpstreamTimeout {
                    endpoint: s(),
                    reason: s(),
                },
                F::UPSTREAM_REQUEST_TIMEOUT,
                "UT",
            ),
            (
                Error::PluginFailed {
                    plugin: s(),
                    namespace: s(),
                    failure: PluginFailure::InstanceLost,
                },
                0,
                "-",
            ),
            (
                Error::BodyTooLarge {
                    which: "request",
                    limit: 1,
                },
                0,
                "-",
            ),
        ];
        for (err, bit, code) in &cases {
            assert_eq!(err.response_flags(), *bit, "{err:?}");
            assert_eq!(err.istio_response_flags(), *code, "{err:?}");
            assert_eq!(F::label(*bit, true), *code, "{err:?}");
        }
        // Each bit in the table once, each a single Envoy flag.
        for (i, (bit, code)) in CODES.iter().enumerate() {
            assert_eq!(bit.count_ones(), 1, "{code}");
            assert!(CODES[i + 1..].iter().all(|(b, c)| b != bit && c != code));
        }
    }

    #[test]
    fn the_label_joins_raised_flags_and_names_an_unanswered_stream() {
        assert_eq!(F::label(0, true), "-");
        assert_eq!(F::label(0, false), "DC");
        assert_eq!(
            F::label(
                F::UPSTREAM_CONNECTION_FAILURE | F::NO_HEALTHY_UPSTREAM,
                true
            ),
            "UH,UF"
        );
        assert_eq!(F::label(1 << 40, true), "-", "a bit we never raise");
    }
}
