//! `tenant-routing`: sends each request to the backend of its tenant, named
//! by a request header, and everything else to a default backend; see
//! README.md.

use std::collections::BTreeMap;

use serde::Deserialize;
use wayplug_sdk::{Backend, Decision, Policy, Request, export_policy, metrics};

/// Request header that tells the backend which tenant the waypoint routed
/// for (`default` for the fallback).
pub const ROUTED_TENANT_HEADER: &str = "x-wayplug-tenant";

/// The `pluginConfig` of the plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Header carrying the tenant id, matched case-insensitively by name.
    #[serde(default = "default_header")]
    pub header: String,
    /// Tenant id (compared exactly) to its backends.
    pub tenants: BTreeMap<String, Backends>,
    /// Backends for requests without a known tenant.
    pub default: Backends,
}

fn default_header() -> String {
    "x-tenant".to_string()
}

/// One service, or a weighted split across several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Backends {
    /// All traffic to one service hostname.
    One(String),
    /// Traffic split by weight.
    Split(Vec<WeightedService>),
}

/// A service and its share of a split.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedService {
    /// Service hostname, e.g. `acme-api.shop.svc.cluster.local`.
    pub service: String,
    /// Relative weight; 0 sends no traffic.
    pub weight: u32,
    /// Service port; the caller's port when absent.
    #[serde(default)]
    pub port: Option<u16>,
}

impl Backends {
    /// Validates and converts; `what` names the entry in error messages.
    fn resolve(self, what: &str) -> Result<Vec<Backend>, String> {
        let backends = match self {
            Backends::One(service) => vec![Backend::new(service)],
            Backends::Split(split) => split
                .into_iter()
                .map(|s| {
                    let backend = Backend::new(s.service).weight(s.weight);
                    match s.port {
                        Some(port) => backend.port(port),
                        None => backend,
                    }
                })
                .collect(),
        };
        // The same rules the waypoint applies to a route decision, checked
        // once here so that a bad entry fails the load instead of requests.
        Decision::route_weighted(backends.clone())
            .validate()
            .map_err(|err| format!("{what}: {err}"))?;
        Ok(backends)
    }
}

/// The configured policy.
#[derive(Debug)]
pub struct TenantRouting {
    header: String,
    tenants: BTreeMap<String, Vec<Backend>>,
    default: Vec<Backend>,
    fallbacks: metrics::Counter,
}

impl Policy for TenantRouting {
    type Config = Config;

    fn configure(config: Config) -> Result<Self, String> {
        if config.header.is_empty() {
            return Err("`header` must name a header, not be an empty string".to_string());
        }
        let mut tenants = BTreeMap::new();
        for (tenant, backends) in config.tenants {
            let resolved = backends.resolve(&format!("tenant `{tenant}`"))?;
            tenants.insert(tenant, resolved);
        }
        Ok(TenantRouting {
            header: config.header.to_ascii_lowercase(),
            tenants,
            default: config.default.resolve("`default`")?,
            fallbacks: metrics::counter("tenant_routing_fallback_total"),
        })
    }

    fn on_request(&self, req: &Request) -> Decision {
        let tenant = req.header(&self.header);
        let (label, backends) = match tenant
            .as_deref()
            .and_then(|t| self.tenants.get_key_value(t))
        {
            Some((tenant, backends)) => (tenant.as_str(), backends),
            None => {
                self.fallbacks.inc();
                wayplug_sdk::debug!(
                    "tenant-routing: {} {:?} has no backend, using the default",
                    self.header,
                    tenant
                );
                ("default", &self.default)
            }
        };
        Decision::route_weighted(backends.iter().cloned())
            .with_request_header(ROUTED_TENANT_HEADER, label)
    }
}

export_policy!(TenantRouting);

