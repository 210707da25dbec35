//! Writing to the waypoint's log.
//!
//! Messages go to the waypoint's log tagged with the plugin's name and
//! namespace; in native tests they are captured for
//! [`testing::logs`](crate::testing::logs). The macros
//! ([`info!`](crate::info) and friends) skip formatting when the level is
//! disabled.
//!
//! ```
//! use wayplug_sdk::log::{self, Level};
//!
//! log::info("configured");
//! wayplug_sdk::warn!("tenant {} has no backend", "blue");
//! # #[cfg(not(target_arch = "wasm32"))]
//! # {
//! let logs = wayplug_sdk::testing::logs();
//! assert_eq!(logs[1].level, Level::Warn);
//! assert_eq!(logs[1].message, "tenant blue has no backend");
//! # }
//! ```

use crate::host;

/// How important a message is, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Fine-grained detail.
    Trace,
    /// Detail for debugging a plugin.
    Debug,
    /// Normal operation worth recording.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// A failure the operator should look at.
    Error,
}

/// Writes `message` at `level`.
pub fn log(level: Level, message: &str) {
    host::log_write(level, message);
}

/// Whether a message at `level` would be written.
pub fn enabled(level: Level) -> bool {
    host::log_enabled(level)
}

/// Writes `message` at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Writes `message` at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Writes `message` at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes `message` at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes `message` at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Formats and writes a message at a [`Level`](crate::log::Level), if that
/// level is enabled: `wayplug_sdk::log!(Level::Info, "user {user} allowed")`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {{
        let level = $level;
        if $crate::log::enabled(level) {
            $crate::log::log(level, &::std::format!($($arg)+));
        }
    }};
}

/// Formats and writes a message at [`Level::Trace`](crate::log::Level::Trace).
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Trace, $($arg)+) };
}

/// Formats and writes a message at [`Level::Debug`](crate::log::Level::Debug).
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arg)+) };
}

/// Formats and writes a message at [`Level::Info`](crate::log::Level::Info).
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) };
}

/// Formats and writes a message at [`Level::Warn`](crate::log::Level::Warn).
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) };
}

/// Formats and writes a message at [`Level::Error`](crate::log::Level::Error).
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Error, $($arg)+) };
}
