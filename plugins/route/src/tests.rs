//! Table-driven tests written from the Gateway API HTTPRoute specification
//! (apis/v1/httproute_types.go): each row is a request and what the waypoint
//! must do with it.

use serde_json::{Value, json};
use wayplug_sdk::{Decision, Destination, Request, testing};

use super::*;

const NS: &str = "shop";

fn route_doc(name: &str, created: Option<&str>, rules: Value) -> Value {
    let mut metadata = json!({"name": name, "namespace": NS});
    if let Some(ts) = created {
        metadata["creationTimestamp"] = json!(ts);
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata,
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": rules,
        }
    })
}

fn services() -> Value {
    let svc = |name: &str| json!({"namespace": NS, "name": name, "hostname": format!("{name}.{NS}.svc.cluster.local"), "ports": [80, 8080]});
    json!([svc("web"), svc("a"), svc("b"), svc("c"), svc("d")])
}

fn policy(routes: Vec<Value>) -> RoutePolicy {
    let config = json!({"routes": routes, "services": services()});
    testing::configure::<RoutePolicy>(&config.to_string()).expect("routes configure")
}

fn to(backend: &str) -> Value {
    json!([{"name": backend, "port": 80}])
}

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    let mut b = Request::builder()
        .method(method)
        .path(path)
        .destination(Destination::new("web.shop.svc.cluster.local", NS, 80));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.build()
}

/// A short description of what the waypoint does with a decision.
fn outcome(d: &Decision) -> String {
    match d {
        Decision::Continue(_) => "continue".into(),
        Decision::Route(r) => {
            let b = &r.backends[0];
            let host = b.service.split('.').next().unwrap_or_default();
            format!("{host}:{}", b.port.unwrap_or(0))
        }
        Decision::Respond(r) => format!("{} {}", r.status, r.body_text().unwrap_or("").trim()),
        Decision::Redirect(r) => format!("{} {}", r.status.code(), r.location),
    }
}

fn check(p: &RoutePolicy, rows: &[(Request, &str)]) {
    for (r, expected) in rows {
        let got = outcome(&p.table().decide(r, 0));
        assert_eq!(
            &got,
            expected,
            "{} {}?{:?} {:?}",
            r.method(),
            r.path(),
            r.query(),
            r.headers()
        );
    }
}

#[test]
fn path_matches() {
    let p = policy(vec![route_doc(
        "paths",
        None,
        json!([
            {"matches": [{"path": {"type": "Exact", "value": "/exact"}}], "backendRefs": to("a")},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/abc/"}}], "backendRefs": to("b")},
            {"matches": [{"path": {"type": "RegularExpression", "value": "/re/[0-9]+"}}], "backendRefs": to("c")},
            {"matches": [{"path": {"type": "RegularExpression", "value": "/digits/\\d+"}}], "backendRefs": to("d")},
        ]),
    )]);
    check(
        &p,
        &[
            (req("GET", "/exact", &[]), "a:80"),
            (
                req("GET", "/exact/", &[]),
                "404 no HTTPRoute rule for Service shop/web matches GET /exact/",
            ),
            (
                req("GET", "/exactly", &[]),
                "404 no HTTPRoute rule for Service shop/web matches GET /exactly",
            ),
            // PathPrefix: whole segments, trailing slash of the value ignored.
            (req("GET", "/abc", &[]), "b:80"),
            (req("GET", "/abc/", &[]), "b:80"),
            (req("GET", "/abc/def", &[]), "b:80"),
            (
                req("GET", "/abcd", &[]),
                "404 no HTTPRoute rule for Service shop/web matches GET /abcd",
            ),
            (
                req("GET", "/ABC", &[]),
                "404 no HTTPRoute rule for Service shop/web matches GET /ABC",
            ),
            // The query is not part of the path.
            (req("GET", "/abc?x=1", &[]), "b:80"),
            // Regular expressions match the whole path.
            (req("GET", "/re/42", &[]), "c:80"),
            (req("GET", "/digits/42", &[]), "d:80"),
            (
                req("GET", "/re/42/x", &[]),
                "404 no HTTPRoute rule for Service shop/web matches GET /re/42/x",
            ),
            (
                req("GET", "/x/re/42", &[]),
                "404 no HTTPRoute rule for Service shop/web matches GET /x/re/42",
            ),
        ],
    );
}

