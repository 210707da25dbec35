//! Prometheus metrics: the proxy's own, Istio's standard ones, and those
//! plugins define.
//!
//! The per-request families resolve their label sets once: a namespace's
//! series (and each plugin's, per status code) are found by borrowed name
//! under a read lock and kept, so a request allocates no label strings and
//! takes no exclusive lock once its series exist.

pub mod istio;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub namespace: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginRequestLabels {
    pub namespace: String,
    pub plugin: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginFailureLabels {
    pub namespace: String,
    pub plugin: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLimitLabels {
    pub namespace: String,
    pub plugin: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginMetricLabels {
    pub namespace: String,
    pub plugin: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub namespace: String,
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: String,
    pub reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Namespaces whose series are kept resolved; past this (never with a real
/// config) requests resolve them each time.
const MAX_CACHED_NAMESPACES: usize = 4096;
/// Distinct (plugin, code) or code series kept per namespace.
const MAX_CACHED_PER_NAMESPACE: usize = 1024;

/// A namespace's request series, resolved.
struct NamespaceSeries {
    duration: Histogram,
    by_code: RwLock<Vec<(u16, Counter)>>,
    by_plugin: RwLock<Vec<(String, u16, Counter)>>,
}

fn plugin_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 12))
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Istio's names carry no `wayplug_` prefix, so they live apart.
    istio_registry: Mutex<Registry>,
    /// Istio's standard metrics, reported as a waypoint.
    pub istio: istio::IstioMetrics,
    config_reloads: Family<ReloadLabels, Counter>,
    namespaces: RwLock<HashMap<String, Arc<NamespaceSeries>>>,
    requests: Family<RequestLabels, Counter>,
    plugin_requests: Family<PluginRequestLabels, Counter>,
    plugin_failures: Family<PluginFailureLabels, Counter>,
    plugin_limit_violations: Family<PluginLimitLabels, Counter>,
    plugin_vm_contended: Family<PluginLabels, Counter>,
    request_duration: HistogramFamily<NamespaceLabels>,
    plugin_counters: Family<PluginMetricLabels, Counter>,
    plugin_gauges: Family<PluginMetricLabels, Gauge>,
    plugin_histograms: HistogramFamily<PluginMetricLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wayplug");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by destination namespace and status code",
            requests.clone(),
        );
        let plugin_requests = Family::<PluginRequestLabels, Counter>::default();
        registry.register(
            "plugin_requests",
            "Requests each plugin took part in, by final status code",
            plugin_requests.clone(),
        );
        let plugin_failures = Family::<PluginFailureLabels, Counter>::default();
        registry.register(
            "plugin_failures",
            "Plugin traps, timeouts and memory exhaustion",
            plugin_failures.clone(),
        );
        let plugin_limit_violations = Family::<PluginLimitLabels, Counter>::default();
        registry.register(
            "plugin_limit_violations",
            "Host function calls refused because a plugin asked for more than a sandbox limit allows",
            plugin_limit_violations.clone(),
        );
        let plugin_vm_contended = Family::<PluginLabels, Counter>::default();
        registry.register(
            "plugin_vm_contended",
            "Requests that found every Proxy-Wasm VM of their plugin in a guest call and share a busy one",
            plugin_vm_contended.clone(),
        );
        let request_duration: HistogramFamily<NamespaceLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            request_duration.clone(),
        );
        let plugin_counters = Family::<PluginMetricLabels, Counter>::default();
        registry.register(
            "plugin_counter",
            "Counters defined by plugins",
            plugin_counters.clone(),
        );
        let plugin_gauges = Family::<PluginMetricLabels, Gauge>::default();
        registry.register(
            "plugin_gauge",
            "Gauges defined by plugins",
            plugin_gauges.clone(),
        );
        let plugin_histograms: HistogramFamily<PluginMetricLabels> =
            Family::new_with_constructor(plugin_histogram);
        registry.register(
            "plugin_histogram",
            "Histograms defined by plugins",
            plugin_histograms.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config changes applied (result ok) or refused (result rejected), by reason",
            config_reloads.clone(),
        );
        let mut istio_registry = Registry::default();
        let istio = istio::IstioMetrics::new(&mut istio_registry);
        Metrics {
            registry: Mutex::new(registry),
            istio_registry: Mutex::new(istio_registry),
            istio,
            config_reloads,
            namespaces: RwLock::default(),
            requests,
            plugin_requests,
            plugin_failures,
            plugin_limit_violations,
            plugin_vm_contended,
            request_duration,
            plugin_counters,
            plugin_gauges,
            plugin_histograms,
        }
    }

    /// Adds a metric family owned by another module (it keeps its own handle to update it).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        registry.register(name, help, metric);
    }

    /// Prometheus text exposition of everything.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        {
            let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        // One exposition: the first registry's end marker goes, the second's stays.
        if let Some(body) = out.strip_suffix("# EOF\n") {
            out.truncate(body.len());
        }
        let istio = self
            .istio_registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &istio);
        out
    }

    /// A config change was applied (`result` "ok") or refused ("rejected"), and why.
    pub fn config_reload(&self, result: &str, reason: &str) {
        self.config_reloads
            .get_or_create(&ReloadLabels {
                result: result.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    fn namespace_series(&self, namespace: &str) -> Option<Arc<NamespaceSeries>> {
        if let Some(s) = self
            .namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(namespace)
        {
            return Some(s.clone());
        }
        let mut map = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(namespace) {
            return Some(s.clone());
        }
        if map.len() >= MAX_CACHED_NAMESPACES {
            return None;
        }
        let series = Arc::new(NamespaceSeries {
            duration: self
                .request_duration
                .get_or_create(&NamespaceLabels {
                    namespace: namespace.to_owned(),
                })
                .clone(),
            by_code: RwLock::default(),
            by_plugin: RwLock::default(),
        });
        map.insert(namespace.to_owned(), series.clone());
        Some(series)
    }

    /// Counts one answered request in the namespace's series, resolving each
    /// label set the first time it is seen.
    pub fn request(&self, namespace: &str, code: u16, plugins: &[&str], seconds: f64) {
        let Some(ns) = self.namespace_series(namespace) else {
            return self.request_uncached(namespace, code, plugins, seconds);
        };
        ns.duration.observe(seconds);
        let found = ns
            .by_code
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, counter)| counter.clone());
        let counter = found.unwrap_or_else(|| {
            let counter = self
                .requests
                .get_or_create(&RequestLabels {
                    namespace: namespace.to_owned(),
                    code: code.to_string(),
                })
                .clone();
            let mut list = ns.by_code.write().unwrap_or_else(|e| e.into_inner());
            if list.len() < MAX_CACHED_PER_NAMESPACE && !list.iter().any(|(c, _)| *c == code) {
                list.push((code, counter.clone()));
            }
            counter
        });
        counter.inc();
        for plugin in plugins {
            let found = ns
                .by_plugin
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(p, c, _)| *c == code && p == plugin)
                .map(|(_, _, counter)| counter.clone());
            let counter = found.unwrap_or_else(|| {
                let counter = self
                    .plugin_requests
                    .get_or_create(&PluginRequestLabels {
                        namespace: namespace.to_owned(),
                        plugin: (*plugin).to_owned(),
                        code: code.to_string(),
                    })
                    .clone();
                let mut list = ns.by_plugin.write().unwrap_or_else(|e| e.into_inner());
                if list.len() < MAX_CACHED_PER_NAMESPACE {
                    list.push(((*plugin).to_owned(), code, counter.clone()));
                }
                counter
            });
            counter.inc();
        }
    }

    fn request_uncached(&self, namespace: &str, code: u16, plugins: &[&str], seconds: f64) {
        let code = code.to_string();
        self.requests
            .get_or_create(&RequestLabels {
                namespace: namespace.to_owned(),
                code: code.clone(),
            })
            .inc();
        for plugin in plugins {
            self.plugin_requests
                .get_or_create(&PluginRequestLabels {
                    namespace: namespace.to_owned(),
                    plugin: (*plugin).to_owned(),
                    code: code.clone(),
                })
                .inc();
        }
        self.request_duration
            .get_or_create(&NamespaceLabels {
                namespace: namespace.to_owned(),
            })
            .observe(seconds);
    }

    pub fn plugin_failure(&self, namespace: &str, plugin: &str, reason: &str) {
        self.plugin_failures
            .get_or_create(&PluginFailureLabels {
                namespace: namespace.to_owned(),
                plugin: plugin.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn plugin_limit_violation(&self, namespace: &str, plugin: &str, limit: &str) {
        self.plugin_limit_violations
            .get_or_create(&PluginLimitLabels {
                namespace: namespace.to_owned(),
                plugin: plugin.to_owned(),
                limit: limit.to_owned(),
            })
            .inc();
    }

    /// The plugin's contended-checkout counter, resolved once at load.
    pub fn vm_contended(&self, namespace: &str, plugin: &str) -> Counter {
        self.plugin_vm_contended
            .get_or_create(&PluginLabels {
                namespace: namespace.to_owned(),
                plugin: plugin.to_owned(),
            })
            .clone()
    }

    pub fn plugin_metrics(self: &Arc<Self>, namespace: &str, plugin: &str) -> PluginMetrics {
        PluginMetrics {
            metrics: self.clone(),
            namespace: namespace.to_owned(),
            plugin: plugin.to_owned(),
            defs: Mutex::new(Defs::default()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginMetricError {
    NotFound,
    BadArgument,
}

/// Metrics one plugin may define.
pub const MAX_PLUGIN_METRICS: usize = 1000;

/// Why a plugin could not define a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefineError {
    /// Unknown type, or a name that is empty or longer than 200 bytes.
    BadArgument,
    /// The plugin already defined as many metrics as it may.
    TooMany,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Default)]
struct Defs {
    by_id: Vec<(Kind, PluginMetricLabels)>,
    by_name: HashMap<(String, u8), u32>,
}

/// The metrics one plugin defined, with the ids it got for them. Defining
/// the same name and type again returns the same id, so every instance of
/// the plugin feeds one series.
pub struct PluginMetrics {
    metrics: Arc<Metrics>,
    namespace: String,
    plugin: String,
    defs: Mutex<Defs>,
}

impl PluginMetrics {
    /// Like [`PluginMetrics::try_define`], without saying why it failed.
    pub fn define(&self, kind: i32, name: &str) -> Option<u32> {
        self.try_define(kind, name).ok()
    }

    /// Proxy-Wasm metric types: counter 0, gauge 1, histogram 2. At most
    /// [`MAX_PLUGIN_METRICS`] distinct metrics per plugin: each is a series
    /// in every scrape, kept for the life of the process.
    pub fn try_define(&self, kind: i32, name: &str) -> Result<u32, DefineError> {
        let kind = match kind {
            0 => Kind::Counter,
            1 => Kind::Gauge,
            2 => Kind::Histogram,
            _ => return Err(DefineError::BadArgument),
        };
        if name.is_empty() || name.len() > 200 {
            return Err(DefineError::BadArgument);
        }
        let mut defs = self.defs.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_owned(), kind as u8);
        if let Some(id) = defs.by_name.get(&key) {
            return Ok(*id);
        }
        if defs.by_id.len() >= MAX_PLUGIN_METRICS {
            return Err(DefineError::TooMany);
        }
        let labels = PluginMetricLabels {
            namespace: self.namespace.clone(),
            plugin: self.plugin.clone(),
            name: name.to_owned(),
        };
        // Create the series now so it shows up before its first update.
        match kind {
            Kind::Counter => drop(self.metrics.plugin_counters.get_or_create(&labels)),
            Kind::Gauge => drop(self.metrics.plugin_gauges.get_or_create(&labels)),
            Kind::Histogram => drop(self.metrics.plugin_histograms.get_or_create(&labels)),
        }
        // Ids start at 1: some SDKs treat 0 as "undefined".
        defs.by_id.push((kind, labels));
        let id = defs.by_id.len() as u32;
        defs.by_name.insert(key, id);
        Ok(id)
    }

    fn lookup(&self, id: u32) -> Result<(Kind, PluginMetricLabels), PluginMetricError> {
        let defs = self.defs.lock().unwrap_or_else(|e| e.into_inner());
        let i = (id as usize)
            .checked_sub(1)
            .ok_or(PluginMetricError::NotFound)?;
        defs.by_id
            .get(i)
            .cloned()
            .ok_or(PluginMetricError::NotFound)
    }

    pub fn increment(&self, id: u32, offset: i64) -> Result<(), PluginMetricError> {
        let (kind, labels) = self.lookup(id)?;
        match kind {
            Kind::Counter if offset >= 0 => {
                self.metrics
                    .plugin_counters
                    .get_or_create(&labels)
                    .inc_by(offset as u64);
            }
            Kind::Gauge => {
                // Gauges saturate at 0: plugins see them as unsigned. One
                // atomic update, so increments from instances running in
                // parallel are never lost.
                let g = self.metrics.plugin_gauges.get_or_create(&labels);
                let _ = g
                    .inner()
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        Some(v.saturating_add(offset).max(0))
                    });
            }
            _ => return Err(PluginMetricError::BadArgument),
        }
        Ok(())
    }

    pub fn record(&self, id: u32, value: u64) -> Result<(), PluginMetricError> {
        let (kind, labels) = self.lookup(id)?;
        match kind {
            Kind::Counter => {
                // Recording a counter sets it, as Envoy does; it never goes
                // down, also when two instances record at once.
                let c = self.metrics.plugin_counters.get_or_create(&labels);
                c.inner().fetch_max(value, Ordering::Relaxed);
            }
            Kind::Gauge => {
                self.metrics
                    .plugin_gauges
                    .get_or_create(&labels)
                    .set(value as i64);
            }
            Kind::Histogram => self
                .metrics
                .plugin_histograms
                .get_or_create(&labels)
                .observe(value as f64),
        }
        Ok(())
    }

    pub fn get(&self, id: u32) -> Result<u64, PluginMetricError> {
        let (kind, labels) = self.lookup(id)?;
        match kind {
            Kind::Counter => Ok(self.metrics.plugin_counters.get_or_create(&labels).get()),
            Kind::Gauge => Ok(self.metrics.plugin_gauges.get_or_create(&labels).get() as u64),
            Kind::Histogram => Err(PluginMetricError::BadArgument),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_metrics_round_trip_and_export() {
        let m = Arc::new(Metrics::new());
        let pm = m.plugin_metrics("ns", "p");
        let c = pm.define(0, "hits").unwrap();
        assert_eq!(pm.define(0, "hits"), Some(c));
        let g = pm.define(1, "level").unwrap();
        let h = pm.define(2, "sizes").unwrap();
        assert_eq!(pm.try_define(9, "x"), Err(DefineError::BadArgument));
        pm.increment(c, 3).unwrap();
        assert_eq!(pm.increment(c, -1), Err(PluginMetricError::BadArgument));
        pm.increment(g, -5).unwrap();
        pm.record(h, 42).unwrap();
        assert_eq!(pm.get(c), Ok(3));
        assert_eq!(pm.get(g), Ok(0), "gauges saturate at 0");
        pm.increment(g, 7).unwrap();
        pm.increment(g, -2).unwrap();
        assert_eq!(pm.get(g), Ok(5));
        assert_eq!(pm.get(h), Err(PluginMetricError::BadArgument));
        assert_eq!(pm.get(99), Err(PluginMetricError::NotFound));
        m.request("ns", 403, &["p"], 0.001);
        let text = m.encode();
        for want in [
            r#"wayplug_plugin_counter_total{namespace="ns",plugin="p",name="hits"} 3"#,
            r#"wayplug_plugin_gauge{namespace="ns",plugin="p",name="level"} 5"#,
            r#"wayplug_requests_total{namespace="ns",code="403"} 1"#,
            r#"wayplug_plugin_requests_total{namespace="ns",plugin="p",code="403"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }

    #[test]
    fn resolved_request_series_keep_counting_per_code_and_plugin() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.request("ns", 200, &["a", "b"], 0.001);
        }
        m.request("ns", 503, &["a"], 0.001);
        m.request("other", 200, &[], 0.001);
        m.config_reload("rejected", "plugin");
        let text = m.encode();
        for want in [
            r#"wayplug_requests_total{namespace="ns",code="200"} 3"#,
            r#"wayplug_requests_total{namespace="ns",code="503"} 1"#,
            r#"wayplug_requests_total{namespace="other",code="200"} 1"#,
            r#"wayplug_plugin_requests_total{namespace="ns",plugin="a",code="200"} 3"#,
            r#"wayplug_plugin_requests_total{namespace="ns",plugin="b",code="200"} 3"#,
            r#"wayplug_plugin_requests_total{namespace="ns",plugin="a",code="503"} 1"#,
            r#"wayplug_request_duration_seconds_count{namespace="ns"} 4"#,
            r#"wayplug_config_reloads_total{result="rejected",reason="plugin"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1, "one exposition:\n{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn metric_definitions_are_capped_per_plugin() {
        let m = Arc::new(Metrics::new());
        let pm = m.plugin_metrics("ns", "p");
        for i in 0..MAX_PLUGIN_METRICS {
            pm.try_define(0, &format!("m{i}")).unwrap();
        }
        assert_eq!(pm.try_define(0, "one_more"), Err(DefineError::TooMany));
        assert_eq!(pm.try_define(0, "m0"), Ok(1), "a known name still resolves");
        let other = m.plugin_metrics("ns", "q");
        assert!(
            other.try_define(0, "one_more").is_ok(),
            "the cap is per plugin"
        );
    }

    #[test]
    fn gauge_and_counter_updates_from_threads_are_not_lost() {
        let m = Arc::new(Metrics::new());
        let pm = Arc::new(m.plugin_metrics("ns", "p"));
        let g = pm.define(1, "inflight").unwrap();
        let c = pm.define(0, "high_water").unwrap();
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let pm = pm.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000u64 {
                        pm.increment(g, 3).unwrap();
                        pm.increment(g, -1).unwrap();
                        pm.record(c, t * 5_000 + i).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pm.get(g), Ok(8 * 5_000 * 2));
        assert_eq!(pm.get(c), Ok(8 * 5_000 - 1), "the highest value recorded");
    }
}
