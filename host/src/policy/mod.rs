//! `policyDir`: ordinary Kubernetes YAML (HTTPRoute, WasmPlugin,
//! AuthorizationPolicy) compiled into the namespace chains.
//!
//! Each resource is checked on its own. A refused resource (an unsupported
//! field, an unknown backend, a malformed document) is reported with its
//! file, document index, kind, namespace/name and field, and does not stop
//! the others. If an earlier load had accepted a version of it, that version
//! stays in force: a bad edit never removes a policy that was working.
//!
//! A namespace's HTTPRoutes become one `builtin://route` entry (named
//! [`ROUTE_PLUGIN`]) whose configuration is every route document of the
//! namespace, in file order, plus the Services the waypoint knows; its
//! AuthorizationPolicies one `builtin://authz` entry ([`AUTHZ_PLUGIN`]);
//! WasmPlugins become plugin entries of their own.

mod wasm_plugin;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::{Config, NamespaceConfig, PluginSpec, PluginUrl};
use crate::plugin::registry::{BUILTIN_AUTHZ, BUILTIN_ROUTE};

pub use yaml::{Fingerprint, MAX_DOCUMENTS_PER_FILE, MAX_FILE_BYTES, MAX_FILES, fingerprint};

/// The chain entry that carries a namespace's HTTPRoutes.
pub const ROUTE_PLUGIN: &str = "httproute";
/// The chain entry that carries a namespace's AuthorizationPolicies.
pub const AUTHZ_PLUGIN: &str = "authorizationpolicy";

#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("policyDir {dir}: cannot list it: {reason}")]
    ReadDir { dir: PathBuf, reason: String },
    #[error("policyDir {dir}: {count} policy files is more than the {limit} the waypoint reads")]
    TooManyFiles {
        dir: PathBuf,
        count: usize,
        limit: usize,
    },
    #[error("{file}: cannot read: {reason}")]
    ReadFile { file: PathBuf, reason: String },
    #[error("{file}: document {index}: malformed YAML, document skipped: {reason}")]
    Malformed {
        file: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{file}: document {index}: {message}; resource refused{}", kept_note(*.kept))]
    Refused {
        file: PathBuf,
        index: usize,
        message: String,
        /// An earlier accepted version stays in force.
        kept: bool,
    },
}

fn kept_note(kept: bool) -> &'static str {
    if kept {
        ", its previous version stays in force"
    } else {
        ""
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    kind: &'static str,
    namespace: String,
    name: String,
}

/// Where a document came from, for errors and for file order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Origin {
    file: PathBuf,
    index: usize,
}

#[derive(Debug, Clone)]
enum Compiled {
    Route(Value),
    Authz(Value),
    Plugin(Box<PluginSpec>),
}

#[derive(Debug, Clone)]
struct Resource {
    origin: Origin,
    compiled: Compiled,
}

/// The accepted resources of a folder.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    resources: BTreeMap<Key, Resource>,
}

/// The outcome of reading a folder: what is in force now, and what was
/// refused.
pub struct Loaded {
    pub set: PolicySet,
    pub errors: Vec<PolicyError>,
}

/// Reads `dir`; `previous` is the set in force, whose versions survive
/// refusals.
pub fn load(dir: &Path, config: &Config, previous: &PolicySet) -> Loaded {
    let mut reader = Reader {
        config,
        previous,
        set: PolicySet::default(),
        declared: BTreeMap::new(),
        errors: Vec::new(),
    };
    let files = match yaml::policy_files(dir) {
        Ok(files) => files,
        Err(e) => {
            // Nothing readable: everything in force stays.
            tracing::error!(error = %e, "policyDir not read; keeping the policies in force");
            return Loaded {
                set: previous.clone(),
                errors: vec![e],
            };
        }
    };
    for file in &files {
        reader.file(file);
    }
    Loaded {
        set: reader.set,
        errors: reader.errors,
    }
}

struct Reader<'a> {
    config: &'a Config,
    previous: &'a PolicySet,
    set: PolicySet,
    /// Where each resource was declared in this load; a second declaration
    /// is refused.
    declared: BTreeMap<Key, Origin>,
    errors: Vec<PolicyError>,
}

/// Kind, namespace and name of a document, read leniently.
struct Ident {
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
}

