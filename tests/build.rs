//! Compiles every fixture plugin under `fixtures/` to a core Wasm module
//! before the tests build, so `cargo test` needs no separate step.

use std::path::PathBuf;

use wayplug_wasm_build::{GuestBuild, WASIP1, discover, workspace_root};

fn main() {
    let root = workspace_root();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let fixtures_dir = out_dir.join("fixtures");
    let fixtures = discover(&root.join("tests").join("fixtures"));
    GuestBuild::new(&root, WASIP1)
        .packages(fixtures)
        .run(&fixtures_dir);
    println!(
        "cargo:rustc-env=WAYPLUG_FIXTURES_DIR={}",
        fixtures_dir.display()
    );
}
