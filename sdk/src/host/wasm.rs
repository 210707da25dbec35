//! Host services backed by the waypoint's imports.

use crate::kv::KvError;
use crate::log::Level;
use crate::metrics::{MetricError, MetricKind};
use crate::wasm::bindings::wayplug::policy::{clock, config, kv, log, metrics, trace};

fn wit_level(level: Level) -> log::Level {
    match level {
        Level::Trace => log::Level::Trace,
        Level::Debug => log::Level::Debug,
        Level::Info => log::Level::Info,
        Level::Warn => log::Level::Warn,
        Level::Error => log::Level::Error,
    }
}

pub(crate) fn log_write(level: Level, message: &str) {
    log::log(wit_level(level), message);
}

pub(crate) fn log_enabled(level: Level) -> bool {
    log::enabled(wit_level(level))
}

pub(crate) fn clock_now() -> u64 {
    clock::now()
}

pub(crate) fn clock_monotonic() -> u64 {
    clock::monotonic()
}

fn metric_error(err: metrics::MetricError) -> MetricError {
    match err {
        metrics::MetricError::InvalidName => MetricError::InvalidName,
        metrics::MetricError::KindMismatch => MetricError::KindMismatch,
        metrics::MetricError::UnknownMetric => MetricError::UnknownMetric,
    }
}

pub(crate) fn metric_define(kind: MetricKind, name: &str) -> Result<u32, MetricError> {
    let kind = match kind {
        MetricKind::Counter => metrics::MetricKind::Counter,
        MetricKind::Gauge => metrics::MetricKind::Gauge,
        MetricKind::Histogram => metrics::MetricKind::Histogram,
    };
    metrics::define(kind, name).map_err(metric_error)
}

pub(crate) fn metric_increment(id: u32, delta: i64) -> Result<(), MetricError> {
    metrics::increment(id, delta).map_err(metric_error)
}

pub(crate) fn metric_record(id: u32, value: u64) -> Result<(), MetricError> {
    metrics::record(id, value).map_err(metric_error)
}

pub(crate) fn metric_get(id: u32) -> Result<u64, MetricError> {
    metrics::get(id).map_err(metric_error)
}

fn kv_error(err: kv::KvError) -> KvError {
    match err {
        kv::KvError::CasMismatch => KvError::CasMismatch,
        kv::KvError::TooLarge => KvError::TooLarge,
    }
}

pub(crate) fn kv_get(key: &str) -> Option<(Vec<u8>, u64)> {
    kv::get(key).map(|entry| (entry.value, entry.cas))
}

pub(crate) fn kv_set(key: &str, value: &[u8], cas: Option<u64>) -> Result<u64, KvError> {
    kv::set(key, value, cas).map_err(kv_error)
}

pub(crate) fn kv_delete(key: &str, cas: Option<u64>) -> Result<(), KvError> {
    kv::delete(key, cas).map_err(kv_error)
}

pub(crate) fn config_get() -> String {
    config::get()
}

pub(crate) fn config_plugin_name() -> String {
    config::plugin_name()
}

pub(crate) fn trace_record(policy: &str, rule: Option<u32>, outcome: &str, detail: &str) {
    trace::record_decision(policy, rule, outcome, detail);
}
