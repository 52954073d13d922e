//! The one `wasmtime::Engine` of a shim process, its settings, and the public
//! face of preparing guests with it (the work is in prepare.rs).
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

use crate::cache::{self, CacheStats, CodeCache, Compiler};
use crate::layer::WasmLayer;
use crate::metrics::{ContainerLabels, EngineMetrics, HttpMetrics};
use crate::pool::{
    self, PoolShare, DEFAULT_POOL_CAPACITY, DEFAULT_POOL_CONTAINERS, POOL_CAPACITY_ENV,
    POOL_CONTAINERS_ENV,
};
use crate::prepare::{self, CodeOrigin};
use crate::run::Workload;
use crate::source::{EntrypointFile, RootfsEntrypoint};
use crate::spec::WorkloadSpec;
use crate::spin::SpinLockedApp;
use crate::stdio::Stdio;
use crate::worker::{
    CompileLimits, Spawner, COMPILE_CONCURRENCY_ENV, COMPILE_MEMORY_ENV, COMPILE_TIMEOUT_ENV,
    MAX_MODULE_BYTES_ENV,
};

/// How often the epoch advances: the time slice after which a running guest
/// yields, and so how late a kill can take effect.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Environment variable: directory of the compiled-code cache (see
/// [`WasmEngineBuilder::from_env`]).
pub const CACHE_DIR_ENV: &str = "WASISHIM_CACHE_DIR";
/// Environment variable: size cap of the compiled-code cache in bytes.
pub const CACHE_MAX_BYTES_ENV: &str = "WASISHIM_CACHE_MAX_BYTES";
/// Environment variable: the memory cap in bytes of a container without
/// `linux.resources.memory.limit` (see [`WasmEngineBuilder::default_memory_limit`]);
/// 0 for none.
pub const DEFAULT_MEMORY_LIMIT_ENV: &str = "WASISHIM_DEFAULT_MEMORY_LIMIT";

/// The memory cap the per-node server gives a container without a memory
/// limit: 512 MiB, so that 110 such pods fit in 55 GiB.
pub const NODE_DEFAULT_MEMORY_LIMIT: u64 = 512 << 20;

/// One per process, shared by all containers (cheap to clone).
///
/// Holds the `wasmtime::Engine` (compiler settings and code memory), the
/// compiled-code cache, and a thread that advances the engine's epoch every
/// 10 ms, which lets every guest be interrupted. The thread ends once the
/// last clone is dropped.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    cache: Arc<CodeCache>,
    pooling: bool,
    share: PoolShare,
    default_memory_limit: Option<u64>,
    metrics: Option<EngineMetrics>,
}

/// Configures a [`WasmEngine`]: where compiled code is cached, how large
/// that cache may grow, where and within which limits guests are compiled,
/// and whether instances come from a pool. Made by [`WasmEngine::builder`];
/// nothing happens until [`build`](WasmEngineBuilder::build).
///
/// ```no_run
/// # use std::time::Duration;
/// # use wasishim_engine::{WasmEngine, THIS_EXECUTABLE};
/// // This program's main calls `run_compile_worker` when its first argument
/// // is `COMPILE_WORKER_ARG`.
/// let engine = WasmEngine::builder()
///     .cache_dir(Some("/var/lib/wasishim/cache".into()))
///     .cache_max_bytes(512 << 20)
///     .compile_worker(Some(THIS_EXECUTABLE.into()))
///     .compile_timeout(Duration::from_secs(30))
///     .build()?;
/// # anyhow::Ok(())
/// ```
#[derive(Debug, Clone)]
pub struct WasmEngineBuilder {
    cache_dir: Option<PathBuf>,
    cache_max_bytes: u64,
    pooling: bool,
    pool_capacity: u32,
    pool_containers: u32,
    default_memory_limit: Option<u64>,
    spare_network_namespaces: usize,
    compile_worker: Option<PathBuf>,
    compile: CompileLimits,
    metrics: bool,
}

