//! Putting files in place atomically (temporary file in the same
//! directory, fsync, rename), so containerd never reads a half-written
//! config and never execs a half-copied shim, and hashing them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The shims `wasishim install` copies.
pub const SHIMS: [&str; 2] = [
    "containerd-shim-wasmtime-v1",
    "containerd-shim-wasmtimed-v1",
];

/// Hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Replaces `path` with `bytes` (mode `mode`, or the old file's mode when it
/// exists and `mode` is None) in one rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let mode = mode
        .or_else(|| {
            fs::metadata(path)
                .ok()
                .map(|m| m.permissions().mode() & 0o7777)
        })
        .unwrap_or(0o644);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.wasishim-{}", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode given to open.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(explain(e, "writing", path));
    }
    Ok(())
}

/// Removes `path`; a missing file is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(explain(e, "removing", path)),
    }
}

/// Reads `path` as text, with an error that says what to do.
pub fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| explain(e, "reading", path))
}

/// Turns an I/O error into one saying what was done and what to do.
pub fn explain(e: io::Error, doing: &str, path: &Path) -> anyhow::Error {
    match e.kind() {
        io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "{doing} {}: permission denied; run wasishim as root (e.g. `sudo wasishim ...`)",
            path.display()
        ),
        io::ErrorKind::ReadOnlyFilesystem => anyhow::anyhow!(
            "{doing} {}: read-only file system; choose another --prefix, or mount it writable",
            path.display()
        ),
        _ => anyhow::anyhow!("{doing} {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_keeps_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"new", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let shim = dir.path().join("shim");
        write_atomic(&shim, b"\x7fELF", Some(0o755)).unwrap();
        assert_eq!(
            fs::metadata(&shim).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        remove(&shim).unwrap();
        remove(&shim).unwrap();
        let e = write_atomic(&dir.path().join("no/such/dir/x"), b"", None).unwrap_err();
        assert!(e.to_string().contains("writing"), "{e}");
    }
}
