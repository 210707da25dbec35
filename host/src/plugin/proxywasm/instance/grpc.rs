//! gRPC callouts on a Proxy-Wasm VM: the calls and streams a plugin has
//! open, and the delivery of their events as guest calls.
//!
//! Invariants (those of HTTP callouts, plus):
//! - Calls and streams belong to the root context, as in Envoy: callbacks
//!   get the root context id (the SDKs then switch to the context that
//!   opened the call), and a call outlives the request that made it.
//!   The request that opened it is still woken, and rolled back if the
//!   callback fails, like after an HTTP callout's callback.
//! - An event is delivered only while its token is open, checked under the
//!   same lock as the guest call; cancelling removes the token, so no
//!   callback ever follows `proxy_grpc_cancel`.
//! - Everything a VM opened is aborted when the VM goes away.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use wasmtime::{Store, TypedFunc};

use super::{ContextKind, HostState, Instance, StartError};
use crate::plugin::callout::grpc::{GrpcCallSpec, GrpcEvent, GrpcStatus};

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// gRPC calls and streams one VM may have open at once.
pub const MAX_GRPC_OPEN: usize = 256;
/// Of those, streams.
pub const MAX_GRPC_STREAMS: usize = 64;
/// Messages a stream may have queued for sending before `proxy_grpc_send`
/// is refused.
pub const GRPC_SEND_QUEUE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcKind {
    Call,
    Stream,
}

/// Token kinds as proxy-wasm-cpp-host numbers them: the low two bits tell
/// an HTTP callout (0), a gRPC call (1) and a gRPC stream (2) apart.
pub fn kind_of(token: u32) -> Option<GrpcKind> {
    match token & 3 {
        1 => Some(GrpcKind::Call),
        2 => Some(GrpcKind::Stream),
        _ => None,
    }
}

pub struct OpenGrpc {
    /// The context that opened it: its request is woken after callbacks.
    pub ctx: u32,
    pub kind: GrpcKind,
    /// Where `proxy_grpc_send` puts messages; `None` once the plugin ended
    /// its side (`end_stream` or `proxy_grpc_close`).
    pub sender: Option<mpsc::Sender<Bytes>>,
    /// The plugin called `proxy_grpc_close`.
    pub local_closed: bool,
    /// The peer closed the stream. A token stays until both sides closed
    /// (or the plugin cancels it), as in Envoy, so closing a stream the
    /// peer already closed is OK.
    pub remote_closed: bool,
    task: Option<AbortHandle>,
}

enum Work {
    Unary { message: Bytes, timeout: Duration },
    Stream { outgoing: mpsc::Receiver<Bytes> },
}

/// A call or stream opened during a guest call, started when it returns.
pub struct PendingGrpc {
    token: u32,
    spec: GrpcCallSpec,
    work: Work,
}

/// The gRPC part of a VM's host state.
#[derive(Default)]
pub struct GrpcState {
    pub open: HashMap<u32, OpenGrpc>,
    pending: Vec<PendingGrpc>,
    next_call: u32,
    next_stream: u32,
    /// What the callback being delivered may read.
    pub receive_buffer: Option<Bytes>,
    pub initial_metadata: Option<Pairs>,
    pub trailing_metadata: Option<Pairs>,
    pub status: Option<GrpcStatus>,
}

impl GrpcState {
    pub fn streams(&self) -> usize {
        self.open
            .values()
            .filter(|o| o.kind == GrpcKind::Stream)
            .count()
    }

    fn next_token(&mut self, kind: GrpcKind) -> u32 {
        loop {
            let (counter, low) = match kind {
                GrpcKind::Call => (&mut self.next_call, 1),
                GrpcKind::Stream => (&mut self.next_stream, 2),
            };
            *counter = counter.wrapping_add(1) & (u32::MAX >> 2);
            let token = (*counter << 2) | low;
            if !self.open.contains_key(&token) {
                return token;
            }
        }
    }

    #[cfg(test)]
    pub fn next_call_token_for_test(&mut self) -> u32 {
        self.next_token(GrpcKind::Call)
    }

    fn insert(&mut self, ctx: u32, kind: GrpcKind, sender: Option<mpsc::Sender<Bytes>>) -> u32 {
        let token = self.next_token(kind);
        let open = OpenGrpc {
            ctx,
            kind,
            sender,
            local_closed: false,
            remote_closed: false,
            task: None,
        };
        self.open.insert(token, open);
        token
    }

