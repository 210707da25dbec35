//! AuthorizationPolicy semantics, table-driven from Istio's specification
//! (security/v1beta1/authorization_policy.proto and istio.io's reference):
//! each row is policies, a request and the decision Istio would make.

use serde_json::{Value, json};
use wayplug_authz::{Authz, Protocol};
use wayplug_sdk::{Connection, Destination, Identity, Request, testing};

const FRONTEND: &str = "cluster.local/ns/web/sa/frontend";

/// A policy on the whole waypoint.
fn ap(name: &str, action: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "action": action,
            "rules": rules,
        }
    })
}

fn allow(rules: Value) -> Value {
    ap("allow", "ALLOW", rules)
}

fn deny(rules: Value) -> Value {
    ap("deny", "DENY", rules)
}

fn to(op: Value) -> Value {
    json!([{"to": [{"operation": op}]}])
}

fn from(source: Value) -> Value {
    json!([{"from": [{"source": source}]}])
}

fn when(key: &str, values: &[&str]) -> Value {
    json!([{"when": [{"key": key, "values": values}]}])
}

fn when_not(key: &str, values: &[&str]) -> Value {
    json!([{"when": [{"key": key, "notValues": values}]}])
}

fn configure(config: Value) -> Authz {
    testing::configure::<Authz>(&config.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn decide(authz: &Authz, req: &Request, protocol: Protocol) -> Option<bool> {
    authz.decide(req, protocol).ok().map(|o| o.allowed)
}

/// `GET /` from `web/frontend` at 10.1.2.3 to `api.shop` port 8080.
fn base() -> wayplug_sdk::RequestBuilder {
    Request::builder()
        .authority("api.shop.svc.cluster.local:8080")
        .source(Identity::from_principal(FRONTEND).with_address("10.1.2.3:40000"))
        .destination(
            Destination::new("api.shop.svc.cluster.local", "shop", 8080)
                .with_address("10.96.0.10:8080"),
        )
}

fn get(path: &str) -> Request {
    base().path(path).build()
}

struct Row {
    what: &'static str,
    policies: Vec<Value>,
    req: Request,
    protocol: Protocol,
    allowed: Option<bool>,
}

fn row(what: &'static str, policies: Vec<Value>, req: Request, allowed: bool) -> Row {
    Row {
        what,
        policies,
        req,
        protocol: Protocol::Http,
        allowed: Some(allowed),
    }
}

fn tcp(what: &'static str, policies: Vec<Value>, allowed: bool) -> Row {
    Row {
        what,
        policies,
        req: get("/"),
        protocol: Protocol::Tcp,
        allowed: Some(allowed),
    }
}

fn run(rows: Vec<Row>) {
    for r in rows {
        let authz = configure(json!({"policies": r.policies}));
        assert_eq!(
            decide(&authz, &r.req, r.protocol),
            r.allowed,
            "{}: {} {}",
            r.what,
            r.req.method(),
            r.req.path()
        );
    }
}

#[test]
fn actions_and_their_order() {
    let all = json!([{}]);
    let mut dry = deny(json!([{}]));
    dry["metadata"]["annotations"] = json!({"istio.io/dry-run": "true"});
    let mut dry_allow = allow(to(json!({"paths": ["/nope"]})));
    dry_allow["metadata"]["annotations"] = json!({"istio.io/dry-run": "true"});
    run(vec![
        row("no policy allows", vec![], get("/"), true),
        row(
            "spec: {} is ALLOW nothing",
            vec![json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "nothing", "namespace": "shop"},
                "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "w"}]}
            })],
            get("/"),
            false,
        ),
        row(
            "rules: [{}] matches everything",
            vec![allow(all.clone())],
            get("/x"),
            true,
        ),
        row(
            "DENY rules: [{}] denies everything",
            vec![deny(all.clone())],
            get("/x"),
            false,
        ),
        row(
            "DENY without rules matches nothing",
            vec![deny(json!([]))],
            get("/x"),
            true,
        ),
        row(
            "DENY before ALLOW",
            vec![allow(all.clone()), deny(to(json!({"paths": ["/x"]})))],
            get("/x"),
            false,
        ),
        row(
            "ALLOW present, none matches",
            vec![allow(to(json!({"paths": ["/a"]})))],
            get("/b"),
            false,
        ),
        row(
            "any ALLOW policy matching allows",
            vec![
                allow(to(json!({"paths": ["/a"]}))),
                ap("b", "ALLOW", to(json!({"paths": ["/b"]}))),
            ],
            get("/b"),
            true,
        ),
        row(
            "rules are ORed",
            vec![allow(
                json!([{"to": [{"operation": {"paths": ["/a"]}}]}, {"to": [{"operation": {"paths": ["/b"]}}]}]),
            )],
            get("/b"),
            true,
        ),
        row(
            "from/to/when are ANDed",
            vec![allow(
                json!([{"to": [{"operation": {"paths": ["/a"]}}], "from": [{"source": {"namespaces": ["other"]}}]}]),
            )],
            get("/a"),
            false,
        ),
        row(
            "fields of one operation are ANDed",
            vec![allow(to(json!({"paths": ["/a"], "methods": ["POST"]})))],
            get("/a"),
            false,
        ),
        row(
            "dry-run DENY is not enforced",
            vec![dry.clone()],
            get("/"),
            true,
        ),
        row(
            "dry-run ALLOW is not enforced",
            vec![dry_allow],
            get("/"),
            true,
        ),
        row(
            "AUDIT never denies",
            vec![ap("audit", "AUDIT", all.clone())],
            get("/"),
            true,
        ),
        row(
            "AUDIT never allows",
            vec![
                ap("audit", "AUDIT", all.clone()),
                allow(to(json!({"paths": ["/a"]}))),
            ],
            get("/b"),
            false,
        ),
    ]);
}