impl Default for WasmEngineBuilder {
    fn default() -> WasmEngineBuilder {
        WasmEngineBuilder {
            cache_dir: Some(PathBuf::from(cache::DEFAULT_DIR)),
            cache_max_bytes: cache::DEFAULT_MAX_BYTES,
            pooling: POOLING_BY_DEFAULT,
            pool_capacity: DEFAULT_POOL_CAPACITY,
            pool_containers: DEFAULT_POOL_CONTAINERS,
            default_memory_limit: None,
            spare_network_namespaces: 0,
            compile_worker: None,
            compile: CompileLimits::default(),
            metrics: false,
        }
    }
}

impl WasmEngineBuilder {
    /// Where compiled guests are stored so that the next shim on the node
    /// loads them instead of compiling (default `/var/lib/wasishim/cache`).
    /// `None` turns the disk cache off; guests are still compiled only once
    /// per process.
    ///
    /// The directory is created with mode 0700. It must be an absolute path
    /// belonging to the shim's user and not writable by others: the native
    /// code in it is run as is. If it is not, or cannot be created,
    /// [`build`](Self::build) logs a warning and the disk cache is off.
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> WasmEngineBuilder {
        self.cache_dir = dir;
        self
    }

    /// Size cap of the cache directory's artifacts (default 1 GiB). After
    /// storing an artifact, the least recently used others are removed until
    /// the total fits; the one just stored is kept. An artifact larger than
    /// a quarter of the cap is used and not stored, so storing one guest
    /// never evicts more than a quarter of the others.
    pub fn cache_max_bytes(mut self, bytes: u64) -> WasmEngineBuilder {
        self.cache_max_bytes = bytes;
        self
    }

    /// Whether instances, memories, tables and async stacks come from
    /// wasmtime's pooling allocator (reserved once, reused) instead of being
    /// mapped per instance. See [`POOLING_BY_DEFAULT`] for the default and
    /// the pool's limits. If the pool cannot be reserved (e.g. a `ulimit -v`),
    /// [`build`](Self::build) logs it and allocates on demand.
    pub fn pooling(mut self, on: bool) -> WasmEngineBuilder {
        self.pooling = on;
        self
    }

    /// How many linear memories, component instances and async stacks the
    /// pool holds at once, and four times as many tables and core instances
    /// (default [`DEFAULT_POOL_CAPACITY`]). A component guest uses several
    /// core instances, so a process hosting many guests (the per-node server)
    /// needs more. Each memory slot reserves about 4 GiB of address space
    /// (not memory), so 10,000 reserve about 43 TiB of the 128 TiB a process
    /// has. An instantiation beyond the capacity fails, so its guest exits
    /// with 134 and says so on its stderr.
    pub fn pool_capacity(mut self, capacity: u32) -> WasmEngineBuilder {
        self.pool_capacity = capacity;
        self
    }

    /// How many containers the pool is shared between (default 1): each may
    /// hold at most this fraction of the pool's memories, tables and core
    /// instances at once (for an HTTP server, per request in flight), so
    /// that one container cannot take the slots every other needs. Code
    /// declaring more memories or tables than a share fails to prepare,
    /// naming the limit; an instantiation going beyond it fails that guest
    /// (134) or request (500).
    pub fn pool_containers(mut self, containers: u32) -> WasmEngineBuilder {
        self.pool_containers = containers;
        self
    }

    /// The memory cap of a container whose spec sets no
    /// `linux.resources.memory.limit` (default none): it bounds the same sum
    /// as a limit would (linear memories and tables, summed over an HTTP
    /// server's requests in flight). The per-node server sets
    /// [`NODE_DEFAULT_MEMORY_LIMIT`], since no cgroup bounds a guest inside it.
    pub fn default_memory_limit(mut self, bytes: Option<u64>) -> WasmEngineBuilder {
        self.default_memory_limit = bytes;
        self
    }

