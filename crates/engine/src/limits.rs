//! Resource limits of a container's stores, and its memory accounting:
//! linear memories, tables, and each store's stack and instance state,
//! summed over the request stores of an HTTP server.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::ResourceLimiter;

use crate::instance_state::InstanceState;
use crate::pool::{PoolShare, MAX_TABLE_ELEMENTS};

/// Host bytes per table element: wasmtime 48 keeps a funcref as one pointer
/// and a GC reference in 4 bytes (`NOMINAL_MAX_TABLE_ELEM_SIZE`, which also
/// sizes a pool table slot); 8 covers both.
pub(crate) const TABLE_ELEMENT_BYTES: u64 = 8;

/// The stack each store of a guest runs its wasm on: wasmtime's fiber
/// stack for asynchronous calls, set to this size in the engine's config.
/// Counted against the memory limit once per store (per request for an
/// HTTP server), as the host memory the store may hold for it.
pub(crate) const STACK_BYTES: usize = 2 << 20;

/// What a container's stores may hold: its memory limit (over linear
/// memories and table elements together) and its share of the instance pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuestLimits {
    /// `linux.resources.memory.limit`, or the engine's default cap.
    pub(crate) memory: Option<u64>,
    pub(crate) share: PoolShare,
    /// The instances each store of the code makes and what they hold.
    pub(crate) instance_state: InstanceState,
}

impl GuestLimits {
    /// What a store holds before its guest runs: its stack and its
    /// instances' state.
    pub(crate) fn store_bytes(&self) -> u64 {
        (STACK_BYTES as u64).saturating_add(self.instance_state.bytes)
    }
}

/// Enforces the container's memory limit over the sum of all linear
/// memories and tables of its stores (the OCI limit is per container, not
/// per memory or per request), and keeps that sum readable from other
/// threads.
///
/// Growing past the limit makes `memory.grow` and `table.grow` return -1,
/// as the wasm spec expects of a failed allocation, so guests with an
/// allocator can react; an initial memory or table beyond the limit fails
/// instantiation.
pub(crate) struct GuestLimiter {
    limits: GuestLimits,
    /// Bytes granted to this store.
    own: u64,
    /// Bytes granted to all of the container's live stores (this one alone,
    /// or an HTTP server's requests); the limit applies to it.
    total: Arc<AtomicU64>,
    /// Whether what this store holds is taken back out of `total` when it
    /// is dropped (a request's store), or stays as the container's last
    /// figure (a guest's one store).
    release_on_drop: bool,
    /// Set once a growth was refused because of the memory limit: a guest
    /// that then fails ran out of memory (reported as OOM-killed).
    limit_hit: Arc<AtomicBool>,
}

impl GuestLimiter {
    /// The limiter of a guest's one store, counting into `used`.
    pub(crate) fn new(
        limits: GuestLimits,
        used: Arc<AtomicU64>,
        limit_hit: Arc<AtomicBool>,
    ) -> GuestLimiter {
        GuestLimiter {
            limits,
            own: 0,
            total: used,
            release_on_drop: false,
            limit_hit,
        }
    }

    /// The limiter of one request's store: its memory counts into `total`,
    /// the container's figure summed over its live requests, and the limit
    /// applies to that sum.
    pub(crate) fn per_request(limits: GuestLimits, total: Arc<AtomicU64>) -> GuestLimiter {
        GuestLimiter {
            limits,
            own: 0,
            total,
            release_on_drop: true,
            limit_hit: Arc::default(),
        }
    }

    /// Whether the memory limit refused this store a growth.
    pub(crate) fn limit_hit(&self) -> bool {
        self.limit_hit.load(Ordering::Relaxed)
    }

    /// Counts the store's stack ([`STACK_BYTES`]) and instance state
    /// against the limit, before anything runs on it. False if they do not
    /// fit: the store must not run (too many requests in flight for the
    /// limit, or a limit smaller than one store).
    pub(crate) fn reserve_store(&mut self) -> bool {
        self.grant(self.limits.store_bytes())
    }

