//! The admin API: what is installed, and changes to one plugin entry or one
//! namespace's chain while running.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /api/namespaces` | every chain: plugins with sha256, size, load time, revision |
//! | `PUT /api/namespaces/{ns}/plugins/{name}` | adds or replaces one entry |
//! | `DELETE /api/namespaces/{ns}/plugins/{name}` | removes one entry |
//! | `PUT /api/namespaces/{ns}` | replaces the chain: `{"plugins": [entry, ...]}` |
//! | `DELETE /api/namespaces/{ns}` | removes the chain |
//!
//! An entry is a plugin entry as in the config file (JSON), optionally with
//! `wasm`: the plugin's bytes, base64. Uploaded bytes are kept in a folder
//! of the waypoint's (`<cacheDir>/uploads`, or a private temporary folder
//! removed at shutdown) under their sha256, and the entry is pinned to that
//! sha256; an upload no entry names any more is removed (see [`super::uploads`]).
//!
//! A change goes through the same path as a config reload: the whole new
//! configuration is validated, every new or changed plugin read, checked,
//! compiled, started and configured, and only then swapped in, as one
//! snapshot. A refused change answers 4xx with the reason and changes
//! nothing. API changes last until the config file or the policy folder
//! next changes: that content is then applied as written (see README,
//! "Changing policy live").

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Admin;
use super::uploads::Uploads;
use crate::config::{Config, NamespaceConfig, PluginSpec};
use crate::plugin::{self, registry::Installed};

