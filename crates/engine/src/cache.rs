//! Compiled-code cache: each guest is compiled once per node and linked once
//! per process.
//!
//! A guest's code is found by its [`Key`]: the SHA-256 of the engine's
//! [`Fingerprint`] (cache format, wasmtime version, target, compilation
//! settings) and of the guest's wasm binary (WAT is converted first). Three
//! places are tried, fastest first:
//!
//! 1. memory: the compiled and linked code of the [`MEMORY_ENTRIES`] guests
//!    this process prepared last (least recently used goes first);
//! 2. disk: artifacts this engine compiled and stored in the cache directory
//!    (`<key>.cwasm`, with its SHA-256 and size in `<key>.sha256`). They are
//!    memory-mapped on load, so shims running the same guest share the pages;
//! 3. Cranelift, whose result is then stored on disk.
//!
//! Trust: wasmtime runs the native code of an artifact as is, so only
//! artifacts written by this code into a directory that belongs to the shim's
//! user and is closed to everyone else (0700) are loaded, and only after
//! their digest matched the one recorded when they were stored. A corrupt or
//! truncated artifact is logged, removed and compiled again. Nothing from an
//! image's rootfs is ever loaded as native code (see `compile::binary`).
//!
//! Concurrency: prepares of the same guest in one process wait for the first
//! (one lock per key in the memory map); across processes, loading and
//! compiling a key happen under an exclusive `flock` on `<key>.lock`.
//! Artifacts and their digests are written to a temporary file, synced and
//! renamed, so a reader never sees half an artifact.
use std::collections::HashMap;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::compile::{Code, Kind};
use crate::engine::Linked;

/// Where artifacts are stored unless configured otherwise.
pub(crate) const DEFAULT_DIR: &str = "/var/lib/wasishim/cache";
/// Size cap of the cache directory unless configured otherwise: 1 GiB.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Guests kept compiled and linked in memory per process.
const MEMORY_ENTRIES: usize = 64;
/// The wasmtime the workspace pins (`wasmtime = "=48.0.8"`); a unit test
/// checks the two agree. wasmtime's own compatibility hash covers its version
/// too; this keeps the key honest should that ever change.
const WASMTIME_VERSION: &str = "48.0.8";
/// Changes whenever the layout of the cache directory does.
const FORMAT: &str = "wasishim-cache-1";
/// Temporary files older than this were left by a shim that died mid-store.
const STALE_TEMP: Duration = Duration::from_secs(3600);

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

/// What identifies the code wasmtime compiles for a given engine, whatever
/// the guest: two engines with the same fingerprint can load each other's
/// artifacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint([u8; 32]);

/// A file as the kernel identifies it, with what changes when its content
/// does (size, modification and change times), so that a repeat start can
/// skip reading and hashing a large guest, as git's index skips unchanged
/// files.
///
/// Timestamps are as coarse as the kernel's clock tick, and a deleted
/// file's inode number is soon reused, so a file replaced within one tick by
/// another of the same size could look the same. As git does with "racily
/// clean" files, only a file whose change time was at least
/// [`SETTLED_AFTER`] old when it was read is remembered
/// ([`FileIdentity::settled`]): any later file on that inode, or any later
/// write to it, has a later change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    pub(crate) fn of(meta: &fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether the file changed at least [`SETTLED_AFTER`] before `now`.
    pub(crate) fn settled(&self, now: SystemTime) -> bool {
        let changed = u64::try_from(self.ctime.0)
            .ok()
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::new(secs, self.ctime.1 as u32));
        changed.is_some_and(|changed| {
            now.duration_since(changed)
                .is_ok_and(|age| age >= SETTLED_AFTER)
        })
    }
}

/// How old a file's last change must be for it to be remembered.
pub(crate) const SETTLED_AFTER: Duration = Duration::from_secs(2);

/// Files remembered with their keys; cleared when it reaches this size.
const MAX_KNOWN_FILES: usize = 4096;

/// Identifies one guest's code for one engine fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key([u8; 32]);

