//! Stream control and local responses. Effects apply once the current guest
//! call returns.

use http::StatusCode;
use wasmtime::Linker;

use super::common::*;
use crate::exchange::{Exchange, LocalResponse};
use crate::plugin::proxywasm::instance::{ContextKind, HostState};
use crate::plugin::sandbox::Limit;

// Stream types.
const STREAM_HTTP_REQUEST: i32 = 0;
const STREAM_HTTP_RESPONSE: i32 = 1;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn!(linker, "env", "proxy_continue_stream", |c, kind: i32| {
        Ok(continue_stream(&c, kind))
    })?;
    host_fn!(linker, "env", "proxy_continue_request", |c| {
        Ok(continue_stream(&c, STREAM_HTTP_REQUEST))
    })?;
    host_fn!(linker, "env", "proxy_continue_response", |c| {
        Ok(continue_stream(&c, STREAM_HTTP_RESPONSE))
    })?;
    host_fn!(linker, "env", "proxy_close_stream", |c, kind: i32| {
        if !matches!(kind, STREAM_HTTP_REQUEST | STREAM_HTTP_RESPONSE) {
            return Ok(BAD_ARGUMENT);
        }
        let Some(ex) = c.data().current_exchange() else {
            return Ok(NOT_FOUND);
        };
        ex.lock().reset = true;
        ex.wake();
        Ok(OK)
    })?;
    host_fn!(linker, "env", "proxy_clear_route_cache", |_c| Ok(OK))?;
    host_fn!(
        linker,
        "env",
        "proxy_send_local_response",
        |c,
         code: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         grpc: i32| {
            let plugin = c.data().plugin.clone();
            let limits = &plugin.limits.host;
            if blen as u32 as usize > limits.max_body_bytes {
                plugin.limit_exceeded(Limit::BodyBytes);
                return Ok(BAD_ARGUMENT);
            }
            // The details only reach the log and the access log: a header's
            // worth is plenty.
            if dlen as u32 as usize > limits.max_header_bytes {
                plugin.limit_exceeded(Limit::HeaderBytes);
                return Ok(BAD_ARGUMENT);
            }
            let Ok(status) = StatusCode::from_u16(code as u32 as u16) else {
                return Ok(BAD_ARGUMENT);
            };
            if !(200..=599).contains(&status.as_u16()) {
                return Ok(BAD_ARGUMENT);
            }
            let headers = read_or_status!(&mut c, hptr, hlen);
            let Some(headers) = bounded_map(&plugin, &headers) else {
                return Ok(BAD_ARGUMENT);
            };
            let details = read_or_status!(&mut c, dptr, dlen);
            let body = read_or_status!(&mut c, bptr, blen);
            let Some(ex) = c.data().current_exchange() else {
                return Ok(NOT_FOUND);
            };
            let plugin = plugin.name.clone();
            ex.lock().local_response = Some(LocalResponse {
                status,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                    .collect(),
                body: body.into(),
                details: String::from_utf8_lossy(&details).into_owned(),
                plugin,
                grpc_status: u32::try_from(grpc).ok(),
            });
            ex.wake();
            Ok(OK)
        },
    )?;

    host_fn!(
        linker,
        "env",
        "proxy_set_effective_context",
        |c, ctx: i32| {
            let data = c.data_mut();
            if data.contexts.contains_key(&(ctx as u32)) {
                data.current = ctx as u32;
                Ok(OK)
            } else {
                Ok(BAD_ARGUMENT)
            }
        },
    )?;
    host_fn!(linker, "env", "proxy_done", |_c| Ok(OK))?;
    Ok(())
}

fn continue_stream(c: &C<'_>, kind: i32) -> i32 {
    let data = c.data();
    let Some(ContextKind::Http(ex)) = data.contexts.get(&data.current) else {
        return NOT_FOUND;
    };
    let ex: &Exchange = ex;
    {
        let mut st = ex.lock();
        match kind {
            STREAM_HTTP_REQUEST => st.resume_request = true,
            STREAM_HTTP_RESPONSE => st.resume_response = true,
            _ => return BAD_ARGUMENT,
        }
    }
    ex.wake();
    OK
}
