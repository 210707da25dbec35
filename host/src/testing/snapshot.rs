//! Snapshots in insta's file format, so `cargo insta review` can show and
//! accept them: `<dir>/<suite>__<case>.snap` holds a YAML header
//! (`source`, `expression`) between `---` lines, then the outcome as YAML.
//! A changed outcome is written next to it as `.snap.new`, which is what
//! insta reviews; the accepted `.snap` is never overwritten by a run.

use std::path::{Path, PathBuf};

use super::Error;
use super::run::Outcome;

/// What a run did with one case's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Same as the accepted snapshot.
    Matched,
    /// There was none: it was written.
    Created(PathBuf),
    /// It differs: the new one waits for review at this path.
    Changed(PathBuf),
}

/// File-name safe: letters, digits, `-`, `_` and `.`; the rest become `_`.
pub fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').to_owned()
}

pub fn file_name(suite: &str, case: &str) -> String {
    format!("{}__{}.snap", slug(suite), slug(case))
}

/// The YAML body of a snapshot.
pub fn body(outcome: &Outcome) -> String {
    serde_norway::to_string(outcome).unwrap_or_else(|e| format!("error: {e}\n"))
}

/// A whole snapshot file.
pub fn render(source: &str, expression: &str, body: &str) -> String {
    format!(
        "---\nsource: {}\nexpression: {}\n---\n{}",
        yaml_scalar(source),
        yaml_scalar(expression),
        body
    )
}

fn yaml_scalar(s: &str) -> String {
    serde_norway::to_string(s)
        .map(|t| t.trim_end().to_owned())
        .unwrap_or_else(|_| format!("{s:?}"))
}

/// The contents of a snapshot file: what follows its header. Files without
/// insta's header are read whole.
pub fn contents(file: &str) -> &str {
    let Some(rest) = file.strip_prefix("---\n") else {
        return file;
    };
    match rest.find("\n---\n") {
        Some(end) => &rest[end + 5..],
        None => rest,
    }
}

/// insta compares snapshots without trailing whitespace at line ends and
/// the end.
fn normalized(s: &str) -> String {
    s.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_owned()
}

/// Compares `outcome` with the accepted snapshot in `dir`, writing it if
/// there is none and a `.snap.new` if it differs.
pub fn check(
    dir: &Path,
    suite: &str,
    case: &str,
    source: &str,
    outcome: &Outcome,
) -> Result<State, Error> {
    let path = dir.join(file_name(suite, case));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Snapshot { path, source }
    };
    let body = body(outcome);
    let expression = case.to_owned();
    let new_path = PathBuf::from(format!("{}.new", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(old) => {
            if normalized(contents(&old)) == normalized(&body) {
                let _ = std::fs::remove_file(&new_path);
                return Ok(State::Matched);
            }
            std::fs::write(&new_path, render(source, &expression, &body)).map_err(io(&new_path))?;
            Ok(State::Changed(new_path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            std::fs::write(&path, render(source, &expression, &body)).map_err(io(&path))?;
            Ok(State::Created(path))
        }
        Err(e) => Err(Error::Snapshot { path, source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes_in_insta_layout() {
        let file = render(
            "tests/suites/a.yaml",
            "alice reads",
            "verdict: allow\nstatus: 200\n",
        );
        assert!(
            file.starts_with("---\nsource: tests/suites/a.yaml\nexpression: alice reads\n---\n")
        );
        assert_eq!(contents(&file), "verdict: allow\nstatus: 200\n");
        assert_eq!(
            file_name("Store suite", "alice / reads"),
            "store_suite__alice_reads.snap"
        );
    }
}
