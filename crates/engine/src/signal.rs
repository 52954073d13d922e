//! What a signal sent to a container means for a wasm guest.
//!
//! A guest is not a process and has no signal handlers, so every signal acts
//! with its default disposition: terminating signals end the guest, the ones
//! ignored by default do nothing. Stopping is refused because a guest cannot
//! be frozen and resumed from outside yet.
use anyhow::{bail, Result};
use nix::sys::signal::Signal;

/// The effect of a signal on a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignalAction {
    /// End the guest; it exits with 128 + signal.
    Terminate,
    /// Nothing happens (signal 0, SIGCHLD, SIGWINCH, SIGURG, SIGCONT).
    Ignore,
}

/// Highest real-time signal number on Linux (`SIGRTMAX`).
const SIGRTMAX: i32 = 64;

/// Decides what `signal` does to a guest.
///
/// # Errors
///
/// Fails for stop signals (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) and for
/// numbers that are not Linux signals.
pub(crate) fn action(signal: i32) -> Result<SignalAction> {
    if signal == 0 {
        return Ok(SignalAction::Ignore);
    }
    if !(1..=SIGRTMAX).contains(&signal) {
        bail!("{signal} is not a signal number: use 1 to {SIGRTMAX}, e.g. 15 (SIGTERM) or 9 (SIGKILL)");
    }
    // Real-time signals (and any number nix has no name for) terminate by default.
    let Ok(named) = Signal::try_from(signal) else {
        return Ok(SignalAction::Terminate);
    };
    match named {
        Signal::SIGCHLD | Signal::SIGWINCH | Signal::SIGURG | Signal::SIGCONT => {
            Ok(SignalAction::Ignore)
        }
        Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => bail!(
            "signal {} is not supported by wasishim: a wasm guest cannot be stopped, only ended (e.g. with SIGTERM)",
            named.as_str()
        ),
        _ => Ok(SignalAction::Terminate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminating_signals() {
        for sig in [1, 2, 3, 6, 9, 10, 12, 13, 14, 15, 34, 64] {
            assert_eq!(action(sig).ok(), Some(SignalAction::Terminate), "{sig}");
        }
    }

    #[test]
    fn ignored_signals() {
        for sig in [0, 17, 18, 23, 28] {
            assert_eq!(action(sig).ok(), Some(SignalAction::Ignore), "{sig}");
        }
    }

    #[test]
    fn stop_and_bogus_signals_are_errors() {
        let e = action(19).map(|_| ()).unwrap_err().to_string();
        assert!(e.starts_with("signal SIGSTOP is not supported"), "{e}");
        for sig in [20, 21, 22, -1, 65] {
            assert!(action(sig).is_err(), "{sig}");
        }
    }
}
