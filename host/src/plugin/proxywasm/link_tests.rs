//! Every function Envoy's host provides (proxy-wasm-cpp-host's registration:
//! the `env` ABI with its 0.1.0 names, Emscripten's two, and the WASI list
//! under both module names), written down here independently of the linker,
//! linked from a module that imports them all, and called for the statuses
//! Envoy answers.

use wasmtime::{Instance, Store, Val};

use super::fuzzing::{exchange, host_state, plugin_shared};
use super::instance::{ContextKind, HostState};
use super::{ProxyWasmModule, linker, wasi};

/// (name, parameters, results): `i` is i32, `I` is i64.
type Sig = (&'static str, &'static str, &'static str);

/// Module `env`. The gRPC five are implemented by the gRPC callout module;
/// their names and types are Envoy's all the same.
const ENV: &[Sig] = &[
    ("proxy_log", "iii", "i"),
    ("proxy_get_log_level", "i", "i"),
    ("proxy_get_status", "iii", "i"),
    ("proxy_set_property", "iiii", "i"),
    ("proxy_get_property", "iiii", "i"),
    ("proxy_send_local_response", "iiiiiiii", "i"),
    ("proxy_get_shared_data", "iiiii", "i"),
    ("proxy_set_shared_data", "iiiii", "i"),
    ("proxy_register_shared_queue", "iii", "i"),
    ("proxy_resolve_shared_queue", "iiiii", "i"),
    ("proxy_dequeue_shared_queue", "iii", "i"),
    ("proxy_enqueue_shared_queue", "iii", "i"),
    ("proxy_get_header_map_value", "iiiii", "i"),
    ("proxy_add_header_map_value", "iiiii", "i"),
    ("proxy_replace_header_map_value", "iiiii", "i"),
    ("proxy_remove_header_map_value", "iii", "i"),
    ("proxy_get_header_map_pairs", "iii", "i"),
    ("proxy_set_header_map_pairs", "iii", "i"),
    ("proxy_get_header_map_size", "ii", "i"),
    ("proxy_get_buffer_status", "iii", "i"),
    ("proxy_get_buffer_bytes", "iiiii", "i"),
    ("proxy_set_buffer_bytes", "iiiii", "i"),
    ("proxy_http_call", "iiiiiiiiii", "i"),
    ("proxy_grpc_call", "iiiiiiiiiiii", "i"),
    ("proxy_grpc_stream", "iiiiiiiii", "i"),
    ("proxy_grpc_close", "i", "i"),
    ("proxy_grpc_cancel", "i", "i"),
    ("proxy_grpc_send", "iiii", "i"),
    ("proxy_set_tick_period_milliseconds", "i", "i"),
    ("proxy_get_current_time_nanoseconds", "i", "i"),
    ("proxy_define_metric", "iiii", "i"),
    ("proxy_increment_metric", "iI", "i"),
    ("proxy_record_metric", "iI", "i"),
    ("proxy_get_metric", "ii", "i"),
    ("proxy_set_effective_context", "i", "i"),
    ("proxy_done", "", "i"),
    ("proxy_call_foreign_function", "iiiiii", "i"),
    // ABI-specific: 0.1.0 names, then 0.2.x.
    ("proxy_get_configuration", "ii", "i"),
    ("proxy_continue_request", "", "i"),
    ("proxy_continue_response", "", "i"),
    ("proxy_clear_route_cache", "", "i"),
    ("proxy_continue_stream", "i", "i"),
    ("proxy_close_stream", "i", "i"),
    // Emscripten.
    ("emscripten_notify_memory_growth", "i", ""),
    ("pthread_equal", "ii", "i"),
];

/// WASI preview 1, with the parameter lists WASI defines.
const WASI: &[Sig] = &[
    ("fd_write", "iiii", "i"),
    ("fd_read", "iiii", "i"),
    ("fd_seek", "iIii", "i"),
    ("fd_close", "i", "i"),
    ("fd_fdstat_get", "ii", "i"),
    ("fd_fdstat_set_flags", "ii", "i"),
    ("fd_fdstat_set_rights", "iII", "i"),
    ("environ_get", "ii", "i"),
    ("environ_sizes_get", "ii", "i"),
    ("args_get", "ii", "i"),
    ("args_sizes_get", "ii", "i"),
    ("clock_time_get", "iIi", "i"),
    ("clock_res_get", "ii", "i"),
    ("fd_advise", "iIIi", "i"),
    ("fd_allocate", "iII", "i"),
    ("fd_datasync", "i", "i"),
    ("fd_filestat_set_size", "iI", "i"),
    ("fd_filestat_set_times", "iIIi", "i"),
    ("fd_pread", "iiiIi", "i"),
    ("fd_pwrite", "iiiIi", "i"),
    ("fd_readdir", "iiiIi", "i"),
    ("fd_renumber", "ii", "i"),
    ("fd_sync", "i", "i"),
    ("fd_tell", "ii", "i"),
    ("path_create_directory", "iii", "i"),
    ("path_filestat_set_times", "iiiiIIi", "i"),
    ("path_link", "iiiiiii", "i"),
    ("path_readlink", "iiiiii", "i"),
    ("path_remove_directory", "iii", "i"),
    ("path_rename", "iiiiii", "i"),
    ("path_symlink", "iiiii", "i"),
    ("path_unlink_file", "iii", "i"),
    ("sock_accept", "iii", "i"),
    ("sock_recv", "iiiiii", "i"),
    ("sock_send", "iiiii", "i"),
    ("sock_shutdown", "ii", "i"),
    ("random_get", "ii", "i"),
    ("sched_yield", "", "i"),
    ("poll_oneoff", "iiii", "i"),
    ("proc_exit", "i", ""),
    ("path_open", "iiiiiIIii", "i"),
    ("fd_prestat_get", "ii", "i"),
    ("fd_prestat_dir_name", "iii", "i"),
    ("path_filestat_get", "iiiii", "i"),
    ("fd_filestat_get", "ii", "i"),
];

fn every_import() -> Vec<(&'static str, Sig)> {
    let mut all: Vec<(&str, Sig)> = ENV.iter().map(|s| ("env", *s)).collect();
    for module in wasi::MODULES {
        all.extend(WASI.iter().map(|s| (module, *s)));
    }
    all
}

fn wat_types(sig: &str) -> String {
    sig.chars()
        .map(|c| if c == 'I' { " i64" } else { " i32" })
        .collect()
}

/// A module importing `imports`, re-exporting each as `module.name`, with
/// a memory, a bump allocator and the 0.2.1 marker.
fn guest(imports: &[(&str, Sig)]) -> Vec<u8> {
    let mut wat = String::from("(module\n");
    for (i, (module, (name, params, results))) in imports.iter().enumerate() {
        let params = if params.is_empty() {
            String::new()
        } else {
            format!(" (param{})", wat_types(params))
        };
        let results = if results.is_empty() {
            String::new()
        } else {
            format!(" (result{})", wat_types(results))
        };
        wat.push_str(&format!(
            "  (import \"{module}\" \"{name}\" (func $f{i}{params}{results}))\n"
        ));
    }
    for (i, (module, (name, _, _))) in imports.iter().enumerate() {
        wat.push_str(&format!("  (export \"{module}.{name}\" (func $f{i}))\n"));
    }
    wat.push_str(
        r#"  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 32768))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32)
    global.get $heap
    global.get $heap
    local.get 0
    i32.add
    global.set $heap)
)"#,
    );
    wat::parse_str(&wat).expect("the generated module is valid WAT")
}

