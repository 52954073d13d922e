//! Compiling in a worker process: what it compiles runs, what exhausts it
//! fails that prepare only, and its limits are named in the errors.
//!
//! The worker is the engine's `wasishim-compile-worker` binary.
mod common;

#[path = "../../../test/fixtures/generate/bomb.rs"]
mod bomb;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{check, start, Bundle};
use wasishim_engine::{CacheStats, WasmEngine};

/// Preparing and running with a given engine (common's use the shared one).
trait WithEngine {
    fn run_with(&self, engine: &WasmEngine) -> u32;
    fn prepare_error_with(&self, engine: &WasmEngine) -> String;
}

impl WithEngine for Bundle {
    fn run_with(&self, engine: &WasmEngine) -> u32 {
        let workload = check("prepare", engine.prepare(self.spec(), self.stdio()));
        start(workload).wait(Duration::from_secs(10)).code
    }

    fn prepare_error_with(&self, engine: &WasmEngine) -> String {
        match engine.prepare(self.spec(), self.stdio()) {
            Ok(_) => panic!("prepare succeeded, expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }
}

/// The engine's compile worker binary (src/bin), which cargo builds for
/// this test.
fn worker() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wasishim-compile-worker"))
}

struct CacheDir(PathBuf);

impl Drop for CacheDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cache_dir(name: &str) -> CacheDir {
    CacheDir(std::env::temp_dir().join(format!(
        "wasishim-worker-test-{name}-{}",
        std::process::id()
    )))
}

fn engine_limited(cache: Option<&Path>, memory: u64, timeout: Duration) -> WasmEngine {
    let built = WasmEngine::builder()
        .cache_dir(cache.map(Path::to_path_buf))
        .pooling(false)
        .compile_worker(Some(worker()))
        .compile_memory_bytes(memory)
        .compile_timeout(timeout)
        .build();
    check("engine", built)
}

fn exit_module(code: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const {code}))))"#
    )
}

fn stats(compiled: u64, loaded_from_disk: u64, memory_hits: u64) -> CacheStats {
    CacheStats {
        compiled,
        loaded_from_disk,
        memory_hits,
    }
}

/// Modules, components and WAT compiled by the worker run; with the disk
/// cache the artifact is stored for the next engine, without it the code is
/// loaded from memory; invalid input fails with the worker's reason.
#[test]
fn the_workers_code_runs_from_disk_and_from_memory() {
    let dir = cache_dir("runs");
    let first = engine_limited(Some(&dir.0), 1 << 30, Duration::from_secs(60));
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", exit_module(5));
    assert_eq!(b.run_with(&first), 5);
    assert_eq!(first.cache_stats(), stats(1, 0, 0));
    let artifacts: Vec<_> = check("ls", std::fs::read_dir(&dir.0))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm") || n.ends_with(".tmp"))
        .collect();
    assert_eq!(
        artifacts.len(),
        1,
        "one artifact, no temporary file: {artifacts:?}"
    );
    let second = engine_limited(Some(&dir.0), 1 << 30, Duration::from_secs(60));
    assert_eq!(b.run_with(&second), 5);
    assert_eq!(second.cache_stats(), stats(0, 1, 0));

    let memory_only = engine_limited(None, 1 << 30, Duration::from_secs(60));
    let component = Bundle::new(&["/c.wat#hello"]);
    component.file(
        "c.wat",
        r#"(component
  (core module $m (func (export "hello")))
  (core instance $i (instantiate $m))
  (func (export "hello") (canon lift (core func $i "hello"))))"#,
    );
    assert_eq!(component.run_with(&memory_only), 0);
    assert_eq!(b.run_with(&memory_only), 5);
    assert_eq!(memory_only.cache_stats(), stats(2, 0, 0));

    let bad = Bundle::new(&["/bad.wat"]);
    bad.file("bad.wat", "(module (func (export \"_start\") i32.add))");
    let e = bad.prepare_error_with(&memory_only);
    assert!(
        e.starts_with("entrypoint /bad.wat is not valid WebAssembly: "),
        "{e}"
    );
    let text = Bundle::new(&["/text.wat"]);
    text.file("text.wat", "(module (func");
    let e = text.prepare_error_with(&memory_only);
    assert!(
        e.starts_with("entrypoint /text.wat is not valid WebAssembly text: "),
        "{e}"
    );
}

/// A compile bomb fails its own prepare, naming the limit it went past,
/// while another guest compiles and runs beside it; its retry fails at once.
#[test]
fn a_compile_bomb_fails_its_prepare_only() {
    let dir = cache_dir("bomb");
    let engine = engine_limited(Some(&dir.0), 512 << 20, Duration::from_secs(4));
    let bomb = Bundle::new(&["/bomb.wasm"]);
    bomb.file("bomb.wasm", bomb::default_compile_bomb());
    let started = Instant::now();
    let (error, neighbour) = std::thread::scope(|s| {
        let attack = s.spawn(|| bomb.prepare_error_with(&engine));
        std::thread::sleep(Duration::from_millis(300));
        let b = Bundle::new(&["/app.wat"]);
        b.file("app.wat", exit_module(3));
        let neighbour = (b.run_with(&engine), started.elapsed());
        (
            check("bomb thread", attack.join().map_err(|_| "panicked")),
            neighbour,
        )
    });
    let took = started.elapsed();
    assert!(
        error.starts_with("compiling entrypoint /bomb.wasm took longer than 4 s")
            || error.starts_with("compiling entrypoint /bomb.wasm needed more than the 512 MiB"),
        "{error}"
    );
    assert!(took < Duration::from_secs(15), "the bomb took {took:?}");
    assert_eq!(neighbour.0, 3);
    assert!(
        neighbour.1 < Duration::from_secs(3),
        "the neighbour waited for the bomb: {:?}",
        neighbour.1
    );
    let retried = Instant::now();
    let again = bomb.prepare_error_with(&engine);
    assert!(again.starts_with(&error), "{again}");
    assert!(again.contains("remembered from an attempt"), "{again}");
    assert!(retried.elapsed() < Duration::from_secs(1));
    // Under a small memory cap, a smaller bomb runs out of memory first.
    let small = engine_limited(None, 40 << 20, Duration::from_secs(30));
    let smaller = Bundle::new(&["/smaller.wasm"]);
    smaller.file("smaller.wasm", bomb::compile_bomb(1, 40_000));
    let e = smaller.prepare_error_with(&small);
    assert!(
        e.starts_with("compiling entrypoint /smaller.wasm needed more than the 40 MiB of memory one compilation may use (WASISHIM_COMPILE_MEMORY_BYTES)"),
        "{e}"
    );
    // Nothing of the bomb was kept.
    let left: Vec<_> = check("ls", std::fs::read_dir(&dir.0))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

/// A guest above the size cap is refused before it is read or compiled.
#[test]
fn a_module_above_the_size_cap_is_refused() {
    let engine = check(
        "engine",
        WasmEngine::builder()
            .cache_dir(None)
            .pooling(false)
            .compile_worker(Some(worker()))
            .max_module_bytes(100)
            .build(),
    );
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", exit_module(1));
    let e = b.prepare_error_with(&engine);
    assert!(
        e.starts_with("entrypoint /app.wat is ")
            && e.ends_with(" bytes, more than the 100 bytes of WebAssembly this shim compiles (WASISHIM_MAX_MODULE_BYTES): build a smaller module, or raise the limit in containerd's environment"),
        "{e}"
    );
    assert_eq!(engine.cache_stats(), stats(0, 0, 0));
}
