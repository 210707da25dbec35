//! Which AuthorizationPolicy and HTTPRoute rules no case exercised. The
//! rules come from the namespaces the policy loader compiled (the entries
//! of `builtin://authz` and `builtin://route`, from a `policyDir` or written
//! in the config); a rule counts as exercised when a case's decision trace
//! names its policy and index.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::run::CaseResult;
use crate::config::{NamespaceConfig, PluginUrl};
use crate::plugin::registry::{BUILTIN_AUTHZ, BUILTIN_ROUTE};

/// One rule: `AuthorizationPolicy/shop/allow-frontend` rule 0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RuleId {
    /// `Kind/namespace/name`, as decision traces spell the policy.
    pub policy: String,
    pub rule: u32,
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rule {}", self.policy, self.rule)
    }
}

/// Every rule of every built-in policy entry in `namespaces`.
pub fn rules(namespaces: &BTreeMap<String, NamespaceConfig>) -> Vec<RuleId> {
    let mut out = Vec::new();
    for ns in namespaces.values() {
        for p in &ns.plugins {
            let (kind, list) = match &p.url {
                PluginUrl::Builtin(b) if b == BUILTIN_AUTHZ => ("AuthorizationPolicy", "policies"),
                PluginUrl::Builtin(b) if b == BUILTIN_ROUTE => ("HTTPRoute", "routes"),
                _ => continue,
            };
            let docs = p
                .plugin_config
                .as_ref()
                .and_then(|c| c.get(list))
                .and_then(|l| l.as_array());
            for doc in docs.into_iter().flatten() {
                let meta = &doc["metadata"];
                let name = meta["name"].as_str().unwrap_or_default();
                let namespace = meta["namespace"].as_str().unwrap_or_default();
                let count = doc["spec"]["rules"].as_array().map(Vec::len).unwrap_or(0);
                for i in 0..count {
                    out.push(RuleId {
                        policy: format!("{kind}/{namespace}/{name}"),
                        rule: i as u32,
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub total: usize,
    pub covered: Vec<RuleId>,
    pub missed: Vec<RuleId>,
}

impl Coverage {
    /// Percent of rules exercised; 100 when there are none.
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            self.covered.len() as f64 * 100.0 / self.total as f64
        }
    }
}

pub fn coverage(all: &[RuleId], results: &[CaseResult]) -> Coverage {
    let hit: BTreeSet<(&str, u32)> = results
        .iter()
        .flat_map(|r| &r.outcome.decisions)
        .filter_map(|d| d.rule.map(|i| (d.policy.as_str(), i)))
        .collect();
    let (covered, missed): (Vec<RuleId>, Vec<RuleId>) = all
        .iter()
        .cloned()
        .partition(|r| hit.contains(&(r.policy.as_str(), r.rule)));
    Coverage {
        total: all.len(),
        covered,
        missed,
    }
}
