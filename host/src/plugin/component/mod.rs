//! Component-model plugins built for the `wayplug:policy` world (wit/).
//!
//! A policy decides about a request in one call (`on-request`) and may opt
//! into response and body hooks by exporting their interfaces; which ones it
//! exports is read once, at load. Every request gets an instance to itself,
//! held only while a hook of this plugin may still run for it, so a crash
//! fails exactly the request that caused it; a failed instance is dropped
//! and replaced, a healthy one serves later requests (a fresh instance pays
//! the plugin's `configure` again, which can cost far more than a request). Instances run
//! under the same sandbox limits as Proxy-Wasm VMs; the request and response
//! reach the guest as resources, so a policy pays only for the fields it
//! reads.

mod bindings;
mod host;

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use wasmtime::component::{Component, InstancePre, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};

use super::filter::{FilterStatus, Hooks, HttpFilter};
use super::pool::{PerRequest, TakeError};
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
    factory: Arc<Factory>,
}

/// The compiled component linked for instantiation, with its exports'
/// indices: one per compiler tier the plugin has run on.
struct Linked {
    pre: InstancePre<ComponentState>,
    exports: Exports,
    /// Compiled by the baseline compiler.
    baseline: bool,
}

impl Linked {
    fn new(
        base: &Linker<ComponentState>,
        component: &Component,
        baseline: bool,
    ) -> Result<Linked, LoadError> {
        let mut linker = base.clone();
        linker
            .define_unknown_imports_as_traps(component)
            .map_err(|e| LoadError::Abi(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::Abi(format!("cannot link the component: {e:#}")))?;
        let request = request_policy::GuestIndices::new(&pre).map_err(|e| {
            LoadError::Abi(format!(
                "not a wayplug:policy@0.1.0 plugin: it does not export request-policy ({e})"
            ))
        })?;
        let exports = Exports {
            request,
            response: response_hooks::GuestIndices::new(&pre).ok(),
            body: body_hooks::GuestIndices::new(&pre).ok(),
        };
        Ok(Linked {
            pre,
            exports,
            baseline,
        })
    }
}

/// What it takes to start an instance, and the instances of this plugin.
struct Factory {
    /// The code new instances start from; replaced once when the plugin
    /// moves from baseline to optimized code.
    linked: ArcSwap<Linked>,
    /// Which hooks the component exports (the same on every tier).
    response_hook: bool,
    body_hook: bool,
    shared: Arc<PluginShared>,
    pool: PerRequest<ComponentInstance>,
}

impl Factory {
    fn start(&self) -> Result<ComponentInstance, PluginFailure> {
        ComponentInstance::start(self.linked.load_full(), &self.shared).map_err(|e| match e {
            LoadError::Abi(m) | LoadError::Start(m) => PluginFailure::Start(m),
        })
    }

    /// Whether `instance` runs the code new instances start from.
    fn is_current(&self, instance: &ComponentInstance) -> bool {
        Arc::ptr_eq(&instance.linked, &self.linked.load())
    }

    /// An instance for one request, which no other request will ever use.
    fn take(&self) -> Result<ComponentInstance, PluginFailure> {
        self.pool.take(|| self.start()).map_err(|e| match e {
            TakeError::Busy { limit } => PluginFailure::Busy(limit),
            TakeError::Start(f) => f,
        })
    }

    /// A request let go of its instance (already dropped): start the next
    /// spare in the background, so no request waits for its `configure`.
    fn released(self: &Arc<Self>) {
        if !self.pool.release() {
            return;
        }
        let factory = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { factory.pool.top_up(|| factory.start()) });
            }
            Err(_) => factory.pool.top_up(|| factory.start()),
        }
    }
}

/// Why a component could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    Abi(String),
    Start(String),
}

