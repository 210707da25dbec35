//! The `wayplug test`, `wayplug check`, `wayplug record` and `wayplug new`
//! commands. They
//! are tools around the proxy, not the proxy: they log to stderr (warnings
//! only unless `RUST_LOG` says otherwise) so their own output stays
//! machine-readable.

pub mod check;
pub mod new;
pub mod record;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};

pub use check::CheckArgs;
pub use new::NewArgs;
pub use record::RecordArgs;

use crate::testing::report::{self, SuiteReport};
use crate::testing::{OfflineWaypoint, Other, Suite, against, coverage, snapshot};

/// Cases run at once unless `--jobs` says otherwise.
pub const DEFAULT_JOBS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Junit,
}

/// Runs policy suites offline through the proxy's own pipeline.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Suite files (YAML).
    #[arg(required = true)]
    pub suites: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// For each case, which policy and rule decided, or why none did.
    #[arg(long)]
    pub explain: bool,
    /// List the AuthorizationPolicy and HTTPRoute rules no case exercised.
    #[arg(long)]
    pub coverage: bool,
    /// Fail when fewer than this percent of the rules were exercised.
    #[arg(long, value_name = "PERCENT")]
    pub min_coverage: Option<f64>,
    /// Compare each case's outcome with its snapshot in DIR (insta's
    /// format; new ones are written, changed ones go to `.snap.new`).
    #[arg(long, value_name = "DIR")]
    pub snapshot: Option<PathBuf>,
    /// Run the same cases against this config file or policy folder and
    /// list every case whose decision changed.
    #[arg(long, value_name = "CONFIG_OR_DIR")]
    pub against: Option<PathBuf>,
    /// Cases run at once.
    #[arg(long, default_value_t = DEFAULT_JOBS)]
    pub jobs: usize,
}

/// The commands of this module, as `main` hands them over.
pub enum Tool {
    Test(TestArgs),
    Check(CheckArgs),
    Record(RecordArgs),
    New(NewArgs),
}

/// Runs a tool to completion. A suite with failures exits with status 1
/// after its report is printed.
pub fn run(tool: Tool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
    match tool {
        Tool::New(args) => new::run(args),
        Tool::Check(args) => {
            let checked = runtime()?.block_on(check::check(&args, crate::demo::builtins()))?;
            print!("{}", checked.report);
            if !checked.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Tool::Record(args) => runtime()?.block_on(record::run(args)),
        Tool::Test(args) => {
            let ok = runtime()?.block_on(test(&args))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs every suite and prints the report; `false` when anything failed.
pub async fn test(args: &TestArgs) -> anyhow::Result<bool> {
    let mut reports = Vec::new();
    let mut ok = true;
    for path in &args.suites {
        let (report, passed) = test_one(path, args).await?;
        ok &= passed;
        if args.format == Format::Text {
            print!("{}", report::text(&report, args.explain));
        }
        reports.push(report);
    }
    match args.format {
        Format::Text => {}
        Format::Json => println!("{}", report::json(&reports)),
        Format::Junit => print!("{}", report::junit(&reports)),
    }
    Ok(ok)
}

async fn test_one(path: &std::path::Path, args: &TestArgs) -> anyhow::Result<(SuiteReport, bool)> {
    let suite = Suite::load(path)?;
    let waypoint = Arc::new(OfflineWaypoint::build(&suite, None).await?);
    let cases = waypoint.run(&suite.cases, args.jobs).await;
    let mut passed = cases.iter().all(|c| c.passed());
    let coverage = if args.coverage || args.min_coverage.is_some() {
        let all = coverage::rules(&waypoint.namespaces);
        let cov = coverage::coverage(&all, &cases);
        if let Some(min) = args.min_coverage
            && cov.percent() < min
        {
            passed = false;
            eprintln!(
                "suite {}: coverage {:.1}% is below --min-coverage {min}",
                suite.name,
                cov.percent()
            );
        }
        Some(cov)
    } else {
        None
    };
    let changes = match &args.against {
        None => None,
        Some(other) => {
            let other = Other::from_path(other);
            let b = Arc::new(
                OfflineWaypoint::build(&suite, Some(&other))
                    .await
                    .with_context(|| format!("loading --against {other:?}"))?,
            );
            let after = b.run(&suite.cases, args.jobs).await;
            Some(against::changes(&cases, &after))
        }
    };
    let mut snapshots = Vec::new();
    if let Some(dir) = &args.snapshot {
        let source = path.display().to_string();
        for c in &cases {
            match snapshot::check(dir, &suite.name, &c.name, &source, &c.outcome)? {
                snapshot::State::Matched => {}
                snapshot::State::Created(p) => {
                    snapshots.push(format!("{}: written to {}", c.name, p.display()))
                }
                snapshot::State::Changed(p) => {
                    passed = false;
                    snapshots.push(format!(
                        "{}: changed; review {} (cargo insta review)",
                        c.name,
                        p.display()
                    ));
                }
            }
        }
    }
    let report = SuiteReport {
        suite: suite.name.clone(),
        file: path.display().to_string(),
        cases,
        coverage,
        changes,
        snapshots,
    };
    Ok((report, passed))
}
