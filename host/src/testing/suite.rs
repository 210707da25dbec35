//! The suite file: its serde types (every struct refuses unknown fields) and
//! their checking into cases a pipeline can run. Errors name the suite
//! file, the case (index and name) and the field.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_norway::Value;

use super::Error;
use super::expand;
use crate::exchange::PeerIdentity;

/// The source address of a case that names none.
pub const DEFAULT_SOURCE: &str = "127.0.0.1:40000";
/// The trust domain of an identity given as namespace and service account.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Cases one suite file may hold after its matrices are expanded.
pub const MAX_CASES: usize = 100_000;
/// Bytes of a request or upstream body a case may give.
pub const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSuite {
    #[serde(default)]
    name: Option<String>,
    /// The waypoint config, relative to the suite file.
    config: PathBuf,
    /// Replaces the config's `policyDir`; relative to the suite file.
    #[serde(default)]
    policy_dir: Option<PathBuf>,
    /// Plugin entries added to namespaces' chains (the config's schema;
    /// `file://` URLs relative to the suite file).
    #[serde(default)]
    plugins: BTreeMap<String, Vec<serde_json::Value>>,
    #[serde(default)]
    defaults: RawDefaults,
    cases: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default)]
    request: RawRequest,
    #[serde(default)]
    upstream: RawUpstream,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    request: RawRequest,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    expect: Expect,
}

/// A header's value, or several values of one header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Values {
    One(String),
    Many(Vec<String>),
}

impl Values {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let v: Vec<&str> = match self {
            Values::One(s) => vec![s.as_str()],
            Values::Many(v) => v.iter().map(String::as_str).collect(),
        };
        v.into_iter()
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The destination service: hostname or VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The Host / `:authority`; defaults to the service (and port unless 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, Values>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The caller's mesh identity: `td/ns/NS/sa/SA` or `spiffe://...`. A
    /// case with an identity arrives as through an HBONE tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The caller's namespace, as an identity with `serviceAccount`
    /// (default `default`) in `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The caller's address: `ip` or `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `HTTP/1.1` (default) or `HTTP/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

impl RawRequest {
    /// `self`, with what it leaves out taken from `defaults`; headers are
    /// merged by name, the case's winning.
    fn or(self, defaults: &RawRequest) -> RawRequest {
        let d = defaults.clone();
        let headers = match (d.headers, self.headers) {
            (None, h) | (h, None) => h,
            (Some(mut base), Some(own)) => {
                base.extend(own);
                Some(base)
            }
        };
        RawRequest {
            method: self.method.or(d.method),
            path: self.path.or(d.path),
            service: self.service.or(d.service),
            port: self.port.or(d.port),
            authority: self.authority.or(d.authority),
            headers,
            body: self.body.or(d.body),
            principal: self.principal.or(d.principal),
            namespace: self.namespace.or(d.namespace),
            service_account: self.service_account.or(d.service_account),
            source: self.source.or(d.source),
            protocol: self.protocol.or(d.protocol),
        }
    }
}

/// What the in-process upstream answers (default 200, no body).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    headers: Option<BTreeMap<String, Values>>,
    #[serde(default)]
    body: Option<String>,
}

/// Headers a case expects present (with a value, or `null` for any) or absent.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderExpect {
    #[serde(default)]
    pub present: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub absent: Vec<String>,
}

/// One decision record a case expects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectDecision {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    pub outcome: String,
}