impl ComponentPlugin {
    /// Links the component (compiled by the baseline compiler when
    /// `baseline`) and starts one instance (which proves `configure` accepts
    /// the configuration). `spares` instances are kept ready; at most
    /// `per_request_limit` requests hold one at once.
    pub fn new(
        base: &Linker<ComponentState>,
        component: &Component,
        baseline: bool,
        shared: Arc<PluginShared>,
        spares: usize,
        per_request_limit: usize,
    ) -> Result<ComponentPlugin, LoadError> {
        let linked = Arc::new(Linked::new(base, component, baseline)?);
        let (response_hook, body_hook) = (
            linked.exports.response.is_some(),
            linked.exports.body.is_some(),
        );
        let first = ComponentInstance::start(linked.clone(), &shared)?;
        Ok(ComponentPlugin {
            factory: Arc::new(Factory {
                pool: PerRequest::new(first, spares, per_request_limit),
                linked: ArcSwap::new(linked),
                response_hook,
                body_hook,
                shared,
            }),
        })
    }

    /// Whether new instances start from baseline-compiled code.
    pub fn on_baseline(&self) -> bool {
        self.factory.linked.load().baseline
    }

    /// Moves the plugin to `component` (the same bytes compiled by the
    /// optimizing compiler), linked by `base`. Requests under way finish on the old code;
    /// instances go back to the new code as they are released, and ready
    /// spares are replaced now. Runs the guest's `configure` (for the
    /// spares): call it off the request workers.
    pub fn upgrade(
        &self,
        base: &Linker<ComponentState>,
        component: &Component,
    ) -> Result<(), LoadError> {
        let linked = Arc::new(Linked::new(base, component, false)?);
        let factory = &self.factory;
        factory.linked.store(linked);
        if factory.pool.drop_ready() > 0 {
            factory.pool.top_up(|| factory.start());
        }
        Ok(())
    }

    pub fn shared(&self) -> &PluginShared {
        &self.factory.shared
    }

    /// Instances alive now: ready spares and those serving requests.
    pub fn live_instances(&self) -> usize {
        self.factory.pool.live()
    }

    /// Lets go of the instance that proved the plugin loads: an entry
    /// that serves no request costs no guest memory (an authz policy's
    /// instance is most of a namespace's). Its first request starts one.
    pub fn park(&self) {
        self.factory.pool.drop_ready();
    }

    /// Whether the plugin exports the request body hook.
    pub fn has_body_hook(&self) -> bool {
        self.factory.body_hook
    }

    /// Request and response headers always run (the request decision's
    /// response header changes are applied on the response, by the host);
    /// the request body and trailers only with the body hook.
    pub fn hooks(&self) -> Hooks {
        let headers = Hooks::REQUEST_HEADERS.with(Hooks::RESPONSE_HEADERS);
        if self.has_body_hook() {
            headers
                .with(Hooks::REQUEST_BODY)
                .with(Hooks::REQUEST_TRAILERS)
        } else {
            headers
        }
    }

    /// A filter for one request, with an instance of its own. With
    /// `reload_on_failure`, an instance that cannot start is tried once more.
    pub fn new_filter(
        &self,
        exchange: &Arc<Exchange>,
        reload_on_failure: bool,
    ) -> Result<Box<dyn HttpFilter>, PluginFailure> {
        let factory = &self.factory;
        let instance = match factory.take() {
            Err(PluginFailure::Start(_)) if reload_on_failure => factory.take()?,
            other => other?,
        };
        Ok(Box::new(ComponentFilter {
            factory: factory.clone(),
            instance: Some(instance),
            exchange: exchange.clone(),
            response_headers: Vec::new(),
            response_changes: None,
            let_through: false,
            body_done: false,
        }))
    }
}

struct Inner {
    store: Store<ComponentState>,
    /// The instance's request and response handles, pushed once: they
    /// read the exchange of the call in progress, so a call pays no table
    /// insert or removal.
    request_rep: u32,
    response_rep: u32,
    request: request_policy::Guest,
    response: Option<response_hooks::Guest>,
    body: Option<body_hooks::Guest>,
}

