//! Which plugins run for which namespace.
//!
//! Each namespace has a [`Chain`]. The map of chains sits behind an
//! `ArcSwap`: a request takes a snapshot of its namespace's chain once, at
//! the start, and keeps it to the end, so replacing a chain never disturbs
//! requests in flight, and the new chain applies to every request that
//! starts after the swap. A chain is built completely (every plugin read,
//! checked, compiled and started) before it can be installed, so a bad
//! plugin never replaces a good one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use wasmtime::Module;

use super::callout::Callouts;
use super::component::{ComponentPlugin, LoadError as ComponentLoadError};
use super::engine::Engine;
use super::proxywasm::{ProxyWasmModule, ProxyWasmPlugin, StartError};
use super::shared::NamespaceShared;
use super::{Error, Plugin, PluginKind, PluginShared};
use crate::config::{NamespaceConfig, Phase, PluginSpec, PluginUrl, SandboxConfig};
use crate::metrics::Metrics;

/// The plugins of one namespace, in the order they run.
pub struct Chain {
    pub namespace: String,
    pub plugins: Vec<Arc<Plugin>>,
}

/// Plugins compiled into the binary, by name (`builtin://NAME`).
pub type Builtins = BTreeMap<&'static str, &'static [u8]>;

pub struct Registry {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    callouts: Arc<Callouts>,
    sandbox: SandboxConfig,
    builtins: Builtins,
    chains: ArcSwap<HashMap<String, Arc<Chain>>>,
    shared: Mutex<HashMap<String, Arc<NamespaceShared>>>,
    /// Serialises installs so two reloads cannot interleave their swaps.
    install: Mutex<()>,
}

