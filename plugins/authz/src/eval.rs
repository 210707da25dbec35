//! Deciding a request against a namespace's policies, in Istio's order:
//! DENY before ALLOW (CUSTOM is refused at load), AUDIT and dry-run
//! policies evaluated and recorded but never enforced.
//!
//! Invariants:
//! - Dry-run and AUDIT policies never change `Outcome::allowed`.
//! - A CEL error in an enforced policy denies (fail closed); in a dry-run
//!   or AUDIT policy it is only recorded and counted.
//! - On TCP traffic an HTTP-only field makes an ALLOW rule fail and is
//!   dropped from a DENY or AUDIT rule (which so matches more).

use std::cell::OnceCell;
use std::net::IpAddr;

use ipnet::IpNet;
use wayplug_sdk::Request;

use crate::cel::{CelExpr, CelInput};
use crate::matcher::{PathMatch, StrMatch, address_ip, ip_in};
use crate::policy::{Action, Condition, Field, Operation, Policy, Rule, Source, Target};

/// The traffic a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    /// Opaque TCP: no method, path, host or headers.
    Tcp,
}

/// How the client's remote address is found for `remoteIpBlocks` and
/// `remote.ip`, as Istio's `numTrustedProxies` does: with 0 (the default)
/// it is the connection's source address; with N it is the Nth address
/// from the right of `x-forwarded-for`, or the source address when the
/// header has fewer entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteAddress {
    pub num_trusted_proxies: u32,
}

/// One request as the evaluator reads it. Values are computed on first use.
pub struct Ctx<'a> {
    pub req: &'a Request,
    pub protocol: Protocol,
    /// The normalized path, without the query.
    pub path: &'a str,
    remote: RemoteAddress,
    source_ip: OnceCell<Option<IpAddr>>,
    remote_ip: OnceCell<Option<IpAddr>>,
    destination_ip: OnceCell<Option<IpAddr>>,
    host: OnceCell<(String, String)>,
}

impl<'a> Ctx<'a> {
    pub fn new(req: &'a Request, protocol: Protocol, path: &'a str, remote: RemoteAddress) -> Self {
        Ctx {
            req,
            protocol,
            path,
            remote,
            source_ip: OnceCell::new(),
            remote_ip: OnceCell::new(),
            destination_ip: OnceCell::new(),
            host: OnceCell::new(),
        }
    }

    fn source_ip(&self) -> Option<IpAddr> {
        *self
            .source_ip
            .get_or_init(|| address_ip(&self.req.source().address))
    }

    fn remote_ip(&self) -> Option<IpAddr> {
        *self.remote_ip.get_or_init(|| {
            let n = self.remote.num_trusted_proxies as usize;
            if n == 0 {
                return self.source_ip();
            }
            let xff = self.req.header("x-forwarded-for").unwrap_or_default();
            let hops: Vec<&str> = xff
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            match hops.len().checked_sub(n) {
                Some(i) => hops[i].parse().ok().or_else(|| address_ip(hops[i])),
                None => self.source_ip(),
            }
        })
    }

    fn destination_ip(&self) -> Option<IpAddr> {
        *self
            .destination_ip
            .get_or_init(|| address_ip(&self.req.destination().address))
    }

    /// The authority and the host without its port, both lower case.
    fn host(&self) -> &(String, String) {
        self.host.get_or_init(|| {
            (
                self.req.authority().to_ascii_lowercase(),
                self.req.host().to_ascii_lowercase(),
            )
        })
    }

    fn service_account(&self) -> Option<String> {
        let src = self.req.source();
        Some(format!(
            "{}/{}",
            src.namespace.as_ref()?,
            src.service_account.as_ref()?
        ))
    }
}

/// One line of the decision trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `namespace/name`, or empty when no single policy decided.
    pub policy: String,
    pub rule: Option<u32>,
    pub outcome: &'static str,
    pub detail: String,
}

/// What the evaluator decided, and what it saw on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub records: Vec<Record>,
    pub cel_errors: u32,
    pub audited: u32,
    /// Dry-run policies that would have denied.
    pub dry_run_denied: u32,
    /// Dry-run policies that would have allowed.
    pub dry_run_allowed: u32,
}

fn applies(policy: &Policy, req: &Request) -> bool {
    match &policy.target {
        Target::Waypoint => true,
        Target::Workloads => false,
        Target::Services(names) => {
            let dest = req.destination();
            let short = dest.service.split('.').next().unwrap_or_default();
            dest.namespace == policy.namespace && names.iter().any(|n| n == short)
        }
    }
}

