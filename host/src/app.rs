//! Wiring: builds the engine, registry and pipeline from a config, binds the
//! listeners, and applies new configs while running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin};
use crate::config::{self, Config};
use crate::discovery::Discovery;
use crate::http::pipeline::Limits;
use crate::http::{Pipeline, server};
use crate::metrics::Metrics;
use crate::plugin::callout::Callouts;
use crate::plugin::engine::Engine;
use crate::plugin::registry::Builtins;
use crate::plugin::{self, Registry};

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
}

/// A running waypoint.
pub struct Waypoint {
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pipeline: Arc<Pipeline>,
    config: Arc<ArcSwap<Config>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        which,
        addr,
        source,
    })
}

impl Waypoint {
    /// Loads every plugin, then starts listening. Nothing listens unless
    /// everything loaded.
    pub async fn start(config: Config, builtins: Builtins) -> Result<Waypoint, Error> {
        let engine = Engine::new(&config.sandbox)?;
        let metrics = Arc::new(Metrics::new());
        let callouts = Arc::new(Callouts::new(config.upstreams.clone()));
        let registry = Arc::new(Registry::new(
            engine,
            metrics.clone(),
            callouts,
            config.sandbox.clone(),
            builtins,
        ));
        registry.apply(&config.namespaces, &config.base_dir).await?;
        let pipeline = Arc::new(Pipeline::new(
            Discovery::from_config(&config),
            registry.clone(),
            metrics.clone(),
            Limits {
                paused_request_timeout: config.sandbox.paused_request_timeout(),
                max_buffered_body: config.sandbox.max_buffered_body_bytes,
            },
        ));

        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let http = match config.listeners.http {
            Some(addr) => Some(bind("http", addr).await?),
            None => None,
        };
        let admin_listener = match config.listeners.admin {
            Some(addr) => Some(bind("admin", addr).await?),
            None => None,
        };
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let config = Arc::new(ArcSwap::from_pointee(config));
        let ready = Arc::new(AtomicBool::new(false));
        if let Some(l) = http {
            tasks.push(tokio::spawn(server::serve(l, pipeline.clone(), rx.clone())));
        }
        if let Some(l) = admin_listener {
            let admin = Arc::new(Admin {
                metrics,
                registry,
                config: config.clone(),
                ready: ready.clone(),
            });
            tasks.push(tokio::spawn(admin::serve(l, admin, rx.clone())));
        }
        ready.store(true, Ordering::Release);
        Ok(Waypoint {
            http_addr,
            admin_addr,
            pipeline,
            config,
            shutdown,
            tasks,
        })
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Applies a new config: services and every namespace's plugin chain.
    /// All new plugins are loaded before anything is swapped; on any error
    /// the running config stays in force. Listener and sandbox changes need
    /// a restart and are refused.
    pub async fn reload(&self, new: Config) -> Result<(), Error> {
        let current = self.config.load_full();
        if new.listeners.http != current.listeners.http
            || new.listeners.admin != current.listeners.admin
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
        if serde_json::to_value(&new.upstreams).ok()
            != serde_json::to_value(&current.upstreams).ok()
        {
            return Err(Error::Reload(
                "callout upstreams changed: restart to apply them".into(),
            ));
        }
        self.pipeline
            .registry()
            .apply(&new.namespaces, &new.base_dir)
            .await?;
        self.pipeline.set_discovery(Discovery::from_config(&new));
        self.config.store(Arc::new(new));
        Ok(())
    }

    /// Stops accepting, lets open connections finish their requests.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
