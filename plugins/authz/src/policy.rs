//! An AuthorizationPolicy compiled for evaluation, and its validation: every
//! field the waypoint cannot enforce is refused with its path.

use ipnet::IpNet;

use crate::cel::CelExpr;
use crate::matcher::{PathMatch, StrMatch, parse_ip_block, parse_port};
use crate::model;

/// The annotation that makes a policy evaluated and logged, never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Why a policy document was refused; names the policy, the field and the
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AuthorizationPolicy {namespace}/{name}: {path}: {reason}")]
pub struct PolicyError {
    pub namespace: String,
    pub name: String,
    /// The field path, e.g. `spec.rules[0].to[0].operation.paths[1]`.
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

/// Which requests of the namespace chain a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `targetRefs` names a Gateway or GatewayClass: the waypoint itself.
    Waypoint,
    /// `targetRefs` names these Services of the policy's namespace.
    Services(Vec<String>),
    /// No `targetRefs`: a policy for workloads (enforced by ztunnel), which a
    /// waypoint does not enforce, as Istio's waypoints do not.
    Workloads,
}

/// Values of one field and its `not` form; an empty list is unset.
#[derive(Debug, Clone)]
pub struct Field<T> {
    pub values: Vec<T>,
    pub not_values: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Field {
            values: Vec::new(),
            not_values: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    pub fn is_set(&self) -> bool {
        !self.values.is_empty() || !self.not_values.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Source {
    pub principals: Field<StrMatch>,
    pub namespaces: Field<StrMatch>,
    pub service_accounts: Field<StrMatch>,
    pub ip_blocks: Field<IpNet>,
    pub remote_ip_blocks: Field<IpNet>,
}

#[derive(Debug, Clone, Default)]
pub struct Operation {
    pub hosts: Field<StrMatch>,
    pub ports: Field<u16>,
    pub methods: Field<StrMatch>,
    pub paths: Field<PathMatch>,
}

#[derive(Debug, Clone)]
pub enum Condition {
    /// `request.headers[name]`: HTTP only.
    Header(String, Field<StrMatch>),
    SourceIp(Field<IpNet>),
    RemoteIp(Field<IpNet>),
    SourceNamespace(Field<StrMatch>),
    SourcePrincipal(Field<StrMatch>),
    DestinationIp(Field<IpNet>),
    DestinationPort(Field<u16>),
    ConnectionSni(Field<StrMatch>),
    /// `key: cel`: HTTP only.
    Cel(Field<CelExpr>),
}

#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// One AuthorizationPolicy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub action: Action,
    pub dry_run: bool,
    pub target: Target,
    pub rules: Vec<Rule>,
}

impl Policy {
    /// `namespace/name`, as logs and traces name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Reads one whole Kubernetes document (apiVersion, kind, metadata, spec)
/// given as JSON.
pub fn parse_policy(doc: &serde_json::Value) -> Result<Policy, PolicyError> {
    let meta = doc.get("metadata");
    let text = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let mut err = Errors {
        namespace: match text("namespace") {
            ns if ns.is_empty() => "default".to_string(),
            ns => ns,
        },
        name: match text("name") {
            n if n.is_empty() => "<unnamed>".to_string(),
            n => n,
        },
    };
    let parsed: model::Document = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        err.at(
            if path == "." { "document" } else { &path },
            e.into_inner().to_string(),
        )
    })?;
    check_kind(&parsed, &err)?;
    if parsed.metadata.name.is_empty() {
        return Err(err.at("metadata.name", "a policy needs a name"));
    }
    err.name = parsed.metadata.name.clone();
    compile(parsed, &err)
}

struct Errors {
    namespace: String,
    name: String,
}

impl Errors {
    fn at(&self, path: impl Into<String>, reason: impl Into<String>) -> PolicyError {
        PolicyError {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            path: path.into(),
            reason: reason.into(),
        }
    }
}

fn check_kind(doc: &model::Document, err: &Errors) -> Result<(), PolicyError> {
    if doc.kind != "AuthorizationPolicy" {
        return Err(err.at(
            "kind",
            format!("expected AuthorizationPolicy, found `{}`", doc.kind),
        ));
    }
    match doc.api_version.as_str() {
        "security.istio.io/v1" | "security.istio.io/v1beta1" => Ok(()),
        other => Err(err.at(
            "apiVersion",
            format!("expected security.istio.io/v1 or v1beta1, found `{other}`"),
        )),
    }
}

fn compile(doc: model::Document, err: &Errors) -> Result<Policy, PolicyError> {
    let spec = doc.spec;
    let namespace = err.namespace.clone();
    if spec.selector.is_some() {
        return Err(err.at(
            "spec.selector",
            "a waypoint does not enforce workload selectors; attach the policy with `targetRefs` (kind Gateway for the whole waypoint, kind Service for one service)",
        ));
    }
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => {
            return Err(err.at(
                "spec.action",
                "CUSTOM (external authorization) is not supported by this waypoint",
            ));
        }
        other => {
            return Err(err.at(
                "spec.action",
                format!("unknown action `{other}` (expected ALLOW, DENY, AUDIT)"),
            ));
        }
    };
    if spec.provider.is_some() {
        return Err(err.at(
            "spec.provider",
            "providers belong to CUSTOM actions, which this waypoint does not support",
        ));
    }
    let dry_run = match doc
        .metadata
        .annotations
        .get(DRY_RUN_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(err.at(
                format!("metadata.annotations[\"{DRY_RUN_ANNOTATION}\"]"),
                format!("expected \"true\" or \"false\", found `{other}`"),
            ));
        }
    };
    let target = compile_target(&spec, &namespace, err)?;
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| compile_rule(rule, &format!("spec.rules[{i}]"), err))
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        namespace,
        name: err.name.clone(),
        action,
        dry_run,
        target,
        rules,
    })
}