fn engine() -> wasmtime::Engine {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    wasmtime::Engine::new(&config).expect("engine")
}

#[test]
fn a_module_importing_every_envoy_function_links() {
    let engine = engine();
    let linker = linker(&engine).expect("linker");
    let module = wasmtime::Module::new(&engine, guest(&every_import())).expect("compiles");
    // The linker as built, without the ENOSYS fill-in for unknown WASI
    // names: each import must be defined there, with Envoy's type.
    if let Err(e) = linker.instantiate_pre(&module) {
        panic!("the host lacks a function Envoy provides: {e:#}");
    }
    ProxyWasmModule::new(&linker, &module).expect("loads as a plugin");
}

#[test]
fn the_wasi_table_is_what_the_host_says_it_provides() {
    let mut table: Vec<&str> = WASI.iter().map(|(n, _, _)| *n).collect();
    let mut provided = wasi::PROVIDED.to_vec();
    table.sort_unstable();
    provided.sort_unstable();
    assert_eq!(table, provided);
}

#[test]
fn a_wrong_signature_is_refused_at_link_time() {
    let engine = engine();
    let linker = linker(&engine).expect("linker");
    let bad = [("env", ("proxy_get_header_map_size", "i", "i"))];
    let module = wasmtime::Module::new(&engine, guest(&bad)).expect("compiles");
    let err = ProxyWasmModule::new(&linker, &module)
        .err()
        .expect("refused");
    assert!(err.contains("proxy_get_header_map_size"), "{err}");
}

