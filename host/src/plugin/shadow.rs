//! Shadow rollouts: a candidate version of a plugin entry decides every
//! request beside the serving version, and only the serving one counts.
//!
//! Invariants:
//! - The candidate never touches the request being served. It runs on an
//!   exchange of its own, built from a copy of the request head and
//!   properties exactly as the serving plugin saw them, so its header
//!   changes, local responses, routes and what its callouts bring back are
//!   dropped with that exchange. It has its own shared-data store and its
//!   own (unexported) metrics, so its writes reach no serving plugin.
//! - It runs after the serving decision, on a task of its own: the request
//!   never waits for it, so a slow, looping or failing candidate adds no
//!   latency (it shares the CPU, bounded by `maxConcurrent` evaluations at
//!   once, each bounded by `timeoutMs` plus the sandbox's per-call budget).
//!   Running it concurrently with a timeout would instead add up to the
//!   timeout to every request whose candidate is slow.
//! - Only the request-headers decision is compared (continue, route, local
//!   answer and its status, reset): that is where policy decides. A
//!   candidate that waits for the body is counted as `timeout`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{FilterStatus, Plugin};
use crate::config::ShadowSpec;
use crate::exchange::{Exchange, RequestHead, RequestInfo};
use crate::metrics::Metrics;

/// What a plugin decided about a request at its request headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Continue,
    Route { service: String },
    Respond { status: u16 },
    Reset,
    Failed { reason: String },
}

impl Decision {
    /// A bounded label value (a status, not a body; `route`, not where).
    fn class(&self) -> String {
        match self {
            Decision::Continue => "continue".into(),
            Decision::Route { .. } => "route".into(),
            Decision::Respond { status } => format!("respond_{status}"),
            Decision::Reset => "reset".into(),
            Decision::Failed { .. } => "failed".into(),
        }
    }

