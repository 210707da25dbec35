//! Component-model plugins built for the `wayplug:policy` world (wit/).
//!
//! A policy decides about a request in one call (`on-request`) and may opt
//! into response and body hooks by exporting their interfaces; which ones it
//! exports is read once, at load. Instances are pooled like Proxy-Wasm VMs
//! and run under the same sandbox limits; the request and response reach
//! the guest as resources, so a policy pays only for the fields it reads.

mod bindings;
mod host;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use wasmtime::component::{Component, InstancePre, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};

use super::filter::{FilterStatus, HttpFilter};
use super::pool::{InstancePool, Poisonable};
use super::sandbox::{MemoryLimiter, classify};
use super::{PluginFailure, PluginShared};
use crate::exchange::{Exchange, LocalResponse, RouteChoice};
use bindings::{body_hooks, request_policy, response_hooks, types};
pub use host::ComponentState;
use host::{RequestRef, ResponseRef};

/// The linker every component plugin links against: the world's imports.
/// WASI imports a guest's standard library may pull in are not offered; the
/// loader defines them as traps, so a plugin that really calls one fails
/// visibly instead of being refused at load.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    bindings::PolicyWithResponseAndBody::add_to_linker::<
        _,
        wasmtime::component::HasSelf<ComponentState>,
    >(&mut linker, |s| s)?;
    host::add_insecure_seed(&mut linker)?;
    Ok(linker)
}

struct Exports {
    request: request_policy::GuestIndices,
    response: Option<response_hooks::GuestIndices>,
    body: Option<body_hooks::GuestIndices>,
}

pub struct ComponentPlugin {
    pre: InstancePre<ComponentState>,
    exports: Arc<Exports>,
    shared: Arc<PluginShared>,
    pool: InstancePool<ComponentInstance>,
}

/// Why a component could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    Abi(String),
    Start(String),
}

impl ComponentPlugin {
    pub fn new(
        engine: &Engine,
        base: &Linker<ComponentState>,
        bytes: &[u8],
        shared: Arc<PluginShared>,
        instances: usize,
    ) -> Result<ComponentPlugin, LoadError> {
        let component =
            Component::new(engine, bytes).map_err(|e| LoadError::Abi(format!("{e:#}")))?;
        let mut linker = base.clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| LoadError::Abi(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Abi(format!("cannot link the component: {e:#}")))?;
        let request = request_policy::GuestIndices::new(&pre).map_err(|e| {
            LoadError::Abi(format!(
                "not a wayplug:policy@0.1.0 plugin: it does not export request-policy ({e})"
            ))
        })?;
        let exports = Arc::new(Exports {
            request,
            response: response_hooks::GuestIndices::new(&pre).ok(),
            body: body_hooks::GuestIndices::new(&pre).ok(),
        });
        let first = ComponentInstance::start(&pre, &exports, &shared)?;
        Ok(ComponentPlugin {
            pool: InstancePool::new(first, instances),
            pre,
            exports,
            shared,
        })
    }

    pub fn shared(&self) -> &PluginShared {
        &self.shared
    }

    pub fn live_instances(&self) -> usize {
        self.pool.live()
    }

    pub fn new_filter(
        &self,
        exchange: &Arc<Exchange>,
        fresh: bool,
    ) -> Result<Box<dyn HttpFilter>, PluginFailure> {
        let instance = self.pool.checkout(fresh, || {
            ComponentInstance::start(&self.pre, &self.exports, &self.shared).map_err(|e| match e {
                LoadError::Abi(m) | LoadError::Start(m) => PluginFailure::Start(m),
            })
        })?;
        Ok(Box::new(ComponentFilter {
            instance,
            exchange: exchange.clone(),
            response_headers: Vec::new(),
            response_changes: None,
            let_through: false,
            has_body_hook: self.exports.body.is_some(),
        }))
    }
}

struct Inner {
    store: Store<ComponentState>,
    request: request_policy::Guest,
    response: Option<response_hooks::Guest>,
    body: Option<body_hooks::Guest>,
}

pub struct ComponentInstance {
    inner: Mutex<Inner>,
    poisoned: AtomicBool,
    shared: Arc<PluginShared>,
}

impl Poisonable for ComponentInstance {
    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }
}

