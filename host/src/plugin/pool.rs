//! The two ways plugin instances are shared between requests.
//!
//! - [`InstancePool`] (Proxy-Wasm): a few long-lived VMs, Envoy's model. A
//!   request is pinned to one slot's VM for its lifetime, and many requests
//!   share a VM. A slot whose VM failed gets a fresh one at its next use, and
//!   FAIL_RELOAD replaces exactly the slot that failed.
//! - [`PerRequest`] (components): every request gets an instance of its own
//!   that serves nobody else and is dropped when the request is done, so a
//!   crash can fail only that request. A few ready-to-use instances are kept
//!   so a request rarely pays for instantiation and `configure`; how many may
//!   serve requests at once is capped, so one busy plugin cannot take every
//!   slot of the engine.
//!
//! Checkout from an [`InstancePool`] never waits for guest code. Each OS
//! thread gets a home slot once (a thread-local index; Envoy keeps one VM
//! per worker for the same reason). A new request takes its thread's home VM
//! unless that VM is in a guest call right now, then the next idle VM, and
//! only when every VM is in a call falls back to round robin, counted as a
//! contended checkout. Reading a slot is one atomic load (`arc-swap`); the
//! slot's refill lock is taken only to start an instance, and checkout
//! skips a slot being refilled rather than wait for it.
//!
//! Because the request stays pinned to its VM (its HTTP context lives
//! there), and the worker that created it is the VM's home, two requests
//! only meet on one VM when tokio moved a request's task to another worker
//! mid-request, or when every VM was busy at checkout. The in-call check
//! and the claim are not one atomic step: two threads may both see a VM
//! idle and take it, and one of them then waits for the other's call; that
//! costs one guest call's time, never correctness.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

pub trait Poisonable {
    fn is_poisoned(&self) -> bool;
    /// Whether a guest call is running (or waiting to run) on it now.
    fn in_call(&self) -> bool {
        false
    }
}

/// Hands every OS thread that checks out an instance its own index, once.
static NEXT_HOME: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static HOME: Cell<Option<usize>> = const { Cell::new(None) };
}

/// This thread's home index (the same for every pool; each takes it modulo
/// its size).
fn home_index() -> usize {
    HOME.with(|h| match h.get() {
        Some(i) => i,
        None => {
            let i = NEXT_HOME.fetch_add(1, Ordering::Relaxed);
            h.set(Some(i));
            i
        }
    })
}

struct PoolSlot<T> {
    current: ArcSwapOption<T>,
    /// Held only while this slot's instance is being started, so a
    /// replacement starts once.
    refill: Mutex<()>,
}

impl<T: Poisonable> PoolSlot<T> {
    fn healthy(&self) -> Option<Arc<T>> {
        self.current.load_full().filter(|i| !i.is_poisoned())
    }

    /// The slot's healthy instance, or a new one from `start` (under the
    /// refill lock, which the caller holds).
    fn fill<E>(&self, start: impl FnOnce() -> Result<Arc<T>, E>) -> Result<Arc<T>, E> {
        if let Some(inst) = self.healthy() {
            return Ok(inst);
        }
        let inst = start()?;
        self.current.store(Some(inst.clone()));
        Ok(inst)
    }
}

fn lock_refill<T>(slot: &PoolSlot<T>) -> std::sync::MutexGuard<'_, ()> {
    slot.refill.lock().unwrap_or_else(|e| e.into_inner())
}

/// A slot's instance handed to one request.
pub struct Checkout<T> {
    pub slot: usize,
    pub instance: Arc<T>,
    /// Every VM was in a call: this request shares a busy one.
    pub contended: bool,
}

pub struct InstancePool<T> {
    slots: Vec<PoolSlot<T>>,
    /// Round robin, used only when every VM is busy.
    next: AtomicUsize,
}

impl<T: Poisonable> InstancePool<T> {
    /// A pool of `size` slots, the first holding `first`; the others fill on
    /// first use.
    pub fn new(first: Arc<T>, size: usize) -> InstancePool<T> {
        let slots = (0..size.max(1))
            .map(|i| PoolSlot {
                current: ArcSwapOption::new((i == 0).then(|| first.clone())),
                refill: Mutex::new(()),
            })
            .collect();
        InstancePool {
            slots,
            next: AtomicUsize::new(0),
        }
    }

    /// An instance for a new request on this thread: its home slot's VM when
    /// idle, else the next idle one, else round robin. An empty slot, or one
    /// whose instance failed, gets a new one from `start` first.
    pub fn checkout<E>(&self, start: impl FnOnce() -> Result<Arc<T>, E>) -> Result<Checkout<T>, E> {
        self.checkout_from(home_index(), start)
    }