    /// Failures match by kind, not by message.
    fn same_as(&self, other: &Decision) -> bool {
        match (self, other) {
            (Decision::Failed { .. }, Decision::Failed { .. }) => true,
            _ => self == other,
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Continue => f.write_str("continue"),
            Decision::Route { service } => write!(f, "route to {service}"),
            Decision::Respond { status } => write!(f, "respond {status}"),
            Decision::Reset => f.write_str("reset"),
            Decision::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DifferenceLabels {
    namespace: String,
    plugin: String,
    serving: String,
    candidate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvaluationLabels {
    namespace: String,
    plugin: String,
    result: String,
}

/// The shadow metric families, registered once per process.
#[derive(Clone)]
pub struct ShadowMetrics {
    differences: Family<DifferenceLabels, Counter>,
    evaluations: Family<EvaluationLabels, Counter>,
}

impl ShadowMetrics {
    pub fn new(metrics: &Metrics) -> ShadowMetrics {
        let differences = Family::<DifferenceLabels, Counter>::default();
        metrics.register(
            "shadow_differences",
            "Requests a shadow candidate decided differently from the serving plugin, by both decisions",
            differences.clone(),
        );
        let evaluations = Family::<EvaluationLabels, Counter>::default();
        metrics.register(
            "shadow_evaluations",
            "Shadow candidate runs by result: same, different, timeout, skipped (too many at once)",
            evaluations.clone(),
        );
        ShadowMetrics {
            differences,
            evaluations,
        }
    }
}

/// A difference as the log and the admin report show it.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub request_id: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub source: String,
    pub principal: String,
    pub serving: Decision,
    pub candidate: Decision,
}

/// Samples kept for the admin report, newest last.
const KEPT_SAMPLES: usize = 20;

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Counts {
    pub same: u64,
    pub different: u64,
    pub timeout: u64,
    pub skipped: u64,
}

#[derive(Default)]
struct Counters {
    same: AtomicU64,
    different: AtomicU64,
    timeout: AtomicU64,
    skipped: AtomicU64,
}

/// A candidate attached to a serving plugin entry.
pub struct Shadow {
    pub candidate: Arc<Plugin>,
    pub spec: ShadowSpec,
    metrics: ShadowMetrics,
    permits: Arc<Semaphore>,
    counters: Counters,
    samples: Mutex<VecDeque<Sample>>,
    /// Start of the current log window and lines written in it.
    log_window: Mutex<(Instant, u32)>,
}

impl Shadow {
    pub fn new(candidate: Arc<Plugin>, spec: ShadowSpec, metrics: ShadowMetrics) -> Shadow {
        Shadow {
            candidate,
            permits: Arc::new(Semaphore::new(spec.max_concurrent)),
            spec,
            metrics,
            counters: Counters::default(),
            samples: Mutex::new(VecDeque::new()),
            log_window: Mutex::new((Instant::now(), 0)),
        }
    }

    pub fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            same: c.same.load(Ordering::Relaxed),
            different: c.different.load(Ordering::Relaxed),
            timeout: c.timeout.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn evaluated(&self, result: &str) {
        self.metrics
            .evaluations
            .get_or_create(&EvaluationLabels {
                namespace: self.candidate.namespace.clone(),
                plugin: self.candidate.name().to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Starts the candidate on a copy of what the serving plugin saw; the
    /// caller goes on at once. `serving` is what the serving plugin decided.
    pub fn compare(
        self: &Arc<Self>,
        info: Arc<RequestInfo>,
        seen: Seen,
        end_of_stream: bool,
        serving: Decision,
    ) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            self.evaluated("skipped");
            return;
        };
        let shadow = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let budget = Duration::from_millis(shadow.spec.timeout_ms);
            let exchange = Arc::new(Exchange::new((*info).clone(), seen.head.clone()));
            exchange.lock().properties = seen.properties;
            let decided =
                tokio::time::timeout(budget, run(&shadow.candidate, &exchange, end_of_stream))
                    .await;
            match decided {
                Err(_) => {
                    shadow.counters.timeout.fetch_add(1, Ordering::Relaxed);
                    shadow.evaluated("timeout");
                }
                Ok(candidate) => shadow.record(&info, &seen.head, serving, candidate),
            }
        });
    }

    fn record(
        &self,
        info: &RequestInfo,
        head: &RequestHead,
        serving: Decision,
        candidate: Decision,
    ) {
        if serving.same_as(&candidate) {
            self.counters.same.fetch_add(1, Ordering::Relaxed);
            self.evaluated("same");
            return;
        }
        self.counters.different.fetch_add(1, Ordering::Relaxed);
        self.evaluated("different");
        self.metrics
            .differences
            .get_or_create(&DifferenceLabels {
                namespace: self.candidate.namespace.clone(),
                plugin: self.candidate.name().to_owned(),
                serving: serving.class(),
                candidate: candidate.class(),
            })
            .inc();
        let sample = Sample {
            request_id: info.id.clone(),
            method: head.method.to_string(),
            authority: head.authority.clone(),
            path: head.path.chars().take(256).collect(),
            source: info.source.to_string(),
            principal: info
                .peer
                .as_ref()
                .map(|p| p.principal())
                .unwrap_or_default(),
            serving,
            candidate,
        };
        if self.may_log() {
            tracing::warn!(
                target: "wayplug::shadow",
                namespace = %self.candidate.namespace,
                plugin = %self.candidate.name(),
                id = %sample.request_id,
                method = %sample.method,
                authority = %sample.authority,
                path = %sample.path,
                source = %sample.source,
                principal = %sample.principal,
                serving = %sample.serving,
                candidate = %sample.candidate,
                "shadow candidate decided differently"
            );
        }
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEPT_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// At most `logSamplesPerMinute` lines per minute; every difference is
    /// counted regardless.
    fn may_log(&self) -> bool {
        let mut w = self.log_window.lock().unwrap_or_else(|e| e.into_inner());
        if w.0.elapsed() >= Duration::from_secs(60) {
            *w = (Instant::now(), 0);
        }
        if w.1 >= self.spec.log_samples_per_minute {
            return false;
        }
        w.1 += 1;
        true
    }
}

/// What the serving plugin saw, copied before its callback ran.
pub struct Seen {
    pub head: RequestHead,
    pub properties: std::collections::HashMap<String, Vec<u8>>,
}

impl Seen {
    pub fn of(exchange: &Exchange) -> Seen {
        let st = exchange.lock();
        Seen {
            head: st.request.clone(),
            properties: st.properties.clone(),
        }
    }
}

/// Runs the candidate's request-headers phase to its decision, waiting out
/// a pause (a callout) until the caller's deadline.
async fn run(candidate: &Plugin, exchange: &Arc<Exchange>, eos: bool) -> Decision {
    let mut filter = match candidate.new_filter(exchange, false) {
        Ok(f) => f,
        Err(failure) => {
            return Decision::Failed {
                reason: failure.to_string(),
            };
        }
    };
    let status = filter.on_request_headers(eos);
    let decision = match status {
        Err(failure) => Decision::Failed {
            reason: failure.to_string(),
        },
        Ok(status) => settle(exchange, status).await,
    };
    filter.finish();
    decision
}

async fn settle(exchange: &Exchange, status: FilterStatus) -> Decision {
    loop {
        {
            let mut st = exchange.lock();
            if let Some(local) = st.local_response.take() {
                return Decision::Respond {
                    status: local.status.as_u16(),
                };
            }
            if st.reset {
                return Decision::Reset;
            }
            if let Some((_, failure)) = st.async_failure.take() {
                return Decision::Failed {
                    reason: failure.to_string(),
                };
            }
            if status == FilterStatus::Continue || st.resume_request {
                return match &st.route {
                    Some(r) => Decision::Route {
                        service: r.service.clone(),
                    },
                    None => Decision::Continue,
                };
            }
        }
        exchange.woken().await;
    }
}

/// The serving plugin's decision from what its callback left on the
/// exchange: the pipeline's outcome tells whether it answered or reset.
pub fn serving_continue(exchange: &Exchange, plugin: &str) -> Decision {
    match &exchange.lock().route {
        Some(r) if r.plugin == plugin => Decision::Route {
            service: r.service.clone(),
        },
        _ => Decision::Continue,
    }
}
