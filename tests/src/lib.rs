//! Helpers for Wayplug's integration tests.

pub mod bench;
pub mod harness;
pub mod registry;

use std::path::PathBuf;

/// Directory holding the fixture plugins, compiled by `build.rs`.
pub const FIXTURES_DIR: &str = env!("WAYPLUG_FIXTURES_DIR");

/// Path of the compiled fixture plugin `tests/fixtures/<name>`,
/// e.g. `fixture("headers")` for `fixture_headers.wasm`.
///
/// # Panics
/// If no such fixture was built (a typo, or a fixture crate not yet added
/// under `tests/fixtures/`).
pub fn fixture(name: &str) -> PathBuf {
    let file_name = format!("fixture_{}.wasm", name.replace('-', "_"));
    let path = PathBuf::from(FIXTURES_DIR).join(file_name);
    assert!(
        path.is_file(),
        "fixture plugin {name:?} not found at {}; fixtures are the crates under tests/fixtures/",
        path.display()
    );
    path
}

/// Path of a compiled Proxy-Wasm example plugin, by crate name
/// (`proxy_wasm_example("header-allowlist-proxywasm")`).
pub fn proxy_wasm_example(name: &str) -> PathBuf {
    let path = PathBuf::from(FIXTURES_DIR).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "example plugin {name:?} not found at {}",
        path.display()
    );
    path
}

/// Directory holding the component plugins (the SDK examples and
/// `tests/components/*`), compiled by `build.rs`.
pub const COMPONENTS_DIR: &str = env!("WAYPLUG_COMPONENTS_DIR");

/// Where `build.rs` put the AssemblyScript fixtures.
pub const AS_FIXTURES_DIR: &str = env!("WAYPLUG_AS_FIXTURES_DIR");

/// Path of an AssemblyScript fixture plugin, by its source's name
/// (`as_fixture("headers")` for `tests/fixtures-as/assembly/headers.ts`).
pub fn as_fixture(name: &str) -> PathBuf {
    let path =
        PathBuf::from(AS_FIXTURES_DIR).join(format!("fixture_as_{}.wasm", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "AssemblyScript fixture {name:?} not found at {}; they are tests/fixtures-as/assembly/*.ts",
        path.display()
    );
    path
}

/// Path of a compiled component plugin, by crate name
/// (`component("header-allowlist")`).
pub fn component(name: &str) -> PathBuf {
    let path = PathBuf::from(COMPONENTS_DIR).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "component plugin {name:?} not found at {}",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixture_is_a_core_wasm_module() {
        for name in [
            "headers",
            "body",
            "config",
            "callout",
            "shared",
            "metrics",
            "tick",
            "misbehave",
        ] {
            let bytes = std::fs::read(fixture(name)).unwrap();
            // Magic, then version 1: a core module, not a component.
            assert_eq!(&bytes[..8], b"\0asm\x01\0\0\0", "{name}");
        }
    }

    #[test]
    #[should_panic(expected = "fixture plugin \"no-such-fixture\" not found")]
    fn unknown_fixture_panics_with_its_name() {
        fixture("no-such-fixture");
    }
}
