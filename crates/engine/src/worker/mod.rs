//! Compiling guests outside the process: the compile worker.
//!
//! A guest's wasm is untrusted input to Cranelift, whose time and memory
//! grow with what the module asks for: a module built to exhaust the
//! compiler (a "compile bomb") would take the whole shim, and every tenant
//! of a per-node server, down with it. So the shims never parse or compile
//! a guest themselves: each compilation is a short-lived child process, the
//! shim's own binary run with [`COMPILE_WORKER_ARG`], which calls
//! [`run_compile_worker`]. It
//!
//! - reads the guest's bytes from its stdin (a memory file holding exactly
//!   the bytes the cache key was computed over) and writes wasmtime's
//!   artifact to its stdout (a file the server made for it: in the cache
//!   directory, or in memory), and nothing else: its seccomp filter
//!   (filter.rs) allows no `open`, socket, `exec`, fork or executable
//!   mapping, and its signals reach only itself;
//! - runs with an address-space cap (`RLIMIT_AS`), a CPU-time cap
//!   (`RLIMIT_CPU`), an output size cap (`RLIMIT_FSIZE`), no core dumps, as
//!   `nobody` when the shim is root, and dies with the thread that started it;
//! - is killed when it outlives the wall-clock timeout.
//!
//! `RLIMIT_AS` rather than a cgroup: the worker only compiles, and
//! precompiling reserves none of the large virtual regions (linear memories
//! with their guard pages, the instance pool) that make an address-space
//! cap unusable for the server; it needs no cgroup delegation (the per-pod
//! shim may have none to give) and no cleanup; and an allocation beyond it
//! fails inside the worker, which says so, instead of an OOM kill nobody
//! explains.
//!
//! The server loads only what its own worker wrote into the file it made
//! (process.rs), after the worker exited 0 (verdict.rs). At most
//! [`COMPILE_CONCURRENCY_ENV`] compilations run at once per node (slots.rs).
//! The OS part (spawning, limits, the timeout) is behind [`WorkerProcess`],
//! so that the decisions around it are tested without processes.

mod child;
mod filter;
mod process;
mod slots;
mod verdict;

use std::time::Duration;

pub use child::run_compile_worker;
pub use process::is_compile_worker;
#[cfg(test)]
pub(crate) use process::{Exit, Outcome};
pub(crate) use process::{Spawner, WorkerLimits, WorkerProcess};
pub(crate) use slots::CompileSlots;
pub(crate) use verdict::verdict;

/// The first argument that makes the shim binary a compile worker: its main
/// calls [`run_compile_worker`] when it sees it, before anything else.
pub const COMPILE_WORKER_ARG: &str = "--wasishim-compile-worker";

/// The path a process runs its own binary by, even after the file was
/// replaced on disk (an upgrade): the worker must be the same build as the
/// server, whose engine loads its artifacts.
pub const THIS_EXECUTABLE: &str = "/proc/self/exe";

/// Environment variable: the largest guest, in bytes of its `.wasm` (or
/// `.wat`), that is compiled (default [`DEFAULT_MAX_MODULE_BYTES`]).
pub const MAX_MODULE_BYTES_ENV: &str = "WASISHIM_MAX_MODULE_BYTES";
/// Environment variable: the address space in bytes one compilation may use
/// (default [`DEFAULT_COMPILE_MEMORY_BYTES`]).
pub const COMPILE_MEMORY_ENV: &str = "WASISHIM_COMPILE_MEMORY_BYTES";
/// Environment variable: seconds one compilation may take, of wall-clock
/// time and of CPU time per core it may use (default
/// [`DEFAULT_COMPILE_TIMEOUT_SECONDS`]).
pub const COMPILE_TIMEOUT_ENV: &str = "WASISHIM_COMPILE_TIMEOUT_SECONDS";
/// Environment variable: compilations running at once on the node (default
/// [`DEFAULT_COMPILE_CONCURRENCY`]).
pub const COMPILE_CONCURRENCY_ENV: &str = "WASISHIM_COMPILE_CONCURRENCY";

/// 64 MiB: room for an interpreter with its programs bundled as data, which
/// costs the compiler little (a 30 MB data segment: 0.14 s of CPU, 100 MB
/// of memory); code is bounded sooner by the memory and time limits.
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 64 << 20;
/// 2 GiB: code needs 60 to 80 bytes of compiler memory per byte of wasm,
/// so about 20 MiB of code compiles within it (figures in
/// docs/security.md).
pub const DEFAULT_COMPILE_MEMORY_BYTES: u64 = 2 << 30;
/// 60 s: half of kubelet's 2-minute limit on a Create.
pub const DEFAULT_COMPILE_TIMEOUT_SECONDS: u64 = 60;
/// Two: a compile bomb holding one slot for its whole timeout leaves the
/// other to the rest of the node, and two worst-case compilations use at
/// most twice [`DEFAULT_COMPILE_MEMORY_BYTES`].
pub const DEFAULT_COMPILE_CONCURRENCY: u32 = 2;

/// What one compilation may use, and how many run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompileLimits {
    pub(crate) max_module_bytes: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) timeout: Duration,
    pub(crate) concurrency: u32,
}

impl Default for CompileLimits {
    fn default() -> CompileLimits {
        CompileLimits {
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            memory_bytes: DEFAULT_COMPILE_MEMORY_BYTES,
            timeout: Duration::from_secs(DEFAULT_COMPILE_TIMEOUT_SECONDS),
            concurrency: DEFAULT_COMPILE_CONCURRENCY,
        }
    }
}

impl CompileLimits {
    /// The limits of one worker process, which may use `threads` cores.
    pub(crate) fn worker(&self, threads: usize) -> WorkerLimits {
        let threads = threads.max(1);
        WorkerLimits {
            memory_bytes: self.memory_bytes,
            cpu_seconds: self.timeout.as_secs().max(1).saturating_mul(threads as u64),
            timeout: self.timeout,
            // An artifact is built in the worker's memory before it is
            // written, so it is never larger.
            output_bytes: self.memory_bytes,
            threads,
        }
    }
}
