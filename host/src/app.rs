//! Wiring: builds the engine, registry and pipeline from a config, binds the
//! listeners, and applies new configs while running.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin};
use crate::config::{self, Config};
use crate::downstream::{ConnectionLimit, DownstreamMetrics};
use crate::hbone::{self, drain::Drain};
use crate::http::access_log::AccessLog;
use crate::http::pipeline::Limits;
use crate::http::upstream::UpstreamTimeouts;
use crate::http::{Pipeline, server};
use crate::metrics::Metrics;
use crate::plugin::callout::Callouts;
use crate::plugin::engine::Engine;
use crate::plugin::registry::Builtins;
use crate::plugin::{self, Registry};
use crate::policy::Policies;
use crate::tls::{self, Acceptor, CertStore, CertWatcher, Connector};
use crate::watch::{Topic, Watcher};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} ({which} listener): {source}")]
    Bind {
        which: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Plugin(#[from] plugin::Error),
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("{0}")]
    Reload(String),
    #[error("waypoint identity: {0}")]
    Identity(#[from] tls::Error),
    #[error("cannot start the access log writer thread: {0}")]
    AccessLog(std::io::Error),
}

/// How long a changed config file must stay the same before it is read
/// as complete.
const CONFIG_SETTLE: Duration = Duration::from_millis(100);

/// How many times a config file that keeps changing is re-read before
/// waiting for the next check.
const CONFIG_SETTLE_TRIES: usize = 5;

/// After a filesystem notification, how long to wait for the rest of a
/// burst (an editor's write, rename and chmod) before looking once.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(5);

/// The file's content once two reads `settle` apart agree (starting from
/// `bytes`, just read); `None` when it
/// cannot be read or keeps changing.
async fn read_settled(path: &Path, mut bytes: Vec<u8>, settle: Duration) -> Option<Vec<u8>> {
    for _ in 0..CONFIG_SETTLE_TRIES {
        tokio::time::sleep(settle).await;
        let again = tokio::fs::read(path).await.ok()?;
        if again == bytes {
            return Some(bytes);
        }
        bytes = again;
    }
    None
}

/// Everything a config's plugins need, built and installed: what `run`
/// serves from and what `check` reports on.
pub(crate) struct Loaded {
    pub registry: Arc<Registry>,
    pub policies: Arc<Policies>,
    pub metrics: Arc<Metrics>,
}

/// Builds the engine and registry for `config` and installs every chain
/// (configured namespaces and the policy folder's), compiling what the
/// cache does not hold.
pub(crate) async fn load(config: &Config, builtins: Builtins) -> Result<Loaded, Error> {
    let engine = Engine::new(&config.sandbox)?;
    let metrics = Arc::new(Metrics::new());
    let callouts = Arc::new(Callouts::new(config.upstreams.clone()));
    let registry = Arc::new(Registry::with_cache_dir(
        engine,
        metrics.clone(),
        callouts,
        config.sandbox.clone(),
        builtins,
        config.cache_dir().as_deref(),
    )?);
    let policies = Arc::new(Policies::default());
    policies
        .apply(config, |namespaces| install(&registry, config, namespaces))
        .await?;
    Ok(Loaded {
        registry,
        policies,
        metrics,
    })
}

/// A running waypoint.
pub struct Waypoint {
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub hbone_addr: Option<SocketAddr>,
    pipeline: Arc<Pipeline>,
    config: Arc<ArcSwap<Config>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    identity: Option<Identity>,
    drain: Drain,
    policies: Arc<Policies>,
    watcher: Arc<Watcher>,
    /// Plugins uploaded through the admin API (removed at shutdown).
    uploads: Arc<crate::admin::uploads::Uploads>,
}

/// The waypoint's certificate, kept current by its watcher.
struct Identity {
    store: Arc<CertStore>,
    _watcher: CertWatcher,
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        which,
        addr,
        source,
    })
}

/// The HBONE listener's socket: keepalive set before listening, so accepted connections
/// inherit it (dead ztunnel peers are noticed even between HTTP/2 pings).
fn bind_hbone(addr: SocketAddr) -> Result<TcpListener, Error> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_keepalive(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    bind().map_err(|source| Error::Bind {
        which: "hbone",
        addr,
        source,
    })
}

/// The access log's writer thread, writing to standard output.
fn access_log(config: &Config, metrics: &Metrics) -> Result<Arc<AccessLog>, Error> {
    let dropped = prometheus_client::metrics::counter::Counter::default();
    metrics.register(
        "access_log_dropped",
        "Access log lines dropped because the writer could not keep up",
        dropped.clone(),
    );
    let log = AccessLog::writer(&config.access_log, Box::new(std::io::stdout()), dropped)
        .map_err(Error::AccessLog)?;
    Ok(Arc::new(log))
}

