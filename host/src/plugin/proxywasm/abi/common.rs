//! What every ABI area shares: status codes, the caller type and the
//! helpers that turn memory errors into statuses.

use wasmtime::Caller;

use crate::plugin::PluginShared;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::maps::{self, MapError};
use crate::plugin::proxywasm::memory::{self, GiveError};
use crate::plugin::sandbox::Limit;

pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
}
pub use status::*;

pub type C<'a> = Caller<'a, HostState>;

/// Turns a failure to hand data to the guest into a status or a trap.
pub fn given(r: Result<(), GiveError>) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(OK),
        Err(GiveError::OutOfBounds) => Ok(INVALID_MEMORY_ACCESS),
        Err(GiveError::Allocator(e)) => Err(e),
    }
}

pub fn status_of(r: Result<(), memory::OutOfBounds>) -> i32 {
    match r {
        Ok(()) => OK,
        Err(_) => INVALID_MEMORY_ACCESS,
    }
}

/// Decodes a map a guest passes in whole (local response headers, callout
/// headers) within the header limits; `None` (for BAD_ARGUMENT) when it is
/// malformed or too large, the latter counted.
pub fn bounded_map(plugin: &PluginShared, raw: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let limits = &plugin.limits.host;
    match maps::decode_bounded(raw, limits.max_headers, limits.max_header_bytes) {
        Ok(pairs) => Some(pairs),
        Err(MapError::Malformed) => None,
        Err(MapError::TooManyPairs) => {
            plugin.limit_exceeded(Limit::Headers);
            None
        }
        Err(MapError::TooManyBytes) => {
            plugin.limit_exceeded(Limit::HeaderBytes);
            None
        }
    }
}

/// Reads guest bytes, or returns `INVALID_MEMORY_ACCESS` from the host
/// function.
macro_rules! read_or_status {
    ($caller:expr, $ptr:expr, $len:expr) => {
        match $crate::plugin::proxywasm::memory::read($caller, $ptr, $len) {
            Ok(b) => b,
            Err(_) => return Ok($crate::plugin::proxywasm::abi::common::INVALID_MEMORY_ACCESS),
        }
    };
}
pub(crate) use read_or_status;

pub(crate) use crate::plugin::proxywasm::guard::host_fn;
