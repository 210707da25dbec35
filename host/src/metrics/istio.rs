//! Istio's standard metrics, as a waypoint reports them (`reporter="waypoint"`),
//! so dashboards built for Istio (Kiali, the Grafana Istio boards) read
//! Wayplug unchanged.
//!
//! Label sets are resolved once per traffic pair (source identity and
//! workload, destination service and workload) and kept: a request looks up
//! its pair by a hash of borrowed strings, without allocating, and only the
//! per-status series of that pair are found under the pair's own lock. At
//! most [`MAX_PAIRS`] pairs get labels of their own; later pairs share one
//! series whose source and destination workload labels read `other`, so a
//! client cycling identities or baggage cannot grow the scrape without bound.

// foldhash (seeded per process): SipHash over a pair's nine labels was
// a measurable share of a request. The map is capped (`MAX_PAIRS`) and a
// colliding hash only lengthens one bucket's list.
use foldhash::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Traffic pairs with labels of their own; the rest share the `other` pair.
pub const MAX_PAIRS: usize = 1024;
/// Distinct (code, flags, protocol, gRPC status) series per pair.
const MAX_OUTCOMES_PER_PAIR: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioTcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
}

/// Who talks to whom, as one request knows it. Borrowed: building it costs nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pair<'a> {
    /// The caller's SPIFFE principal (`td/ns/N/sa/S`), empty without mTLS.
    pub source_principal: &'a str,
    /// The caller's namespace from its identity (used when baggage says none).
    pub source_namespace: &'a str,
    /// The W3C `baggage` header ztunnel sends (`k8s.*.name`, `service.*`), or empty.
    pub baggage: &'a str,
    pub destination_service: &'a str,
    pub destination_service_name: &'a str,
    pub destination_service_namespace: &'a str,
    pub destination_workload: &'a str,
    pub destination_workload_namespace: &'a str,
    /// The endpoint's SPIFFE principal, empty for plain TCP endpoints.
    pub destination_principal: &'a str,
}

impl Pair<'_> {
    fn fields(&self) -> [&str; 9] {
        [
            self.source_principal,
            self.source_namespace,
            self.baggage,
            self.destination_service,
            self.destination_service_name,
            self.destination_service_namespace,
            self.destination_workload,
            self.destination_workload_namespace,
            self.destination_principal,
        ]
    }

    fn hash_with(&self, state: &mut impl Hasher) {
        for s in self.fields() {
            s.hash(state);
        }
    }

    fn owned(&self) -> OwnedPair {
        OwnedPair(self.fields().map(str::to_owned))
    }

    fn is(&self, o: &OwnedPair) -> bool {
        o.0.iter().zip(self.fields()).all(|(a, b)| a == b)
    }
}

#[derive(Debug)]
struct OwnedPair([String; 9]);

/// The outcome of one request, for the per-outcome labels.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub code: u16,
    pub grpc: bool,
    pub grpc_status: Option<u32>,
    pub flags: &'a str,
}

/// One request's sizes and duration.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
}

#[derive(Clone)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Code, gRPC or not, gRPC status, response flags.
type OutcomeKey = (u16, bool, Option<u32>, String);
/// Pairs by hash; a hash may (rarely) be shared by several pairs.
type PairMap = HashMap<u64, Vec<(OwnedPair, Arc<PairSeries>)>>;

struct PairSeries {
    base: IstioLabels,
    outcomes: RwLock<Vec<(OutcomeKey, Series)>>,
}

type HistFamily = Family<IstioLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // Istio's default buckets, in milliseconds.
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn bytes_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 10,
    ))
}

pub struct IstioMetrics {
    requests: Family<IstioLabels, Counter>,
    duration: HistFamily,
    request_bytes: HistFamily,
    response_bytes: HistFamily,
    tcp_sent: Family<IstioTcpLabels, Counter>,
    tcp_received: Family<IstioTcpLabels, Counter>,
    tcp_opened: Family<IstioTcpLabels, Counter>,
    tcp_closed: Family<IstioTcpLabels, Counter>,
    pairs: RwLock<PairMap>,
    pair_count: std::sync::atomic::AtomicUsize,
    other: Arc<PairSeries>,
    hasher: foldhash::quality::RandomState,
}

/// The value a label gets when nothing says it.
const UNKNOWN: &str = "unknown";

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        UNKNOWN.to_owned()
    } else {
        s.to_owned()
    }
}

/// The baggage members Istio's peer metadata reads: workload name (any
/// `k8s.<kind>.name` but namespace and cluster), namespace, canonical
/// service and revision, cluster.
#[derive(Default, Debug, PartialEq)]
struct Baggage {
    workload: String,
    namespace: String,
    service: String,
    version: String,
    cluster: String,
}

