//! The in-memory host used outside WebAssembly.
//!
//! Each thread has its own state, so tests running in parallel do not see
//! each other's logs, metrics or keys. The rules mirror the ones the WIT
//! documents for the waypoint, so a policy that works here behaves the same
//! when loaded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::kv::KvError;
use crate::log::Level;
use crate::metrics::{MetricError, MetricKind};
use crate::testing::{DecisionRecord, LogRecord, MetricValue};

struct Metric {
    name: String,
    kind: MetricKind,
    value: u64,
    samples: Vec<u64>,
}

struct State {
    logs: Vec<LogRecord>,
    min_level: Level,
    fixed_now: Option<SystemTime>,
    advanced: Duration,
    started: Instant,
    metrics: Vec<Metric>,
    kv: HashMap<String, (Vec<u8>, u64)>,
    last_cas: u64,
    config: String,
    plugin_name: String,
    decisions: Vec<DecisionRecord>,
}

impl Default for State {
    fn default() -> Self {
        State {
            logs: Vec::new(),
            min_level: Level::Trace,
            fixed_now: None,
            advanced: Duration::ZERO,
            started: Instant::now(),
            metrics: Vec::new(),
            kv: HashMap::new(),
            last_cas: 0,
            config: String::new(),
            plugin_name: DEFAULT_PLUGIN_NAME.to_string(),
            decisions: Vec::new(),
        }
    }
}

/// What `config::plugin_name` returns in native tests unless set.
pub(crate) const DEFAULT_PLUGIN_NAME: &str = "test-plugin";

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|state| f(&mut state.borrow_mut()))
}

pub(crate) fn reset() {
    with(|state| *state = State::default());
}

pub(crate) fn log_write(level: Level, message: &str) {
    if !log_enabled(level) {
        return;
    }
    // Printed too, so that a failing test's output shows what the plugin
    // logged (the test harness captures it otherwise).
    eprintln!("[plugin {level:?}] {message}");
    with(|state| {
        state.logs.push(LogRecord {
            level,
            message: message.to_string(),
        })
    });
}

pub(crate) fn log_enabled(level: Level) -> bool {
    with(|state| level >= state.min_level)
}

pub(crate) fn set_min_level(level: Level) {
    with(|state| state.min_level = level);
}

pub(crate) fn logs() -> Vec<LogRecord> {
    with(|state| state.logs.clone())
}

pub(crate) fn take_logs() -> Vec<LogRecord> {
    with(|state| std::mem::take(&mut state.logs))
}

