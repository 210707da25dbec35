//! Compiles the demo plugins the binary embeds, into `$OUT_DIR/demo/`:
//! `include_bytes!(concat!(env!("OUT_DIR"), "/demo/header_allowlist_proxywasm.wasm"))`.

use std::path::PathBuf;

use wayplug_wasm_build::{GuestBuild, GuestPackage, WASIP1, workspace_root};

const DEMO_PLUGINS: &[&str] = &["header-allowlist-proxywasm", "add-headers-proxywasm"];

fn main() {
    let root = workspace_root();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let packages = DEMO_PLUGINS
        .iter()
        .map(|name| GuestPackage::new(*name, root.join("examples").join(name)));
    GuestBuild::new(&root, WASIP1)
        .packages(packages)
        .run(&out_dir.join("demo"));
}
