//! Saying which policy decided a request, and how.
//!
//! The waypoint keeps these records with the request and writes them into
//! its access log, so an operator can tell which policy and rule let a
//! request through or refused it. In native tests
//! [`testing::take_decisions`](crate::testing::take_decisions) returns them.
//!
//! ```
//! use wayplug_sdk::{testing, trace};
//!
//! trace::record_decision("shop/deny-admin", Some(0), "deny", "path /admin");
//! let recorded = testing::take_decisions();
//! assert_eq!(recorded[0].policy, "shop/deny-admin");
//! assert_eq!(recorded[0].rule, Some(0));
//! ```

use crate::host;

/// Records that `policy` reached `outcome` for the request being decided,
/// through its rule number `rule` (from 0) when one rule decided.
///
/// Call it from [`Policy::on_request`](crate::Policy::on_request) or a
/// hook: outside a request the waypoint has nowhere to keep the record and
/// drops it.
pub fn record_decision(policy: &str, rule: Option<u32>, outcome: &str, detail: &str) {
    host::trace_record(policy, rule, outcome, detail);
}
