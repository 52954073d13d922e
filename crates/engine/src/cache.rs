//! Compiled-code cache: each guest is compiled once per node and linked once
//! per process.
//!
//! A guest's code is found by its [`Key`]: the SHA-256 of the engine's
//! [`Fingerprint`] (cache format, wasmtime version, target, compilation
//! settings) and of the guest's bytes as the image holds them (a WAT text
//! and its binary are two guests: converting text is parsing untrusted
//! input, which only the compile worker does). Three
//! places are tried, fastest first:
//!
//! 1. memory: the compiled and linked code of the [`MEMORY_ENTRIES`] guests
//!    this process prepared last (least recently used goes first);
//! 2. disk: artifacts this engine compiled and stored in the cache directory
//!    (`<key>.cwasm`, with its SHA-256 and size in `<key>.sha256`). They are
//!    memory-mapped on load, so shims running the same guest share the pages;
//! 3. Cranelift, whose result is then stored on disk unless it is larger
//!    than a quarter of the directory's cap (then it is used and not kept):
//!    storing one guest evicts at most that much of the others.
//!
//! Compiling happens in a compile worker process when the engine has one
//! (the shims always do, see worker/mod.rs), else in this process; at most
//! [`WasmEngineBuilder::compile_concurrency`](crate::WasmEngineBuilder::compile_concurrency)
//! compilations run at once. A guest whose compilation failed in a way that
//! would repeat (invalid, or past a limit) fails again at once for
//! [`FAILURE_REMEMBERED`], without holding a compile slot.
//!
//! Trust: wasmtime runs the native code of an artifact as is, so only
//! artifacts written by this code, or by a compile worker this process
//! started into a file it made for it, into a directory that belongs to the
//! shim's user and is closed to everyone else (0700) are loaded, and only
//! after their digest matched the one recorded when they were stored. A corrupt or
//! truncated artifact is logged, removed and compiled again. Nothing from an
//! image's rootfs is ever loaded as native code (see `compile::binary`).
//!
//! Concurrency: prepares of the same guest in one process wait for the first
//! (one lock per key in the memory map); across processes, loading and
//! compiling a key happen under an exclusive `flock` on `<key>.lock`.
//! Artifacts and their digests are written to a temporary file, synced and
//! renamed, so a reader never sees half an artifact.
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use wasmtime::Engine;

use crate::cache_key::{fingerprint, key, layer_key, FileIdentity, Fingerprint, Key};
use crate::compile::{self, Code};
use crate::disk_cache::{self, DiskCache};
use crate::instance_state::InstanceState;
use crate::link::Linked;
use crate::metrics::EngineMetrics;
use crate::worker::{verdict, CompileLimits, CompileSlots, WorkerProcess};

/// Where artifacts are stored unless configured otherwise.
pub(crate) const DEFAULT_DIR: &str = "/var/lib/wasishim/cache";
/// Size cap of the cache directory unless configured otherwise: 1 GiB.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Guests kept compiled and linked in memory per process.
const MEMORY_ENTRIES: usize = 64;

/// How the engine obtained the code of the guests it prepared, counted since
/// it was created (see [`WasmEngine::cache_stats`](crate::WasmEngine::cache_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Guests compiled with Cranelift: found neither in memory nor on disk.
    pub compiled: u64,
    /// Guests loaded from an artifact in the cache directory.
    pub loaded_from_disk: u64,
    /// Prepares that found the guest compiled and linked in memory.
    pub memory_hits: u64,
}

/// Files remembered with their keys; cleared when it reaches this size.
const MAX_KNOWN_FILES: usize = 4096;

/// How long a failed compilation that would fail again is remembered: a
/// compile bomb's retries (kubelet backs off up to 5 minutes) fail at once
/// instead of holding a compile slot for the whole timeout each time.
pub(crate) const FAILURE_REMEMBERED: Duration = Duration::from_secs(300);
/// Failures remembered at most; cleared when it reaches this size.
const MAX_FAILURES: usize = 1024;

/// How guests are compiled: by `worker` (a compile worker process), or in
/// this process if none, within `limits`.
pub(crate) struct Compiler {
    pub(crate) worker: Option<Box<dyn WorkerProcess>>,
    pub(crate) limits: CompileLimits,
    /// Cores one compilation may use.
    pub(crate) threads: usize,
}

