//! A plugin's small pool of long-lived instances, shared by both ABIs.
//! Requests are spread over the slots round robin; a slot whose instance
//! failed gets a fresh one at its next use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub trait Poisonable {
    fn is_poisoned(&self) -> bool;
}

pub struct InstancePool<T> {
    slots: Vec<Mutex<Option<Arc<T>>>>,
    next: AtomicUsize,
}

impl<T: Poisonable> InstancePool<T> {
    /// A pool of `size` slots, the first holding `first`; the others fill on
    /// first use.
    pub fn new(first: Arc<T>, size: usize) -> InstancePool<T> {
        let slots = (0..size.max(1))
            .map(|i| Mutex::new((i == 0).then(|| first.clone())))
            .collect();
        InstancePool {
            slots,
            next: AtomicUsize::new(0),
        }
    }

    /// The next slot's instance; `fresh` (or a failed instance) starts a
    /// new one with `start`.
    pub fn checkout<E>(
        &self,
        fresh: bool,
        start: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<Arc<T>, E> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(inst) if !fresh && !inst.is_poisoned() => Ok(inst.clone()),
            _ => {
                let inst = start()?;
                *slot = Some(inst.clone());
                Ok(inst)
            }
        }
    }

    pub fn live(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_some_and(|i| !i.is_poisoned())
            })
            .count()
    }
}
