//! The `start` subcommand: find or launch the shim server for a container and
//! tell containerd its address.
//!
//! Containers that carry the same CRI sandbox id share one server (one process
//! per pod); any other container gets its own. The socket is bound here and
//! handed to the server as descriptor 3, so containerd can connect the moment
//! `start` returns and two racing starts cannot both launch a server.

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
use crate::SANDBOX_ID_ANNOTATION;

/// Runs `start` in `bundle` and returns what to print for containerd.
pub fn start(flags: &Flags, bundle: &Path) -> Result<String> {
    let grouping = grouping_id(bundle).unwrap_or_else(|| flags.id.clone());
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping);
    let socket_path = address.trim_start_matches("unix://").to_string();

    if let Some(listener) = bind_or_reuse(&socket_path)? {
        spawn_server(flags, bundle, &address, &listener)
            .inspect_err(|_| crate::server::remove_socket(&address))?;
    } else {
        log::info!("container {} joins the shim at {address}", flags.id);
    }
    std::fs::write(bundle.join("address"), &address)
        .with_context(|| format!("cannot write the address file in {}", bundle.display()))?;
    Ok(start_reply(&address, caller_reply_form()))
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
    bundle: &Path,
    address: &str,
    listener: &UnixListener,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the shim binary")?;
    let mut command = Command::new(exe);
    command
        .current_dir(bundle)
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