/// Which rule of `policy` matched first, if any.
fn first_match(policy: &Policy, ctx: &Ctx<'_>) -> Result<Option<u32>, String> {
    for (i, rule) in policy.rules.iter().enumerate() {
        if rule_matches(rule, policy.action, ctx)? {
            return Ok(Some(i as u32));
        }
    }
    Ok(None)
}

/// Decides `ctx` against every policy of the namespace.
pub fn evaluate(policies: &[Policy], ctx: &Ctx<'_>) -> Outcome {
    let mut out = Outcome::default();
    let applicable: Vec<&Policy> = policies.iter().filter(|p| applies(p, ctx.req)).collect();

    for policy in applicable
        .iter()
        .filter(|p| p.dry_run || p.action == Action::Audit)
    {
        shadow(policy, ctx, &mut out);
    }

    let enforced = |action| {
        applicable
            .iter()
            .filter(move |p| !p.dry_run && p.action == action)
    };
    for policy in enforced(Action::Deny) {
        match first_match(policy, ctx) {
            Ok(None) => {}
            Ok(Some(rule)) => {
                out.records
                    .push(record(policy, Some(rule), "deny", "DENY rule matched"));
                return out;
            }
            Err(e) => {
                out.cel_errors += 1;
                out.records
                    .push(record(policy, None, "deny", &format!("CEL error: {e}")));
                return out;
            }
        }
    }

    let allow: Vec<&&Policy> = enforced(Action::Allow).collect();
    if allow.is_empty() {
        out.allowed = true;
        out.records.push(Record {
            policy: String::new(),
            rule: None,
            outcome: "allow",
            detail: "no ALLOW policy applies".to_string(),
        });
        return out;
    }
    for policy in &allow {
        match first_match(policy, ctx) {
            Ok(None) => {}
            Ok(Some(rule)) => {
                out.allowed = true;
                out.records
                    .push(record(policy, Some(rule), "allow", "ALLOW rule matched"));
                return out;
            }
            Err(e) => {
                out.cel_errors += 1;
                out.records
                    .push(record(policy, None, "deny", &format!("CEL error: {e}")));
                return out;
            }
        }
    }
    out.records.push(Record {
        policy: String::new(),
        rule: None,
        outcome: "deny",
        detail: format!(
            "no rule of the {} applicable ALLOW policies matched",
            allow.len()
        ),
    });
    out
}

/// Evaluates a dry-run or AUDIT policy for the record only.
fn shadow(policy: &Policy, ctx: &Ctx<'_>, out: &mut Outcome) {
    let matched = match first_match(policy, ctx) {
        Ok(m) => m,
        Err(e) => {
            out.cel_errors += 1;
            out.records
                .push(record(policy, None, "error", &format!("CEL error: {e}")));
            return;
        }
    };
    let (outcome, detail) = match (policy.action, policy.dry_run, matched) {
        (Action::Audit, _, Some(_)) => {
            out.audited += 1;
            ("audit", "AUDIT rule matched")
        }
        (Action::Audit, _, None) => return,
        (Action::Deny, _, Some(_)) => {
            out.dry_run_denied += 1;
            ("dry-run-deny", "DENY rule matched; dry-run, not enforced")
        }
        (Action::Deny, _, None) => return,
        (Action::Allow, _, Some(_)) => {
            out.dry_run_allowed += 1;
            ("dry-run-allow", "ALLOW rule matched; dry-run, not enforced")
        }
        (Action::Allow, _, None) => {
            out.dry_run_denied += 1;
            (
                "dry-run-deny",
                "no ALLOW rule matched; dry-run, not enforced",
            )
        }
    };
    out.records.push(record(policy, matched, outcome, detail));
}

fn record(policy: &Policy, rule: Option<u32>, outcome: &'static str, detail: &str) -> Record {
    Record {
        policy: policy.id(),
        rule,
        outcome,
        detail: detail.to_string(),
    }
}