    /// Records a unary call for `ctx`; returns its token.
    pub fn open_call(
        &mut self,
        ctx: u32,
        spec: GrpcCallSpec,
        message: Bytes,
        timeout: Duration,
    ) -> u32 {
        let token = self.insert(ctx, GrpcKind::Call, None);
        let work = Work::Unary { message, timeout };
        self.pending.push(PendingGrpc { token, spec, work });
        token
    }

    /// Records a stream for `ctx`; returns its token.
    pub fn open_stream(&mut self, ctx: u32, spec: GrpcCallSpec) -> u32 {
        let (tx, rx) = mpsc::channel(GRPC_SEND_QUEUE);
        let token = self.insert(ctx, GrpcKind::Stream, Some(tx));
        let work = Work::Stream { outgoing: rx };
        self.pending.push(PendingGrpc { token, spec, work });
        token
    }

    /// Stops a call or stream: nothing more is sent or delivered.
    pub fn cancel(&mut self, token: u32) -> bool {
        self.pending.retain(|p| p.token != token);
        match self.open.remove(&token) {
            Some(open) => {
                if let Some(task) = open.task {
                    task.abort();
                }
                true
            }
            None => false,
        }
    }

    pub fn take_pending(&mut self) -> Vec<PendingGrpc> {
        std::mem::take(&mut self.pending)
    }
}

impl Drop for GrpcState {
    fn drop(&mut self) {
        for open in self.open.values() {
            if let Some(task) = &open.task {
                task.abort();
            }
        }
    }
}

/// `proxy_on_grpc_receive_initial_metadata` and the other three callbacks
/// take `(context, token, count or size or status)`.
type GrpcCallbackFn = TypedFunc<(i32, i32, i32), ()>;

pub struct GrpcExports {
    on_initial_metadata: Option<GrpcCallbackFn>,
    on_receive: Option<GrpcCallbackFn>,
    on_trailing_metadata: Option<GrpcCallbackFn>,
    on_close: Option<GrpcCallbackFn>,
}

impl GrpcExports {
    pub fn lookup(
        instance: &wasmtime::Instance,
        store: &mut Store<HostState>,
    ) -> Result<GrpcExports, StartError> {
        let mut get = |name: &'static str| match instance.get_func(&mut *store, name) {
            None => Ok(None),
            Some(f) => f
                .typed(&*store)
                .map(Some)
                .map_err(|e| StartError::BadExport {
                    name,
                    reason: e.to_string(),
                }),
        };
        Ok(GrpcExports {
            on_initial_metadata: get("proxy_on_grpc_receive_initial_metadata")?,
            on_receive: get("proxy_on_grpc_receive")?,
            on_trailing_metadata: get("proxy_on_grpc_receive_trailing_metadata")?,
            on_close: get("proxy_on_grpc_close")?,
        })
    }
}

