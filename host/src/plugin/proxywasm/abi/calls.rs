//! HTTP callouts, the gRPC calls this host refuses, and foreign functions.

use wasmtime::Linker;

use super::common::*;
use crate::plugin::callout::CalloutRequest;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::memory;
use crate::plugin::sandbox::{Limit, MAX_CALLOUTS_PER_CALL};

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Two names for one call: 0.2.0 and 0.2.1 spell it differently.
    host_fn!(
        linker,
        "env",
        "proxy_http_call",
        |c,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         tptr: i32,
         tlen: i32,
         timeout_ms: i32,
         ret_token: i32| {
            http_call(
                &mut c,
                [uptr, ulen, hptr, hlen, bptr, blen, tptr, tlen],
                timeout_ms,
                ret_token,
            )
        }
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_dispatch_http_call",
        |c,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         tptr: i32,
         tlen: i32,
         timeout_ms: i32,
         ret_token: i32| {
            http_call(
                &mut c,
                [uptr, ulen, hptr, hlen, bptr, blen, tptr, tlen],
                timeout_ms,
                ret_token,
            )
        }
    )?;

    // gRPC callouts are not offered yet. INTERNAL_FAILURE for starting one
    // and NOT_FOUND for a stream token are statuses the SDKs turn into
    // ordinary errors, so a plugin that tries sees a failed call, not a crash.
    host_fn!(
        linker,
        "env",
        "proxy_grpc_call",
        |c,
         _a1: i32,
         _a2: i32,
         _a3: i32,
         _a4: i32,
         _a5: i32,
         _a6: i32,
         _a7: i32,
         _a8: i32,
         _a9: i32,
         _a10: i32,
         _a11: i32,
         _a12: i32| {
            c.data()
                .plugin
                .log(3, "gRPC callouts are not supported by this waypoint");
            Ok(INTERNAL_FAILURE)
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_grpc_stream",
        |c,
         _a1: i32,
         _a2: i32,
         _a3: i32,
         _a4: i32,
         _a5: i32,
         _a6: i32,
         _a7: i32,
         _a8: i32,
         _a9: i32| {
            c.data()
                .plugin
                .log(3, "gRPC streams are not supported by this waypoint");
            Ok(INTERNAL_FAILURE)
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_grpc_send",
        |_c, _a1: i32, _a2: i32, _a3: i32, _a4: i32| Ok(NOT_FOUND),
    )?;
    host_fn!(linker, "env", "proxy_grpc_cancel", |_c, _a1: i32| {
        Ok(NOT_FOUND)
    })?;
    host_fn!(linker, "env", "proxy_grpc_close", |_c, _a1: i32| Ok(
        NOT_FOUND
    ))?;
    host_fn!(
        linker,
        "env",
        "proxy_get_status",
        |c, ret_code: i32, ret_ptr: i32, ret_len: i32| {
            // Only gRPC calls set a status, and none are made.
            if memory::write_u32(&mut c, ret_code, 0).is_err() {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            given(memory::give(&mut c, &[], ret_ptr, ret_len))
        },
    )?;

    host_fn!(
        linker,
        "env",
        "proxy_call_foreign_function",
        |c, nptr: i32, nlen: i32, _a: i32, _al: i32, _rp: i32, _rl: i32| {
            // No foreign function has a longer name: do not copy one.
            if nlen as u32 as usize > MAX_FOREIGN_NAME {
                return Ok(NOT_FOUND);
            }
            let name = read_or_status!(&mut c, nptr, nlen);
            let name = String::from_utf8_lossy(&name);
            Ok(foreign_function(&c, &name))
        },
    )?;
    Ok(())
}

const MAX_FOREIGN_NAME: usize = 64;

/// The foreign functions Envoy registers, and what this host does for each.
/// One that does not exist answers NOT_FOUND, as in Envoy; those Envoy has
/// and this host does not answer NOT_FOUND too (the SDKs' "not available"),
/// with a log line saying so.
fn foreign_function(c: &C<'_>, name: &str) -> i32 {
    match name {
        // Routing is decided after the request headers phase from what the
        // plugins left, so there is no cached route to clear.
        "clear_route_cache" => OK,
        // zlib, CEL expressions, typed filter state and signatures need
        // Envoy's protobuf argument formats or libraries not linked here.
        "compress"
        | "uncompress"
        | "declare_property"
        | "set_envoy_filter_state"
        | "expr_create"
        | "expr_evaluate"
        | "expr_delete"
        | "sign"
        | "verify_signature" => {
            c.data().plugin.log(
                2,
                &format!("foreign function `{name}` exists in Envoy but not in this waypoint"),
            );
            NOT_FOUND
        }
        _ => {
            c.data()
                .plugin
                .log(2, &format!("foreign function `{name}` is not provided"));
            NOT_FOUND
        }
    }
}

/// `dispatch_http_call`: the request is recorded and started once the guest
/// call returns. Statuses are those the Rust SDK turns into errors
/// (BAD_ARGUMENT, INTERNAL_FAILURE) rather than panics.
fn http_call(
    c: &mut C<'_>,
    [uptr, ulen, hptr, hlen, bptr, blen, tptr, tlen]: [i32; 8],
    timeout_ms: i32,
    ret_token: i32,
) -> wasmtime::Result<i32> {
    let plugin = c.data().plugin.clone();
    let limits = &plugin.limits.host;
    if c.data().pending_callouts.len() >= MAX_CALLOUTS_PER_CALL {
        plugin.limit_exceeded(Limit::Callouts);
        return Ok(INTERNAL_FAILURE);
    }
    if blen as u32 as usize > limits.max_body_bytes {
        plugin.limit_exceeded(Limit::BodyBytes);
        return Ok(BAD_ARGUMENT);
    }
    let upstream = read_or_status!(c, uptr, ulen);
    let headers = read_or_status!(c, hptr, hlen);
    let trailers = read_or_status!(c, tptr, tlen);
    let (headers, trailers) = match (
        bounded_map(&plugin, &headers),
        bounded_map(&plugin, &trailers),
    ) {
        (Some(h), Some(t)) => (h, t),
        _ => return Ok(BAD_ARGUMENT),
    };
    let body = read_or_status!(c, bptr, blen);
    let upstream = String::from_utf8_lossy(&upstream).into_owned();
    let Some(target) = plugin.callouts.upstream(&upstream) else {
        plugin.log(
            3,
            &format!("dispatch_http_call: no upstream named `{upstream}` is configured"),
        );
        return Ok(BAD_ARGUMENT);
    };
    let Some(req) = CalloutRequest::new(target, headers, body, trailers, timeout_ms as u32) else {
        return Ok(BAD_ARGUMENT);
    };
    let data = c.data_mut();
    data.next_callout_token = data.next_callout_token.wrapping_add(1).max(1);
    let token = data.next_callout_token;
    let ctx = data.current;
    data.pending_callouts.push((ctx, token, req));
    if memory::write_u32(c, ret_token, token).is_err() {
        c.data_mut().pending_callouts.pop();
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}