/// A linked guest with a root context (1) and an HTTP context (2) on a
/// request with two headers, a body and a 200 response.
struct Guest {
    store: Store<HostState>,
    instance: Instance,
}

impl Guest {
    fn new() -> Guest {
        let engine = engine();
        let linker = linker(&engine).expect("linker");
        let mut imports = every_import();
        // A WASI function outside Envoy's list still links, answering ENOSYS.
        for module in wasi::MODULES {
            imports.push((module, ("sock_open", "iii", "i")));
        }
        let module = wasmtime::Module::new(&engine, guest(&imports)).expect("compiles");
        let module = ProxyWasmModule::new(&linker, &module).expect("links");
        let mut state = host_state(plugin_shared());
        state.contexts.insert(1, ContextKind::Root);
        state.contexts.insert(2, ContextKind::Http(exchange()));
        state.current = 2;
        let mut store = Store::new(&engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1000);
        let instance = module.pre.instantiate(&mut store).expect("instantiates");
        // Called from the host, a host function has no calling instance to
        // find the memory and allocator in; hand them over as the first
        // guest call would.
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .unwrap();
        store.data_mut().memory = Some(memory);
        store.data_mut().allocator = Some(alloc);
        Guest { store, instance }
    }

    fn call(&mut self, name: &str, args: &[Val]) -> i32 {
        let f = self
            .instance
            .get_func(&mut self.store, name)
            .unwrap_or_else(|| panic!("{name} is exported"));
        let mut out = [Val::I32(0)];
        f.call(&mut self.store, args, &mut out)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        out[0].unwrap_i32()
    }

