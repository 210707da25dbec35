//! Compiles the three plugins the benchmark loads (both header allowlists
//! and the response stamp) into `$OUT_DIR`, so the harness needs neither a
//! separate step nor the test suite's many fixtures.

use std::path::PathBuf;

use wayplug_wasm_build::{GuestBuild, GuestPackage, WASIP1, WASIP2, workspace_root};

fn main() {
    let root = workspace_root();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let example = |name: &str| GuestPackage::new(name, root.join("examples").join(name));
    GuestBuild::new(&root, WASIP1)
        .packages([example("header-allowlist-proxywasm")])
        .run(&out_dir.join("plugins"));
    GuestBuild::new(&root, WASIP2)
        .packages([example("header-allowlist"), example("response-header")])
        .run(&out_dir.join("plugins"));
    println!(
        "cargo:rustc-env=WAYPLUG_BENCH_PLUGINS={}",
        out_dir.join("plugins").display()
    );
}
