//! The on-disk cache of compiled plugins (`cacheDir`).
//!
//! Loading compiled code is executing it: wasmtime's `deserialize` trusts
//! its input completely, which is why it is `unsafe`. This module is the
//! only place in the crate allowed to call it, and only on bytes that pass
//! every check below. Who may write the directory decides whether that is
//! safe, so the directory is refused unless only this process's user can
//! write to it or replace it:
//!
//! - the directory is created `0700` when missing; an existing one must be
//!   owned by this process's user and not writable by group or others, and
//!   no directory above it may be writable by others without the sticky
//!   bit (so nobody else can swap it for another);
//! - an entry must be a file owned by this user, not writable by others;
//! - an entry's name is the module's sha256, its kind and a hash of the
//!   engine's compilation settings, so code compiled for other settings or
//!   another module is never looked up;
//! - an entry carries the sha256 of the serialized code, checked before the
//!   code is handed to wasmtime (a truncated or corrupted write is caught
//!   here, not by a crash later); wasmtime then checks its own header
//!   (version, target, settings);
//! - entries are written to a temporary file and renamed into place, so a
//!   reader sees a whole entry or none.
//!
//! An entry that fails a check is removed, counted and compiled afresh.

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};

use super::cache::Compiled;

/// The first bytes of every entry (the format's version is in it).
const MAGIC: &[u8; 16] = b"wayplug-cwasm-1\n";
/// Entries larger than this are not read (the largest built-in plugin
/// compiles to a few tens of MiB).
const MAX_ENTRY_BYTES: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cacheDir {dir}: cannot create or read it: {reason}")]
    Open { dir: PathBuf, reason: String },
    #[error(
        "cacheDir {dir}: {why}; compiled code read from it is executed, so only the proxy's own \
         user may be able to write to it"
    )]
    Unsafe { dir: PathBuf, why: String },
    #[error("cache entry {file}: {why}")]
    Rejected {
        file: PathBuf,
        why: String,
        reason: &'static str,
    },
    #[error("cache entry {file}: cannot write it: {reason}")]
    Write { file: PathBuf, reason: String },
}

impl DiskError {
    /// The metric label of a rejected entry.
    pub fn reason(&self) -> &'static str {
        match self {
            DiskError::Rejected { reason, .. } => reason,
            _ => "unreadable",
        }
    }
}

pub struct DiskCache {
    dir: PathBuf,
    /// Hex of the engine's compatibility hash: part of every entry name.
    engine: String,
    uid: u32,
}

/// Feeds `Hash` output into SHA-256, for a hash that is the same in every
/// process (std's `DefaultHasher` promises nothing across builds).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }
}

/// The user this process runs as: the owner of `/proc/self`.
fn current_uid() -> std::io::Result<u32> {
    Ok(fs::metadata("/proc/self")?.uid())
}

impl DiskCache {
    pub fn open(dir: &Path, engine: &Engine) -> Result<DiskCache, DiskError> {
        let open_err = |e: std::io::Error| DiskError::Open {
            dir: dir.to_owned(),
            reason: e.to_string(),
        };
        let uid = current_uid().map_err(open_err)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(open_err)?;
        let dir = fs::canonicalize(dir).map_err(open_err)?;
        check_dir(&dir, uid)?;
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine = hex::encode(&hasher.0.finalize()[..12]);
        Ok(DiskCache { dir, engine, uid })
    }

    fn path(&self, sha256: &str, component: bool) -> PathBuf {
        let kind = if component { "component" } else { "module" };
        self.dir.join(format!(
            "{}-{kind}-{}.cwasm",
            sha256.to_ascii_lowercase(),
            self.engine
        ))
    }

    /// The cached compilation of the module with `sha256`: `Ok(None)` when
    /// there is none, `Err` when one was there and failed a check (it has
    /// been removed).
    pub fn load(
        &self,
        engine: &Engine,
        sha256: &str,
        component: bool,
    ) -> Result<Option<Compiled>, DiskError> {
        let file = self.path(sha256, component);
        let rejected = |why: String, reason: &'static str| {
            // A bad entry would fail the same way at every start.
            let _ = fs::remove_file(&file);
            DiskError::Rejected {
                file: file.clone(),
                why,
                reason,
            }
        };
        let mut f = match File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(rejected(e.to_string(), "unreadable")),
        };
        let meta = f
            .metadata()
            .map_err(|e| rejected(e.to_string(), "unreadable"))?;
        if !meta.is_file() || meta.uid() != self.uid || meta.mode() & 0o022 != 0 {
            return Err(rejected(
                format!(
                    "owned by uid {} with mode {:o}; entries must be files of uid {} that only it may write",
                    meta.uid(),
                    meta.mode() & 0o7777,
                    self.uid
                ),
                "unsafe",
            ));
        }
        if meta.len() > MAX_ENTRY_BYTES {
            return Err(rejected(
                format!(
                    "{} bytes is more than an entry may have ({MAX_ENTRY_BYTES})",
                    meta.len()
                ),
                "corrupt",
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        f.read_to_end(&mut bytes)
            .map_err(|e| rejected(e.to_string(), "unreadable"))?;
        let header = MAGIC.len() + 32;
        if bytes.len() < header || bytes[..MAGIC.len()] != MAGIC[..] {
            return Err(rejected("not a cache entry (bad header)".into(), "corrupt"));
        }
        let payload = &bytes[header..];
        if Sha256::digest(payload)[..] != bytes[MAGIC.len()..header] {
            return Err(rejected(
                "the compiled code does not match the checksum it was written with".into(),
                "corrupt",
            ));
        }
        let want = if component {
            Precompiled::Component
        } else {
            Precompiled::Module
        };
        if Engine::detect_precompiled(payload) != Some(want) {
            return Err(rejected(
                "not compiled code of the expected kind".into(),
                "corrupt",
            ));
        }
        deserialize(engine, payload, component)
            .map(Some)
            .map_err(|e| rejected(format!("{e:#}"), "incompatible"))
    }

    /// Writes `compiled` as the entry of `sha256`.
    pub fn store(&self, sha256: &str, compiled: &Compiled) -> Result<(), DiskError> {
        let (component, code) = match compiled {
            Compiled::Module(m) => (false, m.serialize()),
            Compiled::Component(c) => (true, c.serialize()),
        };
        let file = self.path(sha256, component);
        let write_err = |reason: String| DiskError::Write {
            file: file.clone(),
            reason,
        };
        let code = code.map_err(|e| write_err(format!("{e:#}")))?;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| write_err(e.to_string()))?;
        let tmp = self
            .dir
            .join(format!(".{}.tmp-{}", sha256, hex::encode(nonce)));
        let written = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&Sha256::digest(&code))?;
            f.write_all(&code)?;
            f.sync_all()?;
            fs::rename(&tmp, &file)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(e.to_string()));
        }
        Ok(())
    }
}

