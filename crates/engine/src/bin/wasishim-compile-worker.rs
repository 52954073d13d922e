//! A compile worker on its own, for the engine's tests (tests/compile_worker.rs
//! runs it through `CARGO_BIN_EXE_wasishim-compile-worker`). The shims are
//! their own compile workers (see `wasishim_engine::run_compile_worker`);
//! this binary is not installed.
fn main() {
    let worker = std::env::args_os().nth(1);
    if worker.as_deref() != Some(wasishim_engine::COMPILE_WORKER_ARG.as_ref()) {
        eprintln!(
            "wasishim-compile-worker: started by the engine only, with {}",
            wasishim_engine::COMPILE_WORKER_ARG
        );
        std::process::exit(2);
    }
    std::process::exit(wasishim_engine::run_compile_worker());
}