#[test]
fn header_query_and_method_matches() {
    let p = policy(vec![route_doc(
        "conds",
        None,
        json!([
            {"matches": [{"headers": [{"name": "X-Env", "value": "canary"}]}], "backendRefs": to("a")},
            {"matches": [{"headers": [{"type": "RegularExpression", "name": "x-user", "value": "adm.*"}]}], "backendRefs": to("b")},
            {"matches": [{"queryParams": [{"name": "Tier", "value": "gold"}]}], "backendRefs": to("c")},
            {"matches": [{"method": "POST", "path": {"type": "PathPrefix", "value": "/submit"}}], "backendRefs": to("d")},
        ]),
    )]);
    let none = "404 no HTTPRoute rule for Service shop/web matches";
    check(
        &p,
        &[
            // Header names are case-insensitive, values exact.
            (req("GET", "/", &[("x-env", "canary")]), "a:80"),
            (req("GET", "/", &[("X-ENV", "canary")]), "a:80"),
            (
                req("GET", "/", &[("x-env", "Canary")]),
                &format!("{none} GET /"),
            ),
            (req("GET", "/", &[("x-user", "admin")]), "b:80"),
            (
                req("GET", "/", &[("x-user", "badmin")]),
                &format!("{none} GET /"),
            ),
            // Query parameter names are case-sensitive; the first value counts.
            (req("GET", "/?Tier=gold", &[]), "c:80"),
            (req("GET", "/?tier=gold", &[]), &format!("{none} GET /")),
            (
                req("GET", "/?Tier=silver&Tier=gold", &[]),
                &format!("{none} GET /"),
            ),
            (req("GET", "/?a=1&Tier=gold", &[]), "c:80"),
            (req("POST", "/submit", &[]), "d:80"),
            (req("GET", "/submit", &[]), &format!("{none} GET /submit")),
        ],
    );
}

#[test]
fn and_inside_a_match_or_across_matches() {
    let p = policy(vec![route_doc(
        "logic",
        None,
        json!([
            {"matches": [
                {"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-v", "value": "2"}], "method": "GET"},
                {"path": {"type": "Exact", "value": "/v2"}},
            ], "backendRefs": to("a")},
        ]),
    )]);
    let none = "404 no HTTPRoute rule for Service shop/web matches";
    check(
        &p,
        &[
            (req("GET", "/api/x", &[("x-v", "2")]), "a:80"),
            (req("GET", "/api/x", &[]), &format!("{none} GET /api/x")),
            (
                req("PUT", "/api/x", &[("x-v", "2")]),
                &format!("{none} PUT /api/x"),
            ),
            (req("DELETE", "/v2", &[]), "a:80"),
        ],
    );
}

