//! Metrics a plugin defines: counters, gauges and histograms.

use wasmtime::Linker;

use super::common::*;
use crate::metrics::DefineError;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::memory;
use crate::plugin::sandbox::Limit;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        "env",
        "proxy_define_metric",
        |c, kind: i32, nptr: i32, nlen: i32, ret_id: i32| {
            // Names longer than this are refused anyway; do not copy them.
            if nlen as u32 > 200 {
                return Ok(BAD_ARGUMENT);
            }
            let name = read_or_status!(&mut c, nptr, nlen);
            let name = String::from_utf8_lossy(&name);
            let plugin = &c.data().plugin;
            match plugin.metrics.try_define(kind, &name) {
                Ok(id) => Ok(status_of(memory::write_u32(&mut c, ret_id, id))),
                Err(DefineError::BadArgument) => Ok(BAD_ARGUMENT),
                // The SDKs know no status for "too many"; BAD_ARGUMENT is
                // one they turn into an error (the Rust SDK panics, as it
                // does for any failed definition).
                Err(DefineError::TooMany) => {
                    plugin.limit_exceeded(Limit::Metrics);
                    Ok(BAD_ARGUMENT)
                }
            }
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_increment_metric",
        |c, id: i32, offset: i64| {
            Ok(metric_status(
                c.data().plugin.metrics.increment(id as u32, offset),
            ))
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_record_metric",
        |c, id: i32, value: i64| {
            Ok(metric_status(
                c.data().plugin.metrics.record(id as u32, value as u64),
            ))
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_get_metric",
        |c, id: i32, ret: i32| match c.data().plugin.metrics.get(id as u32) {
            Ok(v) => Ok(status_of(memory::write_u64(&mut c, ret, v))),
            Err(e) => Ok(metric_status(Err(e))),
        },
    )?;
    Ok(())
}

fn metric_status(r: Result<(), crate::metrics::PluginMetricError>) -> i32 {
    use crate::metrics::PluginMetricError as E;
    match r {
        Ok(()) => OK,
        Err(E::NotFound) => NOT_FOUND,
        Err(E::BadArgument) => BAD_ARGUMENT,
    }
}
