//! The request pipeline: one request, top to bottom.
//!
//! 1. Context: resolve the destination service from the authority; its
//!    namespace selects the plugin chain (a snapshot, kept to the end).
//! 2. Request headers through the chain in order. A plugin may change them,
//!    answer locally, or pause the request until it resumes it.
//! 3. Pick an endpoint and send the request upstream; the request body
//!    streams through the chain's body callbacks on the way.
//! 4. Response headers and body through the chain in reverse order.
//! 5. When the response is finished (or abandoned) every plugin gets its
//!    log/done callbacks, and the request is counted.
//!
//! The pipeline takes any request body and needs no socket, so offline
//! policy suites drive exactly this code. Failures of a plugin are handled
//! here, per its failStrategy, whatever the plugin's ABI.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use tokio::sync::watch;

use super::Error;
use super::access_log::{AccessLog, Entry};
use super::body::{self, BoxError, Counting, Holding, ProxyBody};
use super::offline::OfflineUpstream;
use super::upstream::Upstream;
use crate::admin::record::{Observed, Recorder, RequestFacts};
use crate::config::FailStrategy;
use crate::discovery::{Destination, Discovery, Endpoint};
use crate::exchange::{
    Exchange, LocalResponse, PeerIdentity, RequestHead, RequestInfo, ResponseHead, RouteChoice,
};
use crate::metrics::Metrics;
use crate::plugin::registry::Installed;
use crate::plugin::shadow;
use crate::plugin::{FilterStatus, Hooks, HttpFilter, Plugin, PluginFailure, Registry};

/// A plugin closed the stream: the connection layer resets it instead of
/// answering.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("stream reset by a plugin")]
pub struct StreamReset;

/// What the pipeline knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub source: SocketAddr,
    pub local: SocketAddr,
    /// The caller's mesh identity, when it came over mTLS.
    pub peer: Option<PeerIdentity>,
    /// The destination the tunnel named, when it named one.
    pub destination: Option<Destination>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub paused_request_timeout: std::time::Duration,
    pub max_buffered_body: usize,
}

pub struct Pipeline {
    /// Holds the configuration in force (config, discovery, chains) as one
    /// snapshot; a request reads it once.
    registry: Arc<Registry>,
    upstream: Upstream,
    /// Set for offline suites: requests go to this instead of `upstream`.
    offline: Option<Arc<dyn OfflineUpstream>>,
    /// Sampling of finished requests, armed from the admin listener.
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Set once by the waypoint from `accessLog:`; `tracing` until then.
    access_log: OnceLock<Arc<AccessLog>>,
}

/// The access log of a pipeline nobody gave one: `tracing` events.
static TRACING_ACCESS_LOG: LazyLock<Arc<AccessLog>> =
    LazyLock::new(|| Arc::new(AccessLog::tracing()));

/// The request's plugin contexts. Shared by the request-body stream and the
/// response path; finished when the last of them lets go.
struct Filters {
    slots: Vec<Slot>,
    exchange: Arc<Exchange>,
    metrics: Arc<Metrics>,
    access_log: Arc<AccessLog>,
    /// The endpoint the request went to, once picked (Istio's destination workload).
    endpoint: Option<Arc<Endpoint>>,
    namespace: String,
    status: Option<u16>,
    start: Instant,
    /// The request as it arrived, kept only while the recorder is armed.
    observed: Option<(Arc<Recorder>, RequestFacts)>,
}

struct Slot {
    plugin: Arc<Plugin>,
    /// `None` once the plugin was skipped (FAIL_OPEN) or finished.
    filter: Option<Box<dyn HttpFilter>>,
}

type SharedFilters = Arc<Mutex<Filters>>;

/// Property naming the plugin that answered a request locally.
const LOCAL_RESPONSE_BY: &str = "wayplug.local_response_by";

fn lock(f: &SharedFilters) -> MutexGuard<'_, Filters> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Filters {
    fn drop(&mut self) {
        // Plugins read request.duration in their last callbacks.
        self.exchange.lock().stream.duration = Some(self.start.elapsed());
        for slot in &mut self.slots {
            if let Some(mut f) = slot.filter.take() {
                f.finish();
            }
        }
        let status = self.status.unwrap_or(0);
        let names: Vec<&str> = self.slots.iter().map(|s| s.plugin.name()).collect();
        let elapsed = self.start.elapsed().as_secs_f64();
        self.metrics
            .request(&self.namespace, status, &names, elapsed);
        let info = &self.exchange.info;
        let st = self.exchange.lock();
        let principal = info
            .peer
            .as_ref()
            .map(|p| p.principal())
            .unwrap_or_default();
        self.istio(&st, &principal, status, elapsed);
        let local_by = st
            .properties
            .get(LOCAL_RESPONSE_BY)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        if let Some((recorder, request)) = self.observed.take() {
            recorder.offer(Observed {
                request,
                status,
                local_by: local_by.clone(),
                decisions: st.decisions.clone(),
            });
        }
        if !self.access_log.enabled() {
            return;
        }
        // Nobody else holds the exchange any more: its strings move into the
        // entry instead of being copied.
        let alone = Arc::strong_count(&self.exchange) == 1;
        let mut st = st;
        let (authority, path) = if alone {
            (
                std::mem::take(&mut st.request.authority),
                std::mem::take(&mut st.request.path),
            )
        } else {
            (st.request.authority.clone(), st.request.path.clone())
        };
        let mut decisions = String::new();
        for (i, d) in st.decisions.iter().enumerate() {
            if i > 0 {
                decisions.push(';');
            }
            let _ = write!(decisions, "{d}");
        }
        self.access_log.log(Entry {
            info: info.clone(),
            principal,
            method: st.request.method.clone(),
            authority,
            path,
            status,
            local_by,
            decisions,
            duration_ms: elapsed * 1000.0,
        });
    }
}

impl Filters {
    /// Istio's request metrics for this request, under its traffic pair's labels.
    fn istio(&self, st: &crate::exchange::ExchangeState, principal: &str, status: u16, secs: f64) {
        use crate::metrics::istio::{Outcome, Pair, Sizes};
        let info = &self.exchange.info;
        let grpc = is_grpc(&st.request.headers);
        let grpc_status = st
            .response_trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| st.response.as_ref()?.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse().ok());
        // From the flags a plugin reads in `response.flags`: one mapping,
        // and no property a plugin could set.
        let flags = crate::exchange::response_flags::label(st.stream.response_flags, status != 0);
        let dest_principal = self
            .endpoint
            .as_ref()
            .filter(|e| e.protocol == crate::config::Protocol::Hbone)
            .map(|e| {
                format!(
                    "{}/ns/{}/sa/{}",
                    e.trust_domain, e.namespace, e.service_account
                )
            })
            .unwrap_or_default();
        let pair = Pair {
            source_principal: principal,
            source_namespace: info.peer.as_ref().map_or("", |p| p.namespace.as_str()),
            baggage: st
                .request
                .headers
                .get(crate::hbone::BAGGAGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
            destination_service: &info.service_hostname,
            destination_service_name: &info.service_name,
            destination_service_namespace: &self.namespace,
            destination_workload: self.endpoint.as_ref().map_or("", |e| e.workload.as_str()),
            destination_workload_namespace: self
                .endpoint
                .as_ref()
                .map_or("", |e| e.namespace.as_str()),
            destination_principal: &dest_principal,
        };
        let sizes = Sizes {
            // What passed, as `request.total_size` and `response.total_size`
            // count it: a chunked body counts too.
            request_bytes: self.exchange.request_total_size(st),
            response_bytes: self.exchange.response_total_size(st),
            duration_ms: secs * 1000.0,
        };
        let outcome = Outcome {
            code: status,
            grpc,
            grpc_status,
            flags: &flags,
        };
        self.metrics.istio.request(&pair, &outcome, &sizes);
    }
}

/// Where the request or response phase ended up.
enum Outcome {
    Continue,
    /// Answer with this instead; `upto` is the index of the last filter
    /// whose response callbacks still run on it.
    Respond {
        response: LocalResponse,
        upto: Option<usize>,
    },
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Headers { eos: bool },
    Body { size: usize, eos: bool },
    Trailers,
}

fn call(f: &mut dyn HttpFilter, dir: Dir, phase: Phase) -> Result<FilterStatus, PluginFailure> {
    match (dir, phase) {
        (Dir::Request, Phase::Headers { eos }) => f.on_request_headers(eos),
        (Dir::Request, Phase::Body { size, eos }) => f.on_request_body(size, eos),
        (Dir::Request, Phase::Trailers) => f.on_request_trailers(),
        (Dir::Response, Phase::Headers { eos }) => f.on_response_headers(eos),
        (Dir::Response, Phase::Body { size, eos }) => f.on_response_body(size, eos),
        (Dir::Response, Phase::Trailers) => f.on_response_trailers(),
    }
}

