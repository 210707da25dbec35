//! Compiles the repository's Wasm guest crates from a build script.
//!
//! Build scripts of the host and of the integration tests call this to get
//! `.wasm` files for fixture and demo plugins without a separate build step.
//! It runs a nested `cargo build --release --target <triple>` on the same
//! workspace, with its own target directory, then copies each artifact into
//! the caller's `OUT_DIR`. The nested build drops debug info (see
//! [`GUEST_PROFILE_OVERRIDES`]); otherwise it uses the workspace's release
//! profile as written.
//!
//! ```no_run
//! // build.rs
//! use wayplug_wasm_build::{GuestBuild, WASIP1, workspace_root};
//!
//! let root = workspace_root();
//! let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("fixtures");
//! let wasm_files = GuestBuild::new(&root, WASIP1)
//!     .packages(wayplug_wasm_build::discover(&root.join("tests/fixtures")))
//!     .run(&out);
//! assert!(!wasm_files.is_empty());
//! ```
//!
//! Invariants the nested build relies on:
//! - It uses a target directory of its own (`<target>/wasm-guests`). Sharing
//!   the outer build's directory would deadlock: the outer cargo holds that
//!   directory's lock while our build script runs.
//! - It inherits the jobserver (`CARGO_MAKEFLAGS`), so the nested compile
//!   shares the outer `-j` budget instead of adding its own.
//! - Every variable cargo sets for the *outer* compilation (host rustflags,
//!   clippy's wrapper, this package's metadata) is removed, so `cargo build`,
//!   `cargo clippy` and `cargo doc` all issue the identical nested command
//!   and reuse one set of guest artifacts instead of rebuilding them.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Target triple for core Proxy-Wasm modules.
pub const WASIP1: &str = "wasm32-wasip1";
/// Target triple for components.
pub const WASIP2: &str = "wasm32-wasip2";

/// Name of the sub-directory of the cargo target directory that the nested
/// guest build uses.
pub const GUEST_TARGET_SUBDIR: &str = "wasm-guests";

/// A workspace package that compiles to a `.wasm` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPackage {
    /// Cargo package name, e.g. `fixture-headers`.
    pub name: String,
    /// Directory holding the package's `Cargo.toml`.
    pub dir: PathBuf,
}

impl GuestPackage {
    /// A package with an explicitly given name and directory.
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        GuestPackage {
            name: name.into(),
            dir: dir.into(),
        }
    }

    /// Reads the package name from `<dir>/Cargo.toml`.
    ///
    /// # Panics
    /// If the manifest cannot be read or has no `[package] name`.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let manifest = dir.join("Cargo.toml");
        let text = fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("cannot read guest manifest {}: {e}", manifest.display()));
        let name = parse_package_name(&text).unwrap_or_else(|| {
            panic!(
                "guest manifest {} has no `name = \"...\"` in its [package] section",
                manifest.display()
            )
        });
        GuestPackage { name, dir }
    }

    /// File name of the artifact cargo produces for this package:
    /// the crate name (dashes become underscores) plus `.wasm`.
    pub fn artifact_file_name(&self) -> String {
        format!("{}.wasm", self.name.replace('-', "_"))
    }
}

/// Every direct sub-directory of `parent` that holds a `Cargo.toml`, as a
/// guest package, sorted by directory name.
///
/// Also tells cargo to rerun the build script when anything under `parent`
/// changes, so a newly added guest crate is picked up.
///
/// # Panics
/// If `parent` cannot be listed or a manifest cannot be read.
pub fn discover(parent: &Path) -> Vec<GuestPackage> {
    println!("cargo:rerun-if-changed={}", parent.display());
    let entries = fs::read_dir(parent)
        .unwrap_or_else(|e| panic!("cannot list guest crates in {}: {e}", parent.display()));
    let mut dirs: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", parent.display()))
                .path()
        })
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    dirs.into_iter().map(GuestPackage::from_dir).collect()
}

/// The workspace root: the nearest ancestor of the build script's
/// `CARGO_MANIFEST_DIR` whose `Cargo.toml` has a `[workspace]` table.
///
/// # Panics
/// Outside a build script, or if no ancestor is a workspace root.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .expect("CARGO_MANIFEST_DIR is not set: call workspace_root() from a build script");
    let start = PathBuf::from(manifest_dir);
    start
        .ancestors()
        .find(|dir| {
            fs::read_to_string(dir.join("Cargo.toml"))
                .map(|text| declares_workspace(&text))
                .unwrap_or(false)
        })
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            panic!(
                "no Cargo.toml with a [workspace] table above {}",
                start.display()
            )
        })
}

