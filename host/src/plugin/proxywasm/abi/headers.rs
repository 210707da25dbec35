//! Header and trailer maps, with pseudo-headers mapped onto the request and
//! response heads.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use wasmtime::Linker;

use super::common::*;
use crate::exchange::ExchangeState;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::{maps, memory};

// Map types.
const HTTP_REQUEST_HEADERS: i32 = 0;
const HTTP_REQUEST_TRAILERS: i32 = 1;
const HTTP_RESPONSE_HEADERS: i32 = 2;
const HTTP_RESPONSE_TRAILERS: i32 = 3;
const GRPC_RECEIVE_INITIAL_METADATA: i32 = 4;
const GRPC_RECEIVE_TRAILING_METADATA: i32 = 5;
const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
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

    Ok(())
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
