//! Who in this process owns a kernel buffer: the one consumer of a ring map, and the owner of
//! each slot of a perf event array.
//!
//! A ring buffer has one consumer position, so it has one consumer: a second one would publish
//! a position past a record the first still lends out, and the kernel would rewrite the record
//! while it is borrowed. [`RingClaim`] refuses a second consumer of the same map (by map id,
//! which the kernel never reuses while a descriptor keeps the map alive) until the first is
//! dropped. The registry is this process's: a consumer in another process is out of its sight.
//!
//! A perf event array slot holds the event one [`PerfBuffer`](crate::PerfBuffer) opened; a later
//! buffer on the same map takes the slots over. [`PerfSlots`] records which buffer stored each
//! slot last, so that dropping a buffer empties only the slots it still owns. The kernel cannot
//! tell userspace what a perf event array slot holds, so this too is seen from this process
//! only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::Error;

/// Ring maps (by id) that have a consumer in this process.
static RING_CONSUMERS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Owner of each perf event array slot stored from this process: (map id, CPU) → buffer.
static PERF_SLOTS: Mutex<BTreeMap<(u32, u32), u64>> = Mutex::new(BTreeMap::new());

/// Source of perf buffer identities (never reused within a process).
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The sets stay consistent whatever panicked while holding them (single inserts/removes).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The right to consume one ring map; released on drop.
#[derive(Debug)]
pub(crate) struct RingClaim {
    map_id: u32,
}

impl RingClaim {
    /// Claims map `map_id` (named `name`, for the error), or refuses if a consumer in this
    /// process holds it.
    pub fn take(map_id: u32, name: &str) -> Result<Self, Error> {
        if !lock(&RING_CONSUMERS).insert(map_id) {
            return Err(Error::AlreadyConsumed { what: format!("ring buffer map {name:?} (id {map_id})") });
        }
        Ok(RingClaim { map_id })
    }
}

impl Drop for RingClaim {
    fn drop(&mut self) {
        lock(&RING_CONSUMERS).remove(&self.map_id);
    }
}

/// The slots of one perf event array that one buffer stored.
#[derive(Debug)]
pub(crate) struct PerfSlots {
    map_id: u32,
    owner: u64,
}

impl PerfSlots {
    /// A new owner identity for map `map_id`.
    pub fn new(map_id: u32) -> Self {
        PerfSlots { map_id, owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed) }
    }

    /// Runs `store` (which puts this buffer's event into the slot of `cpu`) and records this
    /// buffer as the slot's owner, both under the registry lock so that no other buffer's store
    /// or release comes between.
    pub fn store(&self, cpu: u32, store: impl FnOnce() -> Result<(), Error>) -> Result<(), Error> {
        let mut slots = lock(&PERF_SLOTS);
        store()?;
        slots.insert((self.map_id, cpu), self.owner);
        Ok(())
    }

    /// Runs `clear` (which empties the slot of `cpu`) only if this buffer still owns the slot.
    pub fn release(&self, cpu: u32, clear: impl FnOnce()) {
        let mut slots = lock(&PERF_SLOTS);
        if slots.get(&(self.map_id, cpu)) == Some(&self.owner) {
            clear();
            slots.remove(&(self.map_id, cpu));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Map ids far above what the kernel hands out in a test run, so no kernel test collides.
    const MAP: u32 = u32::MAX - 7;

    #[test]
    fn a_ring_has_one_consumer_until_it_is_dropped() {
        let first = RingClaim::take(MAP, "events").unwrap();
        let err = RingClaim::take(MAP, "events").unwrap_err().to_string();
        assert!(err.contains("already has a consumer") && err.contains("id 4294967288"), "{err}");
        RingClaim::take(MAP - 1, "other").expect("another map is free");
        drop(first);
        RingClaim::take(MAP, "events").expect("free again once the first consumer is gone");
    }

    #[test]
    fn a_perf_slot_is_cleared_only_by_its_last_owner() {
        let map = MAP - 2;
        let (a, b) = (PerfSlots::new(map), PerfSlots::new(map));
        a.store(0, || Ok(())).unwrap();
        a.store(1, || Ok(())).unwrap();
        b.store(0, || Ok(())).unwrap();
        let mut cleared = Vec::new();
        a.release(0, || cleared.push(("a", 0)));
        a.release(1, || cleared.push(("a", 1)));
        b.release(0, || cleared.push(("b", 0)));
        assert_eq!(cleared, [("a", 1), ("b", 0)]);
        let failed = a.store(2, || Err(Error::Unsupported("no".into())));
        assert!(failed.is_err());
        a.release(2, || panic!("a slot whose store failed is not owned"));
    }
}
