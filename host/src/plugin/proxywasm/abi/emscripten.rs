//! The two `env` imports Envoy provides for modules built with Emscripten
//! (the C++ SDK's toolchain).

use wasmtime::Linker;

use super::common::*;
use crate::plugin::proxywasm::instance::HostState;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Emscripten tells the embedder its memory grew; wasmtime needs no
    // telling.
    host_fn!(
        linker,
        "env",
        "emscripten_notify_memory_growth",
        |_c, _memory_index: i32| Ok(())
    )?;
    // There is one thread, so two thread ids are equal when they are.
    host_fn!(linker, "env", "pthread_equal", |_c, a: i32, b: i32| Ok(
        (a == b) as i32
    ))?;
    Ok(())
}
