//! WASI preview 1, in both modules Envoy provides it under
//! (`wasi_snapshot_preview1` and the older `wasi_unstable`), with Envoy's
//! answers.
//!
//! Plugins get a sandbox, not a machine: no files, no sockets, no host
//! environment. They get their configured environment, clocks, randomness,
//! and stdout/stderr, which go to the log. File and socket calls answer the
//! errno Envoy answers (mostly ENOTSUP or EBADF); a WASI function outside
//! Envoy's list answers ENOSYS (Envoy would refuse to link the module).
//!
//! wasmtime-wasi's synchronous preview-1 bindings block on a Tokio runtime of
//! their own, which panics when called from a Tokio worker as the data path
//! does; these calls need no I/O, so they are done here directly.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{ExternType, Linker, Module, Val, ValType};

use super::guard::host_fn;
use super::instance::HostState;
use super::memory;
use crate::plugin::sandbox::{Limit, MAX_RANDOM_BYTES};

/// The two module names Envoy registers every function under.
pub const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOENT: i32 = 44;
const ENOSYS: i32 = 52;
const ENOTDIR: i32 = 54;
const ENOTSUP: i32 = 58;

fn fault(r: Result<(), memory::OutOfBounds>) -> i32 {
    if r.is_ok() { SUCCESS } else { EFAULT }
}

/// stdout and stderr are the only descriptors a plugin has.
fn stdio(fd: i32) -> bool {
    fd == 1 || fd == 2
}

/// SUCCESS for stdout and stderr, where the call has nothing to do; EBADF
/// for any other descriptor (Envoy's answer to the fd_* calls that only
/// make sense on files).
fn stdio_noop(fd: i32) -> i32 {
    if stdio(fd) { SUCCESS } else { EBADF }
}

/// The functions `add_to_linker` defines in each of [`MODULES`]: Envoy's
/// list (proxy-wasm-cpp-host `FOR_ALL_WASI_FUNCTIONS`).
pub const PROVIDED: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "clock_res_get",
    "fd_advise",
    "fd_allocate",
    "fd_datasync",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_pwrite",
    "fd_readdir",
    "fd_renumber",
    "fd_sync",
    "fd_tell",
    "path_create_directory",
    "path_filestat_set_times",
    "path_link",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
    "random_get",
    "sched_yield",
    "poll_oneoff",
    "proc_exit",
    "path_open",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "path_filestat_get",
    "fd_filestat_get",
];

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for module in MODULES {
        add_environment(linker, module)?;
        add_stdio(linker, module)?;
        add_files(linker, module)?;
        add_sockets(linker, module)?;
    }
    Ok(())
}

