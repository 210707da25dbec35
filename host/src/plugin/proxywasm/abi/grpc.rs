//! gRPC callouts: `proxy_grpc_call`, `_stream`, `_send`, `_cancel`,
//! `_close` and `proxy_get_status`, with Envoy's statuses.
//!
//! A call or stream is recorded here and started once the guest call
//! returns; its events come back as `proxy_on_grpc_*` callbacks (see
//! `instance/grpc.rs`). The upstream argument is what Envoy takes: a
//! serialized `envoy.config.core.v3.GrpcService` naming a cluster, or else
//! the cluster's name itself; here clusters are the config's `upstreams`.
//! The statuses are the ones the Rust SDK accepts for each call.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use wasmtime::Linker;

use super::common::*;
use crate::plugin::PluginShared;
use crate::plugin::callout::grpc::{GrpcCallSpec, GrpcTarget, MAX_GRPC_MESSAGE_BYTES};
use crate::plugin::proxywasm::instance::{
    GrpcKind, HostState, MAX_GRPC_OPEN, MAX_GRPC_STREAMS, kind_of,
};
use crate::plugin::proxywasm::memory;
use crate::plugin::sandbox::Limit;

const PARSE_FAILURE: i32 = 4;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host_fn!(
        linker,
        "env",
        "proxy_grpc_call",
        |c,
         sptr: i32,
         slen: i32,
         nptr: i32,
         nlen: i32,
         mptr: i32,
         mlen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         timeout_ms: i32,
         ret_token: i32| {
            let plugin = c.data().plugin.clone();
            if blen as u32 as usize > MAX_GRPC_MESSAGE_BYTES {
                plugin.limit_exceeded(Limit::GrpcMessageBytes);
                return Ok(INTERNAL_FAILURE);
            }
            let spec = match call_spec(&mut c, [sptr, slen, nptr, nlen, mptr, mlen, hptr, hlen]) {
                Ok(spec) => spec,
                Err(status) => return Ok(status),
            };
            if let Some(status) = refuse_over_limits(&c, &plugin, false) {
                return Ok(status);
            }
            let message = Bytes::from(read_or_status!(&mut c, bptr, blen));
            let timeout = match timeout_ms as u32 {
                0 => spec.target.default_timeout(),
                ms => std::time::Duration::from_millis(ms.into()),
            };
            let data = c.data_mut();
            let ctx = data.current;
            let token = data.grpc.open_call(ctx, spec, message, timeout);
            hand_token(&mut c, ret_token, token)
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_grpc_stream",
        |c,
         sptr: i32,
         slen: i32,
         nptr: i32,
         nlen: i32,
         mptr: i32,
         mlen: i32,
         hptr: i32,
         hlen: i32,
         ret_token: i32| {
            let plugin = c.data().plugin.clone();
            let spec = match call_spec(&mut c, [sptr, slen, nptr, nlen, mptr, mlen, hptr, hlen]) {
                Ok(spec) => spec,
                Err(status) => return Ok(status),
            };
            if let Some(status) = refuse_over_limits(&c, &plugin, true) {
                return Ok(status);
            }
            let data = c.data_mut();
            let ctx = data.current;
            let token = data.grpc.open_stream(ctx, spec);
            hand_token(&mut c, ret_token, token)
        },
    )?;
    host_fn!(
        linker,
        "env",
        "proxy_grpc_send",
        |c, token: i32, ptr: i32, len: i32, end_stream: i32| {
            let token = token as u32;
            let plugin = c.data().plugin.clone();
            if kind_of(token) != Some(GrpcKind::Stream) {
                return Ok(BAD_ARGUMENT);
            }
            let Some(open) = c.data().grpc.open.get(&token) else {
                return Ok(NOT_FOUND);
            };
            if open.remote_closed {
                // Envoy sends on a closed stream without complaint; the
                // message goes nowhere.
                return Ok(OK);
            }
            if open.sender.is_none() {
                // The plugin already ended its side.
                return Ok(BAD_ARGUMENT);
            }
            if len as u32 as usize > MAX_GRPC_MESSAGE_BYTES {
                plugin.limit_exceeded(Limit::GrpcMessageBytes);
                return Ok(BAD_ARGUMENT);
            }
            let message = Bytes::from(read_or_status!(&mut c, ptr, len));
            let open = c
                .data_mut()
                .grpc
                .open
                .get_mut(&token)
                .expect("checked above");
            let sender = open.sender.as_ref().expect("checked above");
            match sender.try_send(message) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    plugin.limit_exceeded(Limit::GrpcSendQueue);
                    return Ok(BAD_ARGUMENT);
                }
                // The stream already ended; its close is on its way.
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            }
            if end_stream != 0 {
                open.sender = None;
            }
            Ok(OK)
        },
    )?;
    host_fn!(linker, "env", "proxy_grpc_cancel", |c, token: i32| {
        let token = token as u32;
        if kind_of(token).is_none() {
            return Ok(BAD_ARGUMENT);
        }
        Ok(if c.data_mut().grpc.cancel(token) {
            OK
        } else {
            NOT_FOUND
        })
    })?;
    host_fn!(linker, "env", "proxy_grpc_close", |c, token: i32| {
        let token = token as u32;
        let grpc = &mut c.data_mut().grpc;
        Ok(match kind_of(token) {
            None => BAD_ARGUMENT,
            // Closing a call is cancelling it.
            Some(GrpcKind::Call) => {
                if grpc.cancel(token) {
                    OK
                } else {
                    NOT_FOUND
                }
            }
            // A half-close: what the peer still sends is delivered.
            Some(GrpcKind::Stream) => match grpc.open.get_mut(&token) {
                None => NOT_FOUND,
                Some(open) if open.remote_closed => {
                    grpc.cancel(token);
                    OK
                }
                Some(open) => {
                    open.local_closed = true;
                    open.sender = None;
                    OK
                }
            },
        })
    })?;
    host_fn!(
        linker,
        "env",
        "proxy_get_status",
        |c, ret_code: i32, ret_ptr: i32, ret_len: i32| {
            // The status of the gRPC close being delivered; 0 and no
            // message otherwise.
            let (code, message) = match &c.data().grpc.status {
                Some(s) => (s.code, s.message.clone().into_bytes()),
                None => (0, Vec::new()),
            };
            if memory::write_u32(&mut c, ret_code, code).is_err() {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            given(memory::give(&mut c, &message, ret_ptr, ret_len))
        },
    )?;
    Ok(())
}