/// A guest's compiled code and, once a prepare linked it, the linked form.
pub(crate) struct Compiled {
    pub(crate) code: Code,
    /// What each store of this code holds in instance state, read from the
    /// source once (the cache keeps it so a known file is not read again).
    pub(crate) instance_state: InstanceState,
    /// Set by the first prepare that links the code; linking does not depend
    /// on the container, so later prepares reuse it.
    pub(crate) linked: OnceLock<Linked>,
}

/// One guest's place in the memory map. Its mutex is held while the code is
/// loaded or compiled, so concurrent prepares of the guest wait for the first.
#[derive(Default)]
struct Slot {
    compiled: Mutex<Option<Arc<Compiled>>>,
}

/// The memory map: key -> slot, with a use clock for LRU.
#[derive(Default)]
struct Memory {
    slots: HashMap<Key, (Arc<Slot>, u64)>,
    clock: u64,
}

impl Memory {
    /// The slot of `key` if there is one (and marks it used).
    fn existing_slot(&mut self, key: &Key) -> Option<Arc<Slot>> {
        self.clock += 1;
        let now = self.clock;
        let (slot, used) = self.slots.get_mut(key)?;
        *used = now;
        Some(slot.clone())
    }

    /// The slot of `key`, created if needed and marked as just used. Drops
    /// the least recently used slots beyond [`MEMORY_ENTRIES`].
    fn slot(&mut self, key: Key) -> Arc<Slot> {
        self.clock += 1;
        let now = self.clock;
        if let Some((slot, used)) = self.slots.get_mut(&key) {
            *used = now;
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        self.slots.insert(key, (slot.clone(), now));
        while self.slots.len() > MEMORY_ENTRIES {
            let oldest = self
                .slots
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            match oldest {
                Some(oldest) => self.slots.remove(&oldest),
                None => break,
            };
        }
        slot
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves consistent data here
    // (plain inserts and reads), so poisoning is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The cache of one engine: the memory map, the cache directory if any, and
/// counters.
pub(crate) struct CodeCache {
    fingerprint: Fingerprint,
    disk: Option<DiskCache>,
    memory: Mutex<Memory>,
    /// The key of each file whose code was looked up by its bytes.
    files: Mutex<HashMap<FileIdentity, Key>>,
    compiled: AtomicU64,
    loaded: AtomicU64,
    memory_hits: AtomicU64,
    compiler: Compiler,
    slots: CompileSlots,
    /// Compilations that failed and would fail again: the message, and when.
    failures: Mutex<HashMap<Key, (String, Instant)>>,
    metrics: Option<EngineMetrics>,
}

impl CodeCache {
    /// A cache for `engine`, storing artifacts in `dir` (none: memory only)
    /// up to `max_bytes`, compiling with `compiler`. A directory that cannot
    /// be created or is not safe to load code from is logged and left out:
    /// the shim then compiles each guest once per process, which is slower
    /// but correct.
    pub(crate) fn new(
        engine: &Engine,
        dir: Option<&Path>,
        max_bytes: u64,
        compiler: Compiler,
        metrics: Option<EngineMetrics>,
    ) -> CodeCache {
        let disk = dir.and_then(|dir| match DiskCache::open(dir, max_bytes) {
            Ok(disk) => Some(disk.counted(metrics.clone())),
            Err(e) => {
                log::warn!("compiled-code cache on disk is off: {e:#}");
                None
            }
        });
        let slots = CompileSlots::new(
            compiler.limits.concurrency,
            disk.as_ref().map(|d| d.dir.clone()),
        );
        CodeCache {
            fingerprint: fingerprint(engine),
            disk,
            memory: Mutex::default(),
            files: Mutex::default(),
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
            compiler,
            slots,
            failures: Mutex::default(),
            metrics,
        }
    }

    /// What one compilation may use.
    pub(crate) fn limits(&self) -> &CompileLimits {
        &self.compiler.limits
    }

    /// The directory artifacts are stored in, if the disk cache is on.
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.disk.as_ref().map(|d| d.dir.as_path())
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded_from_disk: self.loaded.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
        }
    }

    /// The code of the guest `bytes` (checked by `compile::check_source`),
    /// read from the file `file` after `read_at`: from memory, from disk,
    /// or compiled, at most once per key at a time in this process. A file
    /// that had settled by then is remembered, so that
    /// [`Self::get_known_file`] can find its code without the bytes. `shown`
    /// names the guest in errors.
    ///
    /// # Errors
    ///
    /// Only the compilation's: every cache failure is logged and falls back
    /// to compiling.
    pub(crate) fn get_file(
        &self,
        engine: &Engine,
        file: FileIdentity,
        read_at: SystemTime,
        bytes: &[u8],
        shown: &str,
        tenant: &str,
    ) -> Result<Arc<Compiled>> {
        let key = key(&self.fingerprint, bytes);
        if file.settled(read_at) {
            let mut files = lock(&self.files);
            if files.len() >= MAX_KNOWN_FILES {
                files.clear();
            }
            files.insert(file, key);
        }
        self.get_keyed(engine, key, bytes, shown, tenant)
    }

    /// The code of file `file` if it was looked up before by its bytes and
    /// is still in memory; `None` otherwise (then read the file and call
    /// [`Self::get_file`]).
    pub(crate) fn get_known_file(&self, file: &FileIdentity) -> Option<Arc<Compiled>> {
        let key = *lock(&self.files).get(file)?;
        let slot = lock(&self.memory).existing_slot(&key)?;
        let found = lock(&slot.compiled).clone()?;
        self.memory_hits.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.memory_hit();
        }
        Some(found)
    }

