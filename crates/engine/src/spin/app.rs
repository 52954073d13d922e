//! Loading a Spin app at create, and answering its requests: the manifest
//! read from the image, each component read, compiled (through the code
//! cache) and linked, its variables, stores and outbound hosts resolved;
//! then per request the route picks the component and the `spin-*` headers
//! are set.
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{Response, StatusCode};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::host::{self, SpinHost};
use super::key_value::{MemoryStore, Stores};
use super::locked::SpinLockedApp;
use super::manifest::{self, Manifest, Source, MAX_MANIFEST_BYTES};
use super::outbound::AllowedHosts;
use super::routes::Router;
use super::runtime_config::{self, Configured};
use super::variables;
use crate::cache::CodeCache;
use crate::cache_key::FileIdentity;
use crate::compile::Code;
use crate::http::{Handlers, Picked};
use crate::http_body::plain;
use crate::http_state::{HttpState, Outgoing};
use crate::instance_state::InstanceState;
use crate::key_value::Backend;
use crate::layer::WasmLayer;
use crate::limits::MemoryMeter;
use crate::pool::PoolShare;
use crate::rootfs;
use crate::spec::WorkloadSpec;

/// A loaded Spin app: its routes and its linked components.
pub(crate) struct SpinApp {
    router: Router,
    components: HashMap<String, Ready>,
    /// The largest instance state of its components: a request's store
    /// instantiates one of them.
    pub(crate) instance_state: InstanceState,
    /// Its stores kept in memory, counted against the container's memory
    /// limit once it starts.
    in_memory: Vec<Arc<MemoryStore>>,
}

impl SpinApp {
    /// Counts the in-memory stores' bytes against the container's memory
    /// sum and limit (`meter`), as a component's `wasi:keyvalue` store is.
    pub(crate) fn charge_to(&self, meter: &MemoryMeter) {
        for store in &self.in_memory {
            store.charge_to(meter.clone());
        }
    }
}

/// One component, ready for requests.
struct Ready {
    pre: ProxyPre<HttpState<SpinHost>>,
    variables: Arc<BTreeMap<String, String>>,
    stores: Arc<Stores>,
    outgoing: Outgoing,
}

/// The interfaces (by name prefix) a Spin component may import.
const PROVIDED: [&str; 14] = [
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:random/",
    "wasi:sockets/",
    "wasi:http/types@",
    "wasi:http/outgoing-handler@",
    host::VARIABLES,
    host::KEY_VALUE,
    host::CONFIG,
    host::WASI_KEYVALUE[0],
    host::WASI_KEYVALUE[1],
    host::WASI_KEYVALUE[2],
];

/// Loads the app whose manifest is `file` (`shown`, its path in the image).
///
/// # Errors
///
/// Anything that would keep the app from answering as under Spin: the
/// manifest (see manifest.rs), a component's file (missing, too large, not
/// a component, importing an interface wasishim does not provide, naming
/// it), variables without a value, stores without a definition, bad runtime
/// config or outbound hosts.
pub(crate) fn load(
    engine: &Engine,
    cache: &CodeCache,
    share: PoolShare,
    spec: &WorkloadSpec,
    file: std::fs::File,
    shown: &str,
) -> Result<SpinApp> {
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read Spin manifest {shown} (is it UTF-8 text?)"))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        bail!(
            "Spin manifest {shown} is larger than {} KiB: is it really a spin.toml?",
            MAX_MANIFEST_BYTES >> 10
        );
    }
    let manifest = manifest::parse(&text, shown)?;
    let dir = match shown.rsplit_once('/') {
        Some((dir, _)) => dir.to_string(),
        None => String::new(),
    };
    load_app(
        engine,
        cache,
        share,
        spec,
        &manifest,
        &format!("Spin manifest {shown}"),
        &CodeFrom::Rootfs { dir },
    )
}

/// Loads the app of a locked app from Spin's OCI artifact, its components'
/// Wasm from `layers` (read by the caller, digests checked).
///
/// # Errors
///
/// As [`load`], and a component whose layer is not among `layers`.
pub(crate) fn load_locked(
    engine: &Engine,
    cache: &CodeCache,
    share: PoolShare,
    spec: &WorkloadSpec,
    app: &SpinLockedApp,
    layers: &[WasmLayer],
) -> Result<SpinApp> {
    let layers: HashMap<&str, &WasmLayer> = layers.iter().map(|l| (l.digest(), l)).collect();
    load_app(
        engine,
        cache,
        share,
        spec,
        &app.manifest,
        &format!("Spin {}", app.shown),
        &CodeFrom::Layers(layers),
    )
}

/// Where the components' Wasm is.
enum CodeFrom<'a> {
    /// Files in the rootfs, relative to the manifest's directory `dir`.
    Rootfs { dir: String },
    /// Layers of Spin's OCI artifact, by digest.
    Layers(HashMap<&'a str, &'a WasmLayer>),
}