impl Key {
    fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// A `Hasher` that feeds SHA-256, so that a `Hash` value (wasmtime's
/// compatibility hash) gives the same digest in every process and build.
/// std's `DefaultHasher` is not specified to be stable between Rust releases,
/// and its 64 bits are too few for a cache key.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

/// The fingerprint of `engine`: cache format, wasmtime version, host
/// architecture and OS, and wasmtime's `precompile_compatibility_hash`
/// (target triple, Cranelift and ISA flags, tunables, wasm features).
pub(crate) fn fingerprint(engine: &Engine) -> Fingerprint {
    let mut hasher = Sha256Hasher(Sha256::new());
    FORMAT.hash(&mut hasher);
    WASMTIME_VERSION.hash(&mut hasher);
    std::env::consts::ARCH.hash(&mut hasher);
    std::env::consts::OS.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    Fingerprint(hasher.0.finalize().into())
}

/// The key of the wasm `binary` compiled by an engine with `fingerprint`.
/// Costs one SHA-256 pass over the binary (about 1 ms per MB).
pub(crate) fn key(fingerprint: &Fingerprint, binary: &[u8]) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(fingerprint.0);
    hasher.update(binary);
    Key(hasher.finalize().into())
}

/// The key of the wasm layer with OCI digest `digest` compiled by an engine
/// with `fingerprint`. Never equal to a [`key`]: the digest is hashed with a
/// prefix no wasm binary starts with.
pub(crate) fn layer_key(fingerprint: &Fingerprint, digest: &str) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(fingerprint.0);
    hasher.update(b"oci-layer\0");
    hasher.update(digest.as_bytes());
    Key(hasher.finalize().into())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A guest's compiled code and, once a prepare linked it, the linked form.
pub(crate) struct Compiled {
    pub(crate) code: Code,
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
}