#[test]
fn targets() {
    let mut service = deny(json!([{}]));
    service["spec"]["targetRefs"] = json!([{"kind": "Service", "group": "", "name": "api"}]);
    let mut other = deny(json!([{}]));
    other["spec"]["targetRefs"] = json!([{"kind": "Service", "name": "reviews"}]);
    let mut workloads = deny(json!([{}]));
    workloads["spec"]
        .as_object_mut()
        .unwrap()
        .remove("targetRefs");
    run(vec![
        row(
            "Service target matches its service",
            vec![service],
            get("/"),
            false,
        ),
        row(
            "Service target skips other services",
            vec![other],
            get("/"),
            true,
        ),
        row(
            "no targetRefs: not a waypoint policy",
            vec![workloads],
            get("/"),
            true,
        ),
    ]);
}

#[test]
fn sources() {
    let plain = base().source(Identity::plaintext("10.1.2.3:5")).build();
    run(vec![
        row(
            "principal exact",
            vec![allow(from(json!({"principals": [FRONTEND]})))],
            get("/"),
            true,
        ),
        row(
            "principal prefix",
            vec![allow(from(
                json!({"principals": ["cluster.local/ns/web/*"]}),
            ))],
            get("/"),
            true,
        ),
        row(
            "principal suffix",
            vec![allow(from(json!({"principals": ["*/sa/frontend"]})))],
            get("/"),
            true,
        ),
        row(
            "principal other",
            vec![allow(from(
                json!({"principals": ["cluster.local/ns/web/sa/admin"]}),
            ))],
            get("/"),
            false,
        ),
        row(
            "principal * needs an identity",
            vec![allow(from(json!({"principals": ["*"]})))],
            plain,
            false,
        ),
        row(
            "notPrincipals * allows plaintext",
            vec![allow(from(json!({"notPrincipals": ["*"]})))],
            base().source(Identity::plaintext("10.1.2.3:5")).build(),
            true,
        ),
        row(
            "notPrincipals excludes",
            vec![allow(from(json!({"notPrincipals": [FRONTEND]})))],
            get("/"),
            false,
        ),
        row(
            "namespaces",
            vec![allow(from(json!({"namespaces": ["web"]})))],
            get("/"),
            true,
        ),
        row(
            "notNamespaces",
            vec![allow(from(json!({"notNamespaces": ["web"]})))],
            get("/"),
            false,
        ),
        row(
            "serviceAccounts",
            vec![allow(from(json!({"serviceAccounts": ["web/frontend"]})))],
            get("/"),
            true,
        ),
        row(
            "notServiceAccounts",
            vec![allow(from(json!({"notServiceAccounts": ["web/*"]})))],
            get("/"),
            false,
        ),
        row(
            "ipBlocks CIDR",
            vec![allow(from(json!({"ipBlocks": ["10.1.0.0/16"]})))],
            get("/"),
            true,
        ),
        row(
            "ipBlocks single address",
            vec![allow(from(json!({"ipBlocks": ["10.1.2.4"]})))],
            get("/"),
            false,
        ),
        row(
            "notIpBlocks",
            vec![allow(from(json!({"notIpBlocks": ["10.0.0.0/8"]})))],
            get("/"),
            false,
        ),
        row(
            "remoteIpBlocks = source without trusted proxies",
            vec![allow(from(json!({"remoteIpBlocks": ["10.1.2.3"]})))],
            base()
                .path("/")
                .header("x-forwarded-for", "1.1.1.1")
                .build(),
            true,
        ),
        row(
            "notRemoteIpBlocks",
            vec![allow(from(json!({"notRemoteIpBlocks": ["10.1.2.3"]})))],
            get("/"),
            false,
        ),
        row(
            "sources are ORed",
            vec![allow(
                json!([{"from": [{"source": {"namespaces": ["x"]}}, {"source": {"namespaces": ["web"]}}]}]),
            )],
            get("/"),
            true,
        ),
    ]);
}

