//! The plugin side of the component boundary: the generated bindings, the
//! request and response read lazily through them, and the functions that
//! `export_policy!` wires to the component's exports.
//!
//! Invariant: a `LiveRequest` or `LiveResponse` exists only inside the
//! `set` scope of `CURRENT_REQUEST` / `CURRENT_RESPONSE` for one export call,
//! because the resources they read are borrowed for that call only. Policy
//! code receives them as `&Request` / `&Response` and cannot keep them.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::thread::LocalKey;

use crate::decision::{
    Backend, BodyDecision, Decision, HeaderChanges, LocalResponse, Redirect, RedirectStatus,
    RequestChanges, ResponseDecision, Route,
};
use crate::policy::{BodyHook, Policy, ResponseHook, configure_policy};
use crate::request::{Connection, Destination, Identity, Request, Response};

/// Bindings for the types and imports of `wayplug:policy`. The exports are
/// generated in the plugin's own crate by `export_policy!`, for the world
/// that matches its hooks, and reuse these types.
#[allow(unsafe_code, missing_docs, clippy::all)]
// wit-bindgen's generated glue is FFI and needs `unsafe`; this module is the
// only place with unsafe code in the SDK.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "
            package wayplug:sdk;

            world imports {
                import wayplug:policy/types@0.1.0;
                import wayplug:policy/log@0.1.0;
                import wayplug:policy/clock@0.1.0;
                import wayplug:policy/metrics@0.1.0;
                import wayplug:policy/kv@0.1.0;
                import wayplug:policy/config@0.1.0;
                import wayplug:policy/trace@0.1.0;
            }
        ",
        world: "wayplug:sdk/imports",
        generate_all,
    });
}

use bindings::wayplug::policy::types as wit;

scoped_tls::scoped_thread_local!(static CURRENT_REQUEST: wit::Request);
scoped_tls::scoped_thread_local!(static CURRENT_RESPONSE: wit::Response);

/// Request fields fetched from the waypoint on first use and kept for the
/// rest of the call.
#[derive(Debug, Default)]
pub(crate) struct LiveRequest {
    method: OnceCell<String>,
    scheme: OnceCell<String>,
    authority: OnceCell<String>,
    path: OnceCell<String>,
    query: OnceCell<Option<String>>,
    source: OnceCell<Identity>,
    destination: OnceCell<Destination>,
    connection: OnceCell<Connection>,
}

impl LiveRequest {
    pub(crate) fn method(&self) -> &str {
        self.method
            .get_or_init(|| CURRENT_REQUEST.with(|r| r.method()))
    }

    pub(crate) fn scheme(&self) -> &str {
        self.scheme
            .get_or_init(|| CURRENT_REQUEST.with(|r| r.scheme()))
    }

    pub(crate) fn authority(&self) -> &str {
        self.authority
            .get_or_init(|| CURRENT_REQUEST.with(|r| r.authority()))
    }

    pub(crate) fn path(&self) -> &str {
        self.path.get_or_init(|| CURRENT_REQUEST.with(|r| r.path()))
    }

    pub(crate) fn query(&self) -> Option<&str> {
        self.query
            .get_or_init(|| CURRENT_REQUEST.with(|r| r.query()))
            .as_deref()
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        CURRENT_REQUEST.with(|r| r.header(name))
    }

    pub(crate) fn header_values(&self, name: &str) -> Vec<String> {
        CURRENT_REQUEST.with(|r| r.header_values(name))
    }

    pub(crate) fn headers(&self) -> Vec<(String, String)> {
        CURRENT_REQUEST.with(|r| r.headers())
    }

    pub(crate) fn source(&self) -> &Identity {
        self.source.get_or_init(|| {
            let id = CURRENT_REQUEST.with(|r| r.source());
            Identity {
                principal: id.principal,
                namespace: id.namespace,
                service_account: id.service_account,
                trust_domain: id.trust_domain,
                address: id.address,
            }
        })
    }

    pub(crate) fn destination(&self) -> &Destination {
        self.destination.get_or_init(|| {
            let dest = CURRENT_REQUEST.with(|r| r.destination());
            Destination {
                service: dest.service,
                namespace: dest.namespace,
                port: dest.port,
                address: dest.address,
            }
        })
    }
}

impl LiveRequest {
    pub(crate) fn connection(&self) -> &Connection {
        self.connection.get_or_init(|| {
            let conn = CURRENT_REQUEST.with(|r| r.connection());
            Connection {
                mtls: conn.mtls,
                requested_server_name: conn.requested_server_name,
            }
        })
    }
}

/// Response fields fetched from the waypoint on use.
#[derive(Debug, Default)]
pub(crate) struct LiveResponse {
    status: OnceCell<u16>,
}

impl LiveResponse {
    pub(crate) fn status(&self) -> u16 {
        *self
            .status
            .get_or_init(|| CURRENT_RESPONSE.with(|r| r.status()))
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        CURRENT_RESPONSE.with(|r| r.header(name))
    }

    pub(crate) fn header_values(&self, name: &str) -> Vec<String> {
        CURRENT_RESPONSE.with(|r| r.header_values(name))
    }

    pub(crate) fn headers(&self) -> Vec<(String, String)> {
        CURRENT_RESPONSE.with(|r| r.headers())
    }
}

