//! The host side of the Proxy-Wasm ABI 0.2.1: every function a plugin may
//! import from module `env`.
//!
//! Conventions: pointers and lengths come from the guest and are checked on
//! every use (a bad one is `INVALID_MEMORY_ACCESS`). A host function returns
//! a status code; it returns an error (trapping the guest) only when the
//! guest's own allocator misbehaves, since the instance can no longer be
//! trusted then. Status codes are chosen among those the SDKs handle for
//! each call: the Rust SDK panics on any other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use wasmtime::{Caller, Linker};

use super::instance::{ContextKind, HostState};
use super::memory::{self, GiveError};
use super::{maps, properties};
use crate::exchange::{Exchange, ExchangeState, LocalResponse};
use crate::plugin::callout::CalloutRequest;
use crate::plugin::shared::{CasError, QueueError};

pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
}
use status::*;

// Buffer types.
const HTTP_REQUEST_BODY: i32 = 0;
const HTTP_RESPONSE_BODY: i32 = 1;
const DOWNSTREAM_DATA: i32 = 2;
const UPSTREAM_DATA: i32 = 3;
const HTTP_CALL_RESPONSE_BODY: i32 = 4;
const GRPC_RECEIVE_BUFFER: i32 = 5;
const VM_CONFIGURATION: i32 = 6;
const PLUGIN_CONFIGURATION: i32 = 7;
const CALL_DATA: i32 = 8;

// Map types.
const HTTP_REQUEST_HEADERS: i32 = 0;
const HTTP_REQUEST_TRAILERS: i32 = 1;
const HTTP_RESPONSE_HEADERS: i32 = 2;
const HTTP_RESPONSE_TRAILERS: i32 = 3;
const GRPC_RECEIVE_INITIAL_METADATA: i32 = 4;
const GRPC_RECEIVE_TRAILING_METADATA: i32 = 5;
const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;

// Stream types.
const STREAM_HTTP_REQUEST: i32 = 0;
const STREAM_HTTP_RESPONSE: i32 = 1;

type C<'a> = Caller<'a, HostState>;
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Turns a failure to hand data to the guest into a status or a trap.
fn given(r: Result<(), GiveError>) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(OK),
        Err(GiveError::OutOfBounds) => Ok(INVALID_MEMORY_ACCESS),
        Err(GiveError::Allocator(e)) => Err(e),
    }
}

