//! wasishim-engine: turns an OCI bundle into a running WASI guest.
//!
//! The flow is `Bundle::load` (config.json, read once into one typed value
//! the shim reads too) -> `WorkloadSpec::from_loaded` (what runs the guest) ->
//! `WasmEngine::prepare` (resolve the entrypoint, compile, link, open stdio) ->
//! `Workload::start` (run the guest on its own thread) -> `ExitStatus` handed to
//! the caller's callback. Nothing here knows about containerd or ttrpc.
//!
//! A guest whose code is not a file in the rootfs but an image layer (a Wasm
//! OCI artifact's) is prepared from the layer's bytes with
//! `WasmEngine::prepare_layer`, the cache keyed on the layer's digest.
//!
//! Untrusted code is best compiled outside the process: with
//! [`WasmEngineBuilder::compile_worker`] each compilation runs in a child
//! process (the program's main calls [`run_compile_worker`] when given
//! [`COMPILE_WORKER_ARG`]) under memory, CPU and time limits and its own
//! seccomp filter, so that a module made to exhaust the compiler fails its
//! own prepare only. The shims always do this.
//!
//! A component exporting `wasi:http/incoming-handler` (and no `wasi:cli/run`)
//! runs as an HTTP server instead of a command, one instance per request;
//! see [`HTTP_ADDRESS_ENV`] for its settings.
//!
//! ```no_run
//! # use std::path::Path;
//! # use wasishim_engine::{Stdio, WasmEngine, WorkloadSpec};
//! let engine = WasmEngine::new()?; // once per process
//! let spec = WorkloadSpec::from_bundle(Path::new("/run/containerd/.../c1"))?;
//! let workload = engine.prepare(spec, Stdio::default())?; // task Create
//! let handle = workload.start(|status| println!("exited with {}", status.code))?; // task Start
//! handle.kill(15)?; // task Kill (SIGTERM)
//! # anyhow::Ok(())
//! ```

mod access_log;
mod bundle;
mod cache;
mod cache_key;
mod cloud;
mod compile;
mod config_values;
mod confine;
mod control;
mod disk_cache;
mod engine;
mod entrypoint;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod http_body;
mod http_limits;
mod http_settings;
mod http_state;
mod instance_state;
mod interrupt;
mod key_value;
mod layer;
mod limits;
mod link;
mod metrics;
mod netns;
mod output;
mod pool;
mod prepare;
mod rootfs;
mod run;
mod signal;
mod source;
mod spec;
mod spin;
mod stdio;
mod wasi;
mod worker;

pub use access_log::HTTP_ACCESS_LOG_ENV;
pub use bundle::{
    Bundle, Capabilities, Mount, NetworkNamespace, Resources, User, CONTAINER_TYPE_ANNOTATION,
    SANDBOX_ID_ANNOTATION,
};
pub use cache::CacheStats;
pub use confine::{Applied, CapabilitySets, Confinement, Credentials, CONFINE_LAYERS_ENV};
pub use engine::{
    Precompiled, WasmEngine, WasmEngineBuilder, CACHE_DIR_ENV, CACHE_MAX_BYTES_ENV,
    DEFAULT_MEMORY_LIMIT_ENV, NODE_DEFAULT_MEMORY_LIMIT, POOLING_BY_DEFAULT,
};
pub use entrypoint::Entrypoint;
pub use http_limits::{
    DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS, DEFAULT_HTTP_IDLE_TIMEOUT_SECONDS,
    DEFAULT_HTTP_MAX_CONNECTIONS, DEFAULT_HTTP_MAX_REQUESTS, HTTP_HEADER_TIMEOUT_ENV,
    HTTP_IDLE_TIMEOUT_ENV, HTTP_MAX_CONNECTIONS_ENV, HTTP_MAX_REQUESTS_ENV,
    HTTP_REQUEST_TIMEOUT_ENV,
};
pub use http_settings::{
    DEFAULT_HTTP_ADDRESS, DEFAULT_HTTP_MAX_BODY_BYTES, HTTP_ADDRESS_ENV, HTTP_MAX_BODY_BYTES_ENV,
    HTTP_OUTGOING_ENV,
};
pub use interrupt::interrupt_signal;
pub use layer::WasmLayer;
pub use metrics::{ContainerLabels, EngineMetrics, HttpMetrics, OpenConnection};
pub use pool::{
    DEFAULT_POOL_CAPACITY, DEFAULT_POOL_CONTAINERS, POOL_CAPACITY_ENV, POOL_CONTAINERS_ENV,
};
pub use run::{ExitStatus, Workload, WorkloadHandle};
pub use source::{find_entrypoint_in, linux_executable, EntrypointFile, RootfsEntrypoint};
pub use spec::WorkloadSpec;
pub use spin::{SpinLockedApp, DEFAULT_SPIN_ADDRESS, MAX_LOCKED_APP_BYTES, SPIN_LISTEN_ENV};
pub use stdio::Stdio;
pub use worker::{
    is_compile_worker, run_compile_worker, COMPILE_CONCURRENCY_ENV, COMPILE_MEMORY_ENV,
    COMPILE_TIMEOUT_ENV, COMPILE_WORKER_ARG, DEFAULT_COMPILE_CONCURRENCY,
    DEFAULT_COMPILE_MEMORY_BYTES, DEFAULT_COMPILE_TIMEOUT_SECONDS, DEFAULT_MAX_MODULE_BYTES,
    MAX_MODULE_BYTES_ENV, THIS_EXECUTABLE,
};