/// One nested build of guest packages for one target triple.
#[derive(Debug, Clone)]
pub struct GuestBuild {
    workspace_root: PathBuf,
    target: String,
    packages: Vec<GuestPackage>,
}

impl GuestBuild {
    /// A build of no packages yet, in the workspace at `workspace_root`.
    pub fn new(workspace_root: impl Into<PathBuf>, target: impl Into<String>) -> Self {
        GuestBuild {
            workspace_root: workspace_root.into(),
            target: target.into(),
            packages: Vec::new(),
        }
    }

    /// Adds one package.
    pub fn package(mut self, package: GuestPackage) -> Self {
        self.packages.push(package);
        self
    }

    /// Adds packages.
    pub fn packages(mut self, packages: impl IntoIterator<Item = GuestPackage>) -> Self {
        self.packages.extend(packages);
        self
    }

    /// Builds the packages, copies each `<crate_name>.wasm` into `out_dir`
    /// and returns the copied paths in package order.
    ///
    /// # Panics
    /// With an operator-readable message (nested cargo's stderr and the fix)
    /// if the build fails. Build scripts report errors by panicking.
    pub fn run(&self, out_dir: &Path) -> Vec<PathBuf> {
        self.try_run(out_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`GuestBuild::run`], returning the error instead of panicking.
    pub fn try_run(&self, out_dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
        for line in self.rerun_directives() {
            println!("{line}");
        }
        if self.packages.is_empty() {
            return Ok(Vec::new());
        }

        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let target_dir = guest_target_dir(
            &self.workspace_root,
            std::env::var_os("CARGO_TARGET_DIR").as_deref(),
        );
        let mut command = Command::new(&cargo);
        command
            .current_dir(&self.workspace_root)
            .args(self.cargo_args(&target_dir))
            // A build-dir shared with the outer build would deadlock on its
            // lock; pin the nested one to our own target directory.
            .env("CARGO_BUILD_BUILD_DIR", &target_dir);
        let vars: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect();
        for name in env_vars_to_remove(vars.iter().map(String::as_str)) {
            command.env_remove(name);
        }

        let output = command.output().map_err(|source| BuildError::Spawn {
            cargo: PathBuf::from(&cargo),
            source,
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            return Err(BuildError::Failed {
                target: self.target.clone(),
                packages: self.package_names(),
                target_missing: looks_like_missing_target(&stderr),
                status: output.status.to_string(),
                stderr,
            });
        }

        fs::create_dir_all(out_dir).map_err(|source| BuildError::Io {
            path: out_dir.to_path_buf(),
            source,
        })?;
        self.packages
            .iter()
            .map(|package| {
                let built = artifact_path(&target_dir, &self.target, package);
                if !built.is_file() {
                    return Err(BuildError::MissingArtifact {
                        package: package.name.clone(),
                        path: built,
                    });
                }
                let copied = out_dir.join(package.artifact_file_name());
                copy_if_changed(&built, &copied)?;
                Ok(copied)
            })
            .collect()
    }

    /// Arguments after the cargo program for the nested build.
    pub fn cargo_args(&self, target_dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["build", "--release", "--color", "never"]
            .iter()
            .map(OsString::from)
            .collect();
        // The workspace's release profile keeps line tables for the host's
        // backtraces. In a guest that is ~2 MB of DWARF (mostly from the
        // prebuilt std) around ~100 KB of code, which every test load and the
        // host binary would carry; the name section stays for trap backtraces.
        for setting in GUEST_PROFILE_OVERRIDES {
            args.push(OsString::from("--config"));
            args.push(OsString::from(setting));
        }
        args.push(OsString::from("--target"));
        args.push(OsString::from(&self.target));
        for package in &self.packages {
            args.push(OsString::from("-p"));
            args.push(OsString::from(&package.name));
        }
        args.push(OsString::from("--target-dir"));
        args.push(target_dir.as_os_str().to_owned());
        args
    }

    /// The `cargo:rerun-if-*` lines for these packages.
    pub fn rerun_directives(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "cargo:rerun-if-changed={}",
                self.workspace_root.join("Cargo.lock").display()
            ),
            // Workspace dependency versions and profiles live here.
            format!(
                "cargo:rerun-if-changed={}",
                self.workspace_root.join("Cargo.toml").display()
            ),
            "cargo:rerun-if-env-changed=CARGO_TARGET_DIR".to_owned(),
        ];
        for package in &self.packages {
            for file in ["Cargo.toml", "src", "build.rs"] {
                let path = package.dir.join(file);
                // build.rs is optional; a missing `src` would fail the build anyway.
                if file != "build.rs" || path.exists() {
                    lines.push(format!("cargo:rerun-if-changed={}", path.display()));
                }
            }
        }
        lines
    }

