//! HTTP callouts, the gRPC calls this host refuses, and foreign functions.

use wasmtime::Linker;

use super::common::*;
use crate::plugin::callout::CalloutRequest;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::{maps, memory};

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let http_call = |mut c: C<'_>,
                     uptr: i32,
                     ulen: i32,
                     hptr: i32,
                     hlen: i32,
                     bptr: i32,
                     blen: i32,
                     tptr: i32,
                     tlen: i32,
                     timeout_ms: i32,
                     ret_token: i32|
     -> wasmtime::Result<i32> {
        let upstream = read_or_status!(&mut c, uptr, ulen);
        let headers = read_or_status!(&mut c, hptr, hlen);
        let body = read_or_status!(&mut c, bptr, blen);
        let trailers = read_or_status!(&mut c, tptr, tlen);
        let (Some(headers), Some(trailers)) = (maps::decode(&headers), maps::decode(&trailers))
        else {
            return Ok(BAD_ARGUMENT);
        };
        let upstream = String::from_utf8_lossy(&upstream).into_owned();
        let Some(target) = c.data().plugin.callouts.upstream(&upstream) else {
            c.data().plugin.log(
                3,
                &format!("dispatch_http_call: no upstream named `{upstream}` is configured"),
            );
            return Ok(BAD_ARGUMENT);
        };
        let Some(req) = CalloutRequest::new(target, headers, body, trailers, timeout_ms as u32)
        else {
            return Ok(BAD_ARGUMENT);
        };
        let data = c.data_mut();
        data.next_callout_token = data.next_callout_token.wrapping_add(1).max(1);
        let token = data.next_callout_token;
        let ctx = data.current;
        data.pending_callouts.push((ctx, token, req));
        if memory::write_u32(&mut c, ret_token, token).is_err() {
            c.data_mut().pending_callouts.pop();
            return Ok(INVALID_MEMORY_ACCESS);
        }
        Ok(OK)
    };
    linker.func_wrap("env", "proxy_http_call", http_call)?;
    linker.func_wrap("env", "proxy_dispatch_http_call", http_call)?;

    // gRPC callouts are not offered yet. INTERNAL_FAILURE for starting one
    // and NOT_FOUND for a stream token are statuses the SDKs turn into
    // ordinary errors, so a plugin that tries sees a failed call, not a crash.
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |c: C<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| {
            c.data()
                .plugin
                .log(3, "gRPC callouts are not supported by this waypoint");
            Ok(INTERNAL_FAILURE)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |c: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            c.data()
                .plugin
                .log(3, "gRPC streams are not supported by this waypoint");
            Ok(INTERNAL_FAILURE)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_c: C<'_>, _: i32, _: i32, _: i32, _: i32| Ok(NOT_FOUND),
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", |_c: C<'_>, _: i32| {
        Ok(NOT_FOUND)
    })?;
    linker.func_wrap("env", "proxy_grpc_close", |_c: C<'_>, _: i32| Ok(NOT_FOUND))?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, ret_code: i32, ret_ptr: i32, ret_len: i32| {
            // Only gRPC calls set a status, and none are made.
            if memory::write_u32(&mut c, ret_code, 0).is_err() {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            given(memory::give(&mut c, &[], ret_ptr, ret_len))
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, nptr: i32, nlen: i32, _a: i32, _al: i32, _rp: i32, _rl: i32| {
            let name = read_or_status!(&mut c, nptr, nlen);
            c.data().plugin.log(
                2,
                &format!(
                    "foreign function `{}` is not provided",
                    String::from_utf8_lossy(&name)
                ),
            );
            Ok(NOT_FOUND)
        },
    )?;
    Ok(())
}
