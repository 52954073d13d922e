//! The one place this process waits for its children.
//!
//! A native container's init process is started by `runc create`, which then
//! exits: the init is re-parented to this process, a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`), and its exit status is ours to collect. So are
//! those of every process left behind in a container that ended. One loop
//! reaps any child (`waitpid(-1)`) when SIGCHLD arrives and hands each exit
//! to whoever registered its pid: the runc command the shim ran
//! ([`run`]), or the container whose init it is ([`watch`]). The engine's
//! compile workers are the one exception: the engine waits for them
//! itself, and this loop leaves their exits alone
//! ([`wasishim_engine::is_compile_worker`]). Nothing else in the server may
//! wait for a child, or it would steal these exits; an exit nobody
//! registered yet is kept for a later [`watch`].

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};

/// How a child ended: its exit code, or 128 + the signal that killed it.
pub type ExitCode = u32;

type Callback = Box<dyn FnOnce(ExitCode) + Send>;

/// Exits of children no one registered (yet) kept at most: processes left
/// behind in containers are re-parented here and never claimed.
const UNCLAIMED_KEPT: usize = 1024;

#[derive(Default)]
struct Registry {
    waiting: HashMap<i32, Callback>,
    unclaimed: HashMap<i32, ExitCode>,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
static STARTED: OnceLock<()> = OnceLock::new();

fn registry() -> &'static Mutex<Registry> {
    REGISTRY.get_or_init(Mutex::default)
}

/// Makes this process the child subreaper and starts the reaping loop on
/// the current tokio runtime. Idempotent.
pub fn start() -> Result<()> {
    if STARTED.get().is_some() {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments changes only this process's flag.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("cannot make the shim a child subreaper (prctl)");
    }
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .context("cannot watch SIGCHLD")?;
    let _ = STARTED.set(());
    tokio::spawn(async move {
        // A tick as well as the signal: a SIGCHLD that arrives while
        // `reap_all` runs is merged with the one being handled.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tick.tick() => {}
            }
            reap_all();
        }
    });
    Ok(())
}

/// Collects every child that has ended and dispatches its exit. The
/// registry stays locked while children are collected, so [`signal`] never
/// targets a pid that was freed (and may be reused) but not yet dispatched;
/// the callbacks run after.
fn reap_all() {
    let mut ended: Vec<(Callback, ExitCode)> = Vec::new();
    {
        let Ok(mut registry) = registry().lock() else {
            return;
        };
        // Looked at first, collected only if it is ours: a compile worker's
        // exit belongs to the engine, which waits for it.
        while let Ok(WaitStatus::Exited(next, _) | WaitStatus::Signaled(next, _, _)) = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ) {
            if wasishim_engine::is_compile_worker(next.as_raw()) {
                // Collected by the engine soon; the others next time.
                break;
            }
            let (pid, code) = match waitpid(next, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code as u32 & 0xff),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid.as_raw(), 128 + signal as u32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            match registry.waiting.remove(&pid) {
                Some(callback) => ended.push((callback, code)),
                None => {
                    if registry.unclaimed.len() >= UNCLAIMED_KEPT {
                        registry.unclaimed.clear();
                    }
                    registry.unclaimed.insert(pid, code);
                }
            }
        }
    }
    for (callback, code) in ended {
        callback(code);
    }
}

/// Sends `signal` to watched child `pid` unless it has already ended (then
/// nothing happens). Not yet collected, its pid cannot have been reused.
pub fn signal(pid: i32, signal: u32) -> std::io::Result<()> {
    let Ok(registry) = registry().lock() else {
        return Ok(());
    };
    if !registry.waiting.contains_key(&pid) {
        return Ok(());
    }
    // SAFETY: kill(2) with integer arguments.
    if unsafe { libc::kill(pid, signal as i32) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Calls `on_exit` once, when child `pid` ends (at once if it already has).
pub fn watch(pid: i32, on_exit: impl FnOnce(ExitCode) + Send + 'static) {
    let ended = {
        let Ok(mut registry) = registry().lock() else {
            return;
        };
        match registry.unclaimed.remove(&pid) {
            Some(code) => code,
            None => {
                registry.waiting.insert(pid, Box::new(on_exit));
                return;
            }
        }
    };
    on_exit(ended);
}

/// How a command ended and what it wrote (when captured).
pub struct Output {
    pub code: ExitCode,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `command` to its end, its exit collected by the reaping loop.
/// Blocking. stdout and stderr are captured unless the command sets them.
pub fn run(command: &mut Command, capture: bool) -> Result<Output> {
    if capture {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let (tx, rx) = mpsc::channel();
    let mut child: Child = command.spawn()?;
    watch(child.id() as i32, move |code| {
        let _ = tx.send(code);
    });
    let stderr = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut stderr) = stderr {
            let _ = std::io::Read::read_to_end(&mut stderr, &mut bytes);
        }
        bytes
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        // Read to its end so the command never blocks on a full pipe.
        let _ = std::io::Read::read_to_end(&mut out, &mut stdout);
    }
    let stderr = stderr_reader.join().unwrap_or_default();
    // Never `child.wait()`: every exit goes through `reap_all`, which this
    // thread runs too, so a caller blocking the runtime's thread (where the
    // SIGCHLD loop runs) still gets its command's exit.
    let code = loop {
        match rx.recv_timeout(std::time::Duration::from_millis(2)) {
            Ok(code) => break code,
            Err(mpsc::RecvTimeoutError::Timeout) => reap_all(),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("lost the exit of {command:?}")
            }
        }
    };
    Ok(Output {
        code,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_reach_their_waiters() {
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo oops >&2; exit 3"]),
            true,
        )
        .unwrap();
        assert_eq!(out.code, 3);
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"oops\n");
        let out = run(Command::new("sh").args(["-c", "kill -9 $$"]), true).unwrap();
        assert_eq!(out.code, 137);
    }
}
