//! Making containerd load the changed config. containerd reads its config
//! only at start (SIGHUP does not reload it), so it must restart; running
//! pods are not affected, their shims outlive containerd and are
//! reconnected.
//!
//! What wasishim does, in order:
//! - `--no-restart`: nothing; it prints the command to run.
//! - `--pid PID` / `--pid-file FILE` (a containerd not run by systemd):
//!   SIGTERM, then waits up to 30 s for it to exit. It does not start
//!   containerd again: whatever started it (a supervisor, an init script)
//!   owns its command line and environment, and starts it again.
//! - otherwise, under systemd: `systemctl restart UNIT` of the first active
//!   unit of the flavor (`containerd`, `k3s`/`k3s-agent`,
//!   `rke2-server`/`rke2-agent`, `snap.microk8s.daemon-containerd`). With
//!   `--host-root` (in a container), systemctl runs in the mount namespace
//!   of the host's PID 1, which needs `hostPID: true` and privileges.
//! - no systemd or no active unit: it prints what to do.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::flavor::{Flavor, Host};

/// How long a stopped containerd may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the user asked containerd to be restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// Print the instruction only.
    No,
    /// Stop this process.
    Pid(i32),
    /// Stop the process whose PID is in this file.
    PidFile(PathBuf),
    /// Restart the flavor's systemd unit, if any.
    Systemd,
}

/// Restarts (or stops, or explains how to restart) the containerd of
/// `flavor`; returns what was done, for the user.
pub fn restart(flavor: Flavor, host: &Host, how: &How) -> Result<String> {
    let unit = flavor.units()[0];
    let by_hand = format!(
        "restart containerd so it loads the change (`systemctl restart {unit}`, or however it \
         is run here; SIGHUP does not reload containerd's config)"
    );
    match how {
        How::No => Ok(format!("--no-restart: {by_hand}")),
        How::Pid(pid) => stop_pid(*pid),
        How::PidFile(file) => {
            let text = fs::read_to_string(file)
                .with_context(|| format!("reading --pid-file {}", file.display()))?;
            let pid = text.trim().parse().with_context(|| {
                format!(
                    "--pid-file {} holds {:?}, not a PID; pass --pid PID instead",
                    file.display(),
                    text.trim()
                )
            })?;
            stop_pid(pid)
        }
        How::Systemd => {
            if !host.path(Path::new("/run/systemd/system")).is_dir() {
                return Ok(format!("systemd does not run this host: {by_hand}"));
            }
            for unit in flavor.units() {
                let active = systemctl(host, &["is-active", "--quiet", unit])?;
                if !active.status.success() {
                    continue;
                }
                let out = systemctl(host, &["restart", unit])?;
                if !out.status.success() {
                    bail!(
                        "`systemctl restart {unit}` failed ({}): {}; see `journalctl -u {unit}` \
                         and restart it by hand",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                return Ok(format!(
                    "restarted {} (`systemctl restart {unit}`)",
                    flavor.name()
                ));
            }
            Ok(format!(
                "no active systemd unit of {} ({}): {by_hand}",
                flavor.name(),
                flavor.units().join(", ")
            ))
        }
    }
}

/// Runs systemctl on the host: directly, or in PID 1's mount namespace when
/// the host is mounted into this container.
fn systemctl(host: &Host, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("systemctl");
    cmd.args(args).env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    if host.is_mounted() {
        let ns = fs::File::open("/proc/1/ns/mnt").context(
            "opening /proc/1/ns/mnt to run systemctl on the host: the pod needs hostPID: true \
             and privileged: true",
        )?;
        use std::os::unix::process::CommandExt;
        // SAFETY: setns is a single system call, safe between fork and exec;
        // after it the host's systemctl is found through PATH by execvp.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(std::io::Error::from)
            });
        }
    }
    cmd.output()
        .context("running systemctl; restart containerd by hand, or pass --no-restart")
}

/// SIGTERM to `pid`, then waits for it to go.
fn stop_pid(pid: i32) -> Result<String> {
    let target = Pid::from_raw(pid);
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim();
    if comm.is_empty() {
        bail!("--pid {pid}: no such process; pass the PID of the running containerd");
    }
    if !comm.starts_with("containerd") && comm != "k3s-server" && comm != "k3s-agent" {
        bail!("--pid {pid} is {comm:?}, not containerd; pass the PID of containerd");
    }
    kill(target, Signal::SIGTERM)
        .with_context(|| format!("sending SIGTERM to containerd (pid {pid})"))?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while running(pid) {
        if Instant::now() > deadline {
            bail!(
                "containerd (pid {pid}) did not exit within {STOP_TIMEOUT:?} of SIGTERM; stop \
                 and start it by hand"
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(format!(
        "stopped containerd (pid {pid}) with SIGTERM; start it again (its supervisor will, if \
         it has one) so it loads the change"
    ))
}

/// Whether `pid` is alive (a zombie waiting for its parent counts as gone).
fn running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_restart_says_what_to_do() {
        let msg = restart(Flavor::K3s, &Host::new("/"), &How::No).unwrap();
        assert!(msg.contains("systemctl restart k3s"), "{msg}");
    }

    #[test]
    fn refuses_a_pid_that_is_not_containerd() {
        let me = std::process::id() as i32;
        let e = restart(Flavor::Containerd, &Host::new("/"), &How::Pid(me)).unwrap_err();
        assert!(e.to_string().contains("not containerd"), "{e}");
        let e = stop_pid(i32::MAX).unwrap_err();
        assert!(e.to_string().contains("no such process"), "{e}");
    }

    #[test]
    fn without_systemd_explains() {
        let dir = tempfile::tempdir().unwrap();
        let msg = restart(Flavor::Containerd, &Host::new(dir.path()), &How::Systemd).unwrap();
        assert!(msg.starts_with("systemd does not run this host"), "{msg}");
    }
}