/// Refuses a directory that someone other than `uid` could write to or
/// replace.
fn check_dir(dir: &Path, uid: u32) -> Result<(), DiskError> {
    let unsafe_dir = |why: String| DiskError::Unsafe {
        dir: dir.to_owned(),
        why,
    };
    let meta = fs::metadata(dir).map_err(|e| DiskError::Open {
        dir: dir.to_owned(),
        reason: e.to_string(),
    })?;
    if meta.uid() != uid {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by this process's uid {uid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "its mode {:o} lets group or others write to it",
            meta.mode() & 0o7777
        )));
    }
    for parent in dir.ancestors().skip(1) {
        let Ok(m) = fs::metadata(parent) else {
            continue;
        };
        let others_write = m.mode() & 0o002 != 0;
        let sticky = m.mode() & 0o1000 != 0;
        if others_write && !sticky {
            return Err(unsafe_dir(format!(
                "{} above it may be written by anyone (mode {:o}), so it could be replaced",
                parent.display(),
                m.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// The crate's one `unsafe` call.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, code: &[u8], component: bool) -> wasmtime::Result<Compiled> {
    // SAFETY: `code` is the exact output of `Module::serialize` /
    // `Component::serialize` of this build's engine settings: it was read
    // from an entry named for those settings, in a directory only this
    // process's user can write (checked at open), from a file owned by that
    // user and not writable by others, and its SHA-256 matches the one
    // written beside it, so it is what `store` wrote. wasmtime checks its own
    // header (version, target, flags) and returns an error otherwise.
    unsafe {
        if component {
            Component::deserialize(engine, code).map(Compiled::Component)
        } else {
            Module::deserialize(engine, code).map(Compiled::Module)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::default()
    }

    fn temp(name: &str) -> tempfile::TempDir {
        // Removed when dropped, also when the test fails.
        tempfile::Builder::new()
            .prefix(&format!("wayplug-cache-{name}-"))
            .tempdir()
            .unwrap()
    }

    const WAT: &str = r#"(module (func (export "f") (result i32) i32.const 7))"#;

    #[test]
    fn an_entry_round_trips_and_a_corrupt_one_is_rejected_and_removed() {
        let engine = engine();
        let dir_guard = temp("roundtrip");
        let dir = dir_guard.path();
        let cache = DiskCache::open(dir, &engine).unwrap();
        let module = Module::new(&engine, wat::parse_str(WAT).unwrap()).unwrap();
        assert!(cache.load(&engine, "ab", false).unwrap().is_none());
        cache.store("ab", &Compiled::Module(module)).unwrap();
        assert!(matches!(
            cache.load(&engine, "ab", false).unwrap(),
            Some(Compiled::Module(_))
        ));
        // The same sha256 asked for as a component is another entry.
        assert!(cache.load(&engine, "ab", true).unwrap().is_none());

        let file = cache.path("ab", false);
        let mut bytes = fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&file, &bytes).unwrap();
        let err = cache.load(&engine, "ab", false).err().unwrap();
        assert_eq!(err.reason(), "corrupt");
        assert!(
            err.to_string().contains("does not match the checksum"),
            "{err}"
        );
        assert!(!file.exists(), "a corrupt entry is removed");

        fs::write(&file, b"short").unwrap();
        let err = cache.load(&engine, "ab", false).err().unwrap();
        assert!(err.to_string().contains("bad header"), "{err}");
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let engine = engine();
        let dir_guard = temp("open");
        let dir = dir_guard.path();
        fs::create_dir_all(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = DiskCache::open(dir, &engine).err().unwrap().to_string();
        assert!(err.contains("lets group or others write"), "{err}");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(DiskCache::open(dir, &engine).is_ok());
    }

    #[test]
    fn entries_are_named_by_engine_settings() {
        let dir_guard = temp("names");
        let dir = dir_guard.path();
        let a = DiskCache::open(dir, &engine()).unwrap();
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let b = DiskCache::open(dir, &Engine::new(&config).unwrap()).unwrap();
        assert_ne!(a.path("ab", false), b.path("ab", false));
        assert_eq!(a.path("AB", false), a.path("ab", false));
    }
}
