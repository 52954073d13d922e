//! The one `wasmtime::Engine` of a shim process, and preparing guests with it.
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use wasmtime::component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Linker, PoolingAllocationConfig};

use crate::cache::{self, CacheStats, CodeCache, Compiled, FileIdentity};
use crate::compile::{self, Code, ComponentEntry};
use crate::http::{self, HttpGuest, HttpSettings, HttpState};
use crate::rootfs::{self, ResolveError};
use crate::run::{ComponentState, Guest, ModuleState};
use crate::stdio::GuestStdin;
use crate::{wasi, Stdio, Workload, WorkloadSpec};

/// How often the epoch advances: the time slice after which a running guest
/// yields, and so how late a kill can take effect.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Environment variable: directory of the compiled-code cache (see
/// [`WasmEngineBuilder::from_env`]).
pub const CACHE_DIR_ENV: &str = "WASISHIM_CACHE_DIR";
/// Environment variable: size cap of the compiled-code cache in bytes.
pub const CACHE_MAX_BYTES_ENV: &str = "WASISHIM_CACHE_MAX_BYTES";

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
}

/// Configures a [`WasmEngine`]: where compiled code is cached, how large
/// that cache may grow, and whether instances come from a pool. Made by [`WasmEngine::builder`]; nothing happens
/// until [`build`](WasmEngineBuilder::build).
///
/// ```no_run
/// # use wasishim_engine::WasmEngine;
/// let engine = WasmEngine::builder()
///     .cache_dir(Some("/var/lib/wasishim/cache".into()))
///     .cache_max_bytes(512 << 20)
///     .build()?;
/// # anyhow::Ok(())
/// ```
#[derive(Debug, Clone)]
pub struct WasmEngineBuilder {
    cache_dir: Option<PathBuf>,
    cache_max_bytes: u64,
    pooling: bool,
    pool_capacity: u32,
    spare_network_namespaces: usize,
}

