//! Drives every host function a Proxy-Wasm plugin can import with arbitrary
//! arguments, from inside a guest, for the fuzz targets in `fuzz/`.
//!
//! The guest is generated once: it imports every function the linker
//! defines (the `env` ABI and the WASI subset), re-exports each as `f<i>`,
//! and brings a memory and a bump allocator. Each input gets a fresh
//! instance with an HTTP context, memory filled from the input, then a
//! sequence of calls whose arguments mix small numbers, pointers into
//! memory, lengths and extremes. A host function may answer any status or
//! trap the guest; it must never panic (a panic caught by the guard shows
//! up as "panicked" and fails the target) and never let a map, body or
//! property store grow past its limit.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, UNIX_EPOCH};

use wasm_encoder::{
    CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, ImportSection, MemorySection, MemoryType, TypeSection,
};
use wasmtime::{Extern, Store, Val, ValType};

use super::instance::{ContextKind, HostState, MemoryLimiter};
use super::{ProxyWasmModule, linker};
use crate::exchange::{Exchange, RequestHead, RequestInfo, ResponseHead};
use crate::metrics::Metrics;
use crate::plugin::callout::Callouts;
use crate::plugin::sandbox::{HostLimits, MAX_PROPERTIES};
use crate::plugin::shared::NamespaceShared;
use crate::plugin::{Limits, PluginShared};

/// Where the input's bytes are copied in the guest's memory, and the first
/// address the guest's allocator hands out.
const DATA_AT: usize = 1024;
const HEAP_START: i32 = 64 * 1024;
const MEMORY_PAGES: u64 = 2;
const MAX_CALLS: usize = 48;

struct Harness {
    engine: wasmtime::Engine,
    module: ProxyWasmModule,
    /// Parameter types of `f<i>`.
    funcs: Vec<(String, Vec<ValType>)>,
    shared: Arc<PluginShared>,
    _runtime: tokio::runtime::Runtime,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(Harness::new)
}

impl Harness {
    fn new() -> Harness {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config).expect("engine");
        let linker = linker(&engine).expect("linker");
        let shared = plugin_shared();
        let mut scratch = Store::new(&engine, host_state(shared.clone()));
        let mut funcs = Vec::new();
        let mut imports = Vec::new();
        let defined: Vec<_> = linker
            .iter(&mut scratch)
            .map(|(m, n, e)| (m.to_owned(), n.to_owned(), e))
            .collect();
        for (module, name, ext) in defined {
            let Extern::Func(f) = ext else { continue };
            let ty = f.ty(&scratch);
            imports.push((
                module.to_owned(),
                name.to_owned(),
                ty.params().collect::<Vec<_>>(),
                ty.results().collect::<Vec<_>>(),
            ));
        }
        // A stable order, so an input means the same calls across runs.
        imports.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let bytes = guest_module(&imports);
        let module = wasmtime::Module::new(&engine, &bytes).expect("generated guest compiles");
        let module = ProxyWasmModule::new(&linker, &module).expect("generated guest links");
        for (module, name, params, _) in imports {
            funcs.push((format!("{module}.{name}"), params));
        }
        // Host functions that record work for later (callouts, queue
        // wake-ups) look for a runtime; give them one that never runs it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Harness {
            engine,
            module,
            funcs,
            shared,
            _runtime: runtime,
        }
    }
}

fn wasm_type(t: &ValType) -> wasm_encoder::ValType {
    match t {
        ValType::I32 => wasm_encoder::ValType::I32,
        ValType::I64 => wasm_encoder::ValType::I64,
        ValType::F32 => wasm_encoder::ValType::F32,
        ValType::F64 => wasm_encoder::ValType::F64,
        other => panic!("host function with a {other} parameter"),
    }
}

type Import = (String, String, Vec<ValType>, Vec<ValType>);