    /// How many empty network namespaces the process keeps made ahead for
    /// guests whose spec asks for a new one (default 0). Creating one takes
    /// about 0.5 ms, which a spare takes off the guest's start. The first
    /// guest that asks starts a background thread that keeps this many ready;
    /// guests that join a given namespace (pods) never start it. Each spare
    /// holds a kernel network namespace. Process-wide: the first engine built
    /// with a non-zero count sets it.
    pub fn spare_network_namespaces(mut self, count: usize) -> WasmEngineBuilder {
        self.spare_network_namespaces = count;
        self
    }

    /// Where guests are compiled (default: in this process). With
    /// `Some(program)`, each compilation (and WAT parse) runs in a new
    /// process, `program --wasishim-compile-worker`
    /// ([`COMPILE_WORKER_ARG`](crate::COMPILE_WORKER_ARG)), whose main must
    /// call [`run_compile_worker`](crate::run_compile_worker) when it sees
    /// that argument; it must be this very build (use
    /// [`THIS_EXECUTABLE`](crate::THIS_EXECUTABLE)). The worker runs under
    /// the limits below and its own seccomp filter, so that a module made to
    /// exhaust the compiler fails its own prepare and nothing else. The
    /// shims always compile this way.
    ///
    /// Costs a process start per compilation (a few milliseconds) and, with
    /// the disk cache off, a copy of the artifact.
    pub fn compile_worker(mut self, program: Option<PathBuf>) -> WasmEngineBuilder {
        self.compile_worker = program;
        self
    }

    /// The largest guest compiled, in bytes of its `.wasm` or `.wat`
    /// (default [`DEFAULT_MAX_MODULE_BYTES`](crate::DEFAULT_MAX_MODULE_BYTES)):
    /// a larger one fails its prepare before it is read.
    pub fn max_module_bytes(mut self, bytes: u64) -> WasmEngineBuilder {
        self.compile.max_module_bytes = bytes;
        self
    }

    /// The address space one compile worker may use (default
    /// [`DEFAULT_COMPILE_MEMORY_BYTES`](crate::DEFAULT_COMPILE_MEMORY_BYTES)),
    /// which also bounds its artifact. Only with a
    /// [`compile_worker`](Self::compile_worker).
    pub fn compile_memory_bytes(mut self, bytes: u64) -> WasmEngineBuilder {
        self.compile.memory_bytes = bytes;
        self
    }

    /// How long one compile worker may run (default
    /// [`DEFAULT_COMPILE_TIMEOUT_SECONDS`](crate::DEFAULT_COMPILE_TIMEOUT_SECONDS)),
    /// in wall-clock time and in CPU time per core it may use; it is killed
    /// then. Also the longest a compilation waits for a free slot (see
    /// [`compile_concurrency`](Self::compile_concurrency)). Only with a
    /// [`compile_worker`](Self::compile_worker); rounded up to whole seconds
    /// for the CPU limit.
    pub fn compile_timeout(mut self, timeout: Duration) -> WasmEngineBuilder {
        self.compile.timeout = timeout;
        self
    }

    /// How many compilations run at once (default
    /// [`DEFAULT_COMPILE_CONCURRENCY`](crate::DEFAULT_COMPILE_CONCURRENCY));
    /// more wait for a slot. Counted in this process and, when the disk
    /// cache is on, across every shim using the same cache directory (lock
    /// files in it), so the per-pod shims of a node share the limit.
    pub fn compile_concurrency(mut self, compilations: u32) -> WasmEngineBuilder {
        self.compile.concurrency = compilations.max(1);
        self
    }

    /// Whether the engine counts what it does (default off): compilations,
    /// cache hits and misses, evictions, its instance pool's slots in use and
    /// each HTTP server's requests, for the host to serve (see
    /// [`WasmEngine::metrics`]). Off, nothing is counted.
    pub fn metrics(mut self, on: bool) -> WasmEngineBuilder {
        self.metrics = on;
        self
    }

