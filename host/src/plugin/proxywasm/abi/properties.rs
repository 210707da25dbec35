//! Properties: reading request attributes and storing values a plugin sets.

use wasmtime::Linker;

use super::common::*;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::{memory, properties};

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pptr: i32, plen: i32, ret_ptr: i32, ret_len: i32| {
            let path = read_or_status!(&mut c, pptr, plen);
            match properties::get(c.data(), &path) {
                Some(v) => given(memory::give(&mut c, &v, ret_ptr, ret_len)),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pptr: i32, plen: i32, vptr: i32, vlen: i32| {
            let path = read_or_status!(&mut c, pptr, plen);
            let value = read_or_status!(&mut c, vptr, vlen);
            properties::set(c.data_mut(), &path, value);
            Ok(OK)
        },
    )?;

    Ok(())
}
