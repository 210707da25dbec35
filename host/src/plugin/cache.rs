//! Compiled plugins, shared by content.
//!
//! Compiling is by far the costliest part of loading a plugin (Cranelift
//! takes seconds for the built-in policy components), and the same bytes
//! appear in many chain entries: `builtin://authz` once per namespace with
//! AuthorizationPolicies, one file referenced by many namespaces. So a
//! module or component is compiled once per sha256 and kind; every entry
//! with those bytes instantiates the one compiled artifact. The engine's
//! configuration cannot change while the process runs (sandbox changes
//! need a restart), so the sha256 is the whole in-memory key.
//!
//! Invariants:
//! - Entries with the same key compile once even when they load at the same
//!   time: the second waits for the first (a `OnceLock` per key).
//! - A failed compilation is not kept: the error is returned to every entry
//!   waiting for it, and the next load tries again.
//! - Entries no installed plugin uses are dropped after each install
//!   ([`ModuleCache::retain`]), so replaced plugins' code does not pile up.
//! - With a `cacheDir`, a compilation is also written to disk, and a process
//!   that starts later reads it instead of compiling (see `precompiled`).
//! - Tiered compilation: a large module or component with no cache entry is
//!   compiled by the baseline compiler and returned at once; the optimizing
//!   compiler then compiles it on one background thread, once loading has
//!   been quiet for [`QUIET`], one at a time. Its result replaces the entry
//!   (later loads get it), is the only code written to disk, and is handed
//!   to the `on_optimized` hook, which moves running plugins onto it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use wasmtime::Module;
use wasmtime::component::Component;

use super::engine::Engine;
use super::precompiled::{DiskCache, DiskError};
use crate::metrics::Metrics;

/// A compiled plugin: cheap to clone (wasmtime shares the code).
#[derive(Clone)]
pub enum Compiled {
    Module(Module),
    Component(Component),
}

impl Compiled {
    /// The engine (so the compiler tier) the code was compiled for.
    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            Compiled::Module(m) => m.engine(),
            Compiled::Component(c) => c.engine(),
        }
    }

    fn compile(engine: &wasmtime::Engine, bytes: &[u8], component: bool) -> wasmtime::Result<Self> {
        if component {
            Component::new(engine, bytes).map(Compiled::Component)
        } else {
            Module::new(engine, bytes).map(Compiled::Module)
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    /// `compiled`, `memory` (already compiled in this process) or `disk`.
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    reason: &'static str,
}

type Slot = Arc<OnceLock<Result<Compiled, String>>>;

/// How long loading must have been quiet before the optimizing compiler
/// starts: a start or reload gets both cores for its baseline compiles.
pub const QUIET: Duration = Duration::from_millis(1000);

/// Called with the cache each time a plugin's optimized code is ready.
pub type OnOptimized = Box<dyn Fn(&ModuleCache) + Send + Sync>;

/// A module or component waiting for the optimizing compiler.
struct Job {
    sha256: String,
    bytes: Vec<u8>,
    component: bool,
}

/// Plugins waiting for the optimizing compiler.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// The background thread is running.
    running: bool,
    last_baseline: Option<Instant>,
}

pub struct ModuleCache {
    /// Both compilers' engines (`engine.baseline` with tiered compilation).
    engine: Arc<Engine>,
    disk: Option<DiskCache>,
    entries: Mutex<HashMap<(String, bool), Slot>>,
    modules: Family<SourceLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    queue: Mutex<Queue>,
    on_optimized: OnceLock<OnOptimized>,
}

impl ModuleCache {
    /// A cache for `engine`, registering its counters with `metrics`; with
    /// `dir`, backed by the on-disk cache there (refused when others may
    /// write to it).
    pub fn new(
        engine: &Arc<Engine>,
        metrics: &Metrics,
        dir: Option<&Path>,
    ) -> Result<ModuleCache, DiskError> {
        let disk = dir.map(|d| DiskCache::open(d, &engine.wasm)).transpose()?;
        let modules = Family::<SourceLabels, Counter>::default();
        metrics.register(
            "plugin_modules",
            "Plugin modules and components made ready, by where the compiled code came from \
             (compiled: optimized code compiled here, baseline: quickly compiled code a \
             plugin serves on until its optimized code is compiled, memory, disk)",
            modules.clone(),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        metrics.register(
            "plugin_cache_rejected",
            "On-disk cache entries ignored (and rebuilt), by reason",
            rejected.clone(),
        );
        Ok(ModuleCache {
            engine: engine.clone(),
            disk,
            entries: Mutex::new(HashMap::new()),
            modules,
            rejected,
            queue: Mutex::default(),
            on_optimized: OnceLock::new(),
        })
    }

    /// Sets what runs when a plugin's optimized code is ready (once).
    pub fn set_on_optimized(&self, hook: OnOptimized) {
        let _ = self.on_optimized.set(hook);
    }

    /// The optimized code of module or component `sha256`, once it is
    /// compiled.
    pub fn optimized(&self, sha256: &str, component: bool) -> Option<Compiled> {
        let slot = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(sha256.to_owned(), component))
            .cloned()?;
        match slot.get() {
            Some(Ok(c)) if wasmtime::Engine::same(c.engine(), &self.engine.wasm) => Some(c.clone()),
            _ => None,
        }
    }