/// Arguments (none), the configured environment, clocks, randomness and
/// the process.
fn add_environment(linker: &mut Linker<HostState>, module: &str) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        module,
        "args_sizes_get",
        |c, argc: i32, size: i32| {
            let r =
                memory::write_u32(&mut c, argc, 0).and_then(|_| memory::write_u32(&mut c, size, 0));
            Ok(fault(r))
        },
    )?;
    host_fn!(linker, module, "args_get", |_c, _argv: i32, _buf: i32| {
        Ok(SUCCESS)
    })?;
    host_fn!(
        linker,
        module,
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
    host_fn!(linker, module, "environ_get", |c, ptrs: i32, buf: i32| {
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
    // Realtime and monotonic clocks only; the CPU-time clocks are
    // ENOTSUP, as in Envoy.
    host_fn!(
        linker,
        module,
        "clock_time_get",
        |c, id: i32, _precision: i64, ret: i32| {
            let ns = match id {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64,
                1 => crate::plugin::sandbox::monotonic_nanos(),
                _ => return Ok(ENOTSUP),
            };
            Ok(fault(memory::write_u64(&mut c, ret, ns)))
        },
    )?;
    host_fn!(linker, module, "clock_res_get", |c, id: i32, ret: i32| {
        if !(0..=1).contains(&id) {
            return Ok(ENOTSUP);
        }
        Ok(fault(memory::write_u64(&mut c, ret, 1)))
    },)?;
    host_fn!(linker, module, "random_get", |c, ptr: i32, len: i32| {
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
    host_fn!(linker, module, "sched_yield", |_c| Ok(SUCCESS))?;
    // Nothing to wait for: no events, at once. Go's runtime needs SUCCESS
    // here (Envoy answers it for that reason).
    host_fn!(
        linker,
        module,
        "poll_oneoff",
        |c, _in: i32, _out: i32, _n: i32, nevents: i32| {
            Ok(fault(memory::write_u32(&mut c, nevents, 0)))
        },
    )?;
    // Envoy logs and returns, and the guest traps right after; trapping
    // here says why.
    host_fn!(linker, module, "proc_exit", |_c, code: i32| {
        Err::<(), _>(wasmtime::Error::msg(format!(
            "the plugin called proc_exit({code})"
        )))
    },)?;
    Ok(())
}

/// stdout and stderr, which go to the plugin's log; stdin reads nothing.
fn add_stdio(linker: &mut Linker<HostState>, module: &str) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        module,
        "fd_write",
        |c, fd: i32, iovs: i32, iovs_len: i32, written: i32| {
            write_iovs(&mut c, fd, iovs, iovs_len, written)
        },
    )?;
    // The offset means nothing on a log.
    host_fn!(
        linker,
        module,
        "fd_pwrite",
        |c, fd: i32, iovs: i32, iovs_len: i32, _offset: i64, written: i32| {
            write_iovs(&mut c, fd, iovs, iovs_len, written)
        },
    )?;
    host_fn!(
        linker,
        module,
        "fd_read",
        |_c, _fd: i32, _iovs: i32, _len: i32, _nread: i32| Ok(ENOSYS),
    )?;
    host_fn!(
        linker,
        module,
        "fd_pread",
        |_c, _fd: i32, _iovs: i32, _len: i32, _offset: i64, _nread: i32| Ok(ENOSYS),
    )?;
    // Envoy answers SUCCESS to seeking and closing whatever the descriptor
    // (C runtimes close stdio at exit), and leaves the offset untouched.
    host_fn!(
        linker,
        module,
        "fd_seek",
        |_c, _fd: i32, _offset: i64, _whence: i32, _ret: i32| Ok(SUCCESS),
    )?;
    host_fn!(linker, module, "fd_close", |_c, _fd: i32| Ok(SUCCESS))?;
    host_fn!(linker, module, "fd_tell", |c, fd: i32, ret: i32| {
        if !stdio(fd) {
            return Ok(EBADF);
        }
        Ok(fault(memory::write_u64(&mut c, ret, 0)))
    })?;
    host_fn!(linker, module, "fd_fdstat_get", |c, fd: i32, ret: i32| {
        if !stdio(fd) {
            return Ok(EBADF);
        }
        // Filetype unknown, no flags, the right to write (as Envoy).
        let mut stat = [0u8; 24];
        stat[8..16].copy_from_slice(&64u64.to_le_bytes());
        Ok(fault(memory::write(&mut c, ret, &stat)))
    },)?;
    // None of these flags means anything for a log.
    host_fn!(
        linker,
        module,
        "fd_fdstat_set_flags",
        |_c, _fd: i32, _flags: i32| Ok(ENOSYS),
    )?;
    host_fn!(
        linker,
        module,
        "fd_fdstat_set_rights",
        |_c, fd: i32, _base: i64, _inheriting: i64| Ok(stdio_noop(fd)),
    )?;
    host_fn!(linker, module, "fd_sync", |_c, fd: i32| Ok(stdio_noop(fd)))?;
    host_fn!(linker, module, "fd_datasync", |_c, fd: i32| Ok(stdio_noop(
        fd
    )))?;
    host_fn!(
        linker,
        module,
        "fd_advise",
        |_c, _fd: i32, _offset: i64, _len: i64, _advice: i32| Ok(SUCCESS),
    )?;
    host_fn!(
        linker,
        module,
        "fd_allocate",
        |_c, fd: i32, _offset: i64, _len: i64| Ok(stdio_noop(fd)),
    )?;
    host_fn!(
        linker,
        module,
        "fd_filestat_set_size",
        |_c, fd: i32, _size: i64| Ok(stdio_noop(fd)),
    )?;
    host_fn!(
        linker,
        module,
        "fd_filestat_set_times",
        |_c, fd: i32, _atim: i64, _mtim: i64, _flags: i32| Ok(stdio_noop(fd)),
    )?;
    host_fn!(linker, module, "fd_renumber", |_c, fd: i32, to: i32| {
        Ok(if stdio(fd) && stdio(to) {
            ENOTSUP
        } else {
            EBADF
        })
    })?;
    Ok(())
}

/// The file system: there is none, no preopened directory either.
fn add_files(linker: &mut Linker<HostState>, module: &str) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        module,
        "fd_prestat_get",
        |_c, _fd: i32, _ret: i32| Ok(EBADF)
    )?;
    host_fn!(
        linker,
        module,
        "fd_prestat_dir_name",
        |_c, _fd: i32, _ptr: i32, _len: i32| Ok(ENOSYS),
    )?;
    host_fn!(
        linker,
        module,
        "fd_filestat_get",
        |_c, _fd: i32, _ret: i32| Ok(EBADF)
    )?;
    // Envoy's answer is "no such file".
    host_fn!(
        linker,
        module,
        "path_open",
        |_c,
         _fd: i32,
         _dirflags: i32,
         _path: i32,
         _path_len: i32,
         _oflags: i32,
         _base: i64,
         _inheriting: i64,
         _fdflags: i32,
         _ret: i32| Ok(ENOENT),
    )?;
    // Envoy answers 20 (EEXIST) while meaning ENOTDIR; this says what it
    // means. Either way the guest sees an error and no entries.
    host_fn!(
        linker,
        module,
        "fd_readdir",
        |c, _fd: i32, _buf: i32, _len: i32, _cookie: i64, ret: i32| {
            if memory::write_u32(&mut c, ret, 0).is_err() {
                return Ok(EFAULT);
            }
            Ok(ENOTDIR)
        },
    )?;
    host_fn!(
        linker,
        module,
        "path_readlink",
        |c, _fd: i32, _path: i32, _len: i32, _buf: i32, _buf_len: i32, ret: i32| {
            if memory::write_u32(&mut c, ret, 0).is_err() {
                return Ok(EFAULT);
            }
            Ok(ENOTSUP)
        },
    )?;
    host_fn!(
        linker,
        module,
        "path_filestat_get",
        |_c, _fd: i32, _flags: i32, _path: i32, _len: i32, _ret: i32| Ok(ENOTSUP),
    )?;
    host_fn!(
        linker,
        module,
        "path_filestat_set_times",
        |_c, _fd: i32, _flags: i32, _path: i32, _len: i32, _atim: i64, _mtim: i64, _fst: i32| {
            Ok(ENOTSUP)
        },
    )?;
    host_fn!(
        linker,
        module,
        "path_create_directory",
        |_c, _fd: i32, _path: i32, _len: i32| Ok(ENOTSUP),
    )?;
    host_fn!(
        linker,
        module,
        "path_remove_directory",
        |_c, _fd: i32, _path: i32, _len: i32| Ok(ENOTSUP),
    )?;
    host_fn!(
        linker,
        module,
        "path_unlink_file",
        |_c, _fd: i32, _path: i32, _len: i32| Ok(ENOTSUP),
    )?;
    // path_link and path_symlink take the parameters WASI defines (7 and
    // 5), which wasi-libc imports; Envoy registers them one short, so such
    // a module does not link there.
    host_fn!(
        linker,
        module,
        "path_link",
        |_c,
         _old_fd: i32,
         _old_flags: i32,
         _old_path: i32,
         _old_len: i32,
         _new_fd: i32,
         _new_path: i32,
         _new_len: i32| Ok(ENOTSUP),
    )?;
    host_fn!(
        linker,
        module,
        "path_symlink",
        |_c, _old_path: i32, _old_len: i32, _fd: i32, _new_path: i32, _new_len: i32| {
            Ok(ENOTSUP)
        },
    )?;
    host_fn!(
        linker,
        module,
        "path_rename",
        |_c,
         _fd: i32,
         _old_path: i32,
         _old_len: i32,
         _new_fd: i32,
         _new_path: i32,
         _new_len: i32| { Ok(ENOTSUP) },
    )?;
    Ok(())
}

