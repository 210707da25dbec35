//! `response-header`: adds a configured header to every response, using the
//! response hook; see README.md.

use serde::Deserialize;
use wayplug_sdk::{
    Decision, Policy, Request, Response, ResponseDecision, ResponseHook, export_policy,
};

/// The `pluginConfig` of the plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
    /// Replace a header of the same name the response already has (the
    /// default), or leave such a response alone.
    #[serde(default = "default_overwrite")]
    pub overwrite: bool,
}

fn default_overwrite() -> bool {
    true
}

/// The configured policy.
#[derive(Debug)]
pub struct ResponseHeader {
    name: String,
    value: String,
    overwrite: bool,
}

impl Policy for ResponseHeader {
    type Config = Config;

    fn configure(config: Config) -> Result<Self, String> {
        // Checked with the waypoint's own rules now, so that a bad name or
        // value fails the load rather than every response.
        ResponseDecision::unchanged()
            .with_header(&config.name, &config.value)
            .validate()
            .map_err(|err| format!("`name`/`value`: {err}"))?;
        Ok(ResponseHeader {
            name: config.name.to_ascii_lowercase(),
            value: config.value,
            overwrite: config.overwrite,
        })
    }

    fn on_request(&self, _req: &Request) -> Decision {
        Decision::allow()
    }
}

impl ResponseHook for ResponseHeader {
    fn on_response(&self, _req: &Request, resp: &Response) -> ResponseDecision {
        if !self.overwrite && resp.header(&self.name).is_some() {
            return ResponseDecision::unchanged();
        }
        ResponseDecision::unchanged().with_header(&self.name, &self.value)
    }
}

export_policy!(ResponseHeader, hooks: [response]);

// The tests use the SDK's native host stand-in (`wayplug_sdk::testing`).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use wayplug_sdk::{HeaderChanges, testing};

    use super::*;

    fn changes(config: &str, resp: Response) -> HeaderChanges {
        let policy: ResponseHeader = testing::configure(config).unwrap();
        let req = Request::builder().build();
        assert!(testing::run(&policy, &req).is_allow());
        match testing::run_response(&policy, &req, &resp) {
            ResponseDecision::Continue(changes) => changes,
            other => panic!("expected header changes, got {other:?}"),
        }
    }

    #[test]
    fn sets_the_header() {
        let c = changes(
            r#"{"name": "X-Served-By", "value": "wayplug"}"#,
            Response::builder().status(200).build(),
        );
        assert_eq!(
            c.set,
            vec![("x-served-by".to_string(), "wayplug".to_string())]
        );
        assert!(c.add.is_empty() && c.remove.is_empty());
    }

    #[test]
    fn replaces_an_existing_header_by_default() {
        let c = changes(
            r#"{"name": "x-served-by", "value": "wayplug"}"#,
            Response::builder()
                .header("X-Served-By", "upstream")
                .build(),
        );
        assert_eq!(c.value_of("x-served-by"), Some("wayplug"));
    }

    #[test]
    fn keeps_an_existing_header_without_overwrite() {
        let config = r#"{"name": "x-served-by", "value": "wayplug", "overwrite": false}"#;
        let kept = changes(
            config,
            Response::builder()
                .header("x-served-by", "upstream")
                .build(),
        );
        assert!(kept.is_empty(), "{kept:?}");
        let added = changes(config, Response::builder().status(503).build());
        assert_eq!(added.value_of("x-served-by"), Some("wayplug"));
    }

    #[test]
    fn bad_configurations_are_rejected_with_the_reason() {
        let cases = [
            (
                r#"{"name": "x"}"#,
                "invalid configuration: missing field `value`",
            ),
            (
                r#"{"name": "bad name", "value": "v"}"#,
                "`name`/`value`: invalid decision: header name \"bad name\" is not a valid HTTP token",
            ),
            (
                r#"{"name": "x", "value": "a\nb"}"#,
                "`name`/`value`: invalid decision: header \"x\" has a value with control characters",
            ),
            (
                r#"{"name": "x", "value": "v", "overwrite": "yes"}"#,
                "invalid configuration at `overwrite`: invalid type: string \"yes\", expected a boolean",
            ),
        ];
        for (config, expected) in cases {
            let err = testing::configure::<ResponseHeader>(config).unwrap_err();
            assert!(err.starts_with(expected), "{config}: got {err:?}");
        }
    }
}