/// The reason label of a refused reload.
fn reload_reason(e: &Error) -> &'static str {
    match e {
        Error::Bind { .. } => "bind",
        Error::Plugin(_) => "plugin",
        Error::Config(_) => "config",
        Error::Reload(_) => "restart_required",
        Error::Identity(_) => "identity",
        Error::AccessLog(_) => "access_log",
    }
}

impl Waypoint {
    /// Loads every plugin, then starts listening. Nothing listens unless
    /// everything loaded.
    pub async fn start(config: Config, builtins: Builtins) -> Result<Waypoint, Error> {
        let Loaded {
            registry,
            policies,
            metrics,
        } = load(&config, builtins).await?;
        let watcher = Arc::new(Watcher::new());
        watch_installed(&watcher, &registry, &config);
        let pipeline = Arc::new(Pipeline::new(
            registry.clone(),
            metrics.clone(),
            Limits {
                paused_request_timeout: config.sandbox.paused_request_timeout(),
                max_buffered_body: config.sandbox.max_buffered_body_bytes,
            },
        ));
        pipeline.set_access_log(access_log(&config, &metrics)?);
        pipeline.upstream().set_timeouts(UpstreamTimeouts {
            connect: config.limits.upstream_connect_timeout(),
            response_headers: config.limits.upstream_response_timeout(),
        });
        let downstream = DownstreamMetrics::new(&metrics);
        let max_connections = config.limits.max_connections;
        let cap = |listener| {
            Arc::new(ConnectionLimit::new(
                listener,
                max_connections,
                downstream.clone(),
            ))
        };

        // The identity is loaded before anything listens: a waypoint that cannot prove who it
        // is must not accept tunnels.
        let identity = match &config.identity {
            Some(id) => {
                let store = CertStore::load(id.cert_dir(&config.base_dir))?;
                let watcher = store.spawn_watcher(id.reload_interval());
                let client = hbone::Client::new(
                    Connector::new(store.clone()),
                    hbone::ClientSettings::from(&config.hbone),
                );
                pipeline.upstream().set_hbone(Arc::new(client));
                Some(Identity {
                    store,
                    _watcher: watcher,
                })
            }
            None => None,
        };
        let acceptor = match (&identity, &config.identity) {
            (Some(id), Some(cfg)) => {
                let ours = id.store.identity();
                let trust_domain = cfg
                    .trust_domain
                    .clone()
                    .unwrap_or_else(|| ours.trust_domain().to_owned());
                Some(Acceptor::new(id.store.clone(), &trust_domain)?)
            }
            _ => None,
        };

        let (shutdown, rx) = watch::channel(false);
        let drain = Drain::new(rx.clone());
        let mut tasks = Vec::new();
        let http = match config.listeners.http {
            Some(addr) => Some(bind("http", addr).await?),
            None => None,
        };
        let admin_listener = match config.listeners.admin {
            Some(addr) => Some(bind("admin", addr).await?),
            None => None,
        };
        let hbone_listener = match (config.listeners.hbone, acceptor) {
            (Some(addr), Some(acceptor)) => Some((bind_hbone(addr)?, acceptor)),
            _ => None,
        };
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        let hbone_addr = hbone_listener
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok());
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let config = Arc::new(ArcSwap::from_pointee(config));
        let ready = Arc::new(AtomicBool::new(false));
        if let Some(l) = http {
            tasks.push(tokio::spawn(server::serve(
                l,
                pipeline.clone(),
                config.load().limits.clone(),
                cap("http"),
                rx.clone(),
            )));
        }
        if let Some((l, acceptor)) = hbone_listener {
            let inbound = Arc::new(hbone::Inbound::new(
                acceptor,
                pipeline.clone(),
                config.clone(),
                cap("hbone"),
            ));
            tasks.push(tokio::spawn(hbone::server::serve(
                l,
                inbound,
                drain.watch(),
            )));
        }
        tasks.push(tokio::spawn(watch_policies(
            pipeline.clone(),
            config.clone(),
            policies.clone(),
            watcher.clone(),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(watch_plugins(
            pipeline.registry().clone(),
            config.clone(),
            watcher.clone(),
            rx.clone(),
        )));
        let uploads = Arc::new(crate::admin::uploads::Uploads::new(&config.load()));
        if let Some(l) = admin_listener {
            let admin = Arc::new(Admin {
                metrics,
                registry,
                config: config.clone(),
                ready: ready.clone(),
                recorder: pipeline.recorder().clone(),
                uploads: uploads.clone(),
            });
            tasks.push(tokio::spawn(admin::serve(l, admin, rx.clone())));
        }
        ready.store(true, Ordering::Release);
        Ok(Waypoint {
            http_addr,
            admin_addr,
            hbone_addr,
            pipeline,
            config,
            shutdown,
            tasks,
            identity,
            drain,
            policies,
            watcher,
            uploads,
        })
    }

    /// What the last read of `policyDir` refused, one message per resource.
    pub fn policy_errors(&self) -> Vec<String> {
        self.policies.errors()
    }

    /// The waypoint's certificate store, when it has an identity.
    pub fn cert_store(&self) -> Option<&Arc<CertStore>> {
        self.identity.as_ref().map(|i| &i.store)
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Applies a new config: services, callout upstreams and every
    /// namespace's plugin chain. Entries that did not change keep their
    /// plugins; all new plugins are loaded before anything is swapped; on
    /// any error the running config stays in force. Listener, sandbox and
    /// cache folder changes need a restart and are refused.
    pub async fn reload(&self, new: Config) -> Result<(), Error> {
        let current = self.config.load_full();
        if new.listeners.http != current.listeners.http
            || new.listeners.admin != current.listeners.admin
            || new.listeners.hbone != current.listeners.hbone
        {
            return Err(Error::Reload(
                "listener addresses changed: restart to apply them".into(),
            ));
        }
        if serde_json::to_value(&new.sandbox).ok() != serde_json::to_value(&current.sandbox).ok() {
            return Err(Error::Reload(
                "sandbox limits changed: restart to apply them".into(),
            ));
        }
        if new.cache_dir() != current.cache_dir() {
            return Err(Error::Reload(
                "cacheDir changed: restart to apply it".into(),
            ));
        }
        if new.identity != current.identity
            || new.identity.as_ref().map(|i| i.cert_dir(&new.base_dir))
                != current
                    .identity
                    .as_ref()
                    .map(|i| i.cert_dir(&current.base_dir))
        {
            return Err(Error::Reload(
                "identity changed: restart to apply it (rotated certificate files are picked \
                 up without a restart)"
                    .into(),
            ));
        }
        if new.hbone != current.hbone {
            return Err(Error::Reload(
                "HBONE settings changed: restart to apply them".into(),
            ));
        }
        if new.limits != current.limits {
            return Err(Error::Reload(
                "limits changed: restart to apply them".into(),
            ));
        }
        // Config, discovery and chains (with what the policy folder
        // compiled) become visible together, as one snapshot; the copy kept
        // here (listener settings, drain, the HBONE listener's settings)
        // follows right after.
        let registry = self.pipeline.registry().clone();
        self.policies
            .apply(&new, |namespaces| install(&registry, &new, namespaces))
            .await?;
        watch_installed(&self.watcher, &registry, &new);
        self.pipeline.access_log().configure(&new.access_log);
        self.config.store(Arc::new(new));
        Ok(())
    }

    /// Applies changes to the config file at `path` until `stop` completes,
    /// checking every `interval`. A file is judged by its content, not its
    /// modification time (two writes within the file system's timestamp
    /// granularity look like one), and only content that stayed the same
    /// for a short settling time is considered, so a file being written is
    /// not applied half-way. Content that does not parse is read again at
    /// the next check (it is probably still being written) rather than
    /// skipped until the file changes; content that parsed and was refused
    /// is not tried again until it changes. The running config stays
    /// meanwhile. Filesystem notifications wake it as soon as the file is
    /// written; a write that was closed (or a file renamed into place) is
    /// whole and is read without settling. `interval` is the fallback poll.
    pub async fn follow_config(
        &self,
        path: &Path,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let settle = interval.min(CONFIG_SETTLE);
        let mut tried = std::fs::read(path).ok().map(|b| Sha256::digest(&b));
        let mut unparsed = None;
        let mut poll = tokio::time::interval(interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.watcher.set_config(path);
        tokio::pin!(stop);
        loop {
            let notified = tokio::select! {
                _ = &mut stop => return,
                _ = poll.tick() => false,
                _ = self.watcher.changed(Topic::Config) => true,
            };
            if notified {
                tokio::time::sleep(EVENT_DEBOUNCE).await;
            }
            let mut complete = self.watcher.config_complete();
            if notified && !complete {
                // A write still open: its close says the file is whole.
                complete = tokio::time::timeout(settle, async {
                    loop {
                        self.watcher.changed(Topic::Config).await;
                        if self.watcher.config_complete() {
                            return true;
                        }
                    }
                })
                .await
                .unwrap_or(false);
            }
            // Replaced by a rename, or not there for a moment: next time.
            let Ok(first) = tokio::fs::read(path).await else {
                continue;
            };
            if tried == Some(Sha256::digest(&first)) {
                continue;
            }
            let bytes = if complete {
                first
            } else {
                let Some(bytes) = read_settled(path, first, settle).await else {
                    continue;
                };
                bytes
            };
            let digest = Sha256::digest(&bytes);
            if tried == Some(digest) {
                continue;
            }
            let base = path
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| std::path::PathBuf::from("."));
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|e| format!("config {}: not UTF-8: {e}", path.display()))
                .and_then(|text| {
                    Config::from_yaml(text, &path.display().to_string(), &base)
                        .map_err(|e| e.to_string())
                });
            let config = match parsed {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "config file does not load (yet); keeping the running config and reading it again");
                    // Counted once per content: the same bytes are read again at every check.
                    if unparsed != Some(digest) {
                        unparsed = Some(digest);
                        self.pipeline.metrics().config_reload("rejected", "parse");
                    }
                    continue;
                }
            };
            tried = Some(digest);
            match self.reload(config).await {
                Ok(()) => {
                    self.pipeline.metrics().config_reload("ok", "applied");
                    tracing::info!(config = %path.display(), "config applied")
                }
                Err(e) => {
                    self.pipeline
                        .metrics()
                        .config_reload("rejected", reload_reason(&e));
                    tracing::error!(error = %e, "config change rejected; keeping the running config")
                }
            }
        }
    }

    /// Stops accepting, lets open connections finish their requests. HBONE tunnels get until
    /// `drainTimeoutMs`; whatever is still open then is closed.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let deadline = self.config.load().drain_timeout();
        if self.drain.finish(deadline).await {
            tracing::info!("drained");
        }
        self.uploads.close();
        // The writer pauses between batches: the last requests' lines go now.
        if !self
            .pipeline
            .access_log()
            .flush(std::time::Duration::from_secs(1))
        {
            tracing::warn!("the access log's last lines were not written within 1 s of shutdown");
        }
    }
}

