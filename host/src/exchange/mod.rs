//! One request/response exchange as plugins see it.
//!
//! The pipeline and the plugins' host functions share an [`Exchange`]: the
//! pipeline moves the request and response through it, plugins read and
//! change it from inside their callbacks, and asynchronous plugin events (a
//! callout's answer, say) wake the pipeline through it.
//!
//! Invariant: the pipeline never holds the state lock while calling into a
//! plugin, so a host function can always take it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};

mod failure;
mod snapshot;

pub use failure::PluginFailure;
pub use snapshot::Snapshot;

/// The caller's mesh identity, from its mTLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl PeerIdentity {
    /// Istio's principal form: the SPIFFE id without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    pub fn spiffe_uri(&self) -> String {
        format!("spiffe://{}", self.principal())
    }
}

/// Facts about a request that do not change while it is processed.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub id: String,
    pub namespace: String,
    pub service_hostname: String,
    pub service_name: String,
    pub source: SocketAddr,
    /// Where the caller meant to go: the service address when known,
    /// otherwise the listener's own address.
    pub destination: SocketAddr,
    pub protocol: &'static str,
    pub peer: Option<PeerIdentity>,
    pub start: SystemTime,
}

#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub scheme: String,
    pub authority: String,
    /// Path and query, as sent.
    pub path: String,
    pub headers: HeaderMap,
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// A response a plugin asked to send instead of the upstream's.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: StatusCode,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    pub details: String,
    /// The plugin that sent it, for logs and metrics.
    pub plugin: String,
    /// A gRPC status the plugin asked for: the answer becomes a gRPC
    /// trailers-only response carrying it (Envoy's `send_local_response`).
    pub grpc_status: Option<u32>,
}

/// A plugin's choice of another backend for the request.
#[derive(Debug, Clone)]
pub struct RouteChoice {
    /// The backend service's hostname.
    pub service: String,
    /// The service port; `None` keeps the port the caller used.
    pub port: Option<u16>,
    pub rewrite_path: Option<String>,
    pub rewrite_host: Option<String>,
    pub plugin: String,
}

/// A plugin's account of which policy decided the request (the WIT `trace`
/// import), kept for the access log and for offline test suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// The plugin entry that recorded it.
    pub plugin: String,
    pub policy: String,
    pub rule: Option<u32>,
    pub outcome: String,
    pub detail: String,
}

impl std::fmt::Display for DecisionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.plugin, self.policy)?;
        if let Some(rule) = self.rule {
            write!(f, "[{rule}]")?;
        }
        write!(f, "={}", self.outcome)
    }
}

/// At most this many decision records are kept per request; a plugin that
/// records more in a loop cannot grow the host's memory without bound.
pub const MAX_DECISIONS: usize = 32;
/// Each string of a decision record is cut to this many bytes.
pub const MAX_DECISION_FIELD: usize = 512;

#[derive(Debug)]
pub struct ExchangeState {
    pub request: RequestHead,
    /// The request body a body callback currently sees.
    pub request_body: BytesMut,
    pub request_trailers: Option<HeaderMap>,
    pub response: Option<ResponseHead>,
    pub response_body: BytesMut,
    pub response_trailers: Option<HeaderMap>,
    pub local_response: Option<LocalResponse>,
    pub resume_request: bool,
    pub resume_response: bool,
    /// A plugin asked to abort the stream.
    pub reset: bool,
    /// A plugin failed outside the pipeline's own calls (in a callout
    /// callback while the request was paused).
    pub async_failure: Option<(String, PluginFailure)>,
    /// Values plugins stored with `set_property`.
    pub properties: HashMap<String, Vec<u8>>,
    /// Set once the upstream request has been sent: request changes after
    /// that point reach nobody.
    pub request_sent: bool,
    /// Where a plugin routed the request; the last choice wins.
    pub route: Option<RouteChoice>,
    /// Which policies decided, as plugins recorded it (at most
    /// [`MAX_DECISIONS`]).
    pub decisions: Vec<DecisionRecord>,
    /// What the data path learned about the stream, for the attributes
    /// plugins read (`upstream.*`, `xds.*`, `response.flags`, ...).
    pub stream: StreamFacts,
}