fn rule_matches(rule: &Rule, action: Action, ctx: &Ctx<'_>) -> Result<bool, String> {
    let from = rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, action, ctx));
    if !from {
        return Ok(false);
    }
    let to = rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, action, ctx));
    if !to {
        return Ok(false);
    }
    for condition in &rule.when {
        if !condition_matches(condition, action, ctx)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// For an HTTP-only field on TCP traffic: `Some(result)` to use instead of
/// evaluating it.
fn tcp_override(action: Action, ctx: &Ctx<'_>) -> Option<bool> {
    (ctx.protocol == Protocol::Tcp).then_some(action != Action::Allow)
}

fn strs(field: &Field<StrMatch>, value: Option<&str>) -> bool {
    let hit = |m: &StrMatch| value.is_some_and(|v| m.matches(v));
    (field.values.is_empty() || field.values.iter().any(hit)) && !field.not_values.iter().any(hit)
}

fn ips(field: &Field<IpNet>, ip: Option<IpAddr>) -> bool {
    (field.values.is_empty() || ip_in(&field.values, ip))
        && (field.not_values.is_empty() || !ip_in(&field.not_values, ip))
}

fn ports(field: &Field<u16>, port: u16) -> bool {
    (field.values.is_empty() || field.values.contains(&port)) && !field.not_values.contains(&port)
}

fn source_matches(s: &Source, _action: Action, ctx: &Ctx<'_>) -> bool {
    let src = ctx.req.source();
    (!s.principals.is_set() || strs(&s.principals, src.principal.as_deref()))
        && (!s.namespaces.is_set() || strs(&s.namespaces, src.namespace.as_deref()))
        && (!s.service_accounts.is_set()
            || strs(&s.service_accounts, ctx.service_account().as_deref()))
        && (!s.ip_blocks.is_set() || ips(&s.ip_blocks, ctx.source_ip()))
        && (!s.remote_ip_blocks.is_set() || ips(&s.remote_ip_blocks, ctx.remote_ip()))
}

fn hosts(field: &Field<StrMatch>, ctx: &Ctx<'_>) -> bool {
    let (authority, host) = ctx.host();
    // A host written without a port matches the request's host whatever
    // port it carries; one written with a port matches the full authority.
    let hit = |m: &StrMatch| m.matches(authority) || m.matches(host);
    (field.values.is_empty() || field.values.iter().any(hit)) && !field.not_values.iter().any(hit)
}

fn paths(field: &Field<PathMatch>, path: &str) -> bool {
    (field.values.is_empty() || field.values.iter().any(|m| m.matches(path)))
        && !field.not_values.iter().any(|m| m.matches(path))
}

fn operation_matches(o: &Operation, action: Action, ctx: &Ctx<'_>) -> bool {
    let http_only = |set: bool, check: &dyn Fn() -> bool| {
        !set || tcp_override(action, ctx).unwrap_or_else(check)
    };
    http_only(o.hosts.is_set(), &|| hosts(&o.hosts, ctx))
        && (!o.ports.is_set() || ports(&o.ports, ctx.req.destination().port))
        && http_only(o.methods.is_set(), &|| {
            strs(&o.methods, Some(ctx.req.method()))
        })
        && http_only(o.paths.is_set(), &|| paths(&o.paths, ctx.path))
}

fn condition_matches(c: &Condition, action: Action, ctx: &Ctx<'_>) -> Result<bool, String> {
    let src = ctx.req.source();
    Ok(match c {
        Condition::Header(name, field) => match tcp_override(action, ctx) {
            Some(v) => v,
            None => strs(field, ctx.req.header(name).as_deref()),
        },
        Condition::SourceIp(field) => ips(field, ctx.source_ip()),
        Condition::RemoteIp(field) => ips(field, ctx.remote_ip()),
        Condition::DestinationIp(field) => ips(field, ctx.destination_ip()),
        Condition::SourceNamespace(field) => strs(field, src.namespace.as_deref()),
        Condition::SourcePrincipal(field) => strs(field, src.principal.as_deref()),
        Condition::DestinationPort(field) => ports(field, ctx.req.destination().port),
        Condition::ConnectionSni(field) => {
            strs(field, ctx.req.connection().requested_server_name.as_deref())
        }
        Condition::Cel(field) => match tcp_override(action, ctx) {
            Some(v) => v,
            None => cel_matches(field, ctx)?,
        },
    })
}

fn cel_matches(field: &Field<CelExpr>, ctx: &Ctx<'_>) -> Result<bool, String> {
    let input = CelInput {
        req: ctx.req,
        path: ctx.path,
    };
    let eval = |e: &CelExpr| {
        e.eval(&input)
            .map_err(|err| format!("`{}`: {err}", e.source()))
    };
    if !field.values.is_empty() {
        let mut any = false;
        for e in &field.values {
            if eval(e)? {
                any = true;
                break;
            }
        }
        if !any {
            return Ok(false);
        }
    }
    for e in &field.not_values {
        if eval(e)? {
            return Ok(false);
        }
    }
    Ok(true)
}