    /// Like [`Self::get_file`] for the wasm whose OCI digest (`sha256:<hex>`,
    /// checked against the bytes by the caller) is `digest`: an image layer,
    /// which is then compiled once per node whatever image or container
    /// names it. Costs no hashing of the wasm.
    pub(crate) fn get_by_digest(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
        shown: &str,
        tenant: &str,
    ) -> Result<Arc<Compiled>> {
        let key = layer_key(&self.fingerprint, digest);
        self.get_keyed(engine, key, bytes, shown, tenant)
    }

    fn get_keyed(
        &self,
        engine: &Engine,
        key: Key,
        bytes: &[u8],
        shown: &str,
        tenant: &str,
    ) -> Result<Arc<Compiled>> {
        let slot = lock(&self.memory).slot(key);
        let mut compiled = lock(&slot.compiled);
        if let Some(found) = compiled.as_ref() {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            if let Some(metrics) = &self.metrics {
                metrics.memory_hit();
            }
            return Ok(found.clone());
        }
        let code = self.load_or_compile(engine, &key, bytes, shown, tenant)?;
        let instance_state = InstanceState::of(bytes, matches!(code, Code::Component(_)));
        let found = Arc::new(Compiled {
            code,
            instance_state,
            linked: OnceLock::new(),
        });
        *compiled = Some(found.clone());
        Ok(found)
    }

    /// The failure of an earlier compilation of `key` that would repeat.
    fn failed_before(&self, key: &Key) -> Option<String> {
        let failures = lock(&self.failures);
        let (message, at) = failures.get(key)?;
        (at.elapsed() < FAILURE_REMEMBERED).then(|| message.clone())
    }

    fn remember_failure(&self, key: Key, message: &str) {
        let mut failures = lock(&self.failures);
        if failures.len() >= MAX_FAILURES {
            failures.retain(|_, (_, at)| at.elapsed() < FAILURE_REMEMBERED);
            if failures.len() >= MAX_FAILURES {
                failures.clear();
            }
        }
        failures.insert(key, (message.to_string(), Instant::now()));
    }

