//! Key-value stores behind `fermyon:spin/key-value` (spin/host.rs) and
//! `wasi:keyvalue` (cloud.rs): one [`Backend`] trait, kept in this
//! process's memory ([`MemoryStore`], memory.rs) or in a Redis server
//! ([`RedisStore`], redis.rs, its connections pooled per process by URL),
//! and a view of one under a key prefix ([`Scoped`], scoped.rs) that keeps
//! buckets and tenants apart in one store.
mod memory;
mod redis;
mod scoped;

use async_trait::async_trait;

pub(crate) use memory::MemoryStore;
pub(crate) use redis::RedisStore;
pub(crate) use scoped::Scoped;

/// The longest key a component may use, in bytes (Spin's own limit is 256).
pub(crate) const MAX_KEY_BYTES: usize = 256;
/// The most keys one listing returns.
pub(crate) const MAX_KEYS: usize = 100_000;

/// A key-value store; errors are the text the component is given.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String>;
    async fn delete(&self, key: &str) -> Result<(), String>;
    async fn exists(&self, key: &str) -> Result<bool, String>;
    /// The keys that start with `prefix` (all with ""), at most [`MAX_KEYS`].
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, String>;
    /// Adds `delta` to the counter at `key` (a decimal number as text, as
    /// Redis's INCRBY keeps it; 0 if absent) and returns the new value.
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, String>;
    /// Sets `key` to `value` if it still holds `expected` (`None`: absent),
    /// atomically; otherwise changes nothing and returns `Some` of what it
    /// holds (`Some(None)`: absent).
    async fn swap_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
    ) -> Result<Option<Option<Vec<u8>>>, String>;

    /// The values of `keys`, in order, each with its key (`wasi:keyvalue`
    /// batch); the first error ends it.
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<(String, Option<Vec<u8>>)>, String> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = self.get(&key).await?;
            values.push((key, value));
        }
        Ok(values)
    }

    /// Sets each key, checked first; the first error ends it.
    async fn set_many(&self, key_values: Vec<(String, Vec<u8>)>) -> Result<(), String> {
        for (key, value) in key_values {
            check_key(&key)?;
            self.set(&key, value).await?;
        }
        Ok(())
    }

    /// Deletes each key; the first error ends it.
    async fn delete_many(&self, keys: Vec<String>) -> Result<(), String> {
        for key in keys {
            self.delete(&key).await?;
        }
        Ok(())
    }
}

/// The most keys one `list-keys` page of `wasi:keyvalue` holds.
pub(crate) const KEYS_PER_PAGE: usize = 1000;

/// The page of `keys` (sorted here) starting at position `start`, and the
/// position of the next page if there is one: `wasi:keyvalue`'s cursor.
pub(crate) fn page(mut keys: Vec<String>, start: usize) -> (Vec<String>, Option<usize>) {
    keys.sort_unstable();
    let start = start.min(keys.len());
    let end = start.saturating_add(KEYS_PER_PAGE).min(keys.len());
    let next = (end < keys.len()).then_some(end);
    (keys.drain(start..end).collect(), next)
}

/// Refuses a key longer than [`MAX_KEY_BYTES`]; the hosts check a
/// component's keys before they reach a backend.
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key of {} bytes is longer than the {MAX_KEY_BYTES} bytes a key may have",
            key.len()
        ));
    }
    Ok(())
}

/// The error of a listing with more than [`MAX_KEYS`] keys.
fn too_many_keys() -> String {
    format!("the store has more than {MAX_KEYS} keys, more than one listing returns")
}
