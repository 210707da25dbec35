//! Gateway API HTTPRoute for the waypoint, as a policy plugin
//! (`builtin://route`).
//!
//! Configuration (`pluginConfig`): every HTTPRoute of one namespace, as the
//! documents were written, and optionally the Services the waypoint knows
//! (the host fills this in when it compiles a `policyDir`):
//!
//! ```json
//! {"routes": [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", ...}],
//!  "services": [{"namespace": "shop", "name": "reviews",
//!                "hostname": "reviews.shop.svc.cluster.local", "ports": [9080]}]}
//! ```
//!
//! A route applies to requests for the Services in its `parentRefs` (GAMMA).
//! Once a route attaches to a Service, a request that matches none of its
//! rules gets 404. See README.md for the supported fields.
//!
//! Natively, the crate is the model the host validates documents with:
//! [`parse_route`].

// `deny`, not `forbid`: the component glue `export_policy!` generates needs
// its own `allow`; everything written here is checked.
#![deny(unsafe_code)]

mod model;
mod table;

use std::cell::Cell;

use serde::Deserialize;
use wayplug_sdk::{Decision, Policy, Request, export_policy};

pub use model::{
    API_VERSION, Action, BackendRef, BackendTarget, HeaderMatch, HeaderModifier, Match, Parent,
    PathMatch, PathModifier, QueryMatch, Redirect, Rewrite, Route, RouteError, Rule, ValueMatch,
    parse_route,
};
pub use table::{KnownService, RouteTable};

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Whole HTTPRoute documents.
    pub routes: Vec<serde_json::Value>,
    /// The Services backends may name; without it backends are addressed
    /// as `<name>.<namespace>.svc.cluster.local`.
    #[serde(default)]
    pub services: Option<Vec<KnownService>>,
}

/// Reads every route of a configuration; errors name the route.
pub fn compile(config: Config) -> Result<RouteTable, String> {
    let mut routes: Vec<Route> = Vec::with_capacity(config.routes.len());
    for (i, doc) in config.routes.iter().enumerate() {
        let route = parse_route(doc).map_err(|e| format!("routes[{i}]: {e}"))?;
        if routes
            .iter()
            .any(|r| r.namespace == route.namespace && r.name == route.name)
        {
            return Err(format!(
                "routes[{i}]: HTTPRoute {}/{} appears twice",
                route.namespace, route.name
            ));
        }
        routes.push(route);
    }
    Ok(RouteTable::new(routes, config.services))
}

/// The policy: a route table and the state of its backend picker.
pub struct RoutePolicy {
    table: RouteTable,
    seed: Cell<u64>,
}

impl RoutePolicy {
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// A pseudo-random number per request for weighted backends (splitmix64
    /// over the monotonic clock): guests get no system randomness, and
    /// traffic splitting needs spread, not secrecy.
    fn roll(&self) -> u64 {
        let mut z = self
            .seed
            .get()
            .wrapping_add(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(wayplug_sdk::clock::monotonic().as_nanos() as u64);
        self.seed.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Policy for RoutePolicy {
    type Config = Config;

    fn configure(config: Config) -> Result<Self, String> {
        Ok(RoutePolicy {
            table: compile(config)?,
            seed: Cell::new(0),
        })
    }

    fn on_request(&self, req: &Request) -> Decision {
        self.table.decide(req, self.roll())
    }
}

export_policy!(RoutePolicy);

#[cfg(test)]
mod tests;