#[test]
fn remote_ip_from_x_forwarded_for() {
    let rule = from(json!({"remoteIpBlocks": ["1.1.1.1"]}));
    let authz = configure(json!({"policies": [allow(rule)], "numTrustedProxies": 1}));
    let via = |xff: &str| base().path("/").header("x-forwarded-for", xff).build();
    assert_eq!(decide(&authz, &via("1.1.1.1"), Protocol::Http), Some(true));
    assert_eq!(
        decide(&authz, &via("9.9.9.9, 1.1.1.1"), Protocol::Http),
        Some(true)
    );
    assert_eq!(
        decide(&authz, &via("1.1.1.1, 9.9.9.9"), Protocol::Http),
        Some(false)
    );
    assert_eq!(
        decide(&authz, &get("/"), Protocol::Http),
        Some(false),
        "no header: the source"
    );
    let two = configure(
        json!({"policies": [allow(from(json!({"remoteIpBlocks": ["1.1.1.1"]})))], "numTrustedProxies": 2}),
    );
    assert_eq!(
        decide(&two, &via("1.1.1.1, 9.9.9.9"), Protocol::Http),
        Some(true)
    );
}

#[test]
fn operations() {
    let post = |path: &str| base().method("POST").path(path).build();
    run(vec![
        row(
            "hosts are case-insensitive",
            vec![allow(to(json!({"hosts": ["API.shop.svc.cluster.local"]})))],
            get("/"),
            true,
        ),
        row(
            "hosts ignore the port",
            vec![allow(to(json!({"hosts": ["api.shop.svc.cluster.local"]})))],
            get("/"),
            true,
        ),
        row(
            "hosts with a port",
            vec![allow(to(
                json!({"hosts": ["api.shop.svc.cluster.local:8080"]}),
            ))],
            get("/"),
            true,
        ),
        row(
            "hosts wrong port",
            vec![allow(to(
                json!({"hosts": ["api.shop.svc.cluster.local:9090"]}),
            ))],
            get("/"),
            false,
        ),
        row(
            "hosts suffix",
            vec![allow(to(json!({"hosts": ["*.svc.cluster.local"]})))],
            get("/"),
            true,
        ),
        row(
            "notHosts",
            vec![allow(to(json!({"notHosts": ["api.*"]})))],
            get("/"),
            false,
        ),
        row(
            "ports",
            vec![allow(to(json!({"ports": ["8080"]})))],
            get("/"),
            true,
        ),
        row(
            "notPorts",
            vec![allow(to(json!({"notPorts": ["8080"]})))],
            get("/"),
            false,
        ),
        row(
            "methods",
            vec![allow(to(json!({"methods": ["POST"]})))],
            post("/"),
            true,
        ),
        row(
            "methods exact case",
            vec![allow(to(json!({"methods": ["post"]})))],
            post("/"),
            false,
        ),
        row(
            "notMethods",
            vec![allow(to(json!({"notMethods": ["GET"]})))],
            get("/"),
            false,
        ),
        row(
            "paths exact",
            vec![allow(to(json!({"paths": ["/a/b"]})))],
            get("/a/b"),
            true,
        ),
        row(
            "paths exact ignores the query",
            vec![allow(to(json!({"paths": ["/a/b"]})))],
            get("/a/b?x=1"),
            true,
        ),
        row(
            "paths prefix",
            vec![allow(to(json!({"paths": ["/a/*"]})))],
            get("/a/b/c"),
            true,
        ),
        row(
            "paths suffix",
            vec![allow(to(json!({"paths": ["*.png"]})))],
            get("/img/x.png"),
            true,
        ),
        row(
            "paths *",
            vec![allow(to(json!({"paths": ["*"]})))],
            get("/anything"),
            true,
        ),
        row(
            "template {*}",
            vec![allow(to(json!({"paths": ["/users/{*}/profile"]})))],
            get("/users/7/profile"),
            true,
        ),
        row(
            "template {*} is one segment",
            vec![allow(to(json!({"paths": ["/users/{*}/profile"]})))],
            get("/users/7/8/profile"),
            false,
        ),
        row(
            "template {**}",
            vec![allow(to(json!({"paths": ["/files/{**}"]})))],
            get("/files/a/b/c.txt"),
            true,
        ),
        row(
            "notPaths",
            vec![allow(to(json!({"notPaths": ["/admin/*"]})))],
            get("/admin/x"),
            false,
        ),
        row(
            "operations are ORed",
            vec![allow(
                json!([{"to": [{"operation": {"paths": ["/x"]}}, {"operation": {"paths": ["/y"]}}]}]),
            )],
            get("/y"),
            true,
        ),
    ]);
}