impl CodeCache {
    /// A cache for `engine`, storing artifacts in `dir` (none: memory only)
    /// up to `max_bytes`. A directory that cannot be created or is not safe
    /// to load code from is logged and left out: the shim then compiles each
    /// guest once per process, which is slower but correct.
    pub(crate) fn new(engine: &Engine, dir: Option<&Path>, max_bytes: u64) -> CodeCache {
        let disk = dir.and_then(|dir| match DiskCache::open(dir, max_bytes) {
            Ok(disk) => Some(disk),
            Err(e) => {
                log::warn!("compiled-code cache on disk is off: {e:#}");
                None
            }
        });
        CodeCache {
            fingerprint: fingerprint(engine),
            disk,
            memory: Mutex::default(),
            files: Mutex::default(),
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
        }
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

    /// The code of the wasm `binary` (a `kind`), read from the file `file`
    /// after `read_at`: from memory, from disk, or from `compile`, which is
    /// called at most once per key at a time in this process. A file that
    /// had settled by then is remembered, so that [`Self::get_known_file`]
    /// can find its code without the bytes.
    ///
    /// # Errors
    ///
    /// Only `compile`'s: every cache failure is logged and falls back to
    /// compiling.
    pub(crate) fn get_file(
        &self,
        engine: &Engine,
        file: FileIdentity,
        read_at: SystemTime,
        binary: &[u8],
        kind: Kind,
        compile: impl FnOnce() -> Result<Code>,
    ) -> Result<Arc<Compiled>> {
        let key = key(&self.fingerprint, binary);
        if file.settled(read_at) {
            let mut files = lock(&self.files);
            if files.len() >= MAX_KNOWN_FILES {
                files.clear();
            }
            files.insert(file, key);
        }
        self.get_keyed(engine, key, kind, compile)
    }

    /// The code of file `file` if it was looked up before by its bytes and
    /// is still in memory; `None` otherwise (then read the file and call
    /// [`Self::get_file`]).
    pub(crate) fn get_known_file(&self, file: &FileIdentity) -> Option<Arc<Compiled>> {
        let key = *lock(&self.files).get(file)?;
        let slot = lock(&self.memory).existing_slot(&key)?;
        let found = lock(&slot.compiled).clone()?;
        self.memory_hits.fetch_add(1, Ordering::Relaxed);
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
        kind: Kind,
        compile: impl FnOnce() -> Result<Code>,
    ) -> Result<Arc<Compiled>> {
        self.get_keyed(engine, layer_key(&self.fingerprint, digest), kind, compile)
    }

    fn get_keyed(
        &self,
        engine: &Engine,
        key: Key,
        kind: Kind,
        compile: impl FnOnce() -> Result<Code>,
    ) -> Result<Arc<Compiled>> {
        let slot = lock(&self.memory).slot(key);
        let mut compiled = lock(&slot.compiled);
        if let Some(found) = compiled.as_ref() {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(found.clone());
        }
        let code = self.load_or_compile(engine, &key, kind, compile)?;
        let found = Arc::new(Compiled {
            code,
            linked: OnceLock::new(),
        });
        *compiled = Some(found.clone());
        Ok(found)
    }

    fn load_or_compile(
        &self,
        engine: &Engine,
        key: &Key,
        kind: Kind,
        compile: impl FnOnce() -> Result<Code>,
    ) -> Result<Code> {
        let Some(disk) = &self.disk else {
            let code = compile()?;
            self.compiled.fetch_add(1, Ordering::Relaxed);
            return Ok(code);
        };
        // Held until the artifact is stored: another shim preparing the same
        // guest waits here, then loads what this one stored.
        let _locked = disk.lock(key);
        if let Some(code) = disk.load(engine, key, kind) {
            self.loaded.fetch_add(1, Ordering::Relaxed);
            return Ok(code);
        }
        let code = compile()?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        match code.serialize() {
            Ok(artifact) => match disk.store(key, &artifact) {
                Ok(()) => disk.evict(key),
                Err(e) => log::warn!(
                    "compiled-code cache: cannot store an artifact in {}: {e}; the guest is compiled again in the next shim (check that the disk has room)",
                    disk.dir.display()
                ),
            },
            Err(e) => log::warn!("compiled-code cache: wasmtime cannot serialize the guest's code: {e:#}"),
        }
        Ok(code)
    }
}

/// The cache directory.
struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// Distinguishes the temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl DiskCache {
    /// Creates `dir` (mode 0700) if needed and checks that only this user
    /// can write to it.
    fn open(dir: &Path, max_bytes: u64) -> Result<DiskCache> {
        if !dir.is_absolute() {
            bail!(
                "cache directory {} is not an absolute path: give a path starting with /",
                dir.display()
            );
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
        let meta = fs::symlink_metadata(dir)
            .with_context(|| format!("cannot read the cache directory {}", dir.display()))?;
        if !meta.is_dir() {
            bail!(
                "the cache directory {} is not a directory (a symlink?): remove it or configure another directory",
                dir.display()
            );
        }
        let uid = nix::unistd::geteuid().as_raw();
        if meta.uid() != uid {
            bail!(
                "the cache directory {} belongs to uid {}, not to the shim's uid {uid}, so its code cannot be trusted: remove it and let the shim create it",
                dir.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o022 != 0 {
            bail!(
                "the cache directory {} can be written by other users (mode {:o}), so its code cannot be trusted: remove it and let the shim create it",
                dir.display(),
                meta.mode() & 0o777
            );
        }
        if meta.mode() & 0o777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| {
                format!(
                    "cannot make the cache directory {} private (chmod 700)",
                    dir.display()
                )
            })?;
        }
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            max_bytes,
        })
    }

    fn path(&self, hex: &str, extension: &str) -> PathBuf {
        self.dir.join(format!("{hex}.{extension}"))
    }

    fn open_lock_file(&self, hex: &str) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.path(hex, "lock"))
    }

    /// Takes the exclusive lock of `key`, waiting for another process that
    /// holds it. `None` if locking fails (logged): going on without it costs
    /// at most a second compilation.
    fn lock(&self, key: &Key) -> Option<File> {
        let hex = key.hex();
        let locked = self
            .open_lock_file(&hex)
            .and_then(|file| file.lock().map(|()| file));
        match locked {
            Ok(file) => Some(file),
            Err(e) => {
                log::warn!(
                    "compiled-code cache: cannot lock {}: {e}; compiling without waiting for other shims",
                    self.path(&hex, "lock").display()
                );
                None
            }
        }
    }

    /// Loads the artifact of `key` if it is stored and intact. A damaged one
    /// is logged and removed. Costs a SHA-256 pass over the artifact and an
    /// mmap.
    fn load(&self, engine: &Engine, key: &Key, kind: Kind) -> Option<Code> {
        let hex = key.hex();
        let artifact = self.path(&hex, "cwasm");
        match self.verify(&hex, &artifact) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(why) => {
                self.discard(&hex, &artifact, &why);
                return None;
            }
        }
        // SAFETY: wasmtime runs this file's native code as is. The file is
        // one this engine serialized and stored (the directory belongs to the
        // shim's user and is closed to everyone else, see `open`), its
        // SHA-256 just matched the digest recorded when it was stored, and
        // the key's fingerprint covers the engine's compilation settings
        // (wasmtime checks them again while loading).
        let loaded = unsafe {
            match kind {
                Kind::Module => Module::deserialize_file(engine, &artifact).map(Code::Module),
                Kind::Component => {
                    Component::deserialize_file(engine, &artifact).map(Code::Component)
                }
            }
        };
        match loaded {
            Ok(code) => {
                touch(&artifact);
                Some(code)
            }
            Err(e) => {
                self.discard(&hex, &artifact, &format!("wasmtime cannot load it: {e:#}"));
                None
            }
        }
    }

    /// Whether the artifact is stored (`Ok(false)`: it is not), or why it
    /// cannot be used.
    fn verify(&self, hex: &str, artifact: &Path) -> Result<bool, String> {
        let meta = match fs::symlink_metadata(artifact) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        if !meta.is_file() {
            return Err("it is not a regular file".to_string());
        }
        let record = match fs::read_to_string(self.path(hex, "sha256")) {
            Ok(record) => record,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err("no digest was recorded for it (an interrupted store?)".to_string())
            }
            Err(e) => return Err(format!("cannot read its recorded digest: {e}")),
        };
        let Some((digest, size)) = parse_record(&record) else {
            return Err("its recorded digest is malformed".to_string());
        };
        if meta.len() != size {
            return Err(format!(
                "it has {} bytes but {size} were stored (truncated?)",
                meta.len()
            ));
        }
        let actual = hash_file(artifact).map_err(|e| format!("cannot read it: {e}"))?;
        if actual != digest {
            return Err("its contents differ from what was stored (SHA-256 mismatch)".to_string());
        }
        Ok(true)
    }

    fn discard(&self, hex: &str, artifact: &Path, why: &str) {
        log::warn!(
            "compiled-code cache: discarding {}: {why}; compiling the guest again",
            artifact.display()
        );
        for path in [artifact.to_path_buf(), self.path(hex, "sha256")] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("compiled-code cache: cannot remove {}: {e}", path.display());
                }
            }
        }
    }

    /// Stores `artifact` as the code of `key`, then its digest.
    fn store(&self, key: &Key, artifact: &[u8]) -> io::Result<()> {
        let hex = key.hex();
        let digest = self::hex(&Sha256::digest(artifact));
        self.write_atomically(&self.path(&hex, "cwasm"), artifact)?;
        let record = format!("{digest} {}\n", artifact.len());
        self.write_atomically(&self.path(&hex, "sha256"), record.as_bytes())?;
        // Makes the renames durable.
        File::open(&self.dir)?.sync_all()
    }

    /// Writes `bytes` to a temporary file in the cache directory, syncs it
    /// and renames it to `path`: readers see the old file or the whole new one.
    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact");
        let temp = self.dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temp, path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Removes the least recently used artifacts until the directory holds
    /// at most `max_bytes` of them, keeping `keep` (just stored) and any
    /// artifact another thread or process is loading (its lock is taken).
    /// Also removes temporary files left by a shim that died while storing.
    fn evict(&self, keep: &Key) {
        let keep = keep.hex();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                log::warn!(
                    "compiled-code cache: cannot list {} to evict old artifacts: {e}",
                    self.dir.display()
                );
                return;
            }
        };
        let now = SystemTime::now();
        let mut total = 0u64;
        let mut candidates = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if name.ends_with(".tmp") {
                if now.duration_since(modified).unwrap_or_default() > STALE_TEMP {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            let Some(hex) = name.strip_suffix(".cwasm") else {
                continue;
            };
            total = total.saturating_add(meta.len());
            if hex != keep {
                candidates.push((modified, hex.to_string(), meta.len()));
            }
        }
        if total <= self.max_bytes {
            return;
        }
        candidates.sort();
        for (_, hex, size) in candidates {
            if total <= self.max_bytes {
                break;
            }
            // Not waiting: a locked artifact is in use, try the next one.
            let Ok(lock) = self.open_lock_file(&hex) else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue;
            }
            let _ = fs::remove_file(self.path(&hex, "cwasm"));
            let _ = fs::remove_file(self.path(&hex, "sha256"));
            let _ = fs::remove_file(self.path(&hex, "lock"));
            total = total.saturating_sub(size);
            log::info!(
                "compiled-code cache: evicted {hex} ({size} bytes) to stay under {} bytes",
                self.max_bytes
            );
        }
    }
}

