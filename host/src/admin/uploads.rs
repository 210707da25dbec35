//! Plugin bytes uploaded through the admin API, kept as files the registry
//! reads like any `file://` plugin (it re-reads them on refresh and watches
//! them, so they need a path).
//!
//! Invariants:
//! - A file is named by its content's sha256 and the entry is pinned to it,
//!   so a file is never rewritten with other bytes under a name in use.
//! - Only one API change at a time writes, applies and sweeps ([`Uploads::change`]):
//!   a sweep never removes a file another change has written but not yet
//!   installed.
//! - A sweep removes every upload the config in force no longer names (the
//!   entry was replaced or removed, through the API or by a config reload,
//!   which replaces API changes). Without a `cacheDir` the folder is the
//!   process's own and is removed at shutdown.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot keep the uploaded plugin in {path}: {reason}")]
    Write { path: String, reason: String },
}

#[derive(Debug)]
pub struct Uploads {
    dir: PathBuf,
    /// The folder is ours alone (no `cacheDir`): removed at shutdown.
    temporary: bool,
    changing: tokio::sync::Mutex<()>,
}

impl Uploads {
    /// `<cacheDir>/uploads`, or a private folder under the system's
    /// temporary folder. Created with the first upload.
    pub fn new(config: &Config) -> Uploads {
        let (dir, temporary) = match config.cache_dir() {
            Some(cache) => (cache.join("uploads"), false),
            None => {
                // One folder per waypoint: waypoints sharing a process
                // (tests, `wayplug test`) never sweep each other's uploads.
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let name = format!("wayplug-uploads-{}-{n}", std::process::id());
                (std::env::temp_dir().join(name), true)
            }
        };
        Uploads::at(dir, temporary)
    }

    pub(super) fn at(dir: PathBuf, temporary: bool) -> Uploads {
        Uploads {
            dir,
            temporary,
            changing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Held by one API change from its first upload to its sweep.
    pub async fn change(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changing.lock().await
    }

    /// Writes `bytes` as `<sha256>.wasm` (kept if it is there already with
    /// these bytes) and returns its path.
    pub fn keep(&self, sha256: &str, bytes: &[u8]) -> Result<PathBuf, Error> {
        let failed = |path: &Path, e: std::io::Error| Error::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| failed(&self.dir, e))?;
        let file = self.dir.join(format!("{sha256}.wasm"));
        if std::fs::read(&file).is_ok_and(|b| b == bytes) {
            return Ok(file);
        }
        let tmp = self.dir.join(format!(".{sha256}.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| failed(&file, e))?;
        Ok(file)
    }

    /// Removes the uploads `config` (the one in force) does not name.
    /// Returns how many were removed.
    pub fn sweep(&self, config: &Config) -> usize {
        let named = named_files(config);
        let Ok(list) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in list.flatten() {
            let path = entry.path();
            let ours = path.extension().is_some_and(|e| e == "wasm")
                || path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"));
            if !ours || named.contains(&path) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an unused upload")
                }
            }
        }
        removed
    }

    /// At shutdown: the process's own folder goes with it.
    pub fn close(&self) {
        if !self.temporary {
            return;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.dir.display(), error = %e, "cannot remove the uploads folder")
            }
        }
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.close();
    }
}

/// Every plugin file the config reads, serving versions and shadow candidates.
fn named_files(config: &Config) -> HashSet<PathBuf> {
    config
        .namespaces
        .values()
        .flat_map(|ns| &ns.plugins)
        .flat_map(|p| std::iter::once(&p.url).chain(p.shadow.as_ref().map(|s| &s.url)))
        .filter_map(|url| url.resolve_file(&config.base_dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, yaml: &str) -> Config {
        Config::from_yaml(yaml, "test.yaml", dir).unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wayplug-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn unused_uploads_are_removed_and_the_temporary_folder_at_close() {
        let base = scratch("uploads-sweep");
        let none = config(&base, "namespaces: {}\n");
        let (one, two) = (Uploads::new(&none), Uploads::new(&none));
        assert!(one.temporary, "no cacheDir: a folder of our own");
        assert_ne!(one.dir(), two.dir(), "one per waypoint");
        let uploads = Uploads::at(base.join("uploads"), true);
        let _change = uploads.change().await;
        let a = uploads.keep(&"a".repeat(64), b"\0asm\x01\0\0\0a").unwrap();
        let b = uploads.keep(&"b".repeat(64), b"\0asm\x01\0\0\0b").unwrap();
        assert_eq!(a.parent(), Some(uploads.dir()));
        // A leftover of a write that failed half way is ours too.
        let tmp = uploads.dir().join(format!(".{}.tmp", "c".repeat(64)));
        std::fs::write(&tmp, b"half").unwrap();
        // A file someone else put there is left alone.
        let other = uploads.dir().join("notes.txt");
        std::fs::write(&other, b"keep").unwrap();

        let keeps_a = config(
            &base,
            &format!(
                "namespaces:\n  ns:\n    plugins:\n      - name: p\n        url: file://{}\n",
                a.display()
            ),
        );
        assert_eq!(uploads.sweep(&keeps_a), 2, "b and the half-written file");
        assert!(a.exists(), "named by the config in force");
        assert!(!b.exists() && !tmp.exists());
        assert!(other.exists());

        assert_eq!(uploads.sweep(&none), 1, "the entry was removed");
        assert!(!a.exists());

        uploads.close();
        assert!(!uploads.dir().exists(), "removed at shutdown");
        uploads.close();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_cache_dir_keeps_its_uploads_folder_at_close() {
        let base = scratch("uploads-cache");
        let cfg = config(&base, "cacheDir: cache\nnamespaces: {}\n");
        let uploads = Uploads::new(&cfg);
        assert_eq!(uploads.dir(), base.join("cache/uploads"));
        uploads.keep(&"d".repeat(64), b"x").unwrap();
        uploads.close();
        assert!(
            uploads.dir().exists(),
            "the operator's folder is not ours to remove"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
