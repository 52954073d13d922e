//! Key-value stores of a Spin app (`fermyon:spin/key-value`): a component
//! opens the labels its `key_value_stores` lists. Store `default` is kept
//! in memory for the container unless runtime config says otherwise
//! (runtime_config.rs); the container's stores are shared by its components
//! and its requests, and gone when it ends.
//!
//! The in-memory store is bounded: the bytes of its keys and values,
//! counted as `key.len() + value.len()` per entry, may not exceed
//! [`MEMORY_STORE_MAX_BYTES`]; a `set` that would go over fails with an
//! error the component sees, naming the limit.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

/// The most bytes (keys plus values) one in-memory store holds: 16 MiB.
pub(crate) const MEMORY_STORE_MAX_BYTES: usize = 16 << 20;
/// The longest key a store takes, in bytes (Spin's own limit is 256).
pub(crate) const MAX_KEY_BYTES: usize = 256;

/// A key-value store; errors are the text the component is given.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String>;
    async fn delete(&self, key: &str) -> Result<(), String>;
    async fn exists(&self, key: &str) -> Result<bool, String>;
    async fn keys(&self) -> Result<Vec<String>, String>;
}

/// The stores of a container, by label.
pub(crate) type Stores = HashMap<String, Arc<dyn Backend>>;

/// A store in this process's memory.
#[derive(Default)]
pub(crate) struct MemoryStore {
    inner: Mutex<Memory>,
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

    /// The bytes held now (keys plus values).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Refuses a key longer than [`MAX_KEY_BYTES`].
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key of {} bytes is longer than the {MAX_KEY_BYTES} bytes a key may have",
            key.len()
        ));
    }
    Ok(())
}

#[async_trait]
impl Backend for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.lock().entries.get(key).cloned())
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        check_key(key)?;
        let mut memory = self.lock();
        let old = memory.entries.get(key).map_or(0, |v| key.len() + v.len());
        let new = key.len() + value.len();
        let after = memory.bytes - old + new;
        if after > MEMORY_STORE_MAX_BYTES {
            return Err(format!(
                "the in-memory store is full: this set would make it {after} bytes (keys plus values), more than its {MEMORY_STORE_MAX_BYTES}; delete keys, or configure a Redis store in runtime config"
            ));
        }
        memory.entries.insert(key.to_string(), value);
        memory.bytes = after;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let mut memory = self.lock();
        if let Some(value) = memory.entries.remove(key) {
            memory.bytes -= key.len() + value.len();
        }
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, String> {
        Ok(self.lock().entries.contains_key(key))
    }

    async fn keys(&self) -> Result<Vec<String>, String> {
        Ok(self.lock().entries.keys().cloned().collect())
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
            let long = "x".repeat(MAX_KEY_BYTES + 1);
            assert!(store.set(&long, vec![]).await.is_err());
        });
    }
}