fn parse_baggage(text: &str) -> Baggage {
    let mut b = Baggage::default();
    for member in text.split(',').take(64) {
        let Some((k, v)) = member.split_once('=') else {
            continue;
        };
        // Properties after ';' are not ours.
        let v = v.split(';').next().unwrap_or_default().trim();
        let v: String = v.chars().take(253).collect();
        match k.trim() {
            "k8s.namespace.name" => b.namespace = v,
            "k8s.cluster.name" => b.cluster = v,
            "service.name" => b.service = v,
            "service.version" => b.version = v,
            k if k.starts_with("k8s.") && k.ends_with(".name") && k != "k8s.pod.name" => {
                b.workload = v
            }
            _ => {}
        }
    }
    b
}

fn spiffe(principal: &str) -> String {
    if principal.is_empty() {
        UNKNOWN.to_owned()
    } else {
        format!("spiffe://{principal}")
    }
}

impl IstioMetrics {
    /// Registers every family in `registry` (which must have no prefix: the
    /// names are Istio's).
    pub fn new(registry: &mut Registry) -> IstioMetrics {
        let requests = Family::<IstioLabels, Counter>::default();
        registry.register(
            "istio_requests",
            "Requests handled by the waypoint (Istio standard metric)",
            requests.clone(),
        );
        let duration: HistFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds (Istio standard metric)",
            duration.clone(),
        );
        let request_bytes: HistFamily = Family::new_with_constructor(bytes_histogram);
        registry.register(
            "istio_request_bytes",
            "Request sizes: headers plus the declared body length (Istio standard metric)",
            request_bytes.clone(),
        );
        let response_bytes: HistFamily = Family::new_with_constructor(bytes_histogram);
        registry.register(
            "istio_response_bytes",
            "Response sizes: headers plus the declared body length (Istio standard metric)",
            response_bytes.clone(),
        );
        let tcp = |registry: &mut Registry, name: &str, help: &str| {
            let f = Family::<IstioTcpLabels, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let tcp_sent = tcp(
            registry,
            "istio_tcp_sent_bytes",
            "Bytes sent to the caller on L4 tunnels (Istio standard metric)",
        );
        let tcp_received = tcp(
            registry,
            "istio_tcp_received_bytes",
            "Bytes received from the caller on L4 tunnels (Istio standard metric)",
        );
        let tcp_opened = tcp(
            registry,
            "istio_tcp_connections_opened",
            "L4 tunnels opened (Istio standard metric)",
        );
        let tcp_closed = tcp(
            registry,
            "istio_tcp_connections_closed",
            "L4 tunnels closed (Istio standard metric)",
        );
        let other_labels = IstioMetrics::labels(&Pair::default(), true);
        IstioMetrics {
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
            pairs: RwLock::default(),
            pair_count: Default::default(),
            other: Arc::new(PairSeries {
                base: other_labels,
                outcomes: RwLock::default(),
            }),
            hasher: Default::default(),
        }
    }

    fn labels(p: &Pair<'_>, other: bool) -> IstioLabels {
        let b = parse_baggage(p.baggage);
        let (src_workload, dst_workload) = if other {
            ("other".to_owned(), "other".to_owned())
        } else {
            (or_unknown(&b.workload), or_unknown(p.destination_workload))
        };
        let src_ns = if b.namespace.is_empty() {
            p.source_namespace
        } else {
            &b.namespace
        };
        let src_service = if b.service.is_empty() {
            &b.workload
        } else {
            &b.service
        };
        IstioLabels {
            reporter: "waypoint",
            source_workload: src_workload,
            source_workload_namespace: or_unknown(if other { "" } else { src_ns }),
            source_principal: if other {
                "other".into()
            } else {
                spiffe(p.source_principal)
            },
            source_app: or_unknown(if other { "" } else { src_service }),
            source_version: or_unknown(if other { "" } else { &b.version }),
            source_canonical_service: or_unknown(if other { "" } else { src_service }),
            source_canonical_revision: if other || b.version.is_empty() {
                "latest".into()
            } else {
                b.version.clone()
            },
            source_cluster: or_unknown(if other { "" } else { &b.cluster }),
            destination_workload: dst_workload,
            destination_workload_namespace: or_unknown(if other {
                ""
            } else {
                p.destination_workload_namespace
            }),
            destination_principal: if other {
                "other".into()
            } else {
                spiffe(p.destination_principal)
            },
            destination_app: or_unknown(if other {
                ""
            } else {
                p.destination_service_name
            }),
            destination_version: UNKNOWN.into(),
            destination_service: or_unknown(if other { "" } else { p.destination_service }),
            destination_service_name: or_unknown(if other {
                ""
            } else {
                p.destination_service_name
            }),
            destination_service_namespace: or_unknown(if other {
                ""
            } else {
                p.destination_service_namespace
            }),
            destination_canonical_service: or_unknown(if other {
                ""
            } else {
                p.destination_service_name
            }),
            destination_canonical_revision: "latest".into(),
            destination_cluster: UNKNOWN.into(),
            request_protocol: "http",
            response_code: String::new(),
            grpc_response_status: String::new(),
            response_flags: "-".into(),
            connection_security_policy: if p.source_principal.is_empty() {
                "none"
            } else {
                "mutual_tls"
            },
        }
    }