    fn write(&mut self, at: usize, bytes: &[u8]) {
        let mem = self.instance.get_memory(&mut self.store, "memory").unwrap();
        mem.data_mut(&mut self.store)[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn u32_at(&mut self, at: usize) -> u32 {
        let mem = self.instance.get_memory(&mut self.store, "memory").unwrap();
        let d = mem.data(&self.store);
        u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
    }

    fn bytes_at(&mut self, ptr_at: usize, len_at: usize) -> Vec<u8> {
        let (ptr, len) = (self.u32_at(ptr_at) as usize, self.u32_at(len_at) as usize);
        let mem = self.instance.get_memory(&mut self.store, "memory").unwrap();
        mem.data(&self.store)[ptr..ptr + len].to_vec()
    }
}

fn i(v: i32) -> Val {
    Val::I32(v)
}

fn l(v: i64) -> Val {
    Val::I64(v)
}

const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const RET: i32 = 100;
const RET2: i32 = 104;

#[test]
fn foreign_functions_answer_as_envoy() {
    let mut g = Guest::new();
    for (name, want) in [
        ("no_such_function", NOT_FOUND),
        ("clear_route_cache", OK),
        ("compress", NOT_FOUND),
        ("declare_property", NOT_FOUND),
    ] {
        g.write(200, name.as_bytes());
        let args = [i(200), i(name.len() as i32), i(0), i(0), i(RET), i(RET2)];
        assert_eq!(
            g.call("env.proxy_call_foreign_function", &args),
            want,
            "{name}"
        );
    }
    // A name no function has is not even copied.
    let args = [i(200), i(60_000), i(0), i(0), i(RET), i(RET2)];
    assert_eq!(g.call("env.proxy_call_foreign_function", &args), NOT_FOUND);
    let args = [i(-8), i(4), i(0), i(0), i(RET), i(RET2)];
    assert_eq!(g.call("env.proxy_call_foreign_function", &args), 6);
}

#[test]
fn header_map_size_is_the_bytes_of_names_and_values() {
    let mut g = Guest::new();
    // :authority svc.fuzz, :path /fuzz?q=1, :method GET, :scheme http,
    // user-agent fuzz, x-tenant acme.
    let want = (10 + 8) + (5 + 9) + (7 + 3) + (7 + 4) + (10 + 4) + (8 + 4);
    assert_eq!(g.call("env.proxy_get_header_map_size", &[i(0), i(RET)]), OK);
    assert_eq!(g.u32_at(RET as usize), want);
    // :status 200, no headers.
    assert_eq!(g.call("env.proxy_get_header_map_size", &[i(2), i(RET)]), OK);
    assert_eq!(g.u32_at(RET as usize), 7 + 3);
    // No trailers yet, a map a plugin cannot edit, an unknown map.
    for kind in [1, 3, 6, 4, 99] {
        assert_eq!(
            g.call("env.proxy_get_header_map_size", &[i(kind), i(RET)]),
            BAD_ARGUMENT,
            "map {kind}"
        );
    }
    assert_eq!(
        g.call("env.proxy_get_header_map_size", &[i(0), i(-2)]),
        6,
        "a bad return pointer"
    );
}

#[test]
fn buffer_status_and_configuration() {
    let mut g = Guest::new();
    assert_eq!(
        g.call("env.proxy_get_buffer_status", &[i(0), i(RET), i(RET2)]),
        OK
    );
    assert_eq!(g.u32_at(RET as usize), b"request body".len() as u32);
    assert_eq!(g.u32_at(RET2 as usize), 0);
    assert_eq!(
        g.call("env.proxy_get_buffer_status", &[i(7), i(RET), i(RET2)]),
        OK
    );
    assert_eq!(g.u32_at(RET as usize), br#"{"fuzz":true}"#.len() as u32);
    // No downstream data on an HTTP request; no such buffer type.
    assert_eq!(
        g.call("env.proxy_get_buffer_status", &[i(2), i(RET), i(RET2)]),
        NOT_FOUND
    );
    assert_eq!(
        g.call("env.proxy_get_buffer_status", &[i(9), i(RET), i(RET2)]),
        BAD_ARGUMENT
    );
    assert_eq!(
        g.call("env.proxy_get_configuration", &[i(RET), i(RET2)]),
        OK
    );
    assert_eq!(
        g.bytes_at(RET as usize, RET2 as usize),
        br#"{"fuzz":true}"#.to_vec()
    );
}

#[test]
fn context_and_stream_calls() {
    let mut g = Guest::new();
    assert_eq!(
        g.call("env.proxy_set_effective_context", &[i(77)]),
        BAD_ARGUMENT
    );
    assert_eq!(g.call("env.proxy_set_effective_context", &[i(1)]), OK);
    // From the root context there is no stream to continue.
    assert_eq!(g.call("env.proxy_continue_request", &[]), NOT_FOUND);
    assert_eq!(g.call("env.proxy_set_effective_context", &[i(2)]), OK);
    assert_eq!(g.call("env.proxy_continue_request", &[]), OK);
    assert_eq!(g.call("env.proxy_continue_response", &[]), OK);
    assert_eq!(g.call("env.proxy_continue_stream", &[i(5)]), BAD_ARGUMENT);
    assert_eq!(g.call("env.proxy_clear_route_cache", &[]), OK);
    assert_eq!(g.call("env.proxy_done", &[]), OK);
    assert_eq!(g.call("env.proxy_get_log_level", &[i(RET)]), OK);
    assert!(g.u32_at(RET as usize) <= 5);
    assert_eq!(g.call("env.pthread_equal", &[i(3), i(3)]), 1);
    assert_eq!(g.call("env.pthread_equal", &[i(3), i(4)]), 0);
    let f = g
        .instance
        .get_func(&mut g.store, "env.emscripten_notify_memory_growth")
        .unwrap();
    f.call(&mut g.store, &[i(0)], &mut []).expect("returns");
}

#[test]
fn wasi_answers_as_envoy_in_both_modules() {
    const EBADF: i32 = 8;
    const EINVAL: i32 = 28;
    const ENOENT: i32 = 44;
    const ENOSYS: i32 = 52;
    const ENOTDIR: i32 = 54;
    const ENOTSUP: i32 = 58;
    let mut g = Guest::new();
    for m in wasi::MODULES {
        let f = |n: &str| format!("{m}.{n}");
        let cases: Vec<(&str, Vec<Val>, i32)> = vec![
            (
                "path_open",
                vec![i(3), i(0), i(200), i(4), i(0), l(0), l(0), i(0), i(RET)],
                ENOENT,
            ),
            ("fd_read", vec![i(0), i(200), i(1), i(RET)], ENOSYS),
            ("fd_pread", vec![i(0), i(200), i(1), l(0), i(RET)], ENOSYS),
            ("fd_write", vec![i(3), i(200), i(0), i(RET)], EBADF),
            ("fd_close", vec![i(1)], OK),
            ("fd_seek", vec![i(1), l(0), i(0), i(RET)], OK),
            ("fd_tell", vec![i(5), i(RET)], EBADF),
            ("fd_tell", vec![i(1), i(RET)], OK),
            ("fd_fdstat_get", vec![i(0), i(RET)], EBADF),
            ("fd_fdstat_get", vec![i(2), i(RET)], OK),
            ("fd_fdstat_set_flags", vec![i(1), i(0)], ENOSYS),
            ("fd_fdstat_set_rights", vec![i(7), l(0), l(0)], EBADF),
            ("fd_sync", vec![i(1)], OK),
            ("fd_datasync", vec![i(9)], EBADF),
            ("fd_allocate", vec![i(2), l(0), l(1)], OK),
            ("fd_advise", vec![i(9), l(0), l(0), i(0)], OK),
            ("fd_filestat_set_size", vec![i(9), l(0)], EBADF),
            ("fd_filestat_set_times", vec![i(1), l(0), l(0), i(0)], OK),
            ("fd_renumber", vec![i(1), i(2)], ENOTSUP),
            ("fd_renumber", vec![i(1), i(5)], EBADF),
            (
                "fd_readdir",
                vec![i(3), i(200), i(8), l(0), i(RET)],
                ENOTDIR,
            ),
            ("fd_prestat_get", vec![i(3), i(RET)], EBADF),
            ("fd_prestat_dir_name", vec![i(3), i(200), i(8)], ENOSYS),
            ("fd_filestat_get", vec![i(1), i(RET)], EBADF),
            (
                "path_filestat_get",
                vec![i(3), i(0), i(200), i(4), i(RET)],
                ENOTSUP,
            ),
            ("path_create_directory", vec![i(3), i(200), i(4)], ENOTSUP),
            ("path_unlink_file", vec![i(3), i(200), i(4)], ENOTSUP),
            (
                "path_link",
                vec![i(3), i(0), i(200), i(4), i(3), i(210), i(4)],
                ENOTSUP,
            ),
            (
                "path_readlink",
                vec![i(3), i(200), i(4), i(300), i(8), i(RET)],
                ENOTSUP,
            ),
            ("sock_accept", vec![i(3), i(0), i(RET)], ENOTSUP),
            (
                "sock_recv",
                vec![i(3), i(200), i(1), i(0), i(RET), i(RET2)],
                ENOTSUP,
            ),
            ("sock_send", vec![i(3), i(200), i(1), i(0), i(RET)], ENOTSUP),
            ("sock_shutdown", vec![i(3), i(0)], ENOTSUP),
            ("clock_time_get", vec![i(2), l(1), i(RET)], ENOTSUP),
            ("clock_time_get", vec![i(1), l(1), i(RET)], OK),
            ("clock_res_get", vec![i(3), i(RET)], ENOTSUP),
            ("clock_res_get", vec![i(0), i(RET)], OK),
            ("sched_yield", vec![], OK),
            ("args_sizes_get", vec![i(RET), i(RET2)], OK),
            ("random_get", vec![i(200), i(16)], OK),
            ("random_get", vec![i(200), i(2 << 20)], EINVAL),
            ("sock_open", vec![i(0), i(0), i(RET)], ENOSYS),
        ];
        for (name, args, want) in cases {
            assert_eq!(g.call(&f(name), &args), want, "{m}.{name}{args:?}");
        }
        // poll_oneoff: no events, at once, and SUCCESS (Go needs it).
        g.write(RET as usize, &[0xff; 4]);
        assert_eq!(
            g.call(&f("poll_oneoff"), &[i(200), i(300), i(1), i(RET)]),
            OK
        );
        assert_eq!(g.u32_at(RET as usize), 0);
        // The environment configured for the plugin, and nothing else.
        assert_eq!(g.call(&f("environ_sizes_get"), &[i(RET), i(RET2)]), OK);
        assert_eq!(g.u32_at(RET as usize), 1);
        assert_eq!(g.u32_at(RET2 as usize), "MODE=fuzz\0".len() as u32);
        // fd_write and fd_pwrite count what they wrote to the log.
        g.write(400, b"hello\n");
        g.write(300, &400u32.to_le_bytes());
        g.write(304, &6u32.to_le_bytes());
        assert_eq!(g.call(&f("fd_write"), &[i(1), i(300), i(1), i(RET)]), OK);
        assert_eq!(g.u32_at(RET as usize), 6);
        assert_eq!(
            g.call(&f("fd_pwrite"), &[i(2), i(300), i(1), l(9), i(RET)]),
            OK
        );
        assert_eq!(g.u32_at(RET as usize), 6);
        // A bad pointer is EFAULT, not a trap.
        assert_eq!(g.call(&f("fd_tell"), &[i(1), i(-4)]), 21);
    }
    // Each over-long random_get was refused and counted.
    let metrics = g.store.data().plugin.global_metrics.encode();
    let line = metrics
        .lines()
        .find(|l| l.contains("limit_violations") && l.contains("random_bytes"))
        .unwrap_or_else(|| panic!("no random_bytes violation in\n{metrics}"));
    assert!(line.ends_with(" 2"), "{line}");
}

#[test]
fn proc_exit_ends_the_guest_call() {
    let mut g = Guest::new();
    let f = g
        .instance
        .get_func(&mut g.store, "wasi_unstable.proc_exit")
        .unwrap();
    let err = f.call(&mut g.store, &[i(3)], &mut []).unwrap_err();
    assert!(format!("{err:#}").contains("proc_exit(3)"), "{err:#}");
}
