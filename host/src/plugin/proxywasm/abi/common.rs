//! What every ABI area shares: status codes, the caller type and the
//! helpers that turn memory errors into statuses.

use wasmtime::Caller;

use super::super::instance::HostState;
use super::super::memory::{self, GiveError};

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
