//! One live Proxy-Wasm VM: a wasmtime store holding one instance of the
//! plugin, its root context and the HTTP contexts of the requests pinned to
//! it.
//!
//! Invariants:
//! - Guest code runs only with the instance lock held, one call at a time,
//!   and always under an epoch deadline and the memory limiter.
//! - A host function never calls back into the guest's callbacks. What it
//!   asks for (callouts, tick changes, queue wake-ups) is recorded and acted
//!   on after the guest call returns, from a task of its own.
//! - Any failure in a guest call poisons the instance: it takes no more calls
//!   and the pool replaces it; requests still pinned to it fail per their
//!   plugin's fail strategy.

mod grpc;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use wasmtime::{Memory, Store, Trap, TypedFunc};

use super::ProxyWasmModule;
use crate::exchange::Exchange;
use crate::plugin::callout::{CalloutRequest, CalloutResponse};
use crate::plugin::filter::Hooks;
pub use crate::plugin::sandbox::MemoryLimiter;
use crate::plugin::sandbox::classify;
use crate::plugin::{PluginFailure, PluginShared};
pub use grpc::{GrpcKind, GrpcState, MAX_GRPC_OPEN, MAX_GRPC_STREAMS, kind_of};

pub enum ContextKind {
    Root,
    Http(Arc<Exchange>),
}

/// Everything host functions can reach from inside a guest call.
pub struct HostState {
    pub limiter: MemoryLimiter,
    pub plugin: Arc<PluginShared>,
    pub memory: Option<Memory>,
    pub allocator: Option<TypedFunc<i32, i32>>,
    pub contexts: HashMap<u32, ContextKind>,
    /// The context host functions act for; set before each callback and by
    /// `proxy_set_effective_context`.
    pub current: u32,
    pub root_id: u32,
    pub tick_period: Option<Duration>,
    pub tick_changed: bool,
    pub pending_callouts: Vec<(u32, u32, CalloutRequest)>,
    pub next_callout_token: u32,
    /// The answer `proxy_on_http_call_response` may read.
    pub call_response: Option<CalloutResponse>,
    pub self_ref: Weak<Instance>,
    /// `set_property` values stored outside any request.
    pub root_properties: HashMap<String, Vec<u8>>,
    /// What the plugin wrote to stdout or stderr, until a newline.
    pub stdio_line: Vec<u8>,
    pub env: Vec<(String, String)>,
    /// gRPC calls and streams this VM has open.
    pub grpc: GrpcState,
}

