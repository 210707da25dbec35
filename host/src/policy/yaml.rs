//! Reading a policy folder: its YAML files, split into documents.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::PolicyError;

/// Bounds on what one folder may make the waypoint read.
pub const MAX_FILES: usize = 1_024;
pub const MAX_FILE_BYTES: u64 = 8 << 20;
pub const MAX_DOCUMENTS_PER_FILE: usize = 10_000;

/// One document of a file: its 0-based index and its YAML text.
pub struct RawDocument {
    pub index: usize,
    pub text: String,
}

/// What the folder looks like, to notice changes without reading files.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The `*.yaml` / `*.yml` files directly in `dir`, sorted by name.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|e| PolicyError::ReadDir {
        dir: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    if files.len() > MAX_FILES {
        return Err(PolicyError::TooManyFiles {
            dir: dir.to_owned(),
            count: files.len(),
            limit: MAX_FILES,
        });
    }
    Ok(files)
}

pub fn fingerprint(dir: &Path) -> Fingerprint {
    let Ok(files) = policy_files(dir) else {
        return Vec::new();
    };
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (p, modified, len)
        })
        .collect()
}

pub fn read_documents(file: &Path) -> Result<Vec<RawDocument>, PolicyError> {
    let read_err = |reason: String| PolicyError::ReadFile {
        file: file.to_owned(),
        reason,
    };
    let len = std::fs::metadata(file)
        .map_err(|e| read_err(e.to_string()))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(read_err(format!(
            "{len} bytes is more than the {MAX_FILE_BYTES} a policy file may have"
        )));
    }
    let text = std::fs::read_to_string(file).map_err(|e| read_err(e.to_string()))?;
    let docs = split_documents(&text);
    if docs.len() > MAX_DOCUMENTS_PER_FILE {
        return Err(read_err(format!(
            "{} documents is more than the {MAX_DOCUMENTS_PER_FILE} a policy file may have",
            docs.len()
        )));
    }
    Ok(docs)
}

/// Splits a multi-document stream at `---` lines.
///
/// Done by hand rather than with the YAML parser's document iterator: that
/// iterator stops at the first syntax error, and one malformed document
/// must not hide the good ones after it. A `---` at the start of a line is
/// always a document marker in the block style Kubernetes YAML uses.
pub fn split_documents(text: &str) -> Vec<RawDocument> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut started = false;
    let push = |current: &mut String, docs: &mut Vec<RawDocument>| {
        let text = std::mem::take(current);
        docs.push(RawDocument {
            index: docs.len(),
            text,
        });
    };
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if marker {
            if started || !current.trim().is_empty() {
                push(&mut current, &mut docs);
            }
            started = true;
            // Content after the marker on the same line belongs to the document.
            current.push_str(bare[3..].trim_start());
            current.push('\n');
            continue;
        }
        if bare == "..." {
            continue;
        }
        current.push_str(line);
    }
    if !current.trim().is_empty() || (started && docs.is_empty()) {
        push(&mut current, &mut docs);
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers() {
        let text = "a: 1\n---\nb: 2\n--- # comment\nc: 3\n---\n";
        let docs = split_documents(text);
        let texts: Vec<&str> = docs.iter().map(|d| d.text.trim()).collect();
        assert_eq!(texts, ["a: 1", "b: 2", "# comment\nc: 3"]);
        assert_eq!(docs[2].index, 2);

        let leading = split_documents("---\na: 1\n---\nb: 2\n");
        assert_eq!(leading.len(), 2);
        assert_eq!(leading[0].text.trim(), "a: 1");

        // A `---` inside a value is not a marker.
        let inner = split_documents("a: |\n  ---\n  x\nb: 1\n");
        assert_eq!(inner.len(), 1);
    }
}
