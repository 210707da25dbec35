//! Running cases: the waypoint a suite names, loaded as `wayplug run` loads
//! it, with an in-process upstream; cases in parallel (bounded); each
//! outcome checked against the case's expectations.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use serde_norway::Value;

use super::Error;
use super::suite::{Case, HeaderExpect, Suite, UpstreamAnswer};
use crate::admin::record::{RecordedDecision, Recorder, Settings};
use crate::config::{Config, NamespaceConfig, SandboxConfig};
use crate::discovery::Endpoint;
use crate::http::body::{self, ProxyBody};
use crate::http::offline::OfflineUpstream;
use crate::http::pipeline::Limits;
use crate::http::{ConnInfo, Pipeline};
use crate::metrics::Metrics;
use crate::plugin::Registry;
use crate::plugin::callout::Callouts;
use crate::plugin::engine::Engine;
use crate::policy::Policies;

/// How long one case may take, end to end.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a body (at the upstream or the client) an outcome keeps.
pub const MAX_KEPT_BODY: usize = 64 * 1024;
/// The `x-request-id` a case gets unless it sends one, so outcomes are the
/// same from run to run.
pub const REQUEST_ID: &str = "wayplug-test";

/// What the upstream received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstreamed {
    /// The service the request was sent to (after any route).
    pub service: String,
    pub endpoint: String,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// What the client got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// The decision about one case: what a snapshot keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `allow` (it reached the upstream), `deny`, or `reset`.
    pub verdict: String,
    pub status: u16,
    #[serde(rename = "decidedBy", default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub decisions: Vec<RecordedDecision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstreamed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Answered>,
    /// Why the case could not run (its request names no known service...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An unmet expectation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub field: String,
    pub expected: String,
    pub actual: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub index: usize,
    pub name: String,
    pub outcome: Outcome,
    pub mismatches: Vec<Mismatch>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// A waypoint with no listeners: the suite's config, policies and plugins,
/// loaded as the proxy loads them.
pub struct OfflineWaypoint {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// The namespaces as the policy loader compiled them (for coverage).
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// The config file it was built from.
    pub config_path: PathBuf,
}

/// What `--against` puts in place of the suite's own config or folder.
#[derive(Debug, Clone)]
pub enum Replace {
    Config(PathBuf),
    PolicyDir(PathBuf),
}

fn config_text(
    suite: &Suite,
    config_path: &Path,
    policy_dir: Option<&Path>,
) -> Result<String, Error> {
    let text = std::fs::read_to_string(config_path).map_err(|source| Error::Read {
        path: config_path.to_owned(),
        source,
    })?;
    if policy_dir.is_none() && suite.plugins.is_empty() {
        return Ok(text);
    }
    let bad = |message: String| Error::Yaml {
        path: config_path.to_owned(),
        message,
    };
    let mut doc: Value = serde_norway::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = doc
        .as_mapping_mut()
        .ok_or_else(|| bad("the config is not a mapping".into()))?;
    if let Some(dir) = policy_dir {
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        map.insert("policyDir".into(), Value::String(abs.display().to_string()));
    }
    for (ns, entries) in &suite.plugins {
        let namespaces = map
            .entry("namespaces".into())
            .or_insert_with(|| Value::Mapping(Default::default()));
        let nsv = namespaces
            .as_mapping_mut()
            .ok_or_else(|| bad("`namespaces` is not a mapping".into()))?
            .entry(ns.as_str().into())
            .or_insert_with(|| Value::Mapping(Default::default()));
        let plugins = nsv
            .as_mapping_mut()
            .ok_or_else(|| bad(format!("`namespaces.{ns}` is not a mapping")))?
            .entry("plugins".into())
            .or_insert_with(|| Value::Sequence(Vec::new()));
        let list = plugins
            .as_sequence_mut()
            .ok_or_else(|| bad(format!("`namespaces.{ns}.plugins` is not a list")))?;
        for e in entries {
            list.push(serde_norway::to_value(e).map_err(|e| bad(e.to_string()))?);
        }
    }
    serde_norway::to_string(&doc).map_err(|e| bad(e.to_string()))
}