/// Installs `config` with the namespace chains its policy folder compiled
/// (the config's own when it names none), as one snapshot.
async fn install(
    registry: &Registry,
    config: &Config,
    namespaces: std::collections::BTreeMap<String, config::NamespaceConfig>,
) -> Result<(), plugin::Error> {
    let mut full = config.clone();
    full.namespaces = namespaces;
    registry.apply(full).await
}

/// Applies `policyDir` changes as they appear, through the same path as a
/// config reload. Stops on shutdown.
async fn watch_policies(
    pipeline: Arc<Pipeline>,
    config: Arc<ArcSwap<Config>>,
    policies: Arc<Policies>,
    watcher: Arc<Watcher>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let interval = config.load().policy_poll_interval();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = watcher.changed(Topic::Policies) => {
                tokio::time::sleep(EVENT_DEBOUNCE).await;
            }
            _ = shutdown.changed() => return,
        }
        let current = config.load_full();
        if !policies.changed(&current).await {
            continue;
        }
        let registry = pipeline.registry().clone();
        let applied = policies
            .apply(&current, |namespaces| {
                install(&registry, &current, namespaces)
            })
            .await;
        match applied {
            Ok(()) => watch_installed(&watcher, &registry, &current),
            Err(e) => {
                tracing::error!(error = %e, "policy change rejected; keeping the running policies")
            }
        }
    }
}

/// Points the watcher at what the installed config reads.
fn watch_installed(watcher: &Watcher, registry: &Registry, config: &Config) {
    watcher.set_policy_dir(config.policy_dir().as_deref());
    watcher.set_plugin_files(registry.plugin_files());
}

/// Rebuilds the plugins whose files changed, when a notification says one
/// may have, or at the policy poll interval. Stops on shutdown.
async fn watch_plugins(
    registry: Arc<Registry>,
    config: Arc<ArcSwap<Config>>,
    watcher: Arc<Watcher>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let interval = config.load().policy_poll_interval();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = watcher.changed(Topic::Plugins) => {
                tokio::time::sleep(EVENT_DEBOUNCE).await;
            }
            _ = shutdown.changed() => return,
        }
        match registry.refresh().await {
            Ok(()) => watcher.set_plugin_files(registry.plugin_files()),
            Err(e) => {
                tracing::error!(error = %e, "changed plugin file rejected; keeping the running plugin")
            }
        }
    }
}