    /// Applies the environment: `WASISHIM_CACHE_DIR` (an absolute path, or
    /// empty to turn the disk cache off), `WASISHIM_CACHE_MAX_BYTES` (a
    /// number of bytes), `WASISHIM_POOL_CAPACITY` and
    /// `WASISHIM_POOL_CONTAINERS` (numbers, see [`Self::pool_capacity`] and
    /// [`Self::pool_containers`]), `WASISHIM_DEFAULT_MEMORY_LIMIT` (bytes,
    /// 0 for none), and the compile limits `WASISHIM_MAX_MODULE_BYTES`,
    /// `WASISHIM_COMPILE_MEMORY_BYTES`, `WASISHIM_COMPILE_TIMEOUT_SECONDS`
    /// and `WASISHIM_COMPILE_CONCURRENCY` (positive numbers). Unset
    /// variables leave the setting as it is.
    ///
    /// # Errors
    ///
    /// Fails if a variable is set to something unusable, saying which.
    pub fn from_env(self) -> Result<WasmEngineBuilder> {
        let mut builder = self.apply_env(
            std::env::var_os(CACHE_DIR_ENV),
            std::env::var_os(CACHE_MAX_BYTES_ENV),
        )?;
        if let Some(capacity) = env_number(POOL_CAPACITY_ENV, "e.g. 10000 memories")? {
            builder.pool_capacity = u32::try_from(capacity.max(1)).unwrap_or(u32::MAX);
        }
        if let Some(containers) = env_number(POOL_CONTAINERS_ENV, "e.g. 110 containers")? {
            builder.pool_containers = u32::try_from(containers.max(1)).unwrap_or(u32::MAX);
        }
        if let Some(bytes) = env_number(
            DEFAULT_MEMORY_LIMIT_ENV,
            "e.g. 536870912 for 512 MiB, or 0 for no cap",
        )? {
            builder.default_memory_limit = Some(bytes).filter(|&b| b > 0);
        }
        if let Some(bytes) = env_positive(MAX_MODULE_BYTES_ENV, "e.g. 67108864 for 64 MiB")? {
            builder.compile.max_module_bytes = bytes;
        }
        if let Some(bytes) = env_positive(COMPILE_MEMORY_ENV, "e.g. 2147483648 for 2 GiB")? {
            builder.compile.memory_bytes = bytes;
        }
        if let Some(seconds) = env_positive(COMPILE_TIMEOUT_ENV, "e.g. 60 seconds")? {
            builder.compile.timeout = Duration::from_secs(seconds);
        }
        if let Some(n) = env_positive(COMPILE_CONCURRENCY_ENV, "e.g. 2 compilations")? {
            builder.compile.concurrency = u32::try_from(n).unwrap_or(u32::MAX);
        }
        Ok(builder)
    }

    fn apply_env(
        mut self,
        dir: Option<OsString>,
        max_bytes: Option<OsString>,
    ) -> Result<WasmEngineBuilder> {
        if let Some(dir) = dir {
            if dir.is_empty() {
                self.cache_dir = None;
            } else {
                let dir = PathBuf::from(dir);
                if !dir.is_absolute() {
                    bail!(
                        "{CACHE_DIR_ENV}={} is not an absolute path: give a path starting with /, or set it empty to turn the compiled-code cache off",
                        dir.display()
                    );
                }
                self.cache_dir = Some(dir);
            }
        }
        if let Some(max) = max_bytes {
            let Some(max) = max.to_str().and_then(|m| m.trim().parse::<u64>().ok()) else {
                bail!(
                    "{CACHE_MAX_BYTES_ENV}={} is not a number of bytes: give e.g. 1073741824 for 1 GiB, or unset it",
                    max.to_string_lossy()
                );
            };
            self.cache_max_bytes = max;
        }
        Ok(self)
    }

