//! Logging, the clock and the tick period.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::Linker;

use super::common::*;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::memory;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        "env",
        "proxy_log",
        |c, level: i32, ptr: i32, len: i32| {
            let msg = read_or_status!(&mut c, ptr, len);
            c.data().plugin.log(level, &String::from_utf8_lossy(&msg));
            Ok(OK)
        },
    )?;
    host_fn!(linker, "env", "proxy_get_log_level", |c, ret: i32| {
        let level = c.data().plugin.log_level();
        Ok(status_of(memory::write_u32(&mut c, ret, level)))
    })?;
    host_fn!(
        linker,
        "env",
        "proxy_get_current_time_nanoseconds",
        |c, ret: i32| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            Ok(status_of(memory::write_u64(&mut c, ret, now)))
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_set_tick_period_milliseconds",
        |c, period: i32| {
            let data = c.data_mut();
            data.tick_period = match period as u32 {
                0 => None,
                // Ticks faster than 1ms would let a plugin monopolise its instance.
                ms => Some(Duration::from_millis(ms.max(1) as u64)),
            };
            data.tick_changed = true;
            Ok(OK)
        },
    )?;
    Ok(())
}
