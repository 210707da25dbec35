//! `header-allowlist`: lets a request through only if one header carries an
//! allowed value. The same behaviour and configuration as
//! `header-allowlist-proxywasm`, written with `wayplug-sdk`, so the two ABIs
//! can be compared side by side; see README.md.

use serde::Deserialize;
use wayplug_sdk::{Decision, Policy, Request, config, export_policy};

/// Request header set on allowed requests to the value that matched.
pub const USER_HEADER: &str = "x-wayplug-user";
/// Response header on denials naming the plugin entry that denied.
pub const DENIED_BY_HEADER: &str = "x-wayplug-denied-by";

/// The `pluginConfig` of the plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Header to check, matched case-insensitively by name.
    pub header: String,
    /// Values let through, compared exactly. Empty denies everyone.
    pub allow: Vec<String>,
    /// Status of the denial, 400 to 599.
    #[serde(default = "default_deny_status")]
    pub deny_status: u16,
}

fn default_deny_status() -> u16 {
    403
}

/// The configured policy.
#[derive(Debug)]
pub struct HeaderAllowlist {
    header: String,
    allow: Vec<String>,
    deny_status: u16,
    plugin_name: String,
}

impl Policy for HeaderAllowlist {
    type Config = Config;

    fn configure(config: Config) -> Result<Self, String> {
        if config.header.is_empty() {
            return Err("`header` must name a header, not be an empty string".to_string());
        }
        if !(400..=599).contains(&config.deny_status) {
            return Err(format!(
                "`deny_status` must be an error status from 400 to 599, got {}",
                config.deny_status
            ));
        }
        Ok(HeaderAllowlist {
            header: config.header.to_ascii_lowercase(),
            allow: config.allow,
            deny_status: config.deny_status,
            plugin_name: config::plugin_name(),
        })
    }

    fn on_request(&self, req: &Request) -> Decision {
        let body = match req.header(&self.header) {
            // Set, not appended: an upstream can trust the header because a
            // copy sent by the client is replaced.
            Some(value) if self.allow.contains(&value) => {
                return Decision::allow().with_request_header(USER_HEADER, value);
            }
            Some(value) => format!("denied: {} '{value}' is not allowed", self.header),
            None => format!("denied: missing {}", self.header),
        };
        wayplug_sdk::info!("header-allowlist: {body}");
        Decision::deny(self.deny_status, body)
            .with_response_header(DENIED_BY_HEADER, &self.plugin_name)
    }
}

export_policy!(HeaderAllowlist);

// The tests use the SDK's native host stand-in (`wayplug_sdk::testing`).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use wayplug_sdk::log::Level;
    use wayplug_sdk::{Request, testing};

    use super::*;

    const CONFIG: &str = r#"{"header": "X-User", "allow": ["alice", "bob"], "deny_status": 401}"#;

    fn policy() -> HeaderAllowlist {
        testing::configure(CONFIG).expect("valid configuration")
    }

    fn request(user: Option<&str>) -> Request {
        let builder = Request::builder().path("/orders");
        match user {
            Some(user) => builder.header("x-user", user).build(),
            None => builder.build(),
        }
    }

    #[test]
    fn allowed_users_pass_with_the_user_header_set() {
        let policy = policy();
        for user in ["alice", "bob"] {
            let decision = testing::run(&policy, &request(Some(user)));
            assert!(decision.is_allow(), "{user}: {decision:?}");
            let changes = decision.request_headers().unwrap();
            assert_eq!(
                changes.set,
                vec![(USER_HEADER.to_string(), user.to_string())]
            );
            assert!(
                changes.add.is_empty(),
                "the header is replaced, never appended"
            );
        }
        assert!(
            testing::logs().is_empty(),
            "allowed requests are not logged"
        );
    }

    #[test]
    fn other_values_are_denied() {
        testing::set_plugin_name("allow-users");
        let policy = policy();
        let cases = [
            (Some("mallory"), "denied: x-user 'mallory' is not allowed"),
            (Some("Alice"), "denied: x-user 'Alice' is not allowed"),
            (Some(""), "denied: x-user '' is not allowed"),
            (None, "denied: missing x-user"),
        ];
        for (user, body) in cases {
            let decision = testing::run(&policy, &request(user));
            let response = decision.local_response().expect("a denial");
            assert_eq!(response.status, 401, "{user:?}");
            assert_eq!(response.body_text(), Some(body), "{user:?}");
            assert!(
                response
                    .headers
                    .contains(&(DENIED_BY_HEADER.to_string(), "allow-users".to_string())),
                "{:?}",
                response.headers
            );
        }
        let logs = testing::take_logs();
        assert_eq!(logs.len(), 4);
        assert_eq!(logs[3].level, Level::Info);
        assert_eq!(logs[3].message, "header-allowlist: denied: missing x-user");
    }

    #[test]
    fn repeated_headers_are_checked_as_one_value() {
        // `alice` first must not smuggle `mallory` through.
        let req = Request::builder()
            .header("x-user", "alice")
            .header("x-user", "mallory")
            .build();
        let decision = testing::run(&policy(), &req);
        assert_eq!(
            decision.local_response().unwrap().body_text(),
            Some("denied: x-user 'alice,mallory' is not allowed")
        );
    }

    #[test]
    fn deny_status_defaults_to_403() {
        let policy: HeaderAllowlist =
            testing::configure(r#"{"header": "x-user", "allow": []}"#).unwrap();
        assert_eq!(
            testing::run(&policy, &request(Some("alice"))).status(),
            Some(403)
        );
    }

    #[test]
    fn bad_configurations_are_rejected_with_the_reason() {
        let cases = [
            (
                "",
                "invalid configuration: invalid type: null, expected struct Config",
            ),
            ("{", "invalid configuration: EOF while parsing an object"),
            (
                r#"{"allow": []}"#,
                "invalid configuration: missing field `header`",
            ),
            (
                r#"{"header": "x", "allow": [], "extra": 1}"#,
                "invalid configuration at `extra`: unknown field `extra`",
            ),
            (
                r#"{"header": "x", "allow": ["a", 1]}"#,
                "invalid configuration at `allow[1]`: invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"header": "", "allow": []}"#,
                "`header` must name a header",
            ),
            (
                r#"{"header": "x", "allow": [], "deny_status": 200}"#,
                "`deny_status` must be an error status from 400 to 599, got 200",
            ),
            (
                r#"{"header": "x", "allow": [], "deny_status": 70000}"#,
                "invalid configuration at `deny_status`: invalid value: integer `70000`, expected u16",
            ),
        ];
        for (config, expected) in cases {
            let err = testing::configure::<HeaderAllowlist>(config).unwrap_err();
            assert!(err.starts_with(expected), "{config:?}: got {err:?}");
        }
    }
}