fn compile_target(
    spec: &model::Spec,
    namespace: &str,
    err: &Errors,
) -> Result<Target, PolicyError> {
    let refs: Vec<(String, &model::TargetRef)> = match (&spec.target_ref, &spec.target_refs) {
        (Some(_), refs) if !refs.is_empty() => {
            return Err(err.at(
                "spec.targetRef",
                "set either targetRef or targetRefs, not both",
            ));
        }
        (Some(one), _) => vec![("spec.targetRef".to_string(), one)],
        (None, refs) => refs
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r))
            .collect(),
    };
    if refs.is_empty() {
        return Ok(Target::Workloads);
    }
    let mut services = Vec::new();
    let mut waypoint = false;
    for (path, r) in refs {
        if let Some(ns) = &r.namespace
            && ns != namespace
        {
            return Err(err.at(
                format!("{path}.namespace"),
                format!("a policy can only target resources of its own namespace `{namespace}`"),
            ));
        }
        match (r.group.as_str(), r.kind.as_str()) {
            ("" | "core", "Service") => services.push(r.name.clone()),
            ("gateway.networking.k8s.io", "Gateway" | "GatewayClass") => waypoint = true,
            (group, kind) => {
                return Err(err.at(
                    format!("{path}.kind"),
                    format!(
                        "cannot target `{kind}` (group `{group}`): a waypoint honours Service (group \"\") and Gateway or GatewayClass (group gateway.networking.k8s.io)"
                    ),
                ));
            }
        }
    }
    Ok(if waypoint {
        Target::Waypoint
    } else {
        Target::Services(services)
    })
}

fn strs(values: &Option<Vec<String>>, lower: bool) -> Vec<StrMatch> {
    values
        .iter()
        .flatten()
        .map(|v| StrMatch::parse(v, lower))
        .collect()
}

fn field_str(
    values: &Option<Vec<String>>,
    not_values: &Option<Vec<String>>,
    lower: bool,
) -> Field<StrMatch> {
    Field {
        values: strs(values, lower),
        not_values: strs(not_values, lower),
    }
}

fn list<T>(
    values: &Option<Vec<String>>,
    path: &str,
    err: &Errors,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, PolicyError> {
    values
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| parse(v).map_err(|reason| err.at(format!("{path}[{i}]"), reason)))
        .collect()
}

fn refuse_jwt(values: &Option<Vec<String>>, path: &str, err: &Errors) -> Result<(), PolicyError> {
    if values.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(err.at(
            path,
            "request principals come from JWTs (RequestAuthentication), which this waypoint does not validate",
        ));
    }
    Ok(())
}

fn compile_rule(rule: &model::Rule, path: &str, err: &Errors) -> Result<Rule, PolicyError> {
    let mut from = Vec::new();
    for (i, f) in rule.from.iter().enumerate() {
        let path = format!("{path}.from[{i}].source");
        let Some(source) = &f.source else {
            return Err(err.at(path, "`source` must be set"));
        };
        from.push(compile_source(source, &path, err)?);
    }
    let mut to = Vec::new();
    for (i, t) in rule.to.iter().enumerate() {
        let path = format!("{path}.to[{i}].operation");
        let Some(operation) = &t.operation else {
            return Err(err.at(path, "`operation` must be set"));
        };
        to.push(compile_operation(operation, &path, err)?);
    }
    let when = rule
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| compile_condition(c, &format!("{path}.when[{i}]"), err))
        .collect::<Result<_, _>>()?;
    Ok(Rule { from, to, when })
}

