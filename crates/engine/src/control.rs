//! How a running guest is told to end, and how its run ended: the state a
//! guest's thread shares with its handles ([`Control`]), and the mapping of
//! a guest's result to [`Ended`].
//!
//! A store yields to its runtime at every epoch tick ([`yield_on_epoch`]);
//! that is where a kill recorded in [`Control`] is noticed, whether the guest
//! is computing or waiting in a WASI call.
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use wasmtime::{Store, Trap, WasmBacktrace};
use wasmtime_wasi::I32Exit;

use crate::stdio::GuestStdin;

/// State shared by a running guest and its handles.
pub(crate) struct Control {
    /// The first terminating signal received, 0 if none; a later SIGKILL
    /// replaces a SIGTERM or SIGINT (see [`Control::deliver`]).
    signal: AtomicI32,
    kill: Notify,
    /// Bytes of linear memory, kept by the store's limiter (for an HTTP
    /// server, by the limiters of all its live request stores).
    pub(crate) memory: Arc<AtomicU64>,
    /// Set by the limiter when the memory limit refused a growth.
    pub(crate) limit_hit: Arc<AtomicBool>,
    /// Linux thread id of the guest's thread, 0 until it runs.
    pub(crate) thread_id: AtomicI32,
    pub(crate) stdin: GuestStdin,
}

impl Control {
    /// The control of a guest not yet signalled, reading from `stdin`.
    pub(crate) fn new(stdin: GuestStdin) -> Control {
        Control {
            signal: AtomicI32::new(0),
            kill: Notify::new(),
            memory: Arc::new(AtomicU64::new(0)),
            limit_hit: Arc::new(AtomicBool::new(false)),
            thread_id: AtomicI32::new(0),
            stdin,
        }
    }

    /// Records the terminating `signal` and wakes the guest's runtime. Only
    /// the first signal counts, except that SIGKILL replaces an earlier one.
    pub(crate) fn deliver(&self, signal: i32) {
        let sigkill = nix::sys::signal::Signal::SIGKILL as i32;
        let recorded = self
            .signal
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
                (current == 0 || (signal == sigkill && current != sigkill)).then_some(signal)
            });
        if recorded.is_ok() {
            // Stores a permit if the guest is not waiting yet, so an early kill is not lost.
            self.kill.notify_one();
        }
    }

    /// Whether a terminating signal was delivered.
    pub(crate) fn signalled(&self) -> bool {
        self.signal.load(Ordering::SeqCst) != 0
    }

    /// Resolves with the signal once a terminating signal was received.
    pub(crate) async fn killed(&self) -> i32 {
        self.killed_by(|_| true).await
    }

    /// Resolves with the signal once a terminating signal for which `which`
    /// holds was received (e.g. a SIGKILL after a SIGTERM).
    pub(crate) async fn killed_by(&self, which: impl Fn(i32) -> bool) -> i32 {
        loop {
            let signal = self.signal.load(Ordering::SeqCst);
            if signal != 0 && which(signal) {
                return signal;
            }
            self.kill.notified().await;
        }
    }
}

/// How the guest's run ended, before it is turned into an exit code.
pub(crate) enum Ended {
    Returned(u32),
    Killed(i32),
    /// Trap or host error; the message for the container's stderr.
    Failed(String),
}

/// Makes the store yield to its runtime at every epoch tick, so other
/// futures (a kill, other requests) run while it computes.
pub(crate) fn yield_on_epoch<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
}

/// Maps a guest error to how it ended: an exit request or a failure.
pub(crate) fn ended_by(e: wasmtime::Error) -> Ended {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        // Like a process: only the low 8 bits of an exit status survive.
        return Ended::Returned((exit.0 & 0xff) as u32);
    }
    // `Trap` displays as "wasm trap: <what>".
    let mut message = match (e.downcast_ref::<Trap>(), e.downcast_ref::<WasmBacktrace>()) {
        (Some(trap), _) => trap.to_string(),
        // The backtrace is the outermost context; say what failed first.
        (None, Some(_)) => format!("wasm error: {}", e.root_cause()),
        (None, None) => format!("wasm error: {e:#}"),
    };
    if let Some(bt) = e.downcast_ref::<WasmBacktrace>() {
        let bt = bt.to_string();
        message.push('\n');
        message.push_str(bt.strip_prefix("error while executing at ").unwrap_or(&bt));
    }
    Ended::Failed(message)
}