/// A module importing `imports` and exporting each as `f<i>`, plus what
/// the host needs to accept it as a Proxy-Wasm plugin.
fn guest_module(imports: &[Import]) -> Vec<u8> {
    let mut types = TypeSection::new();
    let mut import_section = ImportSection::new();
    for (i, (module, name, params, results)) in imports.iter().enumerate() {
        types
            .ty()
            .function(params.iter().map(wasm_type), results.iter().map(wasm_type));
        import_section.import(module, name, EntityType::Function(i as u32));
    }
    let n = imports.len() as u32;
    use wasm_encoder::ValType::I32;
    const NONE: [wasm_encoder::ValType; 0] = [];
    types.ty().function(NONE, NONE); // the ABI version marker
    types.ty().function([I32, I32], NONE); // proxy_on_context_create
    types.ty().function([I32], [I32]); // the allocator

    let mut functions = FunctionSection::new();
    functions.function(n).function(n + 1).function(n + 2);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: MEMORY_PAGES,
        maximum: Some(MEMORY_PAGES * 8),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut globals = GlobalSection::new();
    globals.global(
        GlobalType {
            val_type: I32,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i32_const(HEAP_START),
    );
    let mut exports = ExportSection::new();
    for i in 0..n {
        exports.export(&format!("f{i}"), ExportKind::Func, i);
    }
    exports.export("proxy_abi_version_0_2_1", ExportKind::Func, n);
    exports.export("proxy_on_context_create", ExportKind::Func, n + 1);
    exports.export("proxy_on_memory_allocate", ExportKind::Func, n + 2);
    exports.export("memory", ExportKind::Memory, 0);

    let mut code = CodeSection::new();
    let no_locals = || Function::new(Vec::<(u32, wasm_encoder::ValType)>::new());
    let mut empty = no_locals();
    empty.instructions().end();
    code.function(&empty);
    let mut create = no_locals();
    create.instructions().end();
    code.function(&create);
    // Bump allocator: returns the heap top and moves it by the size. It
    // never frees and may run past memory: the host must cope with that.
    let mut alloc = no_locals();
    alloc
        .instructions()
        .global_get(0)
        .global_get(0)
        .local_get(0)
        .i32_add()
        .global_set(0)
        .end();
    code.function(&alloc);

    let mut module = wasm_encoder::Module::new();
    module
        .section(&types)
        .section(&import_section)
        .section(&functions)
        .section(&memories)
        .section(&globals)
        .section(&exports)
        .section(&code);
    module.finish()
}

pub(super) fn plugin_shared() -> Arc<PluginShared> {
    let metrics = Arc::new(Metrics::new());
    let sandbox = crate::config::SandboxConfig {
        max_buffered_body_bytes: 256 * 1024,
        ..Default::default()
    };
    Arc::new(PluginShared {
        name: "fuzz".into(),
        namespace: "fuzz".into(),
        root_id: String::new(),
        vm_id: "fuzz".into(),
        plugin_config: br#"{"fuzz":true}"#.to_vec(),
        vm_config: Vec::new(),
        env: vec![("MODE".into(), "fuzz".into())],
        limits: Limits {
            deadline_ticks: 1000,
            call_timeout: Duration::from_secs(1),
            memory_limit_bytes: 16 << 20,
            host: HostLimits::from_config(&sandbox),
        },
        shared: Arc::new(NamespaceShared::default()),
        callouts: Arc::new(Callouts::new(Default::default())),
        metrics: metrics.plugin_metrics("fuzz", "fuzz"),
        global_metrics: metrics,
        log_tail: Mutex::new(Default::default()),
        limits_warned: Default::default(),
    })
}

pub(super) fn host_state(plugin: Arc<PluginShared>) -> HostState {
    HostState {
        limiter: MemoryLimiter::new(plugin.limits.memory_limit_bytes),
        env: plugin.env.clone(),
        plugin,
        memory: None,
        allocator: None,
        contexts: Default::default(),
        current: 1,
        root_id: 1,
        tick_period: None,
        tick_changed: false,
        pending_callouts: Vec::new(),
        grpc: Default::default(),
        next_callout_token: 0,
        call_response: None,
        self_ref: Weak::new(),
        root_properties: Default::default(),
        stdio_line: Vec::new(),
    }
}

pub(super) fn exchange() -> Arc<Exchange> {
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("fuzz"));
    headers.insert("x-tenant", http::HeaderValue::from_static("acme"));
    let ex = Arc::new(Exchange::new(
        RequestInfo {
            id: "fuzz-1".into(),
            namespace: "fuzz".into(),
            service_hostname: "svc.fuzz".into(),
            service_name: "svc".into(),
            source: ([127, 0, 0, 1], 40000).into(),
            destination: ([127, 0, 0, 2], 80).into(),
            protocol: "HTTP/1.1",
            peer: None,
            start: UNIX_EPOCH,
        },
        RequestHead {
            method: http::Method::GET,
            scheme: "http".into(),
            authority: "svc.fuzz".into(),
            path: "/fuzz?q=1".into(),
            headers,
        },
    ));
    {
        let mut st = ex.lock();
        st.request_body.extend_from_slice(b"request body");
        st.response = Some(ResponseHead {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
        });
    }
    ex
}

