//! What finds a guest's compiled code: the engine's fingerprint, the key of
//! a guest's code, and a file's identity (see cache.rs for how they are used).
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

/// The wasmtime the workspace pins (`wasmtime = "=48.0.8"`); a unit test
/// checks the two agree. wasmtime's own compatibility hash covers its version
/// too; this keeps the key honest should that ever change.
const WASMTIME_VERSION: &str = "48.0.8";
/// Changes whenever the layout of the cache directory does.
const FORMAT: &str = "wasishim-cache-1";

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

/// Identifies one guest's code for one engine fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key(pub(crate) [u8; 32]);

impl Key {
    pub(crate) fn hex(&self) -> String {
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

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
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
            "update WASMTIME_VERSION in cache_key.rs to the wasmtime the workspace pins"
        );
    }
}
