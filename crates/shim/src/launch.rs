//! The `start` subcommand: find or launch the shim server for a container and
//! tell containerd its address.
//!
//! Per-pod: containers that carry the same CRI sandbox id share one server
//! (one process per pod); any other container gets its own. Per-node: every
//! container of a containerd instance shares one server, whatever its
//! namespace; the socket name includes the binary's identity, so a new
//! binary never joins a server of an older one (see [`node_identity`]).
//!
//! The socket is bound here and handed to the server as descriptor 3, so
//! containerd can connect the moment `start` returns. Starts are serialized by
//! a lock on the socket directory, so concurrent first starts launch exactly
//! one server, also when a dead server left its socket behind.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use containerd_shim::Flags;

use crate::negotiation::{caller_reply_form, start_reply};
use crate::server::LISTENER_FD;
use crate::{Hosting, Runtime, SANDBOX_ID_ANNOTATION};

/// Runs `start` in `bundle` and returns what to print for containerd.
pub fn start(runtime: Runtime, flags: &Flags, bundle: &Path) -> Result<String> {
    let address = match runtime.hosting {
        Hosting::PerPod => {
            let grouping = grouping_id(bundle).unwrap_or_else(|| flags.id.clone());
            containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping)
        }
        // One server for all namespaces of this containerd.
        Hosting::PerNode => {
            containerd_shim::socket_address(&flags.address, runtime.binary, &node_identity())
        }
    };
    let socket_path = address.trim_start_matches("unix://").to_string();

    let _lock = lock_socket_dir(&socket_path)?;
    if let Some(listener) = bind_or_reuse(&socket_path)? {
        let workdir = match runtime.hosting {
            Hosting::PerPod => bundle,
            // The node server outlives this bundle.
            Hosting::PerNode => Path::new("/"),
        };
        spawn_server(flags, workdir, &address, &listener)
            .inspect_err(|_| crate::server::remove_socket(&address))?;
    } else {
        log::info!("container {} joins the shim at {address}", flags.id);
    }
    std::fs::write(bundle.join("address"), &address)
        .with_context(|| format!("cannot write the address file in {}", bundle.display()))?;
    Ok(start_reply(&address, caller_reply_form()))
}

/// Identifies this build of the binary: its version and the executable's
/// modification time, so that replacing the binary (an upgrade) makes the
/// next start launch a new node server instead of reusing the old one.
pub fn node_identity() -> String {
    let modified = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("node-{}-{modified}", env!("CARGO_PKG_VERSION"))
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

/// The CRI sandbox id of the container in `bundle`, if it belongs to a pod.
fn grouping_id(bundle: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_str(&text).ok()?;
    spec.get("annotations")?
        .get(SANDBOX_ID_ANNOTATION)?
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// Binds the socket, or returns `None` when a live server already listens on it.
fn bind_or_reuse(socket_path: &str) -> Result<Option<UnixListener>> {
    if let Some(dir) = Path::new(socket_path).parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    match UnixListener::bind(socket_path) {
        Ok(listener) => Ok(Some(listener)),
        Err(err) if err.kind() == ErrorKind::AddrInUse => {
            if UnixStream::connect(socket_path).is_ok() {
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

/// Launches this binary as the detached server, in its own session, with the
/// listener as descriptor 3 and no stdio (containerd reads `start`'s stdout to
/// its end, so the server must not hold it).
fn spawn_server(
    flags: &Flags,
    workdir: &Path,
    address: &str,
    listener: &UnixListener,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the shim binary")?;
    let mut command = Command::new(exe);
    command
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .args(["-namespace", &flags.namespace])
        .args(["-id", &flags.id])
        .args(["-address", &flags.address])
        .args(["-socket", address]);
    if !flags.publish_binary.is_empty() {
        command.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        command.arg("-debug");
    }
    let fd = listener.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let moved = if fd == LISTENER_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, LISTENER_FD)
            };
            if moved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().context("cannot launch the shim server")?;
    log::info!("launched shim server pid {} on {address}", child.id());
    Ok(())
}