impl ComponentInstance {
    fn start(
        pre: &InstancePre<ComponentState>,
        exports: &Exports,
        shared: &Arc<PluginShared>,
    ) -> Result<Arc<Self>, LoadError> {
        let state = ComponentState {
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(shared.limits.memory_limit_bytes),
            plugin: shared.clone(),
            kv: shared.shared.plugin_kv(&shared.name),
            current: None,
        };
        let mut store = Store::new(pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(shared.limits.deadline_ticks);
        let fail = |store: &Store<ComponentState>, e: wasmtime::Error| {
            LoadError::Start(classify(&e, store.data().limiter.refused, shared).to_string())
        };
        let instance = match pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(fail(&store, e)),
        };
        let request = exports
            .request
            .load(&mut store, &instance)
            .map_err(|e| LoadError::Abi(format!("{e:#}")))?;
        let response = match &exports.response {
            Some(i) => Some(
                i.load(&mut store, &instance)
                    .map_err(|e| LoadError::Abi(format!("{e:#}")))?,
            ),
            None => None,
        };
        let body = match &exports.body {
            Some(i) => Some(
                i.load(&mut store, &instance)
                    .map_err(|e| LoadError::Abi(format!("{e:#}")))?,
            ),
            None => None,
        };
        let config = String::from_utf8_lossy(&shared.plugin_config).into_owned();
        match request.call_configure(&mut store, &config) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                return Err(LoadError::Start(format!(
                    "configure rejected the plugin configuration: {msg}"
                )));
            }
            Err(e) => return Err(fail(&store, e)),
        }
        Ok(Arc::new(ComponentInstance {
            inner: Mutex::new(Inner {
                store,
                request,
                response,
                body,
            }),
            poisoned: AtomicBool::new(false),
            shared: shared.clone(),
        }))
    }

    /// One guest call under the deadline and memory limit; any failure
    /// poisons the instance.
    fn call<R>(
        &self,
        f: impl FnOnce(&mut Inner) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        if self.is_poisoned() {
            return Err(PluginFailure::InstanceLost);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .store
            .set_epoch_deadline(self.shared.limits.deadline_ticks);
        inner.store.data_mut().limiter.refused = false;
        let result = f(&mut inner);
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                self.poisoned.store(true, Ordering::Release);
                let failure = classify(&e, inner.store.data().limiter.refused, &self.shared);
                drop(inner);
                self.shared.report_failure(&failure);
                Err(failure)
            }
        }
    }
}

struct ComponentFilter {
    instance: Arc<ComponentInstance>,
    exchange: Arc<Exchange>,
    /// Headers the request decision asked to add to the response.
    response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Set/add/remove changes the request decision asked for on the
    /// response head (HTTPRoute's ResponseHeaderModifier).
    response_changes: Option<types::HeaderChanges>,
    /// The plugin let the request through (its body hook then runs).
    let_through: bool,
    /// Read from the plugin's exports at load.
    has_body_hook: bool,
}

fn bad(msg: impl Into<String>) -> PluginFailure {
    PluginFailure::BadDecision(msg.into())
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), PluginFailure> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| bad(format!("invalid header name `{name}`")))?;
    let v = HeaderValue::from_str(value)
        .map_err(|_| bad(format!("invalid value for header `{name}`")))?;
    Ok((n, v))
}

fn apply(headers: &mut HeaderMap, changes: &types::HeaderChanges) -> Result<(), PluginFailure> {
    for name in &changes.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for (k, v) in &changes.set {
        let (k, v) = header(k, v)?;
        headers.insert(k, v);
    }
    for (k, v) in &changes.add {
        let (k, v) = header(k, v)?;
        headers.append(k, v);
    }
    Ok(())
}

fn local(plugin: &str, r: types::LocalResponse) -> Result<LocalResponse, PluginFailure> {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| bad(format!("status {} is outside 200..=599", r.status)))?;
    for (k, v) in &r.headers {
        header(k, v)?;
    }
    Ok(LocalResponse {
        status,
        headers: r
            .headers
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect(),
        body: r.body.into(),
        details: "component plugin response".into(),
        plugin: plugin.to_owned(),
    })
}

fn redirect(plugin: &str, r: types::Redirect) -> Result<LocalResponse, PluginFailure> {
    use types::RedirectStatus as S;
    let status = match r.status {
        S::MovedPermanently => 301,
        S::Found => 302,
        S::SeeOther => 303,
        S::TemporaryRedirect => 307,
        S::PermanentRedirect => 308,
    };
    let mut headers = r.headers;
    headers.push(("location".into(), r.location));
    local(
        plugin,
        types::LocalResponse {
            status,
            headers,
            body: Vec::new(),
        },
    )
}

/// Picks a backend by weight.
fn pick(backends: &[types::WeightedBackend]) -> Result<&types::WeightedBackend, PluginFailure> {
    let total: u64 = backends.iter().map(|b| b.weight as u64).sum();
    if total == 0 {
        return Err(bad("route has no backend with a positive weight"));
    }
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    let mut n = u64::from_le_bytes(r) % total;
    for b in backends {
        if n < b.weight as u64 {
            return Ok(b);
        }
        n -= b.weight as u64;
    }
    Err(bad("route has no backend with a positive weight"))
}

impl ComponentFilter {
    fn name(&self) -> &str {
        &self.instance.shared.name
    }

