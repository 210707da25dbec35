//! Properties: Envoy's attribute names plus Wayplug's own.
//!
//! A path arrives as segments joined by NUL bytes. Values are encoded as
//! Envoy serializes CEL values for plugins: strings raw, integers as 8-byte
//! little-endian, booleans as one byte, timestamps and durations as int64
//! nanoseconds (since the epoch, and long), 8-byte little-endian too.

use std::time::UNIX_EPOCH;

use http::header::CONTENT_LENGTH;

use super::instance::HostState;
use crate::exchange::{Exchange, ExchangeState, STATUS_BYTES, header_bytes, request_header_bytes};
use crate::plugin::sandbox::{Limit, MAX_PROPERTIES};

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn string(s: impl Into<String>) -> Vec<u8> {
    s.into().into_bytes()
}

/// Joins the segments of a property path with dots, the key `set_property`
/// values are stored under.
fn dotted(path: &[u8]) -> String {
    path.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s))
        .collect::<Vec<_>>()
        .join(".")
}

pub fn get(state: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    let segments: Vec<&[u8]> = path.split(|b| *b == 0).filter(|s| !s.is_empty()).collect();
    let seg = |i: usize| segments.get(i).and_then(|s| std::str::from_utf8(s).ok());
    let plugin = &state.plugin;

    // Values the plugin set take precedence, as in Envoy's filter state.
    // Most requests store none, so the key is built only when needed.
    let exchange = state.current_exchange();
    if let Some(ex) = &exchange {
        let st = ex.lock();
        if !st.properties.is_empty()
            && let Some(v) = st.properties.get(&dotted(path))
        {
            return Some(v.clone());
        }
    }
    if !state.root_properties.is_empty()
        && let Some(v) = state.root_properties.get(&dotted(path))
    {
        return Some(v.clone());
    }

    match (seg(0)?, seg(1)) {
        ("plugin_name", None) => return Some(string(plugin.name.clone())),
        ("plugin_root_id", None) => return Some(string(plugin.root_id.clone())),
        ("plugin_vm_id", None) => return Some(string(plugin.vm_id.clone())),
        ("node", Some("id")) => return Some(string(format!("wayplug~{}", plugin.namespace))),
        ("wayplug", Some("namespace")) => return Some(string(plugin.namespace.clone())),
        ("wayplug", Some("plugin")) => return Some(string(plugin.name.clone())),
        _ => {}
    }

    let ex = exchange?;
    let info = &ex.info;
    let st = ex.lock();
    let req = &st.request;
    let (url_path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.path.as_str(), ""),
    };
    let header = |h: &http::HeaderMap, name: &str| h.get(name).map(|v| v.as_bytes().to_vec());
    let peer = info.peer.as_ref();
    if let Some(v) = stream_attribute(&ex, &st, (seg(0)?, seg(1), seg(2))) {
        return v;
    }
    Some(match (seg(0)?, seg(1), seg(2)) {
        ("request", Some("path"), None) => string(req.path.clone()),
        ("request", Some("url_path"), None) => string(url_path),
        ("request", Some("query"), None) => string(query),
        ("request", Some("host"), None) => string(req.authority.clone()),
        ("request", Some("scheme"), None) => string(req.scheme.clone()),
        ("request", Some("method"), None) => string(req.method.as_str()),
        ("request", Some("id"), None) => string(info.id.clone()),
        ("request", Some("protocol"), None) => string(info.protocol),
        ("request", Some("time"), None) => int(info
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)),
        ("request", Some("headers"), Some(name)) => {
            header(&req.headers, &name.to_ascii_lowercase())?
        }
        ("request", Some("useragent"), None) => header(&req.headers, "user-agent")?,
        ("request", Some("referer"), None) => header(&req.headers, "referer")?,
        ("response", Some("code"), None) => int(st.response.as_ref()?.status.as_u16() as i64),
        ("response", Some("headers"), Some(name)) => {
            header(&st.response.as_ref()?.headers, &name.to_ascii_lowercase())?
        }
        ("source", Some("address"), None) => string(info.source.to_string()),
        ("source", Some("port"), None) => int(info.source.port() as i64),
        ("source", Some("principal"), None) => string(peer?.principal()),
        ("source", Some("namespace"), None) => string(peer?.namespace.clone()),
        ("source", Some("service_account"), None) => string(peer?.service_account.clone()),
        ("destination", Some("address"), None) => string(info.destination.to_string()),
        ("destination", Some("port"), None) => int(info.destination.port() as i64),
        ("connection", Some("mtls"), None) => vec![peer.is_some() as u8],
        ("connection", Some("uri_san_peer_certificate"), None) => string(peer?.spiffe_uri()),
        ("connection", Some("tls_version"), None) => {
            peer?;
            string("TLSv1.3")
        }
        ("wayplug", Some("service"), None) => string(info.service_hostname.clone()),
        ("wayplug", Some("request_id"), None) => string(info.id.clone()),
        _ => return None,
    })
}