    /// Creates the engine: epoch interruption on, component model on, the
    /// default wasm features, copy-on-write memory images. Guests run with
    /// wasmtime's async support, which needs no engine setting since
    /// wasmtime 48.
    ///
    /// Costs one thread, and creating the cache directory if needed. Create
    /// one engine per process and clone it.
    ///
    /// # Errors
    ///
    /// Fails if wasmtime rejects its configuration for this host, the
    /// guests' seccomp filter cannot be built for this architecture, or the
    /// epoch thread cannot be started. A cache directory that cannot be used
    /// is not an error (see [`cache_dir`](Self::cache_dir)).
    pub fn build(self) -> Result<WasmEngine> {
        // Guests' seccomp filter: a bad one fails here, not at a guest's start.
        crate::confine::check()?;
        if self.spare_network_namespaces > 0 {
            crate::netns::keep_spares(self.spare_network_namespaces);
        }
        let config = compile_config();
        let pooled = if self.pooling {
            let mut pooled = config.clone();
            pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool::config(
                self.pool_capacity,
            )));
            match Engine::new(&pooled) {
                Ok(engine) => Some(engine),
                Err(e) => {
                    log::warn!("cannot reserve wasmtime's instance pool ({e:#}): allocating instances on demand instead");
                    None
                }
            }
        } else {
            None
        };
        let pooling = pooled.is_some();
        let engine = match pooled {
            Some(engine) => engine,
            None => Engine::new(&config)
                .map_err(|e| anyhow::anyhow!("cannot set up wasmtime: {e:#}"))?,
        };
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".to_string())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            })
            .context("cannot start the wasm epoch thread")?;
        let compiler = Compiler {
            worker: self.compile_worker.map(|program| {
                Box::new(Spawner { program }) as Box<dyn crate::worker::WorkerProcess>
            }),
            limits: self.compile,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        };
        let metrics = self.metrics.then(EngineMetrics::new);
        if let Some(metrics) = &metrics {
            metrics.attach(&engine);
        }
        let cache = CodeCache::new(
            &engine,
            self.cache_dir.as_deref(),
            self.cache_max_bytes,
            compiler,
            metrics.clone(),
        );
        // On demand, nothing is shared out; a store still has its caps.
        let share = match pooling {
            true => PoolShare::of(self.pool_capacity, self.pool_containers),
            false => PoolShare::of(u32::MAX, 1),
        };
        Ok(WasmEngine {
            engine,
            cache: Arc::new(cache),
            pooling,
            share,
            default_memory_limit: self.default_memory_limit,
            metrics,
        })
    }
}

/// The settings that decide what code wasmtime compiles, shared by the
/// engine and its compile worker (whose artifacts the engine loads):
/// epoch interruption, the component model, copy-on-write memory images.
/// The instance pool is not among them: it does not change the code.
pub(crate) fn compile_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.memory_init_cow(true);
    // Each store's stack is counted against its container's memory limit
    // at this size (limits.rs).
    config.async_stack_size(crate::limits::STACK_BYTES);
    config
}

/// Whether [`WasmEngine::new`] and [`WasmEngine::builder`] use the pooling
/// allocator.
pub const POOLING_BY_DEFAULT: bool = true;

impl WasmEngine {
    /// Creates the engine with the settings of the environment
    /// (`WASISHIM_CACHE_DIR`, `WASISHIM_CACHE_MAX_BYTES`, see
    /// [`WasmEngineBuilder::from_env`]) over the defaults: compiled code
    /// cached in `/var/lib/wasishim/cache`, up to 1 GiB.
    ///
    /// Costs one thread. Create one per process and clone it.
    ///
    /// # Errors
    ///
    /// Fails if an environment variable is unusable, if wasmtime rejects its
    /// configuration for this host, or if the epoch thread cannot be started.
    pub fn new() -> Result<WasmEngine> {
        WasmEngine::builder().from_env()?.build()
    }

    /// The defaults, to change before [`WasmEngineBuilder::build`]. Does not
    /// read the environment (see [`WasmEngineBuilder::from_env`]).
    pub fn builder() -> WasmEngineBuilder {
        WasmEngineBuilder::default()
    }

    /// Creates the engine with its compiled code cached in `dir` (`None`:
    /// not on disk), ignoring the environment. Same as
    /// `WasmEngine::builder().cache_dir(dir).build()`.
    ///
    /// # Errors
    ///
    /// As [`WasmEngineBuilder::build`].
    pub fn with_cache_dir(dir: Option<PathBuf>) -> Result<WasmEngine> {
        WasmEngine::builder().cache_dir(dir).build()
    }

