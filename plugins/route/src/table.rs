//! Choosing the rule for a request among every route attached to its
//! Service, and turning that rule into a decision.
//!
//! Invariant: `by_parent[ns][name]` lists every (route, rule, match) whose
//! route has that Service as a parent, already in Gateway API precedence
//! order, so a request takes the first entry that matches. Sorting happens
//! once, at configure time.

use std::cmp::Reverse;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use wayplug_sdk::{
    Backend, Decision, HeaderChanges, LocalResponse, RedirectStatus, Request, trace,
};

use crate::model::{
    Action, BackendTarget, HeaderModifier, Match, PathMatch, PathModifier, Redirect, Route, Rule,
    ValueMatch,
};

/// A Service the waypoint knows, as the host hands it to the plugin: the
/// name routes use and the hostname requests carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownService {
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    /// Service ports.
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    route: usize,
    rule: usize,
    matched: usize,
    /// The parentRef's port: the entry applies only to traffic to it.
    port: Option<u16>,
}

/// The kind decision records put before `namespace/name`.
pub const TRACE_KIND: &str = "HTTPRoute";

/// Every route of a namespace, indexed by parent Service.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_parent: HashMap<String, HashMap<String, Vec<Entry>>>,
    /// `None`: the host gave no service list; backends are then named by the
    /// Kubernetes convention and the waypoint answers 500 for unknown ones.
    services: Option<Services>,
}

#[derive(Debug)]
struct Services {
    by_name: HashMap<(String, String), KnownService>,
    by_host: HashMap<String, (String, String)>,
}

/// Sort key of one match in Gateway API precedence order (smaller first).
type Precedence<'a> = (
    (u8, Reverse<usize>),
    bool,
    Reverse<usize>,
    Reverse<usize>,
    (bool, Option<&'a str>, usize),
    (&'a str, &'a str),
    usize,
    usize,
);

fn precedence<'a>(routes: &'a [Route], doc_order: usize, e: &Entry) -> Precedence<'a> {
    let route = &routes[e.route];
    let m = &route.rules[e.rule].matches[e.matched];
    let path = match &m.path {
        PathMatch::Exact(p) => (0, Reverse(p.len())),
        PathMatch::Prefix(p) => (1, Reverse(p.len())),
        // Implementation-specific in the spec; after the prefixes here.
        PathMatch::Regex(r) => (2, Reverse(r.as_str().len())),
    };
    // Creation time when written, else the order the documents came in.
    let created = match &route.created {
        Some(ts) => (false, Some(ts.as_str()), 0),
        None => (true, None, doc_order),
    };
    (
        path,
        m.method.is_none(),
        Reverse(m.headers.len()),
        Reverse(m.query.len()),
        created,
        (route.namespace.as_str(), route.name.as_str()),
        e.rule,
        e.matched,
    )
}