/// Sockets: none. The result slots are zeroed, as Envoy does.
fn add_sockets(linker: &mut Linker<HostState>, module: &str) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        module,
        "sock_accept",
        |c, _fd: i32, _flags: i32, ret: i32| {
            if memory::write_u32(&mut c, ret, 0).is_err() {
                return Ok(EFAULT);
            }
            Ok(ENOTSUP)
        },
    )?;
    host_fn!(
        linker,
        module,
        "sock_recv",
        |c, _fd: i32, _data: i32, _len: i32, _flags: i32, ret_len: i32, ret_flags: i32| {
            if memory::write_u32(&mut c, ret_len, 0).is_err()
                || memory::write(&mut c, ret_flags, &[0, 0]).is_err()
            {
                return Ok(EFAULT);
            }
            Ok(ENOTSUP)
        },
    )?;
    host_fn!(
        linker,
        module,
        "sock_send",
        |c, _fd: i32, _data: i32, _len: i32, _flags: i32, ret: i32| {
            if memory::write_u32(&mut c, ret, 0).is_err() {
                return Ok(EFAULT);
            }
            Ok(ENOTSUP)
        },
    )?;
    host_fn!(
        linker,
        module,
        "sock_shutdown",
        |_c, _fd: i32, _how: i32| Ok(ENOTSUP)
    )?;
    Ok(())
}

