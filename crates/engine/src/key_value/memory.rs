//! A key-value store in this process's memory, one per container (or per
//! Spin store label): shared by the container's requests, gone when the
//! container ends.
//!
//! Bounded: the bytes of its keys and values, counted as
//! `key.len() + value.len()` per entry, may not exceed
//! [`MEMORY_STORE_MAX_BYTES`]; a `set` that would go over fails with an
//! error the component sees, naming the limit. A container's store for
//! `wasi:keyvalue` is also given the container's [`MemoryMeter`] when it
//! starts: its bytes then count against the container's memory limit (and
//! show in its stats), and a `set` past the limit fails the same way.
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use async_trait::async_trait;

use super::{too_many_keys, Backend, MAX_KEYS};
use crate::limits::MemoryMeter;

/// The most bytes (keys plus values) one in-memory store holds: 16 MiB.
pub(crate) const MEMORY_STORE_MAX_BYTES: usize = 16 << 20;

/// A store in this process's memory.
#[derive(Default)]
pub(crate) struct MemoryStore {
    inner: Mutex<Memory>,
    /// The container's memory sum, once it runs.
    meter: OnceLock<MemoryMeter>,
}

#[derive(Default)]
struct Memory {
    entries: HashMap<String, Vec<u8>>,
    /// Sum over entries of key and value lengths.
    bytes: usize,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, Memory> {
        // A panic while holding it cannot leave the map half-changed: each
        // change is one insert or remove and the count after it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the store's bytes, from now on, against `meter` (set once; a
    /// store that is not charged holds nothing yet).
    pub(crate) fn charge_to(&self, meter: MemoryMeter) {
        let _ = self.meter.set(meter);
    }

    /// The bytes held now (keys plus values).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Memory {
    fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        meter: Option<&MemoryMeter>,
    ) -> Result<(), String> {
        let old = self.entries.get(key).map_or(0, |v| key.len() + v.len());
        let new = key.len() + value.len();
        let after = self.bytes - old + new;
        if after > MEMORY_STORE_MAX_BYTES {
            return Err(format!(
                "the in-memory store is full: this set would make it {after} bytes (keys plus values), more than its {MEMORY_STORE_MAX_BYTES}; delete keys, or configure a Redis store"
            ));
        }
        if let Some(meter) = meter {
            if new > old {
                if !meter.charge((new - old) as u64) {
                    return Err(format!(
                        "the container's memory limit ({} bytes) has no room for this set of {new} bytes (key plus value), which the in-memory store counts against it; delete keys, raise the limit, or configure a Redis store",
                        meter.limit().unwrap_or(0)
                    ));
                }
            } else {
                meter.release((old - new) as u64);
            }
        }
        self.entries.insert(key.to_string(), value);
        self.bytes = after;
        Ok(())
    }
}