/// A case's expectations; each one left out is not checked.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    /// `true`: the request reached the upstream.
    pub allow: Option<bool>,
    /// The status the client got.
    pub status: Option<u16>,
    /// The plugin that answered locally (empty: none did).
    pub decided_by: Option<String>,
    /// A decision record of this policy (`Kind/namespace/name`) exists...
    pub policy: Option<String>,
    /// ...with this rule index...
    pub rule: Option<u32>,
    /// ...and this outcome.
    pub outcome: Option<String>,
    /// Exactly these decision records, in order (details not compared).
    pub decisions: Option<Vec<ExpectDecision>>,
    /// The service hostname the upstream request went to.
    pub backend: Option<String>,
    /// The endpoint (`ip:port`) it went to.
    pub endpoint: Option<String>,
    /// Path and query the upstream received.
    pub path: Option<String>,
    /// Authority the upstream received.
    pub host: Option<String>,
    pub upstream_headers: Option<HeaderExpect>,
    pub response_headers: Option<HeaderExpect>,
    /// Text the response body contains.
    pub body: Option<String>,
}

/// A request ready for the pipeline.
#[derive(Debug, Clone)]
pub struct CaseRequest {
    pub method: Method,
    pub path: String,
    pub service: String,
    pub port: u16,
    pub authority: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: Option<PeerIdentity>,
    pub source: SocketAddr,
    pub h2: bool,
}

/// What the in-process upstream answers.
#[derive(Debug, Clone)]
pub struct UpstreamAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct Case {
    /// Position among the suite's cases after expansion.
    pub index: usize,
    pub name: String,
    pub request: CaseRequest,
    pub upstream: UpstreamAnswer,
    pub expect: Expect,
}

/// A loaded suite file.
#[derive(Debug, Clone)]
pub struct Suite {
    pub path: PathBuf,
    pub name: String,
    /// The config file, resolved against the suite's folder.
    pub config: PathBuf,
    pub policy_dir: Option<PathBuf>,
    /// Extra plugin entries per namespace, `file://` URLs made absolute.
    pub plugins: BTreeMap<String, Vec<serde_json::Value>>,
    pub cases: Vec<Case>,
}

fn field_error(path: &Path, case: Option<String>, field: String, message: String) -> Error {
    Error::Field {
        path: path.to_owned(),
        case,
        field,
        message,
    }
}

/// `case 3 ("name")`, as errors and reports name a case.
pub fn case_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("case {index} ({n:?})"),
        None => format!("case {index}"),
    }
}

impl Suite {
    pub fn load(path: &Path) -> Result<Suite, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Suite::from_yaml(&text, path)
    }

    /// Reads a suite; `path` names it in errors and is where relative paths
    /// start.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Suite, Error> {
        let value: Value = serde_norway::from_str(text).map_err(|e| Error::Yaml {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let raw: RawSuite = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            field_error(path, None, field, e.into_inner().to_string())
        })?;
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let name = raw.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "suite".into())
        });
        let config = dir.join(&raw.config);
        if !config.is_file() {
            return Err(field_error(
                path,
                None,
                "config".into(),
                format!("{} does not exist", config.display()),
            ));
        }
        let policy_dir = raw.policy_dir.as_ref().map(|d| dir.join(d));
        if let Some(d) = &policy_dir
            && !d.is_dir()
        {
            return Err(field_error(
                path,
                None,
                "policyDir".into(),
                format!("{} is not a folder", d.display()),
            ));
        }
        let plugins = absolute_plugin_urls(raw.plugins, &dir);
        check_upstream(&raw.defaults.upstream, &RawUpstream::default())
            .map_err(|(f, m)| field_error(path, None, format!("defaults.upstream.{f}"), m))?;
        let mut cases = Vec::new();
        for (i, entry) in raw.cases.iter().enumerate() {
            let entry_name = entry.get("name").and_then(Value::as_str).map(str::to_owned);
            let label = || case_label(i, entry_name.as_deref());
            let expanded = expand::expand(entry)
                .map_err(|(f, m)| field_error(path, Some(label()), format!("cases[{i}].{f}"), m))?;
            for (value, suffix) in expanded {
                if cases.len() >= MAX_CASES {
                    return Err(field_error(
                        path,
                        Some(label()),
                        "cases".into(),
                        format!("more than {MAX_CASES} cases after expansion"),
                    ));
                }
                let raw_case: RawCase = serde_path_to_error::deserialize(value).map_err(|e| {
                    let field = format!("cases[{i}].{}", e.path());
                    field_error(path, Some(label()), field, e.into_inner().to_string())
                })?;
                let index = cases.len();
                let case_name = match (&raw_case.name, &suffix) {
                    (Some(n), Some(s)) => format!("{n} {s}"),
                    (Some(n), None) => n.clone(),
                    (None, Some(s)) => format!("case {i} {s}"),
                    (None, None) => format!("case {i}"),
                };
                let label = || case_label(i, Some(&case_name));
                let request = check_request(raw_case.request.or(&raw.defaults.request)).map_err(
                    |(f, m)| field_error(path, Some(label()), format!("cases[{i}].request.{f}"), m),
                )?;
                let upstream = check_upstream(&raw_case.upstream, &raw.defaults.upstream).map_err(
                    |(f, m)| {
                        field_error(path, Some(label()), format!("cases[{i}].upstream.{f}"), m)
                    },
                )?;
                check_expect(&raw_case.expect).map_err(|(f, m)| {
                    field_error(path, Some(label()), format!("cases[{i}].expect.{f}"), m)
                })?;
                cases.push(Case {
                    index,
                    name: case_name,
                    request,
                    upstream,
                    expect: raw_case.expect,
                });
            }
        }
        let mut seen = std::collections::HashSet::new();
        for c in &cases {
            if !seen.insert(c.name.as_str()) {
                return Err(field_error(
                    path,
                    Some(case_label(c.index, Some(&c.name))),
                    "name".into(),
                    "two cases have this name; snapshots and reports need them unique".into(),
                ));
            }
        }
        Ok(Suite {
            path: path.to_owned(),
            name,
            config,
            policy_dir,
            plugins,
            cases,
        })
    }
}

