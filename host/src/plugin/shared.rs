//! State plugins share: key-value data with compare-and-swap, and queues.
//!
//! Both are scoped to a namespace: plugins of one namespace may cooperate
//! through them, and no namespace can read or disturb another's. They live
//! outside any plugin instance, so they survive instance restarts and plugin
//! reloads.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, Weak};

use super::proxywasm::Instance;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasError {
    Mismatch,
}

#[derive(Default)]
pub struct NamespaceShared {
    data: Mutex<HashMap<String, (Vec<u8>, u32)>>,
    queues: Mutex<Queues>,
    /// Component plugins' key-value stores, one per plugin name.
    kv: Mutex<HashMap<String, std::sync::Arc<KvStore>>>,
}

/// The component world's key-value store: 64-bit version tokens, where a
/// token of 0 means "only if absent".
#[derive(Default)]
pub struct KvStore {
    map: Mutex<HashMap<String, (Vec<u8>, u64)>>,
    next: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvError {
    CasMismatch,
    TooLarge,
}

const MAX_KV_KEY: usize = 1024;
const MAX_KV_VALUE: usize = 1 << 20;

impl KvStore {
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u64)> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn check(current: Option<u64>, cas: Option<u64>) -> Result<(), KvError> {
        match (cas, current) {
            (None, _) => Ok(()),
            (Some(0), None) => Ok(()),
            (Some(want), Some(have)) if want == have => Ok(()),
            _ => Err(KvError::CasMismatch),
        }
    }

    pub fn set(&self, key: &str, value: Vec<u8>, cas: Option<u64>) -> Result<u64, KvError> {
        if key.len() > MAX_KV_KEY || value.len() > MAX_KV_VALUE {
            return Err(KvError::TooLarge);
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Self::check(map.get(key).map(|(_, c)| *c), cas)?;
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        map.insert(key.to_owned(), (value, token));
        Ok(token)
    }

    pub fn delete(&self, key: &str, cas: Option<u64>) -> Result<(), KvError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let current = map.get(key).map(|(_, c)| *c);
        if current.is_none() && cas.is_none_or(|c| c == 0) {
            return Ok(());
        }
        Self::check(current, cas)?;
        map.remove(key);
        Ok(())
    }
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    owner: Weak<Instance>,
    owner_root_context: u32,
}

/// Bound on items a queue holds, so a producer without a consumer cannot
/// exhaust the host's memory.
const MAX_QUEUE_ITEMS: usize = 10_000;

pub enum QueueError {
    NotFound,
    Full,
}

impl NamespaceShared {
    /// The key-value store of the component plugin named `plugin`; it
    /// outlives reloads of the plugin.
    pub fn plugin_kv(&self, plugin: &str) -> std::sync::Arc<KvStore> {
        self.kv
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(plugin.to_owned())
            .or_default()
            .clone()
    }

    /// The value and its CAS token.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Stores `value`; with a non-zero `cas` only if it still matches.
    pub fn set(&self, key: &str, value: Vec<u8>, cas: u32) -> Result<(), CasError> {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let current = data.get(key).map(|(_, c)| *c).unwrap_or(0);
        if cas != 0 && cas != current {
            return Err(CasError::Mismatch);
        }
        // Tokens start at 1 so that 0 always means "unconditional".
        let next = current.wrapping_add(1).max(1);
        data.insert(key.to_owned(), (value, next));
        Ok(())
    }

    pub fn register_queue(&self, vm_id: &str, name: &str, owner: Weak<Instance>, root: u32) -> u32 {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let key = (vm_id.to_owned(), name.to_owned());
        if let Some(id) = q.by_name.get(&key).copied() {
            if let Some(queue) = q.queues.get_mut(&id) {
                queue.owner = owner;
                queue.owner_root_context = root;
            }
            return id;
        }
        q.next_id += 1;
        let id = q.next_id;
        q.by_name.insert(key, id);
        q.queues.insert(
            id,
            Queue {
                items: VecDeque::new(),
                owner,
                owner_root_context: root,
            },
        );
        id
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        let q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        q.by_name.get(&(vm_id.to_owned(), name.to_owned())).copied()
    }

    /// Returns who to tell that the queue has data.
    pub fn enqueue(&self, id: u32, item: Vec<u8>) -> Result<(Weak<Instance>, u32), QueueError> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = q.queues.get_mut(&id).ok_or(QueueError::NotFound)?;
        if queue.items.len() >= MAX_QUEUE_ITEMS {
            return Err(QueueError::Full);
        }
        queue.items.push_back(item);
        Ok((queue.owner.clone(), queue.owner_root_context))
    }

    /// `Ok(None)` when the queue exists and is empty.
    pub fn dequeue(&self, id: u32) -> Result<Option<Vec<u8>>, QueueError> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = q.queues.get_mut(&id).ok_or(QueueError::NotFound)?;
        Ok(queue.items.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_semantics() {
        let s = NamespaceShared::default();
        assert!(s.get("k").is_none());
        s.set("k", b"1".to_vec(), 0).unwrap();
        let (v, cas) = s.get("k").unwrap();
        assert_eq!(v, b"1");
        assert_eq!(s.set("k", b"2".to_vec(), cas + 7), Err(CasError::Mismatch));
        s.set("k", b"2".to_vec(), cas).unwrap();
        assert_eq!(s.set("k", b"3".to_vec(), cas), Err(CasError::Mismatch));
        s.set("k", b"4".to_vec(), 0).unwrap();
        assert_eq!(s.get("k").unwrap().0, b"4");
    }

    #[test]
    fn kv_tokens() {
        let kv = KvStore::default();
        let t1 = kv.set("k", b"a".to_vec(), Some(0)).unwrap();
        assert_eq!(
            kv.set("k", b"b".to_vec(), Some(0)),
            Err(KvError::CasMismatch)
        );
        assert_eq!(
            kv.set("k", b"b".to_vec(), Some(t1 + 1)),
            Err(KvError::CasMismatch)
        );
        let t2 = kv.set("k", b"b".to_vec(), Some(t1)).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(kv.get("k"), Some((b"b".to_vec(), t2)));
        assert_eq!(kv.delete("k", Some(t1)), Err(KvError::CasMismatch));
        kv.delete("k", Some(t2)).unwrap();
        assert_eq!(kv.get("k"), None);
        assert_eq!(kv.delete("absent", None), Ok(()));
        assert_eq!(
            kv.set("big", vec![0; (1 << 20) + 1], None),
            Err(KvError::TooLarge)
        );
    }

    #[test]
    fn queues_by_vm_and_name() {
        let s = NamespaceShared::default();
        let id = s.register_queue("", "q", Weak::new(), 1);
        assert_eq!(s.register_queue("", "q", Weak::new(), 1), id);
        assert_eq!(s.resolve_queue("", "q"), Some(id));
        assert_eq!(s.resolve_queue("other", "q"), None);
        assert!(matches!(s.dequeue(id), Ok(None)));
        assert!(s.enqueue(id, b"a".to_vec()).is_ok());
        assert!(matches!(s.dequeue(id), Ok(Some(v)) if v == b"a"));
        assert!(matches!(s.dequeue(id + 1), Err(QueueError::NotFound)));
    }
}
