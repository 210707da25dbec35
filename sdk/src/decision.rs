//! What a policy answers: decisions about requests, responses and bodies.

use std::fmt;

/// A header as `(name, value)`.
pub type Header = (String, String);

/// Changes to a set of headers. The waypoint applies them in the order
/// `remove`, `set`, `add`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderChanges {
    /// Headers to replace: existing values of the name are dropped.
    pub set: Vec<Header>,
    /// Headers to append, keeping existing values.
    pub add: Vec<Header>,
    /// Names of headers to remove.
    pub remove: Vec<String>,
}

impl HeaderChanges {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// The value this change set gives header `name` with `set` or `add`
    /// (the first one found, `set` before `add`), compared
    /// case-insensitively. Useful in tests.
    pub fn value_of(&self, name: &str) -> Option<&str> {
        self.set
            .iter()
            .chain(&self.add)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` is removed.
    pub fn removes(&self, name: &str) -> bool {
        self.remove.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Changes to a request that goes on towards its destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestChanges {
    /// Changes to the request headers sent upstream (later plugins see them).
    pub request_headers: HeaderChanges,
    /// Headers to add to the response the caller receives.
    pub response_headers: Vec<Header>,
    /// Changes to the response head the caller receives (set, add, remove),
    /// applied before response hooks run.
    pub response_changes: HeaderChanges,
}

/// A response the waypoint sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// The status code, 200 to 599.
    pub status: u16,
    /// The headers; the waypoint sets `content-length`.
    pub headers: Vec<Header>,
    /// The body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        LocalResponse::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The body as text, if it is UTF-8.
    pub fn body_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// The status of a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedirectStatus {
    /// 301: permanent; clients may switch to GET.
    MovedPermanently,
    /// 302: temporary; clients may switch to GET.
    Found,
    /// 303: fetch the other resource with GET.
    SeeOther,
    /// 307: temporary; method and body are kept.
    TemporaryRedirect,
    /// 308: permanent; method and body are kept.
    PermanentRedirect,
}

impl RedirectStatus {
    /// The numeric status code.
    pub fn code(self) -> u16 {
        match self {
            RedirectStatus::MovedPermanently => 301,
            RedirectStatus::Found => 302,
            RedirectStatus::SeeOther => 303,
            RedirectStatus::TemporaryRedirect => 307,
            RedirectStatus::PermanentRedirect => 308,
        }
    }

    /// The variant for a status code, if it is one of 301, 302, 303, 307,
    /// 308.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            301 => RedirectStatus::MovedPermanently,
            302 => RedirectStatus::Found,
            303 => RedirectStatus::SeeOther,
            307 => RedirectStatus::TemporaryRedirect,
            308 => RedirectStatus::PermanentRedirect,
            _ => return None,
        })
    }
}

/// A redirect answered instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The `location`: an absolute URL or an absolute path.
    pub location: String,
    /// The status.
    pub status: RedirectStatus,
    /// Further response headers.
    pub headers: Vec<Header>,
}

/// One backend of a [`Route`] and its share of traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The service hostname, e.g. `reviews-v2.shop.svc.cluster.local`.
    pub service: String,
    /// The service port; `None` keeps the port the caller used.
    pub port: Option<u16>,
    /// The relative weight; 0 sends no traffic.
    pub weight: u32,
}

impl Backend {
    /// `service` on the caller's port with weight 1.
    pub fn new(service: impl Into<String>) -> Self {
        Backend {
            service: service.into(),
            port: None,
            weight: 1,
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
}

/// Send a request to other backends than its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The backends, chosen by weight.
    pub backends: Vec<Backend>,
    /// Replace the path (keeping the query) when forwarding.
    pub rewrite_path: Option<String>,
    /// Replace the authority when forwarding.
    pub rewrite_host: Option<String>,
    /// Header changes, as for [`Decision::Continue`].
    pub changes: RequestChanges,
}

/// A policy's decision about a request.
///
/// Build one with the constructors and refine it with the `with_*` methods:
///
/// ```
/// use wayplug_sdk::{Decision, RedirectStatus};
///
/// let allow = Decision::allow().with_request_header("x-tenant", "blue");
/// assert_eq!(allow.request_headers().unwrap().value_of("x-tenant"), Some("blue"));
///
/// let deny = Decision::deny(403, "not for you");
/// assert_eq!(deny.status(), Some(403));
///
/// let moved = Decision::redirect("https://example.com/new", RedirectStatus::PermanentRedirect);
/// assert_eq!(moved.status(), Some(308));
///
/// let canary = Decision::route("reviews-v2.shop.svc.cluster.local").with_path_rewrite("/v2");
/// assert!(matches!(canary, Decision::Route(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request go on, with these changes.
    Continue(RequestChanges),
    /// Answer locally; nothing is forwarded and no later plugin runs.
    Respond(LocalResponse),
    /// Answer with a redirect; no later plugin runs.
    Redirect(Redirect),
    /// Send the request to other backends; later plugins still run and the
    /// last route wins.
    Route(Route),
}

impl Decision {
    /// Let the request go on unchanged.
    pub fn allow() -> Self {
        Decision::Continue(RequestChanges::default())
    }

