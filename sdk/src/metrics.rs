//! Plugin-defined metrics, exported on the waypoint's metrics endpoint with
//! the plugin's name and namespace as labels.
//!
//! Defining a metric is a call into the waypoint: define metrics once, in
//! [`Policy::configure`](crate::Policy::configure), and keep the handles in
//! the policy.
//!
//! ```
//! use wayplug_sdk::metrics;
//!
//! let denied = metrics::counter("denied_requests_total");
//! denied.inc();
//! denied.add(2);
//! assert_eq!(denied.get(), 3);
//! ```

use std::fmt;

use crate::host;

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A value that only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of recorded values.
    Histogram,
}

/// Why the waypoint refused a metric operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricError {
    /// The name is not a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    InvalidName,
    /// The name is defined with another kind, or the operation does not fit
    /// the kind.
    KindMismatch,
    /// The handle is not one this plugin defined.
    UnknownMetric,
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricError::InvalidName => {
                "invalid metric name (allowed: letters, digits, '_' and ':', not starting with a digit)"
            }
            MetricError::KindMismatch => "the metric is defined with another kind",
            MetricError::UnknownMetric => "unknown metric handle",
        })
    }
}

impl std::error::Error for MetricError {}

/// Defines `name` of `kind`, or returns the existing handle if this plugin
/// already defined it with the same kind.
fn define(kind: MetricKind, name: &str) -> Result<u32, MetricError> {
    host::metric_define(kind, name)
}

/// `define`, but a failure is logged as an error and yields a handle whose
/// operations do nothing: a broken metric must not fail requests.
fn define_or_log(kind: MetricKind, name: &str) -> Option<u32> {
    match define(kind, name) {
        Ok(id) => Some(id),
        Err(err) => {
            crate::log::error(&format!("cannot define {kind:?} metric {name:?}: {err}"));
            None
        }
    }
}

/// A counter: a value that only goes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    id: Option<u32>,
}

/// The counter `name`. If the waypoint refuses the name (see
/// [`try_counter`]), the refusal is logged and the counter does nothing.
pub fn counter(name: &str) -> Counter {
    Counter {
        id: define_or_log(MetricKind::Counter, name),
    }
}

/// The counter `name`, or why it cannot be defined.
pub fn try_counter(name: &str) -> Result<Counter, MetricError> {
    define(MetricKind::Counter, name).map(|id| Counter { id: Some(id) })
}

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        if let Some(id) = self.id {
            // The handle came from `define` with the counter kind and the
            // delta is not negative, so the waypoint has no reason to refuse.
            let _ = host::metric_increment(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The current value (0 for a counter that could not be defined).
    pub fn get(&self) -> u64 {
        self.id
            .and_then(|id| host::metric_get(id).ok())
            .unwrap_or(0)
    }
}

/// A gauge: a value that goes up and down, never below 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge {
    id: Option<u32>,
}

/// The gauge `name`; failures are handled as for [`counter`].
pub fn gauge(name: &str) -> Gauge {
    Gauge {
        id: define_or_log(MetricKind::Gauge, name),
    }
}

/// The gauge `name`, or why it cannot be defined.
pub fn try_gauge(name: &str) -> Result<Gauge, MetricError> {
    define(MetricKind::Gauge, name).map(|id| Gauge { id: Some(id) })
}

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: u64) {
        if let Some(id) = self.id {
            let _ = host::metric_record(id, value);
        }
    }

    /// Adds `delta`, which may be negative; the value stops at 0.
    pub fn add(&self, delta: i64) {
        if let Some(id) = self.id {
            let _ = host::metric_increment(id, delta);
        }
    }

    /// The current value (0 for a gauge that could not be defined).
    pub fn get(&self) -> u64 {
        self.id
            .and_then(|id| host::metric_get(id).ok())
            .unwrap_or(0)
    }
}

/// A histogram: a distribution of recorded values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram {
    id: Option<u32>,
}

/// The histogram `name`; failures are handled as for [`counter`].
pub fn histogram(name: &str) -> Histogram {
    Histogram {
        id: define_or_log(MetricKind::Histogram, name),
    }
}

/// The histogram `name`, or why it cannot be defined.
pub fn try_histogram(name: &str) -> Result<Histogram, MetricError> {
    define(MetricKind::Histogram, name).map(|id| Histogram { id: Some(id) })
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, value: u64) {
        if let Some(id) = self.id {
            let _ = host::metric_record(id, value);
        }
    }
}
