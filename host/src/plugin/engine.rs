//! The one wasmtime configuration Wayplug supports.
//!
//! - Pooling allocator: instance slots are reserved up front, so starting a
//!   replacement instance costs microseconds, not an mmap storm.
//! - Epoch interruption: a background thread advances the epoch every
//!   `TICK`; each guest call gets a deadline in ticks. Cheaper than fuel, and
//!   a looping plugin is stopped within one tick of its budget.
//! - Linear memory is capped per instance by the store's limiter (the
//!   pooling allocator's cap is the hard ceiling).
//! - Two compilers, each with its own wasmtime engine: Cranelift for the
//!   code plugins run on, and (with tiered compilation) Winch for large
//!   plugins' first seconds, since it compiles several times faster. Code
//!   from one engine only runs in stores and linkers of that engine, so each
//!   tier has its own linkers; both get the same sandbox settings and the
//!   same epoch ticks. The Winch engine is made at the first plugin large
//!   enough to start on it, so a waypoint that never tiers does not carry
//!   it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{
    Config, InstanceAllocationStrategy, Linker, OptLevel, PoolingAllocationConfig, Strategy,
};

use super::component::{self, ComponentState};
use super::proxywasm::{self, HostState};
use super::{Error, Limits};
use crate::config::{Compiler, SandboxConfig};

pub const TICK: Duration = Duration::from_millis(5);

/// Core instances and tables reserved per plugin instance.
const PARTS_PER_INSTANCE: u32 = 4;

pub struct Engine {
    pub wasm: wasmtime::Engine,
    pub proxy_wasm_linker: Linker<HostState>,
    pub component_linker: wasmtime::component::Linker<ComponentState>,
    /// Which plugins start on the baseline compiler; `None` when tiered
    /// compilation is off.
    pub tiering: Option<Tiering>,
    /// The baseline compiler's engine, once a plugin has needed it
    /// (`None` inside when it cannot be made on this machine). Shared with
    /// the epoch thread.
    baseline: Arc<OnceLock<Option<Baseline>>>,
    /// The sandbox the baseline engine is made for.
    sandbox: SandboxConfig,
    pub limits: Limits,
    stop: Arc<AtomicBool>,
}

/// The plugins that start on baseline code.
#[derive(Debug, Clone, Copy)]
pub struct Tiering {
    /// Modules and components at least this large start there.
    pub min_bytes: usize,
    /// Whether they then move to optimized code (`compiler: tiered`).
    pub optimize: bool,
}

/// Winch: quick to compile, for plugins that then move to Cranelift.
pub struct Baseline {
    pub wasm: wasmtime::Engine,
    pub proxy_wasm_linker: Linker<HostState>,
    pub component_linker: wasmtime::component::Linker<ComponentState>,
}

impl Engine {
    /// The baseline tier, when `engine` is its engine.
    fn baseline_of(&self, engine: &wasmtime::Engine) -> Option<&Baseline> {
        match self.baseline.get() {
            Some(Some(b)) if wasmtime::Engine::same(engine, &b.wasm) => Some(b),
            _ => None,
        }
    }

    /// The component linker for code compiled by `engine` (either tier).
    pub fn component_linker_for(
        &self,
        engine: &wasmtime::Engine,
    ) -> &wasmtime::component::Linker<ComponentState> {
        self.baseline_of(engine)
            .map_or(&self.component_linker, |b| &b.component_linker)
    }

    /// The Proxy-Wasm linker for code compiled by `engine` (either tier).
    pub fn proxy_wasm_linker_for(&self, engine: &wasmtime::Engine) -> &Linker<HostState> {
        self.baseline_of(engine)
            .map_or(&self.proxy_wasm_linker, |b| &b.proxy_wasm_linker)
    }

    /// Whether `engine` is the baseline tier's.
    pub fn is_baseline(&self, engine: &wasmtime::Engine) -> bool {
        self.baseline_of(engine).is_some()
    }

    /// The baseline compiler's engine, made at the first call; `None` when
    /// tiered compilation is off or Winch cannot run here (then plugins are
    /// compiled optimized, as with `compiler: optimizing`).
    pub fn baseline(&self) -> Option<&Baseline> {
        self.tiering?;
        self.baseline
            .get_or_init(|| {
                let made = wasmtime::Engine::new(&wasm_config(&self.sandbox, Strategy::Winch))
                    .and_then(|wasm| {
                        let proxy_wasm_linker = proxywasm::linker(&wasm)?;
                        let component_linker = component::linker(&wasm)?;
                        Ok(Baseline {
                            wasm,
                            proxy_wasm_linker,
                            component_linker,
                        })
                    });
                match made {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "the baseline compiler is not available; plugins are compiled optimized");
                        None
                    }
                }
            })
            .as_ref()
    }
}

fn engine_error(e: wasmtime::Error) -> Error {
    Error::Engine(format!("{e:#}"))
}

/// One engine's settings: the sandbox's, compiled by `strategy`.
fn wasm_config(sandbox: &SandboxConfig, strategy: Strategy) -> Config {
    let memory_limit = sandbox.memory_limit_bytes();
    let mut pool = PoolingAllocationConfig::default();
    let slots = sandbox.max_instances;
    // `maxInstances` counts plugin instances, each with one linear
    // memory (the costly part). A component instance is several core
    // instances and tables (a Rust guest built for wasip2: three core
    // modules, two tables), so those pools get room for that many.
    let parts = slots.saturating_mul(PARTS_PER_INSTANCE);
    pool.total_core_instances(parts)
        .total_memories(slots)
        .total_tables(parts)
        .total_component_instances(slots)
        .max_memory_size(memory_limit)
        // Keep a few warm slots' pages around for quick reuse.
        .max_unused_warm_slots(slots.min(16));
    let mut config = Config::new();
    config
        .strategy(strategy)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(1 << 20)
        .wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl Engine {
    pub fn new(sandbox: &SandboxConfig) -> Result<Arc<Engine>, Error> {
        let memory_limit = sandbox.memory_limit_bytes();
        let wasm = wasmtime::Engine::new(&wasm_config(sandbox, Strategy::Cranelift))
            .map_err(engine_error)?;
        let proxy_wasm_linker = proxywasm::linker(&wasm).map_err(engine_error)?;
        let component_linker = component::linker(&wasm).map_err(engine_error)?;
        let tiering = sandbox.tier_min_bytes().map(|min_bytes| Tiering {
            min_bytes,
            optimize: sandbox.compiler == Compiler::Tiered,
        });
        let baseline: Arc<OnceLock<Option<Baseline>>> = Arc::default();

        let stop = Arc::new(AtomicBool::new(false));
        let ticked = (wasm.clone(), baseline.clone());
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("wayplug-epoch".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticked.0.increment_epoch();
                    if let Some(Some(b)) = ticked.1.get() {
                        b.wasm.increment_epoch();
                    }
                }
            })
            .map_err(|e| Error::Engine(format!("cannot start the epoch thread: {e}")))?;

        let call_timeout = sandbox.call_timeout();
        // One extra tick: the deadline may land just after a tick boundary.
        let deadline_ticks = call_timeout.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1;
        Ok(Arc::new(Engine {
            wasm,
            proxy_wasm_linker,
            component_linker,
            tiering,
            baseline,
            sandbox: sandbox.clone(),
            limits: Limits {
                deadline_ticks,
                call_timeout,
                memory_limit_bytes: memory_limit,
                host: super::sandbox::HostLimits::from_config(sandbox),
            },
            stop,
        }))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