impl Ident {
    fn of(doc: &Value) -> Ident {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let namespace = match doc["metadata"]["namespace"].as_str() {
            Some(ns) if !ns.is_empty() => ns.to_owned(),
            _ => "default".to_owned(),
        };
        Ident {
            api_version: text(&doc["apiVersion"]),
            kind: text(&doc["kind"]),
            namespace,
            name: text(&doc["metadata"]["name"]),
        }
    }
}

impl Reader<'_> {
    fn file(&mut self, file: &Path) {
        let docs = match yaml::read_documents(file) {
            Ok(docs) => docs,
            Err(e) => {
                self.keep_previous_from(file, None);
                self.report(e);
                return;
            }
        };
        for raw in docs {
            let origin = Origin {
                file: file.to_owned(),
                index: raw.index,
            };
            let doc: Value = match serde_norway::from_str(&raw.text) {
                Ok(doc) => doc,
                Err(e) => {
                    self.keep_previous_from(file, Some(raw.index));
                    self.report(PolicyError::Malformed {
                        file: file.to_owned(),
                        index: raw.index,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            if doc.is_null() {
                continue;
            }
            self.document(origin, &doc);
        }
    }

    fn report(&mut self, e: PolicyError) {
        tracing::error!(error = %e, "policy refused");
        self.errors.push(e);
    }

    /// A document that could not be read may have held any of the resources
    /// that came from there: those stay in force unless declared again.
    fn keep_previous_from(&mut self, file: &Path, index: Option<usize>) {
        for (key, res) in &self.previous.resources {
            let from_there = res.origin.file == file && index.is_none_or(|i| i == res.origin.index);
            if from_there && !self.set.resources.contains_key(key) {
                self.set.resources.insert(key.clone(), res.clone());
            }
        }
    }

    fn document(&mut self, origin: Origin, doc: &Value) {
        let id = Ident::of(doc);
        let kind: &'static str = match (id.api_version.as_str(), id.kind.as_str()) {
            (wayplug_route::API_VERSION, "HTTPRoute") => "HTTPRoute",
            (wasm_plugin::API_VERSION, "WasmPlugin") => "WasmPlugin",
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                "AuthorizationPolicy"
            }
            (_, written @ ("HTTPRoute" | "WasmPlugin" | "AuthorizationPolicy")) => {
                let kind: &'static str = match written {
                    "HTTPRoute" => "HTTPRoute",
                    "WasmPlugin" => "WasmPlugin",
                    _ => "AuthorizationPolicy",
                };
                let message = format!(
                    "{kind} {}/{}: field `apiVersion`: `{}` is not a version the waypoint reads",
                    id.namespace, id.name, id.api_version
                );
                return self.refuse(origin, &id, kind, message);
            }
            _ => {
                tracing::info!(
                    file = %origin.file.display(), index = origin.index,
                    kind = %id.kind, namespace = %id.namespace, name = %id.name,
                    "policyDir: not a kind the waypoint reads; skipped"
                );
                return;
            }
        };
        let key = Key {
            kind,
            namespace: id.namespace.clone(),
            name: id.name.clone(),
        };
        if let Some(first) = self.declared.get(&key) {
            let message = format!(
                "{kind} {}/{} is declared again (first in {} document {}, which counts)",
                id.namespace,
                id.name,
                first.file.display(),
                first.index
            );
            return self.report(PolicyError::Refused {
                file: origin.file,
                index: origin.index,
                message,
                kept: false,
            });
        }
        self.declared.insert(key.clone(), origin.clone());
        let compiled = match kind {
            "HTTPRoute" => self.route(doc),
            "WasmPlugin" => self.wasm_plugin(&origin, &id, doc),
            _ => wayplug_authz::parse_policy(doc)
                .map(|_| Compiled::Authz(doc.clone()))
                .map_err(|e| e.to_string()),
        };
        match compiled {
            Ok(compiled) => {
                self.set
                    .resources
                    .insert(key, Resource { origin, compiled });
            }
            Err(message) => self.refuse(origin, &id, kind, message),
        }
    }

    fn refuse(&mut self, origin: Origin, id: &Ident, kind: &'static str, message: String) {
        let key = Key {
            kind,
            namespace: id.namespace.clone(),
            name: id.name.clone(),
        };
        let previous = self.previous.resources.get(&key).cloned();
        let kept = previous.is_some();
        if let Some(previous) = previous {
            self.set.resources.entry(key).or_insert(previous);
        }
        self.report(PolicyError::Refused {
            file: origin.file,
            index: origin.index,
            message,
            kept,
        });
    }

    fn route(&self, doc: &Value) -> Result<Compiled, String> {
        let route = wayplug_route::parse_route(doc).map_err(|e| e.to_string())?;
        let what = format!("HTTPRoute {}/{}", route.namespace, route.name);
        let known = |ns: &str, name: &str| {
            self.config
                .services
                .iter()
                .find(|s| s.namespace == ns && s.name == name)
        };
        for (i, parent) in route.parents.iter().enumerate() {
            match known(&parent.namespace, &parent.name) {
                None => {
                    return Err(format!(
                        "{what}: field `spec.parentRefs[{i}]`: Service {}/{} is not known to the \
                         waypoint",
                        parent.namespace, parent.name
                    ));
                }
                Some(s) if parent.port.is_some_and(|p| !s.ports.contains_key(&p)) => {
                    return Err(format!(
                        "{what}: field `spec.parentRefs[{i}].port`: Service {}/{} has no port {}",
                        parent.namespace,
                        parent.name,
                        parent.port.unwrap_or_default()
                    ));
                }
                Some(_) => {}
            }
        }
        // The plugin answers unknown backends with 500, as Envoy does; here
        // the operator hears about them before any request does.
        for rule in &route.rules {
            let wayplug_route::Action::Forward { backends, .. } = &rule.action else {
                continue;
            };
            for b in backends {
                match &b.target {
                    wayplug_route::BackendTarget::Invalid(reason) => {
                        return Err(format!("{what}: field `{}`: {reason}", b.field));
                    }
                    wayplug_route::BackendTarget::Service {
                        namespace,
                        name,
                        port,
                    } => match known(namespace, name) {
                        None => {
                            return Err(format!(
                                "{what}: field `{}.name`: Service {namespace}/{name} is not \
                                 known to the waypoint",
                                b.field
                            ));
                        }
                        Some(s) if !s.ports.contains_key(port) => {
                            return Err(format!(
                                "{what}: field `{}.port`: Service {namespace}/{name} has no port \
                                 {port}",
                                b.field
                            ));
                        }
                        Some(_) => {}
                    },
                }
            }
        }
        Ok(Compiled::Route(doc.clone()))
    }

    fn wasm_plugin(&self, origin: &Origin, id: &Ident, doc: &Value) -> Result<Compiled, String> {
        let what = format!("WasmPlugin {}/{}", id.namespace, id.name);
        if let Some(extra) = doc
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .find(|k| {
                !matches!(
                    k.as_str(),
                    "apiVersion" | "kind" | "metadata" | "spec" | "status"
                )
            })
        {
            return Err(format!("{what}: field `{extra}`: unknown field"));
        }
        let dir = origin.file.parent().unwrap_or(Path::new("."));
        let spec = wasm_plugin::plugin_spec(&id.name, &id.namespace, &doc["spec"], dir)
            .map_err(|(field, reason)| format!("{what}: field `{field}`: {reason}"))?;
        if spec.name == ROUTE_PLUGIN
            || spec.name == AUTHZ_PLUGIN
            || self
                .config
                .namespaces
                .get(&id.namespace)
                .is_some_and(|ns| ns.plugins.iter().any(|p| p.name == spec.name))
        {
            return Err(format!(
                "{what}: field `metadata.name`: namespace `{}` already has a plugin named `{}`",
                id.namespace, spec.name
            ));
        }
        Ok(Compiled::Plugin(Box::new(spec)))
    }
}

