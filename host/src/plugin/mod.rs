//! Plugins: loading, sandboxing and running them.
//!
//! - `engine`: the one wasmtime configuration we support.
//! - `registry`: per-namespace plugin chains, swapped atomically.
//! - `proxywasm`: the Proxy-Wasm ABI 0.2.1.
//! - `filter`: the interface the request pipeline drives, whatever the ABI.
//! - `shared`, `callout`: services plugins reach through the ABI.
//! - `files`: plugin files read once per install, and not when unchanged.
//! - `cache`, `precompiled`: compiled code shared by content, in memory and
//!   on disk.

pub mod cache;
pub mod callout;
pub mod component;
pub mod engine;
mod files;
pub mod filter;
mod heap;
pub mod pool;
mod precompiled;
pub mod proxywasm;
pub mod registry;
pub mod sandbox;
pub mod shadow;
pub mod shared;
pub mod source;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::PluginSpec;
use crate::exchange::Exchange;
pub use crate::exchange::PluginFailure;
use crate::metrics::{Metrics, PluginMetrics};

pub use filter::{FilterStatus, Hooks, HttpFilter};
pub use registry::{Chain, Registry};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plugin `{plugin}` in namespace `{namespace}`: cannot read {path}: {reason}")]
    Read {
        plugin: String,
        namespace: String,
        path: String,
        reason: String,
    },
    #[error(
        "plugin `{plugin}` in namespace `{namespace}`: sha256 mismatch: config expects {expected}, the module is {actual}"
    )]
    Checksum {
        plugin: String,
        namespace: String,
        expected: String,
        actual: String,
    },
    #[error(
        "plugin `{plugin}` in namespace `{namespace}`: no builtin plugin named `{name}` (available: {available})"
    )]
    UnknownBuiltin {
        plugin: String,
        namespace: String,
        name: String,
        available: String,
    },
    #[error(
        "plugin `{plugin}` in namespace `{namespace}`: not a loadable WebAssembly module: {reason}"
    )]
    Compile {
        plugin: String,
        namespace: String,
        reason: String,
    },
    #[error("plugin `{plugin}` in namespace `{namespace}`: {reason}")]
    Abi {
        plugin: String,
        namespace: String,
        reason: String,
    },
    #[error("plugin `{plugin}` in namespace `{namespace}` failed to start: {reason}{log}")]
    Start {
        plugin: String,
        namespace: String,
        reason: String,
        /// What the plugin logged at warning level or above while starting.
        log: String,
    },
    #[error("plugin `{plugin}` in namespace `{namespace}`: cannot pull {source}")]
    Pull {
        plugin: String,
        namespace: String,
        // Boxed: the pull's error is large and rare, and every other
        // plugin error pays for the enum's size.
        source: Box<source::oci::OciError>,
    },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error(
        "sandbox.maxInstances is {max}, but this config needs {needed} plugin instances at once: \
         {detail}; raise sandbox.maxInstances or lower sandbox.instancesPerPlugin / \
         sandbox.requestsPerComponent"
    )]
    Capacity {
        max: usize,
        needed: usize,
        detail: String,
    },
    #[error(transparent)]
    Cache(#[from] precompiled::DiskError),
}

/// Sandbox limits, resolved for the engine.
#[derive(Debug, Clone)]
pub struct Limits {
    pub deadline_ticks: u64,
    pub call_timeout: Duration,
    pub memory_limit_bytes: usize,
    pub host: sandbox::HostLimits,
}

/// What all instances of one loaded plugin share.
pub struct PluginShared {
    pub name: String,
    pub namespace: String,
    pub root_id: String,
    pub vm_id: String,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub shared: Arc<shared::NamespaceShared>,
    pub callouts: Arc<callout::Callouts>,
    pub metrics: PluginMetrics,
    global_metrics: Arc<Metrics>,
    log_tail: Mutex<VecDeque<(i32, String)>>,
    /// One bit per [`sandbox::Limit`] already logged, so a plugin hammering
    /// a limit logs once and is counted every time.
    limits_warned: AtomicU32,
}

const LOG_TAIL: usize = 16;

impl PluginShared {
    /// Logs a line on the plugin's behalf (Proxy-Wasm levels: trace 0 to
    /// critical 5) and keeps warnings and worse for error reports.
    pub fn log(&self, level: i32, msg: &str) {
        let (plugin, ns) = (&self.name, &self.namespace);
        match level {
            i32::MIN..=0 => {
                tracing::trace!(target: "wayplug::plugin", plugin, namespace = ns, "{msg}")
            }
            1 => tracing::debug!(target: "wayplug::plugin", plugin, namespace = ns, "{msg}"),
            2 => tracing::info!(target: "wayplug::plugin", plugin, namespace = ns, "{msg}"),
            3 => tracing::warn!(target: "wayplug::plugin", plugin, namespace = ns, "{msg}"),
            _ => tracing::error!(target: "wayplug::plugin", plugin, namespace = ns, "{msg}"),
        }
        if level >= 3 {
            let mut tail = self.log_tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back((level, msg.chars().take(512).collect()));
        }
    }

