//! Metrics a plugin defines: counters, gauges and histograms.

use wasmtime::Linker;

use super::common::*;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::memory;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, nptr: i32, nlen: i32, ret_id: i32| {
            let name = read_or_status!(&mut c, nptr, nlen);
            let name = String::from_utf8_lossy(&name);
            match c.data().plugin.metrics.define(kind, &name) {
                Some(id) => Ok(status_of(memory::write_u32(&mut c, ret_id, id))),
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C<'_>, id: i32, offset: i64| {
            Ok(metric_status(
                c.data().plugin.metrics.increment(id as u32, offset),
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| {
            Ok(metric_status(
                c.data().plugin.metrics.record(id as u32, value as u64),
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ret: i32| match c.data().plugin.metrics.get(id as u32) {
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
