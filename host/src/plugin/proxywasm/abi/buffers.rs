//! Buffers: bodies, configuration and callout answers.

use bytes::BytesMut;
use wasmtime::Linker;

use super::common::*;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::memory;
use crate::plugin::sandbox::Limit;

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

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        "env",
        "proxy_get_buffer_bytes",
        |c, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32| {
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
    host_fn!(
        linker,
        "env",
        "proxy_get_buffer_status",
        |c, kind: i32, ret_len: i32, ret_flags: i32| {
            let Some(len) = buffer_len(&c, kind) else {
                return Ok(if known_buffer(kind) {
                    NOT_FOUND
                } else {
                    BAD_ARGUMENT
                });
            };
            // No flags are defined; Envoy always answers 0.
            let r = memory::write_u32(&mut c, ret_len, len as u32)
                .and_then(|_| memory::write_u32(&mut c, ret_flags, 0));
            Ok(status_of(r))
        },
    )?;
    // ABI 0.1.0's way to read the plugin configuration.
    host_fn!(
        linker,
        "env",
        "proxy_get_configuration",
        |c, ret_ptr: i32, ret_len: i32| {
            let config = c.data().plugin.plugin_config.clone();
            given(memory::give(&mut c, &config, ret_ptr, ret_len))
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_set_buffer_bytes",
        |c, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
            let plugin = c.data().plugin.clone();
            let max = plugin.limits.host.max_body_bytes;
            let len_bytes = len as u32 as usize;
            if len_bytes > max {
                plugin.limit_exceeded(Limit::BodyBytes);
                return Ok(BAD_ARGUMENT);
            }
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
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            // The Rust SDK panics on any status but OK from set_buffer;
            // BAD_ARGUMENT is one it knows, for a body no filter should grow
            // past the limit the pipeline buffers anyway.
            if spliced_len(buf.len(), start, size, len_bytes) > max {
                plugin.limit_exceeded(Limit::BodyBytes);
                return Ok(BAD_ARGUMENT);
            }
            splice(buf, start, size, &data);
            Ok(OK)
        },
    )?;
    Ok(())
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
        GRPC_RECEIVE_BUFFER => data.grpc.receive_buffer.as_ref().map(|b| b.to_vec()),
        VM_CONFIGURATION => Some(data.plugin.vm_config.clone()),
        PLUGIN_CONFIGURATION => Some(data.plugin.plugin_config.clone()),
        _ => None,
    }
}

/// The length of a buffer, without copying it.
fn buffer_len(c: &C<'_>, kind: i32) -> Option<usize> {
    let data = c.data();
    match kind {
        HTTP_REQUEST_BODY => Some(data.current_exchange()?.lock().request_body.len()),
        HTTP_RESPONSE_BODY => Some(data.current_exchange()?.lock().response_body.len()),
        HTTP_CALL_RESPONSE_BODY => data.call_response.as_ref().map(|r| r.body.len()),
        VM_CONFIGURATION => Some(data.plugin.vm_config.len()),
        PLUGIN_CONFIGURATION => Some(data.plugin.plugin_config.len()),
        _ => None,
    }
}

/// The length `splice` leaves.
fn spliced_len(len: usize, start: usize, size: usize, data: usize) -> usize {
    let start = start.min(len);
    let end = start.saturating_add(size).min(len);
    len - (end - start) + data
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
            let predicted = spliced_len(b.len(), *start, *size, data.len());
            splice(&mut b, *start, *size, data.as_bytes());
            assert_eq!(&b[..], want.as_bytes(), "{orig} {start} {size} {data}");
            assert_eq!(predicted, b.len(), "{orig} {start} {size} {data}");
        }
    }
}
