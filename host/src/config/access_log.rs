//! `accessLog:`: whether each request gets a log line, and in which format.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogConfig {
    /// One line per request on standard output (default on).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default)]
    pub format: AccessLogFormat,
}

fn default_enabled() -> bool {
    true
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            format: AccessLogFormat::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// `key=value` pairs after a timestamp, like the rest of the log.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}
