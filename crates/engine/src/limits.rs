//! Resource limits of one guest store, and its memory accounting (also
//! summed over the request stores of an HTTP server).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::ResourceLimiter;

/// Caps that keep a runaway guest from exhausting the shim. A typical
/// component has a few dozen core instances, tables and memories.
const MAX_INSTANCES: usize = 1_000;
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;
/// 8 MiB of host memory per table at one pointer per element.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Enforces the container's memory limit over the sum of all linear
/// memories of a store (the OCI limit is per container, not per memory), and
/// keeps that sum readable from other threads.
///
/// Growing past the limit makes `memory.grow` return -1, as the wasm spec
/// expects of a failed allocation, so guests with an allocator can react;
/// an initial memory beyond the limit fails instantiation.
pub(crate) struct GuestLimiter {
    limit: Option<u64>,
    /// Bytes of linear memory currently granted to the store.
    used: Arc<AtomicU64>,
    /// The last grant, taken back if the growth then fails.
    last_grant: u64,
    /// Set once a growth was refused because of the memory limit: a guest
    /// that then fails ran out of memory (reported as OOM-killed).
    limit_hit: Arc<AtomicBool>,
    /// A sum over several stores this store's memory is also counted in
    /// (the container's figure of an HTTP server, one store per request);
    /// what this store holds is taken back out when it is dropped.
    total: Option<Arc<AtomicU64>>,
}

impl GuestLimiter {
    pub(crate) fn new(
        limit: Option<u64>,
        used: Arc<AtomicU64>,
        limit_hit: Arc<AtomicBool>,
    ) -> GuestLimiter {
        GuestLimiter {
            limit,
            used,
            last_grant: 0,
            limit_hit,
            total: None,
        }
    }

    /// The limiter of one request's store: `limit` applies to this store
    /// alone, and its memory is also counted into `total`, the container's
    /// figure summed over its live requests.
    pub(crate) fn per_request(limit: Option<u64>, total: Arc<AtomicU64>) -> GuestLimiter {
        GuestLimiter {
            limit,
            used: Arc::default(),
            last_grant: 0,
            limit_hit: Arc::default(),
            total: Some(total),
        }
    }

    /// Whether the memory limit refused this store a growth.
    pub(crate) fn limit_hit(&self) -> bool {
        self.limit_hit.load(Ordering::Relaxed)
    }
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        if let Some(total) = &self.total {
            total.fetch_sub(self.used.load(Ordering::Relaxed), Ordering::Relaxed);
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
        let grow = desired.saturating_sub(current) as u64;
        let used = self.used.load(Ordering::Relaxed);
        let after = used.saturating_add(grow);
        if self.limit.is_some_and(|limit| after > limit) {
            self.limit_hit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        // Only this store's thread writes, so load-then-store does not race.
        self.used.store(after, Ordering::Relaxed);
        self.last_grant = grow;
        if let Some(total) = &self.total {
            total.fetch_add(grow, Ordering::Relaxed);
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        log::debug!("guest memory growth failed after it was allowed: {error}");
        let used = self.used.load(Ordering::Relaxed);
        let taken_back = self.last_grant.min(used);
        self.used.store(used - taken_back, Ordering::Relaxed);
        if let Some(total) = &self.total {
            total.fetch_sub(taken_back, Ordering::Relaxed);
        }
        self.last_grant = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 * 1024;

    #[test]
    fn limit_applies_to_the_sum_of_memories() {
        let used = Arc::new(AtomicU64::new(0));
        let mut l = GuestLimiter::new(Some(4 * PAGE as u64), used.clone(), Arc::default());
        assert!(matches!(l.memory_growing(0, 2 * PAGE, None), Ok(true)));
        assert!(matches!(l.memory_growing(0, 2 * PAGE, None), Ok(true)));
        assert!(matches!(
            l.memory_growing(2 * PAGE, 3 * PAGE, None),
            Ok(false)
        ));
        assert_eq!(used.load(Ordering::Relaxed), 4 * PAGE as u64);
    }

    #[test]
    fn refusal_by_the_limit_is_remembered() {
        let hit = Arc::new(AtomicBool::new(false));
        let mut l = GuestLimiter::new(Some(PAGE as u64), Arc::default(), hit.clone());
        assert!(matches!(l.memory_growing(0, PAGE, Some(PAGE)), Ok(true)));
        assert!(!hit.load(Ordering::Relaxed));
        assert!(matches!(l.memory_growing(PAGE, 2 * PAGE, None), Ok(false)));
        assert!(hit.load(Ordering::Relaxed));
    }

    #[test]
    fn failed_growth_is_taken_back() {
        let used = Arc::new(AtomicU64::new(0));
        let mut l = GuestLimiter::new(None, used.clone(), Arc::default());
        assert!(matches!(l.memory_growing(0, PAGE, None), Ok(true)));
        assert!(matches!(l.memory_growing(PAGE, 3 * PAGE, None), Ok(true)));
        let _ = l.memory_grow_failed(wasmtime::format_err!("mmap failed"));
        assert_eq!(used.load(Ordering::Relaxed), PAGE as u64);
    }

    #[test]
    fn a_request_counts_into_the_total_until_dropped() {
        let total = Arc::new(AtomicU64::new(0));
        let mut a = GuestLimiter::per_request(Some(2 * PAGE as u64), total.clone());
        let mut b = GuestLimiter::per_request(Some(2 * PAGE as u64), total.clone());
        assert!(matches!(a.memory_growing(0, 2 * PAGE, None), Ok(true)));
        // The limit is per request, not over the total.
        assert!(matches!(b.memory_growing(0, 2 * PAGE, None), Ok(true)));
        assert_eq!(total.load(Ordering::Relaxed), 4 * PAGE as u64);
        assert!(matches!(
            b.memory_growing(2 * PAGE, 3 * PAGE, None),
            Ok(false)
        ));
        assert!(b.limit_hit() && !a.limit_hit());
        assert!(matches!(
            a.memory_growing(2 * PAGE, 2 * PAGE, None),
            Ok(true)
        ));
        let _ = a.memory_grow_failed(wasmtime::format_err!("mmap failed"));
        assert_eq!(total.load(Ordering::Relaxed), 4 * PAGE as u64);
        drop(a);
        assert_eq!(total.load(Ordering::Relaxed), 2 * PAGE as u64);
        drop(b);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }
}
