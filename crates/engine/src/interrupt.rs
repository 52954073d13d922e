//! The guest's runtime, and interrupting its helper threads once the guest
//! ended.
//!
//! A guest's asynchronous WASI calls (sockets, sleeps, stdio) are futures on
//! its own thread's runtime and end when a kill drops them. File operations
//! are not: wasmtime-wasi runs them on the runtime's blocking pool, and a
//! pool thread can be stuck in a system call indefinitely: `open` of a FIFO
//! nobody opens from the other side, a read of a file on a stuck mount.
//! Dropping the guest's future abandons such a thread, which goes on holding
//! what its call holds (a descriptor of the container's rootfs), its place
//! in the container's cgroup and network namespace.
//!
//! So every helper thread of a guest's runtime is known by its Linux thread
//! id while it lives, and once the guest ended, each one still alive is sent
//! [`interrupt_signal`], whose handler does nothing and is installed
//! without `SA_RESTART`: the blocked call fails with `EINTR`, the (already
//! dropped) operation returns, and the thread, its pool shut down, exits.
//! Calls that retry on `EINTR` by themselves (glibc's name resolver, until
//! its resolv.conf timeout) keep their thread until they return; a
//! background thread goes on interrupting them meanwhile and logs them.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::libc;
use tokio::runtime::Runtime;

/// How long the guest's thread interrupts its helpers before it reports
/// the exit: they normally end within microseconds of the first signal.
const INTERRUPT_WAIT: Duration = Duration::from_millis(10);
/// How often stuck helpers are interrupted again (a signal that arrives just
/// before a thread enters its call is missed).
const INTERRUPT_EVERY: Duration = Duration::from_micros(500);
/// How often the background thread interrupts helpers left after [`INTERRUPT_WAIT`].
const LINGER_EVERY: Duration = Duration::from_millis(20);
/// After this, the background thread gives up on a helper (and says so):
/// longer than glibc's resolver takes with its default settings.
const LINGER_LIMIT: Duration = Duration::from_secs(120);

/// The signal sent to a guest's helper threads to interrupt a blocking
/// system call: `SIGRTMAX - 2`, which nothing else in the shim uses.
pub fn interrupt_signal() -> i32 {
    libc::SIGRTMAX() - 2
}

/// Installs the no-op, non-restarting handler of [`interrupt_signal`] once
/// per process; false if another handler was there already (then helpers
/// are not interrupted: their calls would not see `EINTR` reliably).
fn handler_installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        extern "C" fn ignore(_: libc::c_int) {}
        // SAFETY: sigaction with a zeroed struct, a valid handler address
        // and an empty mask; `old` is written by the call.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(interrupt_signal(), std::ptr::null(), &mut old) != 0 {
                return false;
            }
            if old.sa_sigaction != libc::SIG_DFL {
                log::warn!(
                    "signal {} already has a handler: blocked file operations of killed guests cannot be interrupted",
                    interrupt_signal()
                );
                return false;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
            // No SA_RESTART: that is the point.
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(interrupt_signal(), &action, std::ptr::null_mut()) == 0
        }
    })
}

/// Thread ids of the live helper threads of one guest's runtime.
#[derive(Clone, Default)]
pub(crate) struct Helpers {
    live: Arc<Mutex<BTreeSet<i32>>>,
}

impl Helpers {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        // Plain ids: still consistent after a panic elsewhere.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signals every live helper; returns how many there were. The lock is
    /// held meanwhile, and a helper leaves the set before it exits, so a
    /// signalled id is never one the kernel gave to another thread since.
    fn signal_all(&self) -> usize {
        let live = self.lock();
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        for &tid in live.iter() {
            // SAFETY: tgkill with our own pid and a live thread of it.
            unsafe {
                libc::syscall(libc::SYS_tgkill, pid, tid, interrupt_signal());
            }
        }
        live.len()
    }

    /// After the guest's runtime was shut down: interrupts its helper
    /// threads until they are gone, at most [`INTERRUPT_WAIT`] here, then
    /// from a background thread (see the module documentation).
    pub(crate) fn interrupt(self, name: &str) {
        if !handler_installed() {
            return;
        }
        let deadline = Instant::now() + INTERRUPT_WAIT;
        while self.signal_all() > 0 {
            if Instant::now() >= deadline {
                self.linger(name);
                return;
            }
            std::thread::sleep(INTERRUPT_EVERY);
        }
    }

    /// Interrupts the helpers left from a background thread until they are
    /// gone or [`LINGER_LIMIT`] passed.
    fn linger(self, name: &str) {
        let owned = name.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("reap-{name}"))
            .spawn(move || {
                let name = owned;
                let started = Instant::now();
                while self.signal_all() > 0 {
                    if started.elapsed() >= LINGER_LIMIT {
                        let left: Vec<i32> = self.lock().iter().copied().collect();
                        log::warn!(
                            "guest {name}: helper threads {left:?} are still blocked in a system call {LINGER_LIMIT:?} after the guest ended"
                        );
                        return;
                    }
                    std::thread::sleep(LINGER_EVERY);
                }
                log::debug!(
                    "guest {name}: helper threads ended {:?} after the guest",
                    started.elapsed()
                );
            });
        if let Err(e) = spawned {
            log::warn!(
                "guest {name}: cannot start a thread to interrupt its blocked helper threads: {e}"
            );
        }
    }
}

/// Builds a guest's single-threaded runtime: its helper threads (the
/// blocking pool) run `hook` first (e.g. `Workload::on_thread_start`'s) and
/// are kept in the returned [`Helpers`] while they live.
///
/// # Errors
///
/// Fails if the runtime's I/O driver cannot be created (out of descriptors).
pub(crate) fn guest_runtime(
    hook: Option<impl Fn() + Send + Sync + 'static>,
) -> std::io::Result<(Runtime, Helpers)> {
    let helpers = Helpers::default();
    let (started, stopped) = (helpers.clone(), helpers.clone());
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    builder.on_thread_start(move || {
        unblock_interrupt_signal();
        started.lock().insert(nix::unistd::gettid().as_raw());
        // Threads for blocking I/O are started from the guest's thread, so
        // they also share its network namespace.
        if let Some(hook) = &hook {
            hook();
        }
    });
    builder.on_thread_stop(move || {
        stopped.lock().remove(&nix::unistd::gettid().as_raw());
    });
    Ok((builder.build()?, helpers))
}

/// A helper inherits the signal mask of whoever started the guest; the
/// interrupt must get through.
fn unblock_interrupt_signal() {
    // SAFETY: a local signal set, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, interrupt_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}