/// Loads the app `manifest` (`shown` in messages), its components' code
/// from `code`.
fn load_app(
    engine: &Engine,
    cache: &CodeCache,
    share: PoolShare,
    spec: &WorkloadSpec,
    manifest: &Manifest,
    shown: &str,
    code_from: &CodeFrom<'_>,
) -> Result<SpinApp> {
    let router = Router::new(&manifest.routes).with_context(|| shown.to_string())?;
    let mut variables =
        variables::resolve(manifest, &spec.env).with_context(|| shown.to_string())?;
    let config = runtime_config::load(&spec.rootfs)?;
    let (all_stores, in_memory) = stores(manifest, &config, shown)?;
    let mut components = HashMap::new();
    let mut instance_state = InstanceState {
        core_instances: 1,
        bytes: 0,
    };
    for (id, component) in &manifest.components {
        let (source, code) = match (&component.source, code_from) {
            (Source::File(file), CodeFrom::Rootfs { dir }) => {
                let source = format!("{dir}/{}", file.trim_start_matches("./"));
                let what = format!("Spin component '{id}' ({source})");
                let code = compile(engine, cache, spec, &source, &what)?;
                (source, code)
            }
            (Source::Layer(digest), CodeFrom::Layers(layers)) => {
                let what = format!("Spin component '{id}' (layer {digest})");
                let Some(layer) = layers.get(digest.as_str()) else {
                    bail!("{what}: {shown} names this layer, but the image has no such layer: push the app again with `spin registry push`");
                };
                let code = compile_layer(engine, cache, spec, layer)?;
                (digest.clone(), code)
            }
            _ => bail!("{shown}: component '{id}' has a source of the other packaging form"),
        };
        let what = format!("Spin component '{id}' ({source})");
        let Code::Component(c) = &code.code else {
            bail!("{what} is a core module, not a component: build it for wasm32-wasip2 (or with componentize tooling), as Spin 3 runs");
        };
        share.check(&code.code, &source)?;
        instance_state = InstanceState {
            core_instances: instance_state
                .core_instances
                .max(code.instance_state.core_instances),
            bytes: instance_state.bytes.max(code.instance_state.bytes),
        };
        check_imports(engine, c, &what)?;
        let pre = link(engine, c, &what)?;
        let allowed =
            AllowedHosts::parse(&component.allowed_outbound_hosts).with_context(|| what.clone())?;
        let stores: Stores = component
            .key_value_stores
            .iter()
            .filter_map(|label| all_stores.get(label).map(|s| (label.clone(), s.clone())))
            .collect();
        components.insert(
            id.clone(),
            Ready {
                pre,
                variables: Arc::new(variables.remove(id).unwrap_or_default()),
                stores: Arc::new(stores),
                outgoing: Outgoing::Filtered(Arc::new(allowed)),
            },
        );
    }
    log::info!(
        "Spin app '{}' from {shown}: {} component(s), {} route(s)",
        manifest.name,
        components.len(),
        manifest.routes.len()
    );
    Ok(SpinApp {
        router,
        components,
        instance_state,
        in_memory,
    })
}

/// The container's stores: each label a component lists, from runtime
/// config, or `default` in memory; and those kept in memory, to charge to
/// the container.
fn stores(
    manifest: &Manifest,
    config: &runtime_config::RuntimeConfig,
    shown: &str,
) -> Result<(Stores, Vec<Arc<MemoryStore>>)> {
    // `shown` is "Spin manifest /spin.toml" or "Spin locked app ...".
    let mut stores = Stores::new();
    let mut in_memory = Vec::new();
    for (id, component) in &manifest.components {
        for label in &component.key_value_stores {
            if stores.contains_key(label) {
                continue;
            }
            let store: Arc<dyn Backend> = match config.store(label)? {
                Some(Configured::Redis(redis)) => redis,
                Some(Configured::Memory) => memory_store(&mut in_memory),
                None if label == "default" => memory_store(&mut in_memory),
                None => bail!(
                    "{shown}: component '{id}' uses key-value store '{label}', which is not defined: add [key_value_store.{label}] to {} in the image",
                    runtime_config::PATH
                ),
            };
            stores.insert(label.clone(), store);
        }
    }
    Ok((stores, in_memory))
}

/// A new in-memory store, kept in `in_memory` too.
fn memory_store(in_memory: &mut Vec<Arc<MemoryStore>>) -> Arc<dyn Backend> {
    let memory = Arc::new(MemoryStore::default());
    in_memory.push(memory.clone());
    memory
}

