//! Decision records from Proxy-Wasm plugins. Components call the world's
//! `trace.record-decision`; a Proxy-Wasm plugin has no such import, so the
//! convention is a property: `proxy_set_property("wayplug.decision", JSON)`
//! with `{"policy": "...", "rule": 0, "outcome": "allow", "detail": "..."}`
//! (`rule` and `detail` optional). Each set adds one record to the request,
//! under the same bounds as component records (at most
//! [`MAX_DECISIONS`](crate::exchange::MAX_DECISIONS), strings cut). A value
//! that is not such a record is logged and dropped: the request goes on.

use serde::Deserialize;

use crate::exchange::{DecisionRecord, Exchange};

/// The property path (segments joined by dots) that records a decision.
pub const PROPERTY: &str = "wayplug.decision";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    policy: String,
    #[serde(default)]
    rule: Option<u32>,
    outcome: String,
    #[serde(default)]
    detail: String,
}

/// Keeps the record in `value` for the request; `Err` says what was wrong.
pub fn record(exchange: &Exchange, plugin: &str, value: &[u8]) -> Result<(), String> {
    let wire: Wire = serde_json::from_slice(value).map_err(|e| {
        format!("`{PROPERTY}` must be a JSON object {{policy, rule?, outcome, detail?}}: {e}")
    })?;
    let record = DecisionRecord {
        plugin: plugin.to_owned(),
        policy: wire.policy,
        rule: wire.rule,
        outcome: wire.outcome,
        detail: wire.detail,
    };
    if let Some(kept) = exchange.record_decision(record) {
        tracing::info!(
            target: "wayplug::decision",
            id = %exchange.info.id,
            decision = %kept,
            detail = %kept.detail,
            "policy decision"
        );
    }
    Ok(())
}
