//! What modules built with the AssemblyScript SDK (`@solo-io/proxy-runtime`)
//! import beyond the `env` functions: `wasi_unstable.proc_exit`, which its
//! `abort` calls. Defined only for a module that would not link otherwise,
//! so a fuller WASI `wasi_unstable` module, once the host has one, wins.

use wasmtime::{Linker, Module};

use super::common::host_fn;
use crate::plugin::proxywasm::instance::HostState;

const WASI_UNSTABLE: &str = "wasi_unstable";

/// Adds the functions above that `module` imports; the linker must allow
/// shadowing (it is a per-module copy).
pub fn define_missing(linker: &mut Linker<HostState>, module: &Module) -> wasmtime::Result<()> {
    let wanted = module
        .imports()
        .any(|i| i.module() == WASI_UNSTABLE && i.name() == "proc_exit");
    if wanted {
        host_fn!(linker, WASI_UNSTABLE, "proc_exit", |_c, code: i32| {
            Err::<(), _>(wasmtime::Error::msg(format!(
                "the plugin called proc_exit({code})"
            )))
        },)?;
    }
    Ok(())
}
