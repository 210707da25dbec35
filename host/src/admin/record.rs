//! Recording live requests with the decisions they got, so `wayplug record`
//! can turn a sample of real traffic into a policy suite.
//!
//! Invariants: nothing is kept unless the recorder is armed, and the data
//! path pays one atomic load to learn that it is not. Once armed it keeps at
//! most `count` requests (never more than [`MAX_COUNT`]), at most
//! `perSecond` of them a second, each with at most [`MAX_HEADERS`] headers
//! of at most [`MAX_VALUE_BYTES`]; it disarms itself when full or when its
//! time is up. Header values on the redaction list are replaced before they
//! are kept, so they never reach the admin listener or a suite file.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::exchange::{DecisionRecord, RequestHead, RequestInfo};

/// The most requests one recording keeps.
pub const MAX_COUNT: usize = 1000;
/// Headers kept per recorded request; the rest are dropped.
pub const MAX_HEADERS: usize = 64;
/// A longer header value is cut to this many bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Requests kept per second unless the recording asks otherwise.
pub const DEFAULT_PER_SECOND: u32 = 10;
/// A recording nobody stops ends after this long.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(300);
/// What a redacted header value is replaced with.
pub const REDACTED: &str = "REDACTED";
/// Headers whose values are redacted unless the recording names its own
/// list: credentials and session state.
pub const DEFAULT_REDACT: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-csrf-token",
    "x-amz-security-token",
];

/// A request as it arrived, before any plugin changed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestFacts {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub headers: Vec<(String, String)>,
    pub protocol: String,
    pub source: SocketAddr,
    /// The caller's mesh principal (`td/ns/N/sa/SA`), when it came over mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    pub namespace: String,
    pub service: String,
    pub port: u16,
}

impl RequestFacts {
    pub fn of(info: &RequestInfo, head: &RequestHead, port: u16) -> RequestFacts {
        let headers = head
            .headers
            .iter()
            // The pipeline made one up unless the caller sent it: a replay
            // makes its own.
            .filter(|(name, _)| *name != "x-request-id")
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        RequestFacts {
            method: head.method.to_string(),
            path: head.path.clone(),
            authority: head.authority.clone(),
            headers,
            protocol: info.protocol.to_owned(),
            source: info.source,
            principal: info.peer.as_ref().map(|p| p.principal()),
            namespace: info.namespace.clone(),
            service: info.service_hostname.clone(),
            port,
        }
    }
}

/// A finished request: what came in and what the chain decided.
#[derive(Debug, Clone)]
pub struct Observed {
    pub request: RequestFacts,
    pub status: u16,
    /// The plugin that answered locally, if one did.
    pub local_by: String,
    pub decisions: Vec<DecisionRecord>,
}

/// One decision record as the admin listener and suite files spell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedDecision {
    pub plugin: String,
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl From<&DecisionRecord> for RecordedDecision {
    fn from(d: &DecisionRecord) -> Self {
        RecordedDecision {
            plugin: d.plugin.clone(),
            policy: d.policy.clone(),
            rule: d.rule,
            outcome: d.outcome.clone(),
            detail: d.detail.clone(),
        }
    }
}

/// A recorded request, as `GET /record` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    pub request: RequestFacts,
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decided_by: String,
    #[serde(default)]
    pub decisions: Vec<RecordedDecision>,
}

/// What one recording keeps.
#[derive(Debug, Clone)]
pub struct Settings {
    pub count: usize,
    /// 0: no rate limit (offline suites record every request).
    pub per_second: u32,
    /// Only these headers are kept (lowercase); `None` keeps all.
    pub allow_headers: Option<Vec<String>>,
    /// These headers' values are replaced by [`REDACTED`] (lowercase).
    pub redact: Vec<String>,
    pub duration: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            count: 100,
            per_second: DEFAULT_PER_SECOND,
            allow_headers: None,
            redact: DEFAULT_REDACT.iter().map(|s| s.to_string()).collect(),
            duration: DEFAULT_DURATION,
        }
    }
}