    /// The largest guest this engine compiles, in bytes (see
    /// [`WasmEngineBuilder::max_module_bytes`]): for callers that read a
    /// guest's bytes from elsewhere (an image layer) and can refuse a larger
    /// one before reading it.
    pub fn max_module_bytes(&self) -> u64 {
        self.cache.limits().max_module_bytes
    }

    /// The directory compiled code is stored in, `None` if the disk cache is
    /// off (not configured, or unusable: see [`WasmEngineBuilder::cache_dir`]).
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.dir()
    }

    /// The wasmtime engine itself, with the settings every guest runs under
    /// (pool, epochs, copy-on-write images): for tools that measure bare
    /// wasmtime against the shim, such as `examples/http_floor.rs`.
    pub fn wasmtime(&self) -> &Engine {
        &self.engine
    }

    /// Whether instances come from the pooling allocator: it was asked for
    /// ([`WasmEngineBuilder::pooling`]) and its pool could be reserved.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// `spec` with the default memory cap if it sets no limit.
    fn limited(&self, mut spec: WorkloadSpec) -> WorkloadSpec {
        spec.memory_limit = spec.memory_limit.or(self.default_memory_limit);
        spec
    }

    /// How the guests prepared so far got their code: compiled, loaded from
    /// the cache directory, or found in memory. Counts only successful
    /// loads and compilations; three relaxed atomic reads.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The engine's metrics, if it was built with
    /// [`WasmEngineBuilder::metrics`]: register them to serve them.
    pub fn metrics(&self) -> Option<&EngineMetrics> {
        self.metrics.as_ref()
    }

    /// The handle an HTTP server of the container named by `labels` records
    /// its requests into ([`Workload::with_http_metrics`]); `None` when the
    /// engine counts nothing.
    pub fn http_metrics(&self, labels: ContainerLabels) -> Option<HttpMetrics> {
        self.metrics.as_ref().map(|metrics| metrics.http(labels))
    }

    /// Resolves the entrypoint, compiles and links the guest and opens its
    /// stdio: [`WorkloadSpec::find_entrypoint`], then
    /// [`Self::prepare_file`] with the file found, or the reason it was not.
    /// Blocking (compilation). Errors are meant for the user.
    ///
    /// In order, this:
    /// 1. resolves the entrypoint inside the rootfs, following symlinks as a
    ///    chroot would and refusing any path that leaves the rootfs;
    /// 2. compiles it as a module or component (decided by its header; WAT
    ///    text is accepted too), or takes its code from the cache;
    /// 3. checks that the export to call exists (`_start`, `wasi:cli/run`, or
    ///    the `#name` of the entrypoint) and links it against WASI (preview 1
    ///    for modules, 0.2 for components), so unknown imports fail here. A
    ///    component exporting `wasi:http/incoming-handler@0.2.x` and no
    ///    `wasi:cli/run` (or named `#wasi:http/incoming-handler`) is an HTTP
    ///    server: linked with `wasi:http` too, and configured from the
    ///    container's `WASISHIM_HTTP_*` variables (see [`crate::HTTP_ADDRESS_ENV`]);
    /// 4. opens stdio and the preopened directories.
    ///
    /// Costs reading and hashing the entrypoint (SHA-256, about 1 ms per MB)
    /// and then, for a guest this process prepared recently, microseconds:
    /// its linked code is kept in memory. Otherwise the code is loaded from
    /// the cache directory (a hash of the artifact and an mmap: milliseconds),
    /// or compiled and stored there (milliseconds to seconds for large
    /// guests). Concurrent prepares of one guest compile it once.
    ///
    /// # Errors
    ///
    /// Each step's failure names the entrypoint and the problem, e.g.
    /// "entrypoint /app.wasm not found in the image's rootfs", "entrypoint
    /// /app.wasm is not a WebAssembly module or component (found an ELF
    /// executable)", "entrypoint /app.wasm has no export named 'foo'
    /// (exports: _start)", or "cannot open the container's stdout ...".
    /// Cache failures are logged, never returned.
    pub fn prepare(&self, spec: WorkloadSpec, stdio: Stdio) -> Result<Workload> {
        match spec.find_entrypoint()? {
            RootfsEntrypoint::Found(file) => self.prepare_file(spec, file, stdio),
            RootfsEntrypoint::Missing(reason) => Err(reason),
        }
    }

    /// [`Self::prepare`] with the entrypoint `file` already found in the
    /// rootfs ([`WorkloadSpec::find_entrypoint`]), so that a caller who
    /// decides between the rootfs and an image layer looks the path up once.
    ///
    /// Costs and errors as [`Self::prepare`] after its lookup.
    pub fn prepare_file(
        &self,
        spec: WorkloadSpec,
        file: EntrypointFile,
        stdio: Stdio,
    ) -> Result<Workload> {
        prepare::prepare_file(
            &self.engine,
            &self.cache,
            self.share,
            self.limited(spec),
            file,
            stdio,
        )
    }

    /// Like [`WasmEngine::prepare`], with the guest's code taken from `layer`
    /// instead of the rootfs file `process.args[0]` names. That argument is
    /// then only the guest's `argv[0]` (any name works); a `#name` suffix
    /// still selects the export to call. Everything else (args, env, cwd,
    /// rootfs and mounts as preopens, limits, network) is as for `prepare`.
    ///
    /// Costs as `prepare`, without reading or hashing a file: the cache key
    /// is the layer's digest, so a layer this process prepared before takes
    /// microseconds, and one prepared by any shim on the node is loaded from
    /// the cache directory.
    ///
    /// # Errors
    ///
    /// As `prepare`, with the layer's name in place of the entrypoint path,
    /// e.g. "entrypoint layer sha256:… of image … is not a WebAssembly
    /// module or component (found text)".
    pub fn prepare_layer(
        &self,
        spec: WorkloadSpec,
        layer: WasmLayer,
        stdio: Stdio,
    ) -> Result<Workload> {
        let origin = CodeOrigin::Layer {
            digest: layer.digest(),
        };
        prepare::prepare_code(
            &self.engine,
            &self.cache,
            self.share,
            self.limited(spec),
            layer.bytes(),
            origin,
            layer.name(),
            stdio,
        )
    }

    /// Like [`WasmEngine::prepare`] for a Spin app packaged as Spin's OCI
    /// artifact (`spin registry push`): its locked `app` (from the image's
    /// locked-app layer or config) and the wasm `layers` its components name
    /// ([`SpinLockedApp::layer_digests`], digests checked by [`WasmLayer::new`]).
    /// `process.args[0]` is then only a name. The app is served as a Spin
    /// app from `spin.toml` is (see the README, "Spin applications").
    ///
    /// Costs as `prepare` per component; each layer's digest keys the cache.
    ///
    /// # Errors
    ///
    /// As for a `spin.toml` app: a component that is not a component, imports
    /// what wasishim does not provide, a variable without a value, a store
    /// without runtime config; and a component whose layer is not in `layers`.
    pub fn prepare_spin_artifact(
        &self,
        spec: WorkloadSpec,
        app: &SpinLockedApp,
        layers: &[WasmLayer],
        stdio: Stdio,
    ) -> Result<Workload> {
        prepare::prepare_spin_locked(
            &self.engine,
            &self.cache,
            self.share,
            self.limited(spec),
            app,
            layers,
            stdio,
        )
    }
}

