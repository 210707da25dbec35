//! Compiles the plugins the binary embeds, into `$OUT_DIR/demo/` (the demo's
//! Proxy-Wasm plugins) and `$OUT_DIR/builtin/` (the built-in policies, as
//! components): `include_bytes!(concat!(env!("OUT_DIR"), "/builtin/wayplug_authz.wasm"))`.
//! It also links the binary with packed relative relocations where the
//! toolchain and C library support them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    pack_relative_relocs(&out_dir);
}

/// A position-independent binary this size carries ~67,000 relative
/// relocations: 1.6 MB of `.rela.dyn` that the loader reads at every start
/// and that stays resident. Packed (`DT_RELR`, glibc 2.36 and binutils 2.38
/// or later) they take a few kilobytes. The flag is used only when a probe
/// program linked with it runs here; `WAYPLUG_PACK_RELOCS=0` turns it off
/// for a binary meant for an older C library than the build machine's.
fn pack_relative_relocs(out_dir: &Path) {
    const FLAG: &str = "-Wl,-z,pack-relative-relocs";
    println!("cargo:rerun-if-env-changed=WAYPLUG_PACK_RELOCS");
    let target = std::env::var("TARGET").unwrap_or_default();
    if std::env::var("WAYPLUG_PACK_RELOCS").as_deref() == Ok("0")
        || !target.ends_with("-linux-gnu")
        || std::env::var("HOST").as_deref() != Ok(target.as_str())
    {
        return;
    }
    let linker = std::env::var_os("RUSTC_LINKER").unwrap_or_else(|| "cc".into());
    let source = out_dir.join("relr-probe.c");
    let probe = out_dir.join("relr-probe");
    let linked = std::fs::write(&source, "int main(void) { return 0; }\n").is_ok()
        && Command::new(&linker)
            .arg(&source)
            .arg("-o")
            .arg(&probe)
            .arg(FLAG)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let runs = linked && Command::new(&probe).status().is_ok_and(|s| s.success());
    if runs {
        println!("cargo:rustc-link-arg-bins={FLAG}");
    }
}
