//! The part of WASI preview 1 that Proxy-Wasm SDKs import.
//!
//! Plugins get a sandbox, not a machine: no files, no sockets, no host
//! environment. They get their configured environment, clocks, randomness,
//! and stdout/stderr, which go to the log. Any other WASI function a module
//! imports answers ENOSYS.
//!
//! wasmtime-wasi's synchronous preview-1 bindings block on a Tokio runtime of
//! their own, which panics when called from a Tokio worker as the data path
//! does; these few calls need no I/O, so they are done here directly.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{ExternType, Linker, Module, Val, ValType};

use super::guard::host_fn;
use super::instance::HostState;
use super::memory;
use crate::plugin::sandbox::{Limit, MAX_RANDOM_BYTES};

const MODULE: &str = "wasi_snapshot_preview1";

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ESPIPE: i32 = 70;

fn fault(r: Result<(), memory::OutOfBounds>) -> i32 {
    if r.is_ok() { SUCCESS } else { EFAULT }
}

/// The functions `add_to_linker` defines.
const PROVIDED: &[&str] = &[
    "args_sizes_get",
    "args_get",
    "environ_sizes_get",
    "environ_get",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "sched_yield",
    "proc_exit",
];

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        MODULE,
        "args_sizes_get",
        |c, argc: i32, size: i32| {
            let r =
                memory::write_u32(&mut c, argc, 0).and_then(|_| memory::write_u32(&mut c, size, 0));
            Ok(fault(r))
        },
    )?;
    host_fn!(linker, MODULE, "args_get", |_c, _argv: i32, _buf: i32| {
        Ok(SUCCESS)
    })?;
    host_fn!(
        linker,
        MODULE,
        "environ_sizes_get",
        |c, count: i32, size: i32| {
            let env = &c.data().env;
            let n = env.len() as u32;
            let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            let r = memory::write_u32(&mut c, count, n)
                .and_then(|_| memory::write_u32(&mut c, size, bytes as u32));
            Ok(fault(r))
        },
    )?;
    host_fn!(linker, MODULE, "environ_get", |c, ptrs: i32, buf: i32| {
        let env = c.data().env.clone();
        let mut at = buf as u32;
        for (i, (k, v)) in env.iter().enumerate() {
            let entry = format!("{k}={v}\0");
            if memory::write_u32(&mut c, ptrs.wrapping_add(4 * i as i32), at).is_err()
                || memory::write(&mut c, at as i32, entry.as_bytes()).is_err()
            {
                return Ok(EFAULT);
            }
            at = at.wrapping_add(entry.len() as u32);
        }
        Ok(SUCCESS)
    },)?;
    host_fn!(
        linker,
        MODULE,
        "clock_time_get",
        |c, id: i32, _precision: i64, ret: i32| {
            let ns = match id {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64,
                1..=3 => crate::plugin::sandbox::monotonic_nanos(),
                _ => return Ok(EINVAL),
            };
            Ok(fault(memory::write_u64(&mut c, ret, ns)))
        },
    )?;
    host_fn!(linker, MODULE, "clock_res_get", |c, id: i32, ret: i32| {
        if !(0..=3).contains(&id) {
            return Ok(EINVAL);
        }
        Ok(fault(memory::write_u64(&mut c, ret, 1)))
    },)?;
    host_fn!(linker, MODULE, "random_get", |c, ptr: i32, len: i32| {
        let len = len as u32 as usize;
        if len > MAX_RANDOM_BYTES {
            c.data().plugin.limit_exceeded(Limit::RandomBytes);
            return Ok(EINVAL);
        }
        // Filled in place: the host allocates nothing, whatever the length.
        let Ok(mem) = memory::memory(&mut c) else {
            return Ok(EFAULT);
        };
        let start = ptr as u32 as usize;
        let Some(dest) = mem
            .data_mut(&mut c)
            .get_mut(start..start.saturating_add(len))
        else {
            return Ok(EFAULT);
        };
        Ok(if getrandom::fill(dest).is_ok() {
            SUCCESS
        } else {
            ENOSYS
        })
    })?;
    host_fn!(
        linker,
        MODULE,
        "fd_write",
        |c, fd: i32, iovs: i32, iovs_len: i32, written: i32| {
            if !(1..=2).contains(&fd) {
                return Ok(EBADF);
            }
            let Ok(raw) = memory::read(&mut c, iovs, iovs_len.saturating_mul(8)) else {
                return Ok(EFAULT);
            };
            let mut total = 0u32;
            for iov in raw.chunks_exact(8) {
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Ok(bytes) = memory::read(&mut c, ptr, len) else {
                    return Ok(EFAULT);
                };
                total = total.wrapping_add(bytes.len() as u32);
                write_stdio(c.data_mut(), fd, &bytes);
            }
            Ok(fault(memory::write_u32(&mut c, written, total)))
        },
    )?;
    host_fn!(
        linker,
        MODULE,
        "fd_read",
        |_c, _a1: i32, _a2: i32, _a3: i32, _a4: i32| Ok(EBADF),
    )?;
    host_fn!(linker, MODULE, "fd_close", |_c, fd: i32| {
        Ok(if (0..=2).contains(&fd) {
            SUCCESS
        } else {
            EBADF
        })
    })?;
    host_fn!(
        linker,
        MODULE,
        "fd_seek",
        |_c, fd: i32, _a1: i64, _a2: i32, _a3: i32| {
            Ok(if (0..=2).contains(&fd) { ESPIPE } else { EBADF })
        },
    )?;
    host_fn!(linker, MODULE, "fd_fdstat_get", |c, fd: i32, ret: i32| {
        if !(0..=2).contains(&fd) {
            return Ok(EBADF);
        }
        // filetype character device, no flags, all rights.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        stat[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        Ok(fault(memory::write(&mut c, ret, &stat)))
    },)?;
    // No preopened directories: the plugin has no file system.
    host_fn!(
        linker,
        MODULE,
        "fd_prestat_get",
        |_c, _a1: i32, _a2: i32| { Ok(EBADF) }
    )?;
    host_fn!(
        linker,
        MODULE,
        "fd_prestat_dir_name",
        |_c, _a1: i32, _a2: i32, _a3: i32| Ok(EBADF),
    )?;
    host_fn!(linker, MODULE, "sched_yield", |_c| Ok(SUCCESS))?;
    host_fn!(linker, MODULE, "proc_exit", |_c, code: i32| {
        Err::<(), _>(wasmtime::Error::msg(format!(
            "the plugin called proc_exit({code})"
        )))
    },)?;
    Ok(())
}

