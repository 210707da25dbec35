//! Header and trailer maps, with pseudo-headers mapped onto the request and
//! response heads.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use wasmtime::Linker;

use super::common::*;
use crate::exchange::ExchangeState;
use crate::plugin::PluginShared;
use crate::plugin::proxywasm::instance::HostState;
use crate::plugin::proxywasm::maps::{self, MapError};
use crate::plugin::proxywasm::memory;
use crate::plugin::sandbox::{HostLimits, Limit};

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

/// The most pseudo-headers a request map carries (`:authority`, `:path`,
/// `:method`, `:scheme`, and `:protocol` for extended CONNECT).
const PSEUDO_HEADERS: usize = 5;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        "env",
        "proxy_get_header_map_pairs",
        |c, kind: i32, ret_ptr: i32, ret_len: i32| {
            let Some(pairs) = read_map(&c, kind) else {
                return Ok(BAD_ARGUMENT);
            };
            let bytes = maps::encode(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            given(memory::give(&mut c, &bytes, ret_ptr, ret_len))
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_set_header_map_pairs",
        |c, kind: i32, ptr: i32, len: i32| {
            let raw = read_or_status!(&mut c, ptr, len);
            let plugin = c.data().plugin.clone();
            // Pseudo-headers travel in the same list but are not stored as
            // headers: allow for them in the count.
            let limits = &plugin.limits.host;
            let pairs = match maps::decode_bounded(
                &raw,
                limits.max_headers + PSEUDO_HEADERS,
                limits.max_header_bytes,
            ) {
                Ok(pairs) => pairs,
                Err(MapError::Malformed) => return Ok(BAD_ARGUMENT),
                Err(MapError::TooManyPairs) => return Ok(refused(&plugin, Limit::Headers)),
                Err(MapError::TooManyBytes) => return Ok(refused(&plugin, Limit::HeaderBytes)),
            };
            if pairs.iter().filter(|(k, _)| !k.starts_with(b":")).count() > limits.max_headers {
                return Ok(refused(&plugin, Limit::Headers));
            }
            Ok(edit_map(&c, kind, |m, limits| {
                m.clear();
                pairs.iter().try_for_each(|(k, v)| m.add(k, v, limits))
            }))
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_get_header_map_value",
        |c, kind: i32, kptr: i32, klen: i32, ret_ptr: i32, ret_len: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            let key = key.to_ascii_lowercase();
            // One value looked up in place: copying the whole map for one
            // lookup was the plugin path's largest host cost.
            let Some(pairs) = read_value(&c, kind, &key) else {
                return Ok(BAD_ARGUMENT);
            };
            match pairs {
                Some(v) => given(memory::give(&mut c, &v, ret_ptr, ret_len)),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_replace_header_map_value",
        |c, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            if let Some(status) = too_long(&c, klen, vlen) {
                return Ok(status);
            }
            let key = read_or_status!(&mut c, kptr, klen);
            let value = read_or_status!(&mut c, vptr, vlen);
            Ok(edit_map(&c, kind, |m, limits| {
                m.replace(&key, &value, limits)
            }))
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_add_header_map_value",
        |c, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            if let Some(status) = too_long(&c, klen, vlen) {
                return Ok(status);
            }
            let key = read_or_status!(&mut c, kptr, klen);
            let value = read_or_status!(&mut c, vptr, vlen);
            Ok(edit_map(&c, kind, |m, limits| m.add(&key, &value, limits)))
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_remove_header_map_value",
        |c, kind: i32, kptr: i32, klen: i32| {
            let key = read_or_status!(&mut c, kptr, klen);
            Ok(edit_map(&c, kind, |m, _| {
                m.remove(&key);
                Ok(())
            }))
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_get_header_map_size",
        |c, kind: i32, ret: i32| {
            match map_bytes(&c, kind) {
                Some(size) => Ok(status_of(memory::write_u32(&mut c, ret, size as u32))),
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;

    Ok(())
}

/// Envoy's size of a map: the bytes of its names and values, pseudo-headers
/// included. Only the maps a plugin may edit have one, and only once they
/// exist; `None` (BAD_ARGUMENT, as Envoy) otherwise.
fn map_bytes(c: &C<'_>, kind: i32) -> Option<usize> {
    let ex = c.data().current_exchange()?;
    let st = ex.lock();
    let exists = match kind {
        HTTP_REQUEST_HEADERS => true,
        HTTP_REQUEST_TRAILERS => st.request_trailers.is_some(),
        HTTP_RESPONSE_HEADERS => st.response.is_some(),
        HTTP_RESPONSE_TRAILERS => st.response_trailers.is_some(),
        _ => false,
    };
    drop(st);
    if !exists {
        return None;
    }
    let pairs = read_map(c, kind)?;
    Some(pairs.iter().map(|(k, v)| k.len() + v.len()).sum())
}

/// The first value of `key` (lower case) in a map, without copying the map:
/// `None` for an unknown map type, `Some(None)` when the key is absent. Gives
/// what [`read_map`] followed by a search would.
fn read_value(c: &C<'_>, kind: i32, key: &[u8]) -> Option<Option<Vec<u8>>> {
    let data = c.data();
    let in_headers = |h: &HeaderMap| -> Option<Vec<u8>> {
        let name = http::header::HeaderName::from_bytes(key).ok()?;
        h.get(name).map(|v| v.as_bytes().to_vec())
    };
    let in_pairs =
        |p: &Pairs| -> Option<Vec<u8>> { p.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()) };
    let exchange = data.current_exchange();
    let with_ex = |f: &dyn Fn(&ExchangeState) -> Option<Vec<u8>>| -> Option<Vec<u8>> {
        exchange.as_ref().and_then(|ex| f(&ex.lock()))
    };
    Some(match kind {
        HTTP_REQUEST_HEADERS => with_ex(&|st| {
            let r = &st.request;
            match key {
                b":authority" => Some(r.authority.as_bytes().to_vec()),
                b":path" => Some(r.path.as_bytes().to_vec()),
                b":method" => Some(r.method.as_str().as_bytes().to_vec()),
                b":scheme" => Some(r.scheme.as_bytes().to_vec()),
                _ => in_headers(&r.headers),
            }
        }),
        HTTP_REQUEST_TRAILERS => with_ex(&|st| st.request_trailers.as_ref().and_then(in_headers)),
        HTTP_RESPONSE_HEADERS => with_ex(&|st| {
            let r = st.response.as_ref()?;
            match key {
                b":status" => Some(r.status.as_str().as_bytes().to_vec()),
                _ => in_headers(&r.headers),
            }
        }),
        HTTP_RESPONSE_TRAILERS => with_ex(&|st| st.response_trailers.as_ref().and_then(in_headers)),
        GRPC_RECEIVE_INITIAL_METADATA => data.grpc.initial_metadata.as_ref().and_then(in_pairs),
        GRPC_RECEIVE_TRAILING_METADATA => data.grpc.trailing_metadata.as_ref().and_then(in_pairs),
        HTTP_CALL_RESPONSE_HEADERS => data
            .call_response
            .as_ref()
            .and_then(|r| in_pairs(&r.headers)),
        HTTP_CALL_RESPONSE_TRAILERS => data
            .call_response
            .as_ref()
            .and_then(|r| in_pairs(&r.trailers)),
        _ => return None,
    })
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
        GRPC_RECEIVE_INITIAL_METADATA => data.grpc.initial_metadata.clone().unwrap_or_default(),
        GRPC_RECEIVE_TRAILING_METADATA => data.grpc.trailing_metadata.clone().unwrap_or_default(),
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

/// Why an edit was refused: a value no header may have, or a limit.
enum EditError {
    BadValue,
    Limit(Limit),
}

struct BadValue;

impl From<BadValue> for EditError {
    fn from(_: BadValue) -> EditError {
        EditError::BadValue
    }
}

/// Checks that `headers`, without the entries named `replacing`, has room
/// for one more entry of `added` bytes.
fn room_for(
    headers: &HeaderMap,
    replacing: Option<&HeaderName>,
    added: usize,
    limits: &HostLimits,
) -> Result<(), EditError> {
    let (mut count, mut bytes) = (0usize, 0usize);
    for (k, v) in headers {
        if Some(k) != replacing {
            count += 1;
            bytes += k.as_str().len() + v.len();
        }
    }
    if count + 1 > limits.max_headers {
        return Err(EditError::Limit(Limit::Headers));
    }
    if bytes + added > limits.max_header_bytes {
        return Err(EditError::Limit(Limit::HeaderBytes));
    }
    Ok(())
}

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

    fn add(&mut self, key: &[u8], value: &[u8], limits: &HostLimits) -> Result<(), EditError> {
        if key.starts_with(b":") {
            return Ok(self.set_pseudo(key, value)?);
        }
        let (k, v) = header(key, value)?;
        room_for(self.headers(), None, key.len() + value.len(), limits)?;
        self.headers().append(k, v);
        Ok(())
    }

    fn replace(&mut self, key: &[u8], value: &[u8], limits: &HostLimits) -> Result<(), EditError> {
        if key.starts_with(b":") {
            return Ok(self.set_pseudo(key, value)?);
        }
        let (k, v) = header(key, value)?;
        room_for(self.headers(), Some(&k), key.len() + value.len(), limits)?;
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

/// Counts a refusal and answers BAD_ARGUMENT: the Rust SDK panics on
/// every status but OK from the map setters, so no status would let it go
/// on; this one at least names the call's fault.
fn refused(plugin: &PluginShared, limit: Limit) -> i32 {
    plugin.limit_exceeded(limit);
    BAD_ARGUMENT
}

/// A key and value that could never fit are refused before being copied.
fn too_long(c: &C<'_>, klen: i32, vlen: i32) -> Option<i32> {
    let plugin = &c.data().plugin;
    let total = (klen as u32 as usize).saturating_add(vlen as u32 as usize);
    (total > plugin.limits.host.max_header_bytes).then(|| refused(plugin, Limit::HeaderBytes))
}

fn edit_map(
    c: &C<'_>,
    kind: i32,
    f: impl FnOnce(&mut MapRef<'_>, &HostLimits) -> Result<(), EditError>,
) -> i32 {
    let plugin = &c.data().plugin;
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
    match f(&mut map, &plugin.limits.host) {
        Ok(()) => OK,
        Err(EditError::BadValue) => BAD_ARGUMENT,
        Err(EditError::Limit(limit)) => refused(plugin, limit),
    }
}