    fn checkout_from<E>(
        &self,
        home: usize,
        start: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<Checkout<T>, E> {
        let n = self.slots.len();
        let home = home % n;
        for k in 0..n {
            let i = (home + k) % n;
            let slot = &self.slots[i];
            match slot.healthy() {
                Some(inst) if inst.in_call() => continue,
                Some(instance) => {
                    return Ok(Checkout {
                        slot: i,
                        instance,
                        contended: false,
                    });
                }
                None => {
                    // Empty or failed: start one here, unless another
                    // request is doing so right now.
                    let Ok(_refill) = slot.refill.try_lock() else {
                        continue;
                    };
                    if let Some(inst) = slot.healthy().filter(|i| i.in_call()) {
                        drop(inst);
                        continue;
                    }
                    let instance = slot.fill(start)?;
                    return Ok(Checkout {
                        slot: i,
                        instance,
                        contended: false,
                    });
                }
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let slot = &self.slots[i];
        let instance = match slot.healthy() {
            Some(inst) => inst,
            None => slot.fill_locked(start)?,
        };
        Ok(Checkout {
            slot: i,
            instance,
            contended: true,
        })
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
        let slot = &self.slots[slot % self.slots.len()];
        let _refill = lock_refill(slot);
        match slot.healthy() {
            Some(inst) if !Arc::ptr_eq(&inst, failed) => Ok(inst),
            _ => {
                let inst = start()?;
                slot.current.store(Some(inst.clone()));
                Ok(inst)
            }
        }
    }

    /// Gives every slot that holds an instance a new one from `start`
    /// (slots still empty fill on first use, from whatever `start` then
    /// makes). Requests pinned to a replaced instance finish on it. Stops
    /// at the first failure, leaving the remaining slots as they were.
    pub fn renew<E>(&self, mut start: impl FnMut() -> Result<Arc<T>, E>) -> Result<(), E> {
        for slot in &self.slots {
            let _refill = lock_refill(slot);
            if slot.current.load().is_some() {
                slot.current.store(Some(start()?));
            }
        }
        Ok(())
    }

    /// Instances that can serve requests now.
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.healthy().is_some()).count()
    }

    /// `f` summed over the instances in the slots now.
    #[cfg(test)]
    pub fn sum(&self, f: impl Fn(&T) -> usize) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.current.load_full())
            .map(|i| f(&i))
            .sum()
    }
}

impl<T: Poisonable> PoolSlot<T> {
    /// [`fill`](Self::fill), waiting for a refill in progress.
    fn fill_locked<E>(&self, start: impl FnOnce() -> Result<Arc<T>, E>) -> Result<Arc<T>, E> {
        let _refill = lock_refill(self);
        self.fill(start)
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

    /// Drops the ready instances (returning how many): an entry nobody has
    /// used yet holds no guest memory; the next `take` starts one.
    pub fn drop_ready(&self) -> usize {
        let parked = std::mem::take(&mut *self.ready());
        let n = parked.len();
        drop(parked);
        n
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
        busy: AtomicBool,
    }

    impl Poisonable for Fake {
        fn is_poisoned(&self) -> bool {
            self.poisoned.load(Ordering::Acquire)
        }
        fn in_call(&self) -> bool {
            self.busy.load(Ordering::Acquire)
        }
    }

    /// Starts fakes with increasing ids, counting how many were started.
    struct Starter(AtomicUsize);

    impl Starter {
        fn new() -> Starter {
            Starter(AtomicUsize::new(100))
        }
        fn start(&self) -> Result<Arc<Fake>, ()> {
            Ok(fake(self.0.fetch_add(1, Ordering::Relaxed)))
        }
    }

    fn fake(id: usize) -> Arc<Fake> {
        Arc::new(Fake {
            id,
            poisoned: AtomicBool::new(false),
            busy: AtomicBool::new(false),
        })
    }

    fn take(pool: &InstancePool<Fake>, home: usize, s: &Starter) -> (usize, usize) {
        let c = pool.checkout_from(home, || s.start()).unwrap();
        (c.slot, c.instance.id)
    }

    #[test]
    fn renew_replaces_started_slots_and_leaves_empty_ones_to_fill_later() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 3);
        // Slot 1 started too; slot 2 stays empty.
        assert_eq!(take(&pool, 1, &s), (1, 100));
        let pinned = pool.checkout_from(0, || s.start()).unwrap().instance;
        pool.renew(|| s.start()).unwrap();
        assert_eq!(pool.live(), 2, "the empty slot is not started");
        assert_eq!(take(&pool, 0, &s), (0, 101));
        assert_eq!(take(&pool, 1, &s), (1, 102));
        assert_eq!(
            pinned.id, 1,
            "a request keeps the instance it was pinned to"
        );
        assert_eq!(take(&pool, 2, &s), (2, 103));