    /// The compiled form of `bytes`, whose sha256 is `sha256`. Blocks while
    /// compiling: call it off the request workers.
    pub fn get(
        self: &Arc<Self>,
        sha256: &str,
        bytes: &[u8],
        component: bool,
    ) -> Result<Compiled, String> {
        let key = (sha256.to_owned(), component);
        let slot = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let mut made_here = false;
        let result = slot
            .get_or_init(|| {
                made_here = true;
                self.obtain(sha256, bytes, component)
            })
            .clone();
        if made_here {
            // Compiling freed far more than it kept, whether it worked or not.
            super::heap::release_free_pages();
        } else {
            self.count("memory");
        }
        if result.is_err() {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if entries.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                entries.remove(&key);
            }
        }
        result
    }

    fn obtain(
        self: &Arc<Self>,
        sha256: &str,
        bytes: &[u8],
        component: bool,
    ) -> Result<Compiled, String> {
        if let Some(disk) = &self.disk {
            match disk.load(&self.engine.wasm, sha256, component) {
                Ok(Some(compiled)) => {
                    self.count("disk");
                    return Ok(compiled);
                }
                Ok(None) => {}
                Err(rejected) => {
                    self.rejected
                        .get_or_create(&RejectLabels {
                            reason: rejected.reason(),
                        })
                        .inc();
                    tracing::warn!(sha256, error = %rejected, "compiled-plugin cache entry ignored; compiling again");
                }
            }
        }
        if let Some(compiled) = self.baseline(sha256, bytes, component) {
            return Ok(compiled);
        }
        let compiled =
            Compiled::compile(&self.engine.wasm, bytes, component).map_err(|e| format!("{e:#}"))?;
        self.count("compiled");
        if let Some(disk) = &self.disk
            && let Err(e) = disk.store(sha256, &compiled)
        {
            // The plugin works; only the next start pays the compile again.
            tracing::warn!(sha256, error = %e, "cannot write the compiled-plugin cache entry");
        }
        Ok(compiled)
    }

    /// The baseline compiler's code for a large module or component, its
    /// optimized compile queued; `None` when it is not to be tiered (or the
    /// baseline compiler cannot compile it: then it is compiled optimized).
    fn baseline(self: &Arc<Self>, sha256: &str, bytes: &[u8], component: bool) -> Option<Compiled> {
        let tiering = self.engine.tiering?;
        if bytes.len() < tiering.min_bytes {
            return None;
        }
        let compiled = match Compiled::compile(&self.engine.baseline()?.wasm, bytes, component) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(sha256, error = %format!("{e:#}"), "the baseline compiler cannot compile this plugin; compiling it optimized");
                return None;
            }
        };
        self.count("baseline");
        if !tiering.optimize {
            return Some(compiled);
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.jobs.push_back(Job {
            sha256: sha256.to_owned(),
            bytes: bytes.to_vec(),
            component,
        });
        queue.last_baseline = Some(Instant::now());
        if !queue.running {
            let cache = self.clone();
            let spawned = std::thread::Builder::new()
                .name("wayplug-optimize".into())
                .spawn(move || cache.optimize_queued());
            match spawned {
                Ok(_) => queue.running = true,
                // The plugin serves on baseline code until the next load
                // starts the thread.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the optimizing compiler's thread")
                }
            }
        }
        Some(compiled)
    }

    /// The background thread: compiles queued plugins optimized until
    /// the queue is empty or no registry uses this cache any more.
    fn optimize_queued(self: Arc<Self>) {
        loop {
            let Job {
                sha256,
                bytes,
                component,
            } = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let quiet_for = queue.last_baseline.map_or(QUIET, |t| t.elapsed());
                if let Some(wait) = QUIET.checked_sub(quiet_for).filter(|w| !w.is_zero()) {
                    drop(queue);
                    std::thread::sleep(wait);
                    continue;
                }
                // This thread's handle is the last one: nothing would run
                // the code.
                let orphaned = Arc::strong_count(&self) == 1;
                match queue.jobs.pop_front() {
                    Some(job) if !orphaned => job,
                    _ => {
                        queue.running = false;
                        return;
                    }
                }
            };
            let key = (sha256.clone(), component);
            let wanted = |entries: &HashMap<(String, bool), Slot>| {
                entries.get(&key).is_some_and(|slot| {
                    matches!(slot.get(), Some(Ok(c)) if !wasmtime::Engine::same(c.engine(), &self.engine.wasm))
                })
            };
            if !wanted(&self.entries.lock().unwrap_or_else(|e| e.into_inner())) {
                continue;
            }
            let started = Instant::now();
            let compiled = match Compiled::compile(&self.engine.wasm, &bytes, component) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(sha256, error = %format!("{e:#}"), "the optimizing compiler failed on a plugin the baseline compiler took; it stays on baseline code");
                    continue;
                }
            };
            drop(bytes);
            self.count("compiled");
            if let Some(disk) = &self.disk
                && let Err(e) = disk.store(&sha256, &compiled)
            {
                tracing::warn!(sha256, error = %e, "cannot write the compiled-plugin cache entry");
            }
            {
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                if !wanted(&entries) {
                    continue;
                }
                entries.insert(key, Arc::new(OnceLock::from(Ok(compiled))));
            }
            tracing::info!(
                sha256,
                ms = started.elapsed().as_millis() as u64,
                "optimized code ready; moving plugins onto it"
            );
            if let Some(hook) = self.on_optimized.get() {
                hook(&self);
            }
            super::heap::release_free_pages();
        }
    }

    fn count(&self, source: &'static str) {
        self.modules.get_or_create(&SourceLabels { source }).inc();
    }

    /// Forgets compiled code no plugin in `in_use` (sha256s) needs.
    pub fn retain(&self, in_use: &HashSet<String>) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(sha, _), _| in_use.contains(sha));
    }

    /// How many modules came from `source` (`compiled`, `baseline`,
    /// `memory`, `disk`).
    pub fn made(&self, source: &'static str) -> u64 {
        self.modules.get_or_create(&SourceLabels { source }).get()
    }
}
