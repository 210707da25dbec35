//! Shared data (with compare-and-swap) and shared queues of a namespace.

use wasmtime::Linker;

use super::common::*;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::memory;
use crate::plugin::shared::{CasError, QueueError};

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            let key = String::from_utf8_lossy(&key);
            let Some((value, cas)) = c.data().plugin.shared.get(&key) else {
                return Ok(NOT_FOUND);
            };
            if memory::write_u32(&mut c, ret_cas, cas).is_err() {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            given(memory::give(&mut c, &value, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            let value = read_or_status!(&mut c, vptr, vlen);
            let key = String::from_utf8_lossy(&key);
            match c.data().plugin.shared.set(&key, value, cas as u32) {
                Ok(()) => Ok(OK),
                Err(CasError::Mismatch) => Ok(CAS_MISMATCH),
            }
        },
    )?;

    // Shared queues.
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, nptr: i32, nlen: i32, ret_id: i32| {
            let name = read_or_status!(&mut c, nptr, nlen);
            let data = c.data();
            let id = data.plugin.shared.register_queue(
                &data.plugin.vm_id,
                &String::from_utf8_lossy(&name),
                data.self_ref.clone(),
                data.root_id,
            );
            Ok(status_of(memory::write_u32(&mut c, ret_id, id)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vptr: i32, vlen: i32, nptr: i32, nlen: i32, ret_id: i32| {
            let vm_id = read_or_status!(&mut c, vptr, vlen);
            let name = read_or_status!(&mut c, nptr, nlen);
            let id = c.data().plugin.shared.resolve_queue(
                &String::from_utf8_lossy(&vm_id),
                &String::from_utf8_lossy(&name),
            );
            match id {
                Some(id) => Ok(status_of(memory::write_u32(&mut c, ret_id, id))),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ret_ptr: i32, ret_len: i32| match c
            .data()
            .plugin
            .shared
            .dequeue(id as u32)
        {
            Ok(Some(item)) => given(memory::give(&mut c, &item, ret_ptr, ret_len)),
            Ok(None) => Ok(EMPTY),
            Err(_) => Ok(NOT_FOUND),
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, ptr: i32, len: i32| {
            let item = read_or_status!(&mut c, ptr, len);
            match c.data().plugin.shared.enqueue(id as u32, item) {
                Ok((owner, root)) => {
                    if let Some(owner) = owner.upgrade() {
                        owner.notify_queue(root, id as u32);
                    }
                    Ok(OK)
                }
                Err(QueueError::NotFound) => Ok(NOT_FOUND),
                // The SDKs know no "full" status; refusing the item as a
                // bad argument is the closest they handle.
                Err(QueueError::Full) => Ok(NOT_FOUND),
            }
        },
    )?;

    Ok(())
}
