//! The request a policy decides about, and who sent it where.

use crate::pattern::matches_pattern;

/// The address [`Identity`] values get when a test does not give one.
pub const DEFAULT_SOURCE_ADDRESS: &str = "10.0.0.1:40000";

/// Who sent a request, as the waypoint established it from the caller's
/// mesh certificate.
///
/// Only [`address`](Identity::address) is always known: a caller that
/// reached the waypoint in plain text has no identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The SPIFFE identity without `spiffe://`, as Istio writes principals:
    /// `cluster.local/ns/shop/sa/frontend`.
    pub principal: Option<String>,
    /// The namespace in the caller's identity.
    pub namespace: Option<String>,
    /// The service account in the caller's identity.
    pub service_account: Option<String>,
    /// The trust domain in the caller's identity, e.g. `cluster.local`.
    pub trust_domain: Option<String>,
    /// The caller's address, `ip:port` (`[ip]:port` for IPv6).
    pub address: String,
}

impl Identity {
    /// A caller without a mesh identity, at `address`.
    pub fn plaintext(address: impl Into<String>) -> Self {
        Identity {
            principal: None,
            namespace: None,
            service_account: None,
            trust_domain: None,
            address: address.into(),
        }
    }

    /// A mesh workload running as `service_account` in `namespace` of
    /// `trust_domain`, at [`DEFAULT_SOURCE_ADDRESS`].
    ///
    /// ```
    /// use wayplug_sdk::Identity;
    ///
    /// let id = Identity::spiffe("cluster.local", "shop", "frontend");
    /// assert_eq!(id.principal.as_deref(), Some("cluster.local/ns/shop/sa/frontend"));
    /// ```
    pub fn spiffe(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        let (trust_domain, namespace, service_account) = (
            trust_domain.into(),
            namespace.into(),
            service_account.into(),
        );
        Identity {
            principal: Some(format!(
                "{trust_domain}/ns/{namespace}/sa/{service_account}"
            )),
            namespace: Some(namespace),
            service_account: Some(service_account),
            trust_domain: Some(trust_domain),
            address: DEFAULT_SOURCE_ADDRESS.to_string(),
        }
    }

    /// An identity from an Istio principal such as
    /// `cluster.local/ns/shop/sa/frontend`, at [`DEFAULT_SOURCE_ADDRESS`].
    /// A principal of another shape is kept as is, with the other fields
    /// left empty.
    pub fn from_principal(principal: &str) -> Self {
        let parts: Vec<&str> = principal.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Identity::spiffe(*td, *ns, *sa)
            }
            _ => Identity {
                principal: Some(principal.to_string()),
                ..Identity::plaintext(DEFAULT_SOURCE_ADDRESS)
            },
        }
    }

    /// The same identity at another address.
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// Whether the caller presented a mesh identity.
    pub fn is_authenticated(&self) -> bool {
        self.principal.is_some()
    }
}

impl Default for Identity {
    /// A plain-text caller at [`DEFAULT_SOURCE_ADDRESS`].
    fn default() -> Self {
        Identity::plaintext(DEFAULT_SOURCE_ADDRESS)
    }
}

/// The service a request was sent to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The service's hostname, e.g. `reviews.shop.svc.cluster.local`.
    pub service: String,
    /// The service's namespace.
    pub namespace: String,
    /// The service port the caller connected to.
    pub port: u16,
    /// The address the caller connected to, `ip:port`.
    pub address: String,
}

impl Destination {
    /// The service `service` in `namespace` on `port`, reached at
    /// `10.96.0.1:<port>`.
    pub fn new(service: impl Into<String>, namespace: impl Into<String>, port: u16) -> Self {
        Destination {
            service: service.into(),
            namespace: namespace.into(),
            port,
            address: format!("10.96.0.1:{port}"),
        }
    }

    /// The same destination at another address.
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }
}