    /// The pair's series holder, made on first sight (or the shared `other` one past the cap).
    fn pair(&self, p: &Pair<'_>) -> Arc<PairSeries> {
        let mut h = self.hasher.build_hasher();
        p.hash_with(&mut h);
        let key = h.finish();
        {
            let pairs = self.pairs.read().unwrap_or_else(|e| e.into_inner());
            if let Some(found) = pairs
                .get(&key)
                .and_then(|list| list.iter().find(|(o, _)| p.is(o)))
            {
                return found.1.clone();
            }
        }
        let mut pairs = self.pairs.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = pairs
            .get(&key)
            .and_then(|list| list.iter().find(|(o, _)| p.is(o)))
        {
            return found.1.clone();
        }
        if self.pair_count.load(std::sync::atomic::Ordering::Relaxed) >= MAX_PAIRS {
            return self.other.clone();
        }
        let series = Arc::new(PairSeries {
            base: IstioMetrics::labels(p, false),
            outcomes: RwLock::default(),
        });
        pairs
            .entry(key)
            .or_default()
            .push((p.owned(), series.clone()));
        self.pair_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        series
    }

    fn series(&self, pair: &PairSeries, o: &Outcome<'_>) -> Series {
        let matches = |k: &OutcomeKey| {
            k.0 == o.code && k.1 == o.grpc && k.2 == o.grpc_status && k.3 == o.flags
        };
        {
            let outcomes = pair.outcomes.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, s)) = outcomes.iter().find(|(k, _)| matches(k)) {
                return s.clone();
            }
        }
        let mut outcomes = pair.outcomes.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = outcomes.iter().find(|(k, _)| matches(k)) {
            return s.clone();
        }
        let mut labels = pair.base.clone();
        labels.request_protocol = if o.grpc { "grpc" } else { "http" };
        labels.response_code = o.code.to_string();
        labels.grpc_response_status = o.grpc_status.map(|s| s.to_string()).unwrap_or_default();
        // Past the cap a pair's unusual outcomes share one flags value.
        let flags = if outcomes.len() >= MAX_OUTCOMES_PER_PAIR {
            "other"
        } else {
            o.flags
        };
        labels.response_flags = flags.to_owned();
        let series = Series {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
        };
        if outcomes.len() < MAX_OUTCOMES_PER_PAIR {
            outcomes.push((
                (o.code, o.grpc, o.grpc_status, o.flags.to_owned()),
                series.clone(),
            ));
        }
        series
    }

    /// Counts one finished HTTP request.
    pub fn request(&self, pair: &Pair<'_>, outcome: &Outcome<'_>, sizes: &Sizes) {
        let p = self.pair(pair);
        let s = self.series(&p, outcome);
        s.requests.inc();
        s.duration.observe(sizes.duration_ms);
        s.request_bytes.observe(sizes.request_bytes as f64);
        s.response_bytes.observe(sizes.response_bytes as f64);
    }

    fn tcp_labels(&self, pair: &Pair<'_>) -> IstioTcpLabels {
        let b = self.pair(pair).base.clone();
        IstioTcpLabels {
            reporter: b.reporter,
            source_workload: b.source_workload,
            source_workload_namespace: b.source_workload_namespace,
            source_principal: b.source_principal,
            destination_workload: b.destination_workload,
            destination_workload_namespace: b.destination_workload_namespace,
            destination_principal: b.destination_principal,
            destination_service: b.destination_service,
            destination_service_name: b.destination_service_name,
            destination_service_namespace: b.destination_service_namespace,
            request_protocol: "tcp",
            response_flags: "-".into(),
            connection_security_policy: b.connection_security_policy,
        }
    }

    /// An L4 tunnel starts relaying; the returned handle counts its bytes and its close.
    pub fn tcp_open(&self, pair: &Pair<'_>) -> TcpConnection {
        let labels = self.tcp_labels(pair);
        self.tcp_opened.get_or_create(&labels).inc();
        TcpConnection {
            sent: self.tcp_sent.get_or_create(&labels).clone(),
            received: self.tcp_received.get_or_create(&labels).clone(),
            closed: self.tcp_closed.get_or_create(&labels).clone(),
        }
    }
}

