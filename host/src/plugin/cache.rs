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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use wasmtime::Module;
use wasmtime::component::Component;

use super::precompiled::{DiskCache, DiskError};
use crate::metrics::Metrics;

/// A compiled plugin: cheap to clone (wasmtime shares the code).
#[derive(Clone)]
pub enum Compiled {
    Module(Module),
    Component(Component),
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

pub struct ModuleCache {
    engine: wasmtime::Engine,
    disk: Option<DiskCache>,
    entries: Mutex<HashMap<(String, bool), Slot>>,
    modules: Family<SourceLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
}

impl ModuleCache {
    /// A cache for `engine`, registering its counters with `metrics`; with
    /// `dir`, backed by the on-disk cache there (refused when others may
    /// write to it).
    pub fn new(
        engine: &wasmtime::Engine,
        metrics: &Metrics,
        dir: Option<&Path>,
    ) -> Result<ModuleCache, DiskError> {
        let disk = dir.map(|d| DiskCache::open(d, engine)).transpose()?;
        let modules = Family::<SourceLabels, Counter>::default();
        metrics.register(
            "plugin_modules",
            "Plugin modules and components made ready, by where the compiled code came from \
             (compiled, memory, disk)",
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
        })
    }

    /// The compiled form of `bytes`, whose sha256 is `sha256`. Blocks while
    /// compiling: call it off the request workers.
    pub fn get(&self, sha256: &str, bytes: &[u8], component: bool) -> Result<Compiled, String> {
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
        if !made_here {
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

    fn obtain(&self, sha256: &str, bytes: &[u8], component: bool) -> Result<Compiled, String> {
        if let Some(disk) = &self.disk {
            match disk.load(&self.engine, sha256, component) {
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
        let compiled = if component {
            Component::new(&self.engine, bytes).map(Compiled::Component)
        } else {
            Module::new(&self.engine, bytes).map(Compiled::Module)
        }
        .map_err(|e| format!("{e:#}"))?;
        self.count("compiled");
        if let Some(disk) = &self.disk
            && let Err(e) = disk.store(sha256, &compiled)
        {
            // The plugin works; only the next start pays the compile again.
            tracing::warn!(sha256, error = %e, "cannot write the compiled-plugin cache entry");
        }
        Ok(compiled)
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

    /// How many modules came from `source` (`compiled`, `memory`, `disk`).
    pub fn made(&self, source: &'static str) -> u64 {
        self.modules.get_or_create(&SourceLabels { source }).get()
    }
}
