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
    /// Envoy's short response flags (`UF`, `NR`, ...) for Istio's `response_flags` label.
    pub fn istio_response_flags(&self) -> &'static str {
        use crate::discovery::Error as D;
        match self {
            Error::MissingAuthority | Error::Authority(_) | Error::Downstream(_) => "DPE",
            Error::Discovery(D::NoEndpoints { .. }) => "UH",
            Error::Discovery(_) | Error::UnknownBackend { .. } => "NR",
            Error::UpstreamConnect { .. } => "UF",
            Error::Upstream { .. } => "UC",
            Error::UpstreamTimeout { .. } => "UT",
            _ => "-",
        }
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

    /// The Envoy response flag a plugin reads in `response.flags`.
    pub fn response_flags(&self) -> u64 {
        use crate::discovery::Error as D;
        use crate::exchange::response_flags as F;
        match self {
            Error::Discovery(D::UnknownHost(_) | D::UnknownPort { .. }) => F::NO_ROUTE_FOUND,
            Error::Discovery(D::NoEndpoints { .. }) => F::NO_HEALTHY_UPSTREAM,
            Error::UnknownBackend { .. } => F::NO_CLUSTER_FOUND,
            Error::UpstreamConnect { .. } => F::UPSTREAM_CONNECTION_FAILURE,
            Error::UpstreamTimeout { .. } => F::UPSTREAM_REQUEST_TIMEOUT,
            Error::Upstream { .. } => F::UPSTREAM_PROTOCOL_ERROR,
            _ => 0,
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
