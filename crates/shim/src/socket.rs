//! The server's unix socket: where it is, binding or reusing it, the lock
//! that serializes starts, and its removal.
//!
//! `start` binds the socket and hands it to the server as descriptor
//! [`LISTENER_FD`], so containerd can connect the moment `start` returns.
//! Starts are serialized by a lock on the socket directory, so concurrent
//! first starts launch exactly one server, also when a dead server left its
//! socket behind; an idle per-node server takes the same lock before it
//! removes its socket and exits.

use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// File descriptor on which `start` hands the bound listener to the server.
pub const LISTENER_FD: i32 = 3;

/// The socket file behind `address` (`unix://path`).
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Holds an exclusive lock on the socket's directory until dropped.
pub fn lock_socket_dir(socket_path: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = Path::new(socket_path)
        .parent()
        .context("shim socket path has no directory")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    let handle = std::fs::File::open(dir)
        .with_context(|| format!("cannot open socket directory {}", dir.display()))?;
    nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, err)| err)
        .with_context(|| format!("cannot lock socket directory {}", dir.display()))
}

/// Binds the socket, or returns `None` when a live server already listens on
/// it (and marks the socket as just reused, see [`reused_within`]).
pub fn bind_or_reuse(socket_path: &str) -> Result<Option<UnixListener>> {
    if let Some(dir) = Path::new(socket_path).parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    match UnixListener::bind(socket_path) {
        Ok(listener) => Ok(Some(listener)),
        Err(err) if err.kind() == ErrorKind::AddrInUse => {
            if is_live(socket_path) {
                mark_reused(socket_path);
                return Ok(None);
            }
            // A socket file left by a server that died: replace it.
            std::fs::remove_file(socket_path)
                .with_context(|| format!("cannot remove stale shim socket {socket_path}"))?;
            UnixListener::bind(socket_path)
                .map(Some)
                .with_context(|| format!("cannot bind shim socket {socket_path}"))
        }
        Err(err) => Err(err).with_context(|| format!("cannot bind shim socket {socket_path}")),
    }
}

/// Whether a server listens on the socket.
pub fn is_live(socket_path: &str) -> bool {
    UnixStream::connect(socket_path).is_ok()
}

/// Sets the socket file's times to now. An idle node server reads them,
/// under the same lock, to tell that a container was just sent its way and
/// is about to be created, so it must not exit yet.
fn mark_reused(socket_path: &str) {
    let Ok(path) = std::ffi::CString::new(socket_path) else {
        return;
    };
    // SAFETY: `path` is a valid C string; null times mean "now".
    unsafe {
        libc::utimensat(libc::AT_FDCWD, path.as_ptr(), std::ptr::null(), 0);
    }
}

/// Whether a `start` sent a container to the server on this socket less than
/// `ago` ago.
pub fn reused_within(socket_path: &str, ago: Duration) -> bool {
    std::fs::metadata(socket_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| at.elapsed().ok())
        .is_some_and(|elapsed| elapsed < ago)
}

/// Removes the socket file behind `address` (`unix://path`), if it is one.
pub fn remove_socket(address: &str) {
    let path = Path::new(socket_path(address));
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != ErrorKind::NotFound {
            log::warn!("cannot remove shim socket {}: {err}", path.display());
        }
    }
}