#[test]
fn paths_are_normalized_before_matching() {
    let admin = || deny(to(json!({"paths": ["/admin/*"]})));
    run(vec![
        row("dot-dot", vec![admin()], get("/public/../admin/x"), false),
        row("dot", vec![admin()], get("/./admin/x"), false),
        row(
            "encoded dots",
            vec![admin()],
            get("/public/%2e%2e/admin/x"),
            false,
        ),
        row("encoded letters", vec![admin()], get("/%61%64min/x"), false),
        row("backslash", vec![admin()], get("/admin\\x"), false),
        // BASE keeps encoded slashes and double slashes, as Istio's default.
        row("encoded slash kept", vec![admin()], get("/admin%2Fx"), true),
        row("double slash kept", vec![admin()], get("//admin/x"), true),
    ]);
    let merge = configure(json!({"policies": [admin()], "pathNormalization": "MERGE_SLASHES"}));
    assert_eq!(
        decide(&merge, &get("//admin/x"), Protocol::Http),
        Some(false)
    );
    let decode =
        configure(json!({"policies": [admin()], "pathNormalization": "DECODE_AND_MERGE_SLASHES"}));
    assert_eq!(
        decide(&decode, &get("/admin%2Fx"), Protocol::Http),
        Some(false)
    );
    let base = configure(json!({"policies": [admin()]}));
    assert_eq!(
        decide(&base, &get("/a%00"), Protocol::Http),
        None,
        "%00 is refused"
    );
}