impl OfflineWaypoint {
    /// Loads the suite's waypoint (or, with `replace`, the one to compare
    /// it against): config, policy folder, registry and every plugin.
    pub async fn build(suite: &Suite, replace: Option<&Replace>) -> Result<OfflineWaypoint, Error> {
        let (config_path, policy_dir) = match replace {
            None => (suite.config.clone(), suite.policy_dir.clone()),
            Some(Replace::Config(c)) => (c.clone(), None),
            Some(Replace::PolicyDir(d)) => (suite.config.clone(), Some(d.clone())),
        };
        let text = config_text(suite, &config_path, policy_dir.as_deref())?;
        let base = config_path.parent().map(Path::to_owned).unwrap_or_default();
        let config = Config::from_yaml(&text, &config_path.display().to_string(), &base).map_err(
            |source| Error::Config {
                suite: suite.path.clone(),
                config: config_path.clone(),
                source: Box::new(source),
            },
        )?;
        let plugin_err = |source| Error::Plugin {
            suite: suite.path.clone(),
            source: Box::new(source),
        };
        let metrics = Arc::new(Metrics::new());
        // A suite is over long before optimized code would be ready, and
        // decisions do not depend on the compiler: one compile each.
        let sandbox = SandboxConfig {
            compiler: crate::config::Compiler::Optimizing,
            ..config.sandbox.clone()
        };
        let engine = Engine::new(&sandbox).map_err(plugin_err)?;
        let registry = Arc::new(Registry::new(
            engine,
            metrics.clone(),
            Arc::new(Callouts::new(config.upstreams.clone())),
            sandbox,
            crate::demo::builtins(),
        ));
        let policies = Policies::default();
        let compiled: Mutex<BTreeMap<String, NamespaceConfig>> = Mutex::default();
        policies
            .apply(&config, |namespaces| {
                let mut full = config.clone();
                full.namespaces = namespaces.clone();
                *compiled.lock().unwrap_or_else(|e| e.into_inner()) = namespaces;
                let registry = registry.clone();
                async move { registry.apply(full).await }
            })
            .await
            .map_err(plugin_err)?;
        // A refused policy would make the suite pass against less than the
        // proxy would enforce: refuse the suite instead.
        let errors = policies.errors();
        if !errors.is_empty() {
            return Err(Error::Policies {
                suite: suite.path.clone(),
                errors,
            });
        }
        Ok(OfflineWaypoint {
            registry,
            metrics,
            limits: Limits {
                paused_request_timeout: config.sandbox.paused_request_timeout(),
                max_buffered_body: config.sandbox.max_buffered_body_bytes,
            },
            namespaces: compiled.into_inner().unwrap_or_else(|e| e.into_inner()),
            config_path,
        })
    }

    /// Runs `cases`, at most `jobs` at once; results in case order.
    pub async fn run(self: &Arc<Self>, cases: &[Case], jobs: usize) -> Vec<CaseResult> {
        let jobs = jobs.max(1);
        let mut set = tokio::task::JoinSet::new();
        let mut results: Vec<Option<CaseResult>> = vec![None; cases.len()];
        let mut next = 0;
        loop {
            while set.len() < jobs && next < cases.len() {
                let me = self.clone();
                let case = cases[next].clone();
                let slot = next;
                set.spawn(async move { (slot, me.run_case(&case).await) });
                next += 1;
            }
            let Some(done) = set.join_next().await else {
                break;
            };
            match done {
                Ok((slot, r)) => results[slot] = Some(r),
                Err(e) => {
                    // A panic in one case must not hide the others' results.
                    tracing::error!(error = %e, "a case's task failed");
                }
            }
        }
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| CaseResult {
                    index: cases[i].index,
                    name: cases[i].name.clone(),
                    outcome: failed("the case's task failed".into()),
                    mismatches: vec![Mismatch {
                        field: "run".into(),
                        expected: "the case to run".into(),
                        actual: "its task failed".into(),
                    }],
                })
            })
            .collect()
    }

    /// One case through the pipeline, checked against its expectations.
    pub async fn run_case(&self, case: &Case) -> CaseResult {
        let outcome = self.decide(case).await;
        let mismatches = check(case, &outcome);
        CaseResult {
            index: case.index,
            name: case.name.clone(),
            outcome,
            mismatches,
        }
    }

    /// One case's outcome.
    pub async fn decide(&self, case: &Case) -> Outcome {
        let capture = Arc::new(Capture {
            answer: case.upstream.clone(),
            seen: Arc::default(),
        });
        let recorder = Arc::new(Recorder::default());
        recorder.arm(Settings::everything(1));
        let pipeline = Pipeline::offline(
            self.registry.clone(),
            self.metrics.clone(),
            self.limits.clone(),
            capture.clone(),
            recorder.clone(),
        );
        let r = &case.request;
        // A case with an identity arrives as through a tunnel: the caller's
        // identity and the tunnel's destination come with it.
        let destination = match &r.peer {
            None => None,
            Some(_) => {
                let target = format!("{}:{}", r.service, r.port);
                match pipeline.discovery().resolve_authority(&target, r.port) {
                    Ok(d) => Some(d),
                    Err(e) => return failed(format!("destination {target}: {e}")),
                }
            }
        };
        let conn = ConnInfo {
            source: r.source,
            local: SocketAddr::from(([127, 0, 0, 1], if r.peer.is_some() { 15008 } else { 15006 })),
            peer: r.peer.clone(),
            destination,
        };
        let mut builder = Request::builder()
            .method(r.method.clone())
            .uri(r.path.as_str())
            .version(if r.h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            });
        let mut headers = r.headers.clone();
        if r.h2 {
            builder = builder.uri(format!("http://{}{}", r.authority, r.path));
        } else if let Ok(v) = http::HeaderValue::from_str(&r.authority) {
            headers.insert(http::header::HOST, v);
        }
        if !headers.contains_key("x-request-id") {
            headers.insert("x-request-id", http::HeaderValue::from_static(REQUEST_ID));
        }
        *builder.headers_mut().expect("fresh builder") = headers;
        let req = match builder.body(Full::new(r.body.clone())) {
            Ok(req) => req,
            Err(e) => return failed(format!("the request cannot be built: {e}")),
        };
        let answered = tokio::time::timeout(CASE_TIMEOUT, async {
            match pipeline.handle(req, &conn).await {
                Err(_) => None,
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = collect_bounded(body).await;
                    Some((parts.status.as_u16(), parts.headers, body))
                }
            }
        })
        .await;
        let Ok(answered) = answered else {
            return failed(format!("no answer within {CASE_TIMEOUT:?}"));
        };
        // The pipeline hands the recorder its summary once the response is
        // done with, which it is now.
        let observed = recorder.take().pop();
        let upstream = capture
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (decided_by, decisions) = match observed {
            Some(o) => (
                (!o.decided_by.is_empty()).then_some(o.decided_by),
                o.decisions,
            ),
            None => (None, Vec::new()),
        };
        match answered {
            None => Outcome {
                verdict: "reset".into(),
                status: 0,
                decided_by,
                decisions,
                upstream,
                response: None,
                error: None,
            },
            Some((status, headers, body)) => Outcome {
                verdict: if upstream.is_some() { "allow" } else { "deny" }.into(),
                status,
                decided_by,
                decisions,
                upstream,
                response: Some(Answered {
                    headers: flatten(&headers),
                    body: String::from_utf8_lossy(&body).into_owned(),
                }),
                error: None,
            },
        }
    }
}

