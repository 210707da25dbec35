//! What both plugin ABIs share about running guest code safely: the memory
//! limiter, the bounds on what host functions do for a guest, and the
//! reading of a failed call.

use std::sync::OnceLock;
use std::time::Instant;

use wasmtime::{ResourceLimiter, Trap};

use super::{PluginFailure, PluginShared};

/// Caps linear memory and remembers whether a growth was refused, so a
/// resulting trap can be reported as what it is.
pub struct MemoryLimiter {
    pub max_bytes: usize,
    pub refused: bool,
}

impl MemoryLimiter {
    pub fn new(max_bytes: usize) -> MemoryLimiter {
        MemoryLimiter {
            max_bytes,
            refused: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Bounds on host memory a guest can make the host allocate, checked
/// before the host allocates. Linear memory itself is bounded by
/// [`MemoryLimiter`]; these bound the host's side.
#[derive(Debug, Clone)]
pub struct HostLimits {
    /// Entries a header or trailer map may reach through a plugin's edits.
    pub max_headers: usize,
    /// Bytes (names plus values) a header or trailer map may reach.
    pub max_header_bytes: usize,
    /// Bytes a request or response body may reach through `set_buffer`.
    pub max_body_bytes: usize,
}

impl HostLimits {
    pub fn from_config(sandbox: &crate::config::SandboxConfig) -> HostLimits {
        HostLimits {
            max_headers: sandbox.max_headers,
            max_header_bytes: sandbox.max_header_bytes,
            max_body_bytes: sandbox.max_buffered_body_bytes,
        }
    }
}

/// Bytes of one value a plugin stores with `set_property`.
pub const MAX_PROPERTY_BYTES: usize = 64 * 1024;
/// Properties one context (a request, or the root) may store.
pub const MAX_PROPERTIES: usize = 256;
/// Bytes one `random_get` may ask for.
pub const MAX_RANDOM_BYTES: usize = 1 << 20;
/// Callouts one guest call may start.
pub const MAX_CALLOUTS_PER_CALL: usize = 64;

/// Which bound a guest ran into: the `limit` label of
/// `wayplug_plugin_limit_violations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Headers,
    HeaderBytes,
    BodyBytes,
    SharedDataKey,
    SharedDataValue,
    SharedDataTotal,
    QueueItems,
    QueueBytes,
    Queues,
    Metrics,
    PropertyBytes,
    Properties,
    RandomBytes,
    Callouts,
    GrpcCalls,
    GrpcStreams,
    GrpcMessageBytes,
    GrpcSendQueue,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Headers => "headers",
            Limit::HeaderBytes => "header_bytes",
            Limit::BodyBytes => "body_bytes",
            Limit::SharedDataKey => "shared_data_key",
            Limit::SharedDataValue => "shared_data_value",
            Limit::SharedDataTotal => "shared_data_total",
            Limit::QueueItems => "queue_items",
            Limit::QueueBytes => "queue_bytes",
            Limit::Queues => "queues",
            Limit::Metrics => "metrics",
            Limit::PropertyBytes => "property_bytes",
            Limit::Properties => "properties",
            Limit::RandomBytes => "random_bytes",
            Limit::Callouts => "callouts",
            Limit::GrpcCalls => "grpc_calls",
            Limit::GrpcStreams => "grpc_streams",
            Limit::GrpcMessageBytes => "grpc_message_bytes",
            Limit::GrpcSendQueue => "grpc_send_queue",
        }
    }
}

/// Turns a failed guest call into the failure operators read.
pub fn classify(e: &wasmtime::Error, memory_refused: bool, shared: &PluginShared) -> PluginFailure {
    if memory_refused {
        return PluginFailure::OutOfMemory(shared.limits.memory_limit_bytes >> 20);
    }
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return PluginFailure::Timeout(shared.limits.call_timeout);
    }
    let mut msg = format!("{e}");
    if let Some(Trap::UnreachableCodeReached) = e.downcast_ref::<Trap>() {
        // Guests abort through `unreachable`; what they logged just before
        // says why.
        if let Some(last) = shared.last_critical_log() {
            msg = format!("{msg} (plugin logged: {last})");
        }
    }
    PluginFailure::Trap(msg)
}

/// Nanoseconds on the monotonic clock plugins see, from a fixed point in
/// this process's life (shared by both ABIs so their readings agree).
pub fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