impl RouteTable {
    /// Indexes `routes` (in document order) and, when given, the services
    /// backends may name.
    pub fn new(routes: Vec<Route>, services: Option<Vec<KnownService>>) -> RouteTable {
        let mut entries: Vec<(String, String, Entry)> = Vec::new();
        for (r, route) in routes.iter().enumerate() {
            for parent in &route.parents {
                for (rule_i, rule) in route.rules.iter().enumerate() {
                    for m in 0..rule.matches.len() {
                        entries.push((
                            parent.namespace.clone(),
                            parent.name.clone(),
                            Entry {
                                route: r,
                                rule: rule_i,
                                matched: m,
                                port: parent.port,
                            },
                        ));
                    }
                }
            }
        }
        entries.sort_by(|a, b| {
            precedence(&routes, a.2.route, &a.2).cmp(&precedence(&routes, b.2.route, &b.2))
        });
        let mut by_parent: HashMap<String, HashMap<String, Vec<Entry>>> = HashMap::new();
        for (ns, name, e) in entries {
            by_parent
                .entry(ns)
                .or_default()
                .entry(name)
                .or_default()
                .push(e);
        }
        let services = services.map(|list| Services {
            by_host: list
                .iter()
                .map(|s| {
                    (
                        s.hostname.to_ascii_lowercase(),
                        (s.namespace.clone(), s.name.clone()),
                    )
                })
                .collect(),
            by_name: list
                .into_iter()
                .map(|s| ((s.namespace.clone(), s.name.clone()), s))
                .collect(),
        });
        RouteTable {
            routes,
            by_parent,
            services,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The Service (namespace, name) a request was sent to.
    fn destination<'r>(&'r self, req: &'r Request) -> (&'r str, &'r str) {
        let dest = req.destination();
        if let Some(services) = &self.services
            && let Some((ns, name)) = services.by_host.get(&dest.service.to_ascii_lowercase())
        {
            return (ns, name);
        }
        // Kubernetes names services `<name>.<namespace>.svc...`.
        let name = dest.service.split('.').next().unwrap_or(&dest.service);
        (&dest.namespace, name)
    }

    /// The decision for `req`; `roll` picks among weighted backends (any
    /// value; the plugin passes a fresh pseudo-random one per request).
    pub fn decide(&self, req: &Request, roll: u64) -> Decision {
        let (ns, name) = self.destination(req);
        let Some(entries) = self.by_parent.get(ns).and_then(|m| m.get(name)) else {
            // No route attaches to this Service: routing is not ours.
            return Decision::allow();
        };
        let port = req.destination().port;
        let mut query = LazyQuery::default();
        let mut attached = false;
        for e in entries {
            if e.port.is_some_and(|p| p != port) {
                continue;
            }
            attached = true;
            let route = &self.routes[e.route];
            let rule = &route.rules[e.rule];
            let m = &rule.matches[e.matched];
            if matches(m, req, &mut query) {
                let outcome = match rule.action {
                    Action::Redirect(_) => "redirect",
                    Action::Forward { .. } => "route",
                };
                trace::record_decision(
                    &format!("{TRACE_KIND}/{}/{}", route.namespace, route.name),
                    Some(e.rule as u32),
                    outcome,
                    &format!("matches[{}]", e.matched),
                );
                return self.apply(route, e.rule, rule, m, req, roll);
            }
        }
        if !attached {
            return Decision::allow();
        }
        trace::record_decision(
            "",
            None,
            "no-match",
            &format!(
                "no rule of the HTTPRoutes attached to Service {ns}/{name} matches {} {}",
                req.method(),
                req.path()
            ),
        );
        // GAMMA: once a route attaches to a Service, requests none of its
        // rules match are rejected.
        Decision::respond(LocalResponse::text(
            404,
            format!(
                "no HTTPRoute rule for Service {ns}/{name} matches {} {}\n",
                req.method(),
                req.path()
            ),
        ))
    }

    fn apply(
        &self,
        route: &Route,
        rule_i: usize,
        rule: &Rule,
        m: &Match,
        req: &Request,
        roll: u64,
    ) -> Decision {
        match &rule.action {
            Action::Redirect(r) => redirect(r, m, req),
            Action::Forward { rewrite, backends } => {
                let what = || {
                    format!(
                        "rule {rule_i} of HTTPRoute {}/{}",
                        route.namespace, route.name
                    )
                };
                let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
                if backends.is_empty() {
                    return server_error(format!("{} has no backendRefs", what()));
                }
                if total == 0 {
                    return server_error(format!("every backendRef of {} has weight 0", what()));
                }
                let mut n = roll % total;
                let chosen = backends
                    .iter()
                    .find(|b| {
                        let w = u64::from(b.weight);
                        if n < w {
                            true
                        } else {
                            n -= w;
                            false
                        }
                    })
                    .expect("n < total");
                let (service, port) = match self.backend_host(&chosen.target) {
                    Ok(found) => found,
                    Err(reason) => return server_error(format!("{}: {reason}", what())),
                };
                let mut decision = Decision::route_weighted([Backend::new(service).port(port)]);
                if let Some(rw) = rewrite {
                    if let Some(host) = &rw.hostname {
                        decision = decision.with_host_rewrite(host.clone());
                    }
                    if let Some(p) = &rw.path {
                        decision = decision.with_path_rewrite(modified_path(p, m, req.path()));
                    }
                }
                if let Some(h) = &rule.request_headers {
                    decision = request_headers(decision, h, req);
                }
                if let Some(h) = &rule.response_headers {
                    decision = decision.with_response_changes(HeaderChanges {
                        set: h.set.clone(),
                        add: h.add.clone(),
                        remove: h.remove.clone(),
                    });
                }
                decision
            }
        }
    }

    /// The hostname and port to send a backend's traffic to, or why none.
    fn backend_host(&self, target: &BackendTarget) -> Result<(String, u16), String> {
        let (ns, name, port) = match target {
            BackendTarget::Invalid(reason) => return Err(reason.clone()),
            BackendTarget::Service {
                namespace,
                name,
                port,
            } => (namespace, name, *port),
        };
        let Some(services) = &self.services else {
            return Ok((format!("{name}.{ns}.svc.cluster.local"), port));
        };
        match services.by_name.get(&(ns.clone(), name.clone())) {
            None => Err(format!(
                "backend Service {ns}/{name} is not known to the waypoint"
            )),
            Some(s) if !s.ports.is_empty() && !s.ports.contains(&port) => {
                Err(format!("backend Service {ns}/{name} has no port {port}"))
            }
            Some(s) => Ok((s.hostname.clone(), port)),
        }
    }
}

fn server_error(reason: String) -> Decision {
    Decision::respond(LocalResponse::text(500, format!("{reason}\n")))
}

/// Adds append to existing values with a comma, as the Gateway API writes
/// it, so the request's current value is read here.
fn request_headers(mut d: Decision, h: &HeaderModifier, req: &Request) -> Decision {
    for name in &h.remove {
        d = d.remove_request_header(name.clone());
    }
    for (name, value) in &h.set {
        d = d.with_request_header(name.clone(), value.clone());
    }
    for (name, value) in &h.add {
        let removed = h.remove.contains(name);
        let set = h
            .set
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone());
        let existing = if removed {
            set
        } else {
            set.or_else(|| req.header(name))
        };
        d = match existing {
            Some(old) => d.with_request_header(name.clone(), format!("{old},{value}")),
            None => d.append_request_header(name.clone(), value.clone()),
        };
    }
    d
}

