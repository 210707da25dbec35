//! `--against`: the same cases through a second config or policy folder,
//! and every case whose decision changed.

use std::path::Path;

use serde::Serialize;

use super::run::{CaseResult, Outcome, Replace, decisions_text};

/// What to compare against: a folder replaces the suite's `policyDir`, a
/// file replaces its config.
pub type Other = Replace;

impl Replace {
    pub fn from_path(p: &Path) -> Replace {
        if p.is_dir() {
            Replace::PolicyDir(p.to_owned())
        } else {
            Replace::Config(p.to_owned())
        }
    }
}

/// A case decided differently by the other config.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub name: String,
    pub before: String,
    pub after: String,
}

/// The parts of an outcome a rollout cares about: verdict, status, who
/// answered, which policies and rules decided, where the request went.
pub fn summary(o: &Outcome) -> String {
    let mut s = format!("{} {}", o.verdict, o.status);
    if let Some(by) = &o.decided_by {
        s.push_str(&format!(" by {by}"));
    }
    s.push_str(&format!(" {}", decisions_text(&o.decisions)));
    if let Some(u) = &o.upstream {
        s.push_str(&format!(" -> {}{}", u.service, u.path));
    }
    if let Some(e) = &o.error {
        s.push_str(&format!(" ({e})"));
    }
    s
}

pub fn changes(before: &[CaseResult], after: &[CaseResult]) -> Vec<Change> {
    before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| {
            let (sb, sa) = (summary(&b.outcome), summary(&a.outcome));
            (sb != sa).then(|| Change {
                name: b.name.clone(),
                before: sb,
                after: sa,
            })
        })
        .collect()
}
