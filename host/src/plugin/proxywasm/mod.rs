//! Proxy-Wasm ABI 0.2.1 plugins: modules built with the `proxy-wasm` crate
//! or any other Proxy-Wasm SDK run unchanged.
//!
//! A plugin keeps a small pool of long-lived instances (Envoy keeps one VM
//! per worker). A request is pinned to one instance for its lifetime, as an
//! HTTP context inside it, and each callback locks that instance only for the
//! duration of the guest call. Checkout prefers the calling worker's own VM
//! and never waits for another request's guest code (see `plugin::pool`);
//! callbacks the module does not export are never entered. As in Envoy, the requests pinned to a VM share
//! its fate: when one of them makes it fail, the others fail at their next
//! callback on it (each per its own plugin's failStrategy, FAIL_RELOAD
//! moving the request to the slot's replacement).

mod abi;
pub mod decision;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod guard;
mod instance;
#[cfg(test)]
mod link_tests;
mod maps;
mod memory;
mod properties;
mod wasi;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use wasmtime::{InstancePre, Linker, Module};

use instance::Callback;
pub use instance::{HostState, Instance, StartError};

use super::filter::{FilterStatus, Hooks, HttpFilter};
use super::pool::InstancePool;
use super::{PluginFailure, PluginShared};
use crate::exchange::Exchange;

/// Builds the linker every Proxy-Wasm plugin links against.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    abi::add_to_linker(&mut linker)?;
    wasi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// A compiled, linked plugin module, ready to instantiate.
pub struct ProxyWasmModule {
    pre: InstancePre<HostState>,
    hooks: Hooks,
    /// Exports any of `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    finishes: bool,
}

/// The http callbacks `module` exports.
fn hooks_of(module: &Module) -> (Hooks, bool) {
    let mut hooks = Hooks::NONE;
    let mut finishes = false;
    for e in module.exports() {
        hooks = hooks.with(match e.name() {
            "proxy_on_request_headers" => Hooks::REQUEST_HEADERS,
            "proxy_on_request_body" => Hooks::REQUEST_BODY,
            "proxy_on_request_trailers" => Hooks::REQUEST_TRAILERS,
            "proxy_on_response_headers" => Hooks::RESPONSE_HEADERS,
            "proxy_on_response_body" => Hooks::RESPONSE_BODY,
            "proxy_on_response_trailers" => Hooks::RESPONSE_TRAILERS,
            "proxy_on_log" | "proxy_on_done" | "proxy_on_delete" => {
                finishes = true;
                Hooks::NONE
            }
            _ => Hooks::NONE,
        });
    }
    (hooks, finishes)
}

impl ProxyWasmModule {
    /// Checks that the module speaks Proxy-Wasm 0.2.x and that every import
    /// is one this host provides.
    pub fn new(linker: &Linker<HostState>, module: &Module) -> Result<ProxyWasmModule, String> {
        let speaks = module.exports().any(|e| {
            matches!(
                e.name(),
                "proxy_abi_version_0_2_1" | "proxy_abi_version_0_2_0"
            )
        });
        if !speaks {
            return Err(
                "not a Proxy-Wasm module: it exports neither proxy_abi_version_0_2_1 nor proxy_abi_version_0_2_0"
                    .into(),
            );
        }
        let mut linker = linker.clone();
        linker.allow_shadowing(true);
        wasi::define_missing(&mut linker, module)?;
        let pre = linker
            .instantiate_pre(module)
            .map_err(|e| format!("cannot link the module: {e}"))?;
        let (hooks, finishes) = hooks_of(module);
        Ok(ProxyWasmModule {
            pre,
            hooks,
            finishes,
        })
    }

    /// The http callbacks the module exports.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }
}

/// A loaded Proxy-Wasm plugin with its instance pool.
pub struct ProxyWasmPlugin {
    inner: Arc<Loaded>,
}

/// What a plugin's filters need to replace their instance.
struct Loaded {
    /// The code new instances start from; replaced once when the plugin
    /// moves from baseline to optimized code.
    module: ArcSwap<ProxyWasmModule>,
    /// `module` is the baseline compiler's code.
    baseline: AtomicBool,
    /// The http callbacks the module exports (the same on every tier).
    hooks: Hooks,
    shared: Arc<PluginShared>,
    pool: InstancePool<Instance>,
    /// `wayplug_plugin_vm_contended`: checkouts that found every VM busy.
    contended: prometheus_client::metrics::counter::Counter,
}

impl Loaded {
    fn start(&self) -> Result<Arc<Instance>, PluginFailure> {
        Instance::start(&self.module.load(), self.shared.clone())
            .map_err(|e| PluginFailure::Start(e.to_string()))
    }
}