fn redirect(r: &Redirect, m: &Match, req: &Request) -> Decision {
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme());
    let host = r.hostname.as_deref().unwrap_or(req.host());
    // Without a port: the scheme's own when the scheme changes, else the
    // port the request came to.
    let port = r.port.unwrap_or_else(|| match r.scheme.as_deref() {
        Some("https") => 443,
        Some(_) => 80,
        None => req.destination().port,
    });
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let path = match &r.path {
        Some(p) => modified_path(p, m, req.path()),
        None => req.path().to_owned(),
    };
    let mut location = format!("{scheme}://{host}");
    if !default_port {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(q) = req.query() {
        location.push('?');
        location.push_str(q);
    }
    let status = RedirectStatus::from_code(r.status).unwrap_or(RedirectStatus::Found);
    Decision::redirect(location, status)
}

/// The path after ReplaceFullPath / ReplacePrefixMatch.
fn modified_path(p: &PathModifier, m: &Match, path: &str) -> String {
    match p {
        PathModifier::Full(full) => full.clone(),
        PathModifier::Prefix(replacement) => {
            let PathMatch::Prefix(prefix) = &m.path else {
                // Refused when the route was read.
                return path.to_owned();
            };
            let rest = &path[prefix.len().min(path.len())..];
            let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
            if joined.is_empty() {
                "/".to_owned()
            } else {
                joined
            }
        }
    }
}

/// The request's query parameters, split only if a match needs them.
#[derive(Default)]
struct LazyQuery {
    parsed: Option<Vec<(String, String)>>,
}

impl LazyQuery {
    fn get<'q>(&'q mut self, req: &Request, name: &str) -> Option<&'q str> {
        let params = self.parsed.get_or_insert_with(|| {
            req.query()
                .unwrap_or("")
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv.to_owned(), String::new()),
                })
                .collect()
        });
        // The first occurrence counts, as in Envoy.
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn value_matches(m: &ValueMatch, value: &str) -> bool {
    match m {
        ValueMatch::Exact(v) => v == value,
        ValueMatch::Regex(r) => r.is_match(value),
    }
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        // Whole segments: `/abc` matches `/abc` and `/abc/def`, not `/abcd`.
        PathMatch::Prefix(p) => path
            .strip_prefix(p.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        PathMatch::Regex(r) => r.is_match(path),
    }
}

/// Cheapest conditions first: the method and path are already in the
/// guest; each header read crosses into the host.
fn matches(m: &Match, req: &Request, query: &mut LazyQuery) -> bool {
    if let Some(method) = &m.method
        && method != req.method()
    {
        return false;
    }
    if !path_matches(&m.path, req.path()) {
        return false;
    }
    for q in &m.query {
        match query.get(req, &q.name) {
            Some(v) if value_matches(&q.value, v) => {}
            _ => return false,
        }
    }
    m.headers.iter().all(|h| match req.header(&h.name) {
        Some(v) => value_matches(&h.value, &v),
        None => false,
    })
}