/// Largest request body the API reads (a base64 plugin of about 48 MiB).
pub const MAX_BODY_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("the change is not a valid config: {0}")]
    Invalid(#[from] crate::config::Error),
    #[error("{0}")]
    Plugin(#[from] plugin::Error),
    #[error(transparent)]
    Upload(#[from] super::uploads::Error),
}

impl ApiError {
    /// The one place an API error becomes a status.
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Plugin(plugin::Error::Capacity { .. }) => StatusCode::CONFLICT,
            ApiError::Plugin(plugin::Error::Engine(_)) | ApiError::Upload(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Plugin(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// What a request asks for.
enum Target {
    List,
    Namespace(String),
    Plugin(String, String),
}

fn target(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/api/namespaces")?;
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        [] => Some(Target::List),
        [ns] => Some(Target::Namespace((*ns).to_owned())),
        [ns, "plugins", name] => Some(Target::Plugin((*ns).to_owned(), (*name).to_owned())),
        _ => None,
    }
}

/// Serves `/api/...`; any other request is handed back.
pub async fn handle<B>(admin: &Admin, req: Request<B>) -> Result<Response<Full<Bytes>>, Request<B>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if !req.uri().path().starts_with("/api/") && req.uri().path() != "/api" {
        return Err(req);
    }
    let result = serve(admin, req).await;
    Ok(match result {
        Ok(body) => reply(StatusCode::OK, &body),
        Err(e) => {
            tracing::warn!(error = %e, "admin API change refused");
            reply(e.status(), &json!({ "error": e.to_string() }))
        }
    })
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let text = serde_json::to_string_pretty(body).unwrap_or_default() + "\n";
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn serve<B>(admin: &Admin, req: Request<B>) -> Result<Value, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    let Some(target) = target(&path) else {
        return Err(ApiError::NotFound(format!(
            "no API at {path}; try /api/namespaces, /api/namespaces/NS or \
             /api/namespaces/NS/plugins/NAME"
        )));
    };
    let method = req.method().clone();
    let registry = admin.registry.clone();
    match (&method, &target) {
        (&Method::GET, Target::List) => return Ok(list(&registry.current(), None)),
        (&Method::GET, Target::Namespace(ns)) => {
            return Ok(list(&registry.current(), Some(ns)));
        }
        (&Method::PUT | &Method::DELETE, Target::Namespace(_) | Target::Plugin(..)) => {}
        _ => {
            return Err(ApiError::MethodNotAllowed(format!(
                "{method} {path}: use GET on /api/namespaces[/NS], PUT or DELETE on \
                 /api/namespaces/NS[/plugins/NAME]"
            )));
        }
    }
    let body = if method == Method::PUT {
        let bytes = Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ApiError::TooLarge
                } else {
                    ApiError::BadRequest(format!("cannot read the request body: {e}"))
                }
            })?
            .to_bytes();
        Some(
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("request body is not JSON: {e}")))?,
        )
    } else {
        None
    };
    // One change at a time from its first upload to its sweep; uploads a
    // config reload left unnamed go first.
    let uploads = &admin.uploads;
    let _change = uploads.change().await;
    uploads.sweep(&registry.current().config);
    let namespace = match &target {
        Target::Namespace(ns) | Target::Plugin(ns, _) => ns.clone(),
        Target::List => unreachable!("answered above"),
    };
    let change = match (body, target) {
        (Some(body), Target::Plugin(ns, name)) => {
            let spec = entry(body, Some(&name), uploads)?;
            Change::PutPlugin(ns, Box::new(spec))
        }
        (None, Target::Plugin(ns, name)) => Change::DeletePlugin(ns, name),
        (Some(body), Target::Namespace(ns)) => {
            let Value::Object(mut obj) = body else {
                return Err(ApiError::BadRequest(
                    "expected {\"plugins\": [entry, ...]}".into(),
                ));
            };
            let plugins = match obj.remove("plugins") {
                Some(Value::Array(list)) => list,
                _ => {
                    return Err(ApiError::BadRequest(
                        "expected {\"plugins\": [entry, ...]}".into(),
                    ));
                }
            };
            if let Some(extra) = obj.keys().next() {
                return Err(ApiError::BadRequest(format!(
                    "unknown field `{extra}` (expected only `plugins`)"
                )));
            }
            let specs = plugins
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    entry(e, None, uploads)
                        .map_err(|err| ApiError::BadRequest(format!("plugins[{i}]: {err}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Change::PutNamespace(ns, specs)
        }
        (None, Target::Namespace(ns)) => Change::DeleteNamespace(ns),
        (_, Target::List) => unreachable!("answered above"),
    };
    let applied = registry.apply_api(|config| change.apply(config)).await;
    // Replaced or removed entries' uploads, or a refused change's, go.
    let removed = uploads.sweep(&registry.current().config);
    applied?;
    tracing::info!(
        namespace,
        removed_uploads = removed,
        "admin API change applied"
    );
    Ok(list(&registry.current(), Some(&namespace)))
}

enum Change {
    PutPlugin(String, Box<PluginSpec>),
    DeletePlugin(String, String),
    PutNamespace(String, Vec<PluginSpec>),
    DeleteNamespace(String),
}

impl Change {
    /// The installed config with this change made, validated as a file
    /// would be.
    fn apply(self, current: &Config) -> Result<Config, ApiError> {
        let mut namespaces = current.namespaces.clone();
        match self {
            Change::PutPlugin(ns, spec) => {
                let spec = *spec;
                let plugins = &mut namespaces.entry(ns).or_default().plugins;
                match plugins.iter_mut().find(|p| p.name == spec.name) {
                    Some(p) => *p = spec,
                    None => plugins.push(spec),
                }
            }
            Change::DeletePlugin(ns, name) => {
                let missing =
                    || ApiError::NotFound(format!("namespace `{ns}` has no plugin named `{name}`"));
                let entry = namespaces.get_mut(&ns).ok_or_else(missing)?;
                let before = entry.plugins.len();
                entry.plugins.retain(|p| p.name != name);
                if entry.plugins.len() == before {
                    return Err(missing());
                }
            }
            Change::PutNamespace(ns, specs) => {
                namespaces.entry(ns).or_default().plugins = specs;
            }
            Change::DeleteNamespace(ns) => {
                let Some(entry) = namespaces.get_mut(&ns) else {
                    return Err(ApiError::NotFound(format!("namespace `{ns}` has no chain")));
                };
                entry.plugins.clear();
                if entry.authorization.is_empty() {
                    namespaces.remove(&ns);
                }
            }
        }
        revalidated(current, namespaces)
    }
}

/// `current` with `namespaces`, through the same validation as a file.
fn revalidated(
    current: &Config,
    namespaces: std::collections::BTreeMap<String, NamespaceConfig>,
) -> Result<Config, ApiError> {
    let mut config = current.clone();
    config.namespaces = namespaces;
    config.origin = format!("admin API change to {}", current.origin);
    config.validate()?;
    config.origin = current.origin.clone();
    Ok(config)
}

/// A plugin entry from JSON: `wasm` (base64) becomes a file of ours that the
/// entry is pinned to.
fn entry(body: Value, name: Option<&str>, uploads: &Uploads) -> Result<PluginSpec, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::BadRequest(
            "a plugin entry is a JSON object".into(),
        ));
    };
    if let Some(name) = name {
        match obj.get("name") {
            None => {
                obj.insert("name".into(), Value::String(name.to_owned()));
            }
            Some(Value::String(n)) if n == name => {}
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "the entry's name {other} differs from `{name}` in the path"
                )));
            }
        }
    }
    if let Some(wasm) = obj.remove("wasm") {
        let Value::String(text) = wasm else {
            return Err(ApiError::BadRequest(
                "`wasm` must be the plugin's bytes, base64".into(),
            ));
        };
        if obj.contains_key("url") {
            return Err(ApiError::BadRequest(
                "give either `wasm` or `url`, not both".into(),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| ApiError::BadRequest(format!("`wasm` is not base64: {e}")))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(Value::String(pinned)) = obj.get("sha256")
            && !pinned.eq_ignore_ascii_case(&sha256)
        {
            return Err(ApiError::Plugin(plugin::Error::Checksum {
                plugin: obj["name"].as_str().unwrap_or_default().to_owned(),
                namespace: String::new(),
                expected: pinned.clone(),
                actual: sha256,
            }));
        }
        let file = uploads.keep(&sha256, &bytes)?;
        obj.insert(
            "url".into(),
            Value::String(format!("file://{}", file.display())),
        );
        obj.insert("sha256".into(), Value::String(sha256));
    }
    serde_json::from_value(Value::Object(obj))
        .map_err(|e| ApiError::BadRequest(format!("not a plugin entry: {e}")))
}

/// The chains in force (one namespace's with `only`), with what each plugin
/// is and when it was loaded.
pub fn list(installed: &Installed, only: Option<&str>) -> Value {
    let mut namespaces = serde_json::Map::new();
    let mut names: Vec<&String> = installed.chains.keys().collect();
    names.sort();
    for ns in names {
        if only.is_some_and(|o| o != ns) {
            continue;
        }
        let chain = &installed.chains[ns];
        let plugins: Vec<Value> = chain
            .plugins
            .iter()
            .map(|p| {
                json!({
                    "name": p.name(),
                    "kind": p.kind_name(),
                    "url": p.spec.url.to_string(),
                    "sha256": p.sha256,
                    "size": p.size,
                    "revision": p.loaded.revision,
                    "loadedAt": time::OffsetDateTime::from(p.loaded.at)
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    "loadMillis": p.loaded.took.as_secs_f64() * 1e3,
                    "liveInstances": p.live_instances(),
                    "code": p.code(),
                })
            })
            .collect();
        namespaces.insert(ns.clone(), json!({ "plugins": plugins }));
    }
    json!({
        "revision": installed.revision,
        "apiChanges": installed.api_changes,
        "namespaces": namespaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_targets() {
        assert!(matches!(target("/api/namespaces"), Some(Target::List)));
        assert!(matches!(target("/api/namespaces/"), Some(Target::List)));
        assert!(matches!(target("/api/namespaces/a"), Some(Target::Namespace(n)) if n == "a"));
        assert!(matches!(
            target("/api/namespaces/a/plugins/p"),
            Some(Target::Plugin(n, p)) if n == "a" && p == "p"
        ));
        assert!(target("/api/namespaces/a/other/p").is_none());
        assert!(target("/api/other").is_none());
    }

    #[test]
    fn an_entry_with_wasm_is_pinned_to_a_file_of_ours() {
        let dir = std::env::temp_dir().join(format!("wayplug-api-{}", std::process::id()));
        let uploads = Uploads::at(dir.clone(), true);
        let wasm = base64::engine::general_purpose::STANDARD.encode(b"\0asm\x01\0\0\0");
        let spec = entry(json!({"wasm": wasm, "phase": "AUTHZ"}), Some("p"), &uploads).unwrap();
        assert_eq!(spec.name, "p");
        let sha = hex::encode(Sha256::digest(b"\0asm\x01\0\0\0"));
        assert_eq!(spec.sha256.as_deref(), Some(sha.as_str()));
        let file = spec.url.resolve_file(&dir).unwrap();
        assert_eq!(std::fs::read(file).unwrap(), b"\0asm\x01\0\0\0");

        let cases = [
            (json!({"wasm": "%%%"}), "not base64"),
            (json!({"wasm": wasm, "url": "file:///x.wasm"}), "not both"),
            (
                json!({"name": "q", "url": "file:///x.wasm"}),
                "differs from `p`",
            ),
            (
                json!({"url": "file:///x.wasm", "bogus": 1}),
                "unknown field `bogus`",
            ),
            (
                json!({"wasm": wasm, "sha256": "00".repeat(32)}),
                "sha256 mismatch",
            ),
            (json!([1]), "JSON object"),
        ];
        for (body, want) in cases {
            let err = entry(body.clone(), Some("p"), &uploads)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