/// One instance, owned by the one request it serves at a time.
pub struct ComponentInstance {
    inner: Inner,
    poisoned: bool,
    shared: Arc<PluginShared>,
    /// The code it was started from.
    linked: Arc<Linked>,
}

impl ComponentInstance {
    fn start(linked: Arc<Linked>, shared: &Arc<PluginShared>) -> Result<Self, LoadError> {
        let (pre, exports) = (&linked.pre, &linked.exports);
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
        let table_error = |e: wasmtime::component::ResourceTableError| {
            LoadError::Start(format!("cannot create the request handle: {e}"))
        };
        let request_rep = store
            .data_mut()
            .table
            .push(RequestRef)
            .map_err(table_error)?
            .rep();
        let response_rep = store
            .data_mut()
            .table
            .push(ResponseRef)
            .map_err(table_error)?
            .rep();
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
        Ok(ComponentInstance {
            inner: Inner {
                store,
                request_rep,
                response_rep,
                request,
                response,
                body,
            },
            poisoned: false,
            shared: shared.clone(),
            linked,
        })
    }

    /// One guest call under the deadline and memory limit; any failure
    /// poisons the instance (and so fails only the request that owns it).
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Inner) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        if self.poisoned {
            return Err(PluginFailure::InstanceLost);
        }
        let inner = &mut self.inner;
        inner
            .store
            .set_epoch_deadline(self.shared.limits.deadline_ticks);
        inner.store.data_mut().limiter.refused = false;
        match f(inner) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.poisoned = true;
                let refused = self.inner.store.data().limiter.refused;
                let failure = classify(&e, refused, &self.shared);
                self.shared.report_failure(&failure);
                Err(failure)
            }
        }
    }
}

struct ComponentFilter {
    factory: Arc<Factory>,
    /// This request's own instance; `None` once no hook can run any more.
    instance: Option<ComponentInstance>,
    exchange: Arc<Exchange>,
    /// Headers the request decision asked to add to the response.
    response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Set/add/remove changes the request decision asked for on the
    /// response head (HTTPRoute's ResponseHeaderModifier).
    response_changes: Option<Changes>,
    /// The plugin let the request through (its body hook then runs).
    let_through: bool,
    /// The body hook has run.
    body_done: bool,
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

fn header_changes_empty(c: &types::HeaderChanges) -> bool {
    c.set.is_empty() && c.add.is_empty() && c.remove.is_empty()
}

/// A `continue` that changes nothing on the request or the response.
fn no_changes(c: &types::RequestChanges) -> bool {
    header_changes_empty(&c.request_headers)
        && c.response_headers.is_empty()
        && header_changes_empty(&c.response_changes)
}

/// Header changes checked in full before any is applied, so a decision
/// with one bad header changes nothing.
struct Changes {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Changes {
    fn check(changes: &types::HeaderChanges) -> Result<Changes, PluginFailure> {
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .map(|(k, v)| header(k, v))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Changes {
            // A name that cannot be a header is on no request: nothing to remove.
            remove: changes
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: pairs(&changes.set)?,
            add: pairs(&changes.add)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    fn apply(self, headers: &mut HeaderMap) {
        for n in self.remove {
            headers.remove(n);
        }
        for (k, v) in self.set {
            headers.insert(k, v);
        }
        for (k, v) in self.add {
            headers.append(k, v);
        }
    }
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
        grpc_status: None,
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
        &self.factory.shared.name
    }

    fn has_response_hook(&self) -> bool {
        self.factory.response_hook
    }

    fn has_body_hook(&self) -> bool {
        self.factory.body_hook
    }

    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Inner) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        match self.instance.as_mut() {
            Some(instance) => instance.call(f),
            None => Err(PluginFailure::InstanceLost),
        }
    }