type Segments<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

/// The attributes of the stream as it went (sizes, times, where it went,
/// why it ended as it did), Envoy's names. `None` for another name;
/// `Some(None)` for one of these that has no value (yet).
fn stream_attribute(
    ex: &Exchange,
    st: &ExchangeState,
    path: Segments<'_>,
) -> Option<Option<Vec<u8>>> {
    let facts = &st.stream;
    let response = st.response.as_ref();
    Some(match path {
        ("request", Some("size"), None) => match st.request.headers.get(CONTENT_LENGTH) {
            // Envoy reads the declared length; an invalid one has no value.
            Some(v) => std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(int),
            None => Some(int(ex.bytes.received() as i64)),
        },
        ("request", Some("total_size"), None) => Some(int(ex.request_total_size(st) as i64)),
        ("request", Some("headers_bytes"), None) => {
            Some(int(request_header_bytes(&st.request) as i64))
        }
        ("request", Some("duration"), None) => facts.duration.map(|d| int(d.as_nanos() as i64)),
        ("response", Some("size"), None) => Some(int(ex.bytes.sent() as i64)),
        ("response", Some("total_size"), None) => Some(int(ex.response_total_size(st) as i64)),
        ("response", Some("headers_bytes"), None) => Some(int(response
            .map_or(0, |r| header_bytes(&r.headers) + STATUS_BYTES)
            as i64)),
        ("response", Some("flags"), None) => Some(int(facts.response_flags as i64)),
        ("response", Some("grpc_status"), None) => grpc_status(st).map(|s| int(s as i64)),
        ("response", Some("code_details"), None) => facts.code_details.clone().map(string),
        ("upstream", Some("address"), None) => facts.upstream.map(|a| string(a.to_string())),
        ("upstream", Some("port"), None) => facts.upstream.map(|a| int(a.port() as i64)),
        ("xds", Some("cluster_name"), None) | ("cluster_name", None, None) => {
            facts.cluster.clone().map(string)
        }
        ("xds", Some("route_name"), None) | ("route_name", None, None) => {
            facts.route.clone().map(string)
        }
        _ => return None,
    })
}

/// The gRPC status as Envoy finds it: the trailers' `grpc-status`, the
/// headers' (a trailers-only answer), or else one inferred from the HTTP
/// status.
fn grpc_status(st: &ExchangeState) -> Option<u64> {
    let response = st.response.as_ref()?;
    let from = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    if let Some(s) = st.response_trailers.as_ref().and_then(from) {
        return Some(s);
    }
    if let Some(s) = from(&response.headers) {
        return Some(s);
    }
    Some(match response.status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    })
}

