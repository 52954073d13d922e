//! The OS seam of the compile worker: starting the process with its limits,
//! collecting its stderr, and killing it at the wall-clock timeout.
//!
//! [`WorkerProcess`] is all the cache sees of a worker; [`Spawner`] is the
//! real one, a fake in the unit tests of the decisions around it.
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::COMPILE_WORKER_ARG;

/// What one worker process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerLimits {
    /// `RLIMIT_AS`.
    pub(crate) memory_bytes: u64,
    /// `RLIMIT_CPU` (soft; the hard limit, SIGKILL, is 2 s later).
    pub(crate) cpu_seconds: u64,
    /// Wall-clock time until the worker is killed.
    pub(crate) timeout: Duration,
    /// `RLIMIT_FSIZE`: the artifact's size.
    pub(crate) output_bytes: u64,
    /// Compiler threads (`RAYON_NUM_THREADS`).
    pub(crate) threads: usize,
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
    /// Still running at the timeout; it was killed.
    TimedOut,
}

/// A finished worker: how it ended, and the start of what it wrote on
/// stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) exit: Exit,
    pub(crate) stderr: String,
}

/// Runs one compilation: `input` (the guest's bytes, at offset 0) becomes
/// the worker's stdin, `output` (an empty file) its stdout.
pub(crate) trait WorkerProcess: Send + Sync {
    /// Blocks until the worker ended or was killed at `limits.timeout`.
    ///
    /// # Errors
    ///
    /// Only if the process cannot be started or waited for.
    fn run(&self, input: &File, output: &File, limits: &WorkerLimits) -> io::Result<Outcome>;
}

/// The bytes of a worker's stderr kept for its error message.
const STDERR_KEPT: usize = 16 << 10;
/// Descriptors a worker may have open: stdin, stdout, stderr and a few the
/// C library might want.
const WORKER_FILES: u64 = 16;
/// A worker's `argv[0]`.
pub(crate) const WORKER_NAME: &str = "wasishim-compile-worker";
/// The user and group a worker runs as when the shim is root: `nobody`.
const NOBODY: u32 = 65534;

/// Starts `program COMPILE_WORKER_ARG` as the worker.
pub(crate) struct Spawner {
    pub(crate) program: PathBuf,
}

impl WorkerProcess for Spawner {
    fn run(&self, input: &File, output: &File, limits: &WorkerLimits) -> io::Result<Outcome> {
        let mut command = Command::new(&self.program);
        command
            // What `ps` shows: the program is often /proc/self/exe.
            .arg0(WORKER_NAME)
            .arg(COMPILE_WORKER_ARG)
            .env_clear()
            .env("RAYON_NUM_THREADS", limits.threads.to_string())
            .stdin(Stdio::from(input.try_clone()?))
            .stdout(Stdio::from(output.try_clone()?))
            .stderr(Stdio::piped());
        let limits_now = *limits;
        let root = nix::unistd::geteuid().is_root();
        // SAFETY: the closure runs between fork and exec and makes only
        // system calls, which are async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(move || in_child(&limits_now, root));
        }
        let started = Instant::now();
        let mut child = {
            // Spawned and listed under one lock: a reaper that asks
            // `is_compile_worker` meanwhile waits for the answer.
            let mut workers = WORKERS.lock().unwrap_or_else(PoisonError::into_inner);
            let child = command.spawn()?;
            workers.insert(child.id() as i32);
            child
        };
        let _listed = Listed(child.id() as i32);
        let deadline = started + limits.timeout;
        let stderr = child.stderr.take();
        let (kept, timed_out) = match stderr {
            Some(stderr) => read_until(stderr, deadline),
            None => (Vec::new(), false),
        };
        let exit = if timed_out {
            None
        } else {
            wait_until(&mut child, deadline)?
        };
        let exit = match exit {
            Some(status) => exit_of(status),
            None => {
                // SIGKILL ends every thread of it; it made no other process.
                let _ = child.kill();
                child.wait()?;
                Exit::TimedOut
            }
        };
        Ok(Outcome {
            exit,
            stderr: String::from_utf8_lossy(&kept).into_owned(),
        })
    }
}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(-1),
    }
}

/// Reads `stderr` until its end (the worker exited or closed it) or
/// `deadline`, keeping the first [`STDERR_KEPT`] bytes. True if the
/// deadline came first.
fn read_until(mut stderr: std::process::ChildStderr, deadline: Instant) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (kept, true);
        }
        let ms = u16::try_from(left.as_millis().min(10_000)).unwrap_or(10_000);
        let mut fds = [PollFd::new(stderr.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return (kept, false),
        }
        match stderr.read(&mut buf) {
            Ok(0) => return (kept, false),
            Ok(n) => {
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (kept, false),
        }
    }
}

/// Compile workers this process started and waits for itself.
static WORKERS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Takes a worker off [`WORKERS`] once it was waited for (or given up).
struct Listed(i32);

impl Drop for Listed {
    fn drop(&mut self) {
        WORKERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// Whether `pid` is a compile worker of this process that its spawner will
/// wait for: a process-wide child reaper (the shim's, for runc's
/// processes) must leave its exit alone, or the compile fails with
/// `ECHILD`.
pub fn is_compile_worker(pid: i32) -> bool {
    WORKERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&pid)
}

/// Waits for the child until `deadline`; `None` if it still runs then. Its
/// stderr is closed, so it is exiting: the first checks are a millisecond
/// apart.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Sets a resource limit; soft and hard as given.
fn limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let value = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a plain system call with a pointer to a local.
    if unsafe { libc::setrlimit(resource, &value) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In the child, before exec: no descriptor but stdio survives exec, the
/// limits, `nobody` if root, and death with the thread that started it.
/// Only raw system calls: the child of a multithreaded process may not take
/// a lock the C library might hold.
fn in_child(limits: &WorkerLimits, root: bool) -> io::Result<()> {
    close_on_exec_from(3);
    limit(libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)?;
    limit(
        libc::RLIMIT_CPU,
        limits.cpu_seconds,
        limits.cpu_seconds.saturating_add(2),
    )?;
    limit(libc::RLIMIT_FSIZE, limits.output_bytes, limits.output_bytes)?;
    limit(libc::RLIMIT_CORE, 0, 0)?;
    limit(libc::RLIMIT_NOFILE, WORKER_FILES, WORKER_FILES)?;
    if root {
        // SAFETY: raw credential calls on this single-threaded child.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY) != 0
                || libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // After the credentials change, which clears it.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor from `first` on close-on-exec: the server holds
/// sockets (its ttrpc listener is inherited without that flag) a worker
/// must never see.
fn close_on_exec_from(first: u32) {
    // SAFETY: close_range only changes descriptor flags.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return;
    }
    // Kernels before 5.11: one by one, up to a bound a shim never reaches.
    for fd in first..65_536 {
        // SAFETY: fcntl on a descriptor number; EBADF for unused ones.
        unsafe { libc::fcntl(fd as i32, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}