fn hook_of(dir: &Dir, phase: Phase) -> Hooks {
    match (dir, phase) {
        (Dir::Request, Phase::Headers { .. }) => Hooks::REQUEST_HEADERS,
        (Dir::Request, Phase::Body { .. }) => Hooks::REQUEST_BODY,
        (Dir::Request, Phase::Trailers) => Hooks::REQUEST_TRAILERS,
        (Dir::Response, Phase::Headers { .. }) => Hooks::RESPONSE_HEADERS,
        (Dir::Response, Phase::Body { .. }) => Hooks::RESPONSE_BODY,
        (Dir::Response, Phase::Trailers) => Hooks::RESPONSE_TRAILERS,
    }
}

fn failure_response(plugin: &Plugin, failure: &PluginFailure) -> LocalResponse {
    let err = Error::PluginFailed {
        plugin: plugin.name().to_owned(),
        namespace: plugin.namespace.clone(),
        failure: failure.clone(),
    };
    error_response(&err, plugin.name())
}

fn error_response(err: &Error, by: &str) -> LocalResponse {
    LocalResponse {
        status: err.status(),
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: Bytes::from(format!("wayplug: {err}\n")),
        details: err.code_details().to_owned(),
        plugin: by.to_owned(),
        grpc_status: None,
    }
}

