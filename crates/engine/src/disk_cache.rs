//! The cache directory: compiled artifacts stored, verified, loaded and
//! evicted (see cache.rs for the trust and concurrency rules).
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};

use crate::cache_key::{hex, Key};
use crate::compile::{Code, Kind};
use crate::metrics::EngineMetrics;

/// Temporary files older than this were left by a shim that died mid-store.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// An artifact is kept only if it takes at most this fraction of the cap:
/// storing one evicts at most that much of the others, so one image never
/// empties the cache.
const ARTIFACT_SHARE: u64 = 4;

/// Whether wasmtime's artifact header says module or component.
pub(crate) fn artifact_kind(found: Option<Precompiled>) -> Result<Kind> {
    match found {
        Some(Precompiled::Module) => Ok(Kind::Module),
        Some(Precompiled::Component) => Ok(Kind::Component),
        None => bail!("it is not a wasmtime artifact"),
    }
}

/// Loads the artifact at `path`, of `kind`.
///
/// # Safety
///
/// wasmtime runs the file's native code as is: it must be code this
/// engine's configuration compiled, in a file nobody else could write.
unsafe fn deserialize(engine: &Engine, path: &Path, kind: Kind) -> wasmtime::Result<Code> {
    // SAFETY: as promised by the caller.
    unsafe {
        match kind {
            Kind::Module => Module::deserialize_file(engine, path).map(Code::Module),
            Kind::Component => Component::deserialize_file(engine, path).map(Code::Component),
        }
    }
}

/// A temporary file in the cache directory, for a compile worker's output.
pub(crate) struct TempFile {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
}

impl TempFile {
    pub(crate) fn remove(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!(
                "compiled-code cache: cannot remove {}: {e}",
                self.path.display()
            );
        }
    }
}

/// The cache directory.
pub(crate) struct DiskCache {
    pub(crate) dir: PathBuf,
    max_bytes: u64,
    /// Evictions and the directory's size are counted here, if set.
    metrics: Option<EngineMetrics>,
}