#[test]
fn precedence_within_and_across_routes() {
    let p = policy(vec![
        route_doc(
            "young",
            Some("2024-05-01T00:00:00Z"),
            json!([
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": to("a")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/shop/cart"}}], "backendRefs": to("b")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/m"}, "headers": [{"name": "x-a", "value": "1"}]}], "backendRefs": to("a")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/q"}, "queryParams": [{"name": "a", "value": "1"}]}], "backendRefs": to("a")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/tie"}}], "backendRefs": to("a")},
            ]),
        ),
        route_doc(
            "old",
            Some("2024-01-01T00:00:00Z"),
            json!([
                {"matches": [{"path": {"type": "PathPrefix", "value": "/shop"}}], "backendRefs": to("c")},
                {"matches": [{"path": {"type": "Exact", "value": "/shop/cart/item"}}], "backendRefs": to("d")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/m"}, "method": "GET"}], "backendRefs": to("c")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/m"}, "headers": [{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "1"}]}], "backendRefs": to("d")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/q"}, "queryParams": [{"name": "a", "value": "1"}, {"name": "b", "value": "1"}]}], "backendRefs": to("c")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/tie"}}], "backendRefs": to("c")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/tie"}}], "backendRefs": to("d")},
            ]),
        ),
    ]);
    check(
        &p,
        &[
            // Exact beats any prefix.
            (req("GET", "/shop/cart/item", &[]), "d:80"),
            // Longest prefix wins, whatever the route's age.
            (req("GET", "/shop/cart/x", &[]), "b:80"),
            (req("GET", "/shop/x", &[]), "c:80"),
            (req("GET", "/other", &[]), "a:80"),
            // Same prefix: a method match beats header matches.
            (req("GET", "/m", &[("x-a", "1"), ("x-b", "1")]), "c:80"),
            // ... then more header matches win.
            (req("POST", "/m", &[("x-a", "1"), ("x-b", "1")]), "d:80"),
            (req("POST", "/m", &[("x-a", "1")]), "a:80"),
            // ... then more query matches.
            (req("GET", "/q?a=1&b=1", &[]), "c:80"),
            (req("GET", "/q?a=1", &[]), "a:80"),
            // A full tie: the older route, then its first rule.
            (req("GET", "/tie", &[]), "c:80"),
        ],
    );
}

#[test]
fn ties_without_timestamps_go_by_document_order_then_name() {
    let rules = || json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/x"}}], "backendRefs": to("a")}]);
    let mut second = rules();
    second[0]["backendRefs"] = to("b");
    let p = policy(vec![
        route_doc("zz", None, rules()),
        route_doc("aa", None, second.clone()),
    ]);
    check(&p, &[(req("GET", "/x", &[]), "a:80")]);
    // Same timestamp: namespace/name decides.
    let ts = Some("2024-01-01T00:00:00Z");
    let p = policy(vec![
        route_doc("zz", ts, rules()),
        route_doc("aa", ts, second),
    ]);
    check(&p, &[(req("GET", "/x", &[]), "b:80")]);
}

#[test]
fn unattached_services_are_not_routed_and_ports_scope_parents() {
    let mut doc = route_doc("p", None, json!([{"backendRefs": to("a")}]));
    doc["spec"]["parentRefs"][0]["port"] = json!(8080);
    let p = policy(vec![doc]);
    // Port 80 of web has no route: the request goes on untouched.
    check(&p, &[(req("GET", "/", &[]), "continue")]);
    let on_8080 = Request::builder()
        .destination(Destination::new("web.shop.svc.cluster.local", NS, 8080))
        .build();
    check(&p, &[(on_8080, "a:80")]);
    let other = Request::builder()
        .destination(Destination::new("a.shop.svc.cluster.local", NS, 80))
        .build();
    check(&p, &[(other, "continue")]);
}

#[test]
fn header_modifiers() {
    let p = policy(vec![route_doc(
        "mods",
        None,
        json!([{
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Set", "value": "s"}],
                    "add": [{"name": "x-add", "value": "two"}],
                    "remove": ["x-drop"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "set": [{"name": "x-resp", "value": "r"}],
                    "add": [{"name": "x-more", "value": "m"}],
                    "remove": ["server"]}},
            ],
            "backendRefs": to("a"),
        }]),
    )]);
    let d = p
        .table()
        .decide(&req("GET", "/", &[("x-add", "one"), ("x-drop", "1")]), 0);
    let h = d.request_headers().expect("forwarded");
    assert_eq!(h.value_of("x-set"), Some("s"));
    // `add` appends to the existing value with a comma.
    assert_eq!(h.value_of("x-add"), Some("one,two"));
    assert!(h.removes("x-drop"));
    let r = d.response_changes().expect("forwarded");
    assert_eq!(r.set, vec![("x-resp".to_string(), "r".to_string())]);
    assert_eq!(r.add, vec![("x-more".to_string(), "m".to_string())]);
    assert_eq!(r.remove, vec!["server".to_string()]);
    // Without an existing value `add` adds.
    let d = p.table().decide(&req("GET", "/", &[]), 0);
    assert_eq!(
        d.request_headers().unwrap().add,
        vec![("x-add".to_string(), "two".to_string())]
    );
    testing::run(&p, &req("GET", "/", &[("x-add", "one")]));
}