/// Whether the request is a gRPC call: its local answers must be gRPC too.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Envoy's mapping of an HTTP status to the gRPC status of a local reply
/// to a gRPC request that named none.
fn grpc_status_for(status: http::StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// `grpc-message` is percent-encoded: printable ASCII except `%` stays.
fn grpc_message(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A local answer to a gRPC call, or one a plugin gave a gRPC status: a
/// trailers-only response (HTTP 200, the status and message in headers,
/// no body), as Envoy sends it.
fn grpc_local(local: LocalResponse) -> LocalResponse {
    let status = local
        .grpc_status
        .unwrap_or_else(|| grpc_status_for(local.status));
    let text = local.body.strip_suffix(b"\n").unwrap_or(&local.body);
    let mut headers: Vec<(String, Vec<u8>)> = local
        .headers
        .into_iter()
        .filter(|(k, _)| {
            !k.eq_ignore_ascii_case("content-type")
                && !k.eq_ignore_ascii_case("grpc-status")
                && !k.eq_ignore_ascii_case("grpc-message")
        })
        .collect();
    headers.push(("content-type".into(), b"application/grpc".to_vec()));
    headers.push(("grpc-status".into(), status.to_string().into_bytes()));
    if !text.is_empty() {
        headers.push(("grpc-message".into(), grpc_message(text).into_bytes()));
    }
    LocalResponse {
        status: http::StatusCode::OK,
        headers,
        body: Bytes::new(),
        ..local
    }
}

// The error side is an outcome built at most once per request; boxing it
// would only add an allocation.
#[allow(clippy::result_large_err)]
/// Runs one callback of filter `i` and applies its fail strategy. `Err`
/// carries the outcome when the callback did not produce a status.
fn run_callback(
    filters: &SharedFilters,
    exchange: &Exchange,
    i: usize,
    dir: Dir,
    phase: Phase,
) -> Result<(Arc<Plugin>, FilterStatus), Outcome> {
    let mut f = lock(filters);
    let slot = &mut f.slots[i];
    let plugin = slot.plugin.clone();
    let Some(filter) = slot.filter.as_mut() else {
        return Err(Outcome::Continue);
    };
    if !plugin.hooks().any(hook_of(&dir, phase)) {
        // The module does not export this callback: nothing to enter,
        // lock or roll back.
        return Err(Outcome::Continue);
    }
    {
        let mut st = exchange.lock();
        match dir {
            Dir::Request => st.resume_request = false,
            Dir::Response => st.resume_response = false,
        }
    }
    // What the callback may change is kept when a failure would let the
    // request go on (FAIL_OPEN) or run the callback again (FAIL_RELOAD), so
    // neither sees what the failed attempt left half done. FAIL_CLOSE
    // answers instead, so nothing of the request is used again.
    let keep = plugin.spec.fail_strategy != FailStrategy::FailClose;
    let before = keep.then(|| {
        exchange
            .lock()
            .snapshot(matches!(phase, Phase::Body { .. }))
    });
    let mut result = call(filter.as_mut(), dir, phase);
    if let (Err(failure), Some(before)) = (&result, before) {
        exchange.lock().restore(before);
        match plugin.spec.fail_strategy {
            FailStrategy::FailOpen => {
                tracing::warn!(plugin = %plugin.name(), error = %failure, "skipping failed plugin (FAIL_OPEN)");
                slot.filter = None;
                return Err(Outcome::Continue);
            }
            FailStrategy::FailReload => {
                tracing::warn!(plugin = %plugin.name(), error = %failure, "retrying on a fresh instance (FAIL_RELOAD)");
                result = filter
                    .reload()
                    .and_then(|()| call(filter.as_mut(), dir, phase));
            }
            FailStrategy::FailClose => {}
        }
    }
    match result {
        Ok(s) => Ok((plugin, s)),
        Err(failure) => {
            f.slots[i].filter = None;
            Err(Outcome::Respond {
                response: failure_response(&plugin, &failure),
                upto: i.checked_sub(1),
            })
        }
    }
}

/// Runs one callback of filter `i`, then waits out a pause. The filters
/// lock is never held across an await.
async fn step(
    filters: &SharedFilters,
    exchange: &Exchange,
    limits: &Limits,
    i: usize,
    dir: Dir,
    phase: Phase,
) -> Outcome {
    match run_callback(filters, exchange, i, dir, phase) {
        Ok((plugin, status)) => settle(exchange, limits, &plugin, filters, i, dir, status).await,
        Err(outcome) => outcome,
    }
}

/// After a callback: honour a local response or reset, and wait while the
/// plugin keeps the stream paused.
async fn settle(
    exchange: &Exchange,
    limits: &Limits,
    plugin: &Plugin,
    filters: &SharedFilters,
    i: usize,
    dir: Dir,
    status: FilterStatus,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + limits.paused_request_timeout;
    loop {
        {
            let mut st = exchange.lock();
            if let Some(local) = st.local_response.take() {
                return Outcome::Respond {
                    response: local,
                    upto: Some(i),
                };
            }
            if st.reset {
                return Outcome::Reset;
            }
            if let Some((_, failure)) = st.async_failure.take() {
                drop(st);
                return fail(filters, plugin, i, failure);
            }
            let resumed = match dir {
                Dir::Request => st.resume_request,
                Dir::Response => st.resume_response,
            };
            if status == FilterStatus::Continue || resumed {
                return Outcome::Continue;
            }
        }
        if tokio::time::timeout_at(deadline, exchange.woken())
            .await
            .is_err()
        {
            let failure = PluginFailure::PausedTooLong(limits.paused_request_timeout);
            return fail(filters, plugin, i, failure);
        }
    }
}

/// A failure outside a callback (while paused): FAIL_OPEN skips the plugin,
/// anything else answers with the failure.
fn fail(filters: &SharedFilters, plugin: &Plugin, i: usize, failure: PluginFailure) -> Outcome {
    lock(filters).slots[i].filter = None;
    if plugin.spec.fail_strategy == FailStrategy::FailOpen {
        tracing::warn!(plugin = %plugin.name(), error = %failure, "skipping failed plugin (FAIL_OPEN)");
        return Outcome::Continue;
    }
    Outcome::Respond {
        response: failure_response(plugin, &failure),
        upto: i.checked_sub(1),
    }
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names, comparing parsed names (no hashing): which of
    // the list are here. Most messages carry at most `connection`.
    let mut present = 0u8;
    for k in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `te: trailers` is end-to-end in effect: gRPC servers require it, and
    // HTTP/2 allows exactly that value.
    let trailers = h
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        });
    // Headers named by Connection are hop-by-hop too; only those outside the
    // list and actually present need a name of their own (`close` does not).
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !HOP_BY_HOP
                .iter()
                .any(|n| n.as_str().eq_ignore_ascii_case(t))
        })
        .filter(|t| h.contains_key(*t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    for n in &named {
        h.remove(n);
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A request that asks to leave HTTP once answered: an HTTP/1.1 Upgrade
/// (WebSocket) or an HTTP/2 extended CONNECT (RFC 8441).
#[derive(Debug, Clone)]
enum Upgrade {
    H1(HeaderValue),
    H2(hyper::ext::Protocol),
}

fn upgrade_of(parts: &http::request::Parts) -> Option<Upgrade> {
    if parts.method == http::Method::CONNECT {
        return parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .cloned()
            .map(Upgrade::H2);
    }
    if parts.version >= Version::HTTP_2 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let proto = parts.headers.get(header::UPGRADE)?;
    asks.then(|| Upgrade::H1(proto.clone()))
}

/// Random bytes for request ids, taken from the OS 256 ids at a time per
/// thread: a `getrandom` call for each request cost more than the rest of
/// making its id.
const ID_BATCH: usize = 16 * 256;

fn new_request_id() -> String {
    thread_local! {
        static IDS: RefCell<(Box<[u8; ID_BATCH]>, usize)> =
            RefCell::new((Box::new([0; ID_BATCH]), ID_BATCH));
    }
    let b = IDS.with_borrow_mut(|(batch, used)| {
        if *used == ID_BATCH {
            if getrandom::fill(&mut batch[..]).is_err() {
                let t = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                return t.as_nanos().to_le_bytes();
            }
            *used = 0;
        }
        let mut b = [0u8; 16];
        b.copy_from_slice(&batch[*used..*used + 16]);
        *used += 16;
        b
    });
    hex::encode(b)
}

impl Pipeline {
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, limits: Limits) -> Pipeline {
        Pipeline {
            registry,
            upstream: Upstream::new(),
            offline: None,
            recorder: Arc::new(Recorder::default()),
            metrics,
            limits,
            access_log: OnceLock::new(),
        }
    }

    /// A pipeline whose requests, once through the chain, go to `upstream`
    /// in process instead of over a socket (offline policy suites), and
    /// whose finished requests are handed to `recorder`.
    pub fn offline(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        limits: Limits,
        upstream: Arc<dyn OfflineUpstream>,
        recorder: Arc<Recorder>,
    ) -> Pipeline {
        Pipeline {
            offline: Some(upstream),
            recorder,
            ..Pipeline::new(registry, metrics, limits)
        }
    }

    /// The recorder of finished requests (`/record` on the admin listener).
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Sends the request to the offline upstream when there is one, else
    /// over the pool.
    async fn forward(
        &self,
        req: Request<ProxyBody>,
        h2: bool,
        destination: &Destination,
        endpoint: &crate::discovery::Endpoint,
    ) -> Result<Response<ProxyBody>, super::upstream::Error> {
        if let Some(offline) = &self.offline {
            let service = destination.service.hostname.clone();
            return Ok(offline.send(req, service, endpoint.clone()).await);
        }
        let response = self.upstream.send(req, h2, endpoint).await?;
        Ok(response.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()))
    }

    /// Where finished requests are logged. Only the first call has an effect.
    pub fn set_access_log(&self, log: Arc<AccessLog>) {
        let _ = self.access_log.set(log);
    }

    pub fn access_log(&self) -> &Arc<AccessLog> {
        self.access_log.get().unwrap_or(&TRACING_ACCESS_LOG)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn discovery(&self) -> Arc<Discovery> {
        self.registry.current().discovery.clone()
    }

    /// The configuration in force, as one snapshot.
    pub fn snapshot(&self) -> Arc<Installed> {
        self.registry.current()
    }

    /// Handles one request. `Err` means the stream must be reset (a plugin
    /// closed it); every other outcome is a response.
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
    ) -> Result<Response<ProxyBody>, StreamReset>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        let upgrade = upgrade_of(&parts);
        let on_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());

        // Phase 1: context. One authority per request, whichever listener it came on.
        let authority = match super::authority::of_request(&parts) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(self.early_error(Error::MissingAuthority)),
            Err(e) => return Ok(self.early_error(e.into())),
        };
        // One snapshot for the whole request: discovery and chains of the
        // same config.
        let installed = self.registry.current();
        let destination = match &conn.destination {
            Some(d) => d.clone(),
            None => match installed.discovery.resolve_authority(&authority, 80) {
                Ok(d) => d,
                Err(e) => return Ok(self.early_error(e.into())),
            },
        };
        let namespace = destination.service.namespace.clone();
        let chain = installed.chain(&namespace);

        let mut headers = parts.headers;
        headers.remove(header::HOST);
        strip_hop_by_hop(&mut headers);
        let id = match headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                let id = new_request_id();
                headers.insert(
                    "x-request-id",
                    HeaderValue::from_str(&id).expect("hex is a valid header"),
                );
                id
            }
        };
        let h2 = parts.version == Version::HTTP_2;
        let dest_addr = destination
            .service
            .vips
            .first()
            .map(|ip| SocketAddr::new(*ip, destination.port))
            .unwrap_or(conn.local);
        let info = RequestInfo {
            id,
            namespace: namespace.clone(),
            service_hostname: destination.service.hostname.clone(),
            service_name: destination.service.name.clone(),
            source: conn.source,
            destination: dest_addr,
            protocol: if h2 { "HTTP/2" } else { "HTTP/1.1" },
            peer: conn.peer.clone(),
            start: SystemTime::now(),
        };
        let head = RequestHead {
            method: parts.method,
            scheme: parts.uri.scheme_str().unwrap_or("http").to_owned(),
            authority,
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into()),
            headers,
        };
        // One atomic load when nobody records.
        let observed = self.recorder.armed().then(|| {
            (
                self.recorder.clone(),
                RequestFacts::of(&info, &head, destination.port),
            )
        });
        let exchange = Arc::new(Exchange::new(info, head));
        let plugins = chain.map(|c| c.plugins.clone()).unwrap_or_default();
        let filters: SharedFilters = Arc::new(Mutex::new(Filters {
            slots: Vec::with_capacity(plugins.len()),
            exchange: exchange.clone(),
            metrics: self.metrics.clone(),
            access_log: self.access_log().clone(),
            endpoint: None,
            namespace,
            status: None,
            start,
            observed,
        }));

        // Answers other than the upstream's (local, errors, verdicts, upgrades) are
        // boxed where they happen: inline, their states would make every request's
        // future (which hyper moves by value) larger.

        // Phase 2: request headers.
        let outcome = self
            .request_headers(&filters, &exchange, &plugins, body.is_end_stream())
            .await;
        match outcome {
            Outcome::Continue => {}
            Outcome::Respond { response, upto } => {
                return Box::pin(self.local(&filters, &exchange, response, upto)).await;
            }
            Outcome::Reset => return Err(StreamReset),
        }

        // A plugin may have routed the request to another service.
        let route = exchange.lock().route.take();
        let routed_by = route.as_ref().map(|c| c.plugin.clone());
        let destination = match route {
            None => destination,
            Some(choice) => {
                match apply_route(&installed.discovery, &exchange, &destination, choice) {
                    Ok(d) => d,
                    Err(resp) => {
                        return Box::pin(self.local(&filters, &exchange, resp, last(&filters)))
                            .await;
                    }
                }
            }
        };

        // Phase 3: upstream.
        let endpoint = match destination.pick_endpoint() {
            Ok(e) => e,
            Err(e) => return Box::pin(self.answer_error(&filters, &exchange, e.into())).await,
        };
        record_upstream(&exchange, &destination, &endpoint, routed_by.as_deref());
        lock(&filters).endpoint = Some(endpoint.clone());
        // Only a connection that can hand over its stream is upgraded; any
        // other upgrade request goes on as plain HTTP, without its Upgrade.
        if let (Some(upgrade), Some(on_upgrade)) = (upgrade, on_upgrade) {
            return Box::pin(self.upgrade(&filters, &exchange, upgrade, on_upgrade, &endpoint, h2))
                .await;
        }
        let body = body.map_err(|e| -> BoxError { e.into() }).boxed_unsync();
        let body = body::counted(body, exchange.clone(), Counting::Received);
        let body_order: Vec<usize> = (0..plugins.len())
            .filter(|&i| plugins[i].handles_body(true))
            .collect();
        let sent = match self
            .request_body(&filters, &exchange, body, body_order)
            .await
        {
            Ok(sent) => sent,
            Err(early) => return early,
        };
        let SentBody {
            body: req_body,
            exact_len,
            streamed,
            mut state,
        } = sent;
        let upstream_req = match upstream_request(&exchange, h2, exact_len, streamed, req_body) {
            Ok(r) => r,
            Err(e) => {
                let err = Error::Upstream {
                    endpoint: endpoint.address.to_string(),
                    reason: format!("a plugin left the request invalid: {e}"),
                };
                return Box::pin(self.answer_error(&filters, &exchange, err)).await;
            }
        };
        // The chain may still answer while the body streams: its answer wins
        // over whatever the upstream is doing.
        let sent = tokio::select! {
            biased;
            verdict = chain_answer(state.as_mut()) => Err(verdict),
            r = self.forward(upstream_req, h2, &destination, &endpoint) => Ok(r),
        };
        let response = match sent {
            Err(verdict) => return Box::pin(self.verdict(&filters, &exchange, verdict)).await,
            Ok(Ok(r)) => r,
            Ok(Err(err)) => {
                // The upload failing because the chain ended it is the
                // chain's answer, not an upstream failure.
                if let Some(verdict) = state.as_ref().and_then(ended) {
                    return Box::pin(self.verdict(&filters, &exchange, verdict)).await;
                }
                let err = if err.is_connect() {
                    Error::UpstreamConnect {
                        endpoint: endpoint.address.to_string(),
                        reason: err.to_string(),
                    }
                } else if err.is_response_timeout() {
                    Error::UpstreamTimeout {
                        endpoint: endpoint.address.to_string(),
                        reason: err.to_string(),
                    }
                } else {
                    Error::Upstream {
                        endpoint: endpoint.address.to_string(),
                        reason: format!("{err:#}"),
                    }
                };
                return Box::pin(self.answer_error(&filters, &exchange, err)).await;
            }
        };
        // A plugin still deciding about request bytes decides before the
        // response leaves: a deny must not arrive behind the upstream's 200.
        if let Some(verdict) = settled(state.as_mut()).await {
            return Box::pin(self.verdict(&filters, &exchange, verdict)).await;
        }

        // Phase 4: response.
        let (parts, body) = response.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        {
            let mut st = exchange.lock();
            st.response = Some(ResponseHead {
                status: parts.status,
                headers,
            });
            st.stream.code_details = Some("via_upstream".into());
        }
        let mut body = body;
        if let Some(state) = state {
            // Past this point an answer from the request side cannot be
            // sent: the stream is reset instead, as Envoy does.
            body = abort_on_answer(body, state);
        }
        self.respond(&filters, &exchange, body, last(&filters))
            .await
    }

    /// Runs the request body through the chain until its first bytes leave
    /// it (or it ends): a body that ends inside the chain gets an exact
    /// length. `Err` is the answer when the chain answered already.
    async fn request_body(
        &self,
        filters: &SharedFilters,
        exchange: &Arc<Exchange>,
        body: ProxyBody,
        order: Vec<usize>,
    ) -> Result<SentBody, Result<Response<ProxyBody>, StreamReset>> {
        if order.is_empty() || body.is_end_stream() {
            // No plugin can change the body: it goes as it came, length
            // included.
            return Ok(SentBody {
                body,
                exact_len: None,
                streamed: false,
                state: None,
            });
        }
        let mut pump = Pump::new(
            body,
            filters.clone(),
            Dir::Request,
            order,
            self.limits.clone(),
        );
        match pump.prefetch(false).await {
            Ok(PrefetchResult::Complete(bytes, trailers)) => Ok(SentBody {
                exact_len: Some(bytes.len()),
                body: complete_body(bytes, trailers),
                streamed: false,
                state: None,
            }),
            Ok(PrefetchResult::Streaming) => {
                let state = pump.watch();
                Ok(SentBody {
                    body: pump.into_body(),
                    exact_len: None,
                    streamed: true,
                    state: Some(state),
                })
            }
            Err(e) => Err(Box::pin(self.verdict(filters, exchange, Verdict::from(e))).await),
        }
    }

    /// Carries out what the request body's chain decided.
    async fn verdict(
        &self,
        filters: &SharedFilters,
        exchange: &Arc<Exchange>,
        verdict: Verdict,
    ) -> Result<Response<ProxyBody>, StreamReset> {
        match verdict {
            Verdict::Respond(response, upto) => self.local(filters, exchange, response, upto).await,
            Verdict::Reset => Err(StreamReset),
            Verdict::Source(e) => {
                self.answer_error(filters, exchange, Error::Downstream(e))
                    .await
            }
        }
    }

    /// An Upgrade or extended CONNECT, once the request headers passed the
    /// chain: the upstream is asked the same, and if it and the response
    /// chain agree, the two streams are spliced. Bodies are not inspected.
    async fn upgrade(
        &self,
        filters: &SharedFilters,
        exchange: &Arc<Exchange>,
        upgrade: Upgrade,
        downstream: hyper::upgrade::OnUpgrade,
        endpoint: &crate::discovery::Endpoint,
        h2: bool,
    ) -> Result<Response<ProxyBody>, StreamReset> {
        let mut req = match upstream_request(exchange, h2, None, false, body::empty()) {
            Ok(r) => r,
            Err(e) => {
                let err = Error::Upstream {
                    endpoint: endpoint.address.to_string(),
                    reason: format!("a plugin left the request invalid: {e}"),
                };
                return self.answer_error(filters, exchange, err).await;
            }
        };
        match &upgrade {
            Upgrade::H1(proto) => {
                req.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                req.headers_mut().insert(header::UPGRADE, proto.clone());
            }
            Upgrade::H2(proto) => {
                *req.method_mut() = http::Method::CONNECT;
                req.extensions_mut().insert(proto.clone());
            }
        }
        let mut response = match self.upstream.send(req, h2, endpoint).await {
            Ok(r) => r,
            Err(err) => {
                let err = Error::UpstreamConnect {
                    endpoint: endpoint.address.to_string(),
                    reason: err.to_string(),
                };
                return self.answer_error(filters, exchange, err).await;
            }
        };
        let switched = |s: http::StatusCode| match upgrade {
            Upgrade::H1(_) => s == http::StatusCode::SWITCHING_PROTOCOLS,
            Upgrade::H2(_) => s.is_success(),
        };
        let upstream_proto = response.headers().get(header::UPGRADE).cloned();
        let upstream_io = switched(response.status()).then(|| hyper::upgrade::on(&mut response));
        let (parts, body) = response.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        {
            let mut st = exchange.lock();
            st.response = Some(ResponseHead {
                status: parts.status,
                headers,
            });
            st.stream.code_details = Some("via_upstream".into());
        }
        let body = if upstream_io.is_some() {
            body::empty()
        } else {
            body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()
        };
        let mut resp = self.respond(filters, exchange, body, last(filters)).await?;
        let Some(upstream_io) = upstream_io else {
            return Ok(resp);
        };
        if !switched(resp.status()) {
            // The response chain replaced the switch: no tunnel.
            return Ok(resp);
        }
        if let (Upgrade::H1(_), Some(proto)) = (&upgrade, upstream_proto) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            resp.headers_mut().insert(header::UPGRADE, proto);
        }
        let id = exchange.info.id.clone();
        tokio::spawn(splice(downstream, upstream_io, id));
        Ok(resp)
    }

    fn early_error(&self, err: Error) -> Response<ProxyBody> {
        let resp = error_response(&err, "");
        self.metrics.request("", resp.status.as_u16(), &[], 0.0);
        tracing::info!(target: "wayplug::access", status = resp.status.as_u16(), error = %err, "request rejected before routing");
        build_local(resp)
    }

    async fn request_headers(
        &self,
        filters: &SharedFilters,
        exchange: &Arc<Exchange>,
        plugins: &[Arc<Plugin>],
        eos: bool,
    ) -> Outcome {
        for (i, plugin) in plugins.iter().enumerate() {
            // Contexts are created in chain order, so a plugin that fails to
            // get one is handled like a failing callback.
            let reload = plugin.spec.fail_strategy == FailStrategy::FailReload;
            let created = plugin.new_filter(exchange, reload);
            match created {
                Ok(f) => lock(filters).slots.push(Slot {
                    plugin: plugin.clone(),
                    filter: Some(f),
                }),
                Err(failure) => {
                    lock(filters).slots.push(Slot {
                        plugin: plugin.clone(),
                        filter: None,
                    });
                    plugin.report_start_failure(&failure);
                    if plugin.spec.fail_strategy == FailStrategy::FailOpen {
                        continue;
                    }
                    return Outcome::Respond {
                        response: failure_response(plugin, &failure),
                        upto: i.checked_sub(1),
                    };
                }
            }
            // A shadow candidate decides from what the serving plugin saw.
            let seen = plugin.shadow.as_ref().map(|_| shadow::Seen::of(exchange));
            let outcome = step(
                filters,
                exchange,
                &self.limits,
                i,
                Dir::Request,
                Phase::Headers { eos },
            )
            .await;
            if let (Some(shadow), Some(seen)) = (&plugin.shadow, seen) {
                let serving = match &outcome {
                    Outcome::Continue => shadow::serving_continue(exchange, plugin.name()),
                    Outcome::Respond { response, .. } => shadow::Decision::Respond {
                        status: response.status.as_u16(),
                    },
                    Outcome::Reset => shadow::Decision::Reset,
                };
                shadow.compare(exchange.info.clone(), seen, eos, serving);
            }
            match outcome {
                Outcome::Continue => {}
                other => return other,
            }
        }
        Outcome::Continue
    }

    /// Answers with a data-path error, through every plugin's response
    /// callbacks.
    async fn answer_error(
        &self,
        filters: &SharedFilters,
        exchange: &Arc<Exchange>,
        err: Error,
    ) -> Result<Response<ProxyBody>, StreamReset> {
        {
            let mut st = exchange.lock();
            st.stream.response_flags |= err.response_flags();
        }
        self.local(filters, exchange, error_response(&err, ""), last(filters))
            .await
    }

    /// Sends a local response through the response callbacks of filters
    /// `0..=upto`.
    async fn local(
        &self,
        filters: &SharedFilters,
        exchange: &Arc<Exchange>,
        local: LocalResponse,
        upto: Option<usize>,
    ) -> Result<Response<ProxyBody>, StreamReset> {
        let grpc = local.grpc_status.is_some() || is_grpc(&exchange.lock().request.headers);
        let local = if grpc { grpc_local(local) } else { local };
        let mut headers = header_map(&local.headers);
        if !local.body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        let body = body::full(local.body.clone());
        {
            let mut st = exchange.lock();
            st.response = Some(ResponseHead {
                status: local.status,
                headers,
            });
            st.local_response = None;
            st.stream.code_details = Some(local.details.clone());
            // Remember who answered, for the access log.
            // Plugins can read it too, as property `wayplug.local_response_by`.
            st.properties
                .insert(LOCAL_RESPONSE_BY.into(), local.plugin.clone().into_bytes());
        }
        tracing::debug!(plugin = %local.plugin, status = local.status.as_u16(), details = %local.details, "local response");
        self.respond(filters, exchange, body, upto).await
    }

    /// Runs the response phase over filters `upto..=0` and builds the
    /// response the client gets. `Err` when a plugin reset the stream.
    async fn respond(
        &self,
        filters: &SharedFilters,
        exchange: &Arc<Exchange>,
        body: ProxyBody,
        upto: Option<usize>,
    ) -> Result<Response<ProxyBody>, StreamReset> {
        let (body, order) = self.response_headers(filters, exchange, body, upto).await?;
        let declared_len = exchange
            .lock()
            .response
            .as_ref()
            .is_some_and(|r| r.headers.contains_key(header::CONTENT_LENGTH));
        let order: Vec<usize> = {
            let f = lock(filters);
            order
                .into_iter()
                .filter(|&i| f.slots[i].plugin.handles_body(false))
                .collect()
        };
        let pumped = !order.is_empty() && !body.is_end_stream();
        let (out_body, exact_len) = if !pumped {
            // No plugin can change the body: length and framing stay.
            (body, None)
        } else {
            let mut pump = Pump::new(
                body,
                filters.clone(),
                Dir::Response,
                order,
                self.limits.clone(),
            );
            // A body of unknown length may be a stream (server-sent events):
            // its head leaves as soon as no plugin holds bytes back.
            match pump.prefetch(!declared_len).await {
                Ok(PrefetchResult::Complete(bytes, trailers)) => {
                    let len = bytes.len();
                    (complete_body(bytes, trailers), Some(len))
                }
                Ok(PrefetchResult::Streaming) => (pump.into_body(), None),
                Err(PumpError::Respond(resp, _)) => {
                    // A local answer from the body phase keeps its own headers.
                    let mut headers = header_map(&resp.headers);
                    if !resp.body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
                        headers
                            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    }
                    exchange.lock().response = Some(ResponseHead {
                        status: resp.status,
                        headers,
                    });
                    let len = resp.body.len();
                    (body::full(resp.body), Some(len))
                }
                Err(PumpError::Reset) => return Err(StreamReset),
                Err(PumpError::Source(e)) => {
                    let err = Error::Upstream {
                        endpoint: String::new(),
                        reason: format!("the response body failed: {e}"),
                    };
                    let resp = error_response(&err, "");
                    let mut st = exchange.lock();
                    st.stream.response_flags |= err.response_flags();
                    st.response = Some(ResponseHead {
                        status: resp.status,
                        headers: header_map(&resp.headers),
                    });
                    drop(st);
                    let len = resp.body.len();
                    (body::full(resp.body), Some(len))
                }
            }
        };
        let head = exchange
            .lock()
            .response
            .clone()
            .expect("set before the response phase");
        let mut headers = head.headers;
        if let Some(len) = exact_len {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        } else if pumped && !out_body.is_end_stream() {
            // Plugins may change the body as it streams.
            headers.remove(header::CONTENT_LENGTH);
        }
        lock(filters).status = Some(head.status.as_u16());
        let out_body = body::counted(out_body, exchange.clone(), Counting::Sent);
        let mut resp = Response::new(body::ProxyBody::new(Holding::new(
            out_body,
            filters.clone(),
        )));
        *resp.status_mut() = head.status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }

    /// The response header callbacks, towards the client. A plugin's local
    /// response replaces the response for the filters after it. Returns the
    /// body and the filters whose body callbacks still run.
    async fn response_headers(
        &self,
        filters: &SharedFilters,
        exchange: &Arc<Exchange>,
        mut body: ProxyBody,
        upto: Option<usize>,
    ) -> Result<(ProxyBody, Vec<usize>), StreamReset> {
        let mut order: Vec<usize> = match upto {
            Some(u) => (0..=u).rev().collect(),
            None => Vec::new(),
        };
        let mut k = 0;
        while k < order.len() {
            let i = order[k];
            let phase = Phase::Headers {
                eos: body.is_end_stream(),
            };
            match step(filters, exchange, &self.limits, i, Dir::Response, phase).await {
                Outcome::Continue => k += 1,
                Outcome::Respond { response, .. } => {
                    let headers = header_map(&response.headers);
                    exchange.lock().response = Some(ResponseHead {
                        status: response.status,
                        headers,
                    });
                    body = body::full(response.body);
                    order = order[k + 1..].to_vec();
                    k = 0;
                }
                Outcome::Reset => return Err(StreamReset),
            }
        }
        Ok((body, order))
    }
}