// The tests use the SDK's native host stand-in (`wayplug_sdk::testing`).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use wayplug_sdk::testing::{self, MetricValue};
    use wayplug_sdk::{Request, Route};

    use super::*;

    const CONFIG: &str = r#"{
        "header": "X-Tenant",
        "tenants": {
            "acme": "acme-api.shop.svc.cluster.local",
            "globex": [
                {"service": "globex-api.shop.svc.cluster.local", "weight": 90},
                {"service": "globex-canary.shop.svc.cluster.local", "weight": 10, "port": 8081}
            ]
        },
        "default": "shared-api.shop.svc.cluster.local"
    }"#;

    fn route_for(tenant: Option<&str>) -> Route {
        let policy: TenantRouting = testing::configure(CONFIG).unwrap();
        let mut builder = Request::builder().path("/api/orders");
        if let Some(tenant) = tenant {
            builder = builder.header("x-tenant", tenant);
        }
        match testing::run(&policy, &builder.build()) {
            Decision::Route(route) => route,
            other => panic!("expected a route for {tenant:?}, got {other:?}"),
        }
    }

    #[test]
    fn known_tenants_get_their_backends() {
        let acme = route_for(Some("acme"));
        assert_eq!(
            acme.backends,
            vec![Backend::new("acme-api.shop.svc.cluster.local")]
        );
        assert_eq!(
            acme.changes.request_headers.set,
            vec![(ROUTED_TENANT_HEADER.to_string(), "acme".to_string())]
        );
        assert_eq!(acme.rewrite_path, None);

        let globex = route_for(Some("globex"));
        assert_eq!(
            globex.backends,
            vec![
                Backend::new("globex-api.shop.svc.cluster.local").weight(90),
                Backend::new("globex-canary.shop.svc.cluster.local")
                    .weight(10)
                    .port(8081),
            ]
        );
        assert_eq!(
            testing::metric("tenant_routing_fallback_total"),
            Some(MetricValue::Counter(0))
        );
    }

    #[test]
    fn unknown_or_missing_tenants_use_the_default() {
        for tenant in [None, Some("initech"), Some("ACME"), Some("")] {
            let route = route_for(tenant);
            assert_eq!(
                route.backends,
                vec![Backend::new("shared-api.shop.svc.cluster.local")],
                "{tenant:?}"
            );
            assert_eq!(
                route.changes.request_headers.value_of(ROUTED_TENANT_HEADER),
                Some("default")
            );
        }
        // `route_for` configures a fresh policy each time; the counter is
        // shared by name, as in the waypoint.
        assert_eq!(
            testing::metric("tenant_routing_fallback_total"),
            Some(MetricValue::Counter(4))
        );
        assert_eq!(
            testing::logs().last().unwrap().message,
            r#"tenant-routing: x-tenant Some("") has no backend, using the default"#
        );
    }

    #[test]
    fn header_name_defaults_to_x_tenant() {
        let policy: TenantRouting =
            testing::configure(r#"{"tenants": {"a": "a.ns.svc"}, "default": "d.ns.svc"}"#).unwrap();
        let req = Request::builder().header("X-Tenant", "a").build();
        let Decision::Route(route) = testing::run(&policy, &req) else {
            panic!("expected a route");
        };
        assert_eq!(route.backends, vec![Backend::new("a.ns.svc")]);
    }

    #[test]
    fn bad_configurations_are_rejected_with_the_reason() {
        let cases = [
            (
                r#"{"tenants": {}}"#,
                "invalid configuration: missing field `default`",
            ),
            (
                r#"{"tenants": {"a": 5}, "default": "d"}"#,
                "invalid configuration at `tenants.a`: data did not match any variant of untagged enum Backends",
            ),
            (
                r#"{"tenants": {"a": []}, "default": "d"}"#,
                "tenant `a`: invalid decision: a route needs at least one backend with a positive weight",
            ),
            (
                r#"{"tenants": {"a": [{"service": "x", "weight": 0}]}, "default": "d"}"#,
                "tenant `a`: invalid decision: a route needs at least one backend with a positive weight",
            ),
            (
                r#"{"tenants": {}, "default": ""}"#,
                "`default`: invalid decision: route backend",
            ),
            (
                r#"{"header": "", "tenants": {}, "default": "d"}"#,
                "`header` must name a header",
            ),
        ];
        for (config, expected) in cases {
            let err = testing::configure::<TenantRouting>(config).unwrap_err();
            assert!(err.starts_with(expected), "{config}: got {err:?}");
        }
    }
}