    fn with_request<R>(
        &self,
        f: impl FnOnce(&mut Inner, Resource<RequestRef>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        let exchange = self.exchange.clone();
        self.instance.call(|inner| {
            inner.store.data_mut().current = Some(exchange.clone());
            let req = inner.store.data_mut().table.push(RequestRef { exchange })?;
            let borrowed = Resource::new_borrow(req.rep());
            let r = f(inner, borrowed);
            inner.store.data_mut().current = None;
            inner.store.data_mut().table.delete(req)?;
            r
        })
    }

    fn decide(&mut self, d: types::Decision) -> Result<(), PluginFailure> {
        let plugin = self.name().to_owned();
        let changes = match d {
            types::Decision::Respond(r) => {
                self.exchange.lock().local_response = Some(local(&plugin, r)?);
                return Ok(());
            }
            types::Decision::Redirect(r) => {
                self.exchange.lock().local_response = Some(redirect(&plugin, r)?);
                return Ok(());
            }
            types::Decision::Continue(changes) => changes,
            types::Decision::Route(route) => {
                let backend = pick(&route.backends)?;
                let choice = RouteChoice {
                    service: backend.service.clone(),
                    port: backend.port,
                    rewrite_path: route.rewrite_path.clone(),
                    rewrite_host: route.rewrite_host.clone(),
                    plugin: plugin.clone(),
                };
                self.exchange.lock().route = Some(choice);
                route.changes
            }
        };
        for (k, v) in &changes.response_headers {
            self.response_headers.push(header(k, v)?);
        }
        let rc = &changes.response_changes;
        if !(rc.set.is_empty() && rc.add.is_empty() && rc.remove.is_empty()) {
            // Checked now, so a bad name fails the request decision rather
            // than surfacing later on the response.
            apply(&mut HeaderMap::new(), rc)?;
            self.response_changes = Some(changes.response_changes.clone());
        }
        apply(
            &mut self.exchange.lock().request.headers,
            &changes.request_headers,
        )?;
        self.let_through = true;
        Ok(())
    }

    fn body_hook(&mut self, body: Vec<u8>) -> Result<(), PluginFailure> {
        let decision = self.with_request(|inner, req| match &inner.body {
            Some(g) => g
                .call_on_request_body(&mut inner.store, req, &body)
                .map(Some),
            None => Ok(None),
        })?;
        match decision {
            None | Some(types::BodyDecision::Continue) => {}
            Some(types::BodyDecision::Replace(bytes)) => {
                self.exchange.lock().request_body = BytesMut::from(&bytes[..]);
            }
            Some(types::BodyDecision::Respond(r)) => {
                let plugin = self.name().to_owned();
                self.exchange.lock().local_response = Some(local(&plugin, r)?);
            }
        }
        Ok(())
    }
}

impl HttpFilter for ComponentFilter {
    fn on_request_headers(&mut self, eos: bool) -> Result<FilterStatus, PluginFailure> {
        let decision =
            self.with_request(|inner, req| inner.request.call_on_request(&mut inner.store, req))?;
        self.decide(decision)?;
        if eos && self.let_through && self.has_body_hook {
            self.body_hook(Vec::new())?;
        }
        Ok(FilterStatus::Continue)
    }

    fn on_request_body(&mut self, _size: usize, eos: bool) -> Result<FilterStatus, PluginFailure> {
        if !self.let_through || !self.has_body_hook {
            return Ok(FilterStatus::Continue);
        }
        if !eos {
            // Keep buffering: the hook sees the complete body.
            return Ok(FilterStatus::Pause);
        }
        let body = self.exchange.lock().request_body.to_vec();
        self.body_hook(body)?;
        Ok(FilterStatus::Continue)
    }

    fn on_response_headers(&mut self, _eos: bool) -> Result<FilterStatus, PluginFailure> {
        {
            let mut st = self.exchange.lock();
            if let Some(resp) = st.response.as_mut() {
                for (k, v) in &self.response_headers {
                    resp.headers.append(k.clone(), v.clone());
                }
                if let Some(changes) = &self.response_changes {
                    apply(&mut resp.headers, changes)?;
                }
            }
        }
        let exchange = self.exchange.clone();
        let decision = self.instance.call(|inner| {
            let Some(g) = &inner.response else {
                return Ok(None);
            };
            let g = g.clone();
            inner.store.data_mut().current = Some(exchange.clone());
            let table = &mut inner.store.data_mut().table;
            let req = table.push(RequestRef {
                exchange: exchange.clone(),
            })?;
            let resp = table.push(ResponseRef { exchange })?;
            let r = g.call_on_response(
                &mut inner.store,
                Resource::new_borrow(req.rep()),
                Resource::new_borrow(resp.rep()),
            );
            inner.store.data_mut().current = None;
            let table = &mut inner.store.data_mut().table;
            table.delete(req)?;
            table.delete(resp)?;
            r.map(Some)
        })?;
        match decision {
            None => {}
            Some(types::ResponseDecision::Continue(changes)) => {
                let mut st = self.exchange.lock();
                if let Some(resp) = st.response.as_mut() {
                    apply(&mut resp.headers, &changes)?;
                }
            }
            Some(types::ResponseDecision::Replace(r)) => {
                let plugin = self.name().to_owned();
                self.exchange.lock().local_response = Some(local(&plugin, r)?);
            }
        }
        Ok(FilterStatus::Continue)
    }
}
