//! Plugin files: read and hashed once per install, and not at all by a poll
//! when they did not change.
//!
//! Every install (a config reload, a policy change, the plugin poll every
//! `policyPollIntervalMs`) looks at each plugin file its entries name.
//! Within one install a path is looked at once, however many entries name
//! it ([`Pass`]). Across installs a file's stamp (device, inode, size,
//! modification and change times) is kept with the sha256 read under it;
//! a look that finds the same stamp trusts that sha256 without reading the
//! file, unless the stamp is racy.
//!
//! Racy stamps (the rule git applies to its index): a stamp is trusted only
//! when the read that recorded it started at least [`RACY`] after the
//! file's last modification or change time. A file rewritten with the same size within
//! one timestamp tick of the read (a tick is 1 or 2 s on some file
//! systems) keeps its whole stamp, so only a read that started well after
//! the last modification proves that the bytes read are the bytes the
//! stamp stands for. A racy file is read again at every look until then.
//! A replacement renamed into place has another inode; a write in place
//! moves the change time, which no one can set back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// How long after its last modification a file's stamp stays untrusted.
pub const RACY: Duration = Duration::from_secs(2);

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether a read that started at `read_at` saw settled content.
    fn settled_at(&self, read_at: SystemTime, racy: Duration) -> bool {
        let Ok(since_epoch) = read_at.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        // The change time too: a modification time set back by hand says
        // nothing about when the bytes were written.
        let (secs, nanos) = self.mtime.max(self.ctime);
        let Ok(secs) = u64::try_from(secs) else {
            return false;
        };
        let changed = Duration::new(secs, u32::try_from(nanos).unwrap_or(0));
        since_epoch.saturating_sub(changed) >= racy
    }
}

/// A plugin file as one look saw it.
#[derive(Clone)]
pub struct Seen {
    pub sha256: String,
    /// The first bytes (up to 8: the module header), for checks that need
    /// no more.
    pub head: Bytes,
    /// The whole content, when this look read it.
    pub bytes: Option<Bytes>,
}

struct Known {
    stamp: Stamp,
    sha256: String,
    head: Bytes,
}

/// What earlier installs learnt about plugin files.
pub struct Files {
    /// Only settled stamps are kept.
    known: Mutex<HashMap<PathBuf, Known>>,
    reads: AtomicU64,
    racy: Duration,
}

impl Default for Files {
    fn default() -> Self {
        Files::with_racy(RACY)
    }
}

impl Files {
    /// Tests settle files faster than [`RACY`].
    pub(super) fn with_racy(racy: Duration) -> Files {
        Files {
            known: Mutex::default(),
            reads: AtomicU64::new(0),
            racy,
        }
    }

    /// Whole reads (each followed by a sha256) since start.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// One install's looks.
    pub fn pass(&self) -> Pass<'_> {
        Pass {
            files: self,
            seen: HashMap::new(),
        }
    }

    async fn look(&self, path: &Path, need_bytes: bool) -> std::io::Result<Seen> {
        let before = Stamp::of(&tokio::fs::metadata(path).await?);
        if !need_bytes {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(k) = known.get(path).filter(|k| k.stamp == before) {
                return Ok(Seen {
                    sha256: k.sha256.clone(),
                    head: k.head.clone(),
                    bytes: None,
                });
            }
        }
        let read_at = SystemTime::now();
        let bytes = Bytes::from(tokio::fs::read(path).await?);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let head = bytes.slice(..bytes.len().min(8));
        let after = Stamp::of(&tokio::fs::metadata(path).await?);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        // Changed while being read, or too recently: read it again next time.
        if before == after
            && after.size == bytes.len() as u64
            && after.settled_at(read_at, self.racy)
        {
            known.insert(
                path.to_owned(),
                Known {
                    stamp: after,
                    sha256: sha256.clone(),
                    head: head.clone(),
                },
            );
        } else {
            known.remove(path);
        }
        Ok(Seen {
            sha256,
            head,
            bytes: Some(bytes),
        })
    }

    /// Forgets the files not in `paths` (no longer named by the config in
    /// force), so what is kept stays bounded by the config.
    fn retain(&self, paths: &HashSet<&PathBuf>) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p, _| paths.contains(p));
    }
}

