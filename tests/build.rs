//! Compiles the plugins the tests load before the tests build, so
//! `cargo test` needs no separate step:
//! - every Proxy-Wasm fixture under `fixtures/` and the Proxy-Wasm
//!   examples, for wasm32-wasip1;
//! - every component under `components/` and the SDK examples, for
//!   wasm32-wasip2 (they are components);
//! - the AssemblyScript fixtures under `fixtures-as/assembly/`, with the
//!   `asc` that `tools/test-deps.sh` installs there (`npm ci`).

use std::path::{Path, PathBuf};
use std::process::Command;

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

    let as_dir = out_dir.join("fixtures-as");
    build_assemblyscript(&root.join("tests").join("fixtures-as"), &as_dir);
    println!(
        "cargo:rustc-env=WAYPLUG_AS_FIXTURES_DIR={}",
        as_dir.display()
    );
}

/// Compiles each `assembly/*.ts` (libraries live in `assembly/lib/`) to
/// `fixture_as_<name>.wasm`. A missing compiler fails the build: the tests
/// that load these plugins must never be skipped.
fn build_assemblyscript(dir: &Path, out: &Path) {
    let sources = dir.join("assembly");
    println!("cargo:rerun-if-changed={}", sources.display());
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("package-lock.json").display()
    );
    let asc = dir.join("node_modules").join(".bin").join("asc");
    if !asc.is_file() {
        panic!(
            "the AssemblyScript compiler is not installed at {}: run tools/test-deps.sh \
             (it runs `npm ci` in {})",
            asc.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&sources)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", sources.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ts"))
        .collect();
    entries.sort();
    for src in entries {
        let name = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 file name");
        let wasm = out.join(format!("fixture_as_{}.wasm", name.replace('-', "_")));
        let output = Command::new(&asc)
            .current_dir(dir)
            .arg(&src)
            .arg("-b")
            .arg(&wasm)
            .args(["--use", "abort=abort_proc_exit", "-O"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} (is node installed?): {e}", asc.display()));
        if !output.status.success() || !wasm.is_file() {
            panic!(
                "asc failed on {}:\n{}{}",
                src.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