impl WasmEngine {
    /// Compiles the guest in the rootfs file `file` (found with
    /// [`find_entrypoint_in`](crate::find_entrypoint_in)) into the cache, in
    /// memory and in the cache directory, without a container: a later
    /// [`Self::prepare`] of the same bytes, in this process or in any shim
    /// of the node sharing the cache directory, finds it compiled. The
    /// compilation runs in the compile worker, taking a compile slot in the
    /// turn of `tenant`.
    ///
    /// Costs what a first prepare's compilation costs (milliseconds to
    /// seconds), or, when the code is already in the cache, reading and
    /// hashing the file. Blocking.
    ///
    /// # Errors
    ///
    /// As [`Self::prepare`]'s compilation: not WebAssembly (naming what the
    /// file is), too large, the compiler's limits; and a Spin manifest,
    /// whose components are compiled at create only.
    pub fn precompile_file(&self, file: EntrypointFile, tenant: &str) -> Result<Precompiled> {
        let before = self.cache.stats().compiled;
        prepare::precompile_file(&self.engine, &self.cache, file, tenant)?;
        Ok(self.precompiled(before))
    }

    /// Like [`Self::precompile_file`] for the wasm of an image layer, cached
    /// under its digest as [`Self::prepare_layer`] finds it.
    ///
    /// # Errors
    ///
    /// As [`Self::precompile_file`].
    pub fn precompile_layer(&self, layer: &WasmLayer, tenant: &str) -> Result<Precompiled> {
        let before = self.cache.stats().compiled;
        prepare::precompile_layer(
            &self.engine,
            &self.cache,
            layer.bytes(),
            layer.digest(),
            layer.name(),
            tenant,
        )?;
        Ok(self.precompiled(before))
    }