/// The looks of one install: each distinct path is read at most once.
pub struct Pass<'a> {
    files: &'a Files,
    seen: HashMap<PathBuf, Seen>,
}

impl Pass<'_> {
    /// The file at `path`; with `need_bytes`, its whole content too.
    pub async fn look(&mut self, path: &Path, need_bytes: bool) -> std::io::Result<Seen> {
        if let Some(s) = self.seen.get(path)
            && (s.bytes.is_some() || !need_bytes)
        {
            return Ok(s.clone());
        }
        let seen = self.files.look(path, need_bytes).await?;
        self.seen.insert(path.to_owned(), seen.clone());
        Ok(seen)
    }

    /// The install succeeded: only its files stay known.
    pub fn finish(self) {
        self.files.retain(&self.seen.keys().collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a test waits for a file to settle.
    const SETTLE: Duration = Duration::from_millis(100);

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("wayplug-files-")
            .tempdir()
            .unwrap()
    }

    #[tokio::test]
    async fn a_file_is_read_until_it_settles_then_only_when_it_changes() {
        let dir = scratch();
        let path = dir.path().join("p.wasm");
        std::fs::write(&path, b"\0asm\x01\0\0\0one").unwrap();

        // Just written: racy, so every look reads it.
        let files = Files::default();
        for n in 1..=3 {
            let seen = files.pass().look(&path, false).await.unwrap();
            assert!(seen.bytes.is_some());
            assert_eq!(&seen.head[..], b"\0asm\x01\0\0\0");
            assert_eq!(files.reads(), n);
        }

        let files = Files::with_racy(SETTLE);
        tokio::time::sleep(SETTLE * 2).await;
        let first = files.pass().look(&path, false).await.unwrap();
        assert_eq!(files.reads(), 1);
        for _ in 0..5 {
            let seen = files.pass().look(&path, false).await.unwrap();
            assert!(seen.bytes.is_none());
            assert_eq!((&seen.sha256, &seen.head), (&first.sha256, &first.head));
        }
        assert_eq!(files.reads(), 1, "settled and unchanged: never read again");
        // Asked for the bytes: read, once per pass.
        let mut pass = files.pass();
        for _ in 0..3 {
            assert!(pass.look(&path, true).await.unwrap().bytes.is_some());
        }
        assert_eq!(files.reads(), 2);

        // Same size, in place, its modification time set back as it was.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, b"\0asm\x01\0\0\0two").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(mtime).unwrap();
        let seen = files.pass().look(&path, false).await.unwrap();
        assert_ne!(seen.sha256, first.sha256, "a write in place is seen");
        // Renamed over it: another inode.
        let tmp = dir.path().join("p.wasm.new");
        std::fs::write(&tmp, b"\0asm\x01\0\0\0one").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let seen = files.pass().look(&path, false).await.unwrap();
        assert_eq!(seen.sha256, first.sha256, "a replacement is seen");
        assert_eq!(files.reads(), 4);
    }

    #[tokio::test]
    async fn a_pass_reads_each_path_once_and_finishing_forgets_the_rest() {
        let dir = scratch();
        let (a, b) = (dir.path().join("a.wasm"), dir.path().join("b.wasm"));
        for p in [&a, &b] {
            std::fs::write(p, b"\0asm\x01\0\0\0").unwrap();
        }
        tokio::time::sleep(SETTLE * 2).await;
        let files = Files::with_racy(SETTLE);
        let mut pass = files.pass();
        for _ in 0..50 {
            pass.look(&a, false).await.unwrap();
            pass.look(&b, false).await.unwrap();
        }
        pass.finish();
        assert_eq!(files.reads(), 2);
        let mut pass = files.pass();
        pass.look(&a, false).await.unwrap();
        pass.finish();
        assert_eq!(files.reads(), 2, "both known");
        files.pass().look(&b, false).await.unwrap();
        assert_eq!(files.reads(), 3, "b was forgotten with the config");
        let missing = files.pass().look(&dir.path().join("none"), false).await;
        assert!(missing.is_err());
    }
}