/// Stores a value for the current context; at most [`MAX_PROPERTIES`]
/// distinct paths per context (the size of each is checked by the caller).
pub fn set(state: &mut HostState, path: &[u8], value: Vec<u8>) -> Result<(), Limit> {
    let key = dotted(path);
    let exchange = state.current_exchange();
    if key == super::decision::PROPERTY
        && let Some(ex) = &exchange
    {
        if let Err(e) = super::decision::record(ex, &state.plugin.name, &value) {
            tracing::warn!(plugin = %state.plugin.name, error = %e, "decision record dropped");
        }
        return Ok(());
    }
    let mut guard;
    let map = match &exchange {
        Some(ex) => {
            guard = ex.lock();
            &mut guard.properties
        }
        None => &mut state.root_properties,
    };
    if map.len() >= MAX_PROPERTIES && !map.contains_key(&key) {
        return Err(Limit::Properties);
    }
    map.insert(key, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex, Weak};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::exchange::{Exchange, PeerIdentity, RequestHead, RequestInfo, ResponseHead};
    use crate::metrics::Metrics;
    use crate::plugin::proxywasm::instance::{ContextKind, MemoryLimiter};
    use crate::plugin::sandbox::HostLimits;
    use crate::plugin::{Limits, PluginShared, callout::Callouts, shared::NamespaceShared};

    fn state(peer: Option<PeerIdentity>) -> (HostState, Arc<Exchange>) {
        let metrics = Arc::new(Metrics::new());
        let plugin = Arc::new(PluginShared {
            name: "authz".into(),
            namespace: "shop".into(),
            root_id: "root".into(),
            vm_id: String::new(),
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            env: Vec::new(),
            limits: Limits {
                deadline_ticks: 1,
                call_timeout: Duration::from_millis(1),
                memory_limit_bytes: 1 << 20,
                host: HostLimits::from_config(&Default::default()),
            },
            shared: Arc::new(NamespaceShared::default()),
            callouts: Arc::new(Callouts::new(Default::default())),
            metrics: metrics.plugin_metrics("shop", "authz"),
            global_metrics: metrics,
            log_tail: Mutex::new(Default::default()),
            limits_warned: Default::default(),
        });
        let mut headers = http::HeaderMap::new();
        headers.insert("user-agent", "curl/8".parse().unwrap());
        headers.insert("x-tenant", "acme".parse().unwrap());
        let exchange = Arc::new(Exchange::new(
            RequestInfo {
                id: "req-1".into(),
                namespace: "shop".into(),
                service_hostname: "cart.shop.svc".into(),
                service_name: "cart".into(),
                source: "10.0.0.5:43210".parse::<SocketAddr>().unwrap(),
                destination: "10.96.0.1:80".parse().unwrap(),
                protocol: "HTTP/2",
                peer,
                start: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            },
            RequestHead {
                method: http::Method::POST,
                scheme: "http".into(),
                authority: "cart.shop.svc".into(),
                path: "/items/7?color=red".into(),
                headers,
            },
        ));
        let state = HostState {
            limiter: MemoryLimiter {
                max_bytes: 1 << 20,
                refused: false,
            },
            plugin,
            memory: None,
            allocator: None,
            contexts: HashMap::from([
                (1, ContextKind::Root),
                (2, ContextKind::Http(exchange.clone())),
            ]),
            current: 2,
            root_id: 1,
            tick_period: None,
            tick_changed: false,
            pending_callouts: Vec::new(),
            grpc: Default::default(),
            next_callout_token: 0,
            call_response: None,
            self_ref: Weak::new(),
            root_properties: HashMap::new(),
            stdio_line: Vec::new(),
            env: Vec::new(),
        };
        (state, exchange)
    }

    fn path(p: &str) -> Vec<u8> {
        p.replace('.', "\0").into_bytes()
    }

    #[test]
    fn encodes_strings_integers_and_booleans() {
        let peer = PeerIdentity {
            trust_domain: "cluster.local".into(),
            namespace: "web".into(),
            service_account: "frontend".into(),
        };
        let (st, ex) = state(Some(peer));
        let s = |v: &str| Some(v.as_bytes().to_vec());
        let cases: Vec<(&str, Option<Vec<u8>>)> = vec![
            ("request.path", s("/items/7?color=red")),
            ("request.url_path", s("/items/7")),
            ("request.query", s("color=red")),
            ("request.method", s("POST")),
            ("request.host", s("cart.shop.svc")),
            ("request.scheme", s("http")),
            ("request.id", s("req-1")),
            ("request.protocol", s("HTTP/2")),
            ("request.useragent", s("curl/8")),
            ("request.headers.X-Tenant", s("acme")),
            ("request.headers.missing", None),
            (
                "request.time",
                Some(1_700_000_000_123_456_789i64.to_le_bytes().to_vec()),
            ),
            ("source.address", s("10.0.0.5:43210")),
            ("source.port", Some(43210i64.to_le_bytes().to_vec())),
            ("destination.port", Some(80i64.to_le_bytes().to_vec())),
            ("source.principal", s("cluster.local/ns/web/sa/frontend")),
            ("source.namespace", s("web")),
            ("connection.mtls", Some(vec![1])),
            (
                "connection.uri_san_peer_certificate",
                s("spiffe://cluster.local/ns/web/sa/frontend"),
            ),
            ("plugin_name", s("authz")),
            ("plugin_root_id", s("root")),
            ("wayplug.namespace", s("shop")),
            ("wayplug.service", s("cart.shop.svc")),
            ("response.code", None),
            ("no.such.thing", None),
            ("", None),
        ];
        for (p, want) in cases {
            assert_eq!(get(&st, &path(p)), want, "{p}");
        }
        ex.lock().response = Some(ResponseHead {
            status: http::StatusCode::IM_A_TEAPOT,
            headers: Default::default(),
        });
        assert_eq!(
            get(&st, &path("response.code")),
            Some(418i64.to_le_bytes().to_vec())
        );
        let _ = SystemTime::now();
    }

    #[test]
    fn stream_attributes_encode_as_envoy() {
        let (st, ex) = state(None);
        let i = |v: i64| Some(v.to_le_bytes().to_vec());
        let s = |v: &str| Some(v.as_bytes().to_vec());
        // Before the upstream: no address, no duration, nothing sent.
        for (p, want) in [
            ("upstream.address", None),
            ("upstream.port", None),
            ("request.duration", None),
            ("xds.cluster_name", None),
            ("response.grpc_status", None),
            ("response.code_details", None),
            ("response.size", i(0)),
            ("response.flags", i(0)),
            ("request.size", i(0)),
        ] {
            assert_eq!(get(&st, &path(p)), want, "{p}");
        }
        // :authority cart.shop.svc, :path /items/7?color=red, :method POST,
        // :scheme http, user-agent curl/8, x-tenant acme.
        let headers = (10 + 13) + (5 + 18) + (7 + 4) + (7 + 4) + (10 + 6) + (8 + 4);
        ex.bytes.add_received(11);
        ex.bytes.add_sent(5);
        {
            let mut stt = ex.lock();
            stt.stream.upstream = Some("10.1.2.3:8080".parse().unwrap());
            stt.stream.cluster = Some("outbound|80||cart.shop.svc".into());
            stt.stream.route = Some("default".into());
            stt.stream.response_flags = crate::exchange::response_flags::UPSTREAM_REQUEST_TIMEOUT;
            stt.stream.code_details = Some("via_upstream".into());
            stt.stream.duration = Some(Duration::from_micros(1500));
            let mut h = http::HeaderMap::new();
            h.insert("content-type", "application/grpc".parse().unwrap());
            stt.response = Some(ResponseHead {
                status: http::StatusCode::OK,
                headers: h,
            });
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", "7".parse().unwrap());
            stt.response_trailers = Some(t);
        }
        let response_head = 7 + 3 + 12 + 16;
        for (p, want) in [
            ("upstream.address", s("10.1.2.3:8080")),
            ("upstream.port", i(8080)),
            ("xds.cluster_name", s("outbound|80||cart.shop.svc")),
            ("cluster_name", s("outbound|80||cart.shop.svc")),
            ("xds.route_name", s("default")),
            ("route_name", s("default")),
            ("response.flags", i(0x4)),
            ("response.code_details", s("via_upstream")),
            ("request.duration", i(1_500_000)),
            ("request.size", i(11)),
            ("request.headers_bytes", i(headers)),
            ("request.total_size", i(11 + headers)),
            ("response.size", i(5)),
            ("response.headers_bytes", i(response_head)),
            ("response.total_size", i(5 + response_head + 11 + 1)),
            ("response.grpc_status", i(7)),
            ("plugin_vm_id", s("")),
            ("plugin_root_id", s("root")),
        ] {
            assert_eq!(get(&st, &path(p)), want, "{p}");
        }
        // A declared length wins over the count, as in Envoy; a bad one has
        // no value.
        ex.lock()
            .request
            .headers
            .insert("content-length", "42".parse().unwrap());
        assert_eq!(get(&st, &path("request.size")), i(42));
        ex.lock()
            .request
            .headers
            .insert("content-length", "many".parse().unwrap());
        assert_eq!(get(&st, &path("request.size")), None);
        // Without grpc-status anywhere, the HTTP status says it.
        for (code, grpc) in [(200u16, 2i64), (403, 7), (503, 14), (404, 12), (401, 16)] {
            let mut stt = ex.lock();
            stt.response_trailers = None;
            stt.response = Some(ResponseHead {
                status: http::StatusCode::from_u16(code).unwrap(),
                headers: Default::default(),
            });
            drop(stt);
            assert_eq!(get(&st, &path("response.grpc_status")), i(grpc), "{code}");
        }
        // A trailers-only answer carries it in the headers.
        ex.lock()
            .response
            .as_mut()
            .unwrap()
            .headers
            .insert("grpc-status", "16".parse().unwrap());
        assert_eq!(get(&st, &path("response.grpc_status")), i(16));
    }

    #[test]
    fn plaintext_callers_have_no_identity() {
        let (st, _) = state(None);
        assert_eq!(get(&st, &path("connection.mtls")), Some(vec![0]));
        assert_eq!(get(&st, &path("source.principal")), None);
        assert_eq!(get(&st, &path("connection.uri_san_peer_certificate")), None);
    }

    #[test]
    fn set_property_is_per_request_and_read_back() {
        let (mut st, ex) = state(None);
        set(&mut st, &path("my.flag"), b"on".to_vec()).unwrap();
        assert_eq!(get(&st, &path("my.flag")), Some(b"on".to_vec()));
        assert_eq!(ex.lock().properties.get("my.flag"), Some(&b"on".to_vec()));
        st.current = 1;
        assert_eq!(
            get(&st, &path("my.flag")),
            None,
            "the root context has its own properties"
        );
        set(&mut st, &path("my.flag"), b"root".to_vec()).unwrap();
        assert_eq!(get(&st, &path("my.flag")), Some(b"root".to_vec()));
        assert_eq!(get(&st, &path("plugin_name")), Some(b"authz".to_vec()));
    }

    #[test]
    fn set_property_keeps_at_most_max_properties_per_context() {
        let (mut st, _ex) = state(None);
        for i in 0..MAX_PROPERTIES {
            set(&mut st, &path(&format!("p.{i}")), vec![1]).unwrap();
        }
        assert_eq!(
            set(&mut st, &path("p.extra"), vec![1]),
            Err(Limit::Properties)
        );
        set(&mut st, &path("p.0"), vec![2]).expect("replacing a stored path is fine");
        st.current = 1;
        set(&mut st, &path("p.extra"), vec![1]).expect("the root context counts its own");
    }

    proptest::proptest! {
        /// Whatever path and value a plugin stores, reading the path back
        /// (segments joined by NUL, as the SDKs spell it, with or without
        /// trailing empty segments) returns the value.
        #[test]
        fn set_then_get_round_trips(
            segments in proptest::collection::vec("[a-z_]{1,8}", 1..4),
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            extra_nuls in 0usize..3,
        ) {
            let (mut st, _ex) = state(None);
            let path = segments.join("\0");
            let spelled = format!("{path}{}", "\0".repeat(extra_nuls));
            set(&mut st, path.as_bytes(), value.clone()).unwrap();
            proptest::prop_assert_eq!(get(&st, spelled.as_bytes()), Some(value));
        }

        /// Integers go out as 8-byte little-endian, as Envoy encodes them.
        #[test]
        fn response_code_is_eight_bytes_little_endian(code in 100u16..1000) {
            let (st, ex) = state(None);
            ex.lock().response = Some(ResponseHead {
                status: http::StatusCode::from_u16(code).unwrap(),
                headers: Default::default(),
            });
            let v = get(&st, &path("response.code")).unwrap();
            proptest::prop_assert_eq!(v.len(), 8);
            proptest::prop_assert_eq!(i64::from_le_bytes(v.try_into().unwrap()), code as i64);
        }
    }
}