impl Settings {
    /// Every request, every header, nothing redacted: for a pipeline that
    /// only ever sees the requests a suite makes up.
    pub fn everything(count: usize) -> Settings {
        Settings {
            count,
            per_second: 0,
            allow_headers: None,
            redact: Vec::new(),
            duration: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Default)]
pub struct Recorder {
    armed: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    settings: Settings,
    kept: Vec<Recorded>,
    last: Option<Instant>,
    until: Option<Instant>,
}

impl Recorder {
    /// Whether finished requests are wanted now.
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Starts a recording; what an earlier one kept is dropped.
    pub fn arm(&self, mut settings: Settings) {
        settings.count = settings.count.clamp(1, MAX_COUNT);
        let mut st = self.lock();
        st.until = Some(Instant::now() + settings.duration);
        st.settings = settings;
        st.kept.clear();
        st.last = None;
        self.armed.store(true, Ordering::Relaxed);
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }

    /// What the recording kept so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.lock().kept.clone()
    }

    /// Takes what the recording kept, leaving it empty.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.lock().kept)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `o` if the recording wants it (armed, within its rate, not full).
    pub fn offer(&self, o: Observed) {
        let mut st = self.lock();
        if !self.armed() {
            return;
        }
        let now = Instant::now();
        if st.until.is_some_and(|u| now >= u) {
            self.disarm();
            return;
        }
        if st.settings.per_second > 0
            && let Some(last) = st.last
            && now.duration_since(last) < Duration::from_secs(1) / st.settings.per_second
        {
            return;
        }
        st.last = Some(now);
        let request = filter_headers(o.request, &st.settings);
        st.kept.push(Recorded {
            request,
            status: o.status,
            decided_by: o.local_by,
            decisions: o.decisions.iter().map(RecordedDecision::from).collect(),
        });
        if st.kept.len() >= st.settings.count {
            self.disarm();
        }
    }
}

fn filter_headers(mut request: RequestFacts, settings: &Settings) -> RequestFacts {
    let headers = std::mem::take(&mut request.headers);
    request.headers = headers
        .into_iter()
        .filter(|(name, _)| {
            settings
                .allow_headers
                .as_ref()
                .is_none_or(|allow| allow.iter().any(|a| a == name))
        })
        .take(MAX_HEADERS)
        .map(|(name, mut value)| {
            if settings.redact.contains(&name) {
                value = REDACTED.to_owned();
            } else if value.len() > MAX_VALUE_BYTES {
                let mut cut = MAX_VALUE_BYTES;
                while !value.is_char_boundary(cut) {
                    cut -= 1;
                }
                value.truncate(cut);
            }
            (name, value)
        })
        .collect();
    request
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("query parameter `{name}`: {reason}")]
    Param { name: String, reason: String },
    #[error("unknown query parameter `{0}`; known: count, perSecond, headers, redact, seconds")]
    UnknownParam(String),
}

fn parse_settings(query: Option<&str>) -> Result<Settings, Error> {
    let mut s = Settings::default();
    let bad = |name: &str, reason: &str| Error::Param {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
    };
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Header names are tokens: they never need percent-encoding.
        if value.contains('%') {
            return Err(bad(name, "percent-encoded values are not accepted"));
        }
        match name {
            "count" => {
                s.count = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_COUNT).contains(n))
                    .ok_or_else(|| bad(name, &format!("expected 1..={MAX_COUNT}")))?
            }
            "perSecond" => {
                s.per_second = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| bad(name, "expected 1..=1000"))?
            }
            "seconds" => {
                s.duration = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=3600).contains(n))
                    .map(Duration::from_secs)
                    .ok_or_else(|| bad(name, "expected 1..=3600"))?
            }
            "headers" => s.allow_headers = Some(list(value)),
            // Adds to the default list: credentials stay redacted unless the
            // operator allows-lists headers without them.
            "redact" => s.redact.extend(list(value)),
            other => return Err(Error::UnknownParam(other.to_owned())),
        }
    }
    Ok(s)
}

