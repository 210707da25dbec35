//! End-to-end: `builtin://authz` with a namespace's AuthorizationPolicies
//! through the real waypoint: allow, deny (403 `RBAC: access denied`),
//! dry-run and AUDIT (counted, never enforced), CEL allow and deny, path
//! normalization, and a bad CEL expression refused at load.

use std::path::Path;

use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug_tests::harness::*;

/// The namespace `alpha` protected by five policies, written as an operator
/// would in Kubernetes YAML (indented under `pluginConfig.policies`).
const POLICIES: &str = r#"
namespaces:
  alpha:
    plugins:
      - name: authz
        url: builtin://authz
        pluginConfig:
          policies:
            - apiVersion: security.istio.io/v1
              kind: AuthorizationPolicy
              metadata: { name: deny-admin, namespace: alpha }
              spec:
                targetRefs: [{ kind: Service, group: "", name: alpha }]
                action: DENY
                rules:
                  - to: [{ operation: { paths: ["/admin/*"] } }]
                  - when:
                      - key: cel
                        values: ["request.url_path.matches('^/secret') && request.method != 'OPTIONS'"]
            - apiVersion: security.istio.io/v1
              kind: AuthorizationPolicy
              metadata: { name: allow-reads-and-alice, namespace: alpha }
              spec:
                targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: waypoint }]
                rules:
                  - to: [{ operation: { methods: [GET, HEAD] } }]
                  - to: [{ operation: { methods: [POST], paths: ["/orders/{*}"] } }]
                    when:
                      - key: cel
                        values: ["request.headers['x-user'] == 'alice'"]
            - apiVersion: security.istio.io/v1
              kind: AuthorizationPolicy
              metadata:
                name: would-deny-debug
                namespace: alpha
                annotations: { istio.io/dry-run: "true" }
              spec:
                targetRefs: [{ kind: Service, name: alpha }]
                action: DENY
                rules: [{ to: [{ operation: { paths: ["/debug"] } }] }]
            - apiVersion: security.istio.io/v1beta1
              kind: AuthorizationPolicy
              metadata: { name: audit-reports, namespace: alpha }
              spec:
                targetRefs: [{ kind: Service, name: alpha }]
                action: AUDIT
                rules: [{ to: [{ operation: { paths: ["/reports*"] } }] }]
            - apiVersion: security.istio.io/v1
              kind: AuthorizationPolicy
              metadata: { name: other-service, namespace: alpha }
              spec:
                targetRefs: [{ kind: Service, name: not-alpha }]
                action: DENY
                rules: [{}]
"#;

async fn start(yaml: &str) -> Result<(Waypoint, Upstream), String> {
    let upstream = upstream().await;
    let config = Config::from_yaml(
        &config_yaml(upstream.addr, yaml),
        "test.yaml",
        Path::new("."),
    )
    .map_err(|e| e.to_string())?;
    let waypoint = Waypoint::start(config, wayplug::demo::builtins())
        .await
        .map_err(|e| e.to_string())?;
    Ok((waypoint, upstream))
}

fn metric(metrics: &str, name: &str) -> u64 {
    let key = format!(
        r#"wayplug_plugin_counter_total{{namespace="alpha",plugin="authz",name="{name}"}} "#
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_allow_deny_dry_run_and_audit() {
    let (wp, upstream) = start(POLICIES).await.expect("the policies load");
    let http = wp.http_addr.unwrap();
    let admin = wp.admin_addr.unwrap();

    let rows: &[(&str, &str, &[(&str, &str)], u16)] = &[
        ("GET", "/orders", &[], 200),
        ("HEAD", "/orders", &[], 200),
        ("DELETE", "/orders/1", &[], 403),
        ("GET", "/admin/users", &[], 403),
        // Normalized before matching: the dot segment and the escaped
        // letters both reach `/admin/...`.
        ("GET", "/public/../admin/users", &[], 403),
        ("GET", "/%61dmin/users", &[], 403),
        ("GET", "/secret/key", &[], 403),
        ("POST", "/orders/42", &[("x-user", "alice")], 200),
        ("POST", "/orders/42", &[("x-user", "bob")], 403),
        ("POST", "/orders/42/items", &[("x-user", "alice")], 403),
        // A CEL runtime error (the header is absent) fails closed.
        ("POST", "/orders/42", &[], 403),
        ("GET", "/debug", &[], 200),
        ("GET", "/reports/q3", &[], 200),
        ("GET", "/a%00b", &[], 400),
    ];
    for (method, path, headers, status) in rows {
        let reply = send(http, method, "alpha.test", path, headers, "").await;
        assert_eq!(
            reply.status, *status,
            "{method} {path} {headers:?}: {reply:?}"
        );
        if *status == 403 {
            assert_eq!(reply.body, "RBAC: access denied", "{method} {path}");
        }
    }
    let forwarded = rows.iter().filter(|r| r.3 == 200).count();
    assert_eq!(
        upstream.count(),
        forwarded,
        "only allowed requests reach the upstream"
    );

    // Over h2 too.
    let h2 = send_h2(http, "GET", "alpha.test", "/admin/x", &[], "").await;
    assert_eq!(h2.status, 403);
    assert_eq!(h2.body, "RBAC: access denied");

    let metrics = admin_get(admin, "/metrics").await.body;
    assert_eq!(
        metric(&metrics, "authz_allowed_total"),
        forwarded as u64,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "authz_denied_total"), 9, "{metrics}");
    assert_eq!(
        metric(&metrics, "authz_dry_run_denied_total"),
        1,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "authz_audited_total"), 1, "{metrics}");
    assert_eq!(metric(&metrics, "authz_cel_errors_total"), 1, "{metrics}");
    assert_eq!(
        metric(&metrics, "authz_rejected_paths_total"),
        1,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_refused_at_load_naming_the_problem() {
    let bad_cel = POLICIES.replace(
        "request.headers['x-user'] == 'alice'",
        "request.headers['x-user'] == ",
    );
    let err = start(&bad_cel)
        .await
        .err()
        .expect("a bad CEL expression is refused");
    assert!(
        err.contains(
            "AuthorizationPolicy alpha/allow-reads-and-alice: spec.rules[1].when[0].values[0]"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "CEL expression `request.headers['x-user'] == ` does not compile: line 1, column"
        ),
        "{err}"
    );

    let unknown_field = POLICIES.replace("paths: [\"/debug\"]", "pathz: [\"/debug\"]");
    let err = start(&unknown_field)
        .await
        .err()
        .expect("an unknown field is refused");
    assert!(
        err.contains("AuthorizationPolicy alpha/would-deny-debug: spec.rules[0].to[0].operation.pathz: unknown field `pathz`"),
        "{err}"
    );

    let jwt = POLICIES.replace(
        "- to: [{ operation: { methods: [GET, HEAD] } }]",
        "- from: [{ source: { requestPrincipals: [\"*\"] } }]",
    );
    let err = start(&jwt)
        .await
        .err()
        .expect("requestPrincipals are refused");
    assert!(
        err.contains(
            "spec.rules[0].from[0].source.requestPrincipals: request principals come from JWTs"
        ),
        "{err}"
    );
}