impl ProxyWasmPlugin {
    /// Starts the first instance now, so a plugin that cannot start or
    /// rejects its configuration never gets loaded. `baseline`: `module` is
    /// the baseline compiler's code, to be replaced by [`Self::upgrade`].
    pub fn new(
        module: ProxyWasmModule,
        baseline: bool,
        shared: Arc<PluginShared>,
        instances: usize,
    ) -> Result<Self, StartError> {
        let first = Instance::start(&module, shared.clone())?;
        let contended = shared
            .global_metrics
            .vm_contended(&shared.namespace, &shared.name);
        Ok(ProxyWasmPlugin {
            inner: Arc::new(Loaded {
                hooks: module.hooks,
                module: ArcSwap::from_pointee(module),
                baseline: AtomicBool::new(baseline),
                shared,
                pool: InstancePool::new(first, instances),
                contended,
            }),
        })
    }

    /// The http callbacks the module exports.
    pub fn hooks(&self) -> Hooks {
        self.inner.hooks
    }

    /// Whether new instances start from the baseline compiler's code.
    pub fn on_baseline(&self) -> bool {
        self.inner.baseline.load(Ordering::Acquire)
    }

    /// Moves the plugin to `module` (the same bytes compiled by the
    /// optimizing compiler), linked by `linker`: every VM is replaced by one
    /// started from the new code, as a reload would (`on_vm_start` and
    /// `on_configure` run again; what a VM kept in its own memory starts
    /// over, shared data and queues are the host's and stay). Requests
    /// under way finish on the VM they were pinned to. Runs guest code:
    /// call it off the request workers, inside the runtime (a VM may set a
    /// tick or make a call while it starts).
    pub fn upgrade(
        &self,
        linker: &Linker<HostState>,
        module: &Module,
    ) -> Result<(), PluginFailure> {
        let module = ProxyWasmModule::new(linker, module).map_err(PluginFailure::Start)?;
        // A VM must start from the new code before any VM is replaced:
        // should it fail, the plugin stays wholly on the old code.
        let first = Instance::start(&module, self.inner.shared.clone())
            .map_err(|e| PluginFailure::Start(e.to_string()))?;
        let old = self.inner.module.swap(Arc::new(module));
        self.inner.baseline.store(false, Ordering::Release);
        let mut first = Some(first);
        let renewed = self.inner.pool.renew(|| match first.take() {
            Some(vm) => Ok(vm),
            None => self.inner.start(),
        });
        if let Err(e) = renewed {
            // The slots renewed so far keep their optimized VMs; the rest
            // go on serving from baseline code, and new VMs start from it.
            self.inner.module.store(old);
            self.inner.baseline.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    /// A filter for a new request, pinned to an instance from the pool (a
    /// failed one is replaced first). With `reload_on_failure`, a context
    /// that cannot be created is retried once on a replacement of that same
    /// slot.
    pub fn new_filter(
        &self,
        exchange: &Arc<Exchange>,
        reload_on_failure: bool,
    ) -> Result<Box<dyn HttpFilter>, PluginFailure> {
        let loaded = &self.inner;
        let checkout = loaded.pool.checkout(|| loaded.start())?;
        if checkout.contended {
            loaded.contended.inc();
        }
        let (slot, mut instance) = (checkout.slot, checkout.instance);
        let ctx = match instance.create_http_context(exchange.clone()) {
            Ok(ctx) => ctx,
            Err(_) if reload_on_failure => {
                instance = loaded.pool.replace(slot, &instance, || loaded.start())?;
                instance.create_http_context(exchange.clone())?
            }
            Err(failure) => return Err(failure),
        };
        Ok(Box::new(ProxyWasmFilter {
            plugin: loaded.clone(),
            slot,
            instance,
            ctx,
            exchange: exchange.clone(),
            finished: false,
        }))
    }

    pub fn shared(&self) -> &PluginShared {
        &self.inner.shared
    }

    /// Instances alive now (for the config dump and tests).
    pub fn live_instances(&self) -> usize {
        self.inner.pool.live()
    }

    /// Guest calls made on the instances alive now.
    #[cfg(test)]
    pub fn guest_calls(&self) -> usize {
        self.inner
            .pool
            .sum(|i| i.calls.load(std::sync::atomic::Ordering::Relaxed))
    }
}

struct ProxyWasmFilter {
    plugin: Arc<Loaded>,
    /// The pool slot `instance` came from: FAIL_RELOAD renews this one.
    slot: usize,
    instance: Arc<Instance>,
    ctx: u32,
    exchange: Arc<Exchange>,
    finished: bool,
}

impl ProxyWasmFilter {
    fn run(&mut self, cb: Callback) -> Result<FilterStatus, PluginFailure> {
        let action = self.instance.http_callback(self.ctx, cb)?;
        // Continue is 0; every other code stops iteration in some way.
        Ok(if action == 0 {
            FilterStatus::Continue
        } else {
            FilterStatus::Pause
        })
    }
}

/// Pseudo-headers the host adds to the request map (:authority, :path,
/// :method, :scheme) and to the response map (:status).
const REQUEST_PSEUDO: usize = 4;
const RESPONSE_PSEUDO: usize = 1;

impl HttpFilter for ProxyWasmFilter {
    fn on_request_headers(&mut self, eos: bool) -> Result<FilterStatus, PluginFailure> {
        let headers = self.exchange.lock().request.headers.len() + REQUEST_PSEUDO;
        self.run(Callback::RequestHeaders { headers, eos })
    }

    fn on_request_body(&mut self, size: usize, eos: bool) -> Result<FilterStatus, PluginFailure> {
        self.run(Callback::RequestBody { size, eos })
    }

    fn on_request_trailers(&mut self) -> Result<FilterStatus, PluginFailure> {
        let trailers = self
            .exchange
            .lock()
            .request_trailers
            .as_ref()
            .map_or(0, |t| t.len());
        self.run(Callback::RequestTrailers { trailers })
    }

    fn on_response_headers(&mut self, eos: bool) -> Result<FilterStatus, PluginFailure> {
        let headers = self
            .exchange
            .lock()
            .response
            .as_ref()
            .map_or(0, |r| r.headers.len())
            + RESPONSE_PSEUDO;
        self.run(Callback::ResponseHeaders { headers, eos })
    }

    fn on_response_body(&mut self, size: usize, eos: bool) -> Result<FilterStatus, PluginFailure> {
        self.run(Callback::ResponseBody { size, eos })
    }

    fn on_response_trailers(&mut self) -> Result<FilterStatus, PluginFailure> {
        let trailers = self
            .exchange
            .lock()
            .response_trailers
            .as_ref()
            .map_or(0, |t| t.len());
        self.run(Callback::ResponseTrailers { trailers })
    }

    /// Moves the request to a fresh instance in the same pool slot, as a
    /// new HTTP context there (the failed VM keeps serving nobody).
    fn reload(&mut self) -> Result<(), PluginFailure> {
        let plugin = &self.plugin;
        let fresh = plugin
            .pool
            .replace(self.slot, &self.instance, || plugin.start())?;
        self.instance.finish_http_context(self.ctx);
        self.finished = true;
        let ctx = fresh.create_http_context(self.exchange.clone())?;
        self.instance = fresh;
        self.ctx = ctx;
        self.finished = false;
        Ok(())
    }

    fn finish(&mut self) {
        if !std::mem::replace(&mut self.finished, true) {
            self.instance.finish_http_context(self.ctx);
        }
    }
}

impl Drop for ProxyWasmFilter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxConfig;
    use crate::plugin::engine::Engine;

    /// A module whose `on_vm_start` answers `ok`.
    fn module(engine: &wasmtime::Engine, ok: bool) -> Module {
        let wat = format!(
            r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const {})))"#,
            ok as i32
        );
        Module::new(engine, wat::parse_str(wat).unwrap()).unwrap()
    }

    #[test]
    fn a_plugin_moves_to_optimized_code_only_when_a_vm_starts_from_it() {
        let engine = Engine::new(&SandboxConfig::default()).unwrap();
        let baseline = &engine.baseline().expect("Winch runs here").wasm;
        let linked = ProxyWasmModule::new(
            engine.proxy_wasm_linker_for(baseline),
            &module(baseline, true),
        )
        .unwrap();
        let shared = instance::tests::test_shared(&engine);
        let plugin = ProxyWasmPlugin::new(linked, true, shared, 2).unwrap();
        let vm = |p: &ProxyWasmPlugin| p.inner.pool.checkout(|| p.inner.start()).unwrap().instance;
        let first = vm(&plugin);
        assert!(plugin.on_baseline());

        // The optimized code's VM refuses to start: nothing moves.
        let refused = plugin.upgrade(&engine.proxy_wasm_linker, &module(&engine.wasm, false));
        assert!(refused.is_err());
        assert!(plugin.on_baseline());
        assert!(Arc::ptr_eq(&vm(&plugin), &first), "the VM was kept");

        // Which slots hold a VM depends on this thread's home slot (the
        // pool's own test covers a slot left empty).
        let started = plugin.live_instances();
        plugin
            .upgrade(&engine.proxy_wasm_linker, &module(&engine.wasm, true))
            .unwrap();
        assert!(!plugin.on_baseline());
        assert_eq!(
            plugin.live_instances(),
            started,
            "only started slots renewed"
        );
        let renewed = vm(&plugin);
        assert!(!Arc::ptr_eq(&renewed, &first), "a fresh VM serves");
        assert!(
            !first.is_poisoned(),
            "a request pinned to the old VM goes on"
        );
        // New VMs (a slot filled later, a failed one replaced) start from
        // the optimized code too.
        let code = plugin.inner.module.load();
        assert!(wasmtime::Engine::same(
            code.pre.module().engine(),
            &engine.wasm
        ));
    }
}
