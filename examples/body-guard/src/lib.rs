//! `body-guard`: checks and rewrites complete request bodies with the body
//! hook: a size limit, forbidden text, and literal replacements; see
//! README.md.

use std::collections::BTreeMap;

use serde::Deserialize;
use wayplug_sdk::{BodyDecision, BodyHook, Decision, Policy, Request, export_policy};

/// The `pluginConfig` of the plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Largest body let through, in bytes.
    pub max_bytes: usize,
    /// Texts a body must not contain (compared byte for byte).
    #[serde(default)]
    pub forbidden: Vec<String>,
    /// Literal replacements applied to bodies that are UTF-8 text, in
    /// key order.
    #[serde(default)]
    pub replace: BTreeMap<String, String>,
}

/// The configured policy.
#[derive(Debug)]
pub struct BodyGuard {
    max_bytes: usize,
    forbidden: Vec<String>,
    replace: BTreeMap<String, String>,
}

impl Policy for BodyGuard {
    type Config = Config;

    fn configure(config: Config) -> Result<Self, String> {
        if config.forbidden.iter().any(String::is_empty) {
            return Err(
                "`forbidden` must not contain an empty string: it would match every body".into(),
            );
        }
        if config.replace.keys().any(String::is_empty) {
            return Err("`replace` must not have an empty key".into());
        }
        Ok(BodyGuard {
            max_bytes: config.max_bytes,
            forbidden: config.forbidden,
            replace: config.replace,
        })
    }

    fn on_request(&self, _req: &Request) -> Decision {
        Decision::allow()
    }
}

impl BodyHook for BodyGuard {
    fn on_request_body(&self, req: &Request, body: &[u8]) -> BodyDecision {
        if body.len() > self.max_bytes {
            return BodyDecision::deny(
                413,
                format!(
                    "body of {} bytes exceeds the limit of {} bytes",
                    body.len(),
                    self.max_bytes
                ),
            );
        }
        if let Some(text) = self
            .forbidden
            .iter()
            .find(|text| contains(body, text.as_bytes()))
        {
            wayplug_sdk::warn!(
                "body-guard: {} {} carries {text:?}",
                req.method(),
                req.path()
            );
            return BodyDecision::deny(400, "body contains forbidden text");
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return BodyDecision::unchanged();
        };
        let mut rewritten = text.to_string();
        for (from, to) in &self.replace {
            rewritten = rewritten.replace(from.as_str(), to);
        }
        if rewritten == text {
            BodyDecision::unchanged()
        } else {
            BodyDecision::replace(rewritten)
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

export_policy!(BodyGuard, hooks: [body]);

// The tests use the SDK's native host stand-in (`wayplug_sdk::testing`).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use wayplug_sdk::testing;

    use super::*;

    const CONFIG: &str = r#"{
        "max_bytes": 64,
        "forbidden": ["DROP TABLE"],
        "replace": {"secret-token": "[redacted]"}
    }"#;

    fn check(body: &[u8]) -> BodyDecision {
        let policy: BodyGuard = testing::configure(CONFIG).unwrap();
        let req = Request::builder().method("POST").path("/submit").build();
        assert!(testing::run(&policy, &req).is_allow());
        testing::run_body(&policy, &req, body)
    }

    #[test]
    fn plain_bodies_pass_unchanged() {
        assert_eq!(check(b"{\"name\": \"alice\"}"), BodyDecision::Continue);
        assert_eq!(check(b""), BodyDecision::Continue);
        assert_eq!(
            check(&[0xff, 0xfe, 0x00]),
            BodyDecision::Continue,
            "binary bodies are not rewritten"
        );
    }

    #[test]
    fn oversized_bodies_are_refused() {
        let decision = check(&[b'a'; 65]);
        let BodyDecision::Respond(response) = decision else {
            panic!("expected a local response, got {decision:?}");
        };
        assert_eq!(response.status, 413);
        assert_eq!(
            response.body_text(),
            Some("body of 65 bytes exceeds the limit of 64 bytes")
        );
        assert_eq!(
            check(&[b'a'; 64]),
            BodyDecision::Continue,
            "the limit itself is allowed"
        );
    }

    #[test]
    fn forbidden_text_is_refused_and_logged() {
        let decision = check(b"name=x'; DROP TABLE users; --");
        let BodyDecision::Respond(response) = decision else {
            panic!("expected a local response, got {decision:?}");
        };
        assert_eq!(response.status, 400);
        assert_eq!(
            testing::logs()[0].message,
            r#"body-guard: POST /submit carries "DROP TABLE""#
        );
    }

    #[test]
    fn replacements_rewrite_text_bodies() {
        assert_eq!(
            check(b"token=secret-token&again=secret-token"),
            BodyDecision::Replace(b"token=[redacted]&again=[redacted]".to_vec())
        );
    }

    #[test]
    fn bad_configurations_are_rejected_with_the_reason() {
        let cases = [
            (r#"{}"#, "invalid configuration: missing field `max_bytes`"),
            (
                r#"{"max_bytes": -1}"#,
                "invalid configuration at `max_bytes`: invalid value: integer `-1`, expected usize",
            ),
            (
                r#"{"max_bytes": 1, "forbidden": [""]}"#,
                "`forbidden` must not contain an empty string",
            ),
            (
                r#"{"max_bytes": 1, "replace": {"": "x"}}"#,
                "`replace` must not have an empty key",
            ),
        ];
        for (config, expected) in cases {
            let err = testing::configure::<BodyGuard>(config).unwrap_err();
            assert!(err.starts_with(expected), "{config}: got {err:?}");
        }
    }
}