    fn load_or_compile(
        &self,
        engine: &Engine,
        key: &Key,
        bytes: &[u8],
        shown: &str,
        tenant: &str,
    ) -> Result<Code> {
        // Held until the artifact is stored: another shim preparing the same
        // guest waits here, then loads what this one stored.
        let _locked = self.disk.as_ref().and_then(|disk| disk.lock(key));
        if let Some(disk) = &self.disk {
            if let Some(code) = disk.load(engine, key) {
                self.loaded.fetch_add(1, Ordering::Relaxed);
                if let Some(metrics) = &self.metrics {
                    metrics.disk_hit();
                }
                return Ok(code);
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.miss();
        }
        if let Some(message) = self.failed_before(key) {
            bail!(
                "{message} (remembered from an attempt less than {} minutes ago)",
                FAILURE_REMEMBERED.as_secs() / 60
            );
        }
        let _slot = self
            .slots
            .acquire(self.compiler.limits.timeout, shown, tenant)?;
        let started = Instant::now();
        let code = match &self.compiler.worker {
            None => self.compile_here(engine, key, bytes, shown),
            Some(worker) => self.compile_in_worker(worker.as_ref(), engine, key, bytes, shown),
        };
        if let Some(metrics) = &self.metrics {
            match &code {
                Ok(_) => metrics.compiled(bytes.len(), started.elapsed()),
                Err(_) => metrics.compile_failed(),
            }
        }
        let code = code?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        Ok(code)
    }

    /// Compiles in this process and stores the artifact.
    fn compile_here(&self, engine: &Engine, key: &Key, bytes: &[u8], shown: &str) -> Result<Code> {
        let code = compile::compile_source(engine, bytes, shown)?;
        let Some(disk) = &self.disk else {
            return Ok(code);
        };
        match code.serialize() {
            Ok(artifact) => match disk.store(key, &artifact) {
                Ok(true) => disk.evict(key),
                Ok(false) => {}
                Err(e) => log::warn!(
                    "compiled-code cache: cannot store an artifact in {}: {e}; the guest is compiled again in the next shim (check that the disk has room)",
                    disk.dir.display()
                ),
            },
            Err(e) => log::warn!("compiled-code cache: wasmtime cannot serialize the guest's code: {e:#}"),
        }
        Ok(code)
    }

    /// Has a compile worker compile `bytes` into a file made for it (in the
    /// cache directory, else in memory), judges how it ended, then keeps and
    /// loads what it wrote.
    fn compile_in_worker(
        &self,
        worker: &dyn WorkerProcess,
        engine: &Engine,
        key: &Key,
        bytes: &[u8],
        shown: &str,
    ) -> Result<Code> {
        // Exactly the bytes the key was computed over: the worker never
        // reads the image's file, which could have changed since.
        let input = memory_file("wasishim-guest", bytes)
            .context("cannot hand the guest to the compile worker")?;
        let output = match &self.disk {
            Some(disk) => Output::Disk(disk.temp_file()?),
            None => Output::Memory(
                memory_file("wasishim-artifact", b"")
                    .context("cannot make a file for the compile worker's output")?,
            ),
        };
        let limits = self.compiler.limits.worker(self.compiler.threads);
        let outcome = worker.run(&input, output.file(), &limits);
        drop(input);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                output.discard();
                bail!("cannot compile entrypoint {shown}: cannot start the compile worker: {e}");
            }
        };
        if let Err(failure) = verdict(&outcome, &limits, shown) {
            output.discard();
            log::warn!("{}", failure.message);
            if failure.repeats {
                self.remember_failure(*key, &failure.message);
            }
            bail!(failure.message);
        }
        let loaded = match output {
            Output::Disk(temp) => self.disk.as_ref().map(|disk| disk.adopt(engine, key, temp)),
            Output::Memory(mut file) => Some(load_memory_file(engine, &mut file)),
        };
        match loaded {
            Some(Ok(code)) => Ok(code),
            Some(Err(e)) => Err(e.context(format!(
                "cannot load the code the compile worker made for entrypoint {shown}"
            ))),
            None => bail!("cannot load the code the compile worker made for entrypoint {shown}: the cache directory is gone"),
        }
    }
}

/// Where a compile worker writes.
enum Output {
    /// A temporary file in the cache directory, renamed into place if kept.
    Disk(disk_cache::TempFile),
    /// A memory file (no cache directory).
    Memory(File),
}

impl Output {
    fn file(&self) -> &File {
        match self {
            Output::Disk(temp) => &temp.file,
            Output::Memory(file) => file,
        }
    }

    fn discard(self) {
        if let Output::Disk(temp) = self {
            temp.remove();
        }
    }
}

/// A memory file (`memfd`) holding `bytes`, at offset 0.
fn memory_file(name: &str, bytes: &[u8]) -> io::Result<File> {
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    let fd = nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file)
}

