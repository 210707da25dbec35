//! Write [Wayplug](https://example.invalid/wayplug) policy plugins in typed
//! Rust, test them with `cargo test`, and build them into WebAssembly
//! components for the waypoint.
//!
//! A policy is a type that implements [`Policy`]: it is built once from its
//! typed configuration and then returns a [`Decision`] for each [`Request`]:
//! let it through (maybe with header changes), answer it locally, redirect
//! it, or route it to other backends. [`export_policy!`] turns it into the
//! exports of the `wayplug:policy` WIT world.
//!
//! ```
//! use serde::Deserialize;
//! use wayplug_sdk::{Decision, Identity, Policy, Request, export_policy, testing};
//!
//! /// Lets only callers from the configured namespaces reach `/admin`.
//! pub struct AdminGate {
//!     namespaces: Vec<String>,
//! }
//!
//! #[derive(Deserialize)]
//! pub struct Config {
//!     namespaces: Vec<String>,
//! }
//!
//! impl Policy for AdminGate {
//!     type Config = Config;
//!
//!     fn configure(config: Config) -> Result<Self, String> {
//!         if config.namespaces.is_empty() {
//!             return Err("`namespaces` must name at least one namespace".to_string());
//!         }
//!         Ok(AdminGate { namespaces: config.namespaces })
//!     }
//!
//!     fn on_request(&self, req: &Request) -> Decision {
//!         if !req.path_matches("/admin*") {
//!             return Decision::allow();
//!         }
//!         match &req.source().namespace {
//!             Some(ns) if self.namespaces.contains(ns) => {
//!                 Decision::allow().with_request_header("x-admin-namespace", ns.clone())
//!             }
//!             _ => Decision::deny(403, "admin is internal"),
//!         }
//!     }
//! }
//!
//! export_policy!(AdminGate);
//!
//! # fn main() {
//! // The same code runs natively in tests:
//! let gate: AdminGate = testing::configure(r#"{"namespaces": ["ops"]}"#).unwrap();
//!
//! let from_ops = Request::builder()
//!     .path("/admin/users")
//!     .source(Identity::spiffe("cluster.local", "ops", "console"))
//!     .build();
//! let decision = testing::run(&gate, &from_ops);
//! assert_eq!(decision.request_headers().unwrap().value_of("x-admin-namespace"), Some("ops"));
//!
//! let anonymous = Request::builder().path("/admin/users").build();
//! assert_eq!(testing::run(&gate, &anonymous).status(), Some(403));
//!
//! // Configuration errors are what the operator sees when loading fails.
//! let err = testing::configure::<AdminGate>(r#"{"namespaces": []}"#).err().unwrap();
//! assert_eq!(err, "`namespaces` must name at least one namespace");
//! # }
//! ```
//!
//! # Building the plugin
//!
//! A plugin crate has `crate-type = ["cdylib"]` (add `"rlib"` to also test it
//! from other crates) and is built with
//! `cargo build --target wasm32-wasip2 --release`, which writes a component
//! to `target/wasm32-wasip2/release/<crate>.wasm`. The crate's README walks
//! through it from an empty crate.
//!
//! # Hooks
//!
//! A policy can also implement [`ResponseHook`] (see and change response
//! heads) and [`BodyHook`] (see and replace complete request bodies); list
//! them in [`export_policy!`]. Each hook is a separate export of the
//! component, so the waypoint does the extra work only for plugins that have
//! it.
//!
//! # Host services
//!
//! [`log`](mod@log) (and the [`info!`] family), [`clock`], [`metrics`], [`kv`] (shared
//! key-value store with compare-and-swap), [`config`] and [`trace`] (which policy
//! decided). Natively these use
//! the in-memory stand-in described in [`testing`].

#![deny(missing_docs)]
// `forbid` would also reject the one `#[allow]` on the generated bindings
// module (`wasm::bindings`); everything else is checked by this `deny`.
#![deny(unsafe_code)]

pub mod clock;
pub mod config;
mod decision;
mod export;
mod host;
pub mod kv;
pub mod log;
pub mod metrics;
mod pattern;
mod policy;
mod request;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod trace;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use decision::{
    Backend, BodyDecision, Decision, Header, HeaderChanges, InvalidDecision, LocalResponse,
    Redirect, RedirectStatus, RequestChanges, ResponseDecision, Route,
};
pub use pattern::matches_pattern;
pub use policy::{BodyHook, ConfigError, Policy, ResponseHook, parse_config};
pub use request::{
    Connection, DEFAULT_SOURCE_ADDRESS, Destination, Identity, Request, RequestBuilder, Response,
    ResponseBuilder,
};

// Defines `__wayplug_generate!`, which embeds the WIT package; see build.rs.
include!(concat!(env!("OUT_DIR"), "/generate_macro.rs"));

/// Implementation details of [`export_policy!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{HookProbe, NoHooks};
    #[cfg(target_arch = "wasm32")]
    pub use crate::wasm::{
        PolicySlot, bindings, configure, on_request, on_request_body, on_response,
    };
    #[cfg(target_arch = "wasm32")]
    pub use wit_bindgen;
}