impl HostState {
    pub fn current_exchange(&self) -> Option<Arc<Exchange>> {
        match self.contexts.get(&self.current) {
            Some(ContextKind::Http(ex)) => Some(ex.clone()),
            _ => None,
        }
    }
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

struct Exports {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    on_http_call_response: Option<CallResponseFn>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    grpc: grpc::GrpcExports,
}

struct Inner {
    store: Store<HostState>,
    exports: Exports,
    next_id: u32,
}

pub struct Instance {
    inner: Mutex<Inner>,
    poisoned: AtomicBool,
    /// Guest calls running or waiting for the lock: the pool sends a new
    /// request elsewhere while this is not zero.
    in_call: AtomicUsize,
    /// Guest calls made (every entry into the module), for tests.
    #[cfg(test)]
    pub calls: AtomicUsize,
    /// The http callbacks the module exports; the others return Continue
    /// without entering the VM.
    hooks: Hooks,
    finishes: bool,
    tick_generation: AtomicU64,
    pub shared: Arc<PluginShared>,
}

/// The http callbacks the pipeline drives.
#[derive(Debug, Clone, Copy)]
pub enum Callback {
    RequestHeaders { headers: usize, eos: bool },
    RequestBody { size: usize, eos: bool },
    RequestTrailers { trailers: usize },
    ResponseHeaders { headers: usize, eos: bool },
    ResponseBody { size: usize, eos: bool },
    ResponseTrailers { trailers: usize },
}

impl Callback {
    pub fn hook(self) -> Hooks {
        match self {
            Callback::RequestHeaders { .. } => Hooks::REQUEST_HEADERS,
            Callback::RequestBody { .. } => Hooks::REQUEST_BODY,
            Callback::RequestTrailers { .. } => Hooks::REQUEST_TRAILERS,
            Callback::ResponseHeaders { .. } => Hooks::RESPONSE_HEADERS,
            Callback::ResponseBody { .. } => Hooks::RESPONSE_BODY,
            Callback::ResponseTrailers { .. } => Hooks::RESPONSE_TRAILERS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Callback::RequestHeaders { .. } => "proxy_on_request_headers",
            Callback::RequestBody { .. } => "proxy_on_request_body",
            Callback::RequestTrailers { .. } => "proxy_on_request_trailers",
            Callback::ResponseHeaders { .. } => "proxy_on_response_headers",
            Callback::ResponseBody { .. } => "proxy_on_response_body",
            Callback::ResponseTrailers { .. } => "proxy_on_response_trailers",
        }
    }
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Failed(PluginFailure),
    #[error("proxy_on_vm_start returned false")]
    VmStartRejected,
    #[error("proxy_on_configure returned false: the plugin rejected its configuration")]
    ConfigureRejected,
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    #[error("export `{name}` has the wrong signature: {reason}")]
    BadExport { name: &'static str, reason: String },
    #[error("the module does not export `proxy_on_context_create`")]
    MissingContextCreate,
}

const ROOT_CONTEXT_ID: u32 = 1;

impl crate::plugin::pool::Poisonable for Instance {
    fn is_poisoned(&self) -> bool {
        Instance::is_poisoned(self)
    }
    fn in_call(&self) -> bool {
        self.in_call.load(Ordering::Acquire) != 0
    }
}

/// Counts a guest call from before it waits for the lock until it is done.
struct InCall<'a>(&'a AtomicUsize);

impl<'a> InCall<'a> {
    fn enter(n: &'a AtomicUsize) -> InCall<'a> {
        n.fetch_add(1, Ordering::AcqRel);
        InCall(n)
    }
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Instance {
    /// Instantiates the module and runs the plugin's start-up: its
    /// initializer, the root context, `on_vm_start` and `on_configure`.
    pub fn start(
        module: &ProxyWasmModule,
        shared: Arc<PluginShared>,
    ) -> Result<Arc<Instance>, StartError> {
        let state = HostState {
            limiter: MemoryLimiter {
                max_bytes: shared.limits.memory_limit_bytes,
                refused: false,
            },
            plugin: shared.clone(),
            memory: None,
            allocator: None,
            contexts: HashMap::from([(ROOT_CONTEXT_ID, ContextKind::Root)]),
            current: ROOT_CONTEXT_ID,
            root_id: ROOT_CONTEXT_ID,
            tick_period: None,
            tick_changed: false,
            pending_callouts: Vec::new(),
            next_callout_token: 0,
            call_response: None,
            self_ref: Weak::new(),
            root_properties: HashMap::new(),
            stdio_line: Vec::new(),
            env: shared.env.clone(),
            grpc: GrpcState::default(),
        };
        let mut store = Store::new(module.pre.module().engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(shared.limits.deadline_ticks);
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify_start(&store, e, &shared))?;

        macro_rules! opt {
            ($name:literal) => {
                match instance.get_func(&mut store, $name) {
                    None => None,
                    Some(f) => Some(f.typed(&store).map_err(|e| StartError::BadExport {
                        name: $name,
                        reason: e.to_string(),
                    })?),
                }
            };
        }
        let on_context_create =
            opt!("proxy_on_context_create").ok_or(StartError::MissingContextCreate)?;
        let exports = Exports {
            on_context_create,
            on_vm_start: opt!("proxy_on_vm_start"),
            on_configure: opt!("proxy_on_configure"),
            on_tick: opt!("proxy_on_tick"),
            on_request_headers: opt!("proxy_on_request_headers"),
            on_request_body: opt!("proxy_on_request_body"),
            on_request_trailers: opt!("proxy_on_request_trailers"),
            on_response_headers: opt!("proxy_on_response_headers"),
            on_response_body: opt!("proxy_on_response_body"),
            on_response_trailers: opt!("proxy_on_response_trailers"),
            on_log: opt!("proxy_on_log"),
            on_done: opt!("proxy_on_done"),
            on_delete: opt!("proxy_on_delete"),
            on_http_call_response: opt!("proxy_on_http_call_response"),
            on_queue_ready: opt!("proxy_on_queue_ready"),
            grpc: grpc::GrpcExports::lookup(&instance, &mut store)?,
        };
        let init: Option<TypedFunc<(), ()>> = opt!("_initialize");
        let start: Option<TypedFunc<(), ()>> = if init.is_none() { opt!("_start") } else { None };
        let main: Option<TypedFunc<(i32, i32), i32>> = match instance.get_func(&mut store, "main") {
            Some(f) => f.typed(&store).ok(),
            None => None,
        };

        let inst = Arc::new(Instance {
            inner: Mutex::new(Inner {
                store,
                exports,
                next_id: ROOT_CONTEXT_ID + 1,
            }),
            poisoned: AtomicBool::new(false),
            in_call: AtomicUsize::new(0),
            #[cfg(test)]
            calls: AtomicUsize::new(0),
            hooks: module.hooks,
            finishes: module.finishes,
            tick_generation: AtomicU64::new(0),
            shared: shared.clone(),
        });
        inst.lock().store.data_mut().self_ref = Arc::downgrade(&inst);

        let vm_config_len = shared.vm_config.len() as i32;
        let plugin_config_len = shared.plugin_config.len() as i32;
        let (vm_ok, configured) = inst
            .call(ROOT_CONTEXT_ID, |inner| {
                if let Some(f) = init.or(start) {
                    f.call(&mut inner.store, ())?;
                }
                if let Some(f) = main {
                    f.call(&mut inner.store, (0, 0))?;
                }
                let store = &mut inner.store;
                inner
                    .exports
                    .on_context_create
                    .call(&mut *store, (ROOT_CONTEXT_ID as i32, 0))?;
                let vm_ok = match &inner.exports.on_vm_start {
                    Some(f) => f.call(&mut *store, (ROOT_CONTEXT_ID as i32, vm_config_len))? != 0,
                    None => true,
                };
                if !vm_ok {
                    return Ok((false, false));
                }
                let configured = match &inner.exports.on_configure {
                    Some(f) => {
                        f.call(&mut *store, (ROOT_CONTEXT_ID as i32, plugin_config_len))? != 0
                    }
                    None => true,
                };
                Ok((vm_ok, configured))
            })
            .map_err(StartError::Failed)?;
        if !vm_ok {
            return Err(StartError::VmStartRejected);
        }
        if !configured {
            return Err(StartError::ConfigureRejected);
        }
        Ok(inst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Runs `f` as one guest call for context `ctx`, under the deadline and
    /// memory limit, then carries out what the guest asked for. Whether the
    /// instance already failed is decided under the same lock as the call,
    /// and a failure poisons it before the lock is released, so no call ever
    /// runs on a VM another call left broken.
    fn call<R>(
        &self,
        ctx: u32,
        f: impl FnOnce(&mut Inner) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        let in_call = InCall::enter(&self.in_call);
        let mut inner = self.lock();
        if self.is_poisoned() {
            return Err(PluginFailure::InstanceLost);
        }
        #[cfg(test)]
        self.calls.fetch_add(1, Ordering::Relaxed);
        let deadline = self.shared.limits.deadline_ticks;
        inner.store.set_epoch_deadline(deadline);
        {
            let data = inner.store.data_mut();
            data.current = ctx;
            data.limiter.refused = false;
        }
        let result = f(&mut inner);
        let data = inner.store.data_mut();
        let callouts = std::mem::take(&mut data.pending_callouts);
        let grpc = data.grpc.take_pending();
        let tick = if std::mem::take(&mut data.tick_changed) {
            Some(data.tick_period)
        } else {
            None
        };
        let refused = data.limiter.refused;
        if result.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        drop(inner);
        drop(in_call);
        match result {
            Ok(r) => {
                for (ctx, token, req) in callouts {
                    self.spawn_callout(ctx, token, req);
                }
                if !grpc.is_empty() {
                    self.start_grpc(grpc);
                }
                if let Some(period) = tick {
                    self.restart_ticker(period);
                }
                Ok(r)
            }
            Err(e) => {
                let failure = classify(&e, refused, &self.shared);
                self.shared.report_failure(&failure);
                Err(failure)
            }
        }
    }

    pub fn create_http_context(&self, exchange: Arc<Exchange>) -> Result<u32, PluginFailure> {
        let mut created = None;
        let result = self.call(0, |inner| {
            let id = inner.next_id;
            // Skip ids still in use after the counter wraps.
            inner.next_id = inner.next_id.checked_add(1).unwrap_or(ROOT_CONTEXT_ID + 1);
            let data = inner.store.data_mut();
            data.contexts.insert(id, ContextKind::Http(exchange));
            data.current = id;
            created = Some(id);
            inner
                .exports
                .on_context_create
                .call(&mut inner.store, (id as i32, ROOT_CONTEXT_ID as i32))
        });
        match (result, created) {
            (Ok(()), Some(id)) => Ok(id),
            (Ok(()), None) => Err(PluginFailure::InstanceLost),
            (Err(failure), id) => {
                if let Some(id) = id {
                    self.lock().store.data_mut().contexts.remove(&id);
                }
                Err(failure)
            }
        }
    }

    /// Runs one http callback; returns the guest's action code. One the
    /// module does not export continues without touching the VM (a VM that
    /// failed is noticed at the next callback that does run).
    pub fn http_callback(&self, ctx: u32, cb: Callback) -> Result<i32, PluginFailure> {
        if !self.hooks.any(cb.hook()) {
            return Ok(0);
        }
        self.call(ctx, |inner| {
            let e = &inner.exports;
            let s = &mut inner.store;
            let c = ctx as i32;
            let r = match cb {
                Callback::RequestHeaders { headers, eos } => e
                    .on_request_headers
                    .as_ref()
                    .map(|f| f.call(s, (c, headers as i32, eos as i32))),
                Callback::RequestBody { size, eos } => e
                    .on_request_body
                    .as_ref()
                    .map(|f| f.call(s, (c, size as i32, eos as i32))),
                Callback::RequestTrailers { trailers } => e
                    .on_request_trailers
                    .as_ref()
                    .map(|f| f.call(s, (c, trailers as i32))),
                Callback::ResponseHeaders { headers, eos } => e
                    .on_response_headers
                    .as_ref()
                    .map(|f| f.call(s, (c, headers as i32, eos as i32))),
                Callback::ResponseBody { size, eos } => e
                    .on_response_body
                    .as_ref()
                    .map(|f| f.call(s, (c, size as i32, eos as i32))),
                Callback::ResponseTrailers { trailers } => e
                    .on_response_trailers
                    .as_ref()
                    .map(|f| f.call(s, (c, trailers as i32))),
            };
            r.unwrap_or(Ok(0))
        })
    }

    /// Ends an http context: `on_log`, `on_done`, `on_delete`.
    pub fn finish_http_context(&self, ctx: u32) {
        if self.finishes && !self.is_poisoned() {
            let _ = self.call(ctx, |inner| {
                let s = &mut inner.store;
                if let Some(f) = &inner.exports.on_log {
                    f.call(&mut *s, ctx as i32)?;
                }
                if let Some(f) = &inner.exports.on_done {
                    f.call(&mut *s, ctx as i32)?;
                }
                if let Some(f) = &inner.exports.on_delete {
                    f.call(&mut *s, ctx as i32)?;
                }
                Ok(())
            });
        }
        self.lock().store.data_mut().contexts.remove(&ctx);
    }

    fn spawn_callout(&self, ctx: u32, token: u32, req: CalloutRequest) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(plugin = %self.shared.name, "http callout made outside the runtime; dropped");
            return;
        };
        let weak = self.lock().store.data().self_ref.clone();
        let callouts = self.shared.callouts.clone();
        rt.spawn(async move {
            let resp = callouts.call(req).await;
            if let Some(inst) = weak.upgrade() {
                inst.deliver_call_response(ctx, token, resp);
            }
        });
    }

    /// Hands a callout's answer to the context that asked for it. Storing
    /// the answer and running `proxy_on_http_call_response` are one guest
    /// call under one lock, so the `get_http_call_response_*` reads of that
    /// callback see this token's answer and never another callout's that
    /// finished at the same moment. A callback that fails leaves nothing
    /// behind on the request: what it changed is rolled back before the
    /// failure is reported to the pipeline.
    fn deliver_call_response(&self, ctx: u32, token: u32, resp: CalloutResponse) {
        let counts = (resp.headers.len(), resp.body.len(), resp.trailers.len());
        let exchange = match self.lock().store.data().contexts.get(&ctx) {
            None => return, // the request is gone
            Some(ContextKind::Root) => None,
            Some(ContextKind::Http(ex)) => Some(ex.clone()),
        };
        let result = self.call(ctx, |inner| {
            if !inner.store.data().contexts.contains_key(&ctx) {
                return Ok(());
            }
            // Taken under the instance lock, so a callback of this context
            // that ran just before is part of what a failure keeps.
            let before = exchange.as_ref().map(|ex| ex.lock().snapshot(true));
            inner.store.data_mut().call_response = Some(resp);
            // Envoy answers callouts on the root context, and SDKs route by
            // that (AssemblyScript's looks the token up on the root context
            // it is given); host calls still act for the calling context
            // until the guest switches.
            let root = inner.store.data().root_id;
            let r = match &inner.exports.on_http_call_response {
                Some(f) => f.call(
                    &mut inner.store,
                    (
                        root as i32,
                        token as i32,
                        counts.0 as i32,
                        counts.1 as i32,
                        counts.2 as i32,
                    ),
                ),
                None => Ok(()),
            };
            inner.store.data_mut().call_response = None;
            if r.is_err()
                && let (Some(ex), Some(before)) = (&exchange, before)
            {
                ex.lock().restore(before);
            }
            r
        });
        if let Some(ex) = exchange {
            if let Err(f) = result {
                ex.lock().async_failure = Some((self.shared.name.clone(), f));
            }
            ex.wake();
        }
    }

    /// Tells the queue's owner that it has data.
    pub fn notify_queue(self: &Arc<Self>, root: u32, queue_id: u32) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inst = self.clone();
        rt.spawn(async move {
            let _ = inst.call(root, |inner| match &inner.exports.on_queue_ready {
                Some(f) => f.call(&mut inner.store, (root as i32, queue_id as i32)),
                None => Ok(()),
            });
        });
    }

    fn restart_ticker(&self, period: Option<Duration>) {
        let generation = self.tick_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let Some(period) = period else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = self.lock().store.data().self_ref.clone();
        rt.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(inst) = weak.upgrade() else { return };
                if inst.is_poisoned() || inst.tick_generation.load(Ordering::Acquire) != generation
                {
                    return;
                }
                let root = inst.lock().store.data().root_id;
                let r = inst.call(root, |inner| match &inner.exports.on_tick {
                    Some(f) => f.call(&mut inner.store, root as i32),
                    None => Ok(()),
                });
                if r.is_err() {
                    return;
                }
            }
        });
    }
}

