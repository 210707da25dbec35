//! Configuration parsing and validation, free of Proxy-Wasm calls so it can
//! be tested natively.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    request: BTreeMap<String, String>,
    #[serde(default)]
    response: BTreeMap<String, String>,
}

/// Headers to add, as (lower-case name, value) pairs sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Added to every request before it goes upstream.
    pub request: Vec<(String, String)>,
    /// Added to every response before it goes to the client.
    pub response: Vec<(String, String)>,
}

/// Why a configuration was rejected.
#[derive(Debug)]
pub enum ConfigError {
    /// The host passed no configuration at all.
    Missing,
    /// Not JSON of the expected shape.
    Json(serde_json::Error),
    /// A header name that is not an HTTP token (this includes pseudo-headers
    /// such as `:path`, which this plugin must not add).
    Name {
        /// `request` or `response`.
        side: &'static str,
        /// The offending name.
        name: String,
    },
    /// A header value containing CR, LF or NUL, which would split or
    /// truncate the header on the wire.
    Value {
        /// `request` or `response`.
        side: &'static str,
        /// The header the value belongs to.
        name: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing => f.write_str(
                "plugin configuration is missing; expected JSON {\"request\": {name: value}, \"response\": {name: value}}",
            ),
            ConfigError::Json(e) => write!(f, "plugin configuration is not valid: {e}"),
            ConfigError::Name { side, name } => {
                write!(f, "{side} header name {name:?} is not a valid HTTP header name")
            }
            ConfigError::Value { side, name } => write!(
                f,
                "{side} header {name:?} has a value containing CR, LF or NUL"
            ),
        }
    }
}

/// RFC 9110 `token` characters.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate(
    side: &'static str,
    headers: BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if !is_token(&name) {
            return Err(ConfigError::Name { side, name });
        }
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(ConfigError::Value { side, name });
        }
        out.push((name.to_ascii_lowercase(), value));
    }
    // Lower-casing can reorder names that differed only in case.
    out.sort();
    Ok(out)
}

/// Parses and validates the plugin configuration.
pub fn parse_config(bytes: &[u8]) -> Result<Config, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::Missing);
    }
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(ConfigError::Json)?;
    Ok(Config {
        request: validate("request", raw.request)?,
        response: validate("response", raw.response)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_both_sides_lowercased_and_sorted() {
        let config = parse_config(
            br#"{"request": {"X-B": "2", "x-a": "1"}, "response": {"x-served-by": "wayplug"}}"#,
        )
        .unwrap();
        assert_eq!(config.request, pairs(&[("x-a", "1"), ("x-b", "2")]));
        assert_eq!(config.response, pairs(&[("x-served-by", "wayplug")]));
    }

    #[test]
    fn either_side_may_be_omitted() {
        assert_eq!(parse_config(b"{}").unwrap(), Config::default());
        let config = parse_config(br#"{"response": {"x": ""}}"#).unwrap();
        assert!(config.request.is_empty());
        assert_eq!(config.response, pairs(&[("x", "")]));
    }

    #[test]
    fn rejects_bad_configurations() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "missing"),
            (br#""x-a""#, "not valid"),
            (br#"{"requests": {}}"#, "unknown field `requests`"),
            (br#"{"request": {"x": 1}}"#, "not valid"),
            (
                br#"{"request": {":path": "/"}}"#,
                "request header name \":path\"",
            ),
            (
                br#"{"response": {"bad name": "v"}}"#,
                "response header name \"bad name\"",
            ),
            (br#"{"request": {"": "v"}}"#, "request header name \"\""),
            (br#"{"request": {"x": "a\r\nb"}}"#, "CR, LF or NUL"),
            (br#"{"response": {"x": "a\u0000b"}}"#, "CR, LF or NUL"),
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
}