/// Loads the artifact a compile worker wrote into the memory file `file`.
fn load_memory_file(engine: &Engine, file: &mut File) -> Result<Code> {
    file.rewind()?;
    let mut artifact = Vec::new();
    file.read_to_end(&mut artifact)?;
    let kind = disk_cache::artifact_kind(Engine::detect_precompiled(&artifact))?;
    // SAFETY: the memory file was made by this process and handed only to
    // a compile worker it started, which exited 0 after writing this.
    let code = unsafe {
        match kind {
            compile::Kind::Module => {
                wasmtime::Module::deserialize(engine, &artifact).map(Code::Module)
            }
            compile::Kind::Component => {
                wasmtime::component::Component::deserialize(engine, &artifact).map(Code::Component)
            }
        }
    };
    code.map_err(|e| anyhow::anyhow!("wasmtime refused it: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{Exit, Outcome, WorkerLimits};
    use std::sync::atomic::AtomicUsize;

    /// A worker that compiles in this process and writes the artifact, or
    /// times out, counting its runs.
    struct FakeWorker {
        runs: AtomicUsize,
        times_out: bool,
    }

    impl WorkerProcess for Arc<FakeWorker> {
        fn run(&self, input: &File, output: &File, _: &WorkerLimits) -> io::Result<Outcome> {
            self.runs.fetch_add(1, Ordering::Relaxed);
            if self.times_out {
                return Ok(Outcome {
                    exit: Exit::TimedOut,
                    stderr: String::new(),
                });
            }
            let mut bytes = Vec::new();
            (&*input).read_to_end(&mut bytes)?;
            let engine = Engine::new(&crate::engine::compile_config()).map_err(io::Error::other)?;
            let artifact = engine.precompile_module(&bytes).map_err(io::Error::other)?;
            (&*output).write_all(&artifact)?;
            Ok(Outcome {
                exit: Exit::Code(0),
                stderr: String::new(),
            })
        }
    }

    fn cache_with(dir: Option<&Path>, times_out: bool) -> (Engine, CodeCache, Arc<FakeWorker>) {
        let engine = Engine::new(&crate::engine::compile_config())
            .unwrap_or_else(|e| panic!("engine: {e:#}"));
        let worker = Arc::new(FakeWorker {
            runs: AtomicUsize::new(0),
            times_out,
        });
        let compiler = Compiler {
            worker: Some(Box::new(worker.clone())),
            limits: CompileLimits::default(),
            threads: 1,
        };
        let cache = CodeCache::new(&engine, dir, 1 << 30, compiler, None);
        (engine, cache, worker)
    }

    #[test]
    fn a_workers_artifact_is_kept_and_its_failure_remembered() {
        let wasm = b"(module (func (export \"_start\")))";
        let Ok(tmp) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let (engine, cache, worker) = cache_with(Some(tmp.path()), false);
        let loaded = cache.get_by_digest(&engine, "sha256:aa", wasm, "/app.wat", "pod");
        assert!(matches!(&loaded, Ok(c) if matches!(c.code, Code::Module(_))));
        let (engine, cache, _) = cache_with(Some(tmp.path()), false);
        assert!(cache
            .get_by_digest(&engine, "sha256:aa", wasm, "/app.wat", "pod")
            .is_ok());
        assert_eq!(
            cache.stats().loaded_from_disk,
            1,
            "the second cache loads it"
        );
        assert_eq!(worker.runs.load(Ordering::Relaxed), 1);

        for dir in [None, Some(tmp.path())] {
            let (engine, cache, worker) = cache_with(dir, true);
            let first = cache.get_by_digest(&engine, "sha256:bb", wasm, "/bomb.wasm", "pod");
            let first = first.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                first.starts_with("compiling entrypoint /bomb.wasm took longer than 60 s"),
                "{first}"
            );
            let again = cache.get_by_digest(&engine, "sha256:bb", wasm, "/bomb.wasm", "pod");
            let again = again.err().map(|e| e.to_string()).unwrap_or_default();
            assert_eq!(
                again,
                format!("{first} (remembered from an attempt less than 5 minutes ago)")
            );
            assert_eq!(
                worker.runs.load(Ordering::Relaxed),
                1,
                "the retry ran no worker"
            );
        }
        // Neither the failures nor the successes left a temporary file.
        let temps = std::fs::read_dir(tmp.path())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                    .count()
            })
            .unwrap_or(usize::MAX);
        assert_eq!(temps, 0);
    }

    #[test]
    fn memory_map_keeps_the_most_recently_used() {
        let mut memory = Memory::default();
        let keys: Vec<Key> = (0..=MEMORY_ENTRIES as u8).map(|i| Key([i; 32])).collect();
        let first = memory.slot(keys[0]);
        for k in &keys[1..MEMORY_ENTRIES] {
            memory.slot(*k);
        }
        // Using the first again makes the second the oldest.
        assert!(Arc::ptr_eq(&first, &memory.slot(keys[0])));
        memory.slot(keys[MEMORY_ENTRIES]);
        assert_eq!(memory.slots.len(), MEMORY_ENTRIES);
        assert!(memory.slots.contains_key(&keys[0]));
        assert!(!memory.slots.contains_key(&keys[1]));
    }
}
