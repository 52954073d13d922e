//! The compile worker's side: stdin (the guest's bytes) to stdout
//! (wasmtime's artifact), under its own seccomp filter.
//!
//! Exit codes the server reads (verdict.rs): 0 the artifact is written;
//! [`USER_ERROR`] the bytes are not a valid guest, stderr says why as a
//! phrase completing "entrypoint <path> ..."; [`OUT_OF_MEMORY`] an
//! allocation failed under the address-space cap; [`INTERNAL`] the worker
//! itself could not work (stderr says why). Rust's own allocation failures
//! abort with "memory allocation of N bytes failed" on stderr, which the
//! server reads as [`OUT_OF_MEMORY`] too.
use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use nix::libc;
use wasmtime::Engine;

use super::verdict::{INTERNAL, OUT_OF_MEMORY, USER_ERROR};
use crate::compile;

/// Runs the compile worker and returns its exit code: the whole main of a
/// binary started with [`super::COMPILE_WORKER_ARG`] (see the module
/// documentation of `worker`). Call it before anything else in that main:
/// it expects its stdin to hold the guest's bytes and its stdout to be an
/// empty file, as the engine sets them up.
pub fn run_compile_worker() -> i32 {
    let (code, message) = match work() {
        Ok(()) => return 0,
        Err(failed) => failed,
    };
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "{message}");
    let _ = stderr.flush();
    code
}

fn internal(what: &str, e: impl std::fmt::Display) -> (i32, String) {
    (INTERNAL, format!("{what}: {e:#}"))
}

fn io_failure(what: &str, e: io::Error) -> (i32, String) {
    if e.raw_os_error() == Some(libc::ENOMEM) {
        return (OUT_OF_MEMORY, format!("{what}: {e}"));
    }
    internal(what, e)
}

fn work() -> Result<(), (i32, String)> {
    // Nothing else running as this user may read or trace this process, nor
    // rewrite its output through /proc.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let engine = Engine::new(&crate::engine::compile_config())
        .map_err(|e| internal("cannot set up wasmtime", e))?;
    // From here on the worker can only read its input, compute and write
    // its output.
    super::filter::install().map_err(|e| internal("cannot install the seccomp filter", e))?;

    // SAFETY: descriptors 0 and 1 are the input and output the server
    // opened for this process; ManuallyDrop leaves them open for the
    // standard library's handles.
    let mut input = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    let mut output = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| io_failure("cannot read the guest's bytes", e))?;
    let (binary, kind) = compile::parse_source(&engine, &bytes).map_err(|e| (USER_ERROR, e))?;
    let artifact = compile::precompile(&engine, &binary, kind).map_err(|e| (USER_ERROR, e))?;
    drop(binary);
    drop(bytes);
    output
        .write_all(&artifact)
        .map_err(|e| io_failure("cannot write the compiled code", e))?;
    Ok(())
}
