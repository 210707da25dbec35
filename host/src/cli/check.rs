//! `wayplug check`: loads a config the way `run` does (every plugin read,
//! verified, compiled, instantiated and configured; the policy folder
//! turned into chains) and reports, without listening on anything.
//!
//! Two uses: a CI step that refuses a config before it reaches a waypoint,
//! and an image build that fills the compiled-plugin cache (`--cache-dir`),
//! so that the first start of a pod compiles nothing it was shipped with.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::app;
use crate::config::Config;
use crate::plugin::registry::{Builtins, Installed};

/// Loads a config as `run` would and reports its chains, without serving.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// Keep compiled plugins in DIR (instead of the config's `cacheDir`):
    /// a later `run` with that `cacheDir` starts without compiling them.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// What one check found: the text report, and whether the config is fit
/// to serve (every plugin loaded and every policy resource accepted).
pub struct Checked {
    pub report: String,
    pub ok: bool,
}

/// Loads `args.config` with `builtins`. A config that cannot load at all
/// is an error naming what was wrong; refused policy resources are listed
/// in the report and make it not ok.
pub async fn check(args: &CheckArgs, builtins: Builtins) -> anyhow::Result<Checked> {
    let mut config = Config::load(&args.config)?;
    if let Some(dir) = &args.cache_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --cache-dir {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("--cache-dir {}", dir.display()))?;
        config.cache_dir = Some(dir);
    }
    // What a check compiles is what it validates and, with a cache, what
    // later starts load: the code plugins run on, not the baseline tier.
    config.sandbox.compiler = crate::config::Compiler::Optimizing;
    let cache = config.cache_dir();
    let started = Instant::now();
    let loaded = app::load(&config, builtins).await?;
    let took = started.elapsed();
    let installed = loaded.registry.current();
    let errors = loaded.policies.errors();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: loaded in {} ms",
        args.config.display(),
        took.as_millis()
    );
    describe_chains(&mut out, &installed);
    let modules = loaded.registry.modules();
    let _ = write!(
        out,
        "modules: {} compiled, {} read from the cache, {} shared with another entry",
        modules.made("compiled"),
        modules.made("disk"),
        modules.made("memory"),
    );
    match &cache {
        Some(dir) => {
            let _ = writeln!(out, " (cacheDir {})", dir.display());
        }
        None => {
            let _ = writeln!(out, " (no cacheDir: nothing kept)");
        }
    }
    for e in &errors {
        let _ = writeln!(out, "policy refused: {e}");
    }
    Ok(Checked {
        report: out,
        ok: errors.is_empty(),
    })
}

fn describe_chains(out: &mut String, installed: &Installed) {
    let mut namespaces: Vec<_> = installed.chains.iter().collect();
    namespaces.sort_by(|a, b| a.0.cmp(b.0));
    for (namespace, chain) in namespaces {
        let _ = writeln!(
            out,
            "namespace {namespace}: {} plugin(s)",
            chain.plugins.len()
        );
        for p in &chain.plugins {
            let short = p.sha256.get(..12).unwrap_or(&p.sha256);
            let _ = writeln!(
                out,
                "  {} ({}, {}) sha256:{short} {} bytes, {} ms",
                p.name(),
                p.kind_name(),
                p.spec.url,
                p.size,
                p.loaded.took.as_millis(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtins() -> Builtins {
        crate::demo::builtins()
    }

    fn temp_dir(name: &str) -> tempfile::TempDir {
        // Removed when dropped, also when the test fails.
        tempfile::Builder::new()
            .prefix(&format!("wayplug-check-{name}-"))
            .tempdir()
            .unwrap()
    }

    /// A config whose policy folder holds one AuthorizationPolicy in `shop`.
    fn write_config(dir: &std::path::Path, name: &str, spec: &str) -> PathBuf {
        let policy = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{ name: {name}, namespace: shop }}\nspec: {spec}\n"
        );
        std::fs::write(dir.join("policy.yaml"), policy).unwrap();
        let path = dir.join("wayplug.yaml");
        std::fs::write(
            &path,
            "listeners: { http: null, admin: null }\npolicyDir: .\n\
             services:\n- { name: api, namespace: shop, hostname: api.shop, ports: { 80: 8080 } }\n",
        )
        .unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_fills_the_cache_a_second_check_compiles_nothing() {
        let dir_guard = temp_dir("fill");
        let dir = dir_guard.path();
        let config = write_config(
            dir,
            "allow-get",
            "{ rules: [ { to: [ { operation: { methods: [GET] } } ] } ] }",
        );
        let args = CheckArgs {
            config,
            cache_dir: Some(dir.join("cache")),
        };
        let first = check(&args, builtins()).await.unwrap();
        assert!(first.ok, "{}", first.report);
        assert!(
            first.report.contains("namespace shop: 1 plugin(s)"),
            "{}",
            first.report
        );
        assert!(
            first
                .report
                .contains("modules: 1 compiled, 0 read from the cache"),
            "{}",
            first.report
        );
        let second = check(&args, builtins()).await.unwrap();
        assert!(
            second
                .report
                .contains("modules: 0 compiled, 1 read from the cache"),
            "{}",
            second.report
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_policy_resource_makes_the_check_fail_and_is_named() {
        let dir_guard = temp_dir("refused");
        let dir = dir_guard.path();
        let config = write_config(dir, "broken", "{ action: MAYBE }");
        let args = CheckArgs {
            config,
            cache_dir: None,
        };
        let checked = check(&args, builtins()).await.unwrap();
        assert!(!checked.ok, "{}", checked.report);
        assert!(
            checked.report.contains("policy refused:"),
            "{}",
            checked.report
        );
        assert!(checked.report.contains("broken"), "{}", checked.report);
        assert!(checked.report.contains("no cacheDir"), "{}", checked.report);
    }

    #[tokio::test]
    async fn a_config_that_cannot_load_is_an_error_naming_the_file() {
        let dir_guard = temp_dir("bad");
        let dir = dir_guard.path();
        let path = dir.join("wayplug.yaml");
        std::fs::write(&path, "listeners: { http: nonsense }\n").unwrap();
        let args = CheckArgs {
            config: path,
            cache_dir: None,
        };
        let err = check(&args, builtins()).await.err().expect("refused");
        assert!(format!("{err:#}").contains("wayplug.yaml"), "{err:#}");
    }
}