/// Parses a digest record: "<sha256 hex> <size>\n".
fn parse_record(record: &str) -> Option<(String, u64)> {
    let mut fields = record.split_whitespace();
    let digest = fields.next()?;
    let size = fields.next()?.parse().ok()?;
    if fields.next().is_some() || digest.len() != 64 {
        return None;
    }
    Some((digest.to_string(), size))
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// Marks an artifact as just used, for LRU eviction. Best effort.
fn touch(path: &Path) {
    let now = SystemTime::now();
    let times = FileTimes::new().set_accessed(now).set_modified(now);
    if let Err(e) = File::open(path).and_then(|f| f.set_times(times)) {
        log::debug!("compiled-code cache: cannot touch {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Config, OptLevel};

    #[test]
    fn only_files_changed_a_while_ago_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.wasm");
        std::fs::write(&path, b"\0asm").unwrap();
        let identity = FileIdentity::of(&std::fs::metadata(&path).unwrap());
        let now = SystemTime::now();
        assert!(!identity.settled(now), "a file written just now");
        assert!(identity.settled(now + SETTLED_AFTER + Duration::from_millis(10)));
        assert!(!identity.settled(now - Duration::from_secs(60)));
    }

    fn engine(opt: OptLevel) -> Engine {
        let mut config = Config::new();
        config.cranelift_opt_level(opt);
        match Engine::new(&config) {
            Ok(e) => e,
            Err(e) => panic!("engine: {e:#}"),
        }
    }

    #[test]
    fn fingerprint_is_stable_and_follows_settings() {
        let speed = engine(OptLevel::Speed);
        let same = engine(OptLevel::Speed);
        let none = engine(OptLevel::None);
        assert_eq!(fingerprint(&speed), fingerprint(&same));
        assert_ne!(fingerprint(&speed), fingerprint(&none));
        let wasm = b"\0asm\x01\0\0\0";
        assert_eq!(
            key(&fingerprint(&speed), wasm),
            key(&fingerprint(&same), wasm)
        );
        assert_ne!(
            key(&fingerprint(&speed), wasm),
            key(&fingerprint(&none), wasm)
        );
        assert_ne!(
            key(&fingerprint(&speed), wasm),
            key(&fingerprint(&speed), b"\0asm\x01\0\0\0\0")
        );
    }

    #[test]
    fn sha256_hasher_is_sha256() {
        let mut hasher = Sha256Hasher(Sha256::new());
        hasher.write(b"abc");
        assert_eq!(
            hex(&hasher.0.clone().finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hasher.finish(),
            u64::from_le_bytes([0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea])
        );
    }

    #[test]
    fn wasmtime_version_is_the_pinned_one() {
        let workspace = include_str!("../../../Cargo.toml");
        assert!(
            workspace.contains(&format!("wasmtime = \"={WASMTIME_VERSION}\"")),
            "update WASMTIME_VERSION in cache.rs to the wasmtime the workspace pins"
        );
    }

    #[test]
    fn records_parse() {
        let digest = "a".repeat(64);
        assert_eq!(
            parse_record(&format!("{digest} 12\n")),
            Some((digest.clone(), 12))
        );
        assert_eq!(parse_record(&format!("{digest}\n")), None);
        assert_eq!(parse_record("abc 12\n"), None);
        assert_eq!(parse_record(&format!("{digest} x\n")), None);
        assert_eq!(parse_record(&format!("{digest} 1 2\n")), None);
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

    #[test]
    fn open_refuses_a_directory_others_can_write() {
        let Ok(tmp) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let dir = tmp.path().join("cache");
        assert!(DiskCache::open(&dir, 1).is_ok());
        let mode = fs::metadata(&dir).map(|m| m.mode() & 0o777).ok();
        assert_eq!(mode, Some(0o700));
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o777));
        let e = match DiskCache::open(&dir, 1) {
            Ok(_) => panic!("a world-writable cache directory was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("can be written by other users (mode 777)"),
            "{e}"
        );
        assert!(DiskCache::open(Path::new("relative/cache"), 1).is_err());
    }
}
