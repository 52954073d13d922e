//! The WASI cloud interfaces any component is given (a `wasi:cli` command
//! or a `wasi:http` server, not only a Spin app): `wasi:config/store`
//! (0.2.0-draft-2024-09-27) and `wasi:keyvalue` store, atomics and batch
//! (0.2.0-draft, as wasmtime-wasi-keyvalue serves them). Their WIT is in
//! crates/engine/wit/cloud.
//!
//! Config: the container's values, read at create (config_values.rs).
//!
//! Key-value: a container's buckets live in one store: in memory, scoped
//! to the container (shared by its requests, gone with it, at most 16 MiB
//! of keys and values, counted against the container's memory limit), or in Redis when the container's env sets
//! [`KEYVALUE_REDIS_URL_ENV`] (`redis://host:port[/db]`). In Redis, keys are
//! `wasishim/<scope>/<bucket>/<key>`, the scope being the Kubernetes
//! namespace of the container's pod, or `-` for a container without a
//! pod: containers of one namespace (or pod-less ones) on one Redis share
//! their buckets, other namespaces' keys they cannot name. The connection
//! is pooled per process by URL (key_value/redis.rs): one per node in the
//! per-node shim. A bucket identifier is at most [`MAX_BUCKET_BYTES`]
//! bytes without `/` (`""` too); keys at most 256 bytes. Counters
//! (`increment`) are decimal text, as Redis's INCRBY keeps them.
//!
//! One [`CloudHost`] per store (per request of an HTTP server), holding
//! the request's open buckets (at most [`MAX_OPEN_BUCKETS`]).
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};

use crate::key_value::{self, Backend, MemoryStore, RedisStore, Scoped};
use crate::limits::MemoryMeter;
use crate::wasi::WasiTemplate;
use crate::WorkloadSpec;

wasmtime::component::bindgen!({
    path: "wit/cloud",
    world: "provided",
    imports: { default: async | trappable },
    with: {
        "wasi:keyvalue/store.bucket": Bucket,
    },
});

use wasi::config::store as config;
use wasi::keyvalue::{atomics, batch, store};

/// Container environment variable: the Redis server holding the
/// container's `wasi:keyvalue` buckets, `redis://host:port[/db]`.
pub const KEYVALUE_REDIS_URL_ENV: &str = "WASISHIM_KEYVALUE_REDIS_URL";
/// The most buckets one instance may hold open at once.
pub(crate) const MAX_OPEN_BUCKETS: usize = 16;
/// The longest bucket identifier, in bytes.
pub(crate) const MAX_BUCKET_BYTES: usize = 64;

/// An open bucket: a `wasi:keyvalue/store.bucket` resource.
pub struct Bucket {
    backend: Scoped,
}

/// What every instance of one container shares: its config values and its
/// key-value store.
#[derive(Clone)]
pub(crate) struct Cloud {
    config: Arc<BTreeMap<String, String>>,
    store: Arc<dyn Backend>,
    /// The store when it is in memory, to charge to the container.
    memory: Option<Arc<MemoryStore>>,
}

impl Cloud {
    /// The container's config values and store, from its spec.
    ///
    /// # Errors
    ///
    /// Config values that cannot be read or are too large
    /// (config_values.rs), or a Redis URL that is not one.
    pub(crate) fn new(spec: &WorkloadSpec, template: &WasiTemplate) -> Result<Cloud> {
        let config = crate::config_values::read(&spec.env, template)?;
        let url = spec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == KEYVALUE_REDIS_URL_ENV)
            .map(|(_, v)| v.trim());
        let mut memory = None;
        let store: Arc<dyn Backend> = match url {
            None | Some("") => {
                let store = Arc::new(MemoryStore::default());
                memory = Some(store.clone());
                store
            }
            Some(url) => {
                let redis = RedisStore::open(url).with_context(|| {
                    format!("{KEYVALUE_REDIS_URL_ENV}={url} is not a Redis URL: give redis://host:port or redis://host:port/db")
                })?;
                let scope = match spec.pod_namespace.as_str() {
                    "" => "-",
                    namespace => namespace,
                };
                Arc::new(Scoped::new(Arc::new(redis), format!("wasishim/{scope}/")))
            }
        };
        Ok(Cloud {
            config: Arc::new(config),
            store,
            memory,
        })
    }

    /// Counts the in-memory store's bytes against the container's memory
    /// sum and limit (`meter`), once the container starts.
    pub(crate) fn charge_to(&self, meter: MemoryMeter) {
        if let Some(memory) = &self.memory {
            memory.charge_to(meter);
        }
    }

    /// A store's (one request's) state of the interfaces.
    pub(crate) fn host(&self) -> CloudHost {
        CloudHost {
            cloud: self.clone(),
            table: ResourceTable::new(),
            open: 0,
        }
    }
}

