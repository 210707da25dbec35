//! Bounds-checked access to a guest's linear memory.
//!
//! Every pointer and length a guest passes is untrusted: each access is
//! checked and a bad one becomes `INVALID_MEMORY_ACCESS` for the guest, never
//! a host panic.

use wasmtime::{AsContextMut, Caller, Extern, Memory, TypedFunc};

use super::instance::HostState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds;

pub fn memory(caller: &mut Caller<'_, HostState>) -> Result<Memory, OutOfBounds> {
    if let Some(m) = caller.data().memory {
        return Ok(m);
    }
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => {
            caller.data_mut().memory = Some(m);
            Ok(m)
        }
        _ => Err(OutOfBounds),
    }
}

pub fn read(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<Vec<u8>, OutOfBounds> {
    let mem = memory(caller)?;
    let (start, end) = range(ptr, len)?;
    mem.data(&*caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(OutOfBounds)
}

pub fn write(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    bytes: &[u8],
) -> Result<(), OutOfBounds> {
    let mem = memory(caller)?;
    let (start, end) = range(ptr, bytes.len() as i32)?;
    mem.data_mut(&mut *caller)
        .get_mut(start..end)
        .ok_or(OutOfBounds)?
        .copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> Result<(), OutOfBounds> {
    write(caller, ptr, &v.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, HostState>, ptr: i32, v: u64) -> Result<(), OutOfBounds> {
    write(caller, ptr, &v.to_le_bytes())
}

fn range(ptr: i32, len: i32) -> Result<(usize, usize), OutOfBounds> {
    let start = ptr as u32 as usize;
    let len = len as u32 as usize;
    Ok((start, start.checked_add(len).ok_or(OutOfBounds)?))
}

/// Why bytes could not be handed to the guest.
#[derive(Debug)]
pub enum GiveError {
    OutOfBounds,
    /// The guest's allocator trapped or returned garbage; the instance is
    /// not trustworthy any more.
    Allocator(wasmtime::Error),
}

/// Copies `bytes` into memory the guest allocates and writes the pointer and
/// length through the two return pointers. Empty data is sent as a null
/// pointer and zero length, which every SDK reads as "nothing".
pub fn give(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), GiveError> {
    // Check the return slots before allocating so a bad pointer leaks nothing.
    let mem = memory(caller).map_err(|_| GiveError::OutOfBounds)?;
    let size = mem.data_size(&*caller);
    for p in [ret_ptr, ret_len] {
        let (_, end) = range(p, 4).map_err(|_| GiveError::OutOfBounds)?;
        if end > size {
            return Err(GiveError::OutOfBounds);
        }
    }
    let ptr = if bytes.is_empty() {
        0
    } else {
        let alloc = allocator(caller).map_err(GiveError::Allocator)?;
        let ptr = alloc
            .call(caller.as_context_mut(), bytes.len() as i32)
            .map_err(GiveError::Allocator)?;
        if ptr == 0 {
            return Err(GiveError::Allocator(wasmtime::Error::msg(
                "the plugin's allocator returned null",
            )));
        }
        write(caller, ptr, bytes).map_err(|_| {
            GiveError::Allocator(wasmtime::Error::msg(
                "the plugin's allocator returned memory outside its linear memory",
            ))
        })?;
        ptr
    };
    write_u32(caller, ret_ptr, ptr as u32).map_err(|_| GiveError::OutOfBounds)?;
    write_u32(caller, ret_len, bytes.len() as u32).map_err(|_| GiveError::OutOfBounds)?;
    Ok(())
}

fn allocator(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<TypedFunc<i32, i32>> {
    if let Some(f) = &caller.data().allocator {
        return Ok(f.clone());
    }
    // Proxy-Wasm names `proxy_on_memory_allocate`; the Rust SDK on
    // wasm32-unknown-unknown exports only `malloc`.
    for name in ["proxy_on_memory_allocate", "malloc"] {
        if let Some(Extern::Func(f)) = caller.get_export(name) {
            let f = f.typed::<i32, i32>(&*caller)?;
            caller.data_mut().allocator = Some(f.clone());
            return Ok(f);
        }
    }
    Err(wasmtime::Error::msg(
        "the plugin exports no allocator (proxy_on_memory_allocate or malloc)",
    ))
}
