//! Compiles the plugins the binary embeds, into `$OUT_DIR/demo/` (the demo's
//! Proxy-Wasm plugins) and `$OUT_DIR/builtin/` (the policy components):
//! `include_bytes!(concat!(env!("OUT_DIR"), "/demo/header_allowlist_proxywasm.wasm"))`.

use std::path::PathBuf;

use wayplug_wasm_build::{GuestBuild, GuestPackage, WASIP1, WASIP2, workspace_root};

const DEMO_PLUGINS: &[&str] = &["header-allowlist-proxywasm", "add-headers-proxywasm"];

/// Policy components shipped as `builtin://NAME`: (package, folder under plugins/).
const BUILTIN_COMPONENTS: &[(&str, &str)] =
    &[("wayplug-authz", "authz"), ("wayplug-route", "route")];

fn main() {
    let root = workspace_root();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let packages = DEMO_PLUGINS
        .iter()
        .map(|name| GuestPackage::new(*name, root.join("examples").join(name)));
    GuestBuild::new(&root, WASIP1)
        .packages(packages)
        .run(&out_dir.join("demo"));
    let components = BUILTIN_COMPONENTS
        .iter()
        .map(|(name, dir)| GuestPackage::new(*name, root.join("plugins").join(dir)));
    GuestBuild::new(&root, WASIP2)
        .packages(components)
        .run(&out_dir.join("builtin"));
}
