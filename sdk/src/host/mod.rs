//! The host services a plugin imports: the waypoint's on `wasm32`, an
//! in-memory stand-in everywhere else so that policies run in `cargo test`.
//!
//! Both backends export the same functions; the public modules (`log`,
//! `clock`, `metrics`, `kv`, `config`) wrap them.

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::{
    clock_monotonic, clock_now, config_get, config_plugin_name, kv_delete, kv_get, kv_set,
    log_enabled, log_write, metric_define, metric_get, metric_increment, metric_record,
    trace_record,
};

#[cfg(target_arch = "wasm32")]
mod wasm;
#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::{
    clock_monotonic, clock_now, config_get, config_plugin_name, kv_delete, kv_get, kv_set,
    log_enabled, log_write, metric_define, metric_get, metric_increment, metric_record,
    trace_record,
};