#[derive(Serialize)]
struct Status<'a> {
    armed: bool,
    recorded: &'a [Recorded],
}

/// The admin listener's `/record` routes:
/// `POST /record/start?count=N&perSecond=R&headers=a,b&redact=c&seconds=S`
/// arms, `GET /record` shows what was kept, `POST /record/stop` disarms and
/// hands over what was kept.
pub fn route(
    recorder: &Recorder,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> (StatusCode, &'static str, String) {
    let json = |recorded: &[Recorded]| {
        serde_json::to_string(&Status {
            armed: recorder.armed(),
            recorded,
        })
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    };
    match (method, path) {
        (&Method::POST, "/record/start") => match parse_settings(query) {
            Ok(settings) => {
                recorder.arm(settings);
                (StatusCode::OK, "application/json", json(&[]))
            }
            Err(e) => (StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        },
        (&Method::GET, "/record") => (
            StatusCode::OK,
            "application/json",
            json(&recorder.recorded()),
        ),
        (&Method::POST, "/record/stop") => {
            recorder.disarm();
            let kept = recorder.take();
            (StatusCode::OK, "application/json", json(&kept))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try POST /record/start?count=N, GET /record, POST /record/stop\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(headers: &[(&str, &str)]) -> Observed {
        Observed {
            request: RequestFacts {
                method: "GET".into(),
                path: "/".into(),
                authority: "a.test".into(),
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                protocol: "HTTP/1.1".into(),
                source: "127.0.0.1:1".parse().unwrap(),
                principal: None,
                namespace: "ns".into(),
                service: "a.test".into(),
                port: 80,
            },
            status: 200,
            local_by: String::new(),
            decisions: Vec::new(),
        }
    }

    #[test]
    fn keeps_nothing_unless_armed_and_stops_when_full() {
        let r = Recorder::default();
        r.offer(observed(&[]));
        assert!(r.recorded().is_empty());
        r.arm(Settings {
            count: 2,
            ..Settings::everything(2)
        });
        for _ in 0..5 {
            r.offer(observed(&[]));
        }
        assert_eq!(r.recorded().len(), 2);
        assert!(!r.armed(), "a full recording disarms itself");
    }

    #[test]
    fn rate_limit_drops_requests_closer_than_the_rate() {
        let r = Recorder::default();
        r.arm(Settings {
            per_second: 1,
            ..Settings::default()
        });
        for _ in 0..10 {
            r.offer(observed(&[]));
        }
        assert_eq!(r.recorded().len(), 1);
    }

    #[test]
    fn credentials_are_redacted_and_the_allow_list_applies() {
        let r = Recorder::default();
        r.arm(Settings {
            per_second: 0,
            ..Settings::default()
        });
        r.offer(observed(&[
            ("authorization", "Bearer secret"),
            ("cookie", "session=secret"),
            ("x-user", "alice"),
        ]));
        let kept = &r.recorded()[0].request.headers;
        assert!(kept.contains(&("authorization".into(), REDACTED.into())));
        assert!(kept.contains(&("cookie".into(), REDACTED.into())));
        assert!(kept.contains(&("x-user".into(), "alice".into())));
        assert!(!format!("{kept:?}").contains("secret"));

        r.arm(parse_settings(Some("headers=x-user&perSecond=1000")).unwrap());
        r.offer(observed(&[("authorization", "x"), ("x-user", "bob")]));
        assert_eq!(
            r.recorded()[0].request.headers,
            vec![("x-user".to_owned(), "bob".to_owned())]
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, want) in [
            ("count=0", "`count`"),
            ("count=abc", "`count`"),
            ("perSecond=0", "`perSecond`"),
            ("nope=1", "`nope`"),
            ("headers=a%20b", "`headers`"),
        ] {
            let e = parse_settings(Some(q)).unwrap_err().to_string();
            assert!(e.contains(want), "{q}: {e}");
        }
    }
}
