//! HTTPRoute documents (gateway.networking.k8s.io/v1) read into the model the
//! route table evaluates.
//!
//! Reading is strict: an unknown field, or a field the waypoint does not
//! implement, refuses the whole route with its kind, namespace/name, the
//! field path and the reason. Nothing is silently ignored.

use std::fmt;

use regex_lite::Regex;
use serde::Deserialize;
use serde_json::Value;

/// The group and version this crate reads.
pub const API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// Bounds from the Gateway API schema; they also bound the work per request.
const MAX_RULES: usize = 16;
const MAX_MATCHES: usize = 64;
const MAX_HEADER_MATCHES: usize = 16;
const MAX_QUERY_MATCHES: usize = 16;
const MAX_BACKENDS: usize = 16;
const MAX_PARENTS: usize = 32;
const MAX_WEIGHT: u32 = 1_000_000;

/// Why a route document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RouteError {
    /// The document's kind as written (normally `HTTPRoute`).
    pub kind: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// Where in the document, e.g. `spec.rules[0].matches[1].path.type`;
    /// empty for the document as a whole.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)?;
        if !self.path.is_empty() {
            write!(f, ": field `{}`", self.path)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// One HTTPRoute, validated.
#[derive(Debug, Clone)]
pub struct Route {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339, UTC as Kubernetes writes it).
    pub created: Option<String>,
    /// The Services this route attaches to.
    pub parents: Vec<Parent>,
    pub rules: Vec<Rule>,
}

/// A Service parent (GAMMA): the route applies to traffic sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub namespace: String,
    pub name: String,
    /// Only traffic to this service port; all ports when `None`.
    pub port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// OR: any one match selects the rule. Never empty (the default match is
    /// every path).
    pub matches: Vec<Match>,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub action: Action,
}

/// What a selected rule does with the request.
#[derive(Debug, Clone)]
pub enum Action {
    Redirect(Redirect),
    Forward {
        rewrite: Option<Rewrite>,
        backends: Vec<BackendRef>,
    },
}

