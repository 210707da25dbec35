//! HTTP callouts and foreign functions (gRPC callouts are in `grpc`).

use wasmtime::Linker;

use super::common::*;
use crate::plugin::callout::CalloutRequest;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::memory;
use crate::plugin::sandbox::{Limit, MAX_CALLOUTS_PER_CALL};

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Two names for one call: 0.2.0 and 0.2.1 spell it differently.
    for name in ["proxy_http_call", "proxy_dispatch_http_call"] {
        host_fn!(
            linker,
            "env",
            name,
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
    }

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
    // Multiples of 4, as Envoy numbers HTTP callouts: gRPC call and stream
    // tokens use the other low bits, so no two callouts share a token.
    data.next_callout_token = data.next_callout_token.wrapping_add(4).max(4);
    let token = data.next_callout_token;
    let ctx = data.current;
    data.pending_callouts.push((ctx, token, req));
    if memory::write_u32(c, ret_token, token).is_err() {
        c.data_mut().pending_callouts.pop();
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}
