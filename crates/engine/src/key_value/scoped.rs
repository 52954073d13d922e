//! A view of a store under a key prefix: what keeps a container's
//! `wasi:keyvalue` buckets apart from each other and from other tenants'
//! in one store (one in-memory store per container, or one Redis server).
//! The component sees its own keys only, without the prefix.
use std::sync::Arc;

use async_trait::async_trait;

use super::{check_key, Backend};

/// `inner`'s keys starting with `prefix`, the prefix taken off.
pub(crate) struct Scoped {
    inner: Arc<dyn Backend>,
    prefix: String,
}

impl Scoped {
    pub(crate) fn new(inner: Arc<dyn Backend>, prefix: String) -> Scoped {
        Scoped { inner, prefix }
    }

    /// The key in `inner`, once the component's key is checked: the limit
    /// applies to what the component wrote, not to the prefix.
    fn full(&self, key: &str) -> Result<String, String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }
}

#[async_trait]
impl Backend for Scoped {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.inner.get(&self.full(key)?).await
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.inner.set(&self.full(key)?, value).await
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        self.inner.delete(&self.full(key)?).await
    }

    async fn exists(&self, key: &str) -> Result<bool, String> {
        self.inner.exists(&self.full(key)?).await
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let keys = self.inner.keys(&format!("{}{prefix}", self.prefix)).await?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string))
            .collect())
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        self.inner.increment(&self.full(key)?, delta).await
    }

    async fn swap_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
    ) -> Result<Option<Option<Vec<u8>>>, String> {
        self.inner.swap_if(&self.full(key)?, expected, value).await
    }
}
