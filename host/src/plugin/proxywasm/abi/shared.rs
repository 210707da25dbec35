//! Shared data (with compare-and-swap) and shared queues of a namespace.
//!
//! Sizes are checked before guest bytes are copied. The Rust SDK accepts
//! only OK and CAS_MISMATCH from `set_shared_data` and only OK from
//! `register_shared_queue` (it panics on anything else), so a refusal there
//! is BAD_ARGUMENT: a status it knows, for a request no well-behaved plugin
//! makes. A full queue answers NOT_FOUND, which the SDK returns as an error.

use wasmtime::Linker;

use super::common::*;
use crate::plugin::PluginShared;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::memory;
use crate::plugin::sandbox::Limit;
use crate::plugin::shared::{MAX_KEY_BYTES, MAX_VALUE_BYTES, QueueError, SetError};

/// Refuses a key or name longer than [`MAX_KEY_BYTES`] (counted).
fn key_fits(plugin: &PluginShared, len: i32) -> bool {
    let fits = len as u32 as usize <= MAX_KEY_BYTES;
    if !fits {
        plugin.limit_exceeded(Limit::SharedDataKey);
    }
    fits
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        "env",
        "proxy_get_shared_data",
        |c, kptr: i32, klen: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32| {
            // No longer key can have been stored.
            if klen as u32 as usize > MAX_KEY_BYTES {
                return Ok(NOT_FOUND);
            }
            let key = read_or_status!(&mut c, kptr, klen);
            let key = String::from_utf8_lossy(&key);
            let Some((value, cas)) = c.data().plugin.shared.get(&key) else {
                return Ok(NOT_FOUND);
            };
            if memory::write_u32(&mut c, ret_cas, cas).is_err() {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            given(memory::give(&mut c, &value, ret_ptr, ret_len))
        }
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_set_shared_data",
        |c, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| {
            let plugin = c.data().plugin.clone();
            if !key_fits(&plugin, klen) {
                return Ok(BAD_ARGUMENT);
            }
            if vlen as u32 as usize > MAX_VALUE_BYTES {
                plugin.limit_exceeded(Limit::SharedDataValue);
                return Ok(BAD_ARGUMENT);
            }
            let key = read_or_status!(&mut c, kptr, klen);
            let value = read_or_status!(&mut c, vptr, vlen);
            let key = String::from_utf8_lossy(&key);
            match plugin.shared.set(&key, value, cas as u32) {
                Ok(()) => Ok(OK),
                Err(SetError::CasMismatch) => Ok(CAS_MISMATCH),
                Err(SetError::TooLarge) => {
                    plugin.limit_exceeded(Limit::SharedDataValue);
                    Ok(BAD_ARGUMENT)
                }
                Err(SetError::Full) => {
                    plugin.limit_exceeded(Limit::SharedDataTotal);
                    Ok(BAD_ARGUMENT)
                }
            }
        }
    )?;

    // Shared queues.
    host_fn!(
        linker,
        "env",
        "proxy_register_shared_queue",
        |c, nptr: i32, nlen: i32, ret_id: i32| {
            if !key_fits(&c.data().plugin, nlen) {
                return Ok(BAD_ARGUMENT);
            }
            let name = read_or_status!(&mut c, nptr, nlen);
            let data = c.data();
            let registered = data.plugin.shared.register_queue(
                &data.plugin.vm_id,
                &String::from_utf8_lossy(&name),
                data.self_ref.clone(),
                data.root_id,
            );
            match registered {
                Ok(id) => Ok(status_of(memory::write_u32(&mut c, ret_id, id))),
                Err(_) => {
                    data.plugin.limit_exceeded(Limit::Queues);
                    Ok(BAD_ARGUMENT)
                }
            }
        }
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_resolve_shared_queue",
        |c, vptr: i32, vlen: i32, nptr: i32, nlen: i32, ret_id: i32| {
            // No queue with a longer name or VM id can exist.
            if vlen as u32 as usize > MAX_KEY_BYTES || nlen as u32 as usize > MAX_KEY_BYTES {
                return Ok(NOT_FOUND);
            }
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
        }
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_dequeue_shared_queue",
        |c, id: i32, ret_ptr: i32, ret_len: i32| {
            match c.data().plugin.shared.dequeue(id as u32) {
                Ok(Some(item)) => given(memory::give(&mut c, &item, ret_ptr, ret_len)),
                Ok(None) => Ok(EMPTY),
                Err(_) => Ok(NOT_FOUND),
            }
        }
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_enqueue_shared_queue",
        |c, id: i32, ptr: i32, len: i32| {
            let plugin = c.data().plugin.clone();
            if len as u32 as usize > MAX_VALUE_BYTES {
                plugin.limit_exceeded(Limit::QueueBytes);
                return Ok(NOT_FOUND);
            }
            let item = read_or_status!(&mut c, ptr, len);
            match plugin.shared.enqueue(id as u32, item) {
                Ok((owner, root)) => {
                    if let Some(owner) = owner.upgrade() {
                        owner.notify_queue(root, id as u32);
                    }
                    Ok(OK)
                }
                Err(QueueError::NotFound) => Ok(NOT_FOUND),
                // The SDKs know no "full" status; NOT_FOUND is one they return
                // to the plugin as an error instead of panicking.
                Err(QueueError::TooManyItems) => {
                    plugin.limit_exceeded(Limit::QueueItems);
                    Ok(NOT_FOUND)
                }
                Err(QueueError::TooManyBytes) => {
                    plugin.limit_exceeded(Limit::QueueBytes);
                    Ok(NOT_FOUND)
                }
            }
        }
    )?;

    Ok(())
}
