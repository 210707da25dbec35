//! Compiles the plugins the tests load before the tests build, so
//! `cargo test` needs no separate step:
//! - every Proxy-Wasm fixture under `fixtures/` and the Proxy-Wasm
//!   examples, for wasm32-wasip1;
//! - every component under `components/` and the SDK examples, for
//!   wasm32-wasip2 (they are components).

use std::path::PathBuf;

use wayplug_wasm_build::{GuestBuild, GuestPackage, WASIP1, WASIP2, discover, workspace_root};

/// Proxy-Wasm examples the tests and benchmarks load.
const PROXY_WASM_EXAMPLES: &[&str] = &["header-allowlist-proxywasm"];

/// SDK examples the tests run through the waypoint.
const SDK_EXAMPLES: &[&str] = &[
    "header-allowlist",
    "tenant-routing",
    "response-header",
    "body-guard",
];

fn main() {
    let root = workspace_root();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    let fixtures_dir = out_dir.join("fixtures");
    let pw_examples = PROXY_WASM_EXAMPLES
        .iter()
        .map(|name| GuestPackage::new(*name, root.join("examples").join(name)));
    GuestBuild::new(&root, WASIP1)
        .packages(discover(&root.join("tests").join("fixtures")))
        .packages(pw_examples)
        .run(&fixtures_dir);
    println!(
        "cargo:rustc-env=WAYPLUG_FIXTURES_DIR={}",
        fixtures_dir.display()
    );

    let components_dir = out_dir.join("components");
    let examples = SDK_EXAMPLES
        .iter()
        .map(|name| GuestPackage::new(*name, root.join("examples").join(name)));
    GuestBuild::new(&root, WASIP2)
        .packages(discover(&root.join("tests").join("components")))
        .packages(examples)
        .run(&components_dir);
    println!(
        "cargo:rustc-env=WAYPLUG_COMPONENTS_DIR={}",
        components_dir.display()
    );
}