impl PolicySet {
    /// Whether nothing was accepted.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// `kind namespace/name` of every resource in force, sorted.
    pub fn names(&self) -> Vec<String> {
        self.resources
            .keys()
            .map(|k| format!("{} {}/{}", k.kind, k.namespace, k.name))
            .collect()
    }

    /// The config's namespaces with these policies added to their chains.
    pub fn namespaces(&self, config: &Config) -> BTreeMap<String, NamespaceConfig> {
        let mut namespaces = config.namespaces.clone();
        let mut routes: BTreeMap<&str, Vec<(&Origin, &Value)>> = BTreeMap::new();
        let mut authz: BTreeMap<&str, Vec<(&Origin, &Value)>> = BTreeMap::new();
        for (key, res) in &self.resources {
            match &res.compiled {
                Compiled::Route(doc) => routes
                    .entry(key.namespace.as_str())
                    .or_default()
                    .push((&res.origin, doc)),
                Compiled::Authz(doc) => authz
                    .entry(key.namespace.as_str())
                    .or_default()
                    .push((&res.origin, doc)),
                Compiled::Plugin(spec) => namespaces
                    .entry(key.namespace.clone())
                    .or_default()
                    .plugins
                    .push(PluginSpec::clone(spec)),
            }
        }
        let services: Vec<Value> = config
            .services
            .iter()
            .map(|s| {
                json!({
                    "namespace": s.namespace,
                    "name": s.name,
                    "hostname": s.hostname,
                    "ports": s.ports.keys().collect::<Vec<_>>(),
                })
            })
            .collect();
        for (ns, mut docs) in authz {
            docs.sort_by(|a, b| a.0.cmp(b.0));
            let docs: Vec<&Value> = docs.into_iter().map(|(_, d)| d).collect();
            let entry = json!({
                "name": AUTHZ_PLUGIN,
                "url": String::from(PluginUrl::Builtin(BUILTIN_AUTHZ.to_owned())),
                "pluginConfig": {"policies": docs},
            });
            let spec: PluginSpec =
                serde_json::from_value(entry).expect("the authz entry is a valid plugin spec");
            namespaces
                .entry(ns.to_owned())
                .or_default()
                .plugins
                .push(spec);
        }
        for (ns, mut docs) in routes {
            // File order is the tie-break for routes without a creation time.
            docs.sort_by(|a, b| a.0.cmp(b.0));
            let docs: Vec<&Value> = docs.into_iter().map(|(_, d)| d).collect();
            let entry = json!({
                "name": ROUTE_PLUGIN,
                "url": String::from(PluginUrl::Builtin(BUILTIN_ROUTE.to_owned())),
                "pluginConfig": {"routes": docs, "services": services},
            });
            let spec: PluginSpec =
                serde_json::from_value(entry).expect("the route entry is a valid plugin spec");
            namespaces
                .entry(ns.to_owned())
                .or_default()
                .plugins
                .push(spec);
        }
        namespaces
    }
}

