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
//! - A process that never reached shutdown (killed) leaves its folder
//!   behind; the first waypoint of a later process removes it
//!   ([`sweep_dead`]). The process holds a lock on the folder's `.lock`
//!   from its creation on, which the kernel drops when the process dies,
//!   whatever kills it; a folder is removed only when that lock can be
//!   taken. A folder without the lock file yet (being created, or left by
//!   an earlier version) goes by its name, the process's id and start
//!   time: removed when no process with that id runs, or the one that does
//!   started at another time (the id was reused).

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
    /// Held while the temporary folder exists: it says we still run.
    alive: std::sync::Mutex<Option<std::fs::File>>,
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
                static SWEPT: std::sync::Once = std::sync::Once::new();
                let tmp = std::env::temp_dir();
                SWEPT.call_once(|| {
                    let removed = sweep_dead(&tmp, Path::new(PROC));
                    if removed > 0 {
                        tracing::info!(
                            removed,
                            "removed the upload folders of processes that no longer run"
                        );
                    }
                });
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let pid = std::process::id();
                let started = start_time(Path::new(PROC), pid).unwrap_or(0);
                let name = format!("{PREFIX}{pid}-{started}-{n}");
                (tmp.join(name), true)
            }
        };
        Uploads::at(dir, temporary)
    }

    pub(super) fn at(dir: PathBuf, temporary: bool) -> Uploads {
        Uploads {
            dir,
            temporary,
            changing: tokio::sync::Mutex::new(()),
            alive: std::sync::Mutex::new(None),
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
        if self.temporary {
            self.hold_lock()
                .map_err(|e| failed(&self.dir.join(LOCK), e))?;
        }
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

    /// Takes the lock that keeps other processes' sweeps away, once.
    fn hold_lock(&self) -> std::io::Result<()> {
        let mut alive = self.alive.lock().unwrap_or_else(|e| e.into_inner());
        if alive.is_none() {
            let file = std::fs::File::create(self.dir.join(LOCK))?;
            file.try_lock().map_err(std::io::Error::from)?;
            *alive = Some(file);
        }
        Ok(())
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

const PREFIX: &str = "wayplug-uploads-";
const LOCK: &str = ".lock";
const PROC: &str = "/proc";

/// When process `pid` started (clock ticks since boot, field 22 of
/// `/proc/<pid>/stat`), `None` when it does not run.
fn start_time(proc: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count the fields after its closing one (field 3 is the state).
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Removes the upload folders in `tmp` of processes that no longer run,
/// as `proc` (the `/proc` file system) tells. Folders of running
/// processes, and everything when `proc` cannot say, stay. Returns how
/// many were removed.
fn sweep_dead(tmp: &Path, proc: &Path) -> usize {
    if start_time(proc, std::process::id()).is_none() {
        return 0;
    }
    let Ok(list) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let mut removed = 0;
    for entry in list.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        // `<pid>-<start>-<n>`, or `<pid>-<n>` and `<pid>` from earlier
        // versions (no start time: alive while the id is).
        let parts: Vec<u64> = match rest.split('-').map(str::parse).collect() {
            Ok(p) => p,
            Err(_) => continue,
        };
        let (pid, started) = match parts[..] {
            [pid, started, _] => (pid, Some(started)),
            [pid, _] | [pid] => (pid, None),
            _ => continue,
        };
        let Ok(pid) = u32::try_from(pid) else {
            continue;
        };
        let path = entry.path();
        let alive = match std::fs::File::open(path.join(LOCK)) {
            // The kernel drops a dead process's lock.
            Ok(lock) => match lock.try_lock() {
                Ok(()) => false,
                Err(std::fs::TryLockError::WouldBlock) => true,
                Err(std::fs::TryLockError::Error(_)) => true,
            },
            Err(_) => match (start_time(proc, pid), started) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(now), Some(then)) => now == then,
            },
        };
        if alive {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the uploads folder of a process that no longer runs")
            }
        }
    }
    removed
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

    fn scratch(name: &str) -> tempfile::TempDir {
        // Removed when dropped, also when the test fails.
        tempfile::Builder::new()
            .prefix(&format!("wayplug-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[tokio::test]
    async fn unused_uploads_are_removed_and_the_temporary_folder_at_close() {
        let base_guard = scratch("uploads-sweep");
        let base = base_guard.path();
        let none = config(base, "namespaces: {}\n");
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
            base,
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
    }

    #[test]
    fn folders_of_processes_that_no_longer_run_are_swept() {
        let tmp = tempfile::Builder::new()
            .prefix("wayplug-uploads-sweep-")
            .tempdir()
            .unwrap();
        let proc = Path::new(PROC);
        let me = std::process::id();
        let started = start_time(proc, me).expect("this process runs");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert_eq!(start_time(proc, dead), None);

        let folder = |name: String| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("x.wasm"), b"x").unwrap();
            d
        };
        let gone = [
            folder(format!("{PREFIX}{dead}-{started}-0")),
            folder(format!("{PREFIX}{dead}-3")),
            folder(format!("{PREFIX}{dead}")),
            // Our id, another start time: the id was reused.
            folder(format!("{PREFIX}{me}-{}-0", started + 1)),
        ];
        let kept = [
            folder(format!("{PREFIX}{me}-{started}-0")),
            folder(format!("{PREFIX}{me}-3")),
            folder(format!("{PREFIX}{me}")),
            folder(format!("{PREFIX}not-ours")),
            folder("wayplug-other-1".into()),
        ];
        // The lock decides over the name: held by a waypoint that runs...
        let live = Uploads::at(tmp.path().join(format!("{PREFIX}{dead}-9-1")), true);
        live.keep(&"e".repeat(64), b"e").unwrap();
        // ...and left behind by one that died.
        let left = folder(format!("{PREFIX}{me}-{started}-1"));
        std::fs::write(left.join(LOCK), b"").unwrap();

        assert_eq!(
            sweep_dead(tmp.path(), &tmp.path().join("no-proc")),
            0,
            "cannot tell: nothing removed"
        );
        assert_eq!(sweep_dead(tmp.path(), proc), 5);
        for d in gone.iter().chain([&left]) {
            assert!(!d.exists(), "{} was removed", d.display());
        }
        for d in kept.iter().chain([&live.dir().to_owned()]) {
            assert!(
                d.join("x.wasm").exists() || d == live.dir(),
                "{} was kept",
                d.display()
            );
        }
        assert!(live.dir().join(format!("{}.wasm", "e".repeat(64))).exists());
        live.close();
        assert!(!live.dir().exists());
    }

    #[test]
    fn a_cache_dir_keeps_its_uploads_folder_at_close() {
        let base_guard = scratch("uploads-cache");
        let base = base_guard.path();
        let cfg = config(base, "cacheDir: cache\nnamespaces: {}\n");
        let uploads = Uploads::new(&cfg);
        assert_eq!(uploads.dir(), base.join("cache/uploads"));
        uploads.keep(&"d".repeat(64), b"x").unwrap();
        uploads.close();
        assert!(
            uploads.dir().exists(),
            "the operator's folder is not ours to remove"
        );
    }
}
