//! Shadow rollouts on the admin listener.
//!
//! - `GET /shadow`: every plugin entry with a candidate, the counts of
//!   same / different / timed-out / skipped decisions since the candidate
//!   was loaded, and the latest differences with their request summaries.
//! - `POST /shadow/promote?namespace=NS&plugin=NAME`: the candidate becomes
//!   the serving version. It is loaded afresh as a serving entry (read,
//!   checksum, compile, start: with the namespace's shared data and the
//!   entry's own metrics), and only then swapped in, with the config entry,
//!   in one store. A failure answers 4xx/5xx and changes nothing. The swap
//!   lasts until the next reload of the config file or policy folder, which
//!   applies what they say.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use crate::plugin::shadow::{Counts, Sample};
use crate::plugin::{Chain, Registry};

#[derive(Debug, thiserror::Error)]
enum PromoteError {
    #[error("promote needs ?namespace=NS&plugin=NAME")]
    Query,
    #[error("namespace `{0}` has no plugin chain")]
    NoNamespace(String),
    #[error("namespace `{namespace}` has no plugin `{plugin}`")]
    NoPlugin { namespace: String, plugin: String },
    #[error("plugin `{plugin}` in namespace `{namespace}` has no shadow candidate")]
    NoCandidate { namespace: String, plugin: String },
    #[error("the candidate does not load as a serving plugin; nothing changed: {0}")]
    Load(crate::plugin::Error),
    #[error("the configuration changed while the candidate loaded; nothing changed, try again")]
    Conflict,
}

impl PromoteError {
    fn status(&self) -> StatusCode {
        match self {
            PromoteError::Query => StatusCode::BAD_REQUEST,
            PromoteError::NoNamespace(_) | PromoteError::NoPlugin { .. } => StatusCode::NOT_FOUND,
            PromoteError::NoCandidate { .. } | PromoteError::Conflict => StatusCode::CONFLICT,
            PromoteError::Load(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

#[derive(Serialize)]
struct Entry {
    url: String,
    sha256: String,
    #[serde(rename = "candidateUrl")]
    candidate_url: String,
    #[serde(rename = "candidateSha256")]
    candidate_sha256: String,
    counts: Counts,
    differences: Vec<Sample>,
}

#[derive(Serialize)]
struct Promoted {
    namespace: String,
    plugin: String,
    url: String,
    sha256: String,
    /// What the candidate's comparison showed before it took over.
    counts: Counts,
}

/// Answers a request under `/shadow`.
pub async fn handle(
    registry: &Arc<Registry>,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/shadow") => json(StatusCode::OK, &report(registry)),
        (&Method::POST, "/shadow/promote") => match promote(registry, query).await {
            Ok(p) => {
                tracing::info!(namespace = %p.namespace, plugin = %p.plugin, url = %p.url, sha256 = %p.sha256, "shadow candidate promoted");
                json(StatusCode::OK, &p)
            }
            Err(e) => {
                tracing::warn!(error = %e, "shadow promotion refused");
                json(e.status(), &serde_json::json!({ "error": e.to_string() }))
            }
        },
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({
                "error": "try GET /shadow or POST /shadow/promote?namespace=NS&plugin=NAME"
            }),
        ),
    }
}

/// namespace -> plugin -> comparison.
fn report(registry: &Registry) -> BTreeMap<String, BTreeMap<String, Entry>> {
    let installed = registry.current();
    let mut out: BTreeMap<String, BTreeMap<String, Entry>> = BTreeMap::new();
    for (ns, chain) in &installed.chains {
        for p in &chain.plugins {
            let Some(shadow) = &p.shadow else { continue };
            out.entry(ns.clone()).or_default().insert(
                p.name().to_owned(),
                Entry {
                    url: p.spec.url.to_string(),
                    sha256: p.sha256.clone(),
                    candidate_url: shadow.candidate.spec.url.to_string(),
                    candidate_sha256: shadow.candidate.sha256.clone(),
                    counts: shadow.counts(),
                    differences: shadow.samples(),
                },
            );
        }
    }
    out
}

async fn promote(registry: &Registry, query: Option<&str>) -> Result<Promoted, PromoteError> {
    let mut namespace = None;
    let mut plugin = None;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("namespace", v)) if !v.is_empty() => namespace = Some(v.to_owned()),
            Some(("plugin", v)) if !v.is_empty() => plugin = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(namespace), Some(plugin)) = (namespace, plugin) else {
        return Err(PromoteError::Query);
    };
    let installed = registry.current();
    let chain = installed
        .chain(&namespace)
        .ok_or_else(|| PromoteError::NoNamespace(namespace.clone()))?;
    let index = chain
        .plugins
        .iter()
        .position(|p| p.name() == plugin)
        .ok_or_else(|| PromoteError::NoPlugin {
            namespace: namespace.clone(),
            plugin: plugin.clone(),
        })?;
    let serving = &chain.plugins[index];
    let (Some(shadow), Some(spec)) = (&serving.shadow, serving.spec.candidate()) else {
        return Err(PromoteError::NoCandidate { namespace, plugin });
    };
    let counts = shadow.counts();
    let loaded = registry
        .build_chain(
            &namespace,
            std::slice::from_ref(&spec),
            &installed.config.base_dir,
        )
        .await
        .map_err(PromoteError::Load)?;
    let promoted = loaded
        .plugins
        .into_iter()
        .next()
        .expect("one spec, one plugin");
    let (url, sha256) = (promoted.spec.url.to_string(), promoted.sha256.clone());
    let mut plugins = chain.plugins.clone();
    plugins[index] = promoted;
    let mut config = (*installed.config).clone();
    if let Some(entry) = config
        .namespaces
        .get_mut(&namespace)
        .and_then(|n| n.plugins.iter_mut().find(|p| p.name == plugin))
    {
        *entry = spec;
    }
    let chain = Chain {
        namespace: namespace.clone(),
        plugins,
    };
    if !registry.swap_chain_if_current(&installed, &namespace, chain, config) {
        return Err(PromoteError::Conflict);
    }
    Ok(Promoted {
        namespace,
        plugin,
        url,
        sha256,
        counts,
    })
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let text =
        serde_json::to_string_pretty(body).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