    /// Answer with `status` and a plain-text `body`.
    pub fn deny(status: u16, body: impl Into<String>) -> Self {
        Decision::Respond(LocalResponse::text(status, body))
    }

    /// Answer with `response`.
    pub fn respond(response: LocalResponse) -> Self {
        Decision::Respond(response)
    }

    /// Redirect the caller to `location`.
    pub fn redirect(location: impl Into<String>, status: RedirectStatus) -> Self {
        Decision::Redirect(Redirect {
            location: location.into(),
            status,
            headers: Vec::new(),
        })
    }

    /// Send the request to `service` (a hostname), on the caller's port.
    pub fn route(service: impl Into<String>) -> Self {
        Decision::route_weighted([Backend::new(service)])
    }

    /// Split the request across `backends` by weight.
    ///
    /// ```
    /// use wayplug_sdk::{Backend, Decision};
    ///
    /// let split = Decision::route_weighted([
    ///     Backend::new("reviews-v1.shop.svc.cluster.local").weight(90),
    ///     Backend::new("reviews-v2.shop.svc.cluster.local").weight(10),
    /// ]);
    /// assert!(split.validate().is_ok());
    /// ```
    pub fn route_weighted(backends: impl IntoIterator<Item = Backend>) -> Self {
        Decision::Route(Route {
            backends: backends.into_iter().collect(),
            rewrite_path: None,
            rewrite_host: None,
            changes: RequestChanges::default(),
        })
    }

    fn request_changes_mut(&mut self, what: &str) -> Option<&mut RequestChanges> {
        match self {
            Decision::Continue(changes) => Some(changes),
            Decision::Route(route) => Some(&mut route.changes),
            Decision::Respond(_) | Decision::Redirect(_) => {
                debug_assert!(
                    false,
                    "{what} has no effect on a decision that answers locally: the request is not forwarded"
                );
                None
            }
        }
    }

    /// Sets request header `name` to `value` (replacing existing values)
    /// before forwarding. A decision that answers locally forwards nothing,
    /// so there this does nothing (and debug builds panic to point out the
    /// mistake).
    pub fn with_request_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        if let Some(changes) = self.request_changes_mut("with_request_header") {
            changes
                .request_headers
                .set
                .push((name.into(), value.into()));
        }
        self
    }

