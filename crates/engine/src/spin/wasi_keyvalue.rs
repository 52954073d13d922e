//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) for a Spin
//! component, as Spin 3 gives it: a bucket is one of the component's
//! key-value stores, opened by its label. The stores, the rules on which
//! labels a component may open and the request's count of open stores are
//! those of `fermyon:spin/key-value` (host.rs), so the two interfaces see
//! the same keys.
//!
//! Compare-and-swap: a `cas` handle remembers the value it read; `swap`
//! writes only if the store still holds that value (atomically in the
//! backend, key_value's `swap_if`), and otherwise fails with a new handle
//! holding the value found. A request holds at most [`MAX_CAS`] handles.
use wasmtime::component::Resource;

use super::host::wasi::keyvalue::{atomics, batch, store};
use super::host::{KvStore, SpinHost, MAX_OPEN_STORES};
use crate::key_value::{self, check_key, Backend};

/// The most `cas` handles one request may hold at once.
pub(crate) const MAX_CAS: usize = 64;

/// A `wasi:keyvalue/atomics.cas` resource: a key of a store and the value
/// it held when read.
pub struct Cas {
    store: std::sync::Arc<dyn Backend>,
    key: String,
    current: Option<Vec<u8>>,
}

fn other(e: String) -> store::Error {
    store::Error::Other(e)
}

impl store::Host for SpinHost {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<KvStore>, store::Error>> {
        match self.open_store(&identifier) {
            Ok(store) => Ok(Ok(self.table.push(store)?)),
            Err(true) => Ok(Err(store::Error::AccessDenied)),
            Err(false) => Ok(Err(other(format!(
                "this request holds {MAX_OPEN_STORES} stores open, as many as it may: drop one first"
            )))),
        }
    }
}

impl store::HostBucket for SpinHost {
    async fn get(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let backend = self.backend(&bucket)?;
        Ok(backend.get(&key).await.map_err(other))
    }

    async fn set(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let backend = self.backend(&bucket)?;
        if let Err(e) = check_key(&key) {
            return Ok(Err(other(e)));
        }
        Ok(backend.set(&key, value).await.map_err(other))
    }

    async fn delete(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let backend = self.backend(&bucket)?;
        Ok(backend.delete(&key).await.map_err(other))
    }

    async fn exists(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let backend = self.backend(&bucket)?;
        Ok(backend.exists(&key).await.map_err(other))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<KvStore>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let backend = self.backend(&bucket)?;
        let start = match cursor.as_deref().map(str::parse::<usize>) {
            None => 0,
            Some(Ok(start)) => start,
            Some(Err(_)) => {
                return Ok(Err(other(format!(
                    "cursor '{}' is not one this store returned",
                    cursor.unwrap_or_default().escape_debug()
                ))))
            }
        };
        let keys = match backend.keys("").await {
            Ok(keys) => keys,
            Err(e) => return Ok(Err(other(e))),
        };
        let (keys, next) = key_value::page(keys, start);
        Ok(Ok(store::KeyResponse {
            keys,
            cursor: next.map(|n| n.to_string()),
        }))
    }

    async fn drop(&mut self, bucket: Resource<KvStore>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.open = self.open.saturating_sub(1);
        Ok(())
    }
}

impl SpinHost {
    /// A new `cas` handle of `key` in `store`, holding `current`, counted.
    fn push_cas(
        &mut self,
        store: std::sync::Arc<dyn Backend>,
        key: String,
        current: Option<Vec<u8>>,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        if self.cas >= MAX_CAS {
            return Ok(Err(other(format!(
                "this request holds {MAX_CAS} compare-and-swap handles, as many as it may: swap or drop one first"
            ))));
        }
        self.cas += 1;
        Ok(Ok(self.table.push(Cas {
            store,
            key,
            current,
        })?))
    }
}

impl atomics::Host for SpinHost {
    async fn increment(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        let backend = self.backend(&bucket)?;
        if let Err(e) = check_key(&key) {
            return Ok(Err(other(e)));
        }
        Ok(backend.increment(&key, delta).await.map_err(other))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let Cas {
            store,
            key,
            current,
        } = self.table.delete(cas)?;
        self.cas = self.cas.saturating_sub(1);
        match store.swap_if(&key, current.as_deref(), value).await {
            Ok(None) => Ok(Ok(())),
            Ok(Some(found)) => match self.push_cas(store, key, found)? {
                Ok(again) => Ok(Err(atomics::CasError::CasFailed(again))),
                Err(e) => Ok(Err(atomics::CasError::StoreError(e))),
            },
            Err(e) => Ok(Err(atomics::CasError::StoreError(other(e)))),
        }
    }
}

impl atomics::HostCas for SpinHost {
    async fn new(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let backend = self.backend(&bucket)?;
        if let Err(e) = check_key(&key) {
            return Ok(Err(other(e)));
        }
        let current = match backend.get(&key).await {
            Ok(current) => current,
            Err(e) => return Ok(Err(other(e))),
        };
        self.push_cas(backend, key, current)
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        self.cas = self.cas.saturating_sub(1);
        Ok(())
    }
}

impl batch::Host for SpinHost {
    async fn get_many(
        &mut self,
        bucket: Resource<KvStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, store::Error>> {
        let backend = self.backend(&bucket)?;
        Ok(backend.get_many(keys).await.map_err(other))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<KvStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let backend = self.backend(&bucket)?;
        Ok(backend.set_many(key_values).await.map_err(other))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<KvStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let backend = self.backend(&bucket)?;
        Ok(backend.delete_many(keys).await.map_err(other))
    }
}