/// The request body as it goes upstream.
struct SentBody {
    body: ProxyBody,
    /// Set when the whole body went through the chain before leaving it.
    exact_len: Option<usize>,
    /// Plugins see it as it streams, so its length is not known up front.
    streamed: bool,
    state: Option<watch::Receiver<BodyState>>,
}

/// Builds the upstream request from the exchange's request head.
fn upstream_request(
    exchange: &Exchange,
    h2: bool,
    exact_len: Option<usize>,
    streamed: bool,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, http::Error> {
    let mut st = exchange.lock();
    st.request_sent = true;
    let head = &st.request;
    let mut builder = Request::builder()
        .method(head.method.clone())
        .uri({
            let mut uri = String::with_capacity(7 + head.authority.len() + head.path.len());
            uri.push_str("http://");
            uri.push_str(&head.authority);
            uri.push_str(&head.path);
            uri
        })
        .version(if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        });
    let mut headers = head.headers.clone();
    if let Ok(v) = HeaderValue::from_str(&head.authority) {
        headers.insert(header::HOST, v);
    }
    if let Some(len) = exact_len {
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    } else if streamed && !body.is_end_stream() {
        // Plugins may change the body as it streams: its length is no
        // longer known up front.
        headers.remove(header::CONTENT_LENGTH);
    }
    *builder.headers_mut().expect("fresh builder") = headers;
    builder.body(body)
}

