//! The host side of the `wayplug:policy` imports, and the request and
//! response resources plugins read through.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{Resource, ResourceTable};

use super::bindings::types;
use super::bindings::wayplug::policy::{clock, config, kv, log, metrics, trace};
use crate::exchange::{DecisionRecord, Exchange};
use crate::metrics::PluginMetricError;
use crate::plugin::PluginShared;
use crate::plugin::sandbox::MemoryLimiter;
use crate::plugin::shared::{KvError, KvStore};

/// Defines `wasi:random/insecure-seed`, the one WASI function Rust's
/// standard library calls on its own: every `HashMap` seeds its hasher with
/// it (the `cel` parser builds maps at load). It hands out no capability,
/// only a per-call random seed against hash flooding.
pub fn add_insecure_seed(
    linker: &mut wasmtime::component::Linker<ComponentState>,
) -> wasmtime::Result<()> {
    // The linker matches semver-compatible imports, so guests built against
    // any 0.2.x release link to this.
    linker
        .instance("wasi:random/insecure-seed@0.2.6")?
        .func_wrap("insecure-seed", |_store, (): ()| {
            let mut bytes = [0u8; 16];
            let _ = getrandom::fill(&mut bytes);
            let (a, b) = bytes.split_at(8);
            let seed = (
                u64::from_le_bytes(a.try_into().expect("8 bytes")),
                u64::from_le_bytes(b.try_into().expect("8 bytes")),
            );
            Ok((seed,))
        })?;
    Ok(())
}

/// The request a call is about. An instance keeps one handle for its life
/// and lends it to each call; it reads the exchange of the call in
/// progress (`ComponentState::current`), and nothing outside a call.
pub struct RequestRef;

/// The response a call is about, lent like [`RequestRef`].
pub struct ResponseRef;

pub struct ComponentState {
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub plugin: Arc<PluginShared>,
    pub kv: Arc<KvStore>,
    /// The exchange of the guest call in progress, for imports such as
    /// `trace` that take no request handle; `None` between calls.
    pub current: Option<Arc<Exchange>>,
}

fn joined(h: &http::HeaderMap, name: &str) -> Option<String> {
    let mut values = h.get_all(name).iter();
    let mut out = String::from_utf8_lossy(values.next()?.as_bytes()).into_owned();
    for v in values {
        out.push(',');
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(out)
}

/// `name` as a header map key: the guest's own string when it is already
/// lower case (the usual case), so a lookup allocates nothing more.
fn lower(mut name: String) -> String {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.make_ascii_lowercase();
    }
    name
}

