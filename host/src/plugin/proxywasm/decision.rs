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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::exchange::{RequestHead, RequestInfo};

    fn exchange() -> Exchange {
        Exchange::new(
            RequestInfo {
                id: "t".into(),
                namespace: "ns".into(),
                service_hostname: "a.test".into(),
                service_name: "a".into(),
                source: "127.0.0.1:1".parse().unwrap(),
                destination: "127.0.0.1:80".parse().unwrap(),
                protocol: "HTTP/1.1",
                peer: None,
                start: SystemTime::now(),
            },
            RequestHead {
                method: http::Method::GET,
                scheme: "http".into(),
                authority: "a.test".into(),
                path: "/".into(),
                headers: Default::default(),
            },
        )
    }

    #[test]
    fn records_are_kept_and_bad_values_named() {
        let ex = exchange();
        record(
            &ex,
            "tier",
            br#"{"policy": "T/ns/gold", "rule": 2, "outcome": "allow"}"#,
        )
        .unwrap();
        record(
            &ex,
            "tier",
            br#"{"policy": "", "outcome": "deny", "detail": "none"}"#,
        )
        .unwrap();
        let kept = ex.lock().decisions.clone();
        assert_eq!(kept.len(), 2);
        assert_eq!(
            (
                kept[0].plugin.as_str(),
                kept[0].policy.as_str(),
                kept[0].rule,
                kept[0].outcome.as_str()
            ),
            ("tier", "T/ns/gold", Some(2), "allow")
        );
        assert_eq!(kept[1].detail, "none");
        for bad in [
            &b"not json"[..],
            br#"{"outcome": "allow"}"#,
            br#"{"policy": "p", "outcome": "a", "extra": 1}"#,
        ] {
            let e = record(&ex, "tier", bad).unwrap_err();
            assert!(
                e.contains("`wayplug.decision` must be a JSON object"),
                "{e}"
            );
        }
        assert_eq!(ex.lock().decisions.len(), 2);
    }
}