/// The policies in force and the folder state they were read from, shared
/// by the reload path and the folder watcher.
#[derive(Default)]
pub struct Policies {
    state: tokio::sync::Mutex<State>,
    errors: std::sync::Mutex<Vec<PolicyError>>,
}

#[derive(Default)]
struct State {
    set: PolicySet,
    fingerprint: Option<Fingerprint>,
}

impl Policies {
    /// Reads `config`'s policy folder against the policies in force, hands
    /// the resulting namespaces to `install`, and keeps the new set only if
    /// `install` succeeds. One apply runs at a time.
    pub async fn apply<E, F, Fut>(&self, config: &Config, install: F) -> Result<(), E>
    where
        F: FnOnce(BTreeMap<String, NamespaceConfig>) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let mut state = self.state.lock().await;
        let Some(dir) = config.policy_dir() else {
            install(config.namespaces.clone()).await?;
            *state = State::default();
            self.set_errors(Vec::new());
            return Ok(());
        };
        state.fingerprint = Some(fingerprint(&dir));
        let loaded = load(&dir, config, &state.set);
        self.set_errors(loaded.errors);
        install(loaded.set.namespaces(config)).await?;
        tracing::info!(dir = %dir.display(), resources = ?loaded.set.names(), "policies applied");
        state.set = loaded.set;
        Ok(())
    }

    /// Whether the folder changed since the last [`apply`](Self::apply).
    pub async fn changed(&self, config: &Config) -> bool {
        let Some(dir) = config.policy_dir() else {
            return false;
        };
        let now = fingerprint(&dir);
        self.state.lock().await.fingerprint.as_ref() != Some(&now)
    }

    /// What the last read of the folder refused, as the operator reads it.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// `kind namespace/name` of every resource in force.
    pub async fn in_force(&self) -> Vec<String> {
        self.state.lock().await.set.names()
    }

    fn set_errors(&self, errors: Vec<PolicyError>) {
        *self.errors.lock().unwrap_or_else(|e| e.into_inner()) = errors;
    }
}

#[cfg(test)]
mod tests;