fn all(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn pairs(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

impl ComponentState {
    fn req(&self, r: &Resource<RequestRef>) -> wasmtime::Result<&Exchange> {
        self.table.get(r)?;
        self.in_call()
    }
    fn resp(&self, r: &Resource<ResponseRef>) -> wasmtime::Result<&Exchange> {
        self.table.get(r)?;
        self.in_call()
    }
    fn in_call(&self) -> wasmtime::Result<&Exchange> {
        self.current
            .as_deref()
            .ok_or_else(|| wasmtime::Error::msg("a request handle was read outside a guest call"))
    }
}

impl types::HostRequest for ComponentState {
    fn method(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<String> {
        Ok(self.req(&r)?.lock().request.method.as_str().to_owned())
    }
    fn scheme(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<String> {
        Ok(self.req(&r)?.lock().request.scheme.clone())
    }
    fn authority(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<String> {
        Ok(self.req(&r)?.lock().request.authority.clone())
    }
    fn path(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<String> {
        let ex = self.req(&r)?;
        let st = ex.lock();
        Ok(st.request.path.split('?').next().unwrap_or("/").to_owned())
    }
    fn query(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<Option<String>> {
        let ex = self.req(&r)?;
        let st = ex.lock();
        Ok(st.request.path.split_once('?').map(|(_, q)| q.to_owned()))
    }
    fn header(
        &mut self,
        r: Resource<RequestRef>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        let ex = self.req(&r)?;
        let name = lower(name);
        let st = ex.lock();
        if name == "host" {
            return Ok(Some(st.request.authority.clone()));
        }
        Ok(joined(&st.request.headers, &name))
    }
    fn header_values(
        &mut self,
        r: Resource<RequestRef>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(all(&self.req(&r)?.lock().request.headers, &lower(name)))
    }
    fn headers(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(pairs(&self.req(&r)?.lock().request.headers))
    }
    fn source(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<types::Identity> {
        let ex = self.req(&r)?;
        let peer = ex.info.peer.as_ref();
        Ok(types::Identity {
            principal: peer.map(|p| p.principal()),
            namespace: peer.map(|p| p.namespace.clone()),
            service_account: peer.map(|p| p.service_account.clone()),
            trust_domain: peer.map(|p| p.trust_domain.clone()),
            address: ex.info.source.to_string(),
        })
    }
    fn destination(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<types::Destination> {
        let ex = self.req(&r)?;
        Ok(types::Destination {
            service: ex.info.service_hostname.clone(),
            namespace: ex.info.namespace.clone(),
            port: ex.info.destination.port(),
            address: ex.info.destination.to_string(),
        })
    }
    fn connection(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<types::Connection> {
        let ex = self.req(&r)?;
        Ok(types::Connection {
            // A peer identity exists only when the caller presented a mesh
            // certificate over mutual TLS (HBONE).
            mtls: ex.info.peer.is_some(),
            // No listener terminates TLS with a server name today: HBONE
            // carries no SNI and the plaintext listener has no TLS.
            requested_server_name: None,
        })
    }
    fn drop(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<()> {
        // Guests are only ever lent the instance's one handle, which lives
        // as long as the instance: there is nothing of theirs to free.
        let _ = r;
        Ok(())
    }
}

impl types::HostResponse for ComponentState {
    fn status(&mut self, r: Resource<ResponseRef>) -> wasmtime::Result<u16> {
        let ex = self.resp(&r)?;
        let st = ex.lock();
        Ok(st.response.as_ref().map_or(0, |r| r.status.as_u16()))
    }
    fn header(
        &mut self,
        r: Resource<ResponseRef>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        let ex = self.resp(&r)?;
        let st = ex.lock();
        Ok(st
            .response
            .as_ref()
            .and_then(|r| joined(&r.headers, &lower(name))))
    }
    fn header_values(
        &mut self,
        r: Resource<ResponseRef>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        let ex = self.resp(&r)?;
        let st = ex.lock();
        Ok(st
            .response
            .as_ref()
            .map(|r| all(&r.headers, &lower(name)))
            .unwrap_or_default())
    }
    fn headers(&mut self, r: Resource<ResponseRef>) -> wasmtime::Result<Vec<(String, String)>> {
        let ex = self.resp(&r)?;
        let st = ex.lock();
        Ok(st
            .response
            .as_ref()
            .map(|r| pairs(&r.headers))
            .unwrap_or_default())
    }
    fn drop(&mut self, r: Resource<ResponseRef>) -> wasmtime::Result<()> {
        // Guests are only ever lent the instance's one handle, which lives
        // as long as the instance: there is nothing of theirs to free.
        let _ = r;
        Ok(())
    }
}

impl types::Host for ComponentState {}

impl log::Host for ComponentState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.plugin.log(level_number(level), &message);
        Ok(())
    }
    fn enabled(&mut self, level: log::Level) -> wasmtime::Result<bool> {
        Ok(level_number(level) as u32 >= self.plugin.log_level())
    }
}

fn level_number(level: log::Level) -> i32 {
    match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    }
}

impl clock::Host for ComponentState {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64)
    }
    fn monotonic(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::plugin::sandbox::monotonic_nanos())
    }
}

fn metric_error(e: PluginMetricError) -> metrics::MetricError {
    match e {
        PluginMetricError::NotFound => metrics::MetricError::UnknownMetric,
        PluginMetricError::BadArgument => metrics::MetricError::KindMismatch,
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

impl metrics::Host for ComponentState {
    fn define(
        &mut self,
        kind: metrics::MetricKind,
        name: String,
    ) -> wasmtime::Result<Result<u32, metrics::MetricError>> {
        if !valid_metric_name(&name) {
            return Ok(Err(metrics::MetricError::InvalidName));
        }
        let kind = match kind {
            metrics::MetricKind::Counter => 0,
            metrics::MetricKind::Gauge => 1,
            metrics::MetricKind::Histogram => 2,
        };
        Ok(self
            .plugin
            .metrics
            .define(kind, &name)
            .ok_or(metrics::MetricError::KindMismatch))
    }
    fn increment(
        &mut self,
        metric: u32,
        delta: i64,
    ) -> wasmtime::Result<Result<(), metrics::MetricError>> {
        Ok(self
            .plugin
            .metrics
            .increment(metric, delta)
            .map_err(metric_error))
    }
    fn record(
        &mut self,
        metric: u32,
        value: u64,
    ) -> wasmtime::Result<Result<(), metrics::MetricError>> {
        Ok(self
            .plugin
            .metrics
            .record(metric, value)
            .map_err(metric_error))
    }
    fn get(&mut self, metric: u32) -> wasmtime::Result<Result<u64, metrics::MetricError>> {
        Ok(self.plugin.metrics.get(metric).map_err(metric_error))
    }
}

fn kv_error(e: KvError) -> kv::KvError {
    match e {
        KvError::CasMismatch => kv::KvError::CasMismatch,
        KvError::TooLarge => kv::KvError::TooLarge,
    }
}

impl kv::Host for ComponentState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<kv::Entry>> {
        Ok(self
            .kv
            .get(&key)
            .map(|(value, cas)| kv::Entry { value, cas }))
    }
    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        cas: Option<u64>,
    ) -> wasmtime::Result<Result<u64, kv::KvError>> {
        Ok(self.kv.set(&key, value, cas).map_err(kv_error))
    }
    fn delete(
        &mut self,
        key: String,
        cas: Option<u64>,
    ) -> wasmtime::Result<Result<(), kv::KvError>> {
        Ok(self.kv.delete(&key, cas).map_err(kv_error))
    }
}

impl trace::Host for ComponentState {
    fn record_decision(
        &mut self,
        policy: String,
        rule: Option<u32>,
        outcome: String,
        detail: String,
    ) -> wasmtime::Result<()> {
        let Some(exchange) = &self.current else {
            self.plugin.log(
                3,
                "trace.record-decision called outside a request; the record is dropped",
            );
            return Ok(());
        };
        let record = DecisionRecord {
            plugin: self.plugin.name.clone(),
            policy,
            rule,
            outcome,
            detail,
        };
        if let Some(kept) = exchange.record_decision(record) {
            tracing::info!(
                target: "wayplug::decision",
                id = %exchange.info.id,
                namespace = %self.plugin.namespace,
                decision = %kept,
                detail = %kept.detail,
                "policy decision"
            );
        }
        Ok(())
    }
}

impl config::Host for ComponentState {
    fn get(&mut self) -> wasmtime::Result<String> {
        Ok(String::from_utf8_lossy(&self.plugin.plugin_config).into_owned())
    }
    fn plugin_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.plugin.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_reads_join_repeats_and_match_any_case() {
        let mut h = http::HeaderMap::new();
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        h.insert("x-b", "only".parse().unwrap());
        assert_eq!(joined(&h, &lower("X-A".into())).as_deref(), Some("1,2"));
        assert_eq!(joined(&h, &lower("x-b".into())).as_deref(), Some("only"));
        assert_eq!(joined(&h, "x-c"), None);
        assert_eq!(lower("Content-Type".into()), "content-type");
    }
}