impl Default for Destination {
    /// `example.default.svc.cluster.local:80` in namespace `default`.
    fn default() -> Self {
        Destination::new("example.default.svc.cluster.local", "default", 80)
    }
}

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Connection {
    /// The caller authenticated with a mesh certificate (mutual TLS).
    pub mtls: bool,
    /// The TLS server name (SNI) the caller asked for, when the waypoint
    /// terminated TLS that carried one; HBONE tunnels carry none.
    pub requested_server_name: Option<String>,
}

/// The head of an HTTP request.
///
/// In a plugin the fields are read from the waypoint on first use, so a
/// policy pays only for what it reads; in native tests the request comes
/// from [`Request::builder`]. Policy code is the same either way.
#[derive(Debug)]
pub struct Request {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Built(Box<RequestData>),
    #[cfg(target_arch = "wasm32")]
    Live(crate::wasm::LiveRequest),
}

#[derive(Debug, Clone)]
struct RequestData {
    method: String,
    scheme: String,
    authority: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    source: Identity,
    destination: Destination,
    connection: Connection,
}

impl Request {
    /// Starts a request for tests: `GET http://<destination>/` from a
    /// plain-text caller, with no headers.
    pub fn builder() -> RequestBuilder {
        RequestBuilder {
            method: "GET".to_string(),
            scheme: "http".to_string(),
            authority: None,
            path: "/".to_string(),
            query: None,
            headers: Vec::new(),
            source: Identity::default(),
            destination: Destination::default(),
            connection: None,
        }
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn live() -> Self {
        Request {
            inner: Inner::Live(crate::wasm::LiveRequest::default()),
        }
    }

    /// The method, upper case as sent: `GET`, `POST`, ...
    pub fn method(&self) -> &str {
        match &self.inner {
            Inner::Built(data) => &data.method,
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.method(),
        }
    }

    /// The scheme, `http` or `https`.
    pub fn scheme(&self) -> &str {
        match &self.inner {
            Inner::Built(data) => &data.scheme,
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.scheme(),
        }
    }

    /// The authority (`host` header), possibly with a port.
    pub fn authority(&self) -> &str {
        match &self.inner {
            Inner::Built(data) => &data.authority,
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.authority(),
        }
    }

    /// The authority without its port, e.g. `reviews.shop.svc.cluster.local`
    /// for `reviews.shop.svc.cluster.local:9080` (`[::1]` stays bracketed).
    pub fn host(&self) -> &str {
        strip_port(self.authority())
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        match &self.inner {
            Inner::Built(data) => &data.path,
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.path(),
        }
    }

    /// The query string without the leading `?`, if any.
    pub fn query(&self) -> Option<&str> {
        match &self.inner {
            Inner::Built(data) => data.query.as_deref(),
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.query(),
        }
    }

    /// The value of header `name`, matched case-insensitively. A header sent
    /// several times yields its values joined with `,`. `host` yields the
    /// [`authority`](Request::authority), as in the waypoint.
    pub fn header(&self, name: &str) -> Option<String> {
        match &self.inner {
            Inner::Built(data) if name.eq_ignore_ascii_case("host") => Some(data.authority.clone()),
            Inner::Built(data) => joined_header(&data.headers, name),
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.header(name),
        }
    }

    /// Every value of header `name` in the order received.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        match &self.inner {
            Inner::Built(data) => header_values(&data.headers, name),
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.header_values(name),
        }
    }

    /// Whether the request has header `name`.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// All headers in the order received, names in lower case. In a plugin
    /// this copies every header: prefer [`header`](Request::header).
    pub fn headers(&self) -> Vec<(String, String)> {
        match &self.inner {
            Inner::Built(data) => data.headers.clone(),
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.headers(),
        }
    }

    /// Who sent the request.
    pub fn source(&self) -> &Identity {
        match &self.inner {
            Inner::Built(data) => &data.source,
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.source(),
        }
    }

    /// Where the request was sent.
    pub fn destination(&self) -> &Destination {
        match &self.inner {
            Inner::Built(data) => &data.destination,
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.destination(),
        }
    }

    /// The connection the request arrived on.
    pub fn connection(&self) -> &Connection {
        match &self.inner {
            Inner::Built(data) => &data.connection,
            #[cfg(target_arch = "wasm32")]
            Inner::Live(live) => live.connection(),
        }
    }

    /// Whether the path matches an Istio-style pattern (`prefix*`,
    /// `*suffix`, `*` or exact); see [`matches_pattern`].
    ///
    /// ```
    /// use wayplug_sdk::Request;
    ///
    /// let req = Request::builder().path("/admin/users?page=2").build();
    /// assert!(req.path_matches("/admin/*"));
    /// assert!(!req.path_matches("/admin"));
    /// ```
    pub fn path_matches(&self, pattern: &str) -> bool {
        matches_pattern(pattern, self.path())
    }
}