/// Reads and compiles (or takes from the cache) the component at `source`.
fn compile(
    engine: &Engine,
    cache: &CodeCache,
    spec: &WorkloadSpec,
    source: &str,
    what: &str,
) -> Result<Arc<crate::cache::Compiled>> {
    let read_at = std::time::SystemTime::now();
    let host = rootfs::resolve(&spec.rootfs, source)
        .map_err(|_| anyhow::anyhow!("{what}: {source} not found in the image's rootfs (or it leaves it): put the component's .wasm at the source path, relative to spin.toml"))?;
    let (mut file, meta) = rootfs::open_entrypoint_file(&host, source)?;
    let identity = FileIdentity::of(&meta);
    if let Some(compiled) = cache.get_known_file(&identity) {
        return Ok(compiled);
    }
    let max = cache.limits().max_module_bytes;
    if identity.size() > max {
        bail!(
            "{what} is {} bytes, more than the {max} bytes of WebAssembly this shim compiles ({})",
            identity.size(),
            crate::worker::MAX_MODULE_BYTES_ENV
        );
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what}"))?;
    if bytes.len() as u64 > max {
        bail!("{what} grew past {max} bytes while it was read");
    }
    crate::compile::check_source(&bytes, source)?;
    cache.get_file(engine, identity, read_at, &bytes, source, &spec.tenant)
}

/// Compiles (or takes from the cache, by digest) the component of `layer`.
fn compile_layer(
    engine: &Engine,
    cache: &CodeCache,
    spec: &WorkloadSpec,
    layer: &WasmLayer,
) -> Result<Arc<crate::cache::Compiled>> {
    let max = cache.limits().max_module_bytes;
    let bytes = layer.bytes();
    if bytes.len() as u64 > max {
        bail!(
            "Spin component {} is {} bytes, more than the {max} bytes of WebAssembly this shim compiles ({})",
            layer.name(),
            bytes.len(),
            crate::worker::MAX_MODULE_BYTES_ENV
        );
    }
    crate::compile::check_source(bytes, layer.name())?;
    cache.get_by_digest(engine, layer.digest(), bytes, layer.name(), &spec.tenant)
}

/// Refuses a component importing an interface wasishim does not provide,
/// naming it, before linking fails with wasmtime's less direct words.
fn check_imports(engine: &Engine, component: &Component, what: &str) -> Result<()> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let provided = PROVIDED.iter().any(|p| name.starts_with(p));
        if !provided || !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            bail!(
                "{what} imports {name}, which wasishim does not provide to Spin apps (it provides WASI 0.2, wasi:http/outgoing-handler, {}, {}, {} and wasi:keyvalue@0.2.0-draft2 store, atomics and batch): remove its use, or run this app with Spin itself",
                host::VARIABLES,
                host::KEY_VALUE,
                host::CONFIG
            );
        }
    }
    Ok(())
}

/// Links a component against WASI 0.2, `wasi:http` and Spin's interfaces.
fn link(
    engine: &Engine,
    component: &Component,
    what: &str,
) -> Result<ProxyPre<HttpState<SpinHost>>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot set up WASI 0.2: {e:#}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot set up wasi:http: {e:#}"))?;
    host::add_to_linker(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot set up Spin's interfaces: {e:#}"))?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow::anyhow!("{what} cannot be linked: {e:#}"))?;
    ProxyPre::new(pre).map_err(|e| {
        anyhow::anyhow!("{what} does not export wasi:http/incoming-handler as a Spin HTTP component does: {e:#}")
    })
}

/// The request headers Spin sets, which a client may not set itself.
const SPIN_HEADERS: [&str; 7] = [
    "spin-path-info",
    "spin-full-url",
    "spin-matched-route",
    "spin-base-path",
    "spin-raw-component-route",
    "spin-component-route",
    "spin-client-addr",
];

impl Handlers for SpinApp {
    type Host = SpinHost;

    fn pick(
        &self,
        parts: &mut hyper::http::request::Parts,
        client: SocketAddr,
    ) -> Result<Picked<SpinHost>, Box<Response<HyperOutgoingBody>>> {
        let path = parts.uri.path();
        let Some(route) = self.router.route(path) else {
            return Err(Box::new(plain(
                StatusCode::NOT_FOUND,
                format!("no route of this Spin app matches {path}\n"),
            )));
        };
        let Some(component) = self.components.get(route.component) else {
            return Err(Box::new(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("route to missing component {}\n", route.component),
            )));
        };
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or_else(|| path.to_string(), |p| p.as_str().to_string());
        for name in SPIN_HEADERS {
            parts.headers.remove(name);
        }
        for (name, value) in route.headers(&path_and_query, &host, client) {
            // Values come from the request's own valid header and URI.
            if let Ok(value) = HeaderValue::from_str(&value) {
                parts.headers.insert(HeaderName::from_static(name), value);
            }
        }
        Ok(Picked {
            pre: component.pre.clone(),
            host: SpinHost::new(component.variables.clone(), component.stores.clone()),
            outgoing: component.outgoing.clone(),
            name: Some(route.component.to_string()),
        })
    }
}
