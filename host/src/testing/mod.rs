//! Policy suites: requests in, decisions out, run offline through the same
//! [`Pipeline::handle`](crate::http::Pipeline::handle) the proxy uses.
//!
//! A suite file (YAML) names a waypoint config (and optionally a policy
//! folder and extra plugin entries) and a list of cases. Each case is a
//! request with optional expectations. [`OfflineWaypoint`] loads the config
//! through the same config loader, policy loader, registry and plugins as
//! `wayplug run`, and answers every request that gets through the chain from
//! an in-process upstream that records what it received, so a suite that
//! passes means the proxy decides the same.
//!
//! Plugin authors can run a suite from `cargo test` and snapshot the
//! decisions with insta:
//!
//! ```no_run
//! # async fn t() -> Result<(), wayplug::testing::Error> {
//! use wayplug::testing::{OfflineWaypoint, Suite};
//!
//! let suite = Suite::load("tests/suites/store.yaml".as_ref())?;
//! let waypoint = std::sync::Arc::new(OfflineWaypoint::build(&suite, None).await?);
//! for result in waypoint.run(&suite.cases, 8).await {
//!     assert!(result.mismatches.is_empty(), "{}", result.name);
//!     // insta::assert_yaml_snapshot!(result.name.clone(), result.outcome);
//! }
//! # Ok(()) }
//! ```

pub mod against;
pub mod coverage;
pub mod expand;
pub mod recorded;
pub mod report;
pub mod run;
pub mod snapshot;
pub mod suite;

use std::path::PathBuf;

pub use against::{Change, Other};
pub use coverage::{Coverage, RuleId};
pub use run::{CaseResult, Mismatch, OfflineWaypoint, Outcome};
pub use suite::{Case, Suite};

/// Everything that can keep a suite from running, written for the person
/// who wrote the suite.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("suite {}: not valid YAML: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    /// A field of the suite (or of one case) is wrong.
    #[error("suite {}{}: field `{field}`: {message}", path.display(), case.as_ref().map(|c| format!(", {c}")).unwrap_or_default())]
    Field {
        path: PathBuf,
        /// `case 3 ("alice reads")`.
        case: Option<String>,
        field: String,
        message: String,
    },
    #[error("suite {}: config {}: {source}", suite.display(), config.display())]
    Config {
        suite: PathBuf,
        config: PathBuf,
        source: Box<crate::config::Error>,
    },
    #[error("suite {}: policies refused: {}", suite.display(), errors.join("; "))]
    Policies { suite: PathBuf, errors: Vec<String> },
    #[error("suite {}: {source}", suite.display())]
    Plugin {
        suite: PathBuf,
        source: Box<crate::plugin::Error>,
    },
    #[error("snapshot {}: {source}", path.display())]
    Snapshot {
        path: PathBuf,
        source: std::io::Error,
    },
}
