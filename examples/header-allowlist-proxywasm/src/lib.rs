//! `header-allowlist-proxywasm`: lets a request through only if one header
//! carries an allowed value. See README.md for configuration.
//!
//! - Denied (header absent or value not listed): local reply `deny_status`
//!   with body `denied: <header> '<value>' is not allowed` or
//!   `denied: missing <header>`, and response header
//!   `x-wayplug-denied-by: <plugin_name property>` (the package name if the
//!   host has no such property).
//! - Allowed: sets request header `x-wayplug-user: <value>`, replacing any
//!   copy the client sent so upstreams can trust it.
//! - Invalid configuration: `on_configure` logs the problem and returns
//!   false, so the host refuses the plugin.
//!
//! The decision itself lives in [`policy`] and is tested natively.

pub mod policy;

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use policy::{Config, Decision};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: None }));
}}

const USER_HEADER: &str = "x-wayplug-user";
const DENIED_BY_HEADER: &str = "x-wayplug-denied-by";

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match policy::parse_config(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                log::error!("header-allowlist: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Allowlist {
            config: self.config.clone(),
        }))
    }
}

struct Allowlist {
    config: Option<Rc<Config>>,
}

impl Context for Allowlist {}

fn plugin_name() -> String {
    // Read leniently: the SDK's get_property panics on error statuses, and a
    // deny reply should not turn into a trap over a cosmetic header.
    match hostcalls::get_property(vec!["plugin_name"]) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => env!("CARGO_PKG_NAME").to_owned(),
    }
}

impl HttpContext for Allowlist {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            // Only reachable if the host ignored a failed on_configure; fail closed.
            self.send_http_response(500, vec![], Some(b"header-allowlist is not configured"));
            return Action::Pause;
        };
        let value = self.get_http_request_header(&config.header);
        match policy::decide(&config, value.as_deref()) {
            Decision::Allow { value } => {
                self.set_http_request_header(USER_HEADER, Some(&value));
                Action::Continue
            }
            Decision::Deny { status, body } => {
                log::info!("header-allowlist: {body}");
                let name = plugin_name();
                self.send_http_response(
                    status,
                    vec![(DENIED_BY_HEADER, &name)],
                    Some(body.as_bytes()),
                );
                Action::Pause
            }
        }
    }
}