impl Registry {
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        callouts: Arc<Callouts>,
        sandbox: SandboxConfig,
        builtins: Builtins,
    ) -> Registry {
        Registry {
            engine,
            metrics,
            callouts,
            sandbox,
            builtins,
            chains: ArcSwap::from_pointee(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
            install: Mutex::new(()),
        }
    }

    /// The chain a request for `namespace` runs; `None` when the namespace
    /// has no plugins.
    pub fn chain(&self, namespace: &str) -> Option<Arc<Chain>> {
        self.chains.load().get(namespace).cloned()
    }

    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<Chain>>> {
        self.chains.load_full()
    }

    fn namespace_shared(&self, namespace: &str) -> Arc<NamespaceShared> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(namespace.to_owned())
            .or_default()
            .clone()
    }

    /// Builds every namespace's chain, then installs them all at once. On
    /// any error nothing changes.
    pub async fn apply(
        &self,
        namespaces: &BTreeMap<String, NamespaceConfig>,
        base_dir: &Path,
    ) -> Result<(), Error> {
        let mut built = HashMap::new();
        for (ns, cfg) in namespaces {
            if cfg.plugins.is_empty() {
                continue;
            }
            built.insert(
                ns.clone(),
                Arc::new(self.build_chain(ns, &cfg.plugins, base_dir).await?),
            );
        }
        let _guard = self.install.lock().unwrap_or_else(|e| e.into_inner());
        self.chains.store(Arc::new(built));
        Ok(())
    }

    /// Replaces (or, with `None`, removes) one namespace's chain.
    pub fn install(&self, namespace: &str, chain: Option<Chain>) {
        let _guard = self.install.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::clone(&self.chains.load());
        match chain {
            Some(c) => next.insert(namespace.to_owned(), Arc::new(c)),
            None => next.remove(namespace),
        };
        self.chains.store(Arc::new(next));
    }

    /// Loads every plugin of a namespace and orders them as Istio's waypoint
    /// does (see [`chain_position`]), then higher priority first, then name.
    pub async fn build_chain(
        &self,
        namespace: &str,
        specs: &[PluginSpec],
        base_dir: &Path,
    ) -> Result<Chain, Error> {
        let mut plugins = Vec::with_capacity(specs.len());
        for spec in specs {
            plugins.push(Arc::new(self.load(namespace, spec, base_dir).await?));
        }
        plugins.sort_by(|a, b| {
            (
                chain_position(&a.spec),
                -(a.spec.priority as i64),
                &a.spec.name,
            )
                .cmp(&(
                    chain_position(&b.spec),
                    -(b.spec.priority as i64),
                    &b.spec.name,
                ))
        });
        Ok(Chain {
            namespace: namespace.to_owned(),
            plugins,
        })
    }

    async fn load(
        &self,
        namespace: &str,
        spec: &PluginSpec,
        base_dir: &Path,
    ) -> Result<Plugin, Error> {
        let plugin = spec.name.clone();
        let ns = namespace.to_owned();
        let bytes: Vec<u8> = match &spec.url {
            PluginUrl::File(_) => {
                let path = spec.url.resolve_file(base_dir).expect("file url");
                tokio::fs::read(&path).await.map_err(|e| Error::Read {
                    plugin: plugin.clone(),
                    namespace: ns.clone(),
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
            }
            PluginUrl::Builtin(name) => self
                .builtins
                .get(name.as_str())
                .map(|b| b.to_vec())
                .ok_or_else(|| Error::UnknownBuiltin {
                    plugin: plugin.clone(),
                    namespace: ns.clone(),
                    name: name.clone(),
                    available: self.builtins.keys().copied().collect::<Vec<_>>().join(", "),
                })?,
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = &spec.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(Error::Checksum {
                plugin,
                namespace: ns,
                expected: expected.clone(),
                actual: sha256,
            });
        }
        // A core module's header is `\0asm` then version 1; a component's
        // carries another version and layer. Decided once, here.
        let is_component =
            bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[4..8] != [1, 0, 0, 0];

        let shared = Arc::new(PluginShared {
            name: spec.name.clone(),
            namespace: namespace.to_owned(),
            root_id: spec.root_id().to_owned(),
            vm_id: String::new(),
            plugin_config: spec.plugin_config_bytes(),
            vm_config: Vec::new(),
            env: spec.environment(),
            limits: self.engine.limits.clone(),
            shared: self.namespace_shared(namespace),
            callouts: self.callouts.clone(),
            metrics: self.metrics.plugin_metrics(namespace, &spec.name),
            global_metrics: self.metrics.clone(),
            log_tail: Mutex::new(Default::default()),
        });

        // Compiling takes Cranelift tenths of a second: keep it off the
        // request workers.
        let engine = self.engine.clone();
        let instances = self.sandbox.instances_per_plugin;
        let size = bytes.len();
        let shared2 = shared.clone();
        let kind = tokio::task::spawn_blocking(move || -> Result<PluginKind, LoadFailure> {
            if is_component {
                let plugin = ComponentPlugin::new(
                    &engine.wasm,
                    &engine.component_linker,
                    &bytes,
                    shared2,
                    instances,
                )
                .map_err(|e| match e {
                    ComponentLoadError::Abi(m) => LoadFailure::Abi(m),
                    ComponentLoadError::Start(m) => LoadFailure::Start(m),
                })?;
                return Ok(PluginKind::Component(plugin));
            }
            let module = Module::new(&engine.wasm, &bytes)
                .map_err(|e| LoadFailure::Compile(format!("{e:#}")))?;
            let module = ProxyWasmModule::new(&engine.proxy_wasm_linker, &module)
                .map_err(LoadFailure::Abi)?;
            let plugin = ProxyWasmPlugin::new(module, shared2, instances).map_err(|e| match e {
                StartError::BadExport { .. } | StartError::MissingContextCreate => {
                    LoadFailure::Abi(e.to_string())
                }
                other => LoadFailure::Start(other.to_string()),
            })?;
            Ok(PluginKind::ProxyWasm(plugin))
        })
        .await
        .map_err(|e| Error::Engine(format!("plugin loader task failed: {e}")))?;

        let kind = kind.map_err(|failure| match failure {
            LoadFailure::Compile(reason) => Error::Compile {
                plugin: plugin.clone(),
                namespace: ns.clone(),
                reason,
            },
            LoadFailure::Abi(reason) => Error::Abi {
                plugin: plugin.clone(),
                namespace: ns.clone(),
                reason,
            },
            LoadFailure::Start(reason) => {
                let log = shared.take_log_tail();
                let log = if log.is_empty() {
                    String::new()
                } else {
                    format!("; the plugin logged: {}", log.join(" | "))
                };
                Error::Start {
                    plugin: plugin.clone(),
                    namespace: ns.clone(),
                    reason,
                    log,
                }
            }
        })?;
        tracing::info!(plugin = %spec.name, namespace, sha256 = %sha256, size, "plugin loaded");
        Ok(Plugin {
            spec: spec.clone(),
            namespace: namespace.to_owned(),
            sha256,
            size,
            kind,
        })
    }
}

/// The built-in authorization plugin (AuthorizationPolicy).
pub const BUILTIN_AUTHZ: &str = "authz";
/// The built-in routing plugin (HTTPRoute).
pub const BUILTIN_ROUTE: &str = "route";

/// Where a plugin runs in its chain, as in Istio's waypoint: AUTHN plugins,
/// then the built-in authorization (its DENY before ALLOW is internal), then
/// AUTHZ, STATS and unspecified-phase plugins, and routing last, so every
/// policy sees the request as the caller sent it and the route decides
/// where it finally goes. A built-in's own `phase` does not move it.
pub fn chain_position(spec: &PluginSpec) -> u8 {
    match (&spec.url, spec.phase) {
        (PluginUrl::Builtin(name), _) if name == BUILTIN_ROUTE => 5,
        (PluginUrl::Builtin(name), _) if name == BUILTIN_AUTHZ => 1,
        (_, Phase::Authn) => 0,
        (_, Phase::Authz) => 2,
        (_, Phase::Stats) => 3,
        (_, Phase::Unspecified) => 4,
    }
}

enum LoadFailure {
    Compile(String),
    Abi(String),
    Start(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, url: &str, phase: &str) -> PluginSpec {
        serde_json::from_value(serde_json::json!({"name": name, "url": url, "phase": phase}))
            .unwrap()
    }

    #[test]
    fn chain_order_follows_istio_waypoints() {
        let mut specs = [
            spec("route", "builtin://route", "AUTHN"),
            spec("stats", "file://s.wasm", "STATS"),
            spec("last", "file://l.wasm", "UNSPECIFIED_PHASE"),
            spec("authz-plugin", "file://z.wasm", "AUTHZ"),
            spec("authz", "builtin://authz", "STATS"),
            spec("authn", "file://n.wasm", "AUTHN"),
        ];
        specs.sort_by_key(chain_position);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["authn", "authz", "authz-plugin", "stats", "last", "route"]
        );
    }
}
