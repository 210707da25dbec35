//! Properties: reading request attributes and storing values a plugin sets.

use wasmtime::Linker;

use super::common::*;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::{memory, properties};
use crate::plugin::sandbox::{Limit, MAX_PROPERTY_BYTES};

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        "env",
        "proxy_get_property",
        |c, pptr: i32, plen: i32, ret_ptr: i32, ret_len: i32| {
            let path = read_or_status!(&mut c, pptr, plen);
            match properties::get(c.data(), &path) {
                Some(v) => given(memory::give(&mut c, &v, ret_ptr, ret_len)),
                None => Ok(NOT_FOUND),
            }
        }
    )?;
    // The Rust SDK accepts only OK here and panics on anything else:
    // BAD_ARGUMENT is at least a status it knows.
    host_fn!(
        linker,
        "env",
        "proxy_set_property",
        |c, pptr: i32, plen: i32, vptr: i32, vlen: i32| {
            let plugin = c.data().plugin.clone();
            if plen as u32 as usize > MAX_PROPERTY_BYTES
                || vlen as u32 as usize > MAX_PROPERTY_BYTES
            {
                plugin.limit_exceeded(Limit::PropertyBytes);
                return Ok(BAD_ARGUMENT);
            }
            let path = read_or_status!(&mut c, pptr, plen);
            let value = read_or_status!(&mut c, vptr, vlen);
            match properties::set(c.data_mut(), &path, value) {
                Ok(()) => Ok(OK),
                Err(limit) => {
                    plugin.limit_exceeded(limit);
                    Ok(BAD_ARGUMENT)
                }
            }
        }
    )?;

    Ok(())
}
