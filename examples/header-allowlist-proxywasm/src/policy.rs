//! The allowlist decision, free of any Proxy-Wasm calls so it can be tested
//! natively.

use std::fmt;

use serde::Deserialize;

/// Status used when the configuration does not name one.
pub const DEFAULT_DENY_STATUS: u32 = 403;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    header: String,
    allow: Vec<String>,
    #[serde(default = "default_deny_status")]
    deny_status: u32,
}

fn default_deny_status() -> u32 {
    DEFAULT_DENY_STATUS
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Header to check, lower-cased (HTTP/2 and the Proxy-Wasm maps use
    /// lower-case names).
    pub header: String,
    /// Exact, case-sensitive values that are let through.
    pub allow: Vec<String>,
    /// Status of the local reply for a denied request (400-599).
    pub deny_status: u32,
}

/// Why a configuration was rejected.
#[derive(Debug)]
pub enum ConfigError {
    /// The host passed no configuration at all.
    Missing,
    /// Not JSON of the expected shape.
    Json(serde_json::Error),
    /// `header` is empty.
    EmptyHeader,
    /// `deny_status` is outside 400-599.
    DenyStatus(u32),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing => f.write_str(
                "plugin configuration is missing; expected JSON {\"header\": .., \"allow\": [..], \"deny_status\": ..}",
            ),
            ConfigError::Json(e) => write!(f, "plugin configuration is not valid: {e}"),
            ConfigError::EmptyHeader => f.write_str("`header` must name a header, got an empty string"),
            ConfigError::DenyStatus(s) => {
                write!(f, "`deny_status` must be an HTTP error status (400-599), got {s}")
            }
        }
    }
}

/// Parses and validates the plugin configuration.
pub fn parse_config(bytes: &[u8]) -> Result<Config, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::Missing);
    }
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(ConfigError::Json)?;
    if raw.header.is_empty() {
        return Err(ConfigError::EmptyHeader);
    }
    if !(400..=599).contains(&raw.deny_status) {
        return Err(ConfigError::DenyStatus(raw.deny_status));
    }
    Ok(Config {
        header: raw.header.to_ascii_lowercase(),
        allow: raw.allow,
        deny_status: raw.deny_status,
    })
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through, recording the allowed value.
    Allow {
        /// The header value that matched.
        value: String,
    },
    /// Answer locally.
    Deny {
        /// HTTP status.
        status: u32,
        /// Plain-text reason for the client.
        body: String,
    },
}

/// Decides on a request whose configured header has `value` (`None` when
/// the header is absent).
pub fn decide(config: &Config, value: Option<&str>) -> Decision {
    match value {
        Some(value) if config.allow.iter().any(|a| a == value) => Decision::Allow {
            value: value.to_owned(),
        },
        Some(value) => Decision::Deny {
            status: config.deny_status,
            body: format!("denied: {} '{value}' is not allowed", config.header),
        },
        None => Decision::Deny {
            status: config.deny_status,
            body: format!("denied: missing {}", config.header),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        parse_config(br#"{"header": "X-User", "allow": ["alice", "bob"], "deny_status": 401}"#)
            .unwrap()
    }

    #[test]
    fn parses_and_lowercases_header() {
        assert_eq!(
            config(),
            Config {
                header: "x-user".to_owned(),
                allow: vec!["alice".to_owned(), "bob".to_owned()],
                deny_status: 401,
            }
        );
    }

    #[test]
    fn deny_status_defaults_to_403() {
        let config = parse_config(br#"{"header": "x-user", "allow": []}"#).unwrap();
        assert_eq!(config.deny_status, 403);
    }

    #[test]
    fn rejects_bad_configurations() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "missing"),
            (b"  \n", "missing"),
            (b"{", "not valid"),
            (br#"{"allow": []}"#, "missing field `header`"),
            (
                br#"{"header": "x", "allow": [], "extra": 1}"#,
                "unknown field `extra`",
            ),
            (br#"{"header": "", "allow": []}"#, "empty string"),
            (
                br#"{"header": "x", "allow": [], "deny_status": 200}"#,
                "got 200",
            ),
            (
                br#"{"header": "x", "allow": [], "deny_status": 600}"#,
                "got 600",
            ),
        ];
        for (input, expected) in cases {
            let err = parse_config(input).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{:?}: {err:?} should mention {expected:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn decisions() {
        let config = config();
        let cases = [
            (
                Some("alice"),
                Decision::Allow {
                    value: "alice".to_owned(),
                },
            ),
            (
                Some("bob"),
                Decision::Allow {
                    value: "bob".to_owned(),
                },
            ),
            (
                Some("Alice"),
                Decision::Deny {
                    status: 401,
                    body: "denied: x-user 'Alice' is not allowed".to_owned(),
                },
            ),
            (
                Some(""),
                Decision::Deny {
                    status: 401,
                    body: "denied: x-user '' is not allowed".to_owned(),
                },
            ),
            (
                None,
                Decision::Deny {
                    status: 401,
                    body: "denied: missing x-user".to_owned(),
                },
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(decide(&config, value), expected, "value {value:?}");
        }
    }
}