        // A failed start stops the renewal: later slots keep theirs.
        let calls = AtomicUsize::new(0);
        let failing = || match calls.fetch_add(1, Ordering::Relaxed) {
            0 => s.start(),
            _ => Err(()),
        };
        assert_eq!(pool.renew(failing), Err(()));
        assert_eq!(take(&pool, 0, &s), (0, 104));
        assert_eq!(take(&pool, 1, &s), (1, 102));
        assert_eq!(take(&pool, 2, &s), (2, 103));
    }

    #[test]
    fn an_idle_home_slot_is_returned_every_time() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 3);
        // The thread's own home, whatever index it got.
        let home = pool.checkout(|| s.start()).unwrap().slot;
        for _ in 0..5 {
            let c = pool.checkout(|| s.start()).unwrap();
            assert_eq!(c.slot, home);
            assert!(!c.contended);
        }
        assert_eq!(
            pool.live(),
            if home == 0 { 1 } else { 2 },
            "one slot filled"
        );
        // Other homes fill their own slot once, then keep it.
        let got: Vec<_> = [1, 2, 1, 2, 0]
            .iter()
            .map(|&h| take(&pool, h, &s))
            .collect();
        assert_eq!(got[0], got[2]);
        assert_eq!(got[1], got[3]);
        assert_eq!((got[0].0, got[1].0, got[4].0), (1, 2, 0));
        assert_eq!(pool.live(), 3);
    }

    #[test]
    fn a_vm_in_a_call_on_another_thread_sends_the_request_elsewhere() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 2);
        let a = pool.checkout_from(0, || s.start()).unwrap().instance;
        let (in_call, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|t| {
            t.spawn(|| {
                a.busy.store(true, Ordering::Release);
                in_call.wait();
                release.wait();
                a.busy.store(false, Ordering::Release);
            });
            in_call.wait();
            let c = pool.checkout_from(0, || s.start()).unwrap();
            assert_eq!((c.slot, c.instance.id, c.contended), (1, 100, false));
            release.wait();
        });
        assert_eq!(take(&pool, 0, &s), (0, 1), "home again once idle");
    }

    #[test]
    fn with_every_vm_busy_checkout_goes_round_robin_without_waiting() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 3);
        let all: Vec<_> = (0..3)
            .map(|h| pool.checkout_from(h, || s.start()).unwrap())
            .collect();
        for c in &all {
            c.instance.busy.store(true, Ordering::Release);
        }
        let got: Vec<(usize, bool)> = (0..4)
            .map(|_| {
                let c = pool.checkout_from(1, || s.start()).unwrap();
                (c.slot, c.contended)
            })
            .collect();
        assert_eq!(got, vec![(0, true), (1, true), (2, true), (0, true)]);
        assert_eq!(s.0.load(Ordering::Relaxed), 102, "nothing more started");
    }

    #[test]
    fn a_slot_being_refilled_is_skipped_not_waited_for() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 2);
        let first = pool.checkout_from(0, || s.start()).unwrap().instance;
        first.poisoned.store(true, Ordering::Release);
        let _refilling = pool.slots[0].refill.lock().unwrap();
        assert_eq!(take(&pool, 0, &s), (1, 100));
    }

    #[test]
    fn a_poisoned_home_slot_is_renewed_at_its_next_checkout() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 2);
        let first = pool.checkout_from(0, || s.start()).unwrap().instance;
        first.poisoned.store(true, Ordering::Release);
        assert_eq!(pool.live(), 0, "slot 1 is still empty, slot 0 failed");
        assert_eq!(take(&pool, 1, &s), (1, 100));
        assert_eq!(take(&pool, 0, &s), (0, 101));
        assert_eq!(take(&pool, 0, &s), (0, 101));
    }

    #[test]
    fn replace_renews_the_failed_slot_not_the_next_one() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 2);
        let a = pool.checkout_from(0, || s.start()).unwrap();
        let b = pool.checkout_from(1, || s.start()).unwrap();
        assert_eq!((a.slot, b.slot), (0, 1));
        a.instance.poisoned.store(true, Ordering::Release);
        let fresh = pool.replace(a.slot, &a.instance, || s.start()).unwrap();
        assert_eq!(fresh.id, 101);
        // Slot 1 keeps its healthy instance; slot 0 serves the replacement.
        let next: Vec<usize> = (0..2).map(|h| take(&pool, h, &s).1).collect();
        assert_eq!(next, vec![101, b.instance.id]);
        assert_eq!(pool.live(), 2);
    }

    #[test]
    fn replace_shares_a_replacement_another_request_already_made() {
        let s = Starter::new();
        let pool = InstancePool::new(fake(1), 1);
        let c = pool.checkout_from(0, || s.start()).unwrap();
        let (slot, failed) = (c.slot, c.instance);
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
        let c = pool.checkout(|| Err::<Arc<Fake>, _>("no")).unwrap();
        let (slot, failed) = (c.slot, c.instance);
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