macro_rules! read_or_status {
    ($caller:expr, $ptr:expr, $len:expr) => {
        match memory::read($caller, $ptr, $len) {
            Ok(b) => b,
            Err(_) => return Ok(INVALID_MEMORY_ACCESS),
        }
    };
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| {
            let msg = read_or_status!(&mut c, ptr, len);
            c.data().plugin.log(level, &String::from_utf8_lossy(&msg));
            Ok(OK)
        },
    )?;
    linker.func_wrap("env", "proxy_get_log_level", |mut c: C<'_>, ret: i32| {
        let level = c.data().plugin.log_level();
        Ok(status_of(memory::write_u32(&mut c, ret, level)))
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            Ok(status_of(memory::write_u64(&mut c, ret, now)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| {
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

    // Buffers.
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32| {
            let Some(bytes) = read_buffer(&c, kind) else {
                return Ok(if known_buffer(kind) {
                    NOT_FOUND
                } else {
                    BAD_ARGUMENT
                });
            };
            let start = (start as u32 as usize).min(bytes.len());
            let end = start.saturating_add(max as u32 as usize).min(bytes.len());
            given(memory::give(&mut c, &bytes[start..end], ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
            let data = read_or_status!(&mut c, ptr, len);
            let Some(ex) = c.data().current_exchange() else {
                return Ok(NOT_FOUND);
            };
            let mut st = ex.lock();
            let buf = match kind {
                HTTP_REQUEST_BODY => &mut st.request_body,
                HTTP_RESPONSE_BODY => &mut st.response_body,
                _ => return Ok(BAD_ARGUMENT),
            };
            splice(buf, start as u32 as usize, size as u32 as usize, &data);
            Ok(OK)
        },
    )?;

    // Header maps.
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, kind: i32, ret_ptr: i32, ret_len: i32| {
            let Some(pairs) = read_map(&c, kind) else {
                return Ok(BAD_ARGUMENT);
            };
            let bytes = maps::encode(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            given(memory::give(&mut c, &bytes, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, kind: i32, ptr: i32, len: i32| {
            let raw = read_or_status!(&mut c, ptr, len);
            let Some(pairs) = maps::decode(&raw) else {
                return Ok(BAD_ARGUMENT);
            };
            Ok(edit_map(&c, kind, |m| {
                m.clear();
                pairs.iter().try_for_each(|(k, v)| m.add(k, v))
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, kind: i32, kptr: i32, klen: i32, ret_ptr: i32, ret_len: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            let Some(pairs) = read_map(&c, kind) else {
                return Ok(BAD_ARGUMENT);
            };
            let key = key.to_ascii_lowercase();
            match pairs.iter().find(|(k, _)| *k == key) {
                Some((_, v)) => {
                    let v = v.clone();
                    given(memory::give(&mut c, &v, ret_ptr, ret_len))
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            let value = read_or_status!(&mut c, vptr, vlen);
            Ok(edit_map(&c, kind, |m| m.replace(&key, &value)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            let value = read_or_status!(&mut c, vptr, vlen);
            Ok(edit_map(&c, kind, |m| m.add(&key, &value)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, kind: i32, kptr: i32, klen: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            Ok(edit_map(&c, kind, |m| {
                m.remove(&key);
                Ok(())
            }))
        },
    )?;

    // Properties.
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pptr: i32, plen: i32, ret_ptr: i32, ret_len: i32| {
            let path = read_or_status!(&mut c, pptr, plen);
            match properties::get(c.data(), &path) {
                Some(v) => given(memory::give(&mut c, &v, ret_ptr, ret_len)),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pptr: i32, plen: i32, vptr: i32, vlen: i32| {
            let path = read_or_status!(&mut c, pptr, plen);
            let value = read_or_status!(&mut c, vptr, vlen);
            properties::set(c.data_mut(), &path, value);
            Ok(OK)
        },
    )?;

    // Shared data.
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            let key = String::from_utf8_lossy(&key);
            let Some((value, cas)) = c.data().plugin.shared.get(&key) else {
                return Ok(NOT_FOUND);
            };
            if memory::write_u32(&mut c, ret_cas, cas).is_err() {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            given(memory::give(&mut c, &value, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            let value = read_or_status!(&mut c, vptr, vlen);
            let key = String::from_utf8_lossy(&key);
            match c.data().plugin.shared.set(&key, value, cas as u32) {
                Ok(()) => Ok(OK),
                Err(CasError::Mismatch) => Ok(CAS_MISMATCH),
            }
        },
    )?;

    // Shared queues.
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, nptr: i32, nlen: i32, ret_id: i32| {
            let name = read_or_status!(&mut c, nptr, nlen);
            let data = c.data();
            let id = data.plugin.shared.register_queue(
                &data.plugin.vm_id,
                &String::from_utf8_lossy(&name),
                data.self_ref.clone(),
                data.root_id,
            );
            Ok(status_of(memory::write_u32(&mut c, ret_id, id)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vptr: i32, vlen: i32, nptr: i32, nlen: i32, ret_id: i32| {
            let vm_id = read_or_status!(&mut c, vptr, vlen);
            let name = read_or_status!(&mut c, nptr, nlen);
            let id = c.data().plugin.shared.resolve_queue(
                &String::from_utf8_lossy(&vm_id),
                &String::from_utf8_lossy(&name),
            );
            match id {
                Some(id) => Ok(status_of(memory::write_u32(&mut c, ret_id, id))),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ret_ptr: i32, ret_len: i32| match c
            .data()
            .plugin
            .shared
            .dequeue(id as u32)
        {
            Ok(Some(item)) => given(memory::give(&mut c, &item, ret_ptr, ret_len)),
            Ok(None) => Ok(EMPTY),
            Err(_) => Ok(NOT_FOUND),
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, ptr: i32, len: i32| {
            let item = read_or_status!(&mut c, ptr, len);
            match c.data().plugin.shared.enqueue(id as u32, item) {
                Ok((owner, root)) => {
                    if let Some(owner) = owner.upgrade() {
                        owner.notify_queue(root, id as u32);
                    }
                    Ok(OK)
                }
                Err(QueueError::NotFound) => Ok(NOT_FOUND),
                // The SDKs know no "full" status; refusing the item as a
                // bad argument is the closest they handle.
                Err(QueueError::Full) => Ok(NOT_FOUND),
            }
        },
    )?;

    // Stream control. Effects apply once the current guest call returns.
    linker.func_wrap("env", "proxy_continue_stream", |c: C<'_>, kind: i32| {
        Ok(continue_stream(&c, kind))
    })?;
    linker.func_wrap("env", "proxy_continue_request", |c: C<'_>| {
        Ok(continue_stream(&c, STREAM_HTTP_REQUEST))
    })?;
    linker.func_wrap("env", "proxy_continue_response", |c: C<'_>| {
        Ok(continue_stream(&c, STREAM_HTTP_RESPONSE))
    })?;
    linker.func_wrap("env", "proxy_close_stream", |c: C<'_>, kind: i32| {
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
    linker.func_wrap("env", "proxy_clear_route_cache", |_c: C<'_>| Ok(OK))?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         grpc: i32| {
            let details = read_or_status!(&mut c, dptr, dlen);
            let body = read_or_status!(&mut c, bptr, blen);
            let headers = read_or_status!(&mut c, hptr, hlen);
            let Ok(status) = StatusCode::from_u16(code as u32 as u16) else {
                return Ok(BAD_ARGUMENT);
            };
            if !(200..=599).contains(&status.as_u16()) {
                return Ok(BAD_ARGUMENT);
            }
            let Some(headers) = maps::decode(&headers) else {
                return Ok(BAD_ARGUMENT);
            };
            let Some(ex) = c.data().current_exchange() else {
                return Ok(NOT_FOUND);
            };
            let plugin = c.data().plugin.name.clone();
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

    // HTTP callouts.
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
        "proxy_set_effective_context",
        |mut c: C<'_>, ctx: i32| {
            let data = c.data_mut();
            if data.contexts.contains_key(&(ctx as u32)) {
                data.current = ctx as u32;
                Ok(OK)
            } else {
                Ok(BAD_ARGUMENT)
            }
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
    linker.func_wrap("env", "proxy_done", |_c: C<'_>| Ok(OK))?;

    // Metrics.
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

fn status_of(r: Result<(), memory::OutOfBounds>) -> i32 {
    match r {
        Ok(()) => OK,
        Err(_) => INVALID_MEMORY_ACCESS,
    }
}

fn metric_status(r: Result<(), crate::metrics::PluginMetricError>) -> i32 {
    use crate::metrics::PluginMetricError as E;
    match r {
        Ok(()) => OK,
        Err(E::NotFound) => NOT_FOUND,
        Err(E::BadArgument) => BAD_ARGUMENT,
    }
}

fn known_buffer(kind: i32) -> bool {
    matches!(
        kind,
        HTTP_REQUEST_BODY
            | HTTP_RESPONSE_BODY
            | DOWNSTREAM_DATA
            | UPSTREAM_DATA
            | HTTP_CALL_RESPONSE_BODY
            | GRPC_RECEIVE_BUFFER
            | VM_CONFIGURATION
            | PLUGIN_CONFIGURATION
            | CALL_DATA
    )
}

fn read_buffer(c: &C<'_>, kind: i32) -> Option<Vec<u8>> {
    let data = c.data();
    match kind {
        HTTP_REQUEST_BODY => Some(data.current_exchange()?.lock().request_body.to_vec()),
        HTTP_RESPONSE_BODY => Some(data.current_exchange()?.lock().response_body.to_vec()),
        HTTP_CALL_RESPONSE_BODY => data.call_response.as_ref().map(|r| r.body.to_vec()),
        VM_CONFIGURATION => Some(data.plugin.vm_config.clone()),
        PLUGIN_CONFIGURATION => Some(data.plugin.plugin_config.clone()),
        _ => None,
    }
}

/// Reads a map as pairs; `None` for an unknown map type. A map that does
/// not exist (yet) reads as empty: the SDKs treat any other status from
/// this call as fatal.
fn read_map(c: &C<'_>, kind: i32) -> Option<Pairs> {
    let data = c.data();
    let from_headers = |h: &HeaderMap| -> Pairs {
        h.iter()
            .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    };
    let exchange = data.current_exchange();
    let with_ex = |f: &dyn Fn(&ExchangeState) -> Pairs| -> Pairs {
        exchange
            .as_ref()
            .map(|ex| f(&ex.lock()))
            .unwrap_or_default()
    };
    Some(match kind {
        HTTP_REQUEST_HEADERS => with_ex(&|st| {
            let r = &st.request;
            let mut out = vec![
                (b":authority".to_vec(), r.authority.as_bytes().to_vec()),
                (b":path".to_vec(), r.path.as_bytes().to_vec()),
                (b":method".to_vec(), r.method.as_str().as_bytes().to_vec()),
                (b":scheme".to_vec(), r.scheme.as_bytes().to_vec()),
            ];
            out.extend(from_headers(&r.headers));
            out
        }),
        HTTP_REQUEST_TRAILERS => with_ex(&|st| {
            st.request_trailers
                .as_ref()
                .map(from_headers)
                .unwrap_or_default()
        }),
        HTTP_RESPONSE_HEADERS => with_ex(&|st| match &st.response {
            Some(r) => {
                let mut out = vec![(b":status".to_vec(), r.status.as_str().as_bytes().to_vec())];
                out.extend(from_headers(&r.headers));
                out
            }
            None => Vec::new(),
        }),
        HTTP_RESPONSE_TRAILERS => with_ex(&|st| {
            st.response_trailers
                .as_ref()
                .map(from_headers)
                .unwrap_or_default()
        }),
        GRPC_RECEIVE_INITIAL_METADATA | GRPC_RECEIVE_TRAILING_METADATA => Vec::new(),
        HTTP_CALL_RESPONSE_HEADERS => data
            .call_response
            .as_ref()
            .map(|r| r.headers.clone())
            .unwrap_or_default(),
        HTTP_CALL_RESPONSE_TRAILERS => data
            .call_response
            .as_ref()
            .map(|r| r.trailers.clone())
            .unwrap_or_default(),
        _ => return None,
    })
}

/// A header map being edited, with its pseudo-headers mapped onto the
/// request or response head they stand for.
enum MapRef<'a> {
    Request(&'a mut ExchangeState),
    Response(&'a mut ExchangeState),
    Plain(&'a mut HeaderMap),
}

struct BadValue;

impl MapRef<'_> {
    fn headers(&mut self) -> &mut HeaderMap {
        match self {
            MapRef::Request(st) => &mut st.request.headers,
            MapRef::Response(st) => &mut st.response.as_mut().expect("checked by edit_map").headers,
            MapRef::Plain(h) => h,
        }
    }

    fn set_pseudo(&mut self, key: &[u8], value: &[u8]) -> Result<(), BadValue> {
        let v = std::str::from_utf8(value).map_err(|_| BadValue)?;
        match (self, key) {
            (MapRef::Request(st), b":path") if v.starts_with('/') || v == "*" => {
                st.request.path = v.to_owned()
            }
            (MapRef::Request(st), b":method") => {
                st.request.method = Method::from_bytes(value).map_err(|_| BadValue)?
            }
            (MapRef::Request(st), b":authority") if !v.is_empty() => {
                st.request.authority = v.to_owned()
            }
            (MapRef::Request(st), b":scheme") if matches!(v, "http" | "https") => {
                st.request.scheme = v.to_owned()
            }
            (MapRef::Response(st), b":status") => {
                let code: u16 = v.parse().map_err(|_| BadValue)?;
                let status = StatusCode::from_u16(code).map_err(|_| BadValue)?;
                st.response.as_mut().expect("checked by edit_map").status = status;
            }
            _ => return Err(BadValue),
        }
        Ok(())
    }

    fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), BadValue> {
        if key.starts_with(b":") {
            return self.set_pseudo(key, value);
        }
        let (k, v) = header(key, value)?;
        self.headers().append(k, v);
        Ok(())
    }

    fn replace(&mut self, key: &[u8], value: &[u8]) -> Result<(), BadValue> {
        if key.starts_with(b":") {
            return self.set_pseudo(key, value);
        }
        let (k, v) = header(key, value)?;
        self.headers().insert(k, v);
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) {
        // Pseudo-headers cannot be removed; like Envoy, ignore the request.
        if let Ok(k) = HeaderName::from_bytes(key) {
            self.headers().remove(k);
        }
    }

    fn clear(&mut self) {
        self.headers().clear();
    }
}

fn header(key: &[u8], value: &[u8]) -> Result<(HeaderName, HeaderValue), BadValue> {
    Ok((
        HeaderName::from_bytes(key).map_err(|_| BadValue)?,
        HeaderValue::from_bytes(value).map_err(|_| BadValue)?,
    ))
}

fn edit_map(c: &C<'_>, kind: i32, f: impl FnOnce(&mut MapRef<'_>) -> Result<(), BadValue>) -> i32 {
    let Some(ex) = c.data().current_exchange() else {
        return NOT_FOUND;
    };
    let mut st = ex.lock();
    let st: &mut ExchangeState = &mut st;
    let mut scratch;
    let mut map = match kind {
        HTTP_REQUEST_HEADERS => MapRef::Request(st),
        HTTP_RESPONSE_HEADERS if st.response.is_some() => MapRef::Response(st),
        HTTP_RESPONSE_HEADERS => return NOT_FOUND,
        HTTP_REQUEST_TRAILERS => {
            MapRef::Plain(st.request_trailers.get_or_insert_with(HeaderMap::new))
        }
        HTTP_RESPONSE_TRAILERS => {
            MapRef::Plain(st.response_trailers.get_or_insert_with(HeaderMap::new))
        }
        HTTP_CALL_RESPONSE_HEADERS | HTTP_CALL_RESPONSE_TRAILERS => {
            // Editing a callout's answer changes nothing anyone reads.
            scratch = HeaderMap::new();
            MapRef::Plain(&mut scratch)
        }
        _ => return BAD_ARGUMENT,
    };
    match f(&mut map) {
        Ok(()) => OK,
        Err(BadValue) => BAD_ARGUMENT,
    }
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

/// Replaces `size` bytes at `start` with `data`, as Envoy does: a start
/// past the end appends, a size past the end replaces the rest.
pub(crate) fn splice(buf: &mut BytesMut, start: usize, size: usize, data: &[u8]) {
    let start = start.min(buf.len());
    let end = start.saturating_add(size).min(buf.len());
    if start == 0 && end == buf.len() {
        buf.clear();
        buf.extend_from_slice(data);
        return;
    }
    let tail = buf.split_off(end);
    buf.truncate(start);
    buf.extend_from_slice(data);
    buf.unsplit(tail);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_like_envoy() {
        let cases: &[(&str, usize, usize, &str, &str)] = &[
            ("hello", 0, 5, "bye", "bye"),
            ("hello", 0, 100, "bye", "bye"),
            ("hello", 5, 0, "!", "hello!"),
            ("hello", 99, 0, "!", "hello!"),
            ("hello", 1, 3, "ipp", "hippo"),
            ("hello", 0, 0, ">", ">hello"),
            ("", 0, 0, "x", "x"),
        ];
        for (orig, start, size, data, want) in cases {
            let mut b = BytesMut::from(*orig);
            splice(&mut b, *start, *size, data.as_bytes());
            assert_eq!(&b[..], want.as_bytes(), "{orig} {start} {size} {data}");
        }
    }
}