/// Where the request body stands in its chain, for the side waiting on the
/// upstream's answer.
#[derive(Debug, Clone)]
enum BodyState {
    /// Everything received so far has left the chain.
    Flowing,
    /// A plugin holds bytes back, or is deciding about them.
    Held,
    /// The chain ended the request mid-body.
    Ended(Verdict),
}

/// How the chain ended a request body it did not let through.
#[derive(Debug, Clone)]
enum Verdict {
    Respond(LocalResponse, Option<usize>),
    Reset,
    Source(String),
}

impl From<PumpError> for Verdict {
    fn from(e: PumpError) -> Verdict {
        match e {
            PumpError::Respond(r, upto) => Verdict::Respond(r, upto),
            PumpError::Reset => Verdict::Reset,
            PumpError::Source(e) => Verdict::Source(e.to_string()),
        }
    }
}

fn ended(state: &watch::Receiver<BodyState>) -> Option<Verdict> {
    match &*state.borrow() {
        BodyState::Ended(v) => Some(v.clone()),
        _ => None,
    }
}

/// Resolves when the chain ends the request body; never, if there is no
/// chain on it or the body finished.
async fn chain_answer(state: Option<&mut watch::Receiver<BodyState>>) -> Verdict {
    let Some(state) = state else {
        return std::future::pending().await;
    };
    loop {
        if let Some(v) = ended(state) {
            return v;
        }
        if state.changed().await.is_err() {
            if let Some(v) = ended(state) {
                return v;
            }
            return std::future::pending().await;
        }
    }
}

/// Waits while a plugin holds request bytes back; the chain's answer, if it
/// gave one.
async fn settled(state: Option<&mut watch::Receiver<BodyState>>) -> Option<Verdict> {
    let state = state?;
    loop {
        match &*state.borrow_and_update() {
            BodyState::Ended(v) => return Some(v.clone()),
            BodyState::Flowing => return None,
            BodyState::Held => {}
        }
        if state.changed().await.is_err() {
            return ended(state);
        }
    }
}