    /// Whether this process compiled since `before` compilations (other
    /// prepares running meanwhile may count too: for messages only).
    fn precompiled(&self, before: u64) -> Precompiled {
        if self.cache.stats().compiled > before {
            Precompiled::Compiled
        } else {
            Precompiled::AlreadyCached
        }
    }
}

/// What a precompile did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precompiled {
    /// The code was compiled and stored.
    Compiled,
    /// The code was in the cache already (in memory or on disk).
    AlreadyCached,
}

/// The number in environment variable `name`, if set.
fn env_number(name: &str, example: &str) -> Result<Option<u64>> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    match value.to_str().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(number) => Ok(Some(number)),
        None => bail!(
            "{name}={} is not a number: give {example}, or unset it",
            value.to_string_lossy()
        ),
    }
}

/// The positive number in environment variable `name`, if set.
fn env_positive(name: &str, example: &str) -> Result<Option<u64>> {
    match env_number(name, example)? {
        Some(0) => bail!("{name}=0 is not a positive number: give {example}, or unset it"),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(dir: Option<&str>, max: Option<&str>) -> Result<WasmEngineBuilder> {
        WasmEngineBuilder::default().apply_env(dir.map(OsString::from), max.map(OsString::from))
    }

    #[test]
    fn a_node_sized_pool_can_be_reserved() {
        let engine = WasmEngine::builder()
            .cache_dir(None)
            .pool_capacity(10_000)
            .build();
        match engine {
            Ok(engine) => assert!(engine.pooling(), "fell back to on-demand allocation"),
            Err(e) => panic!("{e:#}"),
        }
    }

    #[test]
    fn environment_configures_the_cache() {
        let Ok(b) = apply(None, None) else {
            panic!("no variables set")
        };
        assert_eq!(b.cache_dir.as_deref(), Some(Path::new(cache::DEFAULT_DIR)));
        assert_eq!(b.cache_max_bytes, 1 << 30);
        let Ok(b) = apply(Some("/tmp/c"), Some(" 4096 ")) else {
            panic!("valid variables refused")
        };
        assert_eq!(b.cache_dir.as_deref(), Some(Path::new("/tmp/c")));
        assert_eq!(b.cache_max_bytes, 4096);
        let Ok(b) = apply(Some(""), None) else {
            panic!("empty dir refused")
        };
        assert_eq!(b.cache_dir, None);
        let e = apply(Some("cache"), None).err().map(|e| e.to_string());
        assert_eq!(e, Some("WASISHIM_CACHE_DIR=cache is not an absolute path: give a path starting with /, or set it empty to turn the compiled-code cache off".to_string()));
        let e = apply(None, Some("1G")).err().map(|e| e.to_string());
        assert_eq!(e, Some("WASISHIM_CACHE_MAX_BYTES=1G is not a number of bytes: give e.g. 1073741824 for 1 GiB, or unset it".to_string()));
    }
}
