//! Reading the time.
//!
//! In native tests the clock can be fixed and advanced with
//! [`testing::set_now`](crate::testing::set_now) and
//! [`testing::advance`](crate::testing::advance).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::host;

/// The wall-clock time. It can jump when the system clock is adjusted: use
/// [`monotonic`] to measure durations.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(now_nanos())
}

/// The wall-clock time in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    host::clock_now()
}

/// Time elapsed since an arbitrary fixed point; only differences between
/// two readings are meaningful.
///
/// ```
/// let start = wayplug_sdk::clock::monotonic();
/// let later = wayplug_sdk::clock::monotonic();
/// assert!(later >= start);
/// ```
pub fn monotonic() -> Duration {
    Duration::from_nanos(host::clock_monotonic())
}