/// What one instance is given: the container's [`Cloud`] and its own open
/// buckets.
pub(crate) struct CloudHost {
    cloud: Cloud,
    table: ResourceTable,
    open: usize,
}

/// Adds the interfaces to `linker`; `get` finds their state in the store's.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut CloudHost,
) -> wasmtime::Result<()> {
    Provided::add_to_linker::<_, HasSelf<CloudHost>>(linker, get)
}

impl config::Host for CloudHost {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, config::Error>> {
        Ok(Ok(self.cloud.config.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config::Error>> {
        Ok(Ok(self
            .cloud
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}

impl CloudHost {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<&Scoped> {
        Ok(&self.table.get(bucket)?.backend)
    }
}

impl store::Host for CloudHost {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        if identifier.len() > MAX_BUCKET_BYTES || identifier.contains('/') {
            return Ok(Err(store::Error::Other(format!(
                "bucket identifier '{}' is not one: at most {MAX_BUCKET_BYTES} bytes, no '/'",
                identifier.escape_debug()
            ))));
        }
        if self.open >= MAX_OPEN_BUCKETS {
            return Ok(Err(store::Error::Other(format!(
                "this instance holds {MAX_OPEN_BUCKETS} buckets open, as many as it may: drop one first"
            ))));
        }
        let backend = Scoped::new(self.cloud.store.clone(), format!("{identifier}/"));
        self.open += 1;
        Ok(Ok(self.table.push(Bucket { backend })?))
    }
}

impl store::HostBucket for CloudHost {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(self
            .bucket(&bucket)?
            .get(&key)
            .await
            .map_err(store::Error::Other))
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        Ok(self
            .bucket(&bucket)?
            .set(&key, value)
            .await
            .map_err(store::Error::Other))
    }

    async fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        Ok(self
            .bucket(&bucket)?
            .delete(&key)
            .await
            .map_err(store::Error::Other))
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        Ok(self
            .bucket(&bucket)?
            .exists(&key)
            .await
            .map_err(store::Error::Other))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let keys = match self.bucket(&bucket)?.keys("").await {
            Ok(keys) => keys,
            Err(e) => return Ok(Err(store::Error::Other(e))),
        };
        let start = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let (keys, next) = key_value::page(keys, start);
        Ok(Ok(store::KeyResponse {
            keys,
            cursor: next.map(|n| n as u64),
        }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.open = self.open.saturating_sub(1);
        Ok(())
    }
}

impl atomics::Host for CloudHost {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(store::Error::Other(format!(
                "increment by {delta}: a counter holds a signed 64-bit number"
            ))));
        };
        let now = match self.bucket(&bucket)?.increment(&key, delta).await {
            Ok(now) => now,
            Err(e) => return Ok(Err(store::Error::Other(e))),
        };
        Ok(u64::try_from(now)
            .map_err(|_| store::Error::Other(format!("the counter '{key}' is {now}, below zero"))))
    }
}

impl batch::Host for CloudHost {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
        let values = self.bucket(&bucket)?.get_many(keys).await;
        Ok(values
            .map(|v| v.into_iter().map(|(k, v)| v.map(|v| (k, v))).collect())
            .map_err(store::Error::Other))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let backend = self.bucket(&bucket)?;
        Ok(backend
            .set_many(key_values)
            .await
            .map_err(store::Error::Other))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let backend = self.bucket(&bucket)?;
        Ok(backend.delete_many(keys).await.map_err(store::Error::Other))
    }
}