/// The counters of one L4 tunnel.
pub struct TcpConnection {
    sent: Counter,
    received: Counter,
    closed: Counter,
}

impl TcpConnection {
    pub fn close(self, sent: u64, received: u64) {
        self.sent.inc_by(sent);
        self.received.inc_by(received);
        self.closed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair<'a>(principal: &'a str, baggage: &'a str) -> Pair<'a> {
        Pair {
            source_principal: principal,
            source_namespace: "web",
            baggage,
            destination_service: "shop.shop.svc.cluster.local",
            destination_service_name: "shop",
            destination_service_namespace: "shop",
            destination_workload: "shop-1",
            destination_workload_namespace: "shop",
            destination_principal: "",
        }
    }

    fn encode(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, r).unwrap();
        out
    }

    #[test]
    fn baggage_gives_the_source_workload() {
        let b = parse_baggage(
            "k8s.cluster.name=c1,k8s.namespace.name=web,k8s.deployment.name=frontend,\
             service.name=frontend-svc,service.version=v2;prop=1,k8s.pod.name=frontend-abc",
        );
        assert_eq!(
            b,
            Baggage {
                workload: "frontend".into(),
                namespace: "web".into(),
                service: "frontend-svc".into(),
                version: "v2".into(),
                cluster: "c1".into(),
            }
        );
        assert_eq!(parse_baggage("garbage,,=,x"), Baggage::default());
    }

    #[test]
    fn requests_count_under_istio_labels() {
        let mut r = Registry::default();
        let m = IstioMetrics::new(&mut r);
        let p = pair(
            "cluster.local/ns/web/sa/frontend",
            "k8s.deployment.name=frontend",
        );
        let ok = Outcome {
            code: 200,
            grpc: false,
            grpc_status: None,
            flags: "-",
        };
        let sizes = Sizes {
            request_bytes: 100,
            response_bytes: 1100,
            duration_ms: 3.0,
        };
        m.request(&p, &ok, &sizes);
        m.request(&p, &ok, &sizes);
        m.request(
            &p,
            &Outcome {
                code: 503,
                flags: "UF",
                ..ok
            },
            &sizes,
        );
        let text = encode(&r);
        let want = "istio_requests_total{reporter=\"waypoint\",source_workload=\"frontend\",\
            source_workload_namespace=\"web\",source_principal=\"spiffe://cluster.local/ns/web/sa/frontend\"";
        let line = text
            .lines()
            .find(|l| l.starts_with(want) && l.contains("response_code=\"200\""))
            .unwrap_or_else(|| panic!("no 200 series in\n{text}"));
        assert!(line.ends_with(" 2"), "{line}");
        assert!(line.contains("connection_security_policy=\"mutual_tls\""));
        assert!(line.contains("destination_service_name=\"shop\""));
        assert!(text.contains("response_code=\"503\""));
        assert!(text.contains("response_flags=\"UF\""));
        assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
        assert!(text.contains("istio_response_bytes_sum{"));
    }

    #[test]
    fn pairs_past_the_cap_share_the_other_series() {
        let mut r = Registry::default();
        let m = IstioMetrics::new(&mut r);
        let ok = Outcome {
            code: 200,
            grpc: false,
            grpc_status: None,
            flags: "-",
        };
        let sizes = Sizes {
            request_bytes: 1,
            response_bytes: 1,
            duration_ms: 1.0,
        };
        let principals: Vec<String> = (0..MAX_PAIRS + 10)
            .map(|i| format!("cluster.local/ns/web/sa/sa{i}"))
            .collect();
        for p in &principals {
            m.request(&pair(p, ""), &ok, &sizes);
        }
        let text = encode(&r);
        let series = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .count();
        assert_eq!(series, MAX_PAIRS + 1, "the cap plus one `other` series");
        let other = text
            .lines()
            .find(|l| {
                l.starts_with("istio_requests_total{") && l.contains("source_workload=\"other\"")
            })
            .expect("an other series");
        assert!(other.ends_with(" 10"), "{other}");
    }

    #[test]
    fn tunnels_count_bytes_and_connections() {
        let mut r = Registry::default();
        let m = IstioMetrics::new(&mut r);
        let c = m.tcp_open(&pair("cluster.local/ns/web/sa/frontend", ""));
        c.close(10, 20);
        let text = encode(&r);
        for want in [
            "istio_tcp_connections_opened_total{",
            "istio_tcp_connections_closed_total{",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(want) && l.ends_with(" 1")),
                "{want} in\n{text}"
            );
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("istio_tcp_sent_bytes_total{") && l.ends_with(" 10"))
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("istio_tcp_received_bytes_total{") && l.ends_with(" 20"))
        );
    }
}