fn absolute_plugin_urls(
    mut plugins: BTreeMap<String, Vec<serde_json::Value>>,
    dir: &Path,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    for entry in plugins.values_mut().flatten() {
        if let Some(url) = entry.get_mut("url")
            && let Some(rest) = url.as_str().and_then(|u| u.strip_prefix("file://"))
            && Path::new(rest).is_relative()
        {
            *url = serde_json::Value::String(format!("file://{}", dir.join(rest).display()));
        }
    }
    plugins
}

type FieldResult<T> = Result<T, (String, String)>;

fn header_map(field: &str, headers: Option<&BTreeMap<String, Values>>) -> FieldResult<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, values) in headers.into_iter().flatten() {
        let at = || format!("{field}.{name}");
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| (at(), format!("`{name}` is not a valid header name")))?;
        for v in values.iter() {
            let v = HeaderValue::from_str(v)
                .map_err(|_| (at(), format!("{v:?} is not a valid header value")))?;
            map.append(n.clone(), v);
        }
    }
    Ok(map)
}

fn check_request(raw: RawRequest) -> FieldResult<CaseRequest> {
    let bad = |f: &str, m: String| (f.to_owned(), m);
    let method_text = raw.method.as_deref().unwrap_or("GET");
    let method = Method::from_bytes(method_text.as_bytes())
        .map_err(|_| bad("method", format!("{method_text:?} is not an HTTP method")))?;
    let path = raw.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(bad(
            "path",
            format!("{path:?} is not a path (it starts with `/` and has no spaces)"),
        ));
    }
    let service = raw.service.ok_or_else(|| {
        bad(
            "service",
            "missing: name the destination service (hostname or VIP), here or in defaults.request"
                .into(),
        )
    })?;
    let port = raw.port.unwrap_or(80);
    let authority = raw.authority.unwrap_or_else(|| {
        if port == 80 {
            service.clone()
        } else {
            format!("{service}:{port}")
        }
    });
    if authority.parse::<http::uri::Authority>().is_err() {
        return Err(bad(
            "authority",
            format!("{authority:?} is not an authority"),
        ));
    }
    let headers = header_map("headers", raw.headers.as_ref())?;
    let body = Bytes::from(raw.body.unwrap_or_default());
    if body.len() > MAX_BODY_BYTES {
        return Err(bad("body", format!("longer than {MAX_BODY_BYTES} bytes")));
    }
    let peer = identity(
        raw.principal.as_deref(),
        raw.namespace.as_deref(),
        raw.service_account.as_deref(),
    )?;
    let source_text = raw.source.as_deref().unwrap_or(DEFAULT_SOURCE);
    let source = match source_text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match source_text.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, 40000),
            Err(_) => {
                return Err(bad(
                    "source",
                    format!("{source_text:?} is not an IP address or ip:port"),
                ));
            }
        },
    };
    let h2 = match raw.protocol.as_deref() {
        None | Some("HTTP/1.1") => false,
        Some("HTTP/2") => true,
        Some(other) => {
            return Err(bad(
                "protocol",
                format!("{other:?}: expected HTTP/1.1 or HTTP/2"),
            ));
        }
    };
    Ok(CaseRequest {
        method,
        path,
        service,
        port,
        authority,
        headers,
        body,
        peer,
        source,
        h2,
    })
}