#[test]
fn redirects() {
    let p = policy(vec![route_doc(
        "redir",
        None,
        json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
            {"matches": [{"path": {"type": "Exact", "value": "/secure"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]},
            {"matches": [{"path": {"type": "Exact", "value": "/elsewhere"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "other.example", "port": 8443, "path": {"type": "ReplaceFullPath", "replaceFullPath": "/landing"}}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/strip"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]},
        ]),
    )]);
    let host = |path: &str| {
        Request::builder()
            .path(path)
            .authority("web.shop.svc.cluster.local:80")
            .destination(Destination::new("web.shop.svc.cluster.local", NS, 80))
            .build()
    };
    check(
        &p,
        &[
            // Default 302, same scheme, host without port, the query kept.
            (
                host("/old/x?q=1"),
                "302 http://web.shop.svc.cluster.local/new/x?q=1",
            ),
            (host("/old"), "302 http://web.shop.svc.cluster.local/new"),
            // A new scheme takes its well-known port, left out of the URL.
            (
                host("/secure"),
                "301 https://web.shop.svc.cluster.local/secure",
            ),
            (host("/elsewhere"), "302 http://other.example:8443/landing"),
            (
                host("/strip/a/b"),
                "302 http://web.shop.svc.cluster.local/a/b",
            ),
            (host("/strip"), "302 http://web.shop.svc.cluster.local/"),
        ],
    );
}

#[test]
fn url_rewrites() {
    let p = policy(vec![route_doc(
        "rw",
        None,
        json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}],
             "backendRefs": to("a")},
            {"matches": [{"path": {"type": "Exact", "value": "/full"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/replaced"}}}],
             "backendRefs": to("b")},
        ]),
    )]);
    let rewrite = |path: &str| match p.table().decide(&req("GET", path, &[]), 0) {
        Decision::Route(r) => (r.rewrite_path, r.rewrite_host),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        rewrite("/v1/items"),
        (Some("/v2/items".into()), Some("api.internal".into()))
    );
    assert_eq!(
        rewrite("/v1"),
        (Some("/v2".into()), Some("api.internal".into()))
    );
    assert_eq!(rewrite("/full"), (Some("/replaced".into()), None));
}

#[test]
fn weights_and_invalid_backends() {
    let p = policy(vec![route_doc(
        "w",
        None,
        json!([
            {"matches": [{"path": {"type": "Exact", "value": "/split"}}],
             "backendRefs": [{"name": "a", "port": 80, "weight": 3}, {"name": "b", "port": 8080, "weight": 1}, {"name": "c", "port": 80, "weight": 0}]},
            {"matches": [{"path": {"type": "Exact", "value": "/zero"}}],
             "backendRefs": [{"name": "a", "port": 80, "weight": 0}]},
            {"matches": [{"path": {"type": "Exact", "value": "/none"}}]},
            {"matches": [{"path": {"type": "Exact", "value": "/ghost"}}],
             "backendRefs": [{"name": "ghost", "port": 80}]},
            {"matches": [{"path": {"type": "Exact", "value": "/kind"}}],
             "backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "a"}]},
            {"matches": [{"path": {"type": "Exact", "value": "/half"}}],
             "backendRefs": [{"name": "a", "port": 80}, {"name": "ghost", "port": 80}]},
        ]),
    )]);
    let at = |path: &str, roll: u64| outcome(&p.table().decide(&req("GET", path, &[]), roll));
    // Weight 3:1:0 over rolls 0..4: three to a, one to b, none to c.
    let picks: Vec<String> = (0..4).map(|r| at("/split", r)).collect();
    assert_eq!(picks, ["a:80", "a:80", "a:80", "b:8080"]);
    assert_eq!(
        at("/zero", 0),
        "500 every backendRef of rule 1 of HTTPRoute shop/w has weight 0"
    );
    assert_eq!(
        at("/none", 0),
        "500 rule 2 of HTTPRoute shop/w has no backendRefs"
    );
    assert_eq!(
        at("/ghost", 0),
        "500 rule 3 of HTTPRoute shop/w: backend Service shop/ghost is not known to the waypoint"
    );
    assert!(at("/kind", 0).starts_with("500 rule 4 of HTTPRoute shop/w: backendRef spec.rules[4].backendRefs[0] is a example.com/Bucket"), "{}", at("/kind", 0));
    // An invalid backend gets its share of traffic as 500s.
    assert_eq!(at("/half", 0), "a:80");
    assert!(at("/half", 1).starts_with("500 "));
}

#[test]
fn without_a_service_list_backends_use_cluster_names() {
    let config = json!({"routes": [route_doc("n", None, json!([{"backendRefs": to("b")}]))]});
    let p: RoutePolicy = testing::configure(&config.to_string()).unwrap();
    match p.table().decide(&req("GET", "/", &[]), 0) {
        Decision::Route(r) => assert_eq!(r.backends[0].service, "b.shop.svc.cluster.local"),
        other => panic!("{other:?}"),
    }
}

/// Each row: a change to a valid route and the error it must give.
#[test]
fn refused_documents_name_the_field() {
    let base = || route_doc("bad", None, json!([{"backendRefs": to("a")}]));
    type Edit = fn(&mut Value);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |d| d["spec"]["rules"][0]["matches"] = json!([{"pathz": {}}]),
            "HTTPRoute shop/bad: field `spec.rules[0].matches[0].pathz`: unknown field `pathz`",
        ),
        (
            |d| {
                d["spec"]["rules"][0]["matches"] = json!([{"path": {"type": "Glob", "value": "/"}}])
            },
            "HTTPRoute shop/bad: field `spec.rules[0].matches[0].path.type`: `Glob` is not one of Exact, PathPrefix, RegularExpression",
        ),
        (
            |d| {
                d["spec"]["rules"][0]["matches"] =
                    json!([{"path": {"type": "RegularExpression", "value": "(["}}])
            },
            "HTTPRoute shop/bad: field `spec.rules[0].matches[0].path.value`: invalid regular expression `([`",
        ),
        (
            // RE2's syntax without Unicode property classes: refused, not guessed.
            |d| d["spec"]["rules"][0]["matches"] = json!([{"headers": [{"type": "RegularExpression", "name": "x-user", "value": "\\p{L}+"}]}]),
            "HTTPRoute shop/bad: field `spec.rules[0].matches[0].headers[0].value`: invalid regular expression `\\p{L}+`",
        ),
        (
            |d| d["spec"]["rules"][0]["matches"] = json!([{"path": {"value": "nope"}}]),
            "HTTPRoute shop/bad: field `spec.rules[0].matches[0].path.value`: must start with `/`",
        ),
        (
            |d| d["spec"]["rules"][0]["matches"] = json!([{"method": "FETCH"}]),
            "HTTPRoute shop/bad: field `spec.rules[0].matches[0].method`: `FETCH` is not one of",
        ),
        (
            |d| d["spec"]["rules"][0]["timeouts"] = json!({"request": "1s"}),
            "HTTPRoute shop/bad: field `spec.rules[0].timeouts`: request timeouts are not supported by the waypoint yet",
        ),
        (
            |d| d["spec"]["rules"][0]["filters"] = json!([{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "a", "port": 80}}}]),
            "HTTPRoute shop/bad: field `spec.rules[0].filters[0].type`: the RequestMirror filter is not supported by the waypoint",
        ),
        (
            |d| {
                d["spec"]["rules"][0]["filters"] =
                    json!([{"type": "URLRewrite", "requestHeaderModifier": {}}])
            },
            "HTTPRoute shop/bad: field `spec.rules[0].filters[0].type`: a filter of type `URLRewrite` must set exactly its own field; it sets [RequestHeaderModifier]",
        ),
        (
            |d| {
                d["spec"]["rules"][0]["filters"] = json!([
            {"type": "URLRewrite", "urlRewrite": {"hostname": "x"}},
            {"type": "RequestRedirect", "requestRedirect": {}}])
            },
            "HTTPRoute shop/bad: field `spec.rules[0].filters[1]`: RequestRedirect and URLRewrite cannot be used in the same rule",
        ),
        (
            |d| {
                d["spec"]["rules"][0]["matches"] =
                    json!([{"path": {"type": "Exact", "value": "/x"}}]);
                d["spec"]["rules"][0]["filters"] = json!([{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/y"}}}]);
            },
            "HTTPRoute shop/bad: field `spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch`: ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
        ),
        (
            |d| {
                d["spec"]["rules"][0]["filters"] =
                    json!([{"type": "RequestRedirect", "requestRedirect": {"statusCode": 305}}])
            },
            "HTTPRoute shop/bad: field `spec.rules[0].filters[0].requestRedirect.statusCode`: 305 is not one of",
        ),
        (
            |d| d["spec"]["parentRefs"] = json!([{"name": "gw"}]),
            "HTTPRoute shop/bad: field `spec.parentRefs[0].kind`: a waypoint applies routes whose parent is a Service",
        ),
        (
            |d| d["spec"]["parentRefs"] = json!([]),
            "HTTPRoute shop/bad: field `spec.parentRefs`: the route attaches to nothing",
        ),
        (
            |d| d["spec"]["hostnames"] = json!(["web.example"]),
            "HTTPRoute shop/bad: field `spec.hostnames`: hostnames select routes on a Gateway listener",
        ),
        (
            |d| {
                d["spec"]["rules"][0]["backendRefs"][0]["filters"] =
                    json!([{"type": "RequestHeaderModifier"}])
            },
            "HTTPRoute shop/bad: field `spec.rules[0].backendRefs[0].filters`: per-backend filters are not supported",
        ),
        (
            |d| d["apiVersion"] = json!("gateway.networking.k8s.io/v1alpha2"),
            "HTTPRoute shop/bad: field `apiVersion`: `gateway.networking.k8s.io/v1alpha2` is not supported",
        ),
        (
            |d| d["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(-1),
            "HTTPRoute shop/bad: field `spec.rules[0].backendRefs[0].weight`: invalid value: integer `-1`",
        ),
    ];
    for (edit, expected) in cases {
        let mut doc = base();
        edit(&mut doc);
        let err = parse_route(&doc).unwrap_err().to_string();
        assert!(
            err.starts_with(expected),
            "got:\n  {err}\nexpected it to start with:\n  {expected}"
        );
    }
    assert!(parse_route(&base()).is_ok());
}

#[test]
fn defaults_fill_in_a_minimal_route() {
    let doc = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "min", "namespace": NS, "labels": {"app": "x"}, "uid": "1"},
        "spec": {"parentRefs": [{"kind": "Service", "name": "web"}], "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]},
        "status": {"parents": []},
    });
    let route = parse_route(&doc).unwrap();
    assert!(matches!(&route.rules[0].matches[0].path, PathMatch::Prefix(p) if p.is_empty()));
    assert_eq!(route.rules[0].matches.len(), 1);
    match &route.rules[0].action {
        Action::Forward { backends, .. } => assert_eq!(backends[0].weight, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_routes_are_refused() {
    let doc = route_doc("dup", None, json!([{"backendRefs": to("a")}]));
    let config = json!({"routes": [doc.clone(), doc]});
    let err = testing::configure::<RoutePolicy>(&config.to_string())
        .err()
        .unwrap();
    assert_eq!(err, "routes[1]: HTTPRoute shop/dup appears twice");
}

#[test]
fn the_policy_rolls_differ_between_requests() {
    let p = policy(vec![route_doc(
        "w",
        None,
        json!([{"backendRefs": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}]),
    )]);
    let picks: std::collections::BTreeSet<String> = (0..64)
        .map(|_| outcome(&testing::run(&p, &req("GET", "/", &[]))))
        .collect();
    assert_eq!(picks.len(), 2, "{picks:?}");
}