/// The first [`MAX_KEPT_BODY`] bytes of a body (all of it is read, so the
/// sender finishes); a body that fails ends where it failed.
async fn collect_bounded(mut body: ProxyBody) -> Bytes {
    let mut kept = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            let room = MAX_KEPT_BODY.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    kept.freeze()
}

fn failed(error: String) -> Outcome {
    Outcome {
        verdict: "error".into(),
        status: 0,
        decided_by: None,
        decisions: Vec::new(),
        upstream: None,
        response: None,
        error: Some(error),
    }
}

fn flatten(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// The in-process upstream of one case: keeps what it received, answers
/// what the case says.
struct Capture {
    answer: UpstreamAnswer,
    seen: Arc<Mutex<Option<Upstreamed>>>,
}

impl OfflineUpstream for Capture {
    fn send(
        &self,
        req: Request<ProxyBody>,
        service: String,
        endpoint: Endpoint,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ProxyBody>> + Send>> {
        let answer = self.answer.clone();
        let seen = self.seen.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = collect_bounded(body).await;
            let mut headers = parts.headers.clone();
            headers.remove(http::header::HOST);
            let authority = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                .unwrap_or_default();
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(Upstreamed {
                service,
                endpoint: endpoint.address.to_string(),
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".into()),
                authority,
                headers: flatten(&headers),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let mut resp = Response::new(body::full(answer.body));
            *resp.status_mut() = answer.status;
            *resp.headers_mut() = answer.headers;
            resp
        })
    }
}

fn show<T: std::fmt::Debug>(v: &Option<T>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "none".into(),
    }
}

fn headers_check(
    field: &str,
    want: &HeaderExpect,
    got: Option<&BTreeMap<String, String>>,
    out: &mut Vec<Mismatch>,
) {
    let empty = BTreeMap::new();
    let got = got.unwrap_or(&empty);
    for (name, value) in &want.present {
        let name_l = name.to_ascii_lowercase();
        let actual = got.get(&name_l);
        let ok = match (value, actual) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(v), Some(a)) => v == a,
        };
        if !ok {
            out.push(Mismatch {
                field: format!("{field}.{name_l}"),
                expected: value
                    .clone()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_else(|| "present".into()),
                actual: actual
                    .map(|a| format!("{a:?}"))
                    .unwrap_or_else(|| "absent".into()),
            });
        }
    }
    for name in &want.absent {
        let name_l = name.to_ascii_lowercase();
        if let Some(a) = got.get(&name_l) {
            out.push(Mismatch {
                field: format!("{field}.{name_l}"),
                expected: "absent".into(),
                actual: format!("{a:?}"),
            });
        }
    }
}