/// The response body, failed (so the stream is reset) if the request's chain
/// ends the request after the response started.
fn abort_on_answer(body: ProxyBody, state: watch::Receiver<BodyState>) -> ProxyBody {
    let stream = futures_util::stream::unfold(
        (body, Some(state)),
        |(mut body, mut state)| async move {
            let frame = match state.as_mut() {
                None => body.frame().await,
                Some(st) => tokio::select! {
                    biased;
                    v = chain_answer(Some(st)) => {
                        let e: BoxError = format!(
                            "the request was ended by its plugins after the response started ({v:?})"
                        )
                        .into();
                        return Some((Err(e), (body::empty(), None)));
                    }
                    f = body.frame() => f,
                },
            };
            if let Some(st) = state.as_ref()
                && st.has_changed().is_err()
                && ended(st).is_none()
            {
                // The request body is done with: nothing can end it now.
                state = None;
            }
            frame.map(|f| (f, (body, state)))
        },
    );
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

/// Copies bytes both ways between an upgraded client stream and the
/// upstream's until either side closes.
async fn splice(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    id: String,
) {
    let (down, up) = tokio::join!(downstream, upstream);
    let (down, up) = match (down, up) {
        (Ok(d), Ok(u)) => (d, u),
        (d, u) => {
            tracing::debug!(id, downstream = ?d.err(), upstream = ?u.err(), "upgrade did not complete");
            return;
        }
    };
    let mut down = hyper_util::rt::TokioIo::new(down);
    let mut up = hyper_util::rt::TokioIo::new(up);
    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
        Ok((to_up, to_down)) => {
            tracing::debug!(id, to_up, to_down, "upgraded stream closed")
        }
        Err(e) => tracing::debug!(id, error = %e, "upgraded stream ended with an error"),
    }
}

/// Resolves a plugin's route choice and applies its rewrites; an unknown
/// service is the plugin's failure.
fn apply_route(
    discovery: &Discovery,
    exchange: &Exchange,
    current: &Destination,
    choice: RouteChoice,
) -> Result<Destination, LocalResponse> {
    let port = choice.port.unwrap_or(current.port);
    let authority = format!("{}:{port}", choice.service);
    // A backend the waypoint does not know answers 500, as Envoy does for a
    // route to a missing cluster: the plugin worked, its configuration points
    // nowhere, so no fail strategy applies.
    let dest = discovery.resolve_authority(&authority, port).map_err(|e| {
        let err = Error::UnknownBackend {
            plugin: choice.plugin.clone(),
            namespace: exchange.info.namespace.clone(),
            backend: authority.clone(),
            reason: e.to_string(),
        };
        exchange.lock().stream.response_flags |= err.response_flags();
        error_response(&err, &choice.plugin)
    })?;
    let mut st = exchange.lock();
    if let Some(path) = choice.rewrite_path {
        st.request.path = match st.request.path.split_once('?') {
            Some((_, q)) => format!("{path}?{q}"),
            None => path,
        };
    }
    if let Some(host) = choice.rewrite_host {
        st.request.authority = host;
    }
    Ok(dest)
}

/// Where the request goes, for the `upstream.*` and `xds.*` attributes.
fn record_upstream(
    exchange: &Exchange,
    destination: &Destination,
    endpoint: &Endpoint,
    routed_by: Option<&str>,
) {
    let mut st = exchange.lock();
    st.stream.upstream = Some(endpoint.address);
    // Istio's cluster name, `outbound|<port>||<hostname>`, without the formatter.
    let host = &destination.service.hostname;
    let mut cluster = String::with_capacity("outbound|||".len() + 5 + host.len());
    cluster.push_str("outbound|");
    cluster.push_str(itoa::Buffer::new().format(destination.port));
    cluster.push_str("||");
    cluster.push_str(host);
    st.stream.cluster = Some(cluster);
    st.stream.route = Some(routed_by.unwrap_or("default").to_owned());
}

fn last(filters: &SharedFilters) -> Option<usize> {
    lock(filters).slots.len().checked_sub(1)
}

/// A plugin's response headers as a header map. Plugins' values were
/// checked when they were set; anything invalid is dropped.
fn header_map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(k, v);
        }
    }
    headers
}

fn build_local(local: LocalResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(local.body));
    *resp.status_mut() = local.status;
    *resp.headers_mut() = header_map(&local.headers);
    resp
}

fn complete_body(bytes: Bytes, trailers: Option<HeaderMap>) -> ProxyBody {
    match trailers {
        None => body::full(bytes),
        Some(t) => {
            let frames = vec![
                Ok::<_, BoxError>(Frame::data(bytes)),
                Ok(Frame::trailers(t)),
            ];
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
        }
    }
}

enum PumpError {
    Respond(LocalResponse, Option<usize>),
    Reset,
    Source(BoxError),
}

impl std::fmt::Debug for PumpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PumpError::Respond(..) => "a plugin answered the request",
            PumpError::Reset => "a plugin reset the stream",
            PumpError::Source(_) => "the body source failed",
        })
    }
}

impl std::fmt::Display for PumpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for PumpError {}

enum PrefetchResult {
    /// The whole body went through the chain before anything left it.
    Complete(Bytes, Option<HeaderMap>),
    /// Data is flowing; the rest streams.
    Streaming,
}

/// Moves a body through the body callbacks of a chain, in `order`. Each
/// filter sees its own buffer: what earlier filters passed on plus what it
/// kept by pausing.
struct Pump {
    source: ProxyBody,
    filters: SharedFilters,
    exchange: Arc<Exchange>,
    dir: Dir,
    order: Vec<usize>,
    held: Vec<BytesMut>,
    limits: Limits,
    out: std::collections::VecDeque<Frame<Bytes>>,
    done: bool,
    /// Published once someone watches (the request side while it waits for
    /// the upstream).
    state: Option<watch::Sender<BodyState>>,
}

impl Pump {
    fn new(
        source: ProxyBody,
        filters: SharedFilters,
        dir: Dir,
        order: Vec<usize>,
        limits: Limits,
    ) -> Pump {
        let exchange = lock(&filters).exchange.clone();
        let held = order.iter().map(|_| BytesMut::new()).collect();
        Pump {
            source,
            filters,
            exchange,
            dir,
            order,
            held,
            limits,
            out: Default::default(),
            done: false,
            state: None,
        }
    }

    /// Where the body stands in the chain, from now on.
    fn watch(&mut self) -> watch::Receiver<BodyState> {
        let (tx, rx) = watch::channel(self.current());
        self.state = Some(tx);
        rx
    }

    fn current(&self) -> BodyState {
        if self.held.iter().all(BytesMut::is_empty) {
            BodyState::Flowing
        } else {
            BodyState::Held
        }
    }

    fn publish(&self, state: BodyState) {
        if let Some(tx) = &self.state {
            tx.send_if_modified(|old| {
                let same = matches!(
                    (&*old, &state),
                    (BodyState::Flowing, BodyState::Flowing) | (BodyState::Held, BodyState::Held)
                );
                if !same {
                    *old = state;
                }
                !same
            });
        }
    }

    /// Pulls until the first bytes leave the chain or the body ends. When
    /// `eager`, also stops as soon as no plugin holds bytes and the source
    /// has nothing ready: the head need not wait for a slow stream.
    async fn prefetch(&mut self, eager: bool) -> Result<PrefetchResult, PumpError> {
        loop {
            if !self.out.is_empty() && !self.done {
                return Ok(PrefetchResult::Streaming);
            }
            if self.done {
                let mut data = BytesMut::new();
                let mut trailers = None;
                for frame in self.out.drain(..) {
                    match frame.into_data() {
                        Ok(d) => data.extend_from_slice(&d),
                        Err(frame) => trailers = frame.into_trailers().ok(),
                    }
                }
                return Ok(PrefetchResult::Complete(data.freeze(), trailers));
            }
            if eager && self.held.iter().all(BytesMut::is_empty) {
                use futures_util::FutureExt;
                match self.source.frame().now_or_never() {
                    None => return Ok(PrefetchResult::Streaming),
                    Some(frame) => self.process(frame).await?,
                }
                continue;
            }
            self.advance().await?;
        }
    }

    fn into_body(self) -> ProxyBody {
        let stream = futures_util::stream::unfold(self, |mut pump| async move {
            loop {
                if let Some(frame) = pump.out.pop_front() {
                    return Some((Ok(frame), pump));
                }
                if pump.done {
                    return None;
                }
                if let Err(e) = pump.advance().await {
                    pump.done = true;
                    let message = e.to_string();
                    // Whoever waits on the upstream learns the chain's
                    // answer before the upstream sees the upload fail.
                    pump.publish(BodyState::Ended(Verdict::from(e)));
                    return Some((Err(message.into()), pump));
                }
            }
        });
        http_body_util::StreamBody::new(stream).boxed_unsync()
    }

    /// Reads one frame from the source and runs it through the chain.
    async fn advance(&mut self) -> Result<(), PumpError> {
        let frame = self.source.frame().await;
        self.process(frame).await
    }

