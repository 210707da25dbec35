//! Which plugins run for which namespace, and the configuration in force.
//!
//! What a request needs from the configuration (the config itself, the
//! service discovery built from it and every namespace's [`Chain`]) is one
//! [`Installed`] snapshot behind an `ArcSwap`. A request takes the snapshot
//! once, at the start, and keeps it to the end, so it never sees new chains
//! with old discovery or the other way round, replacing the snapshot never
//! disturbs requests in flight, and the new one applies to every request
//! that starts after the swap. The chains of a new config are built
//! completely (every plugin read, checked, compiled and started) before it
//! can be installed, so a bad plugin never replaces a good one.
//!
//! Before anything is compiled, the engine's instance slots
//! (`sandbox.maxInstances`) are checked against what the new chains need
//! next to the running ones, which stay alive until the swap and until
//! their last request finishes.
//!
//! Installs are incremental: an entry whose namespace, name, whole spec
//! (url, sha256, configuration, environment, phase...) and module bytes are
//! those of an installed plugin keeps that plugin, with its instances and
//! their state; only the others are built, in parallel, from compiled code
//! shared by content (`cache`). One install runs at a time, from reading the
//! entries to the swap, so a change made through the admin API and a file
//! reload never undo each other half-way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::cache::{Compiled, ModuleCache};
use super::callout::Callouts;
use super::component::{ComponentPlugin, LoadError as ComponentLoadError};
use super::engine::Engine;
use super::files::{Files, Pass};
use super::proxywasm::{ProxyWasmModule, ProxyWasmPlugin, StartError};
use super::shadow::{Shadow, ShadowMetrics};
use super::shared::NamespaceShared;
use super::source::oci::Puller;
use super::{Error, LoadInfo, Plugin, PluginKind, PluginShared};
use crate::config::{Config, FailStrategy, Phase, PluginSpec, PluginUrl, SandboxConfig};
use crate::discovery::Discovery;
use crate::metrics::Metrics;

/// The plugins of one namespace, in the order they run.
pub struct Chain {
    pub namespace: String,
    pub plugins: Vec<Arc<Plugin>>,
}

/// Plugins compiled into the binary, by name (`builtin://NAME`).
pub type Builtins = BTreeMap<&'static str, &'static [u8]>;

/// One consistent view of the configuration in force.
pub struct Installed {
    pub config: Arc<Config>,
    pub discovery: Arc<Discovery>,
    pub chains: HashMap<String, Arc<Chain>>,
    /// The engine instance slots these chains may hold at once.
    need: usize,
    /// 0 before the first install, then one more per swap.
    pub revision: u64,
    /// Changes made through the admin API since the config file or policy
    /// folder was last applied (which replaces them).
    pub api_changes: usize,
}

impl Installed {
    /// The chain a request for `namespace` runs; `None` when the namespace
    /// has no plugins.
    pub fn chain(&self, namespace: &str) -> Option<Arc<Chain>> {
        self.chains.get(namespace).cloned()
    }
}

pub struct Registry {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    callouts: Arc<Callouts>,
    sandbox: SandboxConfig,
    builtins: Builtins,
    /// Shared with the compiled-code cache's hook, which moves running
    /// plugins onto optimized code.
    current: Arc<ArcSwap<Installed>>,
    shared: Mutex<HashMap<String, Arc<NamespaceShared>>>,
    /// Serialises swaps so two installs cannot interleave them.
    install: Mutex<()>,
    /// Serialises whole installs, from reading the entries to the swap.
    applying: tokio::sync::Mutex<()>,
    modules: Arc<ModuleCache>,
    /// sha256 of each built-in, hashed once (they are megabytes).
    builtin_sha256: Mutex<HashMap<String, String>>,
    /// `oci://` plugins: pulls and the copies kept.
    oci: Puller,
    /// `file://` plugins: what is known of each without reading it.
    files: Files,
    shadow_metrics: ShadowMetrics,
}

/// A plugin file read and checked, not yet compiled.
struct Read {
    spec: PluginSpec,
    /// `None` for a file known unchanged from an earlier read: enough to
    /// keep its plugin, not to build one ([`Read::lacks_bytes`]).
    bytes: Option<Bytes>,
    sha256: String,
    is_component: bool,
    /// The entry's shadow candidate, read the same way.
    candidate: Option<Box<Read>>,
    /// This is a shadow candidate: its shared data and metrics are its own.
    is_candidate: bool,
}

/// One buffer per distinct content among the entries being read.
#[derive(Default)]
struct Contents(HashMap<String, Bytes>);