/// The unmet expectations of `case` given `o`.
pub fn check(case: &Case, o: &Outcome) -> Vec<Mismatch> {
    let e = &case.expect;
    let mut out = Vec::new();
    if let Some(err) = &o.error {
        out.push(Mismatch {
            field: "request".into(),
            expected: "to run".into(),
            actual: err.clone(),
        });
        return out;
    }
    let mut cmp = |field: &str, expected: String, actual: String| {
        if expected != actual {
            out.push(Mismatch {
                field: field.into(),
                expected,
                actual,
            });
        }
    };
    if let Some(allow) = e.allow {
        cmp(
            "allow",
            if allow { "allow" } else { "deny" }.into(),
            o.verdict.clone(),
        );
    }
    if let Some(s) = e.status {
        cmp("status", s.to_string(), o.status.to_string());
    }
    if let Some(by) = &e.decided_by {
        let want = (!by.is_empty()).then(|| by.clone());
        cmp("decidedBy", show(&want), show(&o.decided_by));
    }
    if e.policy.is_some() || e.rule.is_some() || e.outcome.is_some() {
        let found = o.decisions.iter().any(|d| {
            e.policy.as_ref().is_none_or(|p| *p == d.policy)
                && e.rule.is_none_or(|r| d.rule == Some(r))
                && e.outcome.as_ref().is_none_or(|x| *x == d.outcome)
        });
        if !found {
            let mut want = Vec::new();
            if let Some(p) = &e.policy {
                want.push(format!("policy {p}"));
            }
            if let Some(r) = e.rule {
                want.push(format!("rule {r}"));
            }
            if let Some(x) = &e.outcome {
                want.push(format!("outcome {x}"));
            }
            cmp("decision", want.join(", "), decisions_text(&o.decisions));
        }
    }
    if let Some(want) = &e.decisions {
        let matches = want.len() == o.decisions.len()
            && want.iter().zip(&o.decisions).all(|(w, d)| {
                w.plugin.as_ref().is_none_or(|p| *p == d.plugin)
                    && w.policy == d.policy
                    && w.rule == d.rule
                    && w.outcome == d.outcome
            });
        if !matches {
            let want_text: Vec<String> = want
                .iter()
                .map(|w| record_text(&w.policy, w.rule, &w.outcome))
                .collect();
            cmp(
                "decisions",
                format!("[{}]", want_text.join("; ")),
                decisions_text(&o.decisions),
            );
        }
    }
    let up = o.upstream.as_ref();
    if let Some(b) = &e.backend {
        cmp(
            "backend",
            format!("{b:?}"),
            show(&up.map(|u| u.service.clone())),
        );
    }
    if let Some(ep) = &e.endpoint {
        cmp(
            "endpoint",
            format!("{ep:?}"),
            show(&up.map(|u| u.endpoint.clone())),
        );
    }
    if let Some(p) = &e.path {
        cmp("path", format!("{p:?}"), show(&up.map(|u| u.path.clone())));
    }
    if let Some(h) = &e.host {
        cmp(
            "host",
            format!("{h:?}"),
            show(&up.map(|u| u.authority.clone())),
        );
    }
    if let Some(body) = &e.body {
        let got = o.response.as_ref().map(|r| r.body.as_str()).unwrap_or("");
        if !got.contains(body.as_str()) {
            cmp("body", format!("containing {body:?}"), format!("{got:?}"));
        }
    }
    if let Some(h) = &e.upstream_headers {
        headers_check("upstreamHeaders", h, up.map(|u| &u.headers), &mut out);
    }
    if let Some(h) = &e.response_headers {
        headers_check(
            "responseHeaders",
            h,
            o.response.as_ref().map(|r| &r.headers),
            &mut out,
        );
    }
    out
}

fn record_text(policy: &str, rule: Option<u32>, outcome: &str) -> String {
    let policy = if policy.is_empty() { "(none)" } else { policy };
    match rule {
        Some(r) => format!("{policy}[{r}]={outcome}"),
        None => format!("{policy}={outcome}"),
    }
}

/// `[AuthorizationPolicy/ns/name[0]=allow; ...]`
pub fn decisions_text(d: &[RecordedDecision]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|d| record_text(&d.policy, d.rule, &d.outcome))
        .collect();
    format!("[{}]", parts.join("; "))
}