    async fn process(
        &mut self,
        frame: Option<Result<Frame<Bytes>, BoxError>>,
    ) -> Result<(), PumpError> {
        self.publish(BodyState::Held);
        match frame {
            None => {
                self.run_data(Bytes::new(), true).await?;
                self.done = true;
            }
            Some(Err(e)) => return Err(PumpError::Source(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = self.source.is_end_stream();
                    self.run_data(data, eos).await?;
                    if eos {
                        self.done = true;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        // As in Envoy: trailers end the body, and the last
                        // body callback had end_of_stream = false.
                        self.run_trailers(trailers).await?;
                    }
                    self.done = true;
                }
            },
        }
        self.publish(self.current());
        Ok(())
    }

    async fn run_data(&mut self, data: Bytes, eos: bool) -> Result<(), PumpError> {
        let mut chunk = BytesMut::from(&data[..]);
        for pos in 0..self.order.len() {
            let i = self.order[pos];
            self.held[pos].extend_from_slice(&chunk);
            let buffered = std::mem::take(&mut self.held[pos]);
            let size = buffered.len();
            self.set_buffer(buffered);
            let status = step_body(
                &self.filters,
                &self.exchange,
                &self.limits,
                i,
                self.dir,
                size,
                eos,
            )
            .await;
            let buffered = self.take_buffer();
            match status {
                BodyStep::Pass => chunk = buffered,
                BodyStep::Hold => {
                    if buffered.len() > self.limits.max_buffered_body {
                        let err = Error::BodyTooLarge {
                            which: if self.dir == Dir::Request {
                                "request"
                            } else {
                                "response"
                            },
                            limit: self.limits.max_buffered_body,
                        };
                        return Err(PumpError::Respond(error_response(&err, ""), Some(i)));
                    }
                    self.held[pos] = buffered;
                    return Ok(());
                }
                BodyStep::Respond(r, upto) => return Err(PumpError::Respond(r, upto)),
                BodyStep::Reset => return Err(PumpError::Reset),
            }
        }
        if !chunk.is_empty() {
            self.out.push_back(Frame::data(chunk.freeze()));
        }
        Ok(())
    }

    /// Trailers end the body. Bytes released by earlier filters reach each
    /// filter's body callback first (end_of_stream = false); then its
    /// trailers callback runs with what it holds as its buffer, and what it
    /// leaves there moves on.
    async fn run_trailers(&mut self, trailers: HeaderMap) -> Result<(), PumpError> {
        {
            let mut st = self.exchange.lock();
            match self.dir {
                Dir::Request => st.request_trailers = Some(trailers),
                Dir::Response => st.response_trailers = Some(trailers),
            }
        }
        let mut chunk = BytesMut::new();
        for pos in 0..self.order.len() {
            let i = self.order[pos];
            if !chunk.is_empty() {
                self.held[pos].extend_from_slice(&chunk);
                let buffered = std::mem::take(&mut self.held[pos]);
                let size = buffered.len();
                self.set_buffer(buffered);
                let status = step_body(
                    &self.filters,
                    &self.exchange,
                    &self.limits,
                    i,
                    self.dir,
                    size,
                    false,
                )
                .await;
                self.held[pos] = self.take_buffer();
                match status {
                    BodyStep::Pass | BodyStep::Hold => {}
                    BodyStep::Respond(r, upto) => return Err(PumpError::Respond(r, upto)),
                    BodyStep::Reset => return Err(PumpError::Reset),
                }
            }
            let buffered = std::mem::take(&mut self.held[pos]);
            self.set_buffer(buffered);
            let outcome = step(
                &self.filters,
                &self.exchange,
                &self.limits,
                i,
                self.dir,
                Phase::Trailers,
            )
            .await;
            chunk = self.take_buffer();
            match outcome {
                Outcome::Continue => {}
                Outcome::Respond { response, upto } => {
                    return Err(PumpError::Respond(response, upto));
                }
                Outcome::Reset => return Err(PumpError::Reset),
            }
        }
        if !chunk.is_empty() {
            self.out.push_back(Frame::data(chunk.freeze()));
        }
        let trailers = {
            let st = self.exchange.lock();
            match self.dir {
                Dir::Request => st.request_trailers.clone(),
                Dir::Response => st.response_trailers.clone(),
            }
        };
        if let Some(t) = trailers {
            self.out.push_back(Frame::trailers(t));
        }
        Ok(())
    }

    fn set_buffer(&self, b: BytesMut) {
        let mut st = self.exchange.lock();
        match self.dir {
            Dir::Request => st.request_body = b,
            Dir::Response => st.response_body = b,
        }
    }

    fn take_buffer(&self) -> BytesMut {
        let mut st = self.exchange.lock();
        match self.dir {
            Dir::Request => std::mem::take(&mut st.request_body),
            Dir::Response => std::mem::take(&mut st.response_body),
        }
    }
}

enum BodyStep {
    Pass,
    Hold,
    Respond(LocalResponse, Option<usize>),
    Reset,
}