impl Instance {
    /// Starts what a guest call opened, each as a task of its own.
    pub(super) fn start_grpc(&self, pending: Vec<PendingGrpc>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(plugin = %self.shared.name, "gRPC callout made outside the runtime; dropped");
            return;
        };
        let mut inner = self.lock();
        let weak = inner.store.data().self_ref.clone();
        for PendingGrpc { token, spec, work } in pending {
            // Cancelled between the guest call and now: never started.
            let Some(open) = inner.store.data_mut().grpc.open.get_mut(&token) else {
                continue;
            };
            let weak = weak.clone();
            let task = match work {
                Work::Unary { message, timeout } => rt.spawn(async move {
                    let event = match spec.unary(message, timeout).await {
                        Ok(m) => GrpcEvent::Message(m),
                        Err(status) => GrpcEvent::Close(status),
                    };
                    if let Some(inst) = weak.upgrade() {
                        inst.deliver_grpc(token, event);
                    }
                }),
                Work::Stream { outgoing } => rt.spawn(async move {
                    spec.stream(outgoing, |event| {
                        weak.upgrade()
                            .is_some_and(|inst| inst.deliver_grpc(token, event))
                    })
                    .await;
                }),
            };
            open.task = Some(task.abort_handle());
        }
    }

    /// Runs the callback for one event of `token` as one guest call, for
    /// the root context. Returns whether the plugin still listens.
    fn deliver_grpc(&self, token: u32, event: GrpcEvent) -> bool {
        let (root, current, exchange) = {
            let inner = self.lock();
            let data = inner.store.data();
            let Some(open) = data.grpc.open.get(&token) else {
                return false;
            };
            let exchange = match data.contexts.get(&open.ctx) {
                Some(ContextKind::Http(ex)) => Some(ex.clone()),
                _ => None,
            };
            // Host calls act for the request that opened the call while it
            // lives (the SDKs switch to it anyway), else for the root.
            let current = if exchange.is_some() {
                open.ctx
            } else {
                data.root_id
            };
            (data.root_id, current, exchange)
        };
        let result = self.call(current, |inner| {
            let data = inner.store.data_mut();
            let Some(open) = data.grpc.open.get_mut(&token) else {
                return Ok(false);
            };
            let kind = open.kind;
            let last = matches!(
                (&event, kind),
                (GrpcEvent::Message(_), GrpcKind::Call) | (GrpcEvent::Close(_), _)
            );
            if last {
                if kind == GrpcKind::Stream && !open.local_closed {
                    open.remote_closed = true;
                    open.task = None;
                } else {
                    data.grpc.open.remove(&token);
                }
            }
            // Taken under the instance lock, like an HTTP callout's.
            let before = exchange.as_ref().map(|ex| ex.lock().snapshot(true));
            let grpc = &mut data.grpc;
            let exports = &inner.exports.grpc;
            let (f, arg) = match event {
                GrpcEvent::InitialMetadata(m) => {
                    let n = m.len();
                    grpc.initial_metadata = Some(m);
                    (&exports.on_initial_metadata, n)
                }
                GrpcEvent::Message(m) => {
                    let n = m.len();
                    grpc.receive_buffer = Some(m);
                    (&exports.on_receive, n)
                }
                GrpcEvent::TrailingMetadata(m) => {
                    let n = m.len();
                    grpc.trailing_metadata = Some(m);
                    (&exports.on_trailing_metadata, n)
                }
                GrpcEvent::Close(status) => {
                    let code = status.code as usize;
                    grpc.status = Some(status);
                    (&exports.on_close, code)
                }
            };
            let r = match f {
                Some(f) => f.call(&mut inner.store, (root as i32, token as i32, arg as i32)),
                None => Ok(()),
            };
            let grpc = &mut inner.store.data_mut().grpc;
            grpc.receive_buffer = None;
            grpc.initial_metadata = None;
            grpc.trailing_metadata = None;
            grpc.status = None;
            if r.is_err()
                && let (Some(ex), Some(before)) = (&exchange, before)
            {
                ex.lock().restore(before);
            }
            r.map(|()| !last)
        });
        let listening = match result {
            Ok(listening) => listening,
            Err(failure) => {
                if let Some(ex) = &exchange {
                    ex.lock().async_failure = Some((self.shared.name.clone(), failure));
                }
                false
            }
        };
        if let Some(ex) = exchange {
            ex.wake();
        }
        listening
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::UpstreamConfig;
    use crate::plugin::callout::grpc::{GrpcCallouts, GrpcTarget};

    fn target() -> GrpcTarget {
        let upstream: UpstreamConfig = serde_norway::from_str("address: 127.0.0.1:1").unwrap();
        let upstreams = BTreeMap::from([("u".to_owned(), upstream)]);
        GrpcCallouts::new(&upstreams).target("u").unwrap()
    }

    fn spec() -> GrpcCallSpec {
        GrpcCallSpec::new(target(), "pkg.Service", "Method", http::HeaderMap::new()).unwrap()
    }

    #[test]
    fn method_paths_are_checked() {
        for (service, method) in [("", "M"), ("s", ""), ("s", "a/b"), ("s", "m?q")] {
            let spec = GrpcCallSpec::new(target(), service, method, http::HeaderMap::new());
            assert!(spec.is_none(), "{service}/{method}");
        }
        assert_eq!(spec().path.as_str(), "/pkg.Service/Method");
    }

    #[test]
    fn cancelling_withdraws_a_call_that_has_not_started() {
        let mut st = GrpcState::default();
        let call = st.open_call(7, spec(), Bytes::new(), Duration::from_secs(1));
        let stream = st.open_stream(7, spec());
        assert_eq!(kind_of(call), Some(GrpcKind::Call));
        assert_eq!(kind_of(stream), Some(GrpcKind::Stream));
        assert_eq!(st.streams(), 1);
        assert!(st.cancel(call));
        assert!(!st.cancel(call), "a token is cancelled once");
        let pending = st.take_pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].token, stream);
        assert_eq!(st.open[&stream].ctx, 7);
    }
}