    /// The Proxy-Wasm level below which logging is off, from the tracing
    /// filter in force.
    pub fn log_level(&self) -> u32 {
        use tracing::level_filters::LevelFilter;
        match LevelFilter::current() {
            LevelFilter::TRACE => 0,
            LevelFilter::DEBUG => 1,
            LevelFilter::INFO => 2,
            LevelFilter::WARN => 3,
            LevelFilter::ERROR => 4,
            _ => 5,
        }
    }

    pub fn last_critical_log(&self) -> Option<String> {
        let tail = self.log_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter()
            .rev()
            .find(|(l, _)| *l >= 4)
            .map(|(_, m)| m.clone())
    }

    fn take_log_tail(&self) -> Vec<String> {
        let mut tail = self.log_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.drain(..).map(|(_, m)| m).collect()
    }

    /// Counts (and the first time, logs) a guest's request that a host
    /// limit refused.
    pub fn limit_exceeded(&self, limit: sandbox::Limit) {
        self.global_metrics
            .plugin_limit_violation(&self.namespace, &self.name, limit.as_str());
        let bit = 1u32 << (limit as u32);
        if self.limits_warned.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            tracing::warn!(
                plugin = %self.name,
                namespace = %self.namespace,
                limit = limit.as_str(),
                "plugin asked for more than a sandbox limit allows; refused (logged once per limit, \
                 counted in wayplug_plugin_limit_violations_total)"
            );
        }
    }

    pub fn report_failure(&self, failure: &PluginFailure) {
        tracing::warn!(
            plugin = %self.name,
            namespace = %self.namespace,
            error = %failure,
            "plugin failed; its instance will be replaced"
        );
        self.global_metrics
            .plugin_failure(&self.namespace, &self.name, failure.reason());
    }
}

/// The two plugin ABIs. Decided once, at load.
pub enum PluginKind {
    ProxyWasm(proxywasm::ProxyWasmPlugin),
    Component(component::ComponentPlugin),
}

/// A loaded plugin, ready to serve requests.
pub struct Plugin {
    pub spec: PluginSpec,
    pub namespace: String,
    pub sha256: String,
    pub size: usize,
    pub kind: PluginKind,
    /// A candidate version deciding the same requests, its effects
    /// discarded (a shadow rollout).
    pub shadow: Option<Arc<shadow::Shadow>>,
    /// Hash of what the plugin was built from (spec, environment, bytes):
    /// an entry with the same identity keeps this plugin on reload.
    pub identity: String,
    pub loaded: LoadInfo,
}

/// When and how quickly a plugin was built.
#[derive(Debug, Clone, Copy)]
pub struct LoadInfo {
    pub at: SystemTime,
    /// From reading its bytes to its first instance configured.
    pub took: Duration,
    /// The registry revision that built it.
    pub revision: u64,
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            PluginKind::ProxyWasm(_) => "proxy-wasm",
            PluginKind::Component(_) => "component",
        }
    }

    /// A filter for one request. With `reload_on_failure` (FAIL_RELOAD), a
    /// filter that cannot be created is retried once on a fresh instance.
    pub fn new_filter(
        &self,
        exchange: &Arc<Exchange>,
        reload_on_failure: bool,
    ) -> Result<Box<dyn HttpFilter>, PluginFailure> {
        match &self.kind {
            PluginKind::ProxyWasm(p) => p.new_filter(exchange, reload_on_failure),
            PluginKind::Component(p) => p.new_filter(exchange, reload_on_failure),
        }
    }

    /// The callbacks the plugin has, read from its exports at load.
    pub fn hooks(&self) -> filter::Hooks {
        match &self.kind {
            PluginKind::ProxyWasm(p) => p.hooks(),
            PluginKind::Component(p) => p.hooks(),
        }
    }

    /// Whether the plugin can see or change a body in this direction: a
    /// Proxy-Wasm module when it exports that body or trailers callback, a
    /// component only on the request side, when it exports the body hook.
    pub fn handles_body(&self, request: bool) -> bool {
        self.hooks().body(request)
    }

    /// Which compiler's code new instances run: `optimized` or, for a
    /// plugin still on its first tier, `baseline`.
    pub fn code(&self) -> &'static str {
        let baseline = match &self.kind {
            PluginKind::Component(c) => c.on_baseline(),
            PluginKind::ProxyWasm(p) => p.on_baseline(),
        };
        if baseline { "baseline" } else { "optimized" }
    }

    pub fn live_instances(&self) -> usize {
        match &self.kind {
            PluginKind::ProxyWasm(p) => p.live_instances(),
            PluginKind::Component(p) => p.live_instances(),
        }
    }

    fn shared(&self) -> &PluginShared {
        match &self.kind {
            PluginKind::ProxyWasm(p) => p.shared(),
            PluginKind::Component(p) => p.shared(),
        }
    }

    /// Reports that no context could be created for a request.
    pub fn report_start_failure(&self, failure: &PluginFailure) {
        self.shared().report_failure(failure);
    }
}
