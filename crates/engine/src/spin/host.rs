//! The Spin interfaces a Spin component is given beyond WASI 0.2 and
//! `wasi:http`: `fermyon:spin/variables@2.0.0`, `wasi:config/store` (the
//! same variables, as the WASI config proposal reads them) and
//! `fermyon:spin/key-value@2.0.0`, and `wasi:keyvalue@0.2.0-draft2` over
//! the same stores (wasi_keyvalue.rs). Their WIT is in
//! crates/engine/wit/spin, copied from the spin-sdk crate.
//!
//! One [`SpinHost`] per request: the component's resolved variables and the
//! container's stores the component may open, shared with every other
//! request, and the request's own table of open stores (at most
//! [`MAX_OPEN_STORES`]).
use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};

use super::key_value::Stores;
use crate::http_state::HttpState;
use crate::key_value::{self, Backend};

wasmtime::component::bindgen!({
    path: "wit/spin",
    world: "provided",
    imports: { default: async | trappable },
    with: {
        "fermyon:spin/key-value.store": KvStore,
        "wasi:keyvalue/store.bucket": KvStore,
        "wasi:keyvalue/atomics.cas": super::wasi_keyvalue::Cas,
    },
});

use fermyon::spin::key_value as kv;
use fermyon::spin::variables;
use wasi::config::store as config;

/// The most stores one request may hold open at once.
pub(crate) const MAX_OPEN_STORES: usize = 16;

/// The interfaces' names, as a component imports them.
pub(crate) const VARIABLES: &str = "fermyon:spin/variables@2.0.0";
pub(crate) const KEY_VALUE: &str = "fermyon:spin/key-value@2.0.0";
pub(crate) const CONFIG: &str = "wasi:config/store@0.2.0-draft-2024-09-27";
/// `wasi:keyvalue` as Spin 3 apps import it (draft 2).
pub(crate) const WASI_KEYVALUE: [&str; 3] = [
    "wasi:keyvalue/store@0.2.0-draft2",
    "wasi:keyvalue/atomics@0.2.0-draft2",
    "wasi:keyvalue/batch@0.2.0-draft2",
];

/// An open store of a request: a `fermyon:spin/key-value/store` or a
/// `wasi:keyvalue/store/bucket` resource.
pub struct KvStore {
    pub(super) backend: Arc<dyn Backend>,
}

/// What one request's instance of a Spin component is given.
pub(crate) struct SpinHost {
    variables: Arc<BTreeMap<String, String>>,
    /// The stores the component's `key_value_stores` lists.
    stores: Arc<Stores>,
    pub(super) table: ResourceTable,
    /// Stores open through either interface, at most [`MAX_OPEN_STORES`].
    pub(super) open: usize,
    /// `wasi:keyvalue` compare-and-swap handles held (wasi_keyvalue.rs).
    pub(super) cas: usize,
}

impl SpinHost {
    pub(crate) fn new(variables: Arc<BTreeMap<String, String>>, stores: Arc<Stores>) -> SpinHost {
        SpinHost {
            variables,
            stores,
            table: ResourceTable::new(),
            open: 0,
            cas: 0,
        }
    }
}

/// Adds the interfaces to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HttpState<SpinHost>>) -> wasmtime::Result<()> {
    Provided::add_to_linker::<_, HasSelf<SpinHost>>(linker, |s| &mut s.host)
}

impl variables::Host for SpinHost {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, variables::Error>> {
        if super::manifest::check_variable_name(&name).is_err() {
            return Ok(Err(variables::Error::InvalidName(name)));
        }
        Ok(match self.variables.get(&name) {
            Some(value) => Ok(value.clone()),
            None => Err(variables::Error::Undefined(format!(
                "no variable '{name}' for this component: add it to its [component.<id>.variables]"
            ))),
        })
    }
}

impl config::Host for SpinHost {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, config::Error>> {
        Ok(Ok(self.variables.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config::Error>> {
        Ok(Ok(self
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}

impl kv::Host for SpinHost {}

impl SpinHost {
    pub(super) fn backend(&self, store: &Resource<KvStore>) -> wasmtime::Result<Arc<dyn Backend>> {
        Ok(self.table.get(store)?.backend.clone())
    }

    /// The store of `label` if the component may open it, counted as open;
    /// `Err(true)` if the component's `key_value_stores` does not list it,
    /// `Err(false)` if the request holds [`MAX_OPEN_STORES`] already.
    pub(super) fn open_store(&mut self, label: &str) -> Result<KvStore, bool> {
        let Some(backend) = self.stores.get(label) else {
            return Err(true);
        };
        if self.open >= MAX_OPEN_STORES {
            return Err(false);
        }
        self.open += 1;
        Ok(KvStore {
            backend: backend.clone(),
        })
    }
}

impl kv::HostStore for SpinHost {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KvStore>, kv::Error>> {
        match self.open_store(&label) {
            Ok(store) => Ok(Ok(self.table.push(store)?)),
            Err(true) => Ok(Err(kv::Error::AccessDenied)),
            Err(false) => Ok(Err(kv::Error::StoreTableFull)),
        }
    }

    async fn get(
        &mut self,
        store: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::Error>> {
        let backend = self.backend(&store)?;
        Ok(backend.get(&key).await.map_err(kv::Error::Other))
    }

    async fn set(
        &mut self,
        store: Resource<KvStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        let backend = self.backend(&store)?;
        if let Err(e) = key_value::check_key(&key) {
            return Ok(Err(kv::Error::Other(e)));
        }
        Ok(backend.set(&key, value).await.map_err(kv::Error::Other))
    }

    async fn delete(
        &mut self,
        store: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        let backend = self.backend(&store)?;
        Ok(backend.delete(&key).await.map_err(kv::Error::Other))
    }

    async fn exists(
        &mut self,
        store: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, kv::Error>> {
        let backend = self.backend(&store)?;
        Ok(backend.exists(&key).await.map_err(kv::Error::Other))
    }

    async fn get_keys(
        &mut self,
        store: Resource<KvStore>,
    ) -> wasmtime::Result<Result<Vec<String>, kv::Error>> {
        let backend = self.backend(&store)?;
        Ok(backend.keys("").await.map_err(kv::Error::Other))
    }

    async fn drop(&mut self, store: Resource<KvStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        self.open = self.open.saturating_sub(1);
        Ok(())
    }
}