/// `fd_write` and `fd_pwrite`: stdout and stderr become log lines.
fn write_iovs(
    c: &mut wasmtime::Caller<'_, HostState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    written: i32,
) -> wasmtime::Result<i32> {
    if !stdio(fd) {
        return Ok(EBADF);
    }
    let Ok(raw) = memory::read(c, iovs, iovs_len.saturating_mul(8)) else {
        return Ok(EFAULT);
    };
    let mut total = 0u32;
    for iov in raw.chunks_exact(8) {
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let Ok(bytes) = memory::read(c, ptr, len) else {
            return Ok(EFAULT);
        };
        total = total.wrapping_add(bytes.len() as u32);
        write_stdio(c.data_mut(), fd, &bytes);
    }
    Ok(fault(memory::write_u32(c, written, total)))
}

fn write_stdio(state: &mut HostState, fd: i32, bytes: &[u8]) {
    const MAX_LINE: usize = 4096;
    for &b in bytes {
        if b == b'\n' || state.stdio_line.len() >= MAX_LINE {
            let line = String::from_utf8_lossy(&state.stdio_line).into_owned();
            state.stdio_line.clear();
            // As Envoy: stdout at info, stderr (panics, errors) at error.
            state.plugin.log(if fd == 2 { 4 } else { 2 }, &line);
            if b == b'\n' {
                continue;
            }
        }
        state.stdio_line.push(b);
    }
}

/// Defines, for one module, every WASI function outside Envoy's list that
/// it imports, as a function answering ENOSYS. Fails for an import whose type
/// cannot carry an errno.
pub fn define_missing(linker: &mut Linker<HostState>, module: &Module) -> Result<(), String> {
    for import in module.imports() {
        let module_name = import.module();
        if !MODULES.contains(&module_name) {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            return Err(format!(
                "imports {module_name}.{}, which is not a function",
                import.name()
            ));
        };
        if PROVIDED.contains(&import.name()) {
            continue;
        }
        let results: Vec<ValType> = ty.results().collect();
        if results.len() != 1 || !matches!(results[0], ValType::I32) {
            return Err(format!(
                "imports {module_name}.{}, which this sandbox does not provide",
                import.name()
            ));
        }
        let name = import.name().to_owned();
        linker
            .func_new(module_name, &name, ty.clone(), |_c, _params, results| {
                results[0] = Val::I32(ENOSYS);
                Ok(())
            })
            .map_err(|e| format!("cannot define {module_name}.{name}: {e}"))?;
    }
    Ok(())
}