    /// Appends request header `name: value` before forwarding, keeping
    /// existing values; like [`with_request_header`](Self::with_request_header)
    /// for decisions that answer locally.
    pub fn append_request_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        if let Some(changes) = self.request_changes_mut("append_request_header") {
            changes
                .request_headers
                .add
                .push((name.into(), value.into()));
        }
        self
    }

    /// Removes request header `name` before forwarding; like
    /// [`with_request_header`](Self::with_request_header) for decisions that
    /// answer locally.
    pub fn remove_request_header(mut self, name: impl Into<String>) -> Self {
        if let Some(changes) = self.request_changes_mut("remove_request_header") {
            changes.request_headers.remove.push(name.into());
        }
        self
    }

    /// Adds header `name: value` to the response the caller receives,
    /// whichever kind of decision this is.
    pub fn with_response_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        let header = (name.into(), value.into());
        match &mut self {
            Decision::Continue(changes) => changes.response_headers.push(header),
            Decision::Route(route) => route.changes.response_headers.push(header),
            Decision::Respond(response) => response.headers.push(header),
            Decision::Redirect(redirect) => redirect.headers.push(header),
        }
        self
    }

    /// Changes the head of the response the caller receives from upstream
    /// (set, add and remove), before response hooks see it. A decision that
    /// answers locally builds its own response, so there this does nothing
    /// (and debug builds panic).
    pub fn with_response_changes(mut self, changes: HeaderChanges) -> Self {
        if let Some(request) = self.request_changes_mut("with_response_changes") {
            request.response_changes = changes;
        }
        self
    }

    /// The changes to the response head, if the request is forwarded.
    pub fn response_changes(&self) -> Option<&HeaderChanges> {
        match self {
            Decision::Continue(changes) => Some(&changes.response_changes),
            Decision::Route(route) => Some(&route.changes.response_changes),
            Decision::Respond(_) | Decision::Redirect(_) => None,
        }
    }

    fn route_mut(&mut self, what: &str) -> Option<&mut Route> {
        match self {
            Decision::Route(route) => Some(route),
            _ => {
                debug_assert!(false, "{what} applies only to Decision::route");
                None
            }
        }
    }

    /// Replaces the path (keeping the query) when a route forwards. Only a
    /// route has a path to rewrite: on other decisions this does nothing
    /// (and debug builds panic).
    pub fn with_path_rewrite(mut self, path: impl Into<String>) -> Self {
        if let Some(route) = self.route_mut("with_path_rewrite") {
            route.rewrite_path = Some(path.into());
        }
        self
    }

    /// Replaces the authority when a route forwards; like
    /// [`with_path_rewrite`](Self::with_path_rewrite) for other decisions.
    pub fn with_host_rewrite(mut self, host: impl Into<String>) -> Self {
        if let Some(route) = self.route_mut("with_host_rewrite") {
            route.rewrite_host = Some(host.into());
        }
        self
    }

    /// Whether the request goes on to its own destination.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Continue(_))
    }

    /// The status the caller gets from this decision, if it answers locally.
    pub fn status(&self) -> Option<u16> {
        match self {
            Decision::Respond(response) => Some(response.status),
            Decision::Redirect(redirect) => Some(redirect.status.code()),
            Decision::Continue(_) | Decision::Route(_) => None,
        }
    }

    /// The local response, if this decision is one.
    pub fn local_response(&self) -> Option<&LocalResponse> {
        match self {
            Decision::Respond(response) => Some(response),
            _ => None,
        }
    }

    /// The request header changes, if the request is forwarded.
    pub fn request_headers(&self) -> Option<&HeaderChanges> {
        match self {
            Decision::Continue(changes) => Some(&changes.request_headers),
            Decision::Route(route) => Some(&route.changes.request_headers),
            Decision::Respond(_) | Decision::Redirect(_) => None,
        }
    }

    /// The headers added to the caller's response.
    pub fn response_headers(&self) -> &[Header] {
        match self {
            Decision::Continue(changes) => &changes.response_headers,
            Decision::Route(route) => &route.changes.response_headers,
            Decision::Respond(response) => &response.headers,
            Decision::Redirect(redirect) => &redirect.headers,
        }
    }

    /// Checks the rules the waypoint enforces; a decision that breaks one
    /// counts as a plugin failure there. [`testing::run`](crate::testing)
    /// checks every decision with it.
    pub fn validate(&self) -> Result<(), InvalidDecision> {
        match self {
            Decision::Continue(changes) => validate_request_changes(changes),
            Decision::Respond(response) => validate_local_response(response),
            Decision::Redirect(redirect) => {
                if redirect.location.is_empty() || !is_valid_header_value(&redirect.location) {
                    return Err(InvalidDecision::new(format!(
                        "redirect location {:?} is empty or has control characters",
                        redirect.location
                    )));
                }
                validate_headers(&redirect.headers)
            }
            Decision::Route(route) => {
                if !route.backends.iter().any(|b| b.weight > 0) {
                    return Err(InvalidDecision::new(
                        "a route needs at least one backend with a positive weight",
                    ));
                }
                if let Some(backend) = route.backends.iter().find(|b| b.service.is_empty()) {
                    return Err(InvalidDecision::new(format!(
                        "route backend {backend:?} has an empty service name"
                    )));
                }
                if let Some(path) = &route.rewrite_path
                    && (!path.starts_with('/')
                        || path.contains('?')
                        || !is_valid_header_value(path))
                {
                    return Err(InvalidDecision::new(format!(
                        "path rewrite {path:?} must start with '/' and have no query or control characters"
                    )));
                }
                if let Some(host) = &route.rewrite_host
                    && (host.is_empty() || !is_valid_header_value(host))
                {
                    return Err(InvalidDecision::new(format!(
                        "host rewrite {host:?} is empty or has control characters"
                    )));
                }
                validate_request_changes(&route.changes)
            }
        }
    }
}

/// A policy's decision about a response, from a
/// [`ResponseHook`](crate::ResponseHook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseDecision {
    /// Send the response on with these header changes.
    Continue(HeaderChanges),
    /// Send this response instead.
    Replace(LocalResponse),
}

impl ResponseDecision {
    /// Send the response on unchanged.
    pub fn unchanged() -> Self {
        ResponseDecision::Continue(HeaderChanges::default())
    }

    /// Send `response` instead.
    pub fn replace(response: LocalResponse) -> Self {
        ResponseDecision::Replace(response)
    }

