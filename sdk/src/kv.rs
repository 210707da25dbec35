//! A key-value store shared by the instances of one plugin entry (the same
//! plugin in the same namespace), kept in the waypoint's memory; other
//! plugins and namespaces cannot see it.
//!
//! Several instances may run at once, so writes that depend on what was
//! read use compare-and-swap: [`get`] returns a [`Cas`] token and
//! [`set_cas`] succeeds only while the value still has that token.
//! [`update`] wraps the retry loop.
//!
//! ```
//! use wayplug_sdk::kv;
//!
//! kv::set("greeting", "hello").unwrap();
//! let entry = kv::get("greeting").unwrap();
//! assert_eq!(entry.value, b"hello");
//!
//! // Someone else writes in between: our token is stale.
//! kv::set("greeting", "hi").unwrap();
//! assert_eq!(kv::set_cas("greeting", "hey", entry.cas), Err(kv::KvError::CasMismatch));
//!
//! // A read-modify-write that retries on conflicts.
//! let hits = kv::update("hits", |old| {
//!     let n = old.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
//!     (n + 1).to_le_bytes().to_vec()
//! })
//! .unwrap();
//! assert_eq!(hits, 1u64.to_le_bytes());
//! ```

use std::fmt;

use crate::host;

/// How often [`update`] retries before it reports the conflict.
pub const UPDATE_ATTEMPTS: usize = 16;

/// The version of a stored value, from [`get`] or a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cas(pub(crate) u64);

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// The token that changes exactly this version.
    pub cas: Cas,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvError {
    /// The value changed since the token was read (or, for
    /// [`set_if_absent`], the key exists).
    CasMismatch,
    /// The key or value is larger than the waypoint allows.
    TooLarge,
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvError::CasMismatch => "the value changed since it was read",
            KvError::TooLarge => "the key or value is too large",
        })
    }
}

impl std::error::Error for KvError {}

/// Reads `key`.
pub fn get(key: &str) -> Option<Entry> {
    host::kv_get(key).map(|(value, cas)| Entry {
        value,
        cas: Cas(cas),
    })
}

/// Stores `value` under `key` whatever is there.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<Cas, KvError> {
    host::kv_set(key, value.as_ref(), None).map(Cas)
}

/// Stores `value` under `key` only if the stored version is still `cas`.
pub fn set_cas(key: &str, value: impl AsRef<[u8]>, cas: Cas) -> Result<Cas, KvError> {
    host::kv_set(key, value.as_ref(), Some(cas.0)).map(Cas)
}

/// Stores `value` under `key` only if the key is absent.
pub fn set_if_absent(key: &str, value: impl AsRef<[u8]>) -> Result<Cas, KvError> {
    // Token 0 is never the token of a stored value: the WIT defines it as
    // "only if absent".
    host::kv_set(key, value.as_ref(), Some(0)).map(Cas)
}

/// Removes `key`; removing an absent key succeeds.
pub fn delete(key: &str) -> Result<(), KvError> {
    host::kv_delete(key, None)
}

/// Removes `key` only if the stored version is still `cas`.
pub fn delete_cas(key: &str, cas: Cas) -> Result<(), KvError> {
    host::kv_delete(key, Some(cas.0))
}

/// Replaces the value of `key` with `f(current value)`, retrying when
/// another instance wrote in between, and returns the value stored. After
/// [`UPDATE_ATTEMPTS`] conflicts it gives up with
/// [`KvError::CasMismatch`].
pub fn update(key: &str, mut f: impl FnMut(Option<&[u8]>) -> Vec<u8>) -> Result<Vec<u8>, KvError> {
    for _ in 0..UPDATE_ATTEMPTS {
        let current = get(key);
        let new = f(current.as_ref().map(|e| e.value.as_slice()));
        let written = match &current {
            Some(entry) => set_cas(key, &new, entry.cas),
            None => set_if_absent(key, &new),
        };
        match written {
            Ok(_) => return Ok(new),
            Err(KvError::CasMismatch) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(KvError::CasMismatch)
}