fn identity(
    principal: Option<&str>,
    namespace: Option<&str>,
    service_account: Option<&str>,
) -> FieldResult<Option<PeerIdentity>> {
    match (principal, namespace) {
        (Some(_), Some(_)) => Err((
            "principal".into(),
            "give either `principal` or `namespace` (with `serviceAccount`), not both".into(),
        )),
        (Some(p), None) => {
            let p = p.strip_prefix("spiffe://").unwrap_or(p);
            let parts: Vec<&str> = p.split('/').collect();
            match parts.as_slice() {
                [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                    Ok(Some(PeerIdentity {
                        trust_domain: td.to_string(),
                        namespace: ns.to_string(),
                        service_account: sa.to_string(),
                    }))
                }
                _ => Err((
                    "principal".into(),
                    format!("{p:?} is not a principal (TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT)"),
                )),
            }
        }
        (None, Some(ns)) => Ok(Some(PeerIdentity {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            namespace: ns.to_owned(),
            service_account: service_account.unwrap_or("default").to_owned(),
        })),
        (None, None) if service_account.is_some() => {
            Err(("serviceAccount".into(), "needs `namespace`".into()))
        }
        (None, None) => Ok(None),
    }
}

fn check_upstream(raw: &RawUpstream, defaults: &RawUpstream) -> FieldResult<UpstreamAnswer> {
    let code = raw.status.or(defaults.status).unwrap_or(200);
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| {
            (
                "status".to_owned(),
                format!("{code} is not a final HTTP status"),
            )
        })?;
    let headers = header_map(
        "headers",
        raw.headers.as_ref().or(defaults.headers.as_ref()),
    )?;
    let body = Bytes::from(
        raw.body
            .clone()
            .or_else(|| defaults.body.clone())
            .unwrap_or_default(),
    );
    if body.len() > MAX_BODY_BYTES {
        return Err(("body".into(), format!("longer than {MAX_BODY_BYTES} bytes")));
    }
    Ok(UpstreamAnswer {
        status,
        headers,
        body,
    })
}

fn check_expect(e: &Expect) -> FieldResult<()> {
    for (field, h) in [
        ("upstreamHeaders", &e.upstream_headers),
        ("responseHeaders", &e.response_headers),
    ] {
        let Some(h) = h else { continue };
        for name in h.present.keys().chain(h.absent.iter()) {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    format!("{field}.{name}"),
                    format!("`{name}` is not a valid header name"),
                ));
            }
        }
    }
    if let Some(s) = e.status
        && StatusCode::from_u16(s).is_err()
    {
        return Err(("status".into(), format!("{s} is not an HTTP status")));
    }
    Ok(())
}