impl Contents {
    fn share(&mut self, read: &mut Read) {
        match &read.bytes {
            Some(bytes) => {
                let shared = self
                    .0
                    .entry(read.sha256.clone())
                    .or_insert_with(|| bytes.clone());
                read.bytes = Some(shared.clone());
            }
            // Known by its hash only: another entry may have read it.
            None => read.bytes = self.0.get(&read.sha256).cloned(),
        }
        if let Some(c) = &mut read.candidate {
            self.share(c);
        }
    }
}

impl Read {
    /// Whether building this entry needs a read of its file first.
    fn lacks_bytes(&self) -> bool {
        self.bytes.is_none() || self.candidate.as_ref().is_some_and(|c| c.lacks_bytes())
    }

    /// What decides how the plugin is built: an installed plugin with the
    /// same identity (in the same namespace, under the same name) is kept.
    fn identity(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.sha256.as_bytes());
        h.update(serde_json::to_vec(&self.spec).unwrap_or_default());
        // HOST variables are read at load: a changed value is a change.
        for (k, v) in self.spec.environment() {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        // A shadow candidate's file may change while its spec does not.
        if let Some(c) = &self.candidate {
            h.update(c.identity().as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// One entry of a new config: an installed plugin kept, or one to build.
enum Entry {
    Keep(Arc<Plugin>),
    Build(Box<Read>),
}

/// How many engine instance slots a set of plugins may hold at once, and
/// why, for the error an operator reads when there are too few.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    proxy_wasm: usize,
    components: usize,
    fail_reload: usize,
}

impl Capacity {
    fn add(&mut self, is_component: bool, fail_strategy: FailStrategy) {
        if is_component {
            self.components += 1;
        } else {
            self.proxy_wasm += 1;
            // A FAIL_RELOAD retry starts a VM while the failed one is still
            // held by the requests pinned to it. (A component's retry drops
            // its failed instance first.)
            if fail_strategy == FailStrategy::FailReload {
                self.fail_reload += 1;
            }
        }
    }

    /// Proxy-Wasm: `instancesPerPlugin` VMs. Components: that many ready
    /// spares plus one instance per request served at once.
    pub fn need(&self, sandbox: &SandboxConfig) -> usize {
        let per_component = sandbox.instances_per_plugin + sandbox.requests_per_component;
        self.proxy_wasm * sandbox.instances_per_plugin
            + self.components * per_component
            + self.fail_reload
    }

    fn explain(&self, sandbox: &SandboxConfig) -> String {
        let ipp = sandbox.instances_per_plugin;
        let rpc = sandbox.requests_per_component;
        let mut parts = Vec::new();
        if self.proxy_wasm > 0 {
            parts.push(format!(
                "{} Proxy-Wasm plugin(s) × {ipp} instancesPerPlugin = {}",
                self.proxy_wasm,
                self.proxy_wasm * ipp
            ));
        }
        if self.components > 0 {
            parts.push(format!(
                "{} component plugin(s) × ({ipp} instancesPerPlugin ready + {rpc} requestsPerComponent) = {}",
                self.components,
                self.components * (ipp + rpc)
            ));
        }
        if self.fail_reload > 0 {
            parts.push(format!("{} FAIL_RELOAD replacement(s)", self.fail_reload));
        }
        parts.join(" + ")
    }
}

impl Registry {
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        callouts: Arc<Callouts>,
        sandbox: SandboxConfig,
        builtins: Builtins,
    ) -> Registry {
        Registry::with_cache_dir(engine, metrics, callouts, sandbox, builtins, None)
            .expect("without a cache directory there is nothing to open")
    }

    /// Like [`new`](Self::new), keeping compiled plugins in `cache_dir`
    /// across restarts.
    pub fn with_cache_dir(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        callouts: Arc<Callouts>,
        sandbox: SandboxConfig,
        builtins: Builtins,
        cache_dir: Option<&Path>,
    ) -> Result<Registry, Error> {
        let modules = Arc::new(ModuleCache::new(&engine, &metrics, cache_dir)?);
        let shadow_metrics = ShadowMetrics::new(&metrics);
        let current = Arc::new(ArcSwap::from_pointee(Installed {
            config: Arc::new(Config::default()),
            discovery: Arc::new(Discovery::default()),
            chains: HashMap::new(),
            need: 0,
            revision: 0,
            api_changes: 0,
        }));
        {
            let (current, engine) = (current.clone(), engine.clone());
            // The hook runs on the compiler's own thread; a Proxy-Wasm VM
            // started there may set a tick or make a call, which need the
            // runtime.
            let runtime = tokio::runtime::Handle::try_current().ok();
            modules.set_on_optimized(Box::new(move |modules| {
                let _inside = runtime.as_ref().map(|rt| rt.enter());
                upgrade_tiers(&current.load_full(), &engine, modules)
            }));
        }
        Ok(Registry {
            shadow_metrics,
            oci: Puller::default(),
            files: Files::default(),
            engine,
            metrics,
            callouts,
            sandbox,
            builtins,
            current,
            shared: Mutex::new(HashMap::new()),
            install: Mutex::new(()),
            applying: tokio::sync::Mutex::new(()),
            modules,
            builtin_sha256: Mutex::new(HashMap::new()),
        })
    }

    /// How many times a plugin file was read (and hashed) since start.
    pub fn plugin_file_reads(&self) -> u64 {
        self.files.reads()
    }

    /// The compiled-code cache (its counters show what was compiled).
    pub fn modules(&self) -> &ModuleCache {
        &self.modules
    }

    /// The configuration in force: take it once per request or tunnel.
    pub fn current(&self) -> Arc<Installed> {
        self.current.load_full()
    }

    /// The chain a request for `namespace` runs; `None` when the namespace
    /// has no plugins.
    pub fn chain(&self, namespace: &str) -> Option<Arc<Chain>> {
        self.current.load().chain(namespace)
    }

    /// Same as [`current`](Self::current); the config dump reads it.
    pub fn snapshot(&self) -> Arc<Installed> {
        self.current()
    }

    fn namespace_shared(&self, namespace: &str) -> Arc<NamespaceShared> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(namespace.to_owned())
            .or_default()
            .clone()
    }

    /// Builds every namespace's chain from `config`, then installs them with
    /// the config and its discovery as one snapshot. Entries that did not
    /// change keep their plugins. On any error nothing changes. Changes made
    /// through the admin API are replaced.
    pub async fn apply(&self, config: Config) -> Result<(), Error> {
        let _applying = self.applying.lock().await;
        let current = self.current();
        if current.api_changes > 0 {
            tracing::warn!(
                changes = current.api_changes,
                "the config in force had admin API changes; the new config replaces them"
            );
        }
        self.install_config(config, 0, false).await
    }

    /// Applies a change to the installed config (the admin API's): `change`
    /// gets the config in force and returns the new one, which is then
    /// installed as [`apply`](Self::apply) would, with nothing else able to
    /// install in between.
    pub async fn apply_api<E, F>(&self, change: F) -> Result<(), E>
    where
        E: From<Error>,
        F: FnOnce(&Config) -> Result<Config, E>,
    {
        let _applying = self.applying.lock().await;
        let current = self.current();
        let new = change(&current.config)?;
        Ok(self
            .install_config(new, current.api_changes + 1, false)
            .await?)
    }

    /// Looks at every plugin of the config in force again and rebuilds
    /// those whose bytes changed (a plugin file was replaced). A file whose
    /// stamp is unchanged and settled is not read (see `files`).
    pub async fn refresh(&self) -> Result<(), Error> {
        let _applying = self.applying.lock().await;
        let current = self.current();
        self.install_config((*current.config).clone(), current.api_changes, true)
            .await
    }

    /// The plugin files the config in force reads (to watch them).
    pub fn plugin_files(&self) -> Vec<PathBuf> {
        let current = self.current();
        let config = &current.config;
        config
            .namespaces
            .values()
            .flat_map(|ns| &ns.plugins)
            .filter_map(|p| p.url.resolve_file(&config.base_dir))
            .collect()
    }

    /// With `refresh` (the config is the one in force), nothing is swapped
    /// when every entry is kept.
    async fn install_config(
        &self,
        config: Config,
        api_changes: usize,
        refresh: bool,
    ) -> Result<(), Error> {
        self.oci.configure(&config.oci, &config.base_dir);
        let current = self.current();
        let revision = current.revision + 1;
        // Read and check every entry; keep what did not change.
        let mut entries: Vec<(String, Vec<Entry>)> = Vec::new();
        let mut all = Capacity::default();
        let mut built = Capacity::default();
        // Every read is held until the chains are built: entries with the
        // same content share one buffer, so 50 namespaces of one plugin
        // hold its bytes once, not 50 times (the freed copies would stay
        // in the process's heap as resident memory).
        let mut contents = Contents::default();
        // Each plugin file is read at most once, whatever names it.
        let mut files = self.files.pass();
        for (ns, cfg) in &config.namespaces {
            let installed = current.chains.get(ns);
            let mut list = Vec::with_capacity(cfg.plugins.len());
            for spec in &cfg.plugins {
                let kept_by = |r: &Read| {
                    let identity = r.identity();
                    installed.and_then(|c| {
                        c.plugins
                            .iter()
                            .find(|p| p.spec.name == spec.name && p.identity == identity)
                            .cloned()
                    })
                };
                let mut r = self
                    .read(ns, spec, &config.base_dir, &mut files, false)
                    .await?;
                contents.share(&mut r);
                let mut kept = kept_by(&r);
                if kept.is_none() && r.lacks_bytes() {
                    r = self
                        .read(ns, spec, &config.base_dir, &mut files, true)
                        .await?;
                    contents.share(&mut r);
                    kept = kept_by(&r);
                }
                all.add(r.is_component, spec.fail_strategy);
                if let Some(c) = &r.candidate {
                    all.add(c.is_component, spec.fail_strategy);
                }
                match kept {
                    Some(p) => list.push(Entry::Keep(p)),
                    None => {
                        built.add(r.is_component, spec.fail_strategy);
                        if let Some(c) = &r.candidate {
                            built.add(c.is_component, spec.fail_strategy);
                        }
                        list.push(Entry::Build(Box::new(r)));
                    }
                }
            }
            if !list.is_empty() {
                entries.push((ns.clone(), list));
            }
        }
        if refresh && built == Capacity::default() {
            files.finish();
            return Ok(());
        }
        self.check_capacity(&built, built.need(&self.sandbox))?;
        let chains = self.build_all(entries, &current, revision).await?;
        let discovery = Arc::new(Discovery::from_config(&config));
        let in_use: HashSet<String> = chains
            .values()
            .flat_map(|c| c.plugins.iter().map(|p| p.sha256.clone()))
            .collect();
        {
            let _guard = self.install.lock().unwrap_or_else(|e| e.into_inner());
            self.callouts.set_upstreams(config.upstreams.clone());
            self.current.store(Arc::new(Installed {
                config: Arc::new(config),
                discovery,
                chains,
                need: all.need(&self.sandbox),
                revision,
                api_changes,
            }));
        }
        self.modules.retain(&in_use);
        files.finish();
        // Code optimized while these chains were built, which the hook could
        // not yet see installed.
        if self.engine.tiering.is_some() {
            let (current, engine, modules) =
                (self.current(), self.engine.clone(), self.modules.clone());
            tokio::task::spawn_blocking(move || upgrade_tiers(&current, &engine, &modules));
        }
        Ok(())
    }

    /// Builds the new plugins of every chain, a few at a time (compiling
    /// and starting are CPU-bound, off the request workers), and assembles
    /// the chains in order. A namespace whose plugins are all kept keeps
    /// its chain.
    async fn build_all(
        &self,
        entries: Vec<(String, Vec<Entry>)>,
        current: &Installed,
        revision: u64,
    ) -> Result<HashMap<String, Arc<Chain>>, Error> {
        let mut jobs = Vec::new();
        let mut layout = Vec::with_capacity(entries.len());
        for (ns, list) in entries {
            let mut slots = Vec::with_capacity(list.len());
            for entry in list {
                match entry {
                    Entry::Keep(p) => slots.push(Some(p)),
                    Entry::Build(r) => {
                        jobs.push((ns.clone(), *r));
                        slots.push(None);
                    }
                }
            }
            layout.push((ns, slots));
        }
        let parallel = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let mut built = futures_util::stream::iter(jobs)
            .map(|(ns, r)| async move { self.load_entry(&ns, r, revision).await.map(Arc::new) })
            .buffered(parallel)
            .collect::<Vec<_>>()
            .await
            .into_iter();
        let mut chains = HashMap::with_capacity(layout.len());
        for (ns, slots) in layout {
            let unchanged = slots.iter().all(Option::is_some)
                && current
                    .chains
                    .get(&ns)
                    .is_some_and(|c| c.plugins.len() == slots.len());
            let mut plugins = Vec::with_capacity(slots.len());
            for slot in slots {
                match slot {
                    Some(p) => plugins.push(p),
                    None => plugins.push(built.next().expect("one result per job")?),
                }
            }
            let chain = match current.chains.get(&ns) {
                Some(c) if unchanged => c.clone(),
                _ => Arc::new(ordered(&ns, plugins)),
            };
            chains.insert(ns, chain);
        }
        Ok(chains)
    }

    /// The new chains need `need` slots while the running ones still hold
    /// theirs.
    fn check_capacity(&self, capacity: &Capacity, need: usize) -> Result<(), Error> {
        let max = self.sandbox.max_instances as usize;
        let running = self.current.load().need;
        if need + running <= max {
            return Ok(());
        }
        let held = if running > 0 {
            format!(", plus {running} held by the running config until the swap")
        } else {
            String::new()
        };
        Err(Error::Capacity {
            max,
            needed: need + running,
            detail: format!("{}{held}", capacity.explain(&self.sandbox)),
        })
    }

    /// Replaces (or, with `None`, removes) one namespace's chain, keeping
    /// the rest of the snapshot.
    pub fn install(&self, namespace: &str, chain: Option<Chain>) {
        let _guard = self.install.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        let mut chains = current.chains.clone();
        match chain {
            Some(c) => chains.insert(namespace.to_owned(), Arc::new(c)),
            None => chains.remove(namespace),
        };
        self.current.store(Arc::new(Installed {
            config: current.config.clone(),
            discovery: current.discovery.clone(),
            chains,
            need: current.need,
            revision: current.revision + 1,
            api_changes: current.api_changes,
        }));
    }

    /// Installs `chain` for `namespace` and `config` as the config in force,
    /// in one swap, but only while `expected` is still the snapshot in
    /// force: a reload in between wins and this returns `false`.
    pub fn swap_chain_if_current(
        &self,
        expected: &Arc<Installed>,
        namespace: &str,
        chain: Chain,
        config: Config,
    ) -> bool {
        let _guard = self.install.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        if !Arc::ptr_eq(&current, expected) {
            return false;
        }
        let mut chains = current.chains.clone();
        chains.insert(namespace.to_owned(), Arc::new(chain));
        self.current.store(Arc::new(Installed {
            config: Arc::new(config),
            discovery: current.discovery.clone(),
            chains,
            need: current.need,
            revision: current.revision + 1,
            // A promotion is a change the config file does not hold.
            api_changes: current.api_changes + 1,
        }));
        true
    }

    /// Loads every plugin of a namespace and orders them as Istio's waypoint
    /// does (see [`chain_position`]), then higher priority first, then name.
    pub async fn build_chain(
        &self,
        namespace: &str,
        specs: &[PluginSpec],
        base_dir: &Path,
    ) -> Result<Chain, Error> {
        let mut read = Vec::with_capacity(specs.len());
        let mut files = self.files.pass();
        for spec in specs {
            read.push(
                self.read(namespace, spec, base_dir, &mut files, true)
                    .await?,
            );
        }
        self.build(namespace, read).await
    }

    /// Compiles and starts read plugins, ordered as in [`ordered`].
    async fn build(&self, namespace: &str, read: Vec<Read>) -> Result<Chain, Error> {
        let revision = self.current().revision + 1;
        let mut plugins = Vec::with_capacity(read.len());
        for r in read {
            plugins.push(Arc::new(self.load_entry(namespace, r, revision).await?));
        }
        Ok(ordered(namespace, plugins))
    }

    /// Reads a plugin entry and its shadow candidate, if it has one.
    /// Without `need_bytes`, a file known unchanged is not read.
    async fn read(
        &self,
        namespace: &str,
        spec: &PluginSpec,
        base_dir: &Path,
        files: &mut Pass<'_>,
        need_bytes: bool,
    ) -> Result<Read, Error> {
        let mut read = self
            .read_one(namespace, spec, base_dir, files, need_bytes)
            .await?;
        if let Some(candidate) = spec.candidate() {
            let mut c = self
                .read_one(namespace, &candidate, base_dir, files, need_bytes)
                .await?;
            c.is_candidate = true;
            read.candidate = Some(Box::new(c));
        }
        Ok(read)
    }

    /// Reads a plugin's bytes and checks its sha256; decides its kind.
    async fn read_one(
        &self,
        namespace: &str,
        spec: &PluginSpec,
        base_dir: &Path,
        files: &mut Pass<'_>,
        need_bytes: bool,
    ) -> Result<Read, Error> {
        let plugin = spec.name.clone();
        let ns = namespace.to_owned();
        // An `oci://` pull checks the entry's sha256 itself (it may name the
        // manifest as well as the module).
        let mut pinned = false;
        let (bytes, head, sha256) = match &spec.url {
            PluginUrl::Oci(reference) => {
                pinned = true;
                let pulled = self
                    .oci
                    .fetch(reference, spec.image_pull_policy, spec.sha256.as_deref())
                    .await
                    .map_err(|source| Error::Pull {
                        plugin: plugin.clone(),
                        namespace: ns.clone(),
                        source: Box::new(source),
                    })?;
                let sha256 = hex::encode(Sha256::digest(&pulled.bytes));
                let bytes = Bytes::from_owner(pulled.bytes);
                (Some(bytes.clone()), bytes, sha256)
            }
            PluginUrl::File(_) => {
                let path = spec.url.resolve_file(base_dir).expect("file url");
                let seen = files
                    .look(&path, need_bytes)
                    .await
                    .map_err(|e| Error::Read {
                        plugin: plugin.clone(),
                        namespace: ns.clone(),
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                (seen.bytes, seen.head, seen.sha256)
            }
            PluginUrl::Builtin(name) => {
                let bytes = self.builtins.get(name.as_str()).copied().ok_or_else(|| {
                    Error::UnknownBuiltin {
                        plugin: plugin.clone(),
                        namespace: ns.clone(),
                        name: name.clone(),
                        available: self.builtins.keys().copied().collect::<Vec<_>>().join(", "),
                    }
                })?;
                let sha256 = self
                    .builtin_sha256
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(name.clone())
                    .or_insert_with(|| hex::encode(Sha256::digest(bytes)))
                    .clone();
                let bytes = Bytes::from_static(bytes);
                (Some(bytes.clone()), bytes, sha256)
            }
        };
        if let Some(expected) = &spec.sha256
            && !pinned
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(Error::Checksum {
                plugin,
                namespace: ns,
                expected: expected.clone(),
                actual: sha256,
            });
        }
        if let Some(reason) = not_wasm(&head) {
            return Err(Error::Compile {
                plugin,
                namespace: ns,
                reason,
            });
        }
        // A core module's header is `\0asm` then version 1; a component's
        // carries another version and layer. Decided once, here.
        let is_component = head.len() >= 8 && head[0..4] == *b"\0asm" && head[4..8] != [1, 0, 0, 0];
        Ok(Read {
            spec: spec.clone(),
            bytes,
            sha256,
            is_component,
            candidate: None,
            is_candidate: false,
        })
    }

    /// Builds an entry: its serving plugin and, for a shadow rollout, the
    /// candidate beside it.
    async fn load_entry(
        &self,
        namespace: &str,
        mut read: Read,
        revision: u64,
    ) -> Result<Plugin, Error> {
        let identity = read.identity();
        let candidate = read.candidate.take();
        let mut plugin = self.load(namespace, read, revision).await?;
        plugin.identity = identity;
        if let Some(c) = candidate {
            let spec = plugin
                .spec
                .shadow
                .clone()
                .expect("a candidate comes from a shadow");
            let candidate = Arc::new(self.load(namespace, *c, revision).await?);
            plugin.shadow = Some(Arc::new(Shadow::new(
                candidate,
                spec,
                self.shadow_metrics.clone(),
            )));
        }
        Ok(plugin)
    }

    async fn load(&self, namespace: &str, read: Read, revision: u64) -> Result<Plugin, Error> {
        let started = Instant::now();
        let identity = read.identity();
        let Read {
            spec,
            bytes,
            sha256,
            is_component,
            is_candidate,
            ..
        } = read;
        let bytes = bytes.ok_or_else(|| {
            Error::Engine(format!(
                "plugin `{}` in namespace `{namespace}` was to be built unread",
                spec.name
            ))
        })?;
        let owned_spec = spec;
        let spec = &owned_spec;
        let plugin = spec.name.clone();
        let ns = namespace.to_owned();
        // A candidate's failures and metrics are counted apart, unexported,
        // so they never mix with the serving version's series.
        let candidate_metrics = if is_candidate {
            Arc::new(Metrics::new())
        } else {
            self.metrics.clone()
        };

        let shared = Arc::new(PluginShared {
            name: spec.name.clone(),
            namespace: namespace.to_owned(),
            root_id: spec.root_id().to_owned(),
            vm_id: spec.vm_id().to_owned(),
            plugin_config: spec.plugin_config_bytes(),
            vm_config: Vec::new(),
            env: spec.environment(),
            limits: self.engine.limits.clone(),
            shared: if is_candidate {
                Arc::default()
            } else {
                self.namespace_shared(namespace)
            },
            callouts: self.callouts.clone(),
            metrics: candidate_metrics.plugin_metrics(namespace, &spec.name),
            global_metrics: candidate_metrics.clone(),
            log_tail: Mutex::new(Default::default()),
            limits_warned: Default::default(),
        });

        // Compiling takes Cranelift tenths of a second: keep it off the
        // request workers.
        let engine = self.engine.clone();
        let modules = self.modules.clone();
        let instances = self.sandbox.instances_per_plugin;
        let per_request = self.sandbox.requests_per_component;
        let size = bytes.len();
        let shared2 = shared.clone();
        let sha = sha256.clone();
        let kind = tokio::task::spawn_blocking(move || -> Result<PluginKind, LoadFailure> {
            let compiled = modules
                .get(&sha, &bytes, is_component)
                .map_err(|e| LoadFailure::Compile(one_line(&e)))?;
            drop(bytes);
            if let Compiled::Component(component) = &compiled {
                let plugin = ComponentPlugin::new(
                    engine.component_linker_for(component.engine()),
                    component,
                    engine.is_baseline(component.engine()),
                    shared2,
                    instances,
                    per_request,
                )
                .map_err(|e| match e {
                    ComponentLoadError::Abi(m) => LoadFailure::Abi(m),
                    ComponentLoadError::Start(m) => LoadFailure::Start(m),
                })?;
                // Started and configured: it loads. Until its first request
                // the entry keeps no instance (most namespaces of a large
                // waypoint are idle at any moment); that request pays one
                // instantiation and `configure`.
                plugin.park();
                return Ok(PluginKind::Component(plugin));
            }
            let Compiled::Module(module) = &compiled else {
                unreachable!("a core module's bytes compile to a module")
            };
            let baseline = engine.is_baseline(module.engine());
            let module =
                ProxyWasmModule::new(engine.proxy_wasm_linker_for(module.engine()), module)
                    .map_err(LoadFailure::Abi)?;
            let plugin = ProxyWasmPlugin::new(module, baseline, shared2, instances).map_err(
                |e| match e {
                    StartError::BadExport { .. } | StartError::MissingContextCreate => {
                        LoadFailure::Abi(e.to_string())
                    }
                    other => LoadFailure::Start(other.to_string()),
                },
            )?;
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
        let took = started.elapsed();
        tracing::info!(plugin = %spec.name, namespace, sha256 = %sha256, size, shadow = is_candidate, ms = took.as_millis() as u64, "plugin loaded");
        Ok(Plugin {
            spec: owned_spec,
            namespace: namespace.to_owned(),
            sha256,
            size,
            kind,
            identity,
            loaded: LoadInfo {
                at: SystemTime::now(),
                took,
                revision,
            },
            shadow: None,
        })
    }
}

/// Moves every plugin of `installed` still on baseline code onto its
/// optimized code, where that is compiled. A plugin that fails to link or
/// start from the optimized code (it did from the same bytes already, so
/// this is not expected) keeps serving on baseline code.
fn upgrade_tiers(installed: &Installed, engine: &Engine, modules: &ModuleCache) {
    let plugins = installed.chains.values().flat_map(|c| {
        c.plugins
            .iter()
            .flat_map(|p| std::iter::once(p).chain(p.shadow.as_ref().map(|s| &s.candidate)))
    });
    for plugin in plugins {
        let moved = match &plugin.kind {
            PluginKind::Component(c) if c.on_baseline() => {
                match modules.optimized(&plugin.sha256, true) {
                    Some(Compiled::Component(optimized)) => c
                        .upgrade(&engine.component_linker, &optimized)
                        .map_err(|(ComponentLoadError::Abi(e) | ComponentLoadError::Start(e))| e),
                    _ => continue,
                }
            }
            PluginKind::ProxyWasm(p) if p.on_baseline() => {
                match modules.optimized(&plugin.sha256, false) {
                    Some(Compiled::Module(optimized)) => p
                        .upgrade(&engine.proxy_wasm_linker, &optimized)
                        .map_err(|e| e.to_string()),
                    _ => continue,
                }
            }
            _ => continue,
        };
        match moved {
            Ok(()) => {
                tracing::debug!(plugin = %plugin.spec.name, namespace = %plugin.namespace, "plugin moved to optimized code")
            }
            Err(e) => {
                tracing::warn!(plugin = %plugin.spec.name, namespace = %plugin.namespace, error = %e, "plugin stays on baseline code")
            }
        }
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

/// A namespace's plugins ordered by [`chain_position`], then higher
/// priority first, then name.
fn ordered(namespace: &str, mut plugins: Vec<Arc<Plugin>>) -> Chain {
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
    Chain {
        namespace: namespace.to_owned(),
        plugins,
    }
}

enum LoadFailure {
    Compile(String),
    Abi(String),
    Start(String),
}

/// Names what is wrong with bytes that are not WebAssembly at all, in one
/// line (wasmtime's own message dumps the bytes over several lines).
fn not_wasm(bytes: &[u8]) -> Option<String> {
    let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
    if bytes.len() < 8 {
        return Some(format!(
            "{} bytes long, shorter than a module header",
            bytes.len()
        ));
    }
    (bytes[..4] != *b"\0asm").then(|| {
        format!(
            "bad magic bytes {} (a module starts with 00 61 73 6d)",
            head.join(" ")
        )
    })
}

/// Joins a multi-line error into one log- and terminal-friendly line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod load_tests {
    use super::*;

    #[test]
    fn non_wasm_is_named_in_one_line() {
        assert_eq!(
            not_wasm(b"+L;\xfd and more").unwrap(),
            "bad magic bytes 2b 4c 3b fd (a module starts with 00 61 73 6d)"
        );
        assert!(not_wasm(b"\0asm").unwrap().contains("4 bytes long"));
        assert_eq!(not_wasm(b"\0asm\x01\0\0\0"), None);
        assert_eq!(one_line("a\n  b\n\nc"), "a; b; c");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Proxy-Wasm module that loads and does nothing; `tag` changes its
    /// bytes, not their length.
    fn module(tag: u8) -> Vec<u8> {
        let wat = format!(
            r#"(module
  (memory (export "memory") 1)
  (data (i32.const 16) "tag-{}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32)))"#,
            tag as char
        );
        wat::parse_str(wat).unwrap()
    }

    fn registry(config: &Config) -> Registry {
        let mut r = Registry::new(
            Engine::new(&config.sandbox).unwrap(),
            Arc::new(Metrics::new()),
            Arc::new(Callouts::new(config.upstreams.clone())),
            config.sandbox.clone(),
            Default::default(),
        );
        // Settles a written file in a tenth of a second, not two.
        r.files = Files::with_racy(SETTLE);
        r
    }

    const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

    /// `namespaces` namespaces whose plugin `p` reads `file` (`ns0` with
    /// `pluginConfig: {value}`).
    fn config(file: &Path, namespaces: usize, value: &str) -> Config {
        let mut yaml = String::from("namespaces:\n");
        for n in 0..namespaces {
            yaml.push_str(&format!(
                "  ns{n}:\n    plugins:\n      - name: p\n        url: file://{}\n",
                file.display()
            ));
            if n == 0 {
                yaml.push_str(&format!("        pluginConfig: {{ v: {value} }}\n"));
            }
        }
        Config::from_yaml(&yaml, "test.yaml", Path::new("/")).unwrap()
    }

    fn sha_of(registry: &Registry, ns: &str) -> String {
        registry.chain(ns).unwrap().plugins[0].sha256.clone()
    }

    /// A plugin file in a folder of its own (removed with the guard).
    fn plugin_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("wayplug-registry-")
            .tempdir()
            .unwrap();
        let file = dir.path().join("p.wasm");
        std::fs::write(&file, module(b'a')).unwrap();
        (dir, file)
    }

    #[tokio::test]
    async fn a_file_named_by_many_entries_is_read_once_per_load() {
        let (_dir, file) = plugin_file();
        let cfg = config(&file, 20, "1");
        let registry = registry(&cfg);
        registry.apply(cfg).await.unwrap();
        assert_eq!(registry.current().chains.len(), 20);
        assert_eq!(registry.plugin_file_reads(), 1, "20 entries, one read");
        // Just written: a new load reads it again, once.
        registry.apply(config(&file, 20, "2")).await.unwrap();
        assert_eq!(registry.plugin_file_reads(), 2);
    }

    #[tokio::test]
    async fn the_poll_reads_no_unchanged_file_and_sees_a_changed_one() {
        let (dir, file) = plugin_file();
        let cfg = config(&file, 3, "1");
        let registry = registry(&cfg);
        registry.apply(cfg).await.unwrap();
        let first = sha_of(&registry, "ns2");
        // Read too soon after the write to be trusted: the poll reads it
        // again, then, settled, no more.
        tokio::time::sleep(SETTLE * 2).await;
        for _ in 0..5 {
            registry.refresh().await.unwrap();
        }
        assert_eq!(registry.plugin_file_reads(), 2, "read until settled only");
        // A changed configuration builds one entry: its bytes are read once.
        let revision = registry.current().revision;
        registry.apply(config(&file, 3, "2")).await.unwrap();
        assert_eq!(registry.plugin_file_reads(), 3);
        assert_eq!(registry.current().revision, revision + 1);

        // Replaced by a file of the same size: noticed at the next poll.
        let tmp = dir.path().join("p.wasm.new");
        std::fs::write(&tmp, module(b'b')).unwrap();
        assert_eq!(
            tmp.metadata().unwrap().len(),
            file.metadata().unwrap().len()
        );
        std::fs::rename(&tmp, &file).unwrap();
        registry.refresh().await.unwrap();
        let second = sha_of(&registry, "ns2");
        assert_ne!(first, second, "the new bytes are in force");
        // Rewritten in place with the same size: noticed too.
        std::fs::write(&file, module(b'c')).unwrap();
        registry.refresh().await.unwrap();
        assert_ne!(sha_of(&registry, "ns0"), second);
    }

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
