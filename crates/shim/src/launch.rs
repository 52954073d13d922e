//! The `start` subcommand: find or launch the shim server for a container and
//! tell containerd its address.
//!
//! Which server a container joins is the hosting's decision
//! ([`Runtime::socket_address`]); binding, reusing and locking the socket are
//! [`crate::socket`]'s. Here: the steps of `start` in order, and launching
//! the detached server.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use containerd_shim::Flags;
use wasishim_engine::Bundle;

use crate::hosting::Runtime;
use crate::negotiation::{caller_reply_form, start_reply};
use crate::socket::{self, LISTENER_FD};

/// Runs `start` in `bundle` and returns what to print for containerd.
pub fn start(runtime: Runtime, flags: &Flags, bundle: &Path) -> Result<String> {
    let address = runtime.socket_address(flags, grouping_id(bundle).as_deref());
    let socket_path = socket::socket_path(&address).to_string();

    let _lock = socket::lock_socket_dir(&socket_path)?;
    if let Some(listener) = socket::bind_or_reuse(&socket_path)? {
        let workdir = runtime.hosting.server_workdir(bundle);
        spawn_server(flags, workdir, &address, &listener)
            .inspect_err(|_| socket::remove_socket(&address))?;
    } else {
        log::info!("container {} joins the shim at {address}", flags.id);
    }
    std::fs::write(bundle.join("address"), &address)
        .with_context(|| format!("cannot write the address file in {}", bundle.display()))?;
    Ok(start_reply(&address, caller_reply_form()))
}

/// The CRI sandbox id of the container in `bundle`, if it belongs to a pod.
/// An unreadable bundle groups the container alone; its create reports why.
fn grouping_id(bundle: &Path) -> Option<String> {
    let bundle = Bundle::load(bundle).ok()?;
    bundle.sandbox_id().map(str::to_string)
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