/// Facts about the stream as Envoy's stream info keeps them, set by the
/// pipeline as the request goes.
#[derive(Debug, Clone, Default)]
pub struct StreamFacts {
    /// The endpoint the request was sent to.
    pub upstream: Option<SocketAddr>,
    /// The destination service as an Istio cluster name
    /// (`outbound|port||hostname`).
    pub cluster: Option<String>,
    /// The route that chose the cluster: the plugin entry that routed the
    /// request, or `default`.
    pub route: Option<String>,
    /// Envoy's response flags (the legacy bit set).
    pub response_flags: u64,
    /// Why the response is what it is: `via_upstream`, a local reply's
    /// details, or the host's reason for an error.
    pub code_details: Option<String>,
    /// From the request's start to the end of the exchange, once it ended.
    pub duration: Option<Duration>,
}

/// Envoy's legacy response flags, the ones the waypoint can raise: the bit
/// a plugin reads in `response.flags` and the short code of access logs and
/// Istio's `response_flags` label, from this one table.
pub mod response_flags {
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const NO_ROUTE_FOUND: u64 = 0x100;
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    pub const DOWNSTREAM_PROTOCOL_ERROR: u64 = 0x4_0000;
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;
    pub const NO_CLUSTER_FOUND: u64 = 0x100_0000;

    /// Each flag's short code, as Envoy prints it.
    pub const CODES: [(u64, &str); 8] = [
        (NO_HEALTHY_UPSTREAM, "UH"),
        (UPSTREAM_REQUEST_TIMEOUT, "UT"),
        (UPSTREAM_CONNECTION_FAILURE, "UF"),
        (NO_ROUTE_FOUND, "NR"),
        (DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
        (UPSTREAM_PROTOCOL_ERROR, "UPE"),
        (NO_CLUSTER_FOUND, "NC"),
    ];

    /// The short code of one flag; `-` (Envoy's "none") for no flag.
    pub fn code(flag: u64) -> &'static str {
        CODES
            .iter()
            .find(|(bit, _)| *bit == flag)
            .map_or("-", |(_, code)| *code)
    }

    /// Istio's `response_flags` label for a stream's flags: each raised
    /// flag's code, comma separated as Envoy prints them; `DC` for a stream
    /// that ended with no response; `-` for none.
    pub fn label(flags: u64, answered: bool) -> std::borrow::Cow<'static, str> {
        if flags == 0 && !answered {
            return code(DOWNSTREAM_CONNECTION_TERMINATION).into();
        }
        let mut raised = CODES.iter().filter(|(bit, _)| flags & bit != 0);
        match (raised.next(), raised.next()) {
            (None, _) => "-".into(),
            (Some((_, one)), None) => (*one).into(),
            (Some((_, first)), Some((_, second))) => {
                let mut all = format!("{first},{second}");
                for (_, c) in raised {
                    all.push(',');
                    all.push_str(c);
                }
                all.into()
            }
        }
    }
}

/// Body bytes of the exchange, counted as they pass without taking the
/// state lock: received from the downstream, sent to it.
#[derive(Debug, Default)]
pub struct ByteCounts {
    received: AtomicU64,
    sent: AtomicU64,
}

