//! The two ways plugin instances are shared between requests.
//!
//! - [`InstancePool`] (Proxy-Wasm): a few long-lived VMs, Envoy's model. A
//!   request is pinned to one slot's VM for its lifetime, and many requests
//!   share a VM. Slots are handed out round robin; a slot whose VM failed
//!   gets a fresh one at its next use, and FAIL_RELOAD replaces exactly the
//!   slot that failed.
//! - [`PerRequest`] (components): every request gets an instance of its own
//!   that serves nobody else and is dropped when the request is done, so a
//!   crash can fail only that request. A few ready-to-use instances are kept
//!   so a request rarely pays for instantiation and `configure`; how many may
//!   serve requests at once is capped, so one busy plugin cannot take every
//!   slot of the engine.

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

    /// The next slot and its instance; an empty slot, or one whose instance
    /// failed, gets a new one from `start` first.
    pub fn checkout<E>(
        &self,
        start: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<(usize, Arc<T>), E> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(inst) if !inst.is_poisoned() => Ok((i, inst.clone())),
            _ => {
                let inst = start()?;
                *slot = Some(inst.clone());
                Ok((i, inst))
            }
        }
    }

    /// A working instance for slot `slot`, after `failed` (which came from
    /// that slot) failed. The slot gets a fresh instance unless another
    /// request already replaced `failed` there, in which case that
    /// replacement is shared rather than started twice.
    pub fn replace<E>(
        &self,
        slot: usize,
        failed: &Arc<T>,
        start: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<Arc<T>, E> {
        let mut current = self.slots[slot % self.slots.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some(inst) if !Arc::ptr_eq(inst, failed) && !inst.is_poisoned() => Ok(inst.clone()),
            _ => {
                let inst = start()?;
                *current = Some(inst.clone());
                Ok(inst)
            }
        }
    }

    /// Instances that can serve requests now.
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

/// Why [`PerRequest::take`] gave no instance.
#[derive(Debug, PartialEq, Eq)]
pub enum TakeError<E> {
    /// `limit` requests hold an instance of this plugin already.
    Busy {
        limit: usize,
    },
    Start(E),
}

/// Instances used by one request at a time, never shared. An instance that
/// served a request without failing goes back to the ready set (a fresh
/// instance pays the plugin's `configure`, which can cost far more than the
/// request); a failed one is dropped and replaced.
pub struct PerRequest<T> {
    ready: Mutex<Vec<T>>,
    /// How many never-used instances to keep ready.
    spares: usize,
    /// How many requests may hold an instance at once.
    limit: usize,
    busy: AtomicUsize,
}

impl<T> PerRequest<T> {
    /// `first` (the instance that proved the plugin loads) is the first
    /// spare.
    pub fn new(first: T, spares: usize, limit: usize) -> PerRequest<T> {
        PerRequest {
            ready: Mutex::new(vec![first]),
            spares: spares.max(1),
            limit: limit.max(1),
            busy: AtomicUsize::new(0),
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An instance for one request: a ready spare, or a new one from
    /// `start`. Every successful take must be paired with one
    /// [`release`](Self::release).
    pub fn take<E>(&self, start: impl FnOnce() -> Result<T, E>) -> Result<T, TakeError<E>> {
        let claimed = self
            .busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            });
        if claimed.is_err() {
            return Err(TakeError::Busy { limit: self.limit });
        }
        let spare = self.ready().pop();
        match spare {
            Some(t) => Ok(t),
            None => start().map_err(|e| {
                self.busy.fetch_sub(1, Ordering::AcqRel);
                TakeError::Start(e)
            }),
        }
    }

    /// A request is done with the instance it took (the caller has dropped
    /// it already, so its engine slot is free). Returns whether the spares
    /// want topping up with [`top_up`](Self::top_up), which the caller runs
    /// off the request's critical path.
    pub fn release(&self) -> bool {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.ready().len() < self.spares
    }

    /// A request is done with a healthy instance: it becomes ready for the
    /// next request, unless that would keep more instances alive than the
    /// plugin reserved (`spares` + `limit`); then it is dropped.
    pub fn give_back(&self, t: T) {
        let busy = self.busy.fetch_sub(1, Ordering::AcqRel) - 1;
        let mut ready = self.ready();
        if ready.len() + busy < self.spares + self.limit {
            ready.push(t);
        }
    }

    /// For a request that already holds a claim (from `take`) and dropped
    /// its failed instance: a spare, or a new instance from `start`.
    pub fn renew<E>(&self, start: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let spare = self.ready().pop();
        match spare {
            Some(t) => Ok(t),
            None => start(),
        }
    }

    /// Starts spares until `spares` are ready; one that cannot start now is
    /// simply started by the next request instead.
    pub fn top_up<E>(&self, mut start: impl FnMut() -> Result<T, E>) {
        while self.ready().len() < self.spares {
            let Ok(t) = start() else { return };
            let mut ready = self.ready();
            if ready.len() >= self.spares {
                return;
            }
            ready.push(t);
        }
    }

    /// Drops the ready instances: an entry nobody has used yet holds no
    /// guest memory; the next `take` starts one.
    pub fn drop_ready(&self) {
        let parked = std::mem::take(&mut *self.ready());
        drop(parked);
    }

    /// Instances alive now: spares plus those serving requests.
    pub fn live(&self) -> usize {
        self.ready().len() + self.busy.load(Ordering::Acquire)
    }

    /// Requests holding an instance now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Fake {
        id: usize,
        poisoned: AtomicBool,
    }

    impl Poisonable for Fake {
        fn is_poisoned(&self) -> bool {
            self.poisoned.load(Ordering::Acquire)
        }
    }

    /// Starts fakes with increasing ids, counting how many were started.
    struct Starter(AtomicUsize);

    impl Starter {
        fn new() -> Starter {
            Starter(AtomicUsize::new(100))
        }
        fn start(&self) -> Result<Arc<Fake>, ()> {
            Ok(Arc::new(Fake {
                id: self.0.fetch_add(1, Ordering::Relaxed),
                poisoned: AtomicBool::new(false),
            }))
        }
    }

    fn fake(id: usize) -> Arc<Fake> {
        Arc::new(Fake {
            id,
            poisoned: AtomicBool::new(false),
        })
    }

    #[test]
    fn checkout_is_round_robin_and_fills_empty_slots_once() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 3);
        let got: Vec<(usize, usize)> = (0..6)
            .map(|_| {
                let (slot, i) = pool.checkout(|| s.start()).unwrap();
                (slot, i.id)
            })
            .collect();
        assert_eq!(
            got,
            vec![(0, 1), (1, 100), (2, 101), (0, 1), (1, 100), (2, 101)]
        );
        assert_eq!(pool.live(), 3);
    }

    #[test]
    fn a_poisoned_instance_is_replaced_at_its_slots_next_checkout() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 2);
        let (_, first) = pool.checkout(|| s.start()).unwrap();
        first.poisoned.store(true, Ordering::Release);
        assert_eq!(pool.live(), 0, "slot 1 is still empty, slot 0 failed");
        let (slot, other) = pool.checkout(|| s.start()).unwrap();
        assert_eq!((slot, other.id), (1, 100));
        let (slot, replaced) = pool.checkout(|| s.start()).unwrap();
        assert_eq!((slot, replaced.id), (0, 101));
    }

    #[test]
    fn replace_renews_the_failed_slot_not_the_next_one() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 2);
        let (a_slot, a) = pool.checkout(|| s.start()).unwrap();
        let (b_slot, b) = pool.checkout(|| s.start()).unwrap();
        assert_eq!((a_slot, b_slot), (0, 1));
        a.poisoned.store(true, Ordering::Release);
        let fresh = pool.replace(a_slot, &a, || s.start()).unwrap();
        assert_eq!(fresh.id, 101);
        // Slot 1 keeps its healthy instance; slot 0 serves the replacement.
        let next: Vec<usize> = (0..2)
            .map(|_| pool.checkout(|| s.start()).unwrap().1.id)
            .collect();
        assert_eq!(next, vec![101, b.id]);
        assert_eq!(pool.live(), 2);
    }

    #[test]
    fn replace_shares_a_replacement_another_request_already_made() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 1);
        let (slot, failed) = pool.checkout(|| s.start()).unwrap();
        failed.poisoned.store(true, Ordering::Release);
        let first = pool.replace(slot, &failed, || s.start()).unwrap();
        let second = pool.replace(slot, &failed, || s.start()).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(s.0.load(Ordering::Relaxed), 101, "one instance started");
        // A replacement that itself failed is renewed again.
        first.poisoned.store(true, Ordering::Release);
        let third = pool.replace(slot, &first, || s.start()).unwrap();
        assert_eq!(third.id, 101);
    }

    #[test]
    fn a_failed_start_leaves_the_slot_as_it_was() {
        let pool = InstancePool::new(fake(1), 1);
        let (slot, failed) = pool.checkout(|| Err::<Arc<Fake>, _>("no")).unwrap();
        failed.poisoned.store(true, Ordering::Release);
        assert_eq!(pool.replace(slot, &failed, || Err("no")).err(), Some("no"));
        assert_eq!(pool.checkout(|| Err("still no")).err(), Some("still no"));
    }

    #[test]
    fn a_parked_pool_holds_nothing_until_its_first_request() {
        let next = AtomicUsize::new(10);
        let start = || Ok::<usize, ()>(next.fetch_add(1, Ordering::Relaxed));
        let pool = PerRequest::new(1usize, 1, 4);
        pool.drop_ready();
        assert_eq!(pool.live(), 0, "the loading instance is gone");
        assert_eq!(pool.take(start), Ok(10), "the first request starts one");
        pool.give_back(10);
        assert_eq!(pool.live(), 1, "and keeps it for the next");
        assert_eq!(pool.take(start), Ok(10));
    }

    #[test]
    fn per_request_instances_are_never_shared_or_reused() {
        let next = AtomicUsize::new(10);
        let start = || Ok::<usize, ()>(next.fetch_add(1, Ordering::Relaxed));
        let pool = PerRequest::new(1usize, 2, 8);
        let a = pool.take(start).unwrap();
        let b = pool.take(start).unwrap();
        assert_eq!((a, b), (1, 10), "the spare first, then a new one");
        assert_eq!(pool.busy(), 2);
        assert!(pool.release(), "no spare left: top up");
        assert!(pool.release());
        assert_eq!(pool.busy(), 0);
        assert_eq!(pool.live(), 0);
        pool.top_up(start);
        assert_eq!(pool.live(), 2, "spares topped up to 2");
        let c = pool.take(start).unwrap();
        let d = pool.take(start).unwrap();
        let e = pool.take(start).unwrap();
        let mut seen = vec![c, d, e];
        seen.sort();
        assert_eq!(seen, vec![11, 12, 13], "fresh instances only");
    }

    #[test]
    fn healthy_instances_are_reused_within_the_reservation() {
        let next = AtomicUsize::new(10);
        let start = || Ok::<usize, ()>(next.fetch_add(1, Ordering::Relaxed));
        let pool = PerRequest::new(1usize, 1, 2);
        let a = pool.take(start).unwrap();
        pool.give_back(a);
        assert_eq!(pool.take(start).unwrap(), 1, "the healthy instance again");
        assert_eq!(pool.busy(), 1);
        let b = pool.take(start).unwrap();
        assert_eq!(b, 10, "the one in use is never shared");
        pool.give_back(1);
        pool.give_back(b);
        assert_eq!((pool.busy(), pool.live()), (0, 2));
        // More than spares + limit alive at once is never kept.
        let full = PerRequest::new(1usize, 1, 1);
        full.ready().extend([2, 3]);
        let c = full.take(start).unwrap();
        full.give_back(c);
        assert_eq!(full.live(), 2, "the extra instance was dropped");
    }

    #[test]
    fn per_request_limit_refuses_and_frees_on_release() {
        let start = || Ok::<u8, ()>(0);
        let pool = PerRequest::new(0u8, 1, 2);
        let _a = pool.take(start).unwrap();
        let _b = pool.take(start).unwrap();
        assert_eq!(pool.take(start), Err(TakeError::Busy { limit: 2 }));
        pool.release();
        assert!(pool.take(start).is_ok());
        assert_eq!(pool.busy(), 2);
        // A renewal (FAIL_RELOAD) keeps the request's claim.
        assert!(pool.renew(start).is_ok());
        assert_eq!(pool.busy(), 2);
    }

    #[test]
    fn per_request_failed_start_gives_the_claim_back() {
        let pool: PerRequest<u8> = PerRequest::new(0, 1, 1);
        assert_eq!(pool.take(|| Err("unused")), Ok(0), "the first spare");
        pool.release();
        pool.top_up(|| Err::<u8, _>("cannot start"));
        assert_eq!(pool.live(), 0, "no spare could be started");
        assert_eq!(
            pool.take(|| Err("cannot start")),
            Err(TakeError::Start("cannot start"))
        );
        assert_eq!(pool.busy(), 0);
        assert_eq!(pool.take(|| Ok::<u8, &str>(7)), Ok(7));
    }
}
