//! State plugins share: key-value data with compare-and-swap, and queues.
//!
//! Both are scoped to a namespace: plugins of one namespace may cooperate
//! through them, and no namespace can read or disturb another's. They live
//! outside any plugin instance, so they survive instance restarts and plugin
//! reloads.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, Weak};

use super::proxywasm::Instance;

/// Why `set` refused a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    /// Key longer than [`MAX_KEY_BYTES`] or value longer than
    /// [`MAX_VALUE_BYTES`].
    TooLarge,
    /// Storing it would take the namespace past [`MAX_SHARED_DATA_BYTES`].
    Full,
}

/// Bounds on what plugins may store, the same for both ABIs: a key, a value
/// (also one queue item), everything one namespace's Proxy-Wasm shared data
/// holds, queues per namespace and what one queue holds.
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_SHARED_DATA_BYTES: usize = 64 << 20;
pub const MAX_QUEUES: usize = 1024;
pub const MAX_QUEUE_ITEMS: usize = 10_000;
pub const MAX_QUEUE_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct NamespaceShared {
    data: Mutex<SharedData>,
    queues: Mutex<Queues>,
    /// Component plugins' key-value stores, one per plugin name.
    kv: Mutex<HashMap<String, std::sync::Arc<KvStore>>>,
}

#[derive(Default)]
struct SharedData {
    map: HashMap<String, (Vec<u8>, u32)>,
    /// Key and value bytes held, against [`MAX_SHARED_DATA_BYTES`].
    bytes: usize,
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
        if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
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
    /// Bytes the items hold: a producer without a consumer stops at
    /// [`MAX_QUEUE_BYTES`] or [`MAX_QUEUE_ITEMS`], whichever comes first.
    bytes: usize,
    owner: Weak<Instance>,
    owner_root_context: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    NotFound,
    TooManyItems,
    TooManyBytes,
}

