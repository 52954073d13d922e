//! What a finished compile worker means for the container: its artifact is
//! good, or an error that says which limit the guest went past and what to
//! do about it.
use nix::libc;

use super::process::{Exit, Outcome, WorkerLimits};
use super::{COMPILE_MEMORY_ENV, COMPILE_TIMEOUT_ENV};

// The worker's exit codes: the child sets them, this file reads them.
pub(crate) const USER_ERROR: i32 = 2;
pub(crate) const OUT_OF_MEMORY: i32 = 3;
pub(crate) const INTERNAL: i32 = 4;

/// A compilation that gave no artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// For the container's Create error.
    pub(crate) message: String,
    /// Whether the same guest would fail the same way again under the same
    /// limits (invalid, or past a limit), so that its retries need not hold
    /// a compile slot again: a worker killed from outside may do better
    /// next time.
    pub(crate) repeats: bool,
}

/// The last lines of the worker's stderr, for a message.
fn said(stderr: &str) -> String {
    let text = stderr.trim();
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    if tail.is_empty() {
        "it said nothing".to_string()
    } else {
        format!("it said: {}", tail.join(" / "))
    }
}

/// Whether the worker ran out of its address space: its own report, or
/// Rust's message before an abort.
fn out_of_memory(outcome: &Outcome) -> bool {
    match outcome.exit {
        Exit::Code(OUT_OF_MEMORY) => true,
        // An abort or a panic (Rust's exit code 101) that says so.
        Exit::Signal(libc::SIGABRT) | Exit::Code(101) => [
            "memory allocation of",
            "out of memory",
            "os error 12",
            "Cannot allocate memory",
        ]
        .iter()
        .any(|said| outcome.stderr.contains(said)),
        _ => false,
    }
}

/// Judges a finished worker of the entrypoint `shown` that ran under
/// `limits`.
pub(crate) fn verdict(
    outcome: &Outcome,
    limits: &WorkerLimits,
    shown: &str,
) -> Result<(), Failure> {
    let repeats = |message: String| Failure {
        message,
        repeats: true,
    };
    let once = |message: String| Failure {
        message,
        repeats: false,
    };
    if out_of_memory(outcome) {
        return Err(repeats(format!(
            "compiling entrypoint {shown} needed more than the {} MiB of memory one compilation may use ({COMPILE_MEMORY_ENV}): a module this large or complex needs a higher limit, or it is made to exhaust the compiler",
            limits.memory_bytes >> 20
        )));
    }
    match outcome.exit {
        Exit::Code(0) => Ok(()),
        Exit::Code(USER_ERROR) => Err(repeats(format!(
            "entrypoint {shown} {}",
            outcome.stderr.trim()
        ))),
        Exit::TimedOut | Exit::Signal(libc::SIGXCPU) => Err(repeats(format!(
            "compiling entrypoint {shown} took longer than {} s, the limit of one compilation ({COMPILE_TIMEOUT_ENV}; {} s of CPU time on {} core(s)): a module this large needs a higher limit, or it is made to exhaust the compiler",
            limits.timeout.as_secs(),
            limits.cpu_seconds,
            limits.threads
        ))),
        Exit::Signal(libc::SIGXFSZ) => Err(repeats(format!(
            "compiling entrypoint {shown} made more than {} MiB of native code, the most one compilation may write ({COMPILE_MEMORY_ENV})",
            limits.output_bytes >> 20
        ))),
        Exit::Code(INTERNAL) => Err(once(format!(
            "cannot compile entrypoint {shown}: the compile worker failed ({}): see the shim's log",
            said(&outcome.stderr)
        ))),
        Exit::Signal(libc::SIGKILL) => Err(once(format!(
            "cannot compile entrypoint {shown}: the compile worker was killed (SIGKILL) before the wall-clock limit: the node may be out of memory, try again"
        ))),
        Exit::Signal(signal) => Err(repeats(format!(
            "cannot compile entrypoint {shown}: the compile worker crashed with signal {signal} ({}): the shim goes on, but this module cannot run here; report it with the module if you can",
            said(&outcome.stderr)
        ))),
        Exit::Code(code) => Err(once(format!(
            "cannot compile entrypoint {shown}: the compile worker exited with code {code} ({}): see the shim's log",
            said(&outcome.stderr)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> WorkerLimits {
        WorkerLimits {
            memory_bytes: 256 << 20,
            cpu_seconds: 20,
            timeout: Duration::from_secs(10),
            output_bytes: 256 << 20,
            threads: 2,
        }
    }

    fn judge(exit: Exit, stderr: &str) -> Result<(), Failure> {
        verdict(
            &Outcome {
                exit,
                stderr: stderr.to_string(),
            },
            &limits(),
            "/app.wasm",
        )
    }

    fn message(exit: Exit, stderr: &str) -> (String, bool) {
        match judge(exit, stderr) {
            Ok(()) => panic!("{exit:?} was judged a success"),
            Err(f) => (f.message, f.repeats),
        }
    }

    #[test]
    fn each_ending_says_what_happened() {
        assert_eq!(judge(Exit::Code(0), ""), Ok(()));
        assert_eq!(
            message(
                Exit::Code(USER_ERROR),
                "is not valid WebAssembly: bad magic\n"
            ),
            (
                "entrypoint /app.wasm is not valid WebAssembly: bad magic".to_string(),
                true
            )
        );
        let (timeout, repeats) = message(Exit::TimedOut, "");
        assert!(
            timeout.starts_with("compiling entrypoint /app.wasm took longer than 10 s, the limit of one compilation (WASISHIM_COMPILE_TIMEOUT_SECONDS; 20 s of CPU time on 2 core(s))"),
            "{timeout}"
        );
        assert!(repeats);
        assert_eq!(message(Exit::Signal(libc::SIGXCPU), "").0, timeout);
        let memory = "compiling entrypoint /app.wasm needed more than the 256 MiB of memory one compilation may use (WASISHIM_COMPILE_MEMORY_BYTES)";
        for (exit, stderr) in [
            (Exit::Code(OUT_OF_MEMORY), "cannot read: Cannot allocate memory"),
            (
                Exit::Signal(libc::SIGABRT),
                "memory allocation of 1048576 bytes failed\n",
            ),
            (
                Exit::Code(101),
                "thread panicked: ThreadPoolBuildError (os error 12)",
            ),
            (
                Exit::Code(101),
                "panicked at map.rs: unhandled out-of-memory error: out of memory (failed to allocate 32769 bytes)",
            ),
        ] {
            let (m, repeats) = message(exit, stderr);
            assert!(m.starts_with(memory), "{exit:?}: {m}");
            assert!(repeats);
        }
        assert!(message(Exit::Signal(libc::SIGXFSZ), "")
            .0
            .contains("made more than 256 MiB of native code"));
        let (killed, repeats) = message(Exit::Signal(libc::SIGKILL), "");
        assert!(killed.contains("was killed (SIGKILL)"), "{killed}");
        assert!(!repeats, "a kill from outside may not happen again");
        let (crash, _) = message(Exit::Signal(libc::SIGSEGV), "a\nb\n");
        assert!(
            crash.contains("crashed with signal 11 (it said: a / b)"),
            "{crash}"
        );
        let (internal, repeats) = message(Exit::Code(INTERNAL), "cannot set up wasmtime: x");
        assert!(
            internal.contains("the compile worker failed (it said: cannot set up wasmtime: x)"),
            "{internal}"
        );
        assert!(!repeats);
        let (other, _) = message(Exit::Code(1), "");
        assert!(
            other.contains("exited with code 1 (it said nothing)"),
            "{other}"
        );
    }
}
