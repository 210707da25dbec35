//! Reading the plugin's configuration outside [`Policy::configure`](crate::Policy::configure).

use serde::de::DeserializeOwned;

use crate::host;
use crate::policy::{ConfigError, parse_config};

/// The plugin entry's `pluginConfig` as JSON text, or the empty string when
/// it has none; the same text `configure` received.
pub fn raw() -> String {
    host::config_get()
}

/// The configuration deserialized as `T`, with the errors of
/// [`parse_config`](crate::parse_config).
pub fn get<T: DeserializeOwned>() -> Result<T, ConfigError> {
    parse_config(&raw())
}