/// A body callback. Pausing before the end of the body buffers; pausing at
/// the end holds the stream until the plugin resumes it.
async fn step_body(
    filters: &SharedFilters,
    exchange: &Exchange,
    limits: &Limits,
    i: usize,
    dir: Dir,
    size: usize,
    eos: bool,
) -> BodyStep {
    if !eos {
        // Run the callback without waiting: a pause here means "buffer".
        let paused = match run_callback(filters, exchange, i, dir, Phase::Body { size, eos }) {
            Ok((_, status)) => status == FilterStatus::Pause,
            Err(Outcome::Continue) => false,
            Err(Outcome::Respond { response, upto }) => return BodyStep::Respond(response, upto),
            Err(Outcome::Reset) => return BodyStep::Reset,
        };
        let mut st = exchange.lock();
        if let Some(local) = st.local_response.take() {
            return BodyStep::Respond(local, Some(i));
        }
        if st.reset {
            return BodyStep::Reset;
        }
        return if paused {
            BodyStep::Hold
        } else {
            BodyStep::Pass
        };
    }
    match step(filters, exchange, limits, i, dir, Phase::Body { size, eos }).await {
        Outcome::Continue => BodyStep::Pass,
        Outcome::Respond { response, upto } => BodyStep::Respond(response, upto),
        Outcome::Reset => BodyStep::Reset,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::path::Path;
    use std::time::Duration;

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Config;
    use crate::plugin::callout::Callouts;
    use crate::plugin::engine::Engine;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn request_ids_are_distinct_across_batches() {
        // Three batches' worth, on two threads.
        let ids: Vec<String> = std::thread::scope(|s| {
            let a = s.spawn(|| (0..400).map(|_| new_request_id()).collect::<Vec<_>>());
            let mut ids: Vec<String> = (0..400).map(|_| new_request_id()).collect();
            ids.extend(a.join().unwrap());
            ids
        });
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    /// An upstream on loopback that records each request's headers and
    /// answers `hello` with a length.
    async fn upstream() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        record.lock().unwrap().push(req.headers().clone());
                        async move {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    /// A pipeline with no plugins: `svc.test` goes to `port` on loopback,
    /// `down.test` to a port nothing listens on.
    async fn pipeline(port: u16) -> Pipeline {
        pipeline_with(port, "").await
    }

    /// [`pipeline`] with more config (`namespaces:`) after the services.
    async fn pipeline_with(port: u16, extra: &str) -> Pipeline {
        let yaml = format!(
            r#"
services:
  - {{ name: svc, namespace: ns, hostname: svc.test, ports: {{ 80: {port} }} }}
  - {{ name: down, namespace: ns, hostname: down.test, ports: {{ 80: 1 }} }}
workloads:
  - {{ uid: u1, name: svc-1, namespace: ns, workloadIps: [127.0.0.1], services: {{ ns/svc.test: {{ 80: {port} }}, ns/down.test: {{ 80: 1 }} }} }}
{extra}
"#
        );
        let config = Config::from_yaml(&yaml, "t", Path::new(".")).unwrap();
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(
            Engine::new(&config.sandbox).unwrap(),
            metrics.clone(),
            Arc::new(Callouts::new(config.upstreams.clone())),
            config.sandbox.clone(),
            Default::default(),
        ));
        registry.apply(config).await.unwrap();
        Pipeline::new(
            registry,
            metrics,
            Limits {
                paused_request_timeout: Duration::from_secs(1),
                max_buffered_body: 1024,
            },
        )
    }

    fn conn() -> ConnInfo {
        ConnInfo {
            source: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:15006".parse().unwrap(),
            peer: None,
            destination: None,
        }
    }

    async fn handle(
        p: &Pipeline,
        req: Request<Full<Bytes>>,
    ) -> (http::StatusCode, HeaderMap, String) {
        let resp = tokio::time::timeout(T, p.handle(req, &conn()))
            .await
            .expect("answered in time")
            .expect("not reset");
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(T, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn forwards_end_to_end_headers_and_keeps_the_length() {
        let (addr, seen) = upstream().await;
        let p = pipeline(addr.port()).await;
        let req = Request::builder()
            .uri("/x")
            .header("host", "svc.test")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "dropped")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers, deflate")
            .header("x-end", "kept")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, headers, body) = handle(&p, req).await;
        assert_eq!(status, 200);
        assert_eq!(body, "hello");
        assert_eq!(
            headers["content-length"], "5",
            "no plugin can change the body"
        );
        let up = seen.lock().unwrap()[0].clone();
        assert_eq!(up["x-end"], "kept");
        assert_eq!(up["te"], "trailers", "only the trailers token survives");
        assert_eq!(up["host"], "svc.test");
        assert!(up.get("x-request-id").is_some_and(|v| v.len() == 32));
        for hop in ["connection", "keep-alive", "x-hop"] {
            assert!(up.get(hop).is_none(), "{hop} reached the upstream");
        }
    }

    /// A Proxy-Wasm module with only `proxy_on_request_headers`, which adds
    /// `x-seen: 1` to the request.
    const HEADERS_ONLY: &str = r#"
(module
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-seen1")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 22) (i32.const 1)))
    (i32.const 0))
)
"#;

    #[tokio::test]
    async fn callbacks_a_module_does_not_export_are_never_entered() {
        let (addr, seen) = upstream().await;
        let path =
            std::env::temp_dir().join(format!("wayplug-headers-only-{}.wasm", std::process::id()));
        std::fs::write(&path, wat::parse_str(HEADERS_ONLY).unwrap()).unwrap();
        // FAIL_OPEN: every callback that runs would snapshot the exchange.
        let extra = format!(
            "namespaces: {{ ns: {{ plugins: [ {{ name: h, url: 'file://{}', failStrategy: FAIL_OPEN }} ] }} }}",
            path.display()
        );
        let p = pipeline_with(addr.port(), &extra).await;
        let _ = std::fs::remove_file(&path);
        let plugin = p.registry().chain("ns").unwrap().plugins[0].clone();
        assert_eq!(plugin.hooks(), Hooks::REQUEST_HEADERS);
        assert!(!plugin.handles_body(true) && !plugin.handles_body(false));
        let crate::plugin::PluginKind::ProxyWasm(vms) = &plugin.kind else {
            panic!("a Proxy-Wasm plugin");
        };
        let post = || {
            Request::builder()
                .method("POST")
                .uri("/x")
                .header("host", "svc.test")
                .body(Full::new(Bytes::from("a body")))
                .unwrap()
        };
        // The first request may start this thread's VM.
        assert_eq!(handle(&p, post()).await.0, 200);
        let before = vms.guest_calls();
        for _ in 0..3 {
            let (status, _, body) = handle(&p, post()).await;
            assert_eq!((status.as_u16(), body.as_str()), (200, "hello"));
        }
        // Per request: creating its context and the request headers; no
        // body, response or end-of-request call.
        assert_eq!(vms.guest_calls() - before, 3 * 2);
        let up = seen.lock().unwrap();
        assert_eq!(up.len(), 4);
        assert!(up.iter().all(|h| h["x-seen"] == "1"), "the guest ran");
        assert!(up.iter().all(|h| h["content-length"] == "6"));
    }

    #[tokio::test]
    async fn data_path_errors_answer_with_their_status() {
        let p = pipeline(1).await;
        let cases = [
            ("nowhere.test", 404, "nowhere.test"),
            ("down.test", 503, "cannot connect to upstream 127.0.0.1:1"),
        ];
        for (host, status, says) in cases {
            let req = Request::builder()
                .uri("/")
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let (got, _, body) = handle(&p, req).await;
            assert_eq!(got, status, "{host}: {body}");
            assert!(body.contains(says), "{host}: {body}");
        }
        let req = Request::builder()
            .uri("/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (got, _, body) = handle(&p, req).await;
        assert_eq!(got, 400, "{body}");
    }

    #[tokio::test]
    async fn a_grpc_call_gets_its_error_in_grpc() {
        let p = pipeline(1).await;
        let req = Request::builder()
            .method("POST")
            .uri("/pkg.Svc/Call")
            .header("host", "down.test")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, headers, body) = handle(&p, req).await;
        assert_eq!(status, 200, "gRPC errors travel as trailers-only 200s");
        assert_eq!(headers["grpc-status"], "14", "503 maps to UNAVAILABLE");
        assert!(
            headers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("cannot connect to upstream 127.0.0.1:1"),
            "{headers:?}"
        );
        assert_eq!(body, "");
    }

    #[tokio::test]
    async fn an_upgrade_the_connection_cannot_carry_goes_on_as_plain_http() {
        // Driven in process, the request has no stream to hand over.
        let (addr, seen) = upstream().await;
        let p = pipeline(addr.port()).await;
        let req = Request::builder()
            .uri("/chat")
            .header("host", "svc.test")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, body) = handle(&p, req).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "hello"));
        let up = seen.lock().unwrap()[0].clone();
        assert!(
            up.get("upgrade").is_none() && up.get("connection").is_none(),
            "{up:?}"
        );
    }

    #[test]
    fn grpc_local_replies_follow_envoy() {
        let local = |status: u16, grpc: Option<u32>, body: &str| LocalResponse {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: vec![
                ("x-kept".into(), b"1".to_vec()),
                ("content-type".into(), b"text/plain".to_vec()),
            ],
            body: Bytes::from(body.to_owned()),
            details: String::new(),
            plugin: "p".into(),
            grpc_status: grpc,
        };
        let cases = [
            (local(403, None, "no"), "7", Some("no")),
            (local(401, None, ""), "16", None),
            (local(404, None, ""), "12", None),
            (local(429, None, ""), "14", None),
            (local(418, None, ""), "2", None),
            (local(200, Some(5), "100% gone\n"), "5", Some("100%25 gone")),
            (local(200, Some(3), "caf\u{e9}"), "3", Some("caf%C3%A9")),
        ];
        for (input, status, message) in cases {
            let out = grpc_local(input);
            let h = header_map(&out.headers);
            assert_eq!(out.status, 200);
            assert!(out.body.is_empty());
            assert_eq!(h["grpc-status"], status);
            assert_eq!(h["content-type"], "application/grpc");
            assert_eq!(h.get_all("content-type").iter().count(), 1);
            assert_eq!(h["x-kept"], "1");
            assert_eq!(h.get("grpc-message").map(|v| v.to_str().unwrap()), message);
        }
    }

    #[test]
    fn upgrades_are_recognised_only_when_asked_for() {
        let parts = |b: http::request::Builder| b.body(()).unwrap().into_parts().0;
        let ws = parts(
            Request::builder()
                .header("connection", "keep-alive, Upgrade")
                .header("upgrade", "websocket"),
        );
        assert!(matches!(upgrade_of(&ws), Some(Upgrade::H1(p)) if p == "websocket"));
        let no_token = parts(Request::builder().header("upgrade", "websocket"));
        assert!(
            upgrade_of(&no_token).is_none(),
            "Upgrade without Connection: upgrade"
        );
        let h2_plain = parts(
            Request::builder()
                .version(Version::HTTP_2)
                .header("connection", "upgrade")
                .header("upgrade", "websocket"),
        );
        assert!(upgrade_of(&h2_plain).is_none(), "HTTP/2 has no Upgrade");
        let connect = parts(
            Request::builder()
                .method("CONNECT")
                .version(Version::HTTP_2)
                .extension(hyper::ext::Protocol::from_static("websocket")),
        );
        assert!(matches!(upgrade_of(&connect), Some(Upgrade::H2(_))));
        let classic = parts(
            Request::builder()
                .method("CONNECT")
                .version(Version::HTTP_2),
        );
        assert!(
            upgrade_of(&classic).is_none(),
            "classic CONNECT is not an upgrade"
        );
    }

    #[test]
    fn headers_named_by_connection_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Hop , Keep-Alive,,close"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
        // A map without any of them is left exactly as it was.
        let mut plain = HeaderMap::new();
        plain.insert("x-a", HeaderValue::from_static("1"));
        plain.append("x-a", HeaderValue::from_static("2"));
        plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let before = plain.clone();
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain, before);
        // Proxy-Authenticate and Trailer go even when Connection names nothing.
        let mut resp = HeaderMap::new();
        resp.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic"),
        );
        resp.insert(header::TRAILER, HeaderValue::from_static("x-t"));
        resp.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut resp);
        assert!(resp.is_empty(), "{resp:?}");
    }

    #[test]
    fn te_keeps_only_trailers() {
        let cases = [
            ("trailers", Some("trailers")),
            ("gzip, Trailers", Some("trailers")),
            ("trailers;q=0.5", Some("trailers")),
            ("gzip", None),
            ("trailersx", None),
        ];
        for (te, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::TE, HeaderValue::from_static(te));
            h.insert(header::CONNECTION, HeaderValue::from_static("te"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.get(header::TE).map(|v| v.to_str().unwrap()), want, "{te}");
            assert!(h.get(header::CONNECTION).is_none());
        }
    }
}
