//! A component plugin for the sandbox and ABI tests.
//!
//! The request header `x-misbehave` chooses: `loop` spins forever, `alloc`
//! allocates without bound, `trap` panics, `bad-decision` answers with an
//! invalid status, `bad-route` routes to `gone.test` and sets request header
//! `x-c-partial` but also one with an invalid name (so the whole decision
//! must be refused, route included). Otherwise the request goes on with headers that echo
//! what the plugin was told: `x-c-principal`, `x-c-source-namespace`,
//! `x-c-destination` (`namespace/service:port`), `x-c-path`, `x-c-query`,
//! `x-c-count` (a per-plugin counter kept in the key-value store) and
//! `x-c-mode` (from the configuration). A configuration with
//! `"reject": true` fails `configure` with a readable message.

use serde::Deserialize;
use wayplug_sdk::{Decision, Policy, Request, export_policy, kv};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    mode: String,
    #[serde(default)]
    reject: bool,
}

pub struct Misbehave {
    mode: String,
}

fn spin() -> u64 {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
        if std::hint::black_box(n) == u64::MAX {
            return n;
        }
    }
}

fn count() -> u64 {
    for _ in 0..16 {
        let (next, result) = match kv::get("count") {
            Some(entry) => {
                let n: u64 = String::from_utf8_lossy(&entry.value).parse().unwrap_or(0) + 1;
                (n, kv::set_cas("count", n.to_string(), entry.cas))
            }
            None => (1, kv::set_if_absent("count", "1")),
        };
        if result.is_ok() {
            return next;
        }
    }
    0
}

impl Policy for Misbehave {
    type Config = Config;

    fn configure(config: Config) -> Result<Self, String> {
        if config.reject {
            return Err("`reject` is set: this configuration is refused on purpose".into());
        }
        Ok(Misbehave { mode: config.mode })
    }

    fn on_request(&self, req: &Request) -> Decision {
        match req.header("x-misbehave").as_deref() {
            Some("loop") => {
                spin();
            }
            Some("alloc") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = vec![0u8; 1 << 20];
                    chunk[0] = hoard.len() as u8;
                    hoard.push(std::hint::black_box(chunk));
                }
            }
            Some("trap") => panic!("component fixture trap"),
            Some("bad-decision") => return Decision::deny(99, "not a status"),
            Some("bad-route") => {
                return Decision::route("gone.test")
                    .with_request_header("x-c-partial", "yes")
                    .with_request_header("bad header name", "v");
            }
            _ => {}
        }
        let source = req.source();
        let dest = req.destination();
        Decision::allow()
            .with_request_header(
                "x-c-principal",
                source.principal.clone().unwrap_or_else(|| "none".into()),
            )
            .with_request_header(
                "x-c-source-namespace",
                source.namespace.clone().unwrap_or_else(|| "none".into()),
            )
            .with_request_header(
                "x-c-destination",
                format!("{}/{}:{}", dest.namespace, dest.service, dest.port),
            )
            .with_request_header("x-c-path", req.path())
            .with_request_header("x-c-query", req.query().unwrap_or("none"))
            .with_request_header("x-c-count", count().to_string())
            .with_request_header("x-c-mode", self.mode.clone())
    }
}

export_policy!(Misbehave);
