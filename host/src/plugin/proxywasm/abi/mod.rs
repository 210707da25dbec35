//! The host side of the Proxy-Wasm ABI 0.2.1: every function Envoy provides
//! in module `env` (the 0.1.0 names it still accepts and Emscripten's two
//! included), one file per ABI area. The README's ABI table lists them with
//! their statuses; `link_tests` checks that a module importing all of them
//! links.
//!
//! Conventions: pointers and lengths come from the guest and are checked on
//! every use (a bad one is `INVALID_MEMORY_ACCESS`). A host function returns
//! a status code; it returns an error (trapping the guest) only when the
//! guest's own allocator misbehaves, since the instance can no longer be
//! trusted then. Status codes are chosen among those the SDKs handle for
//! each call: the Rust SDK panics on any other.
//!
//! Imports are one-way: every area uses `common`, no area uses another, and
//! this file only wires them together.

mod buffers;
mod calls;
mod common;
mod emscripten;
mod grpc;
mod headers;
mod logging;
mod metrics;
mod properties;
mod shared;
mod stream;

use wasmtime::Linker;

use super::instance::HostState;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    logging::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    shared::add_to_linker(linker)?;
    stream::add_to_linker(linker)?;
    calls::add_to_linker(linker)?;
    grpc::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    emscripten::add_to_linker(linker)?;
    Ok(())
}
