//! `wayplug new NAME`: a plugin crate that builds, passes `cargo test` and
//! passes `wayplug test suite.yaml` as generated. The templates are in the
//! binary; a component crate depends on `wayplug-sdk` by path (`--sdk-path`,
//! by default the SDK of the checkout this binary was built from).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Abi {
    /// A `wayplug:policy` component written with wayplug-sdk (wasm32-wasip2).
    Component,
    /// A Proxy-Wasm 0.2.1 module written with the proxy-wasm crate (wasm32-wasip1).
    ProxyWasm,
}

/// Creates a plugin crate.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The crate's name (lowercase letters, digits and `-`).
    pub name: String,
    #[arg(long, value_enum, default_value = "component")]
    pub abi: Abi,
    /// Where to create it (default: ./NAME). Must not exist yet.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The wayplug-sdk the crate depends on (component ABI).
    #[arg(long, default_value = default_sdk_path())]
    pub sdk_path: PathBuf,
}

/// The SDK next to the host crate this binary was built from.
pub const fn default_sdk_path() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk")
}

const COMPONENT: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("templates/component/Cargo.toml.tmpl"),
    ),
    (
        "src/lib.rs",
        include_str!("templates/component/lib.rs.tmpl"),
    ),
    (
        "suite.yaml",
        include_str!("templates/component/suite.yaml.tmpl"),
    ),
    (
        "waypoint.yaml",
        include_str!("templates/component/waypoint.yaml.tmpl"),
    ),
    (
        "README.md",
        include_str!("templates/component/README.md.tmpl"),
    ),
    (".gitignore", "/target\n"),
];

const PROXY_WASM: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("templates/proxy-wasm/Cargo.toml.tmpl"),
    ),
    (
        "src/lib.rs",
        include_str!("templates/proxy-wasm/lib.rs.tmpl"),
    ),
    (
        "suite.yaml",
        include_str!("templates/proxy-wasm/suite.yaml.tmpl"),
    ),
    (
        "waypoint.yaml",
        include_str!("templates/proxy-wasm/waypoint.yaml.tmpl"),
    ),
    (
        "README.md",
        include_str!("templates/proxy-wasm/README.md.tmpl"),
    ),
    (".gitignore", "/target\n"),
];

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// The files of a new crate, with its name and SDK path filled in.
pub fn files(name: &str, abi: Abi, sdk: &Path) -> Vec<(&'static str, String)> {
    let templates = match abi {
        Abi::Component => COMPONENT,
        Abi::ProxyWasm => PROXY_WASM,
    };
    let crate_name = name.replace('-', "_");
    // TOML basic strings: backslashes and quotes escaped.
    let sdk = sdk
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    templates
        .iter()
        .map(|(path, text)| {
            let text = text
                .replace("{{name}}", name)
                .replace("{{crate}}", &crate_name)
                .replace("{{sdk}}", &sdk);
            (*path, text)
        })
        .collect()
}

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    if !valid_name(&args.name) {
        bail!(
            "`{}` is not a crate name: lowercase letters, digits and `-`, starting with a letter",
            args.name
        );
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        bail!("{} already exists; choose another --dir", dir.display());
    }
    let sdk = std::path::absolute(&args.sdk_path).unwrap_or(args.sdk_path.clone());
    if args.abi == Abi::Component && !sdk.join("Cargo.toml").is_file() {
        bail!(
            "--sdk-path {}: no wayplug-sdk there (no Cargo.toml)",
            sdk.display()
        );
    }
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    for (path, text) in files(&args.name, args.abi, &sdk) {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    let (target, how) = match args.abi {
        Abi::Component => ("wasm32-wasip2", "component"),
        Abi::ProxyWasm => ("wasm32-wasip1", "Proxy-Wasm plugin"),
    };
    println!(
        "created {how} {} in {}\n  cd {}\n  cargo test\n  cargo build --release --target {target}\n  wayplug test suite.yaml",
        args.name,
        dir.display(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_filled_in() {
        assert!(valid_name("my-policy2"));
        for bad in ["", "My", "1a", "a_b", "a-", "a b", "../x"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let files = files("my-policy", Abi::Component, Path::new("/sdk"));
        let cargo = &files.iter().find(|(p, _)| *p == "Cargo.toml").unwrap().1;
        assert!(cargo.contains("name = \"my-policy\""), "{cargo}");
        assert!(cargo.contains("path = \"/sdk\""), "{cargo}");
        for (path, text) in &files {
            assert!(!text.contains("{{"), "{path} has an unfilled placeholder");
        }
    }
}
