//! Istio AuthorizationPolicy, with CEL conditions, as a Wayplug policy
//! plugin (`builtin://authz`).
//!
//! The plugin's configuration is `{"policies": [<document>, ...]}`: every
//! AuthorizationPolicy of one namespace, as written (apiVersion, kind,
//! metadata, spec), encoded as JSON. The same model validates documents
//! natively, without WebAssembly, through [`parse_policy`]:
//!
//! ```
//! let doc = serde_json::json!({
//!     "apiVersion": "security.istio.io/v1",
//!     "kind": "AuthorizationPolicy",
//!     "metadata": {"name": "deny-admin", "namespace": "shop"},
//!     "spec": {
//!         "targetRefs": [{"kind": "Service", "group": "", "name": "api"}],
//!         "action": "DENY",
//!         "rules": [{"to": [{"operation": {"pathz": ["/admin/*"]}}]}]
//!     }
//! });
//! let err = wayplug_authz::parse_policy(&doc).unwrap_err();
//! assert!(err.to_string().starts_with(
//!     "AuthorizationPolicy shop/deny-admin: spec.rules[0].to[0].operation.pathz: unknown field `pathz`"
//! ));
//! ```
//!
//! See the crate's README for the supported fields, CEL attributes and what
//! is refused.

// `export_policy!` generates the component glue, which needs `unsafe`; everything
// else is checked by this `deny`.
#![deny(unsafe_code)]

mod cel;
mod eval;
mod matcher;
mod model;
mod normalize;
mod policy;

use serde::Deserialize;
use wayplug_sdk::metrics::{self, Counter};
use wayplug_sdk::{Decision, Policy as SdkPolicy, Request, export_policy, trace};

pub use crate::cel::CelExpr;
pub use eval::{Ctx, Outcome, Protocol, Record, RemoteAddress, evaluate};
pub use normalize::{Normalization, PathError, normalize};
pub use policy::{Action, DRY_RUN_ANNOTATION, Policy, PolicyError, Target, parse_policy};

/// The body of a denial, as Envoy's RBAC filter sends it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// The plugin's `pluginConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Every AuthorizationPolicy of the namespace, as written.
    #[serde(default)]
    pub policies: Vec<serde_json::Value>,
    /// Istio's `numTrustedProxies`: how many proxies in front of the
    /// waypoint append to `x-forwarded-for`; 0 (the default) means the
    /// remote address is the connection's source.
    #[serde(default)]
    pub num_trusted_proxies: u32,
    /// Istio's `pathNormalization`; `BASE` by default, as in Istio.
    #[serde(default)]
    pub path_normalization: Normalization,
}

/// Reads every document of a configuration, naming the failing one.
pub fn parse_policies(config: &Config) -> Result<Vec<Policy>, String> {
    config
        .policies
        .iter()
        .enumerate()
        .map(|(i, doc)| parse_policy(doc).map_err(|e| format!("policies[{i}]: {e}")))
        .collect()
}

struct Counters {
    allowed: Counter,
    denied: Counter,
    dry_run_denied: Counter,
    dry_run_allowed: Counter,
    audited: Counter,
    cel_errors: Counter,
    rejected_paths: Counter,
}

impl Counters {
    fn define() -> Self {
        Counters {
            allowed: metrics::counter("authz_allowed_total"),
            denied: metrics::counter("authz_denied_total"),
            dry_run_denied: metrics::counter("authz_dry_run_denied_total"),
            dry_run_allowed: metrics::counter("authz_dry_run_allowed_total"),
            audited: metrics::counter("authz_audited_total"),
            cel_errors: metrics::counter("authz_cel_errors_total"),
            rejected_paths: metrics::counter("authz_rejected_paths_total"),
        }
    }

    fn count(&self, out: &Outcome) {
        if out.allowed {
            self.allowed.inc();
        } else {
            self.denied.inc();
        }
        // Each count is a call into the waypoint: skip the zeros.
        for (counter, n) in [
            (&self.dry_run_denied, out.dry_run_denied),
            (&self.dry_run_allowed, out.dry_run_allowed),
            (&self.audited, out.audited),
            (&self.cel_errors, out.cel_errors),
        ] {
            if n > 0 {
                counter.add(n.into());
            }
        }
    }
}

/// The plugin: the namespace's policies, compiled.
pub struct Authz {
    policies: Vec<Policy>,
    remote: RemoteAddress,
    normalization: Normalization,
    counters: Counters,
}

impl Authz {
    /// Decides `req` for `protocol`; HTTP requests go through
    /// [`SdkPolicy::on_request`], which also traces and counts.
    pub fn decide(&self, req: &Request, protocol: Protocol) -> Result<Outcome, PathError> {
        let path = normalize(req.path(), self.normalization)?;
        let ctx = Ctx::new(req, protocol, &path, self.remote);
        Ok(evaluate(&self.policies, &ctx))
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }
}

/// The kind decision records put before `namespace/name`.
pub const TRACE_KIND: &str = "AuthorizationPolicy";

impl SdkPolicy for Authz {
    type Config = Config;

    fn configure(config: Config) -> Result<Self, String> {
        let policies = parse_policies(&config)?;
        for p in &policies {
            if p.target == Target::Workloads {
                wayplug_sdk::info!(
                    "AuthorizationPolicy {} has no targetRefs: it applies to workloads (ztunnel), not to the waypoint, and is not enforced here",
                    p.id()
                );
            }
        }
        Ok(Authz {
            policies,
            remote: RemoteAddress {
                num_trusted_proxies: config.num_trusted_proxies,
            },
            normalization: config.path_normalization,
            counters: Counters::define(),
        })
    }

    fn on_request(&self, req: &Request) -> Decision {
        let out = match self.decide(req, Protocol::Http) {
            Ok(out) => out,
            Err(e) => {
                self.counters.rejected_paths.inc();
                trace::record_decision("", None, "reject", &e.to_string());
                return Decision::deny(400, "Bad Request");
            }
        };
        self.counters.count(&out);
        for r in &out.records {
            if r.outcome != "allow" && r.outcome != "deny" {
                // Dry-run, audit and shadow errors are never enforced:
                // the log is where the operator sees them.
                wayplug_sdk::info!(
                    "{} {} {}{}: {}",
                    r.outcome,
                    req.method(),
                    req.path(),
                    if r.policy.is_empty() {
                        String::new()
                    } else {
                        format!(" by {}", r.policy)
                    },
                    r.detail
                );
            }
            // Traces name the kind too, as HTTPRoute's do, so coverage and
            // explanations tell the two apart.
            let policy = if r.policy.is_empty() {
                String::new()
            } else {
                format!("{TRACE_KIND}/{}", r.policy)
            };
            trace::record_decision(&policy, r.rule, r.outcome, &r.detail);
        }
        if out.allowed {
            Decision::allow()
        } else {
            Decision::deny(403, DENIED_BODY)
        }
    }
}

export_policy!(Authz);