fn wit_header_changes(changes: HeaderChanges) -> wit::HeaderChanges {
    wit::HeaderChanges {
        set: changes.set,
        add: changes.add,
        remove: changes.remove,
    }
}

fn wit_request_changes(changes: RequestChanges) -> wit::RequestChanges {
    wit::RequestChanges {
        request_headers: wit_header_changes(changes.request_headers),
        response_headers: changes.response_headers,
        response_changes: wit_header_changes(changes.response_changes),
    }
}

fn wit_local_response(response: LocalResponse) -> wit::LocalResponse {
    wit::LocalResponse {
        status: response.status,
        headers: response.headers,
        body: response.body,
    }
}

fn wit_redirect(redirect: Redirect) -> wit::Redirect {
    wit::Redirect {
        location: redirect.location,
        status: match redirect.status {
            RedirectStatus::MovedPermanently => wit::RedirectStatus::MovedPermanently,
            RedirectStatus::Found => wit::RedirectStatus::Found,
            RedirectStatus::SeeOther => wit::RedirectStatus::SeeOther,
            RedirectStatus::TemporaryRedirect => wit::RedirectStatus::TemporaryRedirect,
            RedirectStatus::PermanentRedirect => wit::RedirectStatus::PermanentRedirect,
        },
        headers: redirect.headers,
    }
}

fn wit_backend(backend: Backend) -> wit::WeightedBackend {
    wit::WeightedBackend {
        service: backend.service,
        port: backend.port,
        weight: backend.weight,
    }
}

fn wit_route(route: Route) -> wit::Route {
    wit::Route {
        backends: route.backends.into_iter().map(wit_backend).collect(),
        rewrite_path: route.rewrite_path,
        rewrite_host: route.rewrite_host,
        changes: wit_request_changes(route.changes),
    }
}

fn wit_decision(decision: Decision) -> wit::Decision {
    match decision {
        Decision::Continue(changes) => wit::Decision::Continue(wit_request_changes(changes)),
        Decision::Respond(response) => wit::Decision::Respond(wit_local_response(response)),
        Decision::Redirect(redirect) => wit::Decision::Redirect(wit_redirect(redirect)),
        Decision::Route(route) => wit::Decision::Route(wit_route(route)),
    }
}

fn wit_response_decision(decision: ResponseDecision) -> wit::ResponseDecision {
    match decision {
        ResponseDecision::Continue(changes) => {
            wit::ResponseDecision::Continue(wit_header_changes(changes))
        }
        ResponseDecision::Replace(response) => {
            wit::ResponseDecision::Replace(wit_local_response(response))
        }
    }
}

fn wit_body_decision(decision: BodyDecision) -> wit::BodyDecision {
    match decision {
        BodyDecision::Continue => wit::BodyDecision::Continue,
        BodyDecision::Replace(body) => wit::BodyDecision::Replace(body),
        BodyDecision::Respond(response) => wit::BodyDecision::Respond(wit_local_response(response)),
    }
}

/// Where a plugin keeps its configured policy between calls.
pub struct PolicySlot<P>(RefCell<Option<Rc<P>>>);

impl<P> PolicySlot<P> {
    /// An empty slot, filled by `configure`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        PolicySlot(RefCell::new(None))
    }
}

fn current<P>(slot: &'static LocalKey<PolicySlot<P>>) -> Rc<P> {
    // The Rc is cloned out so that no RefCell borrow is held while policy
    // code runs.
    slot.with(|s| s.0.borrow().clone()).unwrap_or_else(|| {
        panic!("wayplug-sdk: the waypoint called the plugin before `configure` succeeded")
    })
}

/// The `configure` export.
pub fn configure<P: Policy>(
    slot: &'static LocalKey<PolicySlot<P>>,
    config: &str,
) -> Result<(), String> {
    let policy = configure_policy::<P>(config)?;
    slot.with(|s| *s.0.borrow_mut() = Some(Rc::new(policy)));
    Ok(())
}

/// The `on-request` export.
pub fn on_request<P: Policy>(
    slot: &'static LocalKey<PolicySlot<P>>,
    req: &wit::Request,
) -> wit::Decision {
    let policy = current(slot);
    let decision = CURRENT_REQUEST.set(req, || policy.on_request(&Request::live()));
    wit_decision(decision)
}

/// The `on-response` export.
pub fn on_response<P: ResponseHook>(
    slot: &'static LocalKey<PolicySlot<P>>,
    req: &wit::Request,
    resp: &wit::Response,
) -> wit::ResponseDecision {
    let policy = current(slot);
    let decision = CURRENT_REQUEST.set(req, || {
        CURRENT_RESPONSE.set(resp, || {
            policy.on_response(&Request::live(), &Response::live())
        })
    });
    wit_response_decision(decision)
}

/// The `on-request-body` export.
pub fn on_request_body<P: BodyHook>(
    slot: &'static LocalKey<PolicySlot<P>>,
    req: &wit::Request,
    body: Vec<u8>,
) -> wit::BodyDecision {
    let policy = current(slot);
    let decision = CURRENT_REQUEST.set(req, || policy.on_request_body(&Request::live(), &body));
    wit_body_decision(decision)
}
