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

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::Error;
use super::body::{self, BoxError, Holding, ProxyBody};
use super::upstream::Upstream;
use crate::config::FailStrategy;
use crate::discovery::{Destination, Discovery};
use crate::exchange::{
    Exchange, LocalResponse, PeerIdentity, RequestHead, RequestInfo, ResponseHead, RouteChoice,
};
use crate::metrics::Metrics;
use crate::plugin::{FilterStatus, HttpFilter, Plugin, PluginFailure, Registry};

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
    discovery: ArcSwap<Discovery>,
    registry: Arc<Registry>,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    limits: Limits,
}

/// The request's plugin contexts. Shared by the request-body stream and the
/// response path; finished when the last of them lets go.
struct Filters {
    slots: Vec<Slot>,
    exchange: Arc<Exchange>,
    metrics: Arc<Metrics>,
    namespace: String,
    status: Option<u16>,
    start: Instant,
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
        for slot in &mut self.slots {
            if let Some(mut f) = slot.filter.take() {
                f.finish();
            }
        }
        let status = self.status.unwrap_or(0);
        let names: Vec<&str> = self.slots.iter().map(|s| s.plugin.name()).collect();
        self.metrics.request(
            &self.namespace,
            status,
            &names,
            self.start.elapsed().as_secs_f64(),
        );
        let info = &self.exchange.info;
        let st = self.exchange.lock();
        tracing::info!(
            target: "wayplug::access",
            id = %info.id,
            namespace = %self.namespace,
            service = %info.service_hostname,
            source = %info.source,
            principal = info.peer.as_ref().map(|p| p.principal()).unwrap_or_default(),
            method = %st.request.method,
            authority = %st.request.authority,
            path = %st.request.path,
            protocol = info.protocol,
            status,
            local_by = st
                .properties
                .get(LOCAL_RESPONSE_BY)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default(),
            decisions = st
                .decisions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(";"),
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
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
        details: err.to_string(),
        plugin: by.to_owned(),
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
    {
        let mut st = exchange.lock();
        match dir {
            Dir::Request => st.resume_request = false,
            Dir::Response => st.resume_response = false,
        }
    }
    let mut result = call(filter.as_mut(), dir, phase);
    if let Err(failure) = &result {
        match plugin.spec.fail_strategy {
            FailStrategy::FailOpen => {
                tracing::warn!(plugin = %plugin.name(), error = %failure, "skipping failed plugin (FAIL_OPEN)");
                slot.filter = None;
                return Err(Outcome::Continue);
            }
            FailStrategy::FailReload => {
                tracing::warn!(plugin = %plugin.name(), error = %failure, "retrying on a fresh instance (FAIL_RELOAD)");
                let exchange = f.exchange.clone();
                result = plugin.new_filter(&exchange, true).and_then(|mut fresh| {
                    let r = call(fresh.as_mut(), dir, phase);
                    f.slots[i].filter = Some(fresh);
                    r
                });
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

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authenticate",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for n in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        h.remove(n);
    }
}

fn new_request_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        b = t.as_nanos().to_le_bytes();
    }
    hex::encode(b)
}

impl Pipeline {
    pub fn new(
        discovery: Discovery,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Pipeline {
        Pipeline {
            discovery: ArcSwap::from_pointee(discovery),
            registry,
            upstream: Upstream::new(),
            metrics,
            limits,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn discovery(&self) -> Arc<Discovery> {
        self.discovery.load_full()
    }

    pub fn set_discovery(&self, d: Discovery) {
        self.discovery.store(Arc::new(d));
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
        let (parts, body) = req.into_parts();

        // Phase 1: context.
        let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        let Some(authority) = authority else {
            return Ok(self.early_error(Error::MissingAuthority));
        };
        let destination = match &conn.destination {
            Some(d) => d.clone(),
            None => match self.discovery.load().resolve_authority(&authority, 80) {
                Ok(d) => d,
                Err(e) => return Ok(self.early_error(e.into())),
            },
        };
        let namespace = destination.service.namespace.clone();
        let chain = self.registry.chain(&namespace);

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
        let exchange = Arc::new(Exchange::new(info, head));
        let plugins = chain.map(|c| c.plugins.clone()).unwrap_or_default();
        let filters: SharedFilters = Arc::new(Mutex::new(Filters {
            slots: Vec::with_capacity(plugins.len()),
            exchange: exchange.clone(),
            metrics: self.metrics.clone(),
            namespace,
            status: None,
            start,
        }));

        // Phase 2: request headers.
        let outcome = self
            .request_headers(&filters, &exchange, &plugins, body.is_end_stream())
            .await;
        match outcome {
            Outcome::Continue => {}
            Outcome::Respond { response, upto } => {
                return Ok(self.local(&filters, &exchange, response, upto).await);
            }
            Outcome::Reset => return Err(StreamReset),
        }

        // A plugin may have routed the request to another service.
        let route = exchange.lock().route.take();
        let destination = match route {
            None => destination,
            Some(choice) => match self.apply_route(&exchange, &destination, choice) {
                Ok(d) => d,
                Err(resp) => {
                    return Ok(self.local(&filters, &exchange, resp, last(&filters)).await);
                }
            },
        };

        // Phase 3: upstream.
        let endpoint = match destination.pick_endpoint() {
            Ok(e) => e,
            Err(e) => {
                return Ok(self.answer_error(&filters, &exchange, e.into()).await);
            }
        };
        let n = plugins.len();
        let (req_body, exact_len) = if n == 0 || body.is_end_stream() {
            let passthrough = body.map_err(|e| -> BoxError { e.into() }).boxed_unsync();
            (passthrough, None)
        } else {
            let mut pump = Pump::new(
                body.map_err(|e| -> BoxError { e.into() }).boxed_unsync(),
                filters.clone(),
                Dir::Request,
                (0..n).collect(),
                self.limits.clone(),
            );
            match pump.prefetch().await {
                Ok(PrefetchResult::Complete(bytes, trailers)) => {
                    let len = bytes.len();
                    (complete_body(bytes, trailers), Some(len))
                }
                Ok(PrefetchResult::Streaming) => (pump.into_body(), None),
                Err(PumpError::Respond(response, upto)) => {
                    return Ok(self.local(&filters, &exchange, response, upto).await);
                }
                Err(PumpError::Reset) => return Err(StreamReset),
                Err(PumpError::Source(e)) => {
                    return Ok(self
                        .answer_error(&filters, &exchange, Error::Downstream(e.to_string()))
                        .await);
                }
            }
        };
        let upstream_req = {
            let mut st = exchange.lock();
            st.request_sent = true;
            let head = &st.request;
            let mut builder = Request::builder()
                .method(head.method.clone())
                .uri(format!("http://{}{}", head.authority, head.path))
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
            } else if n > 0 && !req_body.is_end_stream() {
                // Plugins may change the body as it streams: its length is
                // no longer known up front.
                headers.remove(header::CONTENT_LENGTH);
            }
            *builder.headers_mut().expect("fresh builder") = headers;
            builder.body(req_body)
        };
        let upstream_req = match upstream_req {
            Ok(r) => r,
            Err(e) => {
                let err = Error::Upstream {
                    endpoint: endpoint.address.to_string(),
                    reason: format!("a plugin left the request invalid: {e}"),
                };
                return Ok(self.answer_error(&filters, &exchange, err).await);
            }
        };
        let response = match self.upstream.send(upstream_req, h2, &endpoint).await {
            Ok(r) => r,
            Err(err) => {
                // A plugin that answered or failed mid-body ends the upload;
                // its answer takes precedence over the upstream error.
                let local = exchange.lock().local_response.take();
                if let Some(local) = local {
                    return Ok(self.local(&filters, &exchange, local, last(&filters)).await);
                }
                if exchange.lock().reset {
                    return Err(StreamReset);
                }
                let err = if err.is_connect() {
                    Error::UpstreamConnect {
                        endpoint: endpoint.address.to_string(),
                        reason: err.to_string(),
                    }
                } else {
                    Error::Upstream {
                        endpoint: endpoint.address.to_string(),
                        reason: format!("{err:#}"),
                    }
                };
                return Ok(self.answer_error(&filters, &exchange, err).await);
            }
        };

        // Phase 4: response.
        let (parts, body) = response.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        exchange.lock().response = Some(ResponseHead {
            status: parts.status,
            headers,
        });
        let body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
        Ok(self
            .respond(&filters, &exchange, body, last(&filters))
            .await)
    }

    /// Resolves a plugin's route choice and applies its rewrites. A backend
    /// the waypoint does not know answers 500, as Envoy does for a route to
    /// a missing cluster: the plugin worked, its configuration points
    /// nowhere, so no fail strategy applies.
    fn apply_route(
        &self,
        exchange: &Exchange,
        current: &Destination,
        choice: RouteChoice,
    ) -> Result<Destination, LocalResponse> {
        let port = choice.port.unwrap_or(current.port);
        let authority = format!("{}:{port}", choice.service);
        let dest = self
            .discovery
            .load()
            .resolve_authority(&authority, port)
            .map_err(|e| {
                let err = Error::UnknownBackend {
                    plugin: choice.plugin.clone(),
                    namespace: exchange.info.namespace.clone(),
                    backend: authority.clone(),
                    reason: e.to_string(),
                };
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
            let created = plugin.new_filter(exchange, false);
            let created = match created {
                Err(_) if plugin.spec.fail_strategy == FailStrategy::FailReload => {
                    plugin.new_filter(exchange, true)
                }
                other => other,
            };
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
            match step(
                filters,
                exchange,
                &self.limits,
                i,
                Dir::Request,
                Phase::Headers { eos },
            )
            .await
            {
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
    ) -> Response<ProxyBody> {
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
    ) -> Response<ProxyBody> {
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
            // Remember who answered, for the access log.
            // Plugins can read it too, as property `wayplug.local_response_by`.
            st.properties
                .insert(LOCAL_RESPONSE_BY.into(), local.plugin.clone().into_bytes());
        }
        tracing::debug!(plugin = %local.plugin, status = local.status.as_u16(), details = %local.details, "local response");
        self.respond(filters, exchange, body, upto).await
    }

    /// Runs the response phase over filters `upto..=0` and builds the
    /// response the client gets.
    async fn respond(
        &self,
        filters: &SharedFilters,
        exchange: &Arc<Exchange>,
        body: ProxyBody,
        upto: Option<usize>,
    ) -> Response<ProxyBody> {
        let order: Vec<usize> = match upto {
            Some(u) => (0..=u).rev().collect(),
            None => Vec::new(),
        };
        let mut body = body;
        let mut order_left = order.clone();
        let mut k = 0;
        while k < order_left.len() {
            let i = order_left[k];
            match step(
                filters,
                exchange,
                &self.limits,
                i,
                Dir::Response,
                Phase::Headers {
                    eos: body.is_end_stream(),
                },
            )
            .await
            {
                Outcome::Continue => k += 1,
                Outcome::Respond { response, .. } => {
                    // A plugin replaced the response: the filters after it
                    // (towards the client) see the replacement.
                    let headers = header_map(&response.headers);
                    exchange.lock().response = Some(ResponseHead {
                        status: response.status,
                        headers,
                    });
                    body = body::full(response.body);
                    order_left = order_left[k + 1..].to_vec();
                    k = 0;
                }
                Outcome::Reset => {
                    let resp = error_response(
                        &Error::Upstream {
                            endpoint: String::new(),
                            reason: "response reset by a plugin".into(),
                        },
                        "",
                    );
                    exchange.lock().response = Some(ResponseHead {
                        status: resp.status,
                        headers: HeaderMap::new(),
                    });
                    body = body::full(resp.body);
                    order_left.clear();
                }
            }
        }

        let (out_body, exact_len) = if order_left.is_empty() || body.is_end_stream() {
            (body, None)
        } else {
            let mut pump = Pump::new(
                body,
                filters.clone(),
                Dir::Response,
                order_left,
                self.limits.clone(),
            );
            match pump.prefetch().await {
                Ok(PrefetchResult::Complete(bytes, trailers)) => {
                    let len = bytes.len();
                    (complete_body(bytes, trailers), Some(len))
                }
                Ok(PrefetchResult::Streaming) => (pump.into_body(), None),
                Err(PumpError::Respond(resp, _)) => {
                    let mut headers = HeaderMap::new();
                    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    exchange.lock().response = Some(ResponseHead {
                        status: resp.status,
                        headers,
                    });
                    let len = resp.body.len();
                    (body::full(resp.body), Some(len))
                }
                Err(PumpError::Reset | PumpError::Source(_)) => {
                    let err = Error::Upstream {
                        endpoint: String::new(),
                        reason: "the response body failed".into(),
                    };
                    let resp = error_response(&err, "");
                    exchange.lock().response = Some(ResponseHead {
                        status: resp.status,
                        headers: HeaderMap::new(),
                    });
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
        } else if upto.is_some() && !out_body.is_end_stream() {
            headers.remove(header::CONTENT_LENGTH);
        }
        lock(filters).status = Some(head.status.as_u16());
        let mut resp = Response::new(body::ProxyBody::new(Holding::new(
            out_body,
            filters.clone(),
        )));
        *resp.status_mut() = head.status;
        *resp.headers_mut() = headers;
        resp
    }
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
        }
    }

    /// Pulls until the first bytes leave the chain or the body ends.
    async fn prefetch(&mut self) -> Result<PrefetchResult, PumpError> {
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
                    return Some((Err(Box::new(e) as BoxError), pump));
                }
            }
        });
        http_body_util::StreamBody::new(stream).boxed_unsync()
    }

    /// Reads one frame from the source and runs it through the chain.
    async fn advance(&mut self) -> Result<(), PumpError> {
        match self.source.frame().await {
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
                        // Plugins that wait for the end of the body get it
                        // before the trailers.
                        self.run_data(Bytes::new(), true).await?;
                        self.run_trailers(trailers).await?;
                    }
                    self.done = true;
                }
            },
        }
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

    async fn run_trailers(&mut self, trailers: HeaderMap) -> Result<(), PumpError> {
        let set = |st: &mut crate::exchange::ExchangeState, t| match self.dir {
            Dir::Request => st.request_trailers = Some(t),
            Dir::Response => st.response_trailers = Some(t),
        };
        set(&mut self.exchange.lock(), trailers);
        for &i in &self.order {
            match step(
                &self.filters,
                &self.exchange,
                &self.limits,
                i,
                self.dir,
                Phase::Trailers,
            )
            .await
            {
                Outcome::Continue => {}
                Outcome::Respond { response, upto } => {
                    return Err(PumpError::Respond(response, upto));
                }
                Outcome::Reset => return Err(PumpError::Reset),
            }
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