/// Reads fuzz input front to back; runs dry as zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An i32 argument: mostly values a host function must treat with
    /// care (pointers near the data, lengths, the edges of memory and of
    /// the integer range), sometimes anything.
    fn i32_arg(&mut self) -> i32 {
        let memory = (MEMORY_PAGES * 65536) as u32;
        let v = match self.byte() % 10 {
            0 => self.byte() as u32,
            1 => DATA_AT as u32 + self.byte() as u32 * 8,
            2 => u16::from_le_bytes([self.byte(), self.byte()]) as u32,
            3 => memory - (self.byte() as u32),
            4 => u32::MAX - (self.byte() as u32),
            5 => i32::MAX as u32 - (self.byte() as u32),
            6 => 1 << (self.byte() % 32),
            7 => self.byte() as u32 % 9, // a buffer, map or stream type
            8 => 0,
            _ => self.u32(),
        };
        v as i32
    }
}

/// One fuzz input: fill memory, make up to [`MAX_CALLS`] host calls.
pub fn host_calls(data: &[u8]) {
    let h = harness();
    let _enter = h._runtime.enter();
    let mut input = Input(data);
    let mut state = host_state(h.shared.clone());
    let ex = exchange();
    state.contexts.insert(1, ContextKind::Root);
    state.contexts.insert(2, ContextKind::Http(ex.clone()));
    state.current = if input.byte() & 1 == 0 { 2 } else { 1 };
    let mut store = Store::new(&h.engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1000);
    let instance = h
        .module
        .pre
        .instantiate(&mut store)
        .expect("the generated guest instantiates");
    let memory = instance
        .get_memory(&mut store, "memory")
        .expect("exports memory");
    // The imports are called from the host here, so a host function has no
    // calling instance to find these in: without them every memory access
    // would fail its bounds check and nothing past it would be reached.
    let alloc = instance
        .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
        .expect("exports the allocator");
    store.data_mut().memory = Some(memory);
    store.data_mut().allocator = Some(alloc);
    let fill_len = input.byte() as usize * 16;
    let fill = input.bytes(fill_len).to_vec();
    memory.data_mut(&mut store)[DATA_AT..DATA_AT + fill.len()].copy_from_slice(&fill);

    for _ in 0..MAX_CALLS {
        if input.is_empty() {
            break;
        }
        let pick = u16::from_le_bytes([input.byte(), input.byte()]) as usize % h.funcs.len();
        let (name, params) = &h.funcs[pick];
        let args: Vec<Val> = params
            .iter()
            .map(|t| match t {
                ValType::I64 => Val::I64(((input.u32() as u64) << 32 | input.u32() as u64) as i64),
                _ => Val::I32(input.i32_arg()),
            })
            .collect();
        let func = instance
            .get_func(&mut store, &format!("f{pick}"))
            .expect("every import is exported");
        let mut results = vec![Val::I32(0); func.ty(&store).results().len()];
        if let Err(e) = func.call(&mut store, &args, &mut results) {
            let msg = format!("{e:#}");
            assert!(
                !msg.contains("panicked"),
                "{name}({args:?}) panicked in the host: {msg}"
            );
            // A trap poisons the instance in the real host: stop here.
            break;
        }
        check_limits(&store, &ex, &h.shared);
    }
}

/// What no sequence of host calls may do, whatever it passes.
fn check_limits(store: &Store<HostState>, ex: &Exchange, plugin: &PluginShared) {
    let limits = &plugin.limits.host;
    let st = ex.lock();
    // The request arrived with 2 headers, under the limit; edits may not
    // take a map past it.
    for (what, map) in [
        ("request headers", Some(&st.request.headers)),
        ("response headers", st.response.as_ref().map(|r| &r.headers)),
        ("request trailers", st.request_trailers.as_ref()),
        ("response trailers", st.response_trailers.as_ref()),
    ] {
        if let Some(map) = map {
            assert!(map.len() <= limits.max_headers, "{what}: {}", map.len());
            let bytes: usize = map.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
            assert!(bytes <= limits.max_header_bytes, "{what}: {bytes} bytes");
        }
    }
    assert!(st.request_body.len() <= limits.max_body_bytes);
    assert!(st.response_body.len() <= limits.max_body_bytes);
    assert!(st.properties.len() <= MAX_PROPERTIES);
    assert!(store.data().root_properties.len() <= MAX_PROPERTIES);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_reaches_every_host_function() {
        let h = harness();
        for name in [
            "env.proxy_log",
            "env.proxy_set_header_map_pairs",
            "env.proxy_set_buffer_bytes",
            "env.proxy_enqueue_shared_queue",
            "env.proxy_define_metric",
            "env.proxy_set_property",
            "env.proxy_dispatch_http_call",
            "wasi_snapshot_preview1.random_get",
        ] {
            assert!(h.funcs.iter().any(|(n, _)| n == name), "{name}");
        }
        // A few inputs, including an empty one and one that runs dry
        // mid-call.
        host_calls(&[]);
        host_calls(&[0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let mut long = vec![0u8; 2048];
        for (i, b) in long.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        host_calls(&long);
    }
}