/// Builds a [`Request`] for native tests; see [`Request::builder`].
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: String,
    scheme: String,
    authority: Option<String>,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    source: Identity,
    destination: Destination,
    connection: Option<Connection>,
}

impl RequestBuilder {
    /// Sets the method.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// Sets the scheme.
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = scheme.into();
        self
    }

    /// Sets the authority; by default it is the destination's hostname.
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// Sets the path. Anything after a `?` becomes the query.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        match path.split_once('?') {
            Some((path, query)) => {
                self.path = path.to_string();
                self.query = Some(query.to_string());
            }
            None => self.path = path,
        }
        self
    }

    /// Sets the query string (without `?`).
    pub fn query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }

    /// Appends a header; the name is stored in lower case, as the waypoint
    /// presents it.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets who sent the request.
    pub fn source(mut self, source: Identity) -> Self {
        self.source = source;
        self
    }

    /// Sets where the request was sent.
    pub fn destination(mut self, destination: Destination) -> Self {
        self.destination = destination;
        self
    }

    /// Sets the connection facts; by default `mtls` is whether the source
    /// has a mesh identity, and there is no server name.
    pub fn connection(mut self, connection: Connection) -> Self {
        self.connection = Some(connection);
        self
    }

    /// Finishes the request.
    pub fn build(self) -> Request {
        let authority = self
            .authority
            .unwrap_or_else(|| self.destination.service.clone());
        let connection = self.connection.unwrap_or_else(|| Connection {
            mtls: self.source.is_authenticated(),
            requested_server_name: None,
        });
        Request {
            inner: Inner::Built(Box::new(RequestData {
                method: self.method,
                scheme: self.scheme,
                authority,
                path: self.path,
                query: self.query,
                headers: self.headers,
                source: self.source,
                destination: self.destination,
                connection,
            })),
        }
    }
}

/// The head of an HTTP response, seen by a [`ResponseHook`](crate::ResponseHook).
#[derive(Debug)]
pub struct Response {
    inner: ResponseInner,
}

#[derive(Debug)]
enum ResponseInner {
    Built {
        status: u16,
        headers: Vec<(String, String)>,
    },
    #[cfg(target_arch = "wasm32")]
    Live(crate::wasm::LiveResponse),
}

impl Response {
    /// Starts a response for tests: status 200, no headers.
    pub fn builder() -> ResponseBuilder {
        ResponseBuilder {
            status: 200,
            headers: Vec::new(),
        }
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn live() -> Self {
        Response {
            inner: ResponseInner::Live(crate::wasm::LiveResponse::default()),
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        match &self.inner {
            ResponseInner::Built { status, .. } => *status,
            #[cfg(target_arch = "wasm32")]
            ResponseInner::Live(live) => live.status(),
        }
    }

    /// The value of header `name`, matched case-insensitively; repeated
    /// values are joined with `,`.
    pub fn header(&self, name: &str) -> Option<String> {
        match &self.inner {
            ResponseInner::Built { headers, .. } => joined_header(headers, name),
            #[cfg(target_arch = "wasm32")]
            ResponseInner::Live(live) => live.header(name),
        }
    }

    /// Every value of header `name` in the order received.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        match &self.inner {
            ResponseInner::Built { headers, .. } => header_values(headers, name),
            #[cfg(target_arch = "wasm32")]
            ResponseInner::Live(live) => live.header_values(name),
        }
    }