    fn with_request<R>(
        &mut self,
        f: impl FnOnce(&mut Inner, Resource<RequestRef>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        let exchange = self.exchange.clone();
        self.call(|inner| {
            inner.store.data_mut().current = Some(exchange);
            let borrowed = Resource::new_borrow(inner.request_rep);
            let r = f(inner, borrowed);
            inner.store.data_mut().current = None;
            r
        })
    }

    /// Gives the instance back once none of this plugin's hooks can run for
    /// the request any more, so a long response holds no instance.
    fn release_if_done(&mut self) {
        let body_pending = self.let_through && self.has_body_hook() && !self.body_done;
        if !self.has_response_hook() && !body_pending {
            self.release();
        }
    }

    fn release(&mut self) {
        match self.instance.take() {
            // A healthy instance serves the next request: starting a fresh
            // one would pay `configure` again (a policy compiles its rules
            // there), and no request ever shares an instance in use.
            Some(inst) if !inst.poisoned && self.factory.is_current(&inst) => {
                self.factory.pool.give_back(inst)
            }
            // Dropped before the pool hears of it: its engine slot is free
            // for the spare that replaces it. An instance of code the plugin
            // has since moved off goes the same way.
            Some(inst) => {
                drop(inst);
                self.factory.released();
            }
            None => {}
        }
    }

    /// Applies a decision only once all of it is known to be valid: a bad
    /// header leaves no route, header change or response behind.
    fn decide(&mut self, d: types::Decision) -> Result<(), PluginFailure> {
        let (changes, route) = match d {
            types::Decision::Respond(r) => {
                let local = local(self.name(), r)?;
                self.exchange.lock().local_response = Some(local);
                return Ok(());
            }
            types::Decision::Redirect(r) => {
                let local = redirect(self.name(), r)?;
                self.exchange.lock().local_response = Some(local);
                return Ok(());
            }
            // The common answer: nothing to check, copy or lock.
            types::Decision::Continue(changes) if no_changes(&changes) => {
                self.let_through = true;
                return Ok(());
            }
            types::Decision::Continue(changes) => (changes, None),
            types::Decision::Route(route) => {
                let backend = pick(&route.backends)?;
                let choice = RouteChoice {
                    service: backend.service.clone(),
                    port: backend.port,
                    rewrite_path: route.rewrite_path.clone(),
                    rewrite_host: route.rewrite_host.clone(),
                    plugin: self.name().to_owned(),
                };
                (route.changes, Some(choice))
            }
        };
        let response_headers = changes
            .response_headers
            .iter()
            .map(|(k, v)| header(k, v))
            .collect::<Result<Vec<_>, _>>()?;
        let response_changes = if header_changes_empty(&changes.response_changes) {
            None
        } else {
            // Checked now, so a bad name fails the request decision rather
            // than surfacing later on the response.
            Some(Changes::check(&changes.response_changes)?)
        };
        let request = Changes::check(&changes.request_headers)?;
        if !request.is_empty() || route.is_some() {
            let mut st = self.exchange.lock();
            request.apply(&mut st.request.headers);
            if route.is_some() {
                st.route = route;
            }
        }
        self.response_headers.extend(response_headers);
        if response_changes.is_some() {
            self.response_changes = response_changes;
        }
        self.let_through = true;
        Ok(())
    }

    fn body_hook(&mut self, body: Vec<u8>) -> Result<(), PluginFailure> {
        self.body_done = true;
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
                let local = local(self.name(), r)?;
                self.exchange.lock().local_response = Some(local);
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
        if eos && self.let_through && self.has_body_hook() {
            self.body_hook(Vec::new())?;
        }
        self.release_if_done();
        Ok(FilterStatus::Continue)
    }

    fn on_request_body(&mut self, _size: usize, eos: bool) -> Result<FilterStatus, PluginFailure> {
        if !self.let_through || !self.has_body_hook() || self.body_done {
            return Ok(FilterStatus::Continue);
        }
        if !eos {
            // Keep buffering: the hook sees the complete body.
            return Ok(FilterStatus::Pause);
        }
        let body = self.exchange.lock().request_body.to_vec();
        self.body_hook(body)?;
        self.release_if_done();
        Ok(FilterStatus::Continue)
    }

    fn on_request_trailers(&mut self) -> Result<FilterStatus, PluginFailure> {
        // Trailers end a body whose last data frame was not its end: the
        // hook still sees the complete body, or trailers would skip it.
        if self.let_through && self.has_body_hook() && !self.body_done {
            let body = self.exchange.lock().request_body.to_vec();
            self.body_hook(body)?;
            self.release_if_done();
        }
        Ok(FilterStatus::Continue)
    }

    fn on_response_headers(&mut self, _eos: bool) -> Result<FilterStatus, PluginFailure> {
        let edits = !self.response_headers.is_empty() || self.response_changes.is_some();
        if !edits && !self.has_response_hook() {
            // Nothing asked of the response: it is not touched.
            return Ok(FilterStatus::Continue);
        }
        if edits {
            let mut st = self.exchange.lock();
            if let Some(resp) = st.response.as_mut() {
                for (k, v) in &self.response_headers {
                    resp.headers.append(k.clone(), v.clone());
                }
                if let Some(changes) = self.response_changes.take() {
                    changes.apply(&mut resp.headers);
                }
            }
        }
        if !self.has_response_hook() {
            return Ok(FilterStatus::Continue);
        }
        let exchange = self.exchange.clone();
        let decision = self.call(|inner| {
            let Some(g) = &inner.response else {
                return Ok(None);
            };
            let g = g.clone();
            inner.store.data_mut().current = Some(exchange);
            let r = g.call_on_response(
                &mut inner.store,
                Resource::new_borrow(inner.request_rep),
                Resource::new_borrow(inner.response_rep),
            );
            inner.store.data_mut().current = None;
            r.map(Some)
        })?;
        self.release();
        match decision {
            None => {}
            Some(types::ResponseDecision::Continue(changes)) => {
                let changes = Changes::check(&changes)?;
                let mut st = self.exchange.lock();
                if let Some(resp) = st.response.as_mut() {
                    changes.apply(&mut resp.headers);
                }
            }
            Some(types::ResponseDecision::Replace(r)) => {
                let local = local(self.name(), r)?;
                self.exchange.lock().local_response = Some(local);
            }
        }
        Ok(FilterStatus::Continue)
    }

    /// FAIL_RELOAD: the failed instance is dropped and the request goes on
    /// with a fresh one (a spare when one is ready).
    fn reload(&mut self) -> Result<(), PluginFailure> {
        let factory = self.factory.clone();
        if self.instance.take().is_some() {
            self.instance = Some(factory.pool.renew(|| factory.start()).inspect_err(|_| {
                factory.released();
            })?);
        } else {
            self.instance = Some(factory.take()?);
        }
        Ok(())
    }

    fn finish(&mut self) {
        self.release();
    }
}

impl Drop for ComponentFilter {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(set: &[(&str, &str)], remove: &[&str]) -> types::HeaderChanges {
        let pairs = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        types::HeaderChanges {
            set: pairs(set),
            add: Vec::new(),
            remove: remove.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn only_a_continue_that_changes_nothing_skips_the_exchange() {
        let none = || types::RequestChanges {
            request_headers: changes(&[], &[]),
            response_headers: Vec::new(),
            response_changes: changes(&[], &[]),
        };
        assert!(no_changes(&none()));
        let mut c = none();
        c.request_headers = changes(&[("x-user", "alice")], &[]);
        assert!(!no_changes(&c));
        let mut c = none();
        c.response_headers = vec![("x-a".into(), "1".into())];
        assert!(!no_changes(&c));
        let mut c = none();
        c.response_changes = changes(&[], &["server"]);
        assert!(!no_changes(&c));
        let mut c = none();
        c.request_headers.add = vec![("x-b".into(), "2".into())];
        assert!(!no_changes(&c));
    }
}
