//! A suite written from recorded traffic: one case per recorded request,
//! expecting the status, the answering plugin and the decision records it
//! got live.

use std::collections::BTreeMap;

use serde::Serialize;

use super::suite::{ExpectDecision, RawRequest, Values};
use crate::admin::record::Recorded;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExpectOut {
    status: u16,
    decided_by: String,
    decisions: Vec<ExpectDecision>,
}

#[derive(Serialize)]
struct CaseOut {
    name: String,
    request: RawRequest,
    expect: ExpectOut,
}

#[derive(Serialize)]
struct SuiteOut<'a> {
    name: &'a str,
    config: &'a str,
    cases: Vec<CaseOut>,
}

/// The suite file (YAML) for `recorded`, naming `config` (as the suite
/// file will spell it: relative to where it is written).
pub fn suite_yaml(name: &str, config: &str, recorded: &[Recorded]) -> Result<String, String> {
    let cases = recorded
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let q = &r.request;
            let mut headers: BTreeMap<String, Values> = BTreeMap::new();
            for (n, v) in &q.headers {
                match headers.get_mut(n) {
                    None => {
                        headers.insert(n.clone(), Values::One(v.clone()));
                    }
                    Some(Values::One(first)) => {
                        let first = first.clone();
                        headers.insert(n.clone(), Values::Many(vec![first, v.clone()]));
                    }
                    Some(Values::Many(list)) => list.push(v.clone()),
                }
            }
            let default_authority = if q.port == 80 {
                q.service.clone()
            } else {
                format!("{}:{}", q.service, q.port)
            };
            CaseOut {
                name: format!("recorded {i}: {} {}", q.method, q.path),
                request: RawRequest {
                    method: Some(q.method.clone()),
                    path: Some(q.path.clone()),
                    service: Some(q.service.clone()),
                    port: Some(q.port),
                    authority: (q.authority != default_authority).then(|| q.authority.clone()),
                    headers: (!headers.is_empty()).then_some(headers),
                    body: None,
                    principal: q.principal.clone(),
                    namespace: None,
                    service_account: None,
                    source: Some(q.source.to_string()),
                    protocol: Some(q.protocol.clone()),
                },
                expect: ExpectOut {
                    status: r.status,
                    decided_by: r.decided_by.clone(),
                    decisions: r
                        .decisions
                        .iter()
                        .map(|d| ExpectDecision {
                            plugin: Some(d.plugin.clone()),
                            policy: d.policy.clone(),
                            rule: d.rule,
                            outcome: d.outcome.clone(),
                        })
                        .collect(),
                },
            }
        })
        .collect();
    serde_norway::to_string(&SuiteOut {
        name,
        config,
        cases,
    })
    .map_err(|e| e.to_string())
}