    /// All headers in the order received, names in lower case.
    pub fn headers(&self) -> Vec<(String, String)> {
        match &self.inner {
            ResponseInner::Built { headers, .. } => headers.clone(),
            #[cfg(target_arch = "wasm32")]
            ResponseInner::Live(live) => live.headers(),
        }
    }
}

/// Builds a [`Response`] for native tests; see [`Response::builder`].
#[derive(Debug, Clone)]
pub struct ResponseBuilder {
    status: u16,
    headers: Vec<(String, String)>,
}

impl ResponseBuilder {
    /// Sets the status code.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Appends a header; the name is stored in lower case.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// Finishes the response.
    pub fn build(self) -> Response {
        Response {
            inner: ResponseInner::Built {
                status: self.status,
                headers: self.headers,
            },
        }
    }
}

fn header_values(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

fn joined_header(headers: &[(String, String)], name: &str) -> Option<String> {
    let values = header_values(headers, name);
    if values.is_empty() {
        None
    } else {
        Some(values.join(","))
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_defaults() {
        let req = Request::builder().build();
        assert_eq!(req.method(), "GET");
        assert_eq!(req.scheme(), "http");
        assert_eq!(req.path(), "/");
        assert_eq!(req.query(), None);
        assert_eq!(req.authority(), "example.default.svc.cluster.local");
        assert_eq!(req.destination(), &Destination::default());
        assert!(!req.source().is_authenticated());
        assert_eq!(req.connection(), &Connection::default());
        let meshed = Request::builder()
            .source(Identity::spiffe("cluster.local", "shop", "web"))
            .build();
        assert!(meshed.connection().mtls, "a mesh identity implies mTLS");
    }

    #[test]
    fn path_with_query_is_split() {
        let req = Request::builder().path("/search?q=rust&page=2").build();
        assert_eq!(req.path(), "/search");
        assert_eq!(req.query(), Some("q=rust&page=2"));
    }

    #[test]
    fn headers_are_case_insensitive_and_joined() {
        let req = Request::builder()
            .header("X-User", "alice")
            .header("accept", "text/html")
            .header("x-user", "bob")
            .build();
        assert_eq!(req.header("x-user").as_deref(), Some("alice,bob"));
        assert_eq!(req.header("X-USER").as_deref(), Some("alice,bob"));
        assert_eq!(req.header_values("x-user"), vec!["alice", "bob"]);
        assert_eq!(req.header("missing"), None);
        assert_eq!(
            req.header("Host").as_deref(),
            Some("example.default.svc.cluster.local"),
            "host is the authority"
        );
        assert!(req.has_header("Accept"));
        assert_eq!(
            req.headers()[0],
            ("x-user".to_string(), "alice".to_string())
        );
    }

    #[test]
    fn host_strips_port() {
        let cases = [
            ("a.b.svc:9080", "a.b.svc"),
            ("a.b.svc", "a.b.svc"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("weird:port", "weird:port"),
        ];
        for (authority, host) in cases {
            let req = Request::builder().authority(authority).build();
            assert_eq!(req.host(), host, "authority {authority:?}");
        }
    }

    #[test]
    fn principals_parse() {
        let id = Identity::from_principal("td.example/ns/shop/sa/api");
        assert_eq!(id.trust_domain.as_deref(), Some("td.example"));
        assert_eq!(id.namespace.as_deref(), Some("shop"));
        assert_eq!(id.service_account.as_deref(), Some("api"));
        assert_eq!(id.principal.as_deref(), Some("td.example/ns/shop/sa/api"));

        let odd = Identity::from_principal("not/a/principal");
        assert_eq!(odd.principal.as_deref(), Some("not/a/principal"));
        assert_eq!(odd.namespace, None);
        assert!(odd.is_authenticated());
    }

    #[test]
    fn response_builder() {
        let resp = Response::builder()
            .status(404)
            .header("Set-Cookie", "a=1")
            .header("set-cookie", "b=2")
            .build();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.header_values("set-cookie"), vec!["a=1", "b=2"]);
        assert_eq!(resp.header("SET-COOKIE").as_deref(), Some("a=1,b=2"));
        assert_eq!(resp.headers().len(), 2);
    }
}