fn classify_start(
    store: &Store<HostState>,
    e: wasmtime::Error,
    shared: &PluginShared,
) -> StartError {
    let refused = store.data().limiter.refused;
    if refused || e.downcast_ref::<Trap>().is_some() {
        StartError::Failed(classify(&e, refused, shared))
    } else {
        StartError::Instantiate(format!("{e:#}"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use bytes::Bytes;
    use http::{HeaderMap, Method};

    use super::*;
    use crate::config::SandboxConfig;
    use crate::exchange::{RequestHead, RequestInfo};
    use crate::metrics::Metrics;
    use crate::plugin::callout::Callouts;
    use crate::plugin::engine::Engine;

    /// The plugin `t` of namespace `ns`, with no configuration.
    pub(crate) fn test_shared(engine: &Engine) -> Arc<PluginShared> {
        let metrics = Arc::new(Metrics::new());
        Arc::new(PluginShared {
            name: "t".into(),
            namespace: "ns".into(),
            root_id: String::new(),
            vm_id: String::new(),
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            env: Vec::new(),
            limits: engine.limits.clone(),
            shared: Arc::default(),
            callouts: Arc::new(Callouts::new(Default::default())),
            metrics: metrics.plugin_metrics("ns", "t"),
            global_metrics: metrics,
            log_tail: Mutex::default(),
            limits_warned: Default::default(),
        })
    }

    /// A Proxy-Wasm module small enough to read: request headers trap when
    /// `end_of_stream` is false, and a callout answer's body is copied into
    /// request header `x-answer` of the context it was delivered to.
    const GUEST: &str = r#"
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 1024))
  (data (i32.const 16) "x-answer")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then unreachable))
    (i32.const 0))
  (func (export "proxy_on_http_call_response")
    (param i32 i32 i32) (param $body i32) (param i32)
    (drop (call $get_buffer (i32.const 4) (i32.const 0) (local.get $body)
      (i32.const 32) (i32.const 36)))
    (drop (call $add_header (i32.const 0) (i32.const 16) (i32.const 8)
      (i32.load (i32.const 32)) (i32.load (i32.const 36)))))
)
"#;

    fn start() -> Arc<Instance> {
        let engine = Engine::new(&SandboxConfig::default()).unwrap();
        let bytes = wat::parse_str(GUEST).unwrap();
        let module = wasmtime::Module::new(&engine.wasm, bytes).unwrap();
        let module = ProxyWasmModule::new(&engine.proxy_wasm_linker, &module).unwrap();
        Instance::start(&module, test_shared(&engine)).unwrap()
    }

    fn exchange() -> Arc<Exchange> {
        let addr = "127.0.0.1:1".parse().unwrap();
        Arc::new(Exchange::new(
            RequestInfo {
                id: "1".into(),
                namespace: "ns".into(),
                service_hostname: "s".into(),
                service_name: "s".into(),
                source: addr,
                destination: addr,
                protocol: "HTTP/1.1",
                peer: None,
                start: SystemTime::now(),
            },
            RequestHead {
                method: Method::GET,
                scheme: "http".into(),
                authority: "s".into(),
                path: "/".into(),
                headers: HeaderMap::new(),
            },
        ))
    }

    fn answer(body: &str) -> CalloutResponse {
        CalloutResponse {
            headers: vec![(b":status".to_vec(), b"200".to_vec())],
            body: Bytes::copy_from_slice(body.as_bytes()),
            trailers: Vec::new(),
        }
    }

    fn answers(ex: &Exchange) -> Vec<String> {
        ex.lock()
            .request
            .headers
            .get_all("x-answer")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn each_context_reads_the_answer_delivered_to_it() {
        let inst = start();
        let contexts: Vec<(u32, Arc<Exchange>)> = (0..4)
            .map(|_| {
                let ex = exchange();
                (inst.create_http_context(ex.clone()).unwrap(), ex)
            })
            .collect();
        // Deliveries for different contexts race on one instance.
        std::thread::scope(|s| {
            for (i, (ctx, _)) in contexts.iter().enumerate() {
                let inst = inst.clone();
                let ctx = *ctx;
                s.spawn(move || {
                    for n in 0..50 {
                        inst.deliver_call_response(ctx, n, answer(&format!("ctx{i}")));
                    }
                });
            }
        });
        for (i, (_, ex)) in contexts.iter().enumerate() {
            let got = answers(ex);
            assert_eq!(got.len(), 50);
            assert!(
                got.iter().all(|a| *a == format!("ctx{i}")),
                "context {i} read another context's answer: {got:?}"
            );
        }
        assert!(inst.lock().store.data().call_response.is_none());
    }

    #[test]
    fn an_answer_for_a_finished_context_is_dropped() {
        let inst = start();
        let ex = exchange();
        let ctx = inst.create_http_context(ex.clone()).unwrap();
        inst.finish_http_context(ctx);
        inst.deliver_call_response(ctx, 1, answer("late"));
        assert!(answers(&ex).is_empty());
        assert!(!inst.is_poisoned());
    }

    #[test]
    fn a_trap_poisons_the_vm_for_every_context_on_it() {
        let inst = start();
        let a = inst.create_http_context(exchange()).unwrap();
        let b = inst.create_http_context(exchange()).unwrap();
        let ok = Callback::RequestHeaders {
            headers: 0,
            eos: true,
        };
        let trap = Callback::RequestHeaders {
            headers: 0,
            eos: false,
        };
        assert_eq!(inst.http_callback(b, ok), Ok(0));
        assert!(matches!(
            inst.http_callback(a, trap),
            Err(PluginFailure::Trap(_))
        ));
        assert!(inst.is_poisoned());
        // The other request pinned to this VM fails at its next callback,
        // without the guest running again.
        assert_eq!(inst.http_callback(b, ok), Err(PluginFailure::InstanceLost));
        assert_eq!(
            inst.create_http_context(exchange()),
            Err(PluginFailure::InstanceLost)
        );
    }

    #[test]
    fn a_failed_callout_callback_leaves_nothing_behind() {
        let inst = start();
        let ex = exchange();
        let ctx = inst.create_http_context(ex.clone()).unwrap();
        // Poisoned by another context's trap: the delivery fails, the
        // request hears of it and keeps its headers as they were.
        let other = inst.create_http_context(exchange()).unwrap();
        let _ = inst.http_callback(
            other,
            Callback::RequestHeaders {
                headers: 0,
                eos: false,
            },
        );
        inst.deliver_call_response(ctx, 1, answer("after the crash"));
        let st = ex.lock();
        assert!(st.request.headers.is_empty());
        assert_eq!(
            st.async_failure.as_ref().map(|(_, f)| f.clone()),
            Some(PluginFailure::InstanceLost)
        );
    }
}
