//! The admin listener: readiness, Prometheus metrics and the config dump.
//! It serves operators and probes, so keep it on loopback.

pub mod api;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod record;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::plugin::Registry;

mod shadow;
pub mod uploads;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub config: Arc<arc_swap::ArcSwap<Config>>,
    pub ready: Arc<AtomicBool>,
    pub recorder: Arc<record::Recorder>,
    pub uploads: Arc<uploads::Uploads>,
}

#[derive(Serialize)]
struct PluginDump<'a> {
    name: &'a str,
    kind: &'static str,
    url: String,
    sha256: &'a str,
    size: usize,
    phase: crate::config::Phase,
    priority: i32,
    #[serde(rename = "failStrategy")]
    fail_strategy: &'static str,
    #[serde(rename = "liveInstances")]
    live_instances: usize,
}

#[derive(Serialize)]
struct Dump<'a> {
    config: &'a Config,
    /// The chains in force, in the order their plugins run.
    chains: std::collections::BTreeMap<String, Vec<PluginDump<'a>>>,
}

impl Admin {
    fn config_dump(&self) -> String {
        // One snapshot: the chains shown are the ones built from this config.
        let installed = self.registry.snapshot();
        let mut dump = Dump {
            config: &installed.config,
            chains: Default::default(),
        };
        for (ns, chain) in installed.chains.iter() {
            let plugins = chain
                .plugins
                .iter()
                .map(|p| PluginDump {
                    name: p.name(),
                    kind: p.kind_name(),
                    url: p.spec.url.to_string(),
                    sha256: &p.sha256,
                    size: p.size,
                    phase: p.spec.phase,
                    priority: p.spec.priority,
                    fail_strategy: p.spec.fail_strategy.as_str(),
                    live_instances: p.live_instances(),
                })
                .collect();
            dump.chains.insert(ns.clone(), plugins);
        }
        serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    fn route(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let (status, ctype, body) = match req.uri().path() {
            "/healthz/ready" => {
                if self.ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "text/plain", "ready\n".to_owned())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "not ready\n".to_owned(),
                    )
                }
            }
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            "/config_dump" => (StatusCode::OK, "application/json", self.config_dump()),
            p if p.starts_with("/record") => {
                record::route(&self.recorder, req.method(), p, req.uri().query())
            }
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /healthz/ready, /metrics, /config_dump or /api/namespaces\n"
                    .to_owned(),
            ),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(ctype),
        );
        resp
    }
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move {
                    let path = req.uri().path();
                    if path == "/shadow" || path.starts_with("/shadow/") {
                        let resp =
                            shadow::handle(&admin.registry, req.method(), path, req.uri().query())
                                .await;
                        return Ok::<_, Infallible>(resp);
                    }
                    let resp = match api::handle(&admin, req).await {
                        Ok(resp) => resp,
                        Err(req) => admin.route(&req),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
