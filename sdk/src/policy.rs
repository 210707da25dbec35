//! The traits a plugin implements.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::decision::{BodyDecision, Decision, ResponseDecision};
use crate::request::{Request, Response};

/// A policy: typed configuration and a decision per request.
///
/// The waypoint calls [`configure`](Policy::configure) once per plugin
/// instance with the plugin's `pluginConfig`, deserialized into
/// [`Config`](Policy::Config); the policy it returns then decides about
/// every request. Export it with [`export_policy!`](crate::export_policy).
///
/// Add [`ResponseHook`] or [`BodyHook`] to see responses or request bodies.
///
/// ```
/// use serde::Deserialize;
/// use wayplug_sdk::{Decision, Policy, Request};
///
/// struct BlockPaths {
///     blocked: Vec<String>,
/// }
///
/// #[derive(Deserialize)]
/// struct Config {
///     blocked: Vec<String>,
/// }
///
/// impl Policy for BlockPaths {
///     type Config = Config;
///
///     fn configure(config: Config) -> Result<Self, String> {
///         Ok(BlockPaths { blocked: config.blocked })
///     }
///
///     fn on_request(&self, req: &Request) -> Decision {
///         if self.blocked.iter().any(|p| req.path_matches(p)) {
///             Decision::deny(403, "blocked")
///         } else {
///             Decision::allow()
///         }
///     }
/// }
/// ```
///
/// A method with the wrong signature is a compile error that names the
/// trait method:
///
/// ```compile_fail,E0053
/// use wayplug_sdk::{Decision, Policy, Request};
///
/// struct AllowAll;
///
/// impl Policy for AllowAll {
///     type Config = ();
///     fn configure(_: ()) -> Result<Self, String> { Ok(AllowAll) }
///     // error[E0053]: method `on_request` has an incompatible type for trait
///     fn on_request(&self, req: &Request) -> bool { true }
/// }
/// ```
pub trait Policy: Sized + 'static {
    /// The configuration, deserialized from the plugin entry's
    /// `pluginConfig` (JSON). A plugin entry without `pluginConfig`
    /// deserializes from JSON `null`, which suits `()` and `Option<T>`.
    type Config: DeserializeOwned;

    /// Builds the policy from its configuration, or explains why the
    /// configuration is unusable. The error text is shown to the operator
    /// and the plugin does not load.
    fn configure(config: Self::Config) -> Result<Self, String>;

    /// Decides about a request from its head.
    fn on_request(&self, req: &Request) -> Decision;
}

/// A policy that also sees response heads.
///
/// Export it with `export_policy!(MyPolicy, hooks: [response])`.
pub trait ResponseHook: Policy {
    /// Decides about the response to `req`, including local responses and
    /// redirects made by this or earlier plugins.
    fn on_response(&self, req: &Request, resp: &Response) -> ResponseDecision;
}

/// A policy that also sees complete request bodies.
///
/// Export it with `export_policy!(MyPolicy, hooks: [body])`. The waypoint
/// buffers the body of every request this policy lets through, so export
/// this hook only when it is needed.
pub trait BodyHook: Policy {
    /// Decides about the complete body of `req`.
    fn on_request_body(&self, req: &Request, body: &[u8]) -> BodyDecision;
}

/// A configuration that could not be used, with the location of the
/// problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    /// The message shown to the operator.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Deserializes a configuration from JSON with an error message that names
/// the field (as a path like `backends.blue` or `allow[1]`), the problem and
/// the line and column.
///
/// Empty text stands for a plugin entry without configuration and
/// deserializes from `null`.
///
/// ```
/// use serde::Deserialize;
/// use wayplug_sdk::parse_config;
///
/// #[derive(Deserialize, Debug)]
/// struct Config {
///     allow: Vec<String>,
/// }
///
/// let err = parse_config::<Config>(r#"{"allow": ["alice", 3]}"#).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid configuration at `allow[1]`: invalid type: integer `3`, expected a string at line 1 column 21"
/// );
/// ```
pub fn parse_config<T: DeserializeOwned>(json: &str) -> Result<T, ConfigError> {
    let json = if json.trim().is_empty() { "null" } else { json };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = known_path(err.path());
        let inner = err.into_inner();
        let message = if path.is_empty() {
            format!("invalid configuration: {inner}")
        } else {
            format!("invalid configuration at `{path}`: {inner}")
        };
        ConfigError { message }
    })?;
    deserializer.end().map_err(|err| ConfigError {
        message: format!("invalid configuration: {err}"),
    })?;
    Ok(value)
}

/// The path as `a.b[2].c`, up to the first segment serde could not name
/// (a syntax error inside a map is reported before its key is known).
fn known_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;

    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => break,
        }
    }
    out
}

/// Parses `json` into `P::Config` and calls [`Policy::configure`]: what the
/// plugin's `configure` export does.
pub(crate) fn configure_policy<P: Policy>(json: &str) -> Result<P, String> {
    let config = parse_config::<P::Config>(json).map_err(|err| err.message)?;
    P::configure(config)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        header: String,
        #[serde(default)]
        backends: BTreeMap<String, String>,
    }

    #[test]
    fn valid_config() {
        let config: Config =
            parse_config(r#"{"header": "x-tenant", "backends": {"a": "b"}}"#).unwrap();
        assert_eq!(config.header, "x-tenant");
        assert_eq!(config.backends["a"], "b");
    }

    #[test]
    fn errors_name_the_field_and_position() {
        let cases = [
            (
                r#"{"header": 1}"#,
                "invalid configuration at `header`: invalid type: integer `1`, expected a string at line 1 column 12",
            ),
            (
                "{\"header\": \"h\",\n \"backends\": {\"a\": false}}",
                "invalid configuration at `backends.a`: invalid type: boolean `false`, expected a string at line 2 column 24",
            ),
            (
                r#"{"header": "h", "extra": 1}"#,
                "invalid configuration at `extra`: unknown field `extra`, expected `header` or `backends` at line 1 column 23",
            ),
            (
                r#"{}"#,
                "invalid configuration: missing field `header` at line 1 column 2",
            ),
            (
                r#"{"header": "h", "backends": {"a": "#,
                "invalid configuration at `backends.a`: EOF while parsing a value at line 1 column 34",
            ),
            (
                r#"{"header": "h"} trailing"#,
                "invalid configuration: trailing characters at line 1 column 17",
            ),
            (
                "",
                "invalid configuration: invalid type: null, expected struct Config at line 1 column 4",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_config::<Config>(json).unwrap_err();
            assert_eq!(err.to_string(), expected, "config {json:?}");
        }
    }

    #[test]
    fn empty_config_is_null() {
        assert_eq!(parse_config::<()>("").unwrap(), ());
        assert_eq!(parse_config::<Option<Config>>("  \n").unwrap(), None);
    }
}
