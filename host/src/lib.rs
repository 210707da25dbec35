//! Wayplug: a waypoint proxy for ambient meshes that runs WebAssembly policy
//! plugins per destination namespace.
//!
//! See ARCHITECTURE.md for how a request flows through these modules.

// One audited call is allowed: loading compiled plugins from the on-disk
// cache (`plugin::precompiled`). Nothing else may use `unsafe`.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod discovery;
pub mod downstream;
pub mod exchange;
pub mod hbone;
pub mod http;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod testing;
pub mod tls;
pub mod watch;
