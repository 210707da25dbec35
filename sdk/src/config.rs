//! Reading the plugin's configuration outside [`Policy::configure`](crate::Policy::configure).

use serde::de::DeserializeOwned;

use crate::host;
use crate::policy::{ConfigError, parse_config};

/// The plugin entry's `pluginConfig` as JSON text, or the empty string when
/// it has none; the same text `configure` received.
pub fn raw() -> String {
    host::config_get()
}

/// The `name` of the plugin's entry in the waypoint configuration; in
/// native tests `"test-plugin"` unless
/// [`testing::set_plugin_name`](crate::testing::set_plugin_name) says
/// otherwise.
pub fn plugin_name() -> String {
    host::config_plugin_name()
}

/// The configuration deserialized as `T`, with the errors of
/// [`parse_config`].
pub fn get<T: DeserializeOwned>() -> Result<T, ConfigError> {
    parse_config(&raw())
}