/// AND of every condition present.
#[derive(Debug, Clone)]
pub struct Match {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    pub method: Option<String>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Stored without a trailing `/` (the root prefix is the empty string):
    /// a prefix matches whole path segments.
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lower case: header names compare case-insensitively.
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone)]
pub struct QueryMatch {
    /// As written: query parameter names are case-sensitive.
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    /// Replaces the matched path prefix.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRef {
    pub target: BackendTarget,
    pub weight: u32,
    /// Where it was written, e.g. `spec.rules[0].backendRefs[1]`.
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTarget {
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
    /// A reference the waypoint cannot send traffic to; requests that would
    /// go there get 500 with this reason, as the Gateway API requires.
    Invalid(String),
}

// ---- the documents as written ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Doc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
    /// Written by controllers; carries no configuration.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

// Not `deny_unknown_fields`: labels, annotations, uid, managedFields and the
// rest of ObjectMeta carry no routing configuration.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    parent_refs: Vec<ParentRefDoc>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ParentRefDoc {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    name: String,
    #[serde(default)]
    section_name: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleDoc {
    /// A label for status and logs; no effect on routing.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<MatchDoc>,
    #[serde(default)]
    filters: Vec<FilterDoc>,
    #[serde(default)]
    backend_refs: Vec<BackendRefDoc>,
    #[serde(default)]
    timeouts: Option<Value>,
    #[serde(default)]
    retry: Option<Value>,
    #[serde(default)]
    session_persistence: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchDoc {
    #[serde(default)]
    path: Option<PathDoc>,
    #[serde(default)]
    headers: Vec<ValueMatchDoc>,
    #[serde(default)]
    query_params: Vec<ValueMatchDoc>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathDoc {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueMatchDoc {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FilterDoc {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_header_modifier: Option<HeaderModifierDoc>,
    #[serde(default)]
    response_header_modifier: Option<HeaderModifierDoc>,
    #[serde(default)]
    request_redirect: Option<RedirectDoc>,
    #[serde(default)]
    url_rewrite: Option<RewriteDoc>,
    #[serde(default)]
    request_mirror: Option<Value>,
    #[serde(default)]
    extension_ref: Option<Value>,
    #[serde(default)]
    cors: Option<Value>,
    #[serde(default)]
    external_auth: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderModifierDoc {
    #[serde(default)]
    set: Vec<HeaderDoc>,
    #[serde(default)]
    add: Vec<HeaderDoc>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderDoc {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedirectDoc {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifierDoc>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    status_code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RewriteDoc {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifierDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PathModifierDoc {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BackendRefDoc {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    filters: Vec<Value>,
}

fn default_weight() -> u32 {
    1
}

// ---- reading ----

/// Reads one whole Kubernetes document (apiVersion, kind, metadata, spec),
/// given as JSON, into a validated [`Route`].
///
/// ```
/// let doc = serde_json::json!({
///     "apiVersion": "gateway.networking.k8s.io/v1",
///     "kind": "HTTPRoute",
///     "metadata": {"name": "reviews", "namespace": "shop"},
///     "spec": {
///         "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
///         "rules": [{"backendRefs": [{"name": "reviews-v2", "port": 9080}]}]
///     }
/// });
/// let route = wayplug_route::parse_route(&doc).unwrap();
/// assert_eq!(route.name, "reviews");
///
/// let mut bad = doc.clone();
/// bad["spec"]["rules"][0]["matches"] = serde_json::json!([{"pathz": {}}]);
/// let err = wayplug_route::parse_route(&bad).unwrap_err().to_string();
/// assert!(err.starts_with("HTTPRoute shop/reviews: field `spec.rules[0].matches[0].pathz`: unknown field"), "{err}");
/// ```
pub fn parse_route(doc: &Value) -> Result<Route, RouteError> {
    let ident = Ident::of(doc);
    let parsed: Doc = serde_path_to_error::deserialize(doc).map_err(|err| {
        let path = known_path(err.path());
        ident.error(path, err.into_inner().to_string())
    })?;
    if parsed.api_version != API_VERSION {
        return Err(ident.error(
            "apiVersion",
            format!(
                "`{}` is not supported; write `{API_VERSION}`",
                parsed.api_version
            ),
        ));
    }
    if parsed.kind != "HTTPRoute" {
        return Err(ident.error("kind", format!("`{}` is not HTTPRoute", parsed.kind)));
    }
    let namespace = parsed
        .metadata
        .namespace
        .unwrap_or_else(|| "default".to_owned());
    let cx = Reader { ident: &ident };
    let spec = parsed.spec;
    if !spec.hostnames.is_empty() {
        return Err(cx.err(
            "spec.hostnames",
            "hostnames select routes on a Gateway listener; a route attached to a Service \
             applies to all of that Service's traffic: remove `hostnames`",
        ));
    }
    let parents = cx.parents(&namespace, &spec.parent_refs)?;
    if spec.rules.len() > MAX_RULES {
        return Err(cx.err("spec.rules", format!("at most {MAX_RULES} rules")));
    }
    let default_rule = [RuleDoc::default()];
    let rule_docs: &[RuleDoc] = if spec.rules.is_empty() {
        &default_rule
    } else {
        &spec.rules
    };
    let rules = rule_docs
        .iter()
        .enumerate()
        .map(|(i, r)| cx.rule(&namespace, &format!("spec.rules[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Route {
        namespace,
        name: parsed.metadata.name,
        created: parsed.metadata.creation_timestamp,
        parents,
        rules,
    })
}

/// Kind, namespace and name read leniently, so even a document that fails
/// to parse is named in its error.
struct Ident {
    kind: String,
    namespace: String,
    name: String,
}

impl Ident {
    fn of(doc: &Value) -> Ident {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Ident {
            kind: text(&doc["kind"]).unwrap_or_else(|| "HTTPRoute".to_owned()),
            namespace: text(&doc["metadata"]["namespace"]).unwrap_or_else(|| "default".to_owned()),
            name: text(&doc["metadata"]["name"]).unwrap_or_else(|| "<unnamed>".to_owned()),
        }
    }

    fn error(&self, path: impl Into<String>, reason: impl Into<String>) -> RouteError {
        RouteError {
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The path as `a.b[2].c`, up to the first segment serde could not name.
fn known_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => break,
        }
    }
    out
}

/// A rule's filters, collected before the rule is built.
#[derive(Default)]
struct Modifiers {
    request_headers: Option<HeaderModifier>,
    response_headers: Option<HeaderModifier>,
    redirect: Option<Redirect>,
    rewrite: Option<Rewrite>,
}

struct Reader<'a> {
    ident: &'a Ident,
}

fn is_core_group(group: &Option<String>) -> bool {
    matches!(group.as_deref(), None | Some("") | Some("core"))
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl Reader<'_> {
    fn err(&self, path: impl Into<String>, reason: impl Into<String>) -> RouteError {
        self.ident.error(path, reason)
    }

    fn parents(&self, namespace: &str, refs: &[ParentRefDoc]) -> Result<Vec<Parent>, RouteError> {
        if refs.is_empty() {
            return Err(self.err(
                "spec.parentRefs",
                "the route attaches to nothing: add a parentRef of kind Service",
            ));
        }
        if refs.len() > MAX_PARENTS {
            return Err(self.err(
                "spec.parentRefs",
                format!("at most {MAX_PARENTS} parentRefs"),
            ));
        }
        let mut parents = Vec::with_capacity(refs.len());
        for (i, p) in refs.iter().enumerate() {
            let field = format!("spec.parentRefs[{i}]");
            // The schema's default parent is a Gateway.
            let kind = p.kind.as_deref().unwrap_or("Gateway");
            if kind != "Service" || !is_core_group(&p.group) {
                return Err(self.err(
                    format!("{field}.kind"),
                    format!(
                        "a waypoint applies routes whose parent is a Service (group \"\", kind \
                         Service); `{}/{kind}` is not supported",
                        p.group.as_deref().unwrap_or("gateway.networking.k8s.io")
                    ),
                ));
            }
            if p.section_name.is_some() {
                return Err(self.err(
                    format!("{field}.sectionName"),
                    "sectionName is not supported for Service parents: use `port`",
                ));
            }
            let ns = p.namespace.as_deref().unwrap_or(namespace);
            if ns != namespace {
                return Err(self.err(
                    format!("{field}.namespace"),
                    format!(
                        "consumer routes (a parent Service in namespace `{ns}`, not the route's \
                         own `{namespace}`) are not supported"
                    ),
                ));
            }
            if p.name.is_empty() {
                return Err(self.err(format!("{field}.name"), "must not be empty"));
            }
            parents.push(Parent {
                namespace: ns.to_owned(),
                name: p.name.clone(),
                port: p.port,
            });
        }
        Ok(parents)
    }

    fn rule(&self, namespace: &str, field: &str, r: &RuleDoc) -> Result<Rule, RouteError> {
        for (set, name, why) in [
            (
                r.timeouts.is_some(),
                "timeouts",
                "request timeouts are not supported by the waypoint yet",
            ),
            (
                r.retry.is_some(),
                "retry",
                "retries are not supported by the waypoint",
            ),
            (
                r.session_persistence.is_some(),
                "sessionPersistence",
                "session persistence is not supported by the waypoint",
            ),
        ] {
            if set {
                return Err(self.err(format!("{field}.{name}"), why));
            }
        }
        if r.matches.len() > MAX_MATCHES {
            return Err(self.err(
                format!("{field}.matches"),
                format!("at most {MAX_MATCHES} matches"),
            ));
        }
        let default_match = [MatchDoc::default()];
        let docs: &[MatchDoc] = if r.matches.is_empty() {
            &default_match
        } else {
            &r.matches
        };
        let matches = docs
            .iter()
            .enumerate()
            .map(|(i, m)| self.match_(&format!("{field}.matches[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;

        let mut mods = Modifiers::default();
        for (i, f) in r.filters.iter().enumerate() {
            let ff = format!("{field}.filters[{i}]");
            self.filter(&ff, f, &matches, &mut mods)?;
        }
        let Modifiers {
            request_headers,
            response_headers,
            redirect,
            rewrite,
        } = mods;
        let mut rule = Rule {
            matches,
            request_headers,
            response_headers,
            action: Action::Forward {
                rewrite: None,
                backends: Vec::new(),
            },
        };
        if r.backend_refs.len() > MAX_BACKENDS {
            return Err(self.err(
                format!("{field}.backendRefs"),
                format!("at most {MAX_BACKENDS} backendRefs"),
            ));
        }
        if let Some(redirect) = redirect {
            if !r.backend_refs.is_empty() {
                return Err(self.err(
                    format!("{field}.backendRefs"),
                    "a rule with a RequestRedirect answers every request itself: remove its \
                     backendRefs",
                ));
            }
            rule.action = Action::Redirect(redirect);
            return Ok(rule);
        }
        let backends = r
            .backend_refs
            .iter()
            .enumerate()
            .map(|(i, b)| self.backend(namespace, &format!("{field}.backendRefs[{i}]"), b))
            .collect::<Result<Vec<_>, _>>()?;
        rule.action = Action::Forward { rewrite, backends };
        Ok(rule)
    }

    fn match_(&self, field: &str, m: &MatchDoc) -> Result<Match, RouteError> {
        let path = match &m.path {
            None => PathMatch::Prefix(String::new()),
            Some(p) => self.path_match(&format!("{field}.path"), p)?,
        };
        if m.headers.len() > MAX_HEADER_MATCHES {
            return Err(self.err(
                format!("{field}.headers"),
                format!("at most {MAX_HEADER_MATCHES} header matches"),
            ));
        }
        if m.query_params.len() > MAX_QUERY_MATCHES {
            return Err(self.err(
                format!("{field}.queryParams"),
                format!("at most {MAX_QUERY_MATCHES} query parameter matches"),
            ));
        }
        let mut headers: Vec<HeaderMatch> = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            let hf = format!("{field}.headers[{i}]");
            if !is_token(&h.name) {
                return Err(self.err(
                    format!("{hf}.name"),
                    format!("`{}` is not a valid header name", h.name),
                ));
            }
            let name = h.name.to_ascii_lowercase();
            let value = self.value_match(&hf, &h.kind, &h.value)?;
            // The spec: of several entries for one name, only the first counts.
            if !headers.iter().any(|x| x.name == name) {
                headers.push(HeaderMatch { name, value });
            }
        }
        let mut query: Vec<QueryMatch> = Vec::new();
        for (i, q) in m.query_params.iter().enumerate() {
            let qf = format!("{field}.queryParams[{i}]");
            if q.name.is_empty() {
                return Err(self.err(format!("{qf}.name"), "must not be empty"));
            }
            let value = self.value_match(&qf, &q.kind, &q.value)?;
            if !query.iter().any(|x| x.name == q.name) {
                query.push(QueryMatch {
                    name: q.name.clone(),
                    value,
                });
            }
        }
        let method = match &m.method {
            None => None,
            Some(method) if METHODS.contains(&method.as_str()) => Some(method.clone()),
            Some(method) => {
                return Err(self.err(
                    format!("{field}.method"),
                    format!("`{method}` is not one of {}", METHODS.join(", ")),
                ));
            }
        };
        Ok(Match {
            path,
            headers,
            query,
            method,
        })
    }

    fn path_match(&self, field: &str, p: &PathDoc) -> Result<PathMatch, RouteError> {
        let value = p.value.as_deref().unwrap_or("/");
        let kind = p.kind.as_deref().unwrap_or("PathPrefix");
        if kind != "RegularExpression" {
            if !value.starts_with('/') {
                return Err(self.err(format!("{field}.value"), "must start with `/`"));
            }
            if value.contains(['?', '#']) || value.contains("//") {
                return Err(self.err(
                    format!("{field}.value"),
                    format!("`{value}` may not contain `?`, `#` or `//`"),
                ));
            }
        }
        match kind {
            "Exact" => Ok(PathMatch::Exact(value.to_owned())),
            "PathPrefix" => Ok(PathMatch::Prefix(value.trim_end_matches('/').to_owned())),
            "RegularExpression" => Ok(PathMatch::Regex(
                self.regex(&format!("{field}.value"), value)?,
            )),
            other => Err(self.err(
                format!("{field}.type"),
                format!("`{other}` is not one of Exact, PathPrefix, RegularExpression"),
            )),
        }
    }

    fn value_match(
        &self,
        field: &str,
        kind: &Option<String>,
        value: &str,
    ) -> Result<ValueMatch, RouteError> {
        match kind.as_deref().unwrap_or("Exact") {
            "Exact" => Ok(ValueMatch::Exact(value.to_owned())),
            "RegularExpression" => Ok(ValueMatch::Regex(
                self.regex(&format!("{field}.value"), value)?,
            )),
            other => Err(self.err(
                format!("{field}.type"),
                format!("`{other}` is not one of Exact, RegularExpression"),
            )),
        }
    }

    /// Compiled anchored: Envoy matches route regexes against the whole value.
    fn regex(&self, field: &str, pattern: &str) -> Result<Regex, RouteError> {
        regex_lite::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                self.err(
                    field,
                    format!("invalid regular expression `{pattern}`: {e}"),
                )
            })
    }

    fn header_modifier(
        &self,
        field: &str,
        m: &HeaderModifierDoc,
    ) -> Result<HeaderModifier, RouteError> {
        let mut out = HeaderModifier::default();
        for (list, docs, into) in [("set", &m.set, &mut out.set), ("add", &m.add, &mut out.add)] {
            for (i, h) in docs.iter().enumerate() {
                if !is_token(&h.name) {
                    return Err(self.err(
                        format!("{field}.{list}[{i}].name"),
                        format!("`{}` is not a valid header name", h.name),
                    ));
                }
                if !is_header_value(&h.value) {
                    return Err(self.err(
                        format!("{field}.{list}[{i}].value"),
                        "has control characters",
                    ));
                }
                into.push((h.name.to_ascii_lowercase(), h.value.clone()));
            }
        }
        for (i, name) in m.remove.iter().enumerate() {
            if !is_token(name) {
                return Err(self.err(
                    format!("{field}.remove[{i}]"),
                    format!("`{name}` is not a valid header name"),
                ));
            }
            out.remove.push(name.to_ascii_lowercase());
        }
        Ok(out)
    }

    fn path_modifier(
        &self,
        field: &str,
        p: &PathModifierDoc,
        matches: &[Match],
    ) -> Result<PathModifier, RouteError> {
        let check = |v: &str, name: &str| -> Result<(), RouteError> {
            if !v.starts_with('/') || v.contains(['?', '#']) || !is_header_value(v) {
                return Err(self.err(
                    format!("{field}.{name}"),
                    format!("`{v}` must start with `/` and have no `?`, `#` or control characters"),
                ));
            }
            Ok(())
        };
        match (
            p.kind.as_str(),
            &p.replace_full_path,
            &p.replace_prefix_match,
        ) {
            ("ReplaceFullPath", Some(v), None) => {
                check(v, "replaceFullPath")?;
                Ok(PathModifier::Full(v.clone()))
            }
            ("ReplacePrefixMatch", None, Some(v)) => {
                check(v, "replacePrefixMatch")?;
                if let Some(i) = matches
                    .iter()
                    .position(|m| !matches!(m.path, PathMatch::Prefix(_)))
                {
                    return Err(self.err(
                        format!("{field}.replacePrefixMatch"),
                        format!(
                            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix \
                             match; match {i} is not"
                        ),
                    ));
                }
                Ok(PathModifier::Prefix(v.clone()))
            }
            ("ReplaceFullPath", _, _) => Err(self.err(
                field,
                "type ReplaceFullPath takes `replaceFullPath` (and not `replacePrefixMatch`)",
            )),
            ("ReplacePrefixMatch", _, _) => Err(self.err(
                field,
                "type ReplacePrefixMatch takes `replacePrefixMatch` (and not `replaceFullPath`)",
            )),
            (other, _, _) => Err(self.err(
                format!("{field}.type"),
                format!("`{other}` is not one of ReplaceFullPath, ReplacePrefixMatch"),
            )),
        }
    }

    fn filter(
        &self,
        field: &str,
        f: &FilterDoc,
        matches: &[Match],
        mods: &mut Modifiers,
    ) -> Result<(), RouteError> {
        let Modifiers {
            request_headers,
            response_headers,
            redirect,
            rewrite,
        } = mods;
        let present: Vec<&str> = [
            ("RequestHeaderModifier", f.request_header_modifier.is_some()),
            (
                "ResponseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("RequestRedirect", f.request_redirect.is_some()),
            ("URLRewrite", f.url_rewrite.is_some()),
            ("RequestMirror", f.request_mirror.is_some()),
            ("ExtensionRef", f.extension_ref.is_some()),
            ("CORS", f.cors.is_some()),
            ("ExternalAuth", f.external_auth.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect();
        if present != [f.kind.as_str()] {
            return Err(self.err(
                format!("{field}.type"),
                format!(
                    "a filter of type `{}` must set exactly its own field; it sets [{}]",
                    f.kind,
                    present.join(", ")
                ),
            ));
        }
        let dup = |what: &str| self.err(field, format!("{what} appears twice in this rule"));
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                if request_headers.is_some() {
                    return Err(dup("RequestHeaderModifier"));
                }
                let m = f.request_header_modifier.as_ref().expect("checked present");
                *request_headers =
                    Some(self.header_modifier(&format!("{field}.requestHeaderModifier"), m)?);
            }
            "ResponseHeaderModifier" => {
                if response_headers.is_some() {
                    return Err(dup("ResponseHeaderModifier"));
                }
                let m = f
                    .response_header_modifier
                    .as_ref()
                    .expect("checked present");
                *response_headers =
                    Some(self.header_modifier(&format!("{field}.responseHeaderModifier"), m)?);
            }
            "RequestRedirect" => {
                if redirect.is_some() {
                    return Err(dup("RequestRedirect"));
                }
                if rewrite.is_some() {
                    return Err(self.err(
                        field,
                        "RequestRedirect and URLRewrite cannot be used in the same rule",
                    ));
                }
                let r = f.request_redirect.as_ref().expect("checked present");
                *redirect = Some(self.redirect(&format!("{field}.requestRedirect"), r, matches)?);
            }
            "URLRewrite" => {
                if rewrite.is_some() {
                    return Err(dup("URLRewrite"));
                }
                if redirect.is_some() {
                    return Err(self.err(
                        field,
                        "RequestRedirect and URLRewrite cannot be used in the same rule",
                    ));
                }
                let r = f.url_rewrite.as_ref().expect("checked present");
                let rf = format!("{field}.urlRewrite");
                if let Some(h) = &r.hostname {
                    self.hostname(&format!("{rf}.hostname"), h)?;
                }
                *rewrite = Some(Rewrite {
                    hostname: r.hostname.clone(),
                    path: r
                        .path
                        .as_ref()
                        .map(|p| self.path_modifier(&format!("{rf}.path"), p, matches))
                        .transpose()?,
                });
            }
            other @ ("RequestMirror" | "ExtensionRef" | "CORS" | "ExternalAuth") => {
                return Err(self.err(
                    format!("{field}.type"),
                    format!("the {other} filter is not supported by the waypoint"),
                ));
            }
            other => {
                return Err(self.err(
                    format!("{field}.type"),
                    format!(
                        "`{other}` is not a filter type (RequestHeaderModifier, \
                         ResponseHeaderModifier, RequestRedirect, URLRewrite)"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn hostname(&self, field: &str, h: &str) -> Result<(), RouteError> {
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ok {
            Ok(())
        } else {
            Err(self.err(field, format!("`{h}` is not a valid hostname")))
        }
    }

    fn redirect(
        &self,
        field: &str,
        r: &RedirectDoc,
        matches: &[Match],
    ) -> Result<Redirect, RouteError> {
        if let Some(s) = &r.scheme
            && s != "http"
            && s != "https"
        {
            return Err(self.err(
                format!("{field}.scheme"),
                format!("`{s}` is not http or https"),
            ));
        }
        if let Some(h) = &r.hostname {
            self.hostname(&format!("{field}.hostname"), h)?;
        }
        let status = r.status_code.unwrap_or(302);
        if ![301, 302, 303, 307, 308].contains(&status) {
            return Err(self.err(
                format!("{field}.statusCode"),
                format!("{status} is not one of 301, 302, 303, 307, 308"),
            ));
        }
        if r.port == Some(0) {
            return Err(self.err(format!("{field}.port"), "must be 1 to 65535"));
        }
        Ok(Redirect {
            scheme: r.scheme.clone(),
            hostname: r.hostname.clone(),
            port: r.port,
            path: r
                .path
                .as_ref()
                .map(|p| self.path_modifier(&format!("{field}.path"), p, matches))
                .transpose()?,
            status,
        })
    }

    fn backend(
        &self,
        namespace: &str,
        field: &str,
        b: &BackendRefDoc,
    ) -> Result<BackendRef, RouteError> {
        if !b.filters.is_empty() {
            return Err(self.err(
                format!("{field}.filters"),
                "per-backend filters are not supported: put the filter on the rule",
            ));
        }
        if b.weight > MAX_WEIGHT {
            return Err(self.err(
                format!("{field}.weight"),
                format!("{} is more than {MAX_WEIGHT}", b.weight),
            ));
        }
        let kind = b.kind.as_deref().unwrap_or("Service");
        let ns = b.namespace.as_deref().unwrap_or(namespace);
        // Invalid references stay in the model: the Gateway API answers the
        // share of traffic they would get with 500.
        let target = if kind != "Service" || !is_core_group(&b.group) {
            BackendTarget::Invalid(format!(
                "backendRef {field} is a {}/{kind}; only Services are supported",
                b.group.as_deref().unwrap_or("")
            ))
        } else if ns != namespace {
            BackendTarget::Invalid(format!(
                "backendRef {field} names Service {ns}/{}: a backend in another namespace needs \
                 a ReferenceGrant, which the waypoint does not read",
                b.name
            ))
        } else {
            match b.port {
                Some(port) if port != 0 => BackendTarget::Service {
                    namespace: ns.to_owned(),
                    name: b.name.clone(),
                    port,
                },
                _ => BackendTarget::Invalid(format!(
                    "backendRef {field} to Service {ns}/{} has no port",
                    b.name
                )),
            }
        };
        Ok(BackendRef {
            target,
            weight: b.weight,
            field: field.to_owned(),
        })
    }
}