#[test]
fn conditions() {
    let hdr = base().path("/").header("x-tenant", "blue").build();
    let sni = base()
        .path("/")
        .connection(Connection {
            mtls: true,
            requested_server_name: Some("api.example".into()),
        })
        .build();
    run(vec![
        row(
            "request.headers",
            vec![allow(when("request.headers[x-tenant]", &["blue"]))],
            hdr,
            true,
        ),
        row(
            "request.headers prefix",
            vec![allow(when("request.headers[X-Tenant]", &["bl*"]))],
            base().path("/").header("x-tenant", "blue").build(),
            true,
        ),
        row(
            "request.headers absent",
            vec![allow(when("request.headers[x-tenant]", &["*"]))],
            get("/"),
            false,
        ),
        row(
            "request.headers notValues absent",
            vec![allow(when_not("request.headers[x-tenant]", &["blue"]))],
            get("/"),
            true,
        ),
        row(
            "source.ip",
            vec![allow(when("source.ip", &["10.1.2.0/24"]))],
            get("/"),
            true,
        ),
        row(
            "remote.ip",
            vec![allow(when("remote.ip", &["10.1.2.3"]))],
            get("/"),
            true,
        ),
        row(
            "source.namespace",
            vec![allow(when("source.namespace", &["web"]))],
            get("/"),
            true,
        ),
        row(
            "source.principal",
            vec![allow(when("source.principal", &["*/sa/frontend"]))],
            get("/"),
            true,
        ),
        row(
            "destination.ip",
            vec![allow(when("destination.ip", &["10.96.0.0/16"]))],
            get("/"),
            true,
        ),
        row(
            "destination.port",
            vec![allow(when("destination.port", &["8080"]))],
            get("/"),
            true,
        ),
        row(
            "destination.port notValues",
            vec![allow(when_not("destination.port", &["8080"]))],
            get("/"),
            false,
        ),
        row(
            "connection.sni absent",
            vec![allow(when("connection.sni", &["*"]))],
            get("/"),
            false,
        ),
        row(
            "connection.sni",
            vec![allow(when("connection.sni", &["*.example"]))],
            sni,
            true,
        ),
        row(
            "cel true",
            vec![allow(when("cel", &["request.url_path.startsWith('/api')"]))],
            get("/api/x"),
            true,
        ),
        row(
            "cel values are ORed",
            vec![allow(when("cel", &["false", "source.namespace == 'web'"]))],
            get("/"),
            true,
        ),
        row(
            "cel notValues",
            vec![allow(when_not("cel", &["request.method == 'GET'"]))],
            get("/"),
            false,
        ),
        row(
            "cel error fails closed in ALLOW",
            vec![allow(when("cel", &["request.headers['x-none'] == 'a'"]))],
            get("/"),
            false,
        ),
        row(
            "cel error fails closed in DENY",
            vec![
                allow(json!([{}])),
                deny(when("cel", &["request.headers['x-none'] == 'a'"])),
            ],
            get("/"),
            false,
        ),
        row(
            "conditions are ANDed",
            vec![allow(
                json!([{"when": [{"key": "source.namespace", "values": ["web"]}, {"key": "destination.port", "values": ["1"]}]}]),
            )],
            get("/"),
            false,
        ),
    ]);
}

#[test]
fn http_only_fields_on_tcp() {
    run(vec![
        tcp(
            "ALLOW with a path never matches TCP",
            vec![allow(to(json!({"paths": ["/"]})))],
            false,
        ),
        tcp(
            "ALLOW with a header condition never matches TCP",
            vec![allow(when("request.headers[x]", &["*"]))],
            false,
        ),
        tcp(
            "ALLOW with ports only matches TCP",
            vec![allow(to(json!({"ports": ["8080"]})))],
            true,
        ),
        tcp(
            "ALLOW with principals matches TCP",
            vec![allow(from(json!({"principals": [FRONTEND]})))],
            true,
        ),
        tcp(
            "DENY drops the HTTP-only field (denies more)",
            vec![deny(to(json!({"methods": ["POST"]})))],
            false,
        ),
        tcp(
            "DENY keeps the TCP fields",
            vec![deny(to(json!({"methods": ["POST"], "ports": ["9999"]})))],
            true,
        ),
        tcp(
            "DENY with a CEL condition on TCP",
            vec![deny(when("cel", &["false"]))],
            false,
        ),
    ]);
}

fn refused(doc: Value) -> String {
    wayplug_authz::parse_policy(&doc).unwrap_err().to_string()
}