pub(crate) fn clock_now() -> u64 {
    let now = with(|state| state.fixed_now.unwrap_or_else(SystemTime::now) + state.advanced);
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn clock_monotonic() -> u64 {
    let elapsed = with(|state| state.started.elapsed() + state.advanced);
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn set_now(now: SystemTime) {
    with(|state| {
        state.fixed_now = Some(now);
        state.advanced = Duration::ZERO;
    });
}

pub(crate) fn advance(by: Duration) {
    with(|state| state.advanced += by);
}

fn valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() || first == b'_' || first == b':' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

// Handles are indexes + 1, so that 0 is never a handle and a made-up handle
// is usually unknown rather than someone else's metric.
fn metric_index(id: u32) -> Result<usize, MetricError> {
    let index = usize::try_from(id)
        .ok()
        .and_then(|id| id.checked_sub(1))
        .ok_or(MetricError::UnknownMetric)?;
    with(|state| index < state.metrics.len())
        .then_some(index)
        .ok_or(MetricError::UnknownMetric)
}

pub(crate) fn metric_define(kind: MetricKind, name: &str) -> Result<u32, MetricError> {
    if !valid_metric_name(name) {
        return Err(MetricError::InvalidName);
    }
    with(|state| {
        if let Some(index) = state.metrics.iter().position(|m| m.name == name) {
            if state.metrics[index].kind != kind {
                return Err(MetricError::KindMismatch);
            }
            return Ok(handle(index));
        }
        state.metrics.push(Metric {
            name: name.to_string(),
            kind,
            value: 0,
            samples: Vec::new(),
        });
        Ok(handle(state.metrics.len() - 1))
    })
}

fn handle(index: usize) -> u32 {
    u32::try_from(index + 1).expect("fewer than 4 billion metrics")
}

pub(crate) fn metric_increment(id: u32, delta: i64) -> Result<(), MetricError> {
    let index = metric_index(id)?;
    with(|state| {
        let metric = &mut state.metrics[index];
        match metric.kind {
            MetricKind::Counter if delta < 0 => Err(MetricError::KindMismatch),
            MetricKind::Counter | MetricKind::Gauge => {
                metric.value = metric.value.saturating_add_signed(delta);
                Ok(())
            }
            MetricKind::Histogram => Err(MetricError::KindMismatch),
        }
    })
}

pub(crate) fn metric_record(id: u32, value: u64) -> Result<(), MetricError> {
    let index = metric_index(id)?;
    with(|state| {
        let metric = &mut state.metrics[index];
        match metric.kind {
            MetricKind::Gauge => metric.value = value,
            MetricKind::Histogram => metric.samples.push(value),
            MetricKind::Counter => return Err(MetricError::KindMismatch),
        }
        Ok(())
    })
}

pub(crate) fn metric_get(id: u32) -> Result<u64, MetricError> {
    let index = metric_index(id)?;
    with(|state| {
        let metric = &state.metrics[index];
        match metric.kind {
            MetricKind::Counter | MetricKind::Gauge => Ok(metric.value),
            MetricKind::Histogram => Err(MetricError::KindMismatch),
        }
    })
}

pub(crate) fn metric_value(name: &str) -> Option<MetricValue> {
    with(|state| {
        let metric = state.metrics.iter().find(|m| m.name == name)?;
        Some(match metric.kind {
            MetricKind::Counter => MetricValue::Counter(metric.value),
            MetricKind::Gauge => MetricValue::Gauge(metric.value),
            MetricKind::Histogram => MetricValue::Histogram(metric.samples.clone()),
        })
    })
}

pub(crate) fn kv_get(key: &str) -> Option<(Vec<u8>, u64)> {
    with(|state| state.kv.get(key).cloned())
}

fn cas_matches(current: Option<u64>, expected: Option<u64>) -> bool {
    match (expected, current) {
        (None, _) => true,
        (Some(0), None) => true,
        (Some(expected), Some(current)) => expected == current,
        (Some(_), None) => false,
    }
}

pub(crate) fn kv_set(key: &str, value: &[u8], cas: Option<u64>) -> Result<u64, KvError> {
    with(|state| {
        let current = state.kv.get(key).map(|(_, cas)| *cas);
        if !cas_matches(current, cas) {
            return Err(KvError::CasMismatch);
        }
        state.last_cas += 1;
        let token = state.last_cas;
        state.kv.insert(key.to_string(), (value.to_vec(), token));
        Ok(token)
    })
}

pub(crate) fn kv_delete(key: &str, cas: Option<u64>) -> Result<(), KvError> {
    with(|state| {
        let current = state.kv.get(key).map(|(_, cas)| *cas);
        if !cas_matches(current, cas) {
            return Err(KvError::CasMismatch);
        }
        state.kv.remove(key);
        Ok(())
    })
}

pub(crate) fn config_get() -> String {
    with(|state| state.config.clone())
}

pub(crate) fn set_config(config: &str) {
    with(|state| state.config = config.to_string());
}

pub(crate) fn config_plugin_name() -> String {
    with(|state| state.plugin_name.clone())
}

/// Records the native stand-in keeps per thread until they are taken: a
/// benchmark that decides millions of requests natively stays bounded.
const MAX_NATIVE_DECISIONS: usize = 4096;

pub(crate) fn trace_record(policy: &str, rule: Option<u32>, outcome: &str, detail: &str) {
    with(|state| {
        if state.decisions.len() >= MAX_NATIVE_DECISIONS {
            return;
        }
        state.decisions.push(DecisionRecord {
            policy: policy.to_string(),
            rule,
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        })
    });
}

pub(crate) fn take_decisions() -> Vec<DecisionRecord> {
    with(|state| std::mem::take(&mut state.decisions))
}

pub(crate) fn set_plugin_name(name: &str) {
    with(|state| state.plugin_name = name.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_rules() {
        reset();
        assert_eq!(
            metric_define(MetricKind::Counter, "9bad"),
            Err(MetricError::InvalidName)
        );
        assert_eq!(
            metric_define(MetricKind::Counter, ""),
            Err(MetricError::InvalidName)
        );
        assert_eq!(
            metric_define(MetricKind::Counter, "a-b"),
            Err(MetricError::InvalidName)
        );
        let c = metric_define(MetricKind::Counter, "requests_total").unwrap();
        assert_eq!(metric_define(MetricKind::Counter, "requests_total"), Ok(c));
        assert_eq!(
            metric_define(MetricKind::Gauge, "requests_total"),
            Err(MetricError::KindMismatch)
        );
        assert_eq!(metric_increment(c, -1), Err(MetricError::KindMismatch));
        assert_eq!(metric_record(c, 5), Err(MetricError::KindMismatch));
        metric_increment(c, 2).unwrap();
        assert_eq!(metric_get(c), Ok(2));

        let g = metric_define(MetricKind::Gauge, "in_flight").unwrap();
        metric_record(g, 3).unwrap();
        metric_increment(g, -5).unwrap();
        assert_eq!(metric_get(g), Ok(0), "gauges stop at 0");

        let h = metric_define(MetricKind::Histogram, "size:bytes").unwrap();
        metric_record(h, 10).unwrap();
        metric_record(h, 20).unwrap();
        assert_eq!(metric_get(h), Err(MetricError::KindMismatch));
        assert_eq!(metric_increment(h, 1), Err(MetricError::KindMismatch));
        assert_eq!(
            metric_value("size:bytes"),
            Some(MetricValue::Histogram(vec![10, 20]))
        );

        assert_eq!(metric_get(0), Err(MetricError::UnknownMetric));
        assert_eq!(metric_get(99), Err(MetricError::UnknownMetric));
    }

    #[test]
    fn kv_cas_rules() {
        reset();
        assert_eq!(
            kv_delete("k", None),
            Ok(()),
            "deleting an absent key succeeds"
        );
        assert_eq!(kv_delete("k", Some(7)), Err(KvError::CasMismatch));
        let first = kv_set("k", b"1", Some(0)).unwrap();
        assert_ne!(first, 0);
        assert_eq!(
            kv_set("k", b"2", Some(0)),
            Err(KvError::CasMismatch),
            "0 means absent"
        );
        let second = kv_set("k", b"2", Some(first)).unwrap();
        assert_ne!(second, first);
        assert_eq!(kv_set("k", b"3", Some(first)), Err(KvError::CasMismatch));
        assert_eq!(kv_get("k"), Some((b"2".to_vec(), second)));
        assert_eq!(kv_delete("k", Some(first)), Err(KvError::CasMismatch));
        assert_eq!(kv_delete("k", Some(second)), Ok(()));
        assert_eq!(kv_get("k"), None);
    }

    #[test]
    fn log_level_filter() {
        reset();
        set_min_level(Level::Warn);
        log_write(Level::Info, "hidden");
        log_write(Level::Error, "shown");
        assert!(!log_enabled(Level::Debug));
        let taken = take_logs();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].message, "shown");
        assert!(logs().is_empty());
    }

    #[test]
    fn clock_can_be_fixed_and_advanced() {
        reset();
        set_now(UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(clock_now(), 10_000_000_000);
        let before = clock_monotonic();
        advance(Duration::from_millis(5));
        assert_eq!(clock_now(), 10_005_000_000);
        assert!(clock_monotonic() - before >= 5_000_000);
    }
}