    fn changes_mut(&mut self, what: &str) -> Option<&mut HeaderChanges> {
        match self {
            ResponseDecision::Continue(changes) => Some(changes),
            ResponseDecision::Replace(_) => {
                debug_assert!(false, "{what} has no effect on a replaced response");
                None
            }
        }
    }

    /// Sets header `name` to `value`, replacing existing values. On a
    /// replacement this does nothing (debug builds panic): put the header
    /// into the [`LocalResponse`] instead.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Some(changes) = self.changes_mut("with_header") {
            changes.set.push((name.into(), value.into()));
        }
        self
    }

    /// Appends header `name: value`; like [`with_header`](Self::with_header)
    /// on a replacement.
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Some(changes) = self.changes_mut("append_header") {
            changes.add.push((name.into(), value.into()));
        }
        self
    }

    /// Removes header `name`; like [`with_header`](Self::with_header) on a
    /// replacement.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        if let Some(changes) = self.changes_mut("remove_header") {
            changes.remove.push(name.into());
        }
        self
    }

    /// Checks the rules the waypoint enforces.
    pub fn validate(&self) -> Result<(), InvalidDecision> {
        match self {
            ResponseDecision::Continue(changes) => validate_header_changes(changes),
            ResponseDecision::Replace(response) => validate_local_response(response),
        }
    }
}

/// A policy's decision about a complete request body, from a
/// [`BodyHook`](crate::BodyHook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyDecision {
    /// Forward the body unchanged.
    Continue,
    /// Forward these bytes instead.
    Replace(Vec<u8>),
    /// Answer locally instead of forwarding.
    Respond(LocalResponse),
}

impl BodyDecision {
    /// Forward the body unchanged.
    pub fn unchanged() -> Self {
        BodyDecision::Continue
    }

    /// Forward `body` instead.
    pub fn replace(body: impl Into<Vec<u8>>) -> Self {
        BodyDecision::Replace(body.into())
    }

    /// Answer with `status` and a plain-text `body`.
    pub fn deny(status: u16, body: impl Into<String>) -> Self {
        BodyDecision::Respond(LocalResponse::text(status, body))
    }

    /// Checks the rules the waypoint enforces.
    pub fn validate(&self) -> Result<(), InvalidDecision> {
        match self {
            BodyDecision::Continue | BodyDecision::Replace(_) => Ok(()),
            BodyDecision::Respond(response) => validate_local_response(response),
        }
    }
}

/// Why the waypoint would refuse a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDecision {
    reason: String,
}

impl InvalidDecision {
    fn new(reason: impl Into<String>) -> Self {
        InvalidDecision {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid decision: {}", self.reason)
    }
}

impl std::error::Error for InvalidDecision {}

fn validate_local_response(response: &LocalResponse) -> Result<(), InvalidDecision> {
    if !(200..=599).contains(&response.status) {
        return Err(InvalidDecision::new(format!(
            "local response status {} is outside 200..=599",
            response.status
        )));
    }
    validate_headers(&response.headers)
}

fn validate_request_changes(changes: &RequestChanges) -> Result<(), InvalidDecision> {
    validate_header_changes(&changes.request_headers)?;
    validate_header_changes(&changes.response_changes)?;
    validate_headers(&changes.response_headers)
}

fn validate_header_changes(changes: &HeaderChanges) -> Result<(), InvalidDecision> {
    validate_headers(&changes.set)?;
    validate_headers(&changes.add)?;
    match changes
        .remove
        .iter()
        .find(|name| !is_valid_header_name(name))
    {
        Some(name) => Err(InvalidDecision::new(format!(
            "cannot remove header {name:?}: not a valid header name"
        ))),
        None => Ok(()),
    }
}

fn validate_headers(headers: &[Header]) -> Result<(), InvalidDecision> {
    for (name, value) in headers {
        if !is_valid_header_name(name) {
            return Err(InvalidDecision::new(format!(
                "header name {name:?} is not a valid HTTP token"
            )));
        }
        if !is_valid_header_value(value) {
            return Err(InvalidDecision::new(format!(
                "header {name:?} has a value with control characters: {value:?}"
            )));
        }
    }
    Ok(())
}

/// An HTTP token (RFC 9110 `tchar`); pseudo-headers such as `:path` are
/// not headers a plugin may set.
fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// No control characters other than horizontal tab (RFC 9110 field values).
fn is_valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_the_right_lists() {
        let d = Decision::allow()
            .with_request_header("x-a", "1")
            .append_request_header("x-b", "2")
            .remove_request_header("x-c")
            .with_response_header("x-d", "4");
        let Decision::Continue(changes) = &d else {
            panic!("expected continue, got {d:?}");
        };
        assert_eq!(
            changes.request_headers.set,
            vec![("x-a".into(), "1".into())]
        );
        assert_eq!(
            changes.request_headers.add,
            vec![("x-b".into(), "2".into())]
        );
        assert_eq!(changes.request_headers.remove, vec!["x-c".to_string()]);
        assert_eq!(changes.response_headers, vec![("x-d".into(), "4".into())]);
        assert!(d.request_headers().unwrap().removes("X-C"));
        assert!(d.validate().is_ok());
    }