fn compile_source(s: &model::Source, path: &str, err: &Errors) -> Result<Source, PolicyError> {
    refuse_jwt(
        &s.request_principals,
        &format!("{path}.requestPrincipals"),
        err,
    )?;
    refuse_jwt(
        &s.not_request_principals,
        &format!("{path}.notRequestPrincipals"),
        err,
    )?;
    let source = Source {
        principals: field_str(&s.principals, &s.not_principals, false),
        namespaces: field_str(&s.namespaces, &s.not_namespaces, false),
        service_accounts: field_str(&s.service_accounts, &s.not_service_accounts, false),
        ip_blocks: Field {
            values: list(
                &s.ip_blocks,
                &format!("{path}.ipBlocks"),
                err,
                parse_ip_block,
            )?,
            not_values: list(
                &s.not_ip_blocks,
                &format!("{path}.notIpBlocks"),
                err,
                parse_ip_block,
            )?,
        },
        remote_ip_blocks: Field {
            values: list(
                &s.remote_ip_blocks,
                &format!("{path}.remoteIpBlocks"),
                err,
                parse_ip_block,
            )?,
            not_values: list(
                &s.not_remote_ip_blocks,
                &format!("{path}.notRemoteIpBlocks"),
                err,
                parse_ip_block,
            )?,
        },
    };
    let any = source.principals.is_set()
        || source.namespaces.is_set()
        || source.service_accounts.is_set()
        || source.ip_blocks.is_set()
        || source.remote_ip_blocks.is_set();
    if !any {
        return Err(err.at(path, "a source must set at least one field"));
    }
    Ok(source)
}

fn compile_operation(
    o: &model::Operation,
    path: &str,
    err: &Errors,
) -> Result<Operation, PolicyError> {
    let paths = |values: &Option<Vec<String>>, name: &str| {
        list(values, &format!("{path}.{name}"), err, PathMatch::parse)
    };
    let operation = Operation {
        hosts: field_str(&o.hosts, &o.not_hosts, true),
        ports: Field {
            values: list(&o.ports, &format!("{path}.ports"), err, parse_port)?,
            not_values: list(&o.not_ports, &format!("{path}.notPorts"), err, parse_port)?,
        },
        methods: field_str(&o.methods, &o.not_methods, false),
        paths: Field {
            values: paths(&o.paths, "paths")?,
            not_values: paths(&o.not_paths, "notPaths")?,
        },
    };
    let any = operation.hosts.is_set()
        || operation.ports.is_set()
        || operation.methods.is_set()
        || operation.paths.is_set();
    if !any {
        return Err(err.at(path, "an operation must set at least one field"));
    }
    Ok(operation)
}

fn compile_condition(
    c: &model::Condition,
    path: &str,
    err: &Errors,
) -> Result<Condition, PolicyError> {
    if c.values.as_ref().is_none_or(Vec::is_empty)
        && c.not_values.as_ref().is_none_or(Vec::is_empty)
    {
        return Err(err.at(path, "a condition needs `values` or `notValues`"));
    }
    let key = c.key.as_str();
    let strs = || field_str(&c.values, &c.not_values, false);
    let ips = || -> Result<Field<IpNet>, PolicyError> {
        Ok(Field {
            values: list(&c.values, &format!("{path}.values"), err, parse_ip_block)?,
            not_values: list(
                &c.not_values,
                &format!("{path}.notValues"),
                err,
                parse_ip_block,
            )?,
        })
    };
    let condition = match key {
        "source.ip" => Condition::SourceIp(ips()?),
        "remote.ip" => Condition::RemoteIp(ips()?),
        "destination.ip" => Condition::DestinationIp(ips()?),
        "source.namespace" => Condition::SourceNamespace(strs()),
        "source.principal" => Condition::SourcePrincipal(strs()),
        "connection.sni" => Condition::ConnectionSni(strs()),
        "destination.port" => Condition::DestinationPort(Field {
            values: list(&c.values, &format!("{path}.values"), err, parse_port)?,
            not_values: list(&c.not_values, &format!("{path}.notValues"), err, parse_port)?,
        }),
        "cel" => {
            let compile = |values: &Option<Vec<String>>, name: &str| {
                list(values, &format!("{path}.{name}"), err, CelExpr::compile)
            };
            Condition::Cel(Field {
                values: compile(&c.values, "values")?,
                not_values: compile(&c.not_values, "notValues")?,
            })
        }
        _ if key.starts_with("request.headers[") => {
            let name = key
                .strip_prefix("request.headers[")
                .and_then(|rest| rest.strip_suffix(']'))
                .filter(|name| !name.is_empty() && !name.contains(['[', ']']))
                .ok_or_else(|| {
                    err.at(
                        format!("{path}.key"),
                        format!("`{key}`: expected `request.headers[<name>]`"),
                    )
                })?;
            Condition::Header(name.to_ascii_lowercase(), strs())
        }
        _ if key.starts_with("request.auth.") => {
            return Err(err.at(
                format!("{path}.key"),
                format!(
                    "`{key}`: request.auth.* conditions read JWT claims (RequestAuthentication), which this waypoint does not validate"
                ),
            ));
        }
        _ if key.starts_with("experimental.") => {
            return Err(err.at(
                format!("{path}.key"),
                format!("`{key}`: experimental conditions are not supported"),
            ));
        }
        _ => {
            return Err(err.at(
                format!("{path}.key"),
                format!(
                    "unknown condition key `{key}` (supported: request.headers[<name>], source.ip, remote.ip, source.namespace, source.principal, destination.ip, destination.port, connection.sni, cel)"
                ),
            ));
        }
    };
    Ok(condition)
}
