//! The one place the `wayplug:policy` world's bindings are generated.
//!
//! The bindings cover the largest world, so every hook's types exist; which
//! hooks a given plugin exports is looked up per interface at load.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "wayplug:policy/policy-with-response-and-body",
    imports: { default: trappable },
    with: {
        "wayplug:policy/types.request": super::host::RequestRef,
        "wayplug:policy/types.response": super::host::ResponseRef,
    },
});

pub use self::exports::wayplug::policy::{body_hooks, request_policy, response_hooks};
pub use self::wayplug::policy::types;
