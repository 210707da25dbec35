//! Running policies in ordinary `cargo test`, without WebAssembly.
//!
//! Outside `wasm32` the host services (log, clock, metrics, key-value,
//! configuration) are an in-memory stand-in with the waypoint's rules. Its
//! state belongs to the current thread, and the test harness runs each test
//! on its own thread, so tests do not see each other's logs, metrics or
//! keys; [`reset`] clears the state within a test.
//!
//! ```
//! use serde::Deserialize;
//! use wayplug_sdk::{Decision, Policy, Request, testing};
//!
//! struct RequireHeader {
//!     name: String,
//! }
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     name: String,
//! }
//!
//! impl Policy for RequireHeader {
//!     type Config = Config;
//!     fn configure(config: Config) -> Result<Self, String> {
//!         Ok(RequireHeader { name: config.name })
//!     }
//!     fn on_request(&self, req: &Request) -> Decision {
//!         if req.has_header(&self.name) {
//!             Decision::allow()
//!         } else {
//!             wayplug_sdk::info!("missing {}", self.name);
//!             Decision::deny(400, format!("missing {}", self.name))
//!         }
//!     }
//! }
//!
//! let policy: RequireHeader = testing::configure(r#"{"name": "x-request-id"}"#).unwrap();
//!
//! let ok = Request::builder().header("X-Request-Id", "42").build();
//! assert!(testing::run(&policy, &ok).is_allow());
//!
//! let bad = Request::builder().build();
//! assert_eq!(testing::run(&policy, &bad).status(), Some(400));
//! assert_eq!(testing::logs()[0].message, "missing x-request-id");
//!
//! let err = testing::configure::<RequireHeader>(r#"{"name": 7}"#).err().unwrap();
//! assert!(err.starts_with("invalid configuration at `name`: invalid type: integer `7`"));
//! ```

use std::time::{Duration, SystemTime};

use crate::decision::{BodyDecision, Decision, ResponseDecision};
use crate::host::native;
use crate::log::Level;
use crate::policy::{BodyHook, Policy, ResponseHook, configure_policy};
use crate::request::{Request, Response};

/// Configures a policy from JSON as the waypoint does when it loads the
/// plugin: the same deserialization, error messages and
/// [`Policy::configure`] call. The text also becomes what
/// [`config::raw`](crate::config::raw) returns.
pub fn configure<P: Policy>(config_json: &str) -> Result<P, String> {
    native::set_config(config_json);
    configure_policy::<P>(config_json)
}

/// Sets what [`config::plugin_name`](crate::config::plugin_name) returns
/// (`"test-plugin"` by default).
pub fn set_plugin_name(name: &str) {
    native::set_plugin_name(name);
}

/// Runs `policy` on `req` and checks the decision with
/// [`Decision::validate`].
///
/// # Panics
///
/// If the decision is one the waypoint would refuse (which it would count as
/// a plugin failure).
pub fn run<P: Policy>(policy: &P, req: &Request) -> Decision {
    let decision = policy.on_request(req);
    if let Err(err) = decision.validate() {
        panic!(
            "on_request for {} {} returned a decision the waypoint refuses: {err}\n{decision:#?}",
            req.method(),
            req.path()
        );
    }
    decision
}

/// Runs the response hook of `policy` and checks its decision.
///
/// # Panics
///
/// If the decision is one the waypoint would refuse.
pub fn run_response<P: ResponseHook>(
    policy: &P,
    req: &Request,
    resp: &Response,
) -> ResponseDecision {
    let decision = policy.on_response(req, resp);
    if let Err(err) = decision.validate() {
        panic!(
            "on_response for {} {} returned a decision the waypoint refuses: {err}\n{decision:#?}",
            req.method(),
            req.path()
        );
    }
    decision
}

/// Runs the body hook of `policy` and checks its decision.
///
/// # Panics
///
/// If the decision is one the waypoint would refuse.
pub fn run_body<P: BodyHook>(policy: &P, req: &Request, body: &[u8]) -> BodyDecision {
    let decision = policy.on_request_body(req, body);
    if let Err(err) = decision.validate() {
        panic!(
            "on_request_body for {} {} returned a decision the waypoint refuses: {err}\n{decision:#?}",
            req.method(),
            req.path()
        );
    }
    decision
}

/// One message a policy logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub message: String,
}

/// The messages logged on this thread so far, oldest first.
pub fn logs() -> Vec<LogRecord> {
    native::logs()
}

/// Like [`logs`], and forgets them.
pub fn take_logs() -> Vec<LogRecord> {
    native::take_logs()
}

/// Sets the least important level that is recorded (and reported by
/// [`log::enabled`](crate::log::enabled)); everything is recorded by
/// default.
pub fn set_log_level(level: Level) {
    native::set_min_level(level);
}