/// The namespace already has [`MAX_QUEUES`] queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyQueues;

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
            .map
            .get(key)
            .cloned()
    }

    /// Stores `value`; with a non-zero `cas` only if it still matches.
    pub fn set(&self, key: &str, value: Vec<u8>, cas: u32) -> Result<(), SetError> {
        if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
            return Err(SetError::TooLarge);
        }
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let (current, old_len) = data
            .map
            .get(key)
            .map_or((0, 0), |(v, c)| (*c, key.len() + v.len()));
        if cas != 0 && cas != current {
            return Err(SetError::CasMismatch);
        }
        let bytes = data.bytes - old_len + key.len() + value.len();
        if bytes > MAX_SHARED_DATA_BYTES {
            return Err(SetError::Full);
        }
        data.bytes = bytes;
        // Tokens start at 1 so that 0 always means "unconditional".
        let next = current.wrapping_add(1).max(1);
        data.map.insert(key.to_owned(), (value, next));
        Ok(())
    }

    pub fn register_queue(
        &self,
        vm_id: &str,
        name: &str,
        owner: Weak<Instance>,
        root: u32,
    ) -> Result<u32, TooManyQueues> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let key = (vm_id.to_owned(), name.to_owned());
        if let Some(id) = q.by_name.get(&key).copied() {
            if let Some(queue) = q.queues.get_mut(&id) {
                queue.owner = owner;
                queue.owner_root_context = root;
            }
            return Ok(id);
        }
        if q.queues.len() >= MAX_QUEUES {
            return Err(TooManyQueues);
        }
        q.next_id += 1;
        let id = q.next_id;
        q.by_name.insert(key, id);
        q.queues.insert(
            id,
            Queue {
                items: VecDeque::new(),
                bytes: 0,
                owner,
                owner_root_context: root,
            },
        );
        Ok(id)
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
            return Err(QueueError::TooManyItems);
        }
        if queue.bytes + item.len() > MAX_QUEUE_BYTES {
            return Err(QueueError::TooManyBytes);
        }
        queue.bytes += item.len();
        queue.items.push_back(item);
        Ok((queue.owner.clone(), queue.owner_root_context))
    }

    /// `Ok(None)` when the queue exists and is empty.
    pub fn dequeue(&self, id: u32) -> Result<Option<Vec<u8>>, QueueError> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = q.queues.get_mut(&id).ok_or(QueueError::NotFound)?;
        let item = queue.items.pop_front();
        if let Some(item) = &item {
            queue.bytes -= item.len();
        }
        Ok(item)
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
        assert_eq!(
            s.set("k", b"2".to_vec(), cas + 7),
            Err(SetError::CasMismatch)
        );
        s.set("k", b"2".to_vec(), cas).unwrap();
        assert_eq!(s.set("k", b"3".to_vec(), cas), Err(SetError::CasMismatch));
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
        let id = s.register_queue("", "q", Weak::new(), 1).unwrap();
        assert_eq!(s.register_queue("", "q", Weak::new(), 1), Ok(id));
        assert_eq!(s.resolve_queue("", "q"), Some(id));
        assert_eq!(s.resolve_queue("other", "q"), None);
        assert!(matches!(s.dequeue(id), Ok(None)));
        assert!(s.enqueue(id, b"a".to_vec()).is_ok());
        assert!(matches!(s.dequeue(id), Ok(Some(v)) if v == b"a"));
        assert!(matches!(s.dequeue(id + 1), Err(QueueError::NotFound)));
    }

    #[test]
    fn shared_data_is_bounded_per_value_and_per_namespace() {
        let s = NamespaceShared::default();
        assert_eq!(
            s.set(&"k".repeat(MAX_KEY_BYTES + 1), vec![], 0),
            Err(SetError::TooLarge)
        );
        assert_eq!(
            s.set("k", vec![0; MAX_VALUE_BYTES + 1], 0),
            Err(SetError::TooLarge)
        );
        let per_key = MAX_VALUE_BYTES;
        let fits = MAX_SHARED_DATA_BYTES / (per_key + 8);
        for i in 0..fits {
            s.set(&format!("key{i:04}"), vec![1; per_key], 0).unwrap();
        }
        assert_eq!(s.set("one-more", vec![1; per_key], 0), Err(SetError::Full));
        // Replacing a value frees what it held first.
        s.set("key0000", vec![2; per_key], 0).unwrap();
        s.set("key0000", vec![], 0).unwrap();
        s.set("one-more", vec![1; per_key], 0).unwrap();
    }

    #[test]
    fn queues_are_bounded_in_items_bytes_and_number() {
        let s = NamespaceShared::default();
        let id = s.register_queue("vm", "q", Weak::new(), 1).unwrap();
        for _ in 0..MAX_QUEUE_ITEMS {
            assert!(s.enqueue(id, vec![]).is_ok());
        }
        assert!(matches!(
            s.enqueue(id, vec![]),
            Err(QueueError::TooManyItems)
        ));
        let big = s.register_queue("vm", "big", Weak::new(), 1).unwrap();
        for _ in 0..MAX_QUEUE_BYTES / MAX_VALUE_BYTES {
            assert!(s.enqueue(big, vec![0; MAX_VALUE_BYTES]).is_ok());
        }
        assert!(matches!(
            s.enqueue(big, vec![0]),
            Err(QueueError::TooManyBytes)
        ));
        assert!(matches!(s.dequeue(big), Ok(Some(_))));
        assert!(s.enqueue(big, vec![0]).is_ok(), "dequeuing frees room");
        for i in 2..MAX_QUEUES {
            s.register_queue("vm", &format!("q{i}"), Weak::new(), 1)
                .unwrap();
        }
        assert_eq!(
            s.register_queue("vm", "too-many", Weak::new(), 1),
            Err(TooManyQueues)
        );
        assert_eq!(s.register_queue("vm", "q", Weak::new(), 1), Ok(id));
    }
}