impl ByteCounts {
    pub fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Exchange {
    pub info: Arc<RequestInfo>,
    pub bytes: ByteCounts,
    state: Mutex<ExchangeState>,
    wake: tokio::sync::Notify,
}

impl Exchange {
    pub fn new(info: RequestInfo, request: RequestHead) -> Exchange {
        Exchange {
            info: Arc::new(info),
            bytes: ByteCounts::default(),
            state: Mutex::new(ExchangeState {
                request,
                request_body: BytesMut::new(),
                request_trailers: None,
                response: None,
                response_body: BytesMut::new(),
                response_trailers: None,
                local_response: None,
                resume_request: false,
                resume_response: false,
                reset: false,
                async_failure: None,
                properties: HashMap::new(),
                request_sent: false,
                route: None,
                decisions: Vec::new(),
                stream: StreamFacts::default(),
            }),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Keeps a decision record within the per-request bounds; returns the
    /// record as kept (cut to size), or `None` once the request has
    /// [`MAX_DECISIONS`].
    pub fn record_decision(&self, mut record: DecisionRecord) -> Option<DecisionRecord> {
        for field in [&mut record.policy, &mut record.outcome, &mut record.detail] {
            truncate_at_char(field, MAX_DECISION_FIELD);
        }
        let mut st = self.lock();
        if st.decisions.len() >= MAX_DECISIONS {
            return None;
        }
        st.decisions.push(record.clone());
        Some(record)
    }

    pub fn lock(&self) -> MutexGuard<'_, ExchangeState> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes a pipeline waiting for a paused stream. A wake with nobody
    /// waiting is kept for the next wait, so none is lost.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

impl Exchange {
    /// `request.total_size`: the head as Envoy counts it plus every body
    /// byte received so far, however it was framed.
    pub fn request_total_size(&self, st: &ExchangeState) -> u64 {
        self.bytes.received() + request_header_bytes(&st.request)
    }

    /// `response.total_size`: the head, every body byte sent so far and
    /// the trailers.
    pub fn response_total_size(&self, st: &ExchangeState) -> u64 {
        let head = st
            .response
            .as_ref()
            .map_or(0, |r| header_bytes(&r.headers) + STATUS_BYTES);
        let trailers = st.response_trailers.as_ref().map_or(0, header_bytes);
        self.bytes.sent() + head + trailers
    }
}

/// `:status` and its three digits, which Envoy's map size counts.
pub const STATUS_BYTES: u64 = 7 + 3;

/// Names and values of a header map, as Envoy's map size counts them.
pub fn header_bytes(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
        .sum()
}

/// Envoy counts the pseudo-headers in a request map's size.
pub fn request_header_bytes(r: &RequestHead) -> u64 {
    let pseudo = (":authority".len() + r.authority.len())
        + (":path".len() + r.path.len())
        + (":method".len() + r.method.as_str().len())
        + (":scheme".len() + r.scheme.len());
    pseudo as u64 + header_bytes(&r.headers)
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange {
        let info = RequestInfo {
            id: "1".into(),
            namespace: "shop".into(),
            service_hostname: "api.shop.svc.cluster.local".into(),
            service_name: "api".into(),
            source: "127.0.0.1:1".parse().unwrap(),
            destination: "127.0.0.1:2".parse().unwrap(),
            protocol: "HTTP/1.1",
            peer: None,
            start: SystemTime::now(),
        };
        let head = RequestHead {
            method: Method::GET,
            scheme: "http".into(),
            authority: "api".into(),
            path: "/".into(),
            headers: HeaderMap::new(),
        };
        Exchange::new(info, head)
    }

    fn record(detail: &str) -> DecisionRecord {
        DecisionRecord {
            plugin: "authz".into(),
            policy: "shop/p".into(),
            rule: Some(1),
            outcome: "deny".into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn decision_records_are_bounded() {
        let ex = exchange();
        for _ in 0..MAX_DECISIONS {
            assert!(ex.record_decision(record("x")).is_some());
        }
        assert!(ex.record_decision(record("one too many")).is_none());
        assert_eq!(ex.lock().decisions.len(), MAX_DECISIONS);
    }

    #[test]
    fn decision_fields_are_cut_on_a_char_boundary() {
        let ex = exchange();
        let long = "é".repeat(MAX_DECISION_FIELD);
        ex.record_decision(record(&long));
        let kept = ex.lock().decisions[0].detail.clone();
        assert!(kept.len() <= MAX_DECISION_FIELD);
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(ex.lock().decisions[0].to_string(), "authz:shop/p[1]=deny");
    }
}
