//! Reports of a run: compact text for people (with `--explain`, each
//! decision's policy and rule, or why none matched), JSON, and JUnit XML
//! for CI.

use std::fmt::Write;

use serde::Serialize;

use super::against::{Change, summary};
use super::coverage::Coverage;
use super::run::CaseResult;

/// One suite's results, as every format reports them.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub suite: String,
    pub file: String,
    pub cases: Vec<CaseResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<Change>>,
    /// Snapshot problems (`name: changed, see PATH`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
}

impl SuiteReport {
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed()).count()
    }
}

/// Compact text: one line per case, the diff of each failure under it.
pub fn text(r: &SuiteReport, explain: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "suite {} ({})", r.suite, r.file);
    for c in &r.cases {
        let mark = if c.passed() { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "{mark} {}: {}", c.name, summary(&c.outcome));
        for m in &c.mismatches {
            let _ = writeln!(
                out,
                "       {}: expected {}, got {}",
                m.field, m.expected, m.actual
            );
        }
        if explain {
            explain_case(&mut out, c);
        }
    }
    for s in &r.snapshots {
        let _ = writeln!(out, "snapshot {s}");
    }
    if let Some(cov) = &r.coverage {
        let _ = writeln!(
            out,
            "coverage: {}/{} rules exercised ({:.1}%)",
            cov.covered.len(),
            cov.total,
            cov.percent()
        );
        for m in &cov.missed {
            let _ = writeln!(out, "  not exercised: {m}");
        }
    }
    if let Some(changes) = &r.changes {
        let _ = writeln!(out, "{} case(s) decided differently:", changes.len());
        for ch in changes {
            let _ = writeln!(
                out,
                "  {}:\n    before: {}\n    after:  {}",
                ch.name, ch.before, ch.after
            );
        }
    }
    let failed = r.failed();
    let _ = writeln!(
        out,
        "{}: {} passed, {} failed",
        r.suite,
        r.cases.len() - failed,
        failed
    );
    out
}

fn explain_case(out: &mut String, c: &CaseResult) {
    if let Some(e) = &c.outcome.error {
        let _ = writeln!(out, "       why: {e}");
        return;
    }
    if c.outcome.decisions.is_empty() {
        let _ = writeln!(
            out,
            "       why: no plugin recorded a decision{}",
            match &c.outcome.decided_by {
                Some(by) => format!("; {by} answered locally"),
                None => String::new(),
            }
        );
    }
    for d in &c.outcome.decisions {
        let who = if d.policy.is_empty() {
            "no single policy".to_owned()
        } else {
            match d.rule {
                Some(r) => format!("{} rule {r}", d.policy),
                None => d.policy.clone(),
            }
        };
        let detail = if d.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", d.detail)
        };
        let _ = writeln!(
            out,
            "       why: [{}] {who} -> {}{detail}",
            d.plugin, d.outcome
        );
    }
}

pub fn json(reports: &[SuiteReport]) -> String {
    #[derive(Serialize)]
    struct All<'a> {
        suites: &'a [SuiteReport],
        passed: usize,
        failed: usize,
    }
    let failed: usize = reports.iter().map(SuiteReport::failed).sum();
    let total: usize = reports.iter().map(|r| r.cases.len()).sum();
    serde_json::to_string_pretty(&All {
        suites: reports,
        passed: total - failed,
        failed,
    })
    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// XML text with the five special characters escaped. Written by hand:
/// JUnit's format is a handful of elements and the only rule that matters
/// is escaping, which does not justify an XML crate.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => {}
            c => out.push(c),
        }
    }
    out
}

pub fn junit(reports: &[SuiteReport]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for r in reports {
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">",
            esc(&r.suite),
            r.cases.len(),
            r.failed()
        );
        for c in &r.cases {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\"",
                esc(&r.suite),
                esc(&c.name)
            );
            if c.passed() {
                out.push_str("/>\n");
                continue;
            }
            let diff: Vec<String> = c
                .mismatches
                .iter()
                .map(|m| format!("{}: expected {}, got {}", m.field, m.expected, m.actual))
                .collect();
            let _ = writeln!(
                out,
                ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                esc(&diff.first().cloned().unwrap_or_default()),
                esc(&diff.join("\n"))
            );
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}