#[async_trait]
impl Backend for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.lock().entries.get(key).cloned())
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.lock().put(key, value, self.meter.get())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let mut memory = self.lock();
        if let Some(value) = memory.entries.remove(key) {
            let freed = key.len() + value.len();
            memory.bytes -= freed;
            if let Some(meter) = self.meter.get() {
                meter.release(freed as u64);
            }
        }
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, String> {
        Ok(self.lock().entries.contains_key(key))
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let memory = self.lock();
        let keys: Vec<String> = memory
            .entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .take(MAX_KEYS + 1)
            .cloned()
            .collect();
        if keys.len() > MAX_KEYS {
            return Err(too_many_keys());
        }
        Ok(keys)
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        let mut memory = self.lock();
        let now = match memory.entries.get(key) {
            None => 0,
            Some(value) => std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
                .ok_or_else(|| {
                    format!("the value of '{key}' is not a counter (a decimal integer)")
                })?,
        };
        let after = now
            .checked_add(delta)
            .ok_or_else(|| format!("incrementing '{key}' by {delta} overflows"))?;
        memory.put(key, after.to_string().into_bytes(), self.meter.get())?;
        Ok(after)
    }

    async fn swap_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
    ) -> Result<Option<Option<Vec<u8>>>, String> {
        let mut memory = self.lock();
        let found = memory.entries.get(key);
        if found.map(Vec::as_slice) != expected {
            return Ok(Some(found.cloned()));
        }
        memory.put(key, value, self.meter.get())?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt.block_on(f),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_memory_store_counts_keys_and_values() {
        let store = MemoryStore::default();
        block(async {
            assert_eq!(store.set("a", vec![1, 2, 3]).await, Ok(()));
            assert_eq!(store.bytes(), 4);
            assert_eq!(store.set("a", vec![1]).await, Ok(()));
            assert_eq!(store.bytes(), 2);
            assert_eq!(store.get("a").await, Ok(Some(vec![1])));
            assert_eq!(store.exists("b").await, Ok(false));
            assert_eq!(store.delete("a").await, Ok(()));
            assert_eq!(store.bytes(), 0);
            assert_eq!(store.get("a").await, Ok(None));
        });
    }

    #[test]
    fn the_memory_store_is_bounded() {
        let store = MemoryStore::default();
        block(async {
            let big = vec![0u8; MEMORY_STORE_MAX_BYTES - 1];
            assert_eq!(store.set("k", big).await, Ok(()));
            let e = store.set("l", vec![0]).await.err().unwrap_or_default();
            assert!(e.contains("the in-memory store is full"), "{e}");
            // Replacing a value counts the old one out.
            assert_eq!(store.set("k", vec![0]).await, Ok(()));
            assert_eq!(store.set("l", vec![0]).await, Ok(()));
        });
    }

    #[test]
    fn a_charged_store_counts_against_the_memory_limit() {
        let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(50));
        let used = || total.load(std::sync::atomic::Ordering::Relaxed);
        let store = MemoryStore::default();
        store.charge_to(MemoryMeter::new(total.clone(), Some(100)));
        block(async {
            assert_eq!(store.set("a", vec![0; 39]).await, Ok(()));
            assert_eq!(used(), 90);
            let e = store.set("b", vec![0; 10]).await.err().unwrap_or_default();
            assert!(e.contains("memory limit (100 bytes)"), "{e}");
            assert_eq!(used(), 90);
            assert_eq!(store.set("a", vec![0; 9]).await, Ok(()));
            assert_eq!(used(), 60);
            assert_eq!(store.delete("a").await, Ok(()));
            assert_eq!(used(), 50);
        });
    }

    #[test]
    fn counters_and_listings() {
        let store = MemoryStore::default();
        block(async {
            assert_eq!(store.increment("n", 2).await, Ok(2));
            assert_eq!(store.increment("n", -5).await, Ok(-3));
            assert_eq!(store.get("n").await, Ok(Some(b"-3".to_vec())));
            assert_eq!(store.set("x", b"text".to_vec()).await, Ok(()));
            assert!(store.increment("x", 1).await.is_err());
            assert_eq!(store.keys("n").await, Ok(vec!["n".to_string()]));
            assert_eq!(store.keys("").await.map(|k| k.len()), Ok(2));
        });
    }

    #[test]
    fn swaps_happen_only_over_the_value_expected() {
        let store = MemoryStore::default();
        block(async {
            assert_eq!(store.swap_if("k", None, b"1".to_vec()).await, Ok(None));
            let stale = store.swap_if("k", None, b"2".to_vec()).await;
            assert_eq!(stale, Ok(Some(Some(b"1".to_vec()))));
            assert_eq!(
                store.swap_if("k", Some(b"1"), b"2".to_vec()).await,
                Ok(None)
            );
            assert_eq!(store.get("k").await, Ok(Some(b"2".to_vec())));
            assert_eq!(store.delete("k").await, Ok(()));
            let gone = store.swap_if("k", Some(b"2"), b"3".to_vec()).await;
            assert_eq!(gone, Ok(Some(None)));
        });
    }
}