impl Default for WasmEngineBuilder {
    fn default() -> WasmEngineBuilder {
        WasmEngineBuilder {
            cache_dir: Some(PathBuf::from(cache::DEFAULT_DIR)),
            cache_max_bytes: cache::DEFAULT_MAX_BYTES,
            pooling: POOLING_BY_DEFAULT,
            pool_capacity: DEFAULT_POOL_CAPACITY,
            spare_network_namespaces: 0,
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
    /// the total fits; the one just stored is always kept.
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

    /// How many linear memories, tables, core instances, component instances
    /// and async stacks the pool holds at once (default
    /// [`DEFAULT_POOL_CAPACITY`]). A component guest uses several core
    /// instances, so a process hosting many guests (the per-node server)
    /// needs more. Each memory slot reserves about 4 GiB of address space
    /// (not memory), so 10,000 reserve about 43 TiB of the 128 TiB a process
    /// has. An instantiation beyond the capacity fails, so its guest exits
    /// with 134 and says so on its stderr.
    pub fn pool_capacity(mut self, capacity: u32) -> WasmEngineBuilder {
        self.pool_capacity = capacity;
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

    /// Applies the environment: `WASISHIM_CACHE_DIR` (an absolute path, or
    /// empty to turn the disk cache off) and `WASISHIM_CACHE_MAX_BYTES` (a
    /// number of bytes). Unset variables leave the setting as it is.
    ///
    /// # Errors
    ///
    /// Fails if a variable is set to something unusable, saying which.
    pub fn from_env(self) -> Result<WasmEngineBuilder> {
        self.apply_env(
            std::env::var_os(CACHE_DIR_ENV),
            std::env::var_os(CACHE_MAX_BYTES_ENV),
        )
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
    /// Fails if wasmtime rejects its configuration for this host, or the
    /// epoch thread cannot be started. A cache directory that cannot be used
    /// is not an error (see [`cache_dir`](Self::cache_dir)).
    pub fn build(self) -> Result<WasmEngine> {
        if self.spare_network_namespaces > 0 {
            crate::netns::keep_spares(self.spare_network_namespaces);
        }
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.memory_init_cow(true);
        let pooled = if self.pooling {
            let mut pooled = config.clone();
            pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(
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
        let cache = CodeCache::new(&engine, self.cache_dir.as_deref(), self.cache_max_bytes);
        Ok(WasmEngine {
            engine,
            cache: Arc::new(cache),
            pooling,
        })
    }
}

/// Whether [`WasmEngine::new`] and [`WasmEngine::builder`] use the pooling
/// allocator.
pub const POOLING_BY_DEFAULT: bool = true;

/// Default of [`WasmEngineBuilder::pool_capacity`].
pub const DEFAULT_POOL_CAPACITY: u32 = 1_000;

/// The pooling allocator's limits: per process, `total` concurrent linear
/// memories, tables, core and component instances and async stacks; per
/// memory up to 4 GiB (wasmtime's default reservation and guard pages); per
/// module as many memories and tables, and table elements, as the store
/// limiter allows (see limits.rs), so a guest that runs with on-demand
/// allocation runs in the pool too. Reserves about 4 TiB of address space
/// per 1000 (no memory) when the engine is created.
///
/// A freed slot is reset by zeroing only the pages its guest dirtied
/// (`PAGEMAP_SCAN`, Linux 6.7+; `madvise` on older kernels), keeping the
/// first 256 KiB of a memory and 64 KiB of a table resident for the next
/// instance. An HTTP server creates and frees an instance per request: with
/// `madvise` resets and the page faults that follow, bare wasmtime took 47 us
/// per hello request of the http fixture, with this 23 us
/// (`crates/engine/examples/http_floor.rs`); larger sizes gained nothing.
/// The cost: up to about 320 KiB stays resident per slot that was ever used.
fn pool(total: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_memories(total)
        .total_tables(total)
        .total_core_instances(total)
        .total_component_instances(total)
        .total_stacks(total)
        .max_memory_size(4 << 30)
        // As limits.rs: 100 memories, 1000 tables of up to 2^20 elements.
        .max_memories_per_module(100)
        .max_tables_per_module(1_000)
        .table_elements(1 << 20)
        // Only checked, not reserved: large enough for modules with
        // hundreds of thousands of functions.
        .max_core_instance_size(64 << 20)
        .max_component_instance_size(64 << 20)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(256 << 10)
        .table_keep_resident(64 << 10);
    pool
}

/// Where a guest's bytes came from, which keys them in the code cache.
pub(crate) enum CodeOrigin<'a> {
    /// An image layer whose OCI digest (`sha256:<hex>`) was checked against
    /// the bytes.
    Layer { digest: &'a str },
    /// The entrypoint file `identity`, read after `read_at`.
    File {
        identity: FileIdentity,
        read_at: std::time::SystemTime,
    },
}

/// A guest linked against WASI, kept with its compiled code so that later
/// prepares of the same guest skip linking.
#[derive(Clone)]
pub(crate) enum Linked {
    Module(wasmtime::InstancePre<ModuleState>),
    Component(component::InstancePre<ComponentState>),
    Http(wasmtime_wasi_http::p2::bindings::ProxyPre<HttpState>),
}

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

    /// How the guests prepared so far got their code: compiled, loaded from
    /// the cache directory, or found in memory. Counts only successful
    /// loads and compilations; three relaxed atomic reads.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Resolves the entrypoint, compiles and links the guest and opens its stdio.
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
        let shown = spec.entrypoint.path.clone();
        let opened_at = std::time::SystemTime::now();
        let (mut file, identity) = open_entrypoint(&spec.rootfs, &shown)?;
        // A file seen before: no need to read and hash it again.
        if let Some(compiled) = self.cache.get_known_file(&identity) {
            return self.prepare_compiled(spec, compiled, &shown, stdio);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(identity.size()).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read entrypoint {shown}"))?;
        drop(file);
        let origin = CodeOrigin::File {
            identity,
            read_at: opened_at,
        };
        self.prepare_code(spec, &bytes, origin, &shown, stdio)
    }

    /// [`Self::prepare`] once the guest's `bytes` are read, from `origin`,
    /// which decides how the cache finds them again. `shown` names the code
    /// in errors.
    pub(crate) fn prepare_code(
        &self,
        spec: WorkloadSpec,
        bytes: &[u8],
        origin: CodeOrigin<'_>,
        shown: &str,
        stdio: Stdio,
    ) -> Result<Workload> {
        let (binary, kind) = compile::binary(&self.engine, bytes, shown)?;
        let compile = || compile::compile(&self.engine, &binary, kind, shown);
        let compiled = match origin {
            CodeOrigin::Layer { digest } => {
                self.cache
                    .get_by_digest(&self.engine, digest, kind, compile)
            }
            CodeOrigin::File { identity, read_at } => {
                self.cache
                    .get_file(&self.engine, identity, read_at, &binary, kind, compile)
            }
        }?;
        drop(binary);
        self.prepare_compiled(spec, compiled, shown, stdio)
    }

    /// The rest of a prepare once the guest's code is compiled: link (once
    /// per guest), WASI context, stdio.
    fn prepare_compiled(
        &self,
        spec: WorkloadSpec,
        compiled: Arc<Compiled>,
        shown: &str,
        stdio: Stdio,
    ) -> Result<Workload> {
        let export = spec.entrypoint.export.as_deref();

        enum Ready {
            Module(wasmtime::InstancePre<ModuleState>, compile::ModuleEntry),
            Component(
                component::InstancePre<ComponentState>,
                component::ComponentExportIndex,
            ),
            Http(wasmtime_wasi_http::p2::bindings::ProxyPre<HttpState>),
        }
        let ready = match &compiled.code {
            Code::Module(module) => {
                let entry = compile::module_entry(module, shown, export)?;
                let pre = match compiled.linked.get() {
                    Some(Linked::Module(pre)) => pre.clone(),
                    _ => {
                        let pre = self.link_module(module, shown)?;
                        let _ = compiled.linked.set(Linked::Module(pre.clone()));
                        pre
                    }
                };
                Ready::Module(pre, entry)
            }
            Code::Component(c) => match compile::component_entry(&self.engine, c, shown, export)? {
                ComponentEntry::Call(entry) => {
                    let pre = match compiled.linked.get() {
                        Some(Linked::Component(pre)) => pre.clone(),
                        _ => {
                            let pre = self.link_component(c, shown)?;
                            let _ = compiled.linked.set(Linked::Component(pre.clone()));
                            pre
                        }
                    };
                    Ready::Component(pre, entry)
                }
                ComponentEntry::Http => {
                    let pre = match compiled.linked.get() {
                        Some(Linked::Http(pre)) => pre.clone(),
                        _ => {
                            let pre = http::link(&self.engine, c, shown)?;
                            let _ = compiled.linked.set(Linked::Http(pre.clone()));
                            pre
                        }
                    };
                    Ready::Http(pre)
                }
            },
        };
        drop(compiled);

        let opened = stdio.open()?;
        let stderr = opened
            .stderr
            .as_ref()
            .map(crate::output::GuestOutput::host_handle)
            .transpose()
            .context("cannot duplicate the container's stderr handle")?;
        let output_fifos = crate::stdio::fifo_handles(&opened)
            .context("cannot duplicate the container's output handles")?;
        let stdin = GuestStdin::new();
        let guest_stdin = opened.stdin.as_ref().map(|_| stdin.clone());
        let guest = match ready {
            Ready::Module(pre, entry) => Guest::Module {
                pre,
                wasi: wasi::context(&spec, guest_stdin, opened.stdout, opened.stderr)?.build_p1(),
                entry,
            },
            Ready::Component(pre, entry) => Guest::Component {
                pre,
                wasi: wasi::context(&spec, guest_stdin, opened.stdout, opened.stderr)?.build(),
                entry,
            },
            Ready::Http(pre) => {
                let settings = HttpSettings::from_env(&spec.env)?;
                let template = wasi::WasiTemplate::new(&spec)?;
                // Opens every preopen once now, so a missing mount fails task
                // creation rather than each request.
                drop(template.builder(None, None, None)?);
                Guest::Http(Box::new(HttpGuest::new(
                    pre,
                    template,
                    settings,
                    opened.stdout,
                    opened.stderr,
                )))
            }
        };
        Ok(Workload {
            engine: self.engine.clone(),
            name: short_name(shown),
            guest,
            memory_limit: spec.memory_limit,
            network: spec.network.clone(),
            stdin,
            stdin_file: opened.stdin,
            stderr,
            output_fifos,
            on_thread_start: None,
        })
    }

    /// Links a module against WASI preview 1. Linking depends only on the
    /// module, so its result is shared by every container of the module.
    fn link_module(
        &self,
        module: &wasmtime::Module,
        shown: &str,
    ) -> Result<wasmtime::InstancePre<ModuleState>> {
        let mut linker = Linker::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut ModuleState| &mut s.wasi)
            .map_err(|e| anyhow::anyhow!("cannot set up WASI preview 1: {e:#}"))?;
        linker
            .instantiate_pre(module)
            .map_err(|e| link_error(shown, "WASI preview 1 (wasi_snapshot_preview1)", e))
    }

    /// Links a component against WASI 0.2, like [`Self::link_module`].
    fn link_component(
        &self,
        c: &component::Component,
        shown: &str,
    ) -> Result<component::InstancePre<ComponentState>> {
        let mut linker = component::Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot set up WASI 0.2: {e:#}"))?;
        linker
            .instantiate_pre(c)
            .map_err(|e| link_error(shown, "WASI 0.2 (wasi:cli/command)", e))
    }
}

pub(crate) fn link_error(shown: &str, provided: &str, e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "entrypoint {shown} cannot be linked: {e:#} (wasishim provides {provided} only)"
    )
}

/// Opens the entrypoint file `shown` inside `rootfs`, without following any
/// link out of the rootfs, and says which file it is (see [`FileIdentity`]).
fn open_entrypoint(rootfs: &Path, shown: &str) -> Result<(File, FileIdentity)> {
    if !rootfs.is_dir() {
        bail!(
            "the container's rootfs {} is not a directory: is the image's snapshot mounted?",
            rootfs.display()
        );
    }
    let host: PathBuf = match rootfs::resolve(rootfs, shown) {
        Ok(host) => host,
        Err(ResolveError::NotFound) => bail!("entrypoint {shown} not found in the image's rootfs"),
        Err(ResolveError::Escapes { link: None }) => bail!(
            "entrypoint {shown} leaves the image's rootfs through '..': use a path inside the image"
        ),
        Err(ResolveError::Escapes {
            link: Some((link, target)),
        }) => bail!(
            "entrypoint {shown} leaves the image's rootfs: symlink {link} points to {}, outside of it",
            target.display()
        ),
        Err(ResolveError::TooManySymlinks) => {
            bail!("entrypoint {shown} has too many levels of symlinks (a loop?)")
        }
        Err(ResolveError::Io(e)) => {
            return Err(e)
                .with_context(|| format!("cannot look up entrypoint {shown} in the image's rootfs"))
        }
    };
    // O_NOFOLLOW: the resolved path has no symlinks; refuse one appearing now.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(&host)
        .with_context(|| format!("cannot open entrypoint {shown}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read entrypoint {shown}"))?;
    if meta.is_dir() {
        bail!("entrypoint {shown} is a directory, not a WebAssembly file");
    }
    Ok((file, FileIdentity::of(&meta)))
}

/// The entrypoint's file stem, for thread names (Linux keeps 15 bytes).
fn short_name(shown: &str) -> String {
    let stem = Path::new(shown)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("guest");
    stem.chars().take(10).collect()
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
