//! How a plugin failed while serving a request: recorded on the exchange by
//! host functions and read by the pipeline, so it lives beside the exchange
//! rather than in either of them.

use std::time::Duration;

/// How a plugin failed while serving a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    #[error("exceeded its time limit of {0:?} for one call")]
    Timeout(Duration),
    #[error("exceeded its memory limit of {0} MiB")]
    OutOfMemory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("kept the request paused for longer than {0:?}")]
    PausedTooLong(Duration),
    #[error("its instance had already failed")]
    InstanceLost,
    #[error("could not start a fresh instance: {0}")]
    Start(String),
    #[error("returned a decision the waypoint cannot apply: {0}")]
    BadDecision(String),
    #[error(
        "already serves {0} requests, each on an instance of its own (sandbox.requestsPerComponent)"
    )]
    Busy(usize),
}

impl PluginFailure {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PluginFailure::Timeout(_) => "timeout",
            PluginFailure::OutOfMemory(_) => "out_of_memory",
            PluginFailure::Trap(_) => "trap",
            PluginFailure::PausedTooLong(_) => "paused_too_long",
            PluginFailure::InstanceLost => "instance_lost",
            PluginFailure::Start(_) => "start",
            PluginFailure::BadDecision(_) => "bad_decision",
            PluginFailure::Busy(_) => "busy",
        }
    }
}
