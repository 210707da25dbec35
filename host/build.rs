//! Compiles the plugins the binary embeds, into `$OUT_DIR/demo/` (the demo's
//! Proxy-Wasm plugins) and `$OUT_DIR/builtin/` (the built-in policies, as
//! components): `include_bytes!(concat!(env!("OUT_DIR"), "/builtin/wayplug_authz.wasm"))`.

use std::path::PathBuf;

use wayplug_wasm_build::{GuestBuild, GuestPackage, WASIP1, WASIP2, workspace_root};

const DEMO_PLUGINS: &[&str] = &["header-allowlist-proxywasm", "add-headers-proxywasm"];

/// Built-in policy components under `plugins/`, by directory and package.
const BUILTIN_PLUGINS: &[(&str, &str)] = &[("authz", "wayplug-authz"), ("route", "wayplug-route")];

fn main() {
    let root = workspace_root();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let packages = DEMO_PLUGINS
        .iter()
        .map(|name| GuestPackage::new(*name, root.join("examples").join(name)));
    GuestBuild::new(&root, WASIP1)
        .packages(packages)
        .run(&out_dir.join("demo"));
    let builtins = BUILTIN_PLUGINS
        .iter()
        .map(|(dir, name)| GuestPackage::new(*name, root.join("plugins").join(dir)));
    GuestBuild::new(&root, WASIP2)
        .packages(builtins)
        .run(&out_dir.join("builtin"));
}