#[test]
fn refusals_name_the_field() {
    let mut selector = allow(json!([{}]));
    selector["spec"]["selector"] = json!({"matchLabels": {"app": "api"}});
    let custom = ap("ext", "CUSTOM", json!([{}]));
    let mut foreign = allow(json!([{}]));
    foreign["spec"]["targetRefs"] =
        json!([{"kind": "Service", "name": "api", "namespace": "other"}]);
    let mut deployment = allow(json!([{}]));
    deployment["spec"]["targetRefs"] =
        json!([{"kind": "Deployment", "group": "apps", "name": "api"}]);
    let mut bad_dry_run = allow(json!([{}]));
    bad_dry_run["metadata"]["annotations"] = json!({"istio.io/dry-run": "yes"});
    let rows: Vec<(Value, &str)> = vec![
        (
            selector,
            "AuthorizationPolicy shop/allow: spec.selector: a waypoint does not enforce workload selectors; attach the policy with `targetRefs`",
        ),
        (
            custom,
            "AuthorizationPolicy shop/ext: spec.action: CUSTOM (external authorization) is not supported",
        ),
        (
            allow(from(json!({"requestPrincipals": ["*"]}))),
            "spec.rules[0].from[0].source.requestPrincipals: request principals come from JWTs",
        ),
        (
            allow(from(json!({"notRequestPrincipals": ["*"]}))),
            "spec.rules[0].from[0].source.notRequestPrincipals:",
        ),
        (
            allow(when("request.auth.claims[iss]", &["x"])),
            "spec.rules[0].when[0].key: `request.auth.claims[iss]`: request.auth.* conditions read JWT claims",
        ),
        (
            allow(when("experimental.envoy.filters.a", &["x"])),
            "spec.rules[0].when[0].key: `experimental.envoy.filters.a`: experimental conditions are not supported",
        ),
        (
            allow(when("request.body", &["x"])),
            "spec.rules[0].when[0].key: unknown condition key `request.body`",
        ),
        (
            allow(when("cel", &["request.path =="])),
            "spec.rules[0].when[0].values[0]: CEL expression `request.path ==` does not compile: line 1, column",
        ),
        (
            allow(when("cel", &["request.pathz == '/'"])),
            "spec.rules[0].when[0].values[0]: CEL expression `request.pathz == '/'`: unknown attribute `request.pathz`",
        ),
        (
            allow(json!([{"when": [{"key": "source.ip"}]}])),
            "spec.rules[0].when[0]: a condition needs `values` or `notValues`",
        ),
        (
            allow(to(json!({"pathz": ["/"]}))),
            "spec.rules[0].to[0].operation.pathz: unknown field `pathz`",
        ),
        (
            allow(from(json!({"ipBlocks": ["10.0.0.0/40"]}))),
            "spec.rules[0].from[0].source.ipBlocks[0]: `10.0.0.0/40` is neither an IP address nor a CIDR block",
        ),
        (
            allow(to(json!({"ports": ["http"]}))),
            "spec.rules[0].to[0].operation.ports[0]: `http` is not a port number",
        ),
        (
            allow(to(json!({"paths": ["/a/{**}/b"]}))),
            "spec.rules[0].to[0].operation.paths[0]: path template `/a/{**}/b`: `{**}` must be the last segment",
        ),
        (
            allow(json!([{"from": [{"source": {}}]}])),
            "spec.rules[0].from[0].source: a source must set at least one field",
        ),
        (
            allow(json!([{"to": [{}]}])),
            "spec.rules[0].to[0].operation: `operation` must be set",
        ),
        (
            foreign,
            "spec.targetRefs[0].namespace: a policy can only target resources of its own namespace `shop`",
        ),
        (
            deployment,
            "spec.targetRefs[0].kind: cannot target `Deployment`",
        ),
        (
            bad_dry_run,
            "metadata.annotations[\"istio.io/dry-run\"]: expected \"true\" or \"false\"",
        ),
    ];
    for (doc, expected) in rows {
        let err = refused(doc);
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
    let mut kind = allow(json!([{}]));
    kind["kind"] = json!("HTTPRoute");
    assert_eq!(
        refused(kind),
        "AuthorizationPolicy shop/allow: kind: expected AuthorizationPolicy, found `HTTPRoute`"
    );
    let err = testing::configure::<Authz>(r#"{"policies": [], "extra": 1}"#)
        .err()
        .unwrap();
    assert!(err.contains("unknown field `extra`"), "{err}");
}

#[test]
fn decisions_are_traced() {
    testing::take_decisions();
    let authz = configure(
        json!({"policies": [allow(to(json!({"paths": ["/a"]}))), deny(to(json!({"paths": ["/b"]})))]}),
    );
    let d = testing::run(&authz, &get("/b"));
    assert_eq!(d.status(), Some(403));
    let traced = testing::take_decisions();
    assert_eq!(traced.len(), 1);
    assert_eq!(
        (
            traced[0].policy.as_str(),
            traced[0].rule,
            traced[0].outcome.as_str()
        ),
        ("AuthorizationPolicy/shop/deny", Some(0), "deny")
    );
    let ok = testing::run(&authz, &get("/a"));
    assert!(ok.is_allow());
    assert_eq!(
        testing::take_decisions()[0].policy,
        "AuthorizationPolicy/shop/allow"
    );
    assert_eq!(testing::run(&authz, &get("/c")).status(), Some(403));
}