/// Writes the token for the guest; a token it cannot receive is withdrawn.
fn hand_token(c: &mut C<'_>, ret_token: i32, token: u32) -> wasmtime::Result<i32> {
    if memory::write_u32(c, ret_token, token).is_err() {
        c.data_mut().grpc.cancel(token);
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}

fn refuse_over_limits(c: &C<'_>, plugin: &PluginShared, stream: bool) -> Option<i32> {
    let grpc = &c.data().grpc;
    if grpc.open.len() >= MAX_GRPC_OPEN {
        plugin.limit_exceeded(Limit::GrpcCalls);
        return Some(INTERNAL_FAILURE);
    }
    if stream && grpc.streams() >= MAX_GRPC_STREAMS {
        plugin.limit_exceeded(Limit::GrpcStreams);
        return Some(INTERNAL_FAILURE);
    }
    None
}

/// Reads what `proxy_grpc_call` and `proxy_grpc_stream` share: upstream,
/// service, method and initial metadata.
fn call_spec(
    c: &mut C<'_>,
    [sptr, slen, nptr, nlen, mptr, mlen, hptr, hlen]: [i32; 8],
) -> Result<GrpcCallSpec, i32> {
    let read =
        |c: &mut C<'_>, ptr, len| memory::read(c, ptr, len).map_err(|_| INVALID_MEMORY_ACCESS);
    let upstream = read(c, sptr, slen)?;
    let service = read(c, nptr, nlen)?;
    let method = read(c, mptr, mlen)?;
    let raw_metadata = read(c, hptr, hlen)?;
    let plugin = c.data().plugin.clone();
    let (target, service_metadata) = resolve_upstream(&plugin, &upstream)?;
    let pairs = bounded_map(&plugin, &raw_metadata).ok_or(BAD_ARGUMENT)?;
    let mut metadata = HeaderMap::new();
    for (k, v) in service_metadata.into_iter().chain(pairs) {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&k), HeaderValue::from_bytes(&v))
        else {
            plugin.log(
                3,
                &format!(
                    "gRPC callout: initial metadata `{}` is not a valid header",
                    String::from_utf8_lossy(&k)
                ),
            );
            return Err(BAD_ARGUMENT);
        };
        metadata.append(name, value);
    }
    let (Ok(service), Ok(method)) = (std::str::from_utf8(&service), std::str::from_utf8(&method))
    else {
        return Err(BAD_ARGUMENT);
    };
    GrpcCallSpec::new(target, service, method, metadata).ok_or_else(|| {
        plugin.log(
            3,
            &format!("gRPC callout: `/{service}/{method}` is not a gRPC method path"),
        );
        BAD_ARGUMENT
    })
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The upstream a plugin names, as Envoy reads the argument: a serialized
/// `GrpcService` with an `envoy_grpc` cluster, or else a cluster name; an
/// unknown name is PARSE_FAILURE, as Envoy answers at call time. Also
/// returns the service's own initial metadata.
fn resolve_upstream(plugin: &PluginShared, raw: &[u8]) -> Result<(GrpcTarget, Pairs), i32> {
    let by_name = || {
        std::str::from_utf8(raw)
            .ok()
            .and_then(|name| plugin.callouts.grpc().target(name))
    };
    match GrpcService::decode(raw) {
        Ok(GrpcService {
            envoy_grpc: Some(envoy),
            initial_metadata,
            ..
        }) => {
            let Some(target) = plugin.callouts.grpc().target(&envoy.cluster_name) else {
                plugin.log(
                    3,
                    &format!(
                        "gRPC callout: no upstream named `{}` is configured",
                        envoy.cluster_name
                    ),
                );
                return Err(INTERNAL_FAILURE);
            };
            let metadata = initial_metadata
                .into_iter()
                .map(|h| {
                    let value = if h.raw_value.is_empty() {
                        h.value.into_bytes()
                    } else {
                        h.raw_value
                    };
                    (h.key.into_bytes(), value)
                })
                .collect();
            Ok((target, metadata))
        }
        // A name that happens to be valid protobuf still names its upstream
        // (Envoy would refuse it as a service without a target).
        Ok(_) => match by_name() {
            Some(target) => Ok((target, Vec::new())),
            None => {
                plugin.log(
                    3,
                    "gRPC callout: the GrpcService names no envoy_grpc cluster \
                     (google_grpc targets are not offered)",
                );
                Err(BAD_ARGUMENT)
            }
        },
        Err(_) => match by_name() {
            Some(target) => Ok((target, Vec::new())),
            None => {
                plugin.log(
                    3,
                    &format!(
                        "gRPC callout: no upstream named `{}` is configured",
                        String::from_utf8_lossy(raw)
                    ),
                );
                Err(PARSE_FAILURE)
            }
        },
    }
}