/// Distinguishes the temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl DiskCache {
    /// Creates `dir` (mode 0700) if needed and checks that only this user
    /// can write to it.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<DiskCache> {
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
            metrics: None,
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
    pub(crate) fn lock(&self, key: &Key) -> Option<File> {
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
    pub(crate) fn load(&self, engine: &Engine, key: &Key) -> Option<Code> {
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
        let kind = Engine::detect_precompiled_file(&artifact)
            .map_err(anyhow::Error::from)
            .and_then(artifact_kind);
        let kind = match kind {
            Ok(kind) => kind,
            Err(e) => {
                self.discard(&hex, &artifact, &format!("{e:#}"));
                return None;
            }
        };
        // SAFETY: wasmtime runs this file's native code as is. The file is
        // one this engine serialized, or its compile worker wrote, and stored
        // (the directory belongs to the shim's user and is closed to
        // everyone else, see `open`), its SHA-256 just matched the digest
        // recorded when it was stored, and the key's fingerprint covers the
        // engine's compilation settings (wasmtime checks them again while
        // loading).
        match unsafe { deserialize(engine, &artifact, kind) } {
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

    /// The largest artifact kept.
    fn max_artifact(&self) -> u64 {
        self.max_bytes / ARTIFACT_SHARE
    }

    /// A new empty temporary file for a compile worker's output.
    pub(crate) fn temp_file(&self) -> Result<TempFile> {
        let path = self.dir.join(format!(
            ".out.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot make a file for the compile worker's output in {} (check that the disk has room)",
                    self.dir.display()
                )
            })?;
        Ok(TempFile { file, path })
    }

    /// Counts evictions and the directory's size into `metrics` from now on,
    /// starting from the size of the artifacts there now (a listing).
    pub(crate) fn counted(mut self, metrics: Option<EngineMetrics>) -> DiskCache {
        if let Some(metrics) = &metrics {
            let total: u64 = fs::read_dir(&self.dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
                        .filter_map(|e| e.metadata().ok())
                        .map(|meta| meta.len())
                        .sum()
                })
                .unwrap_or(0);
            metrics.evicted(0, total);
        }
        self.metrics = metrics;
        self
    }

    /// Stores what a compile worker wrote into `temp` (it exited 0) as the
    /// code of `key`, if it is not larger than a quarter of the cap, and
    /// loads it. A larger one is loaded and removed: the guest runs, and the
    /// next shim compiles it again.
    pub(crate) fn adopt(&self, engine: &Engine, key: &Key, temp: TempFile) -> Result<Code> {
        let size = temp.file.metadata()?.len();
        let kind = Engine::detect_precompiled_file(&temp.path)
            .map_err(anyhow::Error::from)
            .and_then(artifact_kind);
        let kind = match kind {
            Ok(kind) => kind,
            Err(e) => {
                temp.remove();
                return Err(e);
            }
        };
        let hex = key.hex();
        let kept = if size > self.max_artifact() {
            log::info!(
                "compiled-code cache: not keeping the {size} bytes of {hex}, more than a quarter of the cache's {} bytes",
                self.max_bytes
            );
            None
        } else {
            match self.keep(&hex, &temp, size) {
                Ok(path) => Some(path),
                Err(e) => {
                    log::warn!(
                        "compiled-code cache: cannot store an artifact in {}: {e}; the guest is compiled again in the next shim (check that the disk has room)",
                        self.dir.display()
                    );
                    None
                }
            }
        };
        let path = kept.clone().unwrap_or_else(|| temp.path.clone());
        // SAFETY: the file was created (O_EXCL, 0600) by this process in its
        // private cache directory and handed only to a compile worker it
        // started, which exited 0 after writing it.
        let code = unsafe { deserialize(engine, &path, kind) }
            .map_err(|e| anyhow::anyhow!("wasmtime refused it: {e:#}"));
        match (&kept, &code) {
            // Mapped already: the file can go.
            (None, _) => temp.remove(),
            (Some(_), Err(_)) => self.discard(&hex, &path, "wasmtime cannot load it"),
            (Some(_), Ok(_)) => self.evict(key),
        }
        code
    }

    /// Makes `temp` (of `size` bytes) the artifact of `hex`: synced, renamed
    /// into place, its digest recorded.
    fn keep(&self, hex: &str, temp: &TempFile, size: u64) -> io::Result<PathBuf> {
        temp.file.sync_all()?;
        let digest = hash_file(&temp.path)?;
        let artifact = self.path(hex, "cwasm");
        fs::rename(&temp.path, &artifact)?;
        let record = format!("{digest} {size}\n");
        let recorded = self
            .write_atomically(&self.path(hex, "sha256"), record.as_bytes())
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if let Err(e) = recorded {
            // Back where the caller loads an unkept artifact from.
            let _ = fs::rename(&artifact, &temp.path);
            return Err(e);
        }
        Ok(artifact)
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

    /// Stores `artifact` as the code of `key`, then its digest; false (not
    /// stored) if it is larger than a quarter of the cap.
    pub(crate) fn store(&self, key: &Key, artifact: &[u8]) -> io::Result<bool> {
        if artifact.len() as u64 > self.max_artifact() {
            log::info!(
                "compiled-code cache: not keeping the {} bytes of {}, more than a quarter of the cache's {} bytes",
                artifact.len(),
                key.hex(),
                self.max_bytes
            );
            return Ok(false);
        }
        let hex = key.hex();
        let digest = self::hex(&Sha256::digest(artifact));
        self.write_atomically(&self.path(&hex, "cwasm"), artifact)?;
        let record = format!("{digest} {}\n", artifact.len());
        self.write_atomically(&self.path(&hex, "sha256"), record.as_bytes())?;
        // Makes the renames durable.
        File::open(&self.dir)?.sync_all()?;
        Ok(true)
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
    pub(crate) fn evict(&self, keep: &Key) {
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
        let mut evicted = 0;
        if total > self.max_bytes {
            candidates.sort();
        } else {
            candidates.clear();
        }
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
            evicted += 1;
            log::info!(
                "compiled-code cache: evicted {hex} ({size} bytes) to stay under {} bytes",
                self.max_bytes
            );
        }
        if let Some(metrics) = &self.metrics {
            metrics.evicted(evicted, total);
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
    fn one_artifact_never_evicts_more_than_a_quarter_of_the_cache() {
        let Ok(tmp) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let Ok(disk) = DiskCache::open(&tmp.path().join("cache"), 4000) else {
            panic!("open")
        };
        let stored = |i: u8, size: usize| disk.store(&Key([i; 32]), &vec![i; size]);
        let present = |i: u8| disk.path(&Key([i; 32]).hex(), "cwasm").exists();
        for i in 0..8 {
            assert!(matches!(stored(i, 500), Ok(true)));
            disk.evict(&Key([i; 32]));
        }
        // Larger than a quarter of the cap: used, not kept, nothing evicted.
        assert!(matches!(stored(100, 1001), Ok(false)));
        assert!(!present(100));
        assert!((0..8).all(present));
        // A quarter: kept, and only the two oldest go to make room.
        assert!(matches!(stored(101, 1000), Ok(true)));
        disk.evict(&Key([101; 32]));
        assert!(present(101));
        assert_eq!((0..8).filter(|&i| present(i)).count(), 6);
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