/// One decision a policy recorded with [`trace::record_decision`](crate::trace::record_decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// The policy that decided.
    pub policy: String,
    /// The rule of that policy, counted from 0, when one rule decided.
    pub rule: Option<u32>,
    /// The outcome, e.g. `allow` or `deny`.
    pub outcome: String,
    /// Free-form detail.
    pub detail: String,
}

/// The decisions recorded on this thread since the last call, oldest first.
pub fn take_decisions() -> Vec<DecisionRecord> {
    native::take_decisions()
}

/// The value of a metric a policy defined on this thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricValue {
    /// A counter's value.
    Counter(u64),
    /// A gauge's value.
    Gauge(u64),
    /// Every value recorded in a histogram, in order.
    Histogram(Vec<u64>),
}

/// The metric `name`, if a policy defined it on this thread.
pub fn metric(name: &str) -> Option<MetricValue> {
    native::metric_value(name)
}

/// Fixes the wall clock at `now`; [`advance`] moves it on.
pub fn set_now(now: SystemTime) {
    native::set_now(now);
}

/// Moves both the wall clock and the monotonic clock forward by `by`.
pub fn advance(by: Duration) {
    native::advance(by);
}

/// Forgets this thread's logs, metrics, keys, configuration, plugin name,
/// log level and clock settings.
pub fn reset() {
    native::reset();
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::{ResponseDecision, kv, metrics};

    struct Counting {
        requests: metrics::Counter,
    }

    impl Policy for Counting {
        type Config = ();
        fn configure(_: ()) -> Result<Self, String> {
            Ok(Counting {
                requests: metrics::counter("requests_total"),
            })
        }
        fn on_request(&self, req: &Request) -> Decision {
            self.requests.inc();
            let seen = kv::update("seen", |old| {
                let n = old.map_or(0, |v| v[0]);
                vec![n + 1]
            })
            .unwrap();
            crate::debug!("request {} to {}", seen[0], req.path());
            if req.path_matches("/bad*") {
                Decision::deny(99, "not a real status")
            } else {
                Decision::allow().with_response_header("x-seen", seen[0].to_string())
            }
        }
    }

    impl ResponseHook for Counting {
        fn on_response(&self, _: &Request, resp: &Response) -> ResponseDecision {
            ResponseDecision::unchanged().with_header("x-status", resp.status().to_string())
        }
    }

    #[test]
    fn host_services_are_observable() {
        let policy: Counting = configure("").unwrap();
        let req = Request::builder().path("/a").build();
        run(&policy, &req);
        let d = run(&policy, &req);
        assert_eq!(
            d.response_headers(),
            &[("x-seen".to_string(), "2".to_string())]
        );
        assert_eq!(metric("requests_total"), Some(MetricValue::Counter(2)));
        assert_eq!(kv::get("seen").unwrap().value, vec![2]);
        let taken = take_logs();
        assert_eq!(taken.len(), 2);
        assert_eq!(
            taken[1],
            LogRecord {
                level: Level::Debug,
                message: "request 2 to /a".to_string()
            }
        );

        set_log_level(Level::Info);
        run(&policy, &req);
        assert!(logs().is_empty(), "debug messages are filtered at Info");

        reset();
        assert_eq!(metric("requests_total"), None);
        assert_eq!(kv::get("seen"), None);
    }

    #[test]
    #[should_panic(
        expected = "returned a decision the waypoint refuses: invalid decision: local response status 99"
    )]
    fn run_rejects_invalid_decisions() {
        let policy: Counting = configure("").unwrap();
        run(&policy, &Request::builder().path("/bad").build());
    }

    #[test]
    fn response_hook_runs() {
        let policy: Counting = configure("").unwrap();
        let resp = Response::builder().status(503).build();
        let d = run_response(&policy, &Request::builder().build(), &resp);
        let ResponseDecision::Continue(changes) = d else {
            panic!("expected continue");
        };
        assert_eq!(changes.value_of("x-status"), Some("503"));
    }

    #[test]
    fn configure_sets_raw_config() {
        let _: Counting = configure("null").unwrap();
        assert_eq!(crate::config::raw(), "null");
        assert_eq!(crate::config::get::<()>(), Ok(()));
        assert_eq!(crate::config::plugin_name(), "test-plugin");
        set_plugin_name("allow-users");
        assert_eq!(crate::config::plugin_name(), "allow-users");
    }

    #[test]
    fn clock_is_controllable() {
        set_now(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(
            crate::clock::now(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        advance(Duration::from_secs(60));
        assert_eq!(crate::clock::now_nanos(), 1_700_000_060 * 1_000_000_000);
    }
}