/// The fields of `envoy.config.core.v3.GrpcService` this host reads.
#[derive(Clone, PartialEq, prost::Message)]
struct GrpcService {
    #[prost(message, optional, tag = "1")]
    envoy_grpc: Option<EnvoyGrpc>,
    /// `google_grpc`: kept opaque, it is not offered.
    #[prost(bytes = "vec", optional, tag = "2")]
    google_grpc: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "5")]
    initial_metadata: Vec<HeaderValueProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    cluster_name: String,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
struct HeaderValueProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
    #[prost(bytes = "vec", tag = "3")]
    raw_value: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_not_mistaken_for_a_grpc_service() {
        // Envoy tries the protobuf first; the names SDK users pass fail to
        // parse and are taken as cluster names.
        for name in ["grpc-authz", "authz", "upstream", "grpcbin"] {
            assert!(GrpcService::decode(name.as_bytes()).is_err(), "{name}");
        }
        let svc = GrpcService {
            envoy_grpc: Some(EnvoyGrpc {
                cluster_name: "authz".into(),
            }),
            google_grpc: None,
            initial_metadata: vec![HeaderValueProto {
                key: "x-k".into(),
                value: "v".into(),
                raw_value: Vec::new(),
            }],
        };
        let decoded = GrpcService::decode(svc.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.envoy_grpc.unwrap().cluster_name, "authz");
        assert_eq!(decoded.initial_metadata[0].key, "x-k");
    }

    #[test]
    fn tokens_carry_their_kind_in_the_low_bits() {
        let mut st = crate::plugin::proxywasm::instance::GrpcState::default();
        let calls: Vec<u32> = (0..3)
            .map(|_| {
                let t = st.next_call_token_for_test();
                assert_eq!(kind_of(t), Some(GrpcKind::Call));
                t
            })
            .collect();
        assert_eq!(calls, vec![5, 9, 13]);
        assert_eq!(kind_of(4), None);
        assert_eq!(kind_of(6), Some(GrpcKind::Stream));
    }
}