    #[test]
    fn deny_is_plain_text() {
        let d = Decision::deny(403, "no");
        let response = d.local_response().unwrap();
        assert_eq!(response.status, 403);
        assert_eq!(response.body_text(), Some("no"));
        assert_eq!(
            d.response_headers(),
            &[(
                "content-type".to_string(),
                "text/plain; charset=utf-8".to_string()
            )]
        );
    }

    #[test]
    fn route_helpers() {
        let d = Decision::route("b.ns.svc.cluster.local")
            .with_path_rewrite("/v2/x")
            .with_host_rewrite("b.example")
            .with_request_header("x-routed", "yes");
        let Decision::Route(route) = &d else {
            panic!("expected route, got {d:?}");
        };
        assert_eq!(route.backends, vec![Backend::new("b.ns.svc.cluster.local")]);
        assert_eq!(route.rewrite_path.as_deref(), Some("/v2/x"));
        assert_eq!(route.rewrite_host.as_deref(), Some("b.example"));
        assert_eq!(
            d.request_headers().unwrap().value_of("x-routed"),
            Some("yes")
        );
        assert!(d.validate().is_ok());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "has no effect on a decision that answers locally")]
    fn request_header_on_deny_panics_in_debug() {
        let _ = Decision::deny(403, "no").with_request_header("x", "y");
    }

    #[test]
    fn redirect_codes_round_trip() {
        for code in [301, 302, 303, 307, 308] {
            assert_eq!(RedirectStatus::from_code(code).unwrap().code(), code);
        }
        assert_eq!(RedirectStatus::from_code(304), None);
    }

    #[test]
    fn validation_rejects_what_the_waypoint_rejects() {
        let bad = [
            (Decision::deny(99, "x"), "outside 200..=599"),
            (Decision::deny(600, "x"), "outside 200..=599"),
            (
                Decision::allow().with_request_header("bad name", "x"),
                "not a valid HTTP token",
            ),
            (
                Decision::allow().with_request_header(":path", "/x"),
                "not a valid HTTP token",
            ),
            (
                Decision::allow().with_request_header("x", "a\r\nb"),
                "control characters",
            ),
            (
                Decision::allow().remove_request_header(""),
                "not a valid header name",
            ),
            (Decision::route_weighted([]), "positive weight"),
            (
                Decision::route_weighted([Backend::new("a").weight(0)]),
                "positive weight",
            ),
            (Decision::route(""), "empty service name"),
            (
                Decision::route("a").with_path_rewrite("v2"),
                "must start with '/'",
            ),
            (Decision::route("a").with_path_rewrite("/a?b"), "no query"),
            (Decision::route("a").with_host_rewrite(""), "host rewrite"),
            (
                Decision::redirect("", RedirectStatus::Found),
                "redirect location",
            ),
        ];
        for (decision, reason) in bad {
            let err = decision
                .validate()
                .expect_err(&format!("{decision:?} should be invalid"));
            assert!(
                err.to_string().contains(reason),
                "{decision:?}: error {err} should mention {reason:?}"
            );
        }
        assert!(
            Decision::route_weighted([Backend::new("a").weight(0), Backend::new("b").weight(1)])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn response_and_body_decisions() {
        let r = ResponseDecision::unchanged()
            .with_header("x-a", "1")
            .append_header("x-b", "2")
            .remove_header("server");
        let ResponseDecision::Continue(changes) = &r else {
            panic!("expected continue");
        };
        assert_eq!(changes.value_of("x-a"), Some("1"));
        assert_eq!(changes.value_of("x-b"), Some("2"));
        assert!(changes.removes("Server"));
        assert!(r.validate().is_ok());
        assert!(
            ResponseDecision::replace(LocalResponse::new(700))
                .validate()
                .is_err()
        );

        assert_eq!(
            BodyDecision::replace("abc"),
            BodyDecision::Replace(b"abc".to_vec())
        );
        assert!(BodyDecision::deny(413, "too big").validate().is_ok());
        assert!(BodyDecision::deny(1, "x").validate().is_err());
    }
}