    /// Grants `bytes` more if the container's sum stays within the limit.
    fn grant(&mut self, bytes: u64) -> bool {
        let limit = self.limits.memory;
        let granted = self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                let after = total.saturating_add(bytes);
                limit.is_none_or(|limit| after <= limit).then_some(after)
            });
        if granted.is_err() {
            self.limit_hit.store(true, Ordering::Relaxed);
            return false;
        }
        self.own = self.own.saturating_add(bytes);
        true
    }
}

/// A charge against a container's memory sum (the one its stores' limiters
/// keep) from outside its stores: the bytes of its in-memory key-value
/// store (key_value/memory.rs), so that they count against the memory limit
/// and show in its stats.
#[derive(Clone)]
pub(crate) struct MemoryMeter {
    total: Arc<AtomicU64>,
    limit: Option<u64>,
}

impl MemoryMeter {
    pub(crate) fn new(total: Arc<AtomicU64>, limit: Option<u64>) -> MemoryMeter {
        MemoryMeter { total, limit }
    }

    /// Adds `bytes` if the sum stays within the limit; false if not.
    pub(crate) fn charge(&self, bytes: u64) -> bool {
        let limit = self.limit;
        self.total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                let after = total.saturating_add(bytes);
                limit.is_none_or(|limit| after <= limit).then_some(after)
            })
            .is_ok()
    }

    /// Takes `bytes` charged before back out.
    pub(crate) fn release(&self, bytes: u64) {
        let _ = self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                Some(total.saturating_sub(bytes))
            });
    }

    /// The limit, for errors.
    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        if self.release_on_drop {
            self.total.fetch_sub(self.own, Ordering::Relaxed);
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.grant(desired.saturating_sub(current) as u64))
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // Not taken back: wasmtime also reports failures it finds before
        // asking (a size the memory's type cannot hold), and taking back the
        // previous grant then would let a guest alternate the two to grow
        // past its limit. A grant whose growth failed stays counted, which
        // errs on the safe side.
        log::debug!("guest memory growth failed: {error}");
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS || maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let elements = desired.saturating_sub(current) as u64;
        Ok(self.grant(elements.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // Not taken back, as for memories (an overflowing size is reported
        // before the limiter is asked).
        log::debug!("guest table growth failed: {error}");
        Ok(())
    }

    fn instances(&self) -> usize {
        // No more than were counted in the instance state, so it stays a
        // bound.
        let counted = self.limits.instance_state.core_instances;
        self.limits.share.instances.min(counted).max(1) as usize
    }

    fn tables(&self) -> usize {
        self.limits.share.tables as usize
    }

    fn memories(&self) -> usize {
        self.limits.share.memories as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 * 1024;

    fn limits(memory: Option<u64>) -> GuestLimits {
        GuestLimits {
            memory,
            share: PoolShare::of(1_000, 1),
            instance_state: InstanceState {
                core_instances: 1,
                bytes: 0,
            },
        }
    }

    #[test]
    fn limit_applies_to_the_sum_of_memories() {
        let used = Arc::new(AtomicU64::new(0));
        let mut l = GuestLimiter::new(limits(Some(4 * PAGE as u64)), used.clone(), Arc::default());
        assert!(matches!(l.memory_growing(0, 2 * PAGE, None), Ok(true)));
        assert!(matches!(l.memory_growing(0, 2 * PAGE, None), Ok(true)));
        assert!(matches!(
            l.memory_growing(2 * PAGE, 3 * PAGE, None),
            Ok(false)
        ));
        assert_eq!(used.load(Ordering::Relaxed), 4 * PAGE as u64);
    }

    #[test]
    fn tables_count_against_the_memory_limit() {
        let used = Arc::new(AtomicU64::new(0));
        let hit = Arc::new(AtomicBool::new(false));
        let mut l = GuestLimiter::new(limits(Some(64 << 20)), used.clone(), hit.clone());
        assert!(matches!(l.memory_growing(0, 32 << 20, None), Ok(true)));
        // 2^20 funcrefs hold 8 MiB: four fit beside the memory, a fifth not.
        for _ in 0..4 {
            assert!(matches!(l.table_growing(0, 1 << 20, None), Ok(true)));
        }
        assert_eq!(used.load(Ordering::Relaxed), 64 << 20);
        assert!(matches!(l.table_growing(0, 1, None), Ok(false)));
        assert!(hit.load(Ordering::Relaxed));
        assert!(matches!(l.table_growing(0, (1 << 20) + 1, None), Ok(false)));
        assert_eq!(used.load(Ordering::Relaxed), 64 << 20);
    }

    #[test]
    fn refusal_by_the_limit_is_remembered() {
        let hit = Arc::new(AtomicBool::new(false));
        let mut l = GuestLimiter::new(limits(Some(PAGE as u64)), Arc::default(), hit.clone());
        assert!(matches!(l.memory_growing(0, PAGE, Some(PAGE)), Ok(true)));
        assert!(!hit.load(Ordering::Relaxed));
        assert!(matches!(l.memory_growing(PAGE, 2 * PAGE, None), Ok(false)));
        assert!(hit.load(Ordering::Relaxed));
    }

    /// wasmtime reports some failures without asking first (a size the
    /// type cannot hold, an overflowing table size): taking back the previous
    /// grant then would let a guest grow, fail, grow again past its limit.
    #[test]
    fn a_failure_never_gives_back_an_earlier_grant() {
        let used = Arc::new(AtomicU64::new(0));
        let mut l = GuestLimiter::new(limits(Some(2 * PAGE as u64)), used.clone(), Arc::default());
        for _ in 0..2 {
            assert!(matches!(l.memory_growing(0, PAGE, None), Ok(true)));
            let _ = l.memory_grow_failed(wasmtime::format_err!("exceeds the type's limits"));
            let _ = l.table_grow_failed(wasmtime::format_err!("overflow"));
        }
        assert_eq!(used.load(Ordering::Relaxed), 2 * PAGE as u64);
        assert!(matches!(l.memory_growing(0, PAGE, None), Ok(false)));
    }

    #[test]
    fn each_store_counts_its_stack() {
        let total = Arc::new(AtomicU64::new(0));
        let limit = Some(2 * STACK_BYTES as u64 + PAGE as u64);
        let mut a = GuestLimiter::per_request(limits(limit), total.clone());
        let mut b = GuestLimiter::per_request(limits(limit), total.clone());
        let mut c = GuestLimiter::per_request(limits(limit), total.clone());
        assert!(a.reserve_store() && b.reserve_store());
        assert!(!c.reserve_store(), "a third stack fits no more");
        assert!(matches!(a.memory_growing(0, PAGE, None), Ok(true)));
        assert!(matches!(b.memory_growing(0, PAGE, None), Ok(false)));
        drop(a);
        assert!(c.reserve_store());
        assert_eq!(total.load(Ordering::Relaxed), 2 * STACK_BYTES as u64);
    }

    #[test]
    fn requests_share_one_limit_and_give_back_on_drop() {
        let total = Arc::new(AtomicU64::new(0));
        let mut a = GuestLimiter::per_request(limits(Some(3 * PAGE as u64)), total.clone());
        let mut b = GuestLimiter::per_request(limits(Some(3 * PAGE as u64)), total.clone());
        assert!(matches!(a.memory_growing(0, 2 * PAGE, None), Ok(true)));
        // Within the limit alone, above it summed with the other request.
        assert!(matches!(b.memory_growing(0, 2 * PAGE, None), Ok(false)));
        assert!(b.limit_hit() && !a.limit_hit());
        assert!(matches!(b.memory_growing(0, PAGE, None), Ok(true)));
        assert_eq!(total.load(Ordering::Relaxed), 3 * PAGE as u64);
        drop(a);
        assert_eq!(total.load(Ordering::Relaxed), PAGE as u64);
        assert!(matches!(b.memory_growing(PAGE, 3 * PAGE, None), Ok(true)));
        drop(b);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }
}