fn write_stdio(state: &mut HostState, fd: i32, bytes: &[u8]) {
    const MAX_LINE: usize = 4096;
    for &b in bytes {
        if b == b'\n' || state.stdio_line.len() >= MAX_LINE {
            let line = String::from_utf8_lossy(&state.stdio_line).into_owned();
            state.stdio_line.clear();
            // stderr carries panics and errors; stdout is chatter.
            state.plugin.log(if fd == 2 { 3 } else { 1 }, &line);
            if b == b'\n' {
                continue;
            }
        }
        state.stdio_line.push(b);
    }
}

/// Defines, for one module, every WASI function it imports that the linker
/// lacks, as a function answering ENOSYS. Fails for an import whose type
/// cannot carry an errno.
pub fn define_missing(linker: &mut Linker<HostState>, module: &Module) -> Result<(), String> {
    for import in module.imports() {
        if import.module() != MODULE {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            return Err(format!(
                "imports {MODULE}.{}, which is not a function",
                import.name()
            ));
        };
        if PROVIDED.contains(&import.name()) {
            continue;
        }
        let results: Vec<ValType> = ty.results().collect();
        if results.len() != 1 || !matches!(results[0], ValType::I32) {
            return Err(format!(
                "imports {MODULE}.{}, which this sandbox does not provide",
                import.name()
            ));
        }
        let name = import.name().to_owned();
        linker
            .func_new(MODULE, &name, ty.clone(), |_c, _params, results| {
                results[0] = Val::I32(ENOSYS);
                Ok(())
            })
            .map_err(|e| format!("cannot define {MODULE}.{name}: {e}"))?;
    }
    Ok(())
}