    fn package_names(&self) -> Vec<String> {
        self.packages.iter().map(|p| p.name.clone()).collect()
    }
}

/// Where the nested build puts its output: `<CARGO_TARGET_DIR>/wasm-guests`
/// if that variable is set (relative values are taken from the workspace
/// root, where cargo is normally started), else `<workspace>/target/wasm-guests`.
pub fn guest_target_dir(workspace_root: &Path, cargo_target_dir: Option<&OsStr>) -> PathBuf {
    let base = match cargo_target_dir {
        Some(dir) if !dir.is_empty() => workspace_root.join(dir),
        _ => workspace_root.join("target"),
    };
    base.join(GUEST_TARGET_SUBDIR)
}

/// Path of a package's artifact inside the nested target directory.
pub fn artifact_path(target_dir: &Path, target: &str, package: &GuestPackage) -> PathBuf {
    target_dir
        .join(target)
        .join("release")
        .join(package.artifact_file_name())
}

/// `--config` overrides applied to the nested build's release profile.
///
/// Size settings were measured and left out: `opt-level="s"`, `lto`,
/// `codegen-units=1` and `panic="abort"` shrank `builtin://authz` (then
/// 3.32 MB, with the full `regex` crate) to 2.82 MB and compiled it about
/// 10 % faster at load, but its guest code ran slower per request and each
/// namespace held more memory.
pub const GUEST_PROFILE_OVERRIDES: &[&str] = &[
    "profile.release.debug=false",
    "profile.release.strip=\"debuginfo\"",
];

/// Prefixes of variables cargo (or clippy) sets for a build script that would
/// leak the outer compilation's settings into the nested one.
const REMOVED_PREFIXES: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    // Profile overrides are meant for the outer build; guests use the
    // workspace's release profile as written.
    "CARGO_PROFILE_",
    "CLIPPY_",
    // Metadata from `links` build scripts of the outer dependency graph.
    "DEP_",
    "__CARGO_",
];

/// Variables removed by exact name.
const REMOVED_NAMES: &[&str] = &[
    // Wrappers: clippy-driver would lint (and fingerprint) guest crates.
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    // Host rustflags (e.g. -C target-cpu=native, coverage) break wasm builds.
    // Cargo reads CARGO_ENCODED_RUSTFLAGS before RUSTFLAGS.
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    // We pass --target-dir explicitly.
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    // Set per compilation by cargo; a stale value would reach nested crates
    // that have no build script of their own (e.g. `env!("OUT_DIR")`).
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "NUM_JOBS",
    "OPT_LEVEL",
    "DEBUG",
    "PROFILE",
    "RUSTC_LINKER",
];

/// Whether the nested build must not inherit the variable `name`.
///
/// The jobserver (`CARGO_MAKEFLAGS`, `MAKEFLAGS`, `MFLAGS`), the toolchain
/// (`CARGO`, `RUSTC`, `RUSTDOC`, `RUSTUP_*`) and user settings such as
/// `CARGO_HOME` or `CARGO_NET_*` are kept.
pub fn should_remove_env(name: &str) -> bool {
    REMOVED_NAMES.contains(&name) || REMOVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The subset of `names` to remove from the nested build's environment.
pub fn env_vars_to_remove<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    names.into_iter().filter(|n| should_remove_env(n)).collect()
}

/// Extracts `name` from the `[package]` table of a manifest.
///
/// Handles the plain `name = "..."` form our manifests use; it is not a TOML
/// parser (this crate stays free of dependencies).
pub fn parse_package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "name" {
            continue;
        }
        let value = value.trim();
        let value = value.split_once('#').map_or(value, |(v, _)| v).trim();
        return value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
    }
    None
}

fn declares_workspace(manifest: &str) -> bool {
    manifest.lines().any(|line| line.trim() == "[workspace]")
}

