//! What both plugin ABIs share about running guest code safely: the memory
//! limiter and the reading of a failed call.

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
