//! Embeds the WIT package from `../wit` into the `__wayplug_generate!` macro.
//!
//! `export_policy!` runs `wit_bindgen::generate!` inside the plugin's crate so
//! that the component's world (and so its exports) matches the hooks the plugin
//! declared. That macro only accepts WIT as a string literal, which a
//! `macro_rules!` macro can hand over only if the literal is written into its
//! body; this script writes that body.

use std::fmt::Write as _;
use std::path::Path;
use std::{env, fs};

const PACKAGE_LINE: &str = "package wayplug:policy@0.1.0;";

/// The interfaces the SDK's own bindings generate; the plugin's bindings reuse
/// them so that both crates agree on one set of Rust types.
const SHARED_INTERFACES: &[&str] = &["types", "log", "clock", "metrics", "kv", "config", "trace"];

fn main() {
    let wit_dir =
        Path::new(&env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("..")
            .join("wit");
    println!("cargo:rerun-if-changed={}", wit_dir.display());

    let mut files: Vec<_> = fs::read_dir(&wit_dir)
        .unwrap_or_else(|e| panic!("cannot read the WIT folder {}: {e}", wit_dir.display()))
        .map(|entry| entry.expect("readable WIT folder entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wit"))
        .collect();
    files.sort();

    // One inline document can declare its package only once, so each file's
    // own declaration is dropped and a single one leads the joined text.
    let mut wit = format!("{PACKAGE_LINE}\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let text = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let mut seen_package = false;
        for line in text.lines() {
            if line.trim() == PACKAGE_LINE {
                seen_package = true;
            } else {
                wit.push_str(line);
                wit.push('\n');
            }
        }
        assert!(
            seen_package,
            "{} must start with `{PACKAGE_LINE}`: the SDK joins the files of that one package",
            file.display()
        );
    }

    let mut with = String::new();
    for name in SHARED_INTERFACES {
        writeln!(
            with,
            "\"wayplug:policy/{name}@0.1.0\": ::wayplug_sdk::__private::bindings::wayplug::policy::{name},"
        )
        .expect("writing to a String cannot fail");
    }

    let source = format!(
        r#"/// Generates the component bindings for one world of `wayplug:policy` in the
/// plugin's crate, sharing the SDK's types and imports.
#[doc(hidden)]
#[macro_export]
macro_rules! __wayplug_generate {{
    ($world:tt) => {{
        $crate::__private::wit_bindgen::generate!({{
            inline: {wit:?},
            world: $world,
            runtime_path: "::wayplug_sdk::__private::wit_bindgen::rt",
            with: {{
                {with}
            }},
        }});
    }};
}}
"#
    );
    let out =
        Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("generate_macro.rs");
    fs::write(&out, source).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