/// Whether nested cargo's stderr says the target's standard library is absent.
pub fn looks_like_missing_target(stderr: &str) -> bool {
    stderr.contains("target may not be installed")
        || stderr.contains("can't find crate for `core`")
        || stderr.contains("can't find crate for `std`")
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<(), BuildError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    let new = fs::read(from).map_err(io_err(from))?;
    // Rewriting identical bytes would bump the mtime and make cargo rebuild
    // every crate that include_bytes!() the file.
    if fs::read(to).is_ok_and(|old| old == new) {
        return Ok(());
    }
    fs::write(to, new).map_err(io_err(to))
}

/// Why a guest build failed.
#[derive(Debug)]
pub enum BuildError {
    /// Cargo could not be started.
    Spawn {
        /// The program we tried to run.
        cargo: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The nested cargo exited unsuccessfully.
    Failed {
        /// Target triple.
        target: String,
        /// Packages we asked for.
        packages: Vec<String>,
        /// Whether stderr indicates the rustup target is not installed.
        target_missing: bool,
        /// Exit status, as displayed by the OS.
        status: String,
        /// Nested cargo's stderr.
        stderr: String,
    },
    /// Cargo succeeded but the expected `.wasm` file is not there (e.g. the
    /// package is not `crate-type = ["cdylib"]`).
    MissingArtifact {
        /// Package name.
        package: String,
        /// Where the artifact was expected.
        path: PathBuf,
    },
    /// Reading, copying or creating a directory failed.
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Spawn { cargo, source } => write!(
                f,
                "could not run `{}` to build the Wasm guest crates: {source}",
                cargo.display()
            ),
            BuildError::Failed {
                target,
                packages,
                target_missing,
                status,
                stderr,
            } => {
                if *target_missing {
                    writeln!(
                        f,
                        "the Rust target `{target}` is not installed, so the Wasm guest crates cannot be built.\n\
                         Fix: rustup target add {target}"
                    )?;
                } else {
                    writeln!(
                        f,
                        "building the Wasm guest crates ({}) for `{target}` failed ({status}).\n\
                         If the target is missing, fix with: rustup target add {target}",
                        packages.join(", ")
                    )?;
                }
                write!(f, "--- nested cargo stderr ---\n{}", stderr.trim_end())
            }
            BuildError::MissingArtifact { package, path } => write!(
                f,
                "cargo built guest package `{package}` but {} does not exist; \
                 is its crate-type [\"cdylib\"]?",
                path.display()
            ),
            BuildError::Io { path, source } => {
                write!(f, "guest build I/O error on {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Spawn { source, .. } | BuildError::Io { source, .. } => Some(source),
            BuildError::Failed { .. } | BuildError::MissingArtifact { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> GuestBuild {
        GuestBuild::new("/ws", WASIP1)
            .package(GuestPackage::new(
                "fixture-headers",
                "/ws/tests/fixtures/headers",
            ))
            .package(GuestPackage::new("fixture-body", "/ws/tests/fixtures/body"))
    }

    #[test]
    fn cargo_args_name_every_package_and_the_target_dir() {
        let args = build().cargo_args(Path::new("/ws/target/wasm-guests"));
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "build",
                "--release",
                "--color",
                "never",
                "--config",
                "profile.release.debug=false",
                "--config",
                "profile.release.strip=\"debuginfo\"",
                "--target",
                "wasm32-wasip1",
                "-p",
                "fixture-headers",
                "-p",
                "fixture-body",
                "--target-dir",
                "/ws/target/wasm-guests",
            ]
        );
    }

    #[test]
    fn env_removal_drops_outer_build_settings_and_keeps_jobserver() {
        let env = [
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTC_WRAPPER",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_CFG_TARGET_ARCH",
            "CARGO_FEATURE_DEFAULT",
            "CARGO_PROFILE_RELEASE_LTO",
            "CLIPPY_ARGS",
            "OUT_DIR",
            "TARGET",
            "DEP_Z_INCLUDE",
            "__CARGO_FIX_PLZ",
            // kept:
            "CARGO",
            "CARGO_HOME",
            "CARGO_MAKEFLAGS",
            "MAKEFLAGS",
            "MFLAGS",
            "RUSTC",
            "RUSTUP_TOOLCHAIN",
            "PATH",
            "HOME",
            "CARGO_NET_OFFLINE",
        ];
        let removed = env_vars_to_remove(env);
        assert_eq!(removed, &env[..17]);
    }

    #[test]
    fn target_dir_follows_cargo_target_dir() {
        let root = Path::new("/ws");
        assert_eq!(
            guest_target_dir(root, None),
            PathBuf::from("/ws/target/wasm-guests")
        );
        assert_eq!(
            guest_target_dir(root, Some(OsStr::new(""))),
            PathBuf::from("/ws/target/wasm-guests")
        );
        assert_eq!(
            guest_target_dir(root, Some(OsStr::new("/cache/t"))),
            PathBuf::from("/cache/t/wasm-guests")
        );
        assert_eq!(
            guest_target_dir(root, Some(OsStr::new("out"))),
            PathBuf::from("/ws/out/wasm-guests")
        );
    }

    #[test]
    fn artifact_uses_crate_name_with_underscores() {
        let package = GuestPackage::new("header-allowlist-proxywasm", "/x");
        assert_eq!(
            package.artifact_file_name(),
            "header_allowlist_proxywasm.wasm"
        );
        assert_eq!(
            artifact_path(Path::new("/t"), WASIP2, &package),
            PathBuf::from("/t/wasm32-wasip2/release/header_allowlist_proxywasm.wasm")
        );
    }

    #[test]
    fn rerun_directives_cover_lockfile_and_each_package() {
        let lines = build().rerun_directives();
        assert!(lines.contains(&"cargo:rerun-if-changed=/ws/Cargo.lock".to_owned()));
        assert!(lines.contains(&"cargo:rerun-if-changed=/ws/tests/fixtures/body/src".to_owned()));
        assert!(
            lines.contains(
                &"cargo:rerun-if-changed=/ws/tests/fixtures/headers/Cargo.toml".to_owned()
            )
        );
        // build.rs only when it exists (it does not under /ws).
        assert!(!lines.iter().any(|l| l.ends_with("build.rs")));
    }

    #[test]
    fn package_name_comes_from_the_package_table() {
        let manifest = "[lib]\nname = \"not_this\"\n\n[package]\nversion = \"1\"\nname = \"fixture-x\" # comment\n[dependencies]\nname = \"nor-this\"\n";
        assert_eq!(parse_package_name(manifest).as_deref(), Some("fixture-x"));
        assert_eq!(parse_package_name("[package]\nversion = \"1\"\n"), None);
        assert_eq!(parse_package_name("[dependencies]\nname = \"x\"\n"), None);
    }

    #[test]
    fn missing_target_is_recognised() {
        let stderr = "error[E0463]: can't find crate for `core`\n  = note: the `wasm32-wasip1` target may not be installed";
        assert!(looks_like_missing_target(stderr));
        assert!(!looks_like_missing_target("error: expected `;`"));

        let err = BuildError::Failed {
            target: WASIP1.to_owned(),
            packages: vec!["fixture-headers".to_owned()],
            target_missing: true,
            status: "exit status: 101".to_owned(),
            stderr: stderr.to_owned(),
        };
        let message = err.to_string();
        assert!(
            message.contains("rustup target add wasm32-wasip1"),
            "{message}"
        );
        assert!(message.contains("can't find crate for `core`"), "{message}");
    }

    #[test]
    fn generic_failure_names_packages_and_keeps_stderr() {
        let err = BuildError::Failed {
            target: WASIP1.to_owned(),
            packages: vec!["a".to_owned(), "b".to_owned()],
            target_missing: false,
            status: "exit status: 101".to_owned(),
            stderr: "error: expected `;`\n".to_owned(),
        };
        let message = err.to_string();
        assert!(message.contains("(a, b)"), "{message}");
        assert!(message.ends_with("error: expected `;`"), "{message}");
    }

    #[test]
    fn workspace_marker_is_detected() {
        assert!(declares_workspace("[workspace]\nmembers = []\n"));
        assert!(!declares_workspace(
            "[package]\nname = \"x\"\n[workspace.lints]\n"
        ));
    }

    #[test]
    fn copy_skips_identical_content() {
        let dir = std::env::temp_dir().join(format!("wasm-build-copy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let from = dir.join("a.wasm");
        let to = dir.join("b.wasm");
        fs::write(&from, b"\0asm one").unwrap();
        copy_if_changed(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"\0asm one");
        let before = fs::metadata(&to).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        copy_if_changed(&from, &to).unwrap();
        assert_eq!(fs::metadata(&to).unwrap().modified().unwrap(), before);
        fs::write(&from, b"\0asm two").unwrap();
        copy_if_changed(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"\0asm two");
        fs::remove_dir_all(&dir).unwrap();
    }
}
