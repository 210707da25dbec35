//! Compiles the plugins the binary embeds, into `$OUT_DIR/demo/` (the demo's
//! Proxy-Wasm plugins) and `$OUT_DIR/builtin/` (the built-in policies, as
//! components): `include_bytes!(concat!(env!("OUT_DIR"), "/builtin/wayplug_authz.wasm"))`.
//! It also links the binary with packed relative relocations where the
//! toolchain and C library support them, and (release builds) with its
//! functions laid out in the order of `link-order.txt`.

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
    link_order(&out_dir);
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

/// The binary's code is mapped from its file 64 KiB at a fault, so functions
/// that run together should sit together: `link-order.txt` lists those an
/// idle waypoint runs, then those of the request path, then those that load
/// plugins (`wayplug-bench --link-order` writes it; see that module). Laid
/// out in that order, an idle waypoint keeps about 3 MiB of code resident
/// instead of 11. Release builds only, when the linker rustc uses takes the
/// flag (a probe program is linked with it); `WAYPLUG_LINK_ORDER=0` turns it
/// off.
fn link_order(out_dir: &Path) {
    println!("cargo:rerun-if-env-changed=WAYPLUG_LINK_ORDER");
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    if std::env::var("WAYPLUG_LINK_ORDER").as_deref() == Ok("0")
        || std::env::var("PROFILE").as_deref() != Ok("release")
        || !order.is_file()
    {
        return;
    }
    let flags = [
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        // Names the code no longer has are expected: the list is regenerated
        // from time to time, not at every change.
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ];
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let source = out_dir.join("order-probe.rs");
    let probe = out_dir.join("order-probe");
    let mut cmd = Command::new(rustc);
    cmd.arg(&source).arg("-o").arg(&probe);
    if let Ok(target) = std::env::var("TARGET") {
        cmd.args(["--target", &target]);
    }
    // The user's flags may choose the linker.
    if let Ok(encoded) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(encoded.split('\x1f').filter(|f| !f.is_empty()));
    }
    for flag in &flags {
        cmd.arg("-C").arg(format!("link-arg={flag}"));
    }
    let linked = std::fs::write(&source, "fn main() {}\n").is_ok()
        && cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if linked {
        for flag in &flags {
            println!("cargo:rustc-link-arg-bins={flag}");
        }
    } else {
        println!(
            "cargo:warning=the linker does not take --symbol-ordering-file; the binary is linked in the default order"
        );
    }
}
