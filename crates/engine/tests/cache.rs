//! The compiled-code cache: hits, misses, damaged artifacts, concurrent
//! first prepares, eviction, and untrusted native code in images.
//!
//! Each test has its own cache directory, configured explicitly (never
//! through WASISHIM_CACHE_DIR, which parallel tests would share).
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex, Once};
use std::time::{Duration, Instant};

use common::{assert_contains, check, Bundle};
use wasishim_engine::{CacheStats, WasmEngine};

fn exit_module(code: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const {code}))))"#
    )
}

/// A temporary cache directory (not created yet: the engine creates it).
struct CacheDir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

fn cache_dir() -> CacheDir {
    let tmp = check("tempdir", tempfile::tempdir());
    let path = tmp.path().join("cache");
    CacheDir { _tmp: tmp, path }
}

fn engine_in(dir: &Path) -> WasmEngine {
    engine_capped(dir, u64::MAX)
}

/// Pooling is off: the pool reserves terabytes of address space per engine
/// and these tests create many engines at once.
fn engine_capped(dir: &Path, max_bytes: u64) -> WasmEngine {
    let engine = match WasmEngine::builder()
        .cache_dir(Some(dir.to_path_buf()))
        .cache_max_bytes(max_bytes)
        .pooling(false)
        .build()
    {
        Ok(e) => e,
        Err(e) => panic!("build: {e:#}"),
    };
    assert_eq!(engine.cache_dir(), Some(dir));
    engine
}

/// Prepares and runs the bundle's guest on `engine`; its exit code.
fn run(engine: &WasmEngine, b: &Bundle) -> u32 {
    let workload = match engine.prepare(b.spec(), b.stdio()) {
        Ok(w) => w,
        Err(e) => panic!("prepare: {e:#}"),
    };
    common::start(workload).wait(Duration::from_secs(10)).code
}

fn stats(compiled: u64, loaded_from_disk: u64, memory_hits: u64) -> CacheStats {
    CacheStats {
        compiled,
        loaded_from_disk,
        memory_hits,
    }
}

/// The artifacts in a cache directory.
fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = check("list cache", std::fs::read_dir(dir))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

fn only_artifact(dir: &Path) -> PathBuf {
    match artifacts(dir).as_slice() {
        [one] => one.clone(),
        other => panic!("expected one artifact, found {other:?}"),
    }
}

/// Collects log lines so tests can check warnings.
struct Capture;

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        if let Ok(mut logs) = LOGS.lock() {
            logs.push(format!("{} {}", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

/// Starts collecting log lines (once per test binary).
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = log::set_logger(&Capture);
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// Warnings logged since [`capture_logs`] that mention `path`.
fn warnings_about(path: &Path) -> Vec<String> {
    let path = path.display().to_string();
    match LOGS.lock() {
        Ok(logs) => logs
            .iter()
            .filter(|l| l.starts_with("WARN") && l.contains(&path))
            .cloned()
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn second_prepare_hits_memory_then_disk_in_a_new_engine() {
    let dir = cache_dir();
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", exit_module(3));

    let first = engine_in(&dir.path);
    assert_eq!(run(&first, &b), 3);
    assert_eq!(first.cache_stats(), stats(1, 0, 0));
    assert_eq!(run(&first, &b), 3);
    assert_eq!(first.cache_stats(), stats(1, 0, 1));
    let artifact = only_artifact(&dir.path);
    assert!(artifact.with_extension("sha256").is_file());

    // Another shim process on the node: loads what the first stored.
    let second = engine_in(&dir.path);
    assert_eq!(run(&second, &b), 3);
    assert_eq!(second.cache_stats(), stats(0, 1, 0));
    assert_eq!(run(&second, &b), 3);
    assert_eq!(second.cache_stats(), stats(0, 1, 1));
}

/// The key is over the bytes as the image holds them: turning text into a
/// binary is parsing untrusted input, which only the compiler does, so a
/// WAT file and its binary are compiled once each.
#[test]
fn text_and_binary_of_one_module_are_two_guests() {
    let dir = cache_dir();
    let engine = engine_in(&dir.path);
    let text = Bundle::new(&["/app.wat"]);
    text.file("app.wat", exit_module(4));
    assert_eq!(run(&engine, &text), 4);
    let binary = Bundle::new(&["/app.wasm"]);
    binary.file(
        "app.wasm",
        check("wat", wat::parse_str(exit_module(4))).as_slice(),
    );
    assert_eq!(run(&engine, &binary), 4);
    assert_eq!(engine.cache_stats(), stats(2, 0, 0));
}

/// A repeat start of the same file finds its code by the file's identity,
/// without reading it; a file rewritten in place (same path, same size) is a
/// new identity, so its new code runs.
#[test]
fn a_rewritten_file_runs_its_new_code() {
    let dir = cache_dir();
    let engine = engine_in(&dir.path);
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", exit_module(7));
    assert_eq!(run(&engine, &b), 7);
    assert_eq!(run(&engine, &b), 7);
    assert_eq!(engine.cache_stats(), stats(1, 0, 1));
    b.file("app.wat", exit_module(8));
    assert_eq!(run(&engine, &b), 8);
    assert_eq!(engine.cache_stats(), stats(2, 0, 1));
}

#[test]
fn another_module_is_a_miss() {
    let dir = cache_dir();
    let engine = engine_in(&dir.path);
    for code in [5, 6] {
        let b = Bundle::new(&["/app.wat"]);
        b.file("app.wat", exit_module(code));
        assert_eq!(run(&engine, &b), code);
    }
    assert_eq!(engine.cache_stats(), stats(2, 0, 0));
    assert_eq!(artifacts(&dir.path).len(), 2);
}

#[test]
fn component_is_cached_too() {
    let dir = cache_dir();
    let b = Bundle::new(&["/c.wat#hello"]);
    b.file(
        "c.wat",
        r#"(component
  (core module $m (func (export "hello")))
  (core instance $i (instantiate $m))
  (func (export "hello") (canon lift (core func $i "hello"))))"#,
    );
    assert_eq!(run(&engine_in(&dir.path), &b), 0);
    let second = engine_in(&dir.path);
    assert_eq!(run(&second, &b), 0);
    assert_eq!(second.cache_stats(), stats(0, 1, 0));
}

/// Damages the stored artifact with `damage`, then checks that a new engine
/// warns, compiles again, runs the guest as before and stores a good artifact.
fn damaged_artifact_is_replaced(damage: impl FnOnce(&Path), expected_reason: &str) {
    capture_logs();
    let dir = cache_dir();
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", exit_module(7));
    assert_eq!(run(&engine_in(&dir.path), &b), 7);
    let artifact = only_artifact(&dir.path);
    damage(&artifact);

    let engine = engine_in(&dir.path);
    assert_eq!(run(&engine, &b), 7);
    assert_eq!(engine.cache_stats(), stats(1, 0, 0));
    let warnings = warnings_about(&artifact);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_contains(&warnings[0], expected_reason);
    assert_contains(&warnings[0], "compiling the guest again");

    let fresh = engine_in(&dir.path);
    assert_eq!(run(&fresh, &b), 7);
    assert_eq!(fresh.cache_stats(), stats(0, 1, 0));
}

#[test]
fn flipped_bytes_are_detected() {
    damaged_artifact_is_replaced(
        |artifact| {
            let mut bytes = check("read artifact", std::fs::read(artifact));
            let middle = bytes.len() / 2;
            for b in &mut bytes[middle..middle + 16] {
                *b ^= 0xff;
            }
            check("write artifact", std::fs::write(artifact, bytes));
        },
        "SHA-256 mismatch",
    );
}

#[test]
fn truncation_is_detected() {
    damaged_artifact_is_replaced(
        |artifact| {
            let len = check("stat artifact", std::fs::metadata(artifact)).len();
            let file = check(
                "open artifact",
                std::fs::OpenOptions::new().write(true).open(artifact),
            );
            check("truncate", file.set_len(len / 3));
        },
        "truncated",
    );
}

#[test]
fn missing_digest_is_detected() {
    damaged_artifact_is_replaced(
        |artifact| {
            check(
                "remove digest",
                std::fs::remove_file(artifact.with_extension("sha256")),
            )
        },
        "no digest was recorded",
    );
}

#[test]
fn concurrent_first_prepares_compile_once() {
    const N: usize = 8;
    let dir = cache_dir();
    let engine = engine_in(&dir.path);
    let bundles: Vec<Bundle> = (0..N)
        .map(|_| {
            let b = Bundle::new(&["/app.wat"]);
            b.file("app.wat", exit_module(9));
            b
        })
        .collect();
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = bundles
        .iter()
        .map(|b| {
            let (engine, barrier, spec) = (engine.clone(), barrier.clone(), b.spec());
            std::thread::spawn(move || {
                barrier.wait();
                engine
                    .prepare(spec, Default::default())
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}"))
            })
        })
        .collect();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("prepare: {e}"),
            Err(_) => panic!("prepare thread panicked"),
        }
    }
    assert_eq!(engine.cache_stats(), stats(1, 0, N as u64 - 1));
    assert_eq!(artifacts(&dir.path).len(), 1);
}

#[test]
fn concurrent_first_prepares_in_two_engines_compile_once() {
    // Two engines stand for two shim processes: they share only the directory
    // and its lock files.
    let dir = cache_dir();
    let engines = [engine_in(&dir.path), engine_in(&dir.path)];
    let barrier = Arc::new(Barrier::new(2));
    let bundles: Vec<Bundle> = (0..2)
        .map(|_| {
            let b = Bundle::new(&["/app.wat"]);
            b.file("app.wat", exit_module(10));
            b
        })
        .collect();
    let threads: Vec<_> = engines
        .iter()
        .zip(&bundles)
        .map(|(engine, b)| {
            let (engine, barrier, spec) = (engine.clone(), barrier.clone(), b.spec());
            std::thread::spawn(move || {
                barrier.wait();
                engine.prepare(spec, Default::default()).is_ok()
            })
        })
        .collect();
    for t in threads {
        assert!(matches!(t.join(), Ok(true)));
    }
    let total =
        |f: fn(&CacheStats) -> u64| engines.iter().map(|e| f(&e.cache_stats())).sum::<u64>();
    assert_eq!(total(|s| s.compiled), 1);
    assert_eq!(total(|s| s.loaded_from_disk), 1);
}

#[test]
fn least_recently_used_artifacts_are_evicted() {
    let dir = cache_dir();
    let bundles: Vec<Bundle> = (20..25)
        .map(|code| {
            let b = Bundle::new(&["/app.wat"]);
            b.file("app.wat", exit_module(code));
            b
        })
        .collect();
    let unlimited = engine_in(&dir.path);
    assert_eq!(run(&unlimited, &bundles[0]), 20);
    let a = only_artifact(&dir.path);
    assert_eq!(run(&unlimited, &bundles[1]), 21);
    let b_artifact = artifacts(&dir.path)
        .into_iter()
        .find(|p| *p != a)
        .unwrap_or_default();
    for b in &bundles[2..4] {
        std::thread::sleep(Duration::from_millis(20));
        run(&unlimited, b);
    }
    // A new engine loads the first: it becomes the most recently used.
    std::thread::sleep(Duration::from_millis(20));
    let loader = engine_in(&dir.path);
    assert_eq!(run(&loader, &bundles[0]), 20);
    assert_eq!(loader.cache_stats(), stats(0, 1, 0));

    // Room for four artifacts (one may take a quarter of the cap): storing
    // a fifth evicts the second, not the first.
    let size = |p: &Path| check("stat", std::fs::metadata(p)).len();
    let cap = 4 * size(&a) + size(&a) / 2;
    let capped = engine_capped(&dir.path, cap);
    assert_eq!(run(&capped, &bundles[4]), 24);
    let left = artifacts(&dir.path);
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(left.contains(&a));
    assert!(!left.contains(&b_artifact));
    assert!(!b_artifact.with_extension("sha256").exists());

    // An artifact larger than a quarter of the cap is used, not kept, and
    // evicts nothing.
    let tiny = engine_capped(&dir.path, 1);
    assert_eq!(run(&tiny, &bundles[1]), 21);
    assert_eq!(artifacts(&dir.path), left);
    assert_eq!(tiny.cache_stats(), stats(1, 0, 0));
}

#[test]
fn pooling_and_on_demand_engines_do_not_discard_each_others_artifacts() {
    capture_logs();
    let dir = cache_dir();
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", exit_module(13));
    let pooled_engine = || match WasmEngine::builder()
        .cache_dir(Some(dir.path.clone()))
        .build()
    {
        Ok(e) => e,
        Err(e) => panic!("build: {e:#}"),
    };
    let pooled = pooled_engine();
    assert_eq!(run(&pooled, &b), 13);
    assert_eq!(pooled.cache_stats(), stats(1, 0, 0));
    let artifact = only_artifact(&dir.path);
    let on_demand = engine_in(&dir.path);
    assert_eq!(run(&on_demand, &b), 13);
    assert_eq!(warnings_about(&artifact), Vec::<String>::new());
    assert!(artifact.is_file(), "the pooled engine's artifact is gone");
    // Whether the two configurations share an artifact or not, a new engine
    // of each kind now loads its code from disk instead of compiling it.
    for (kind, engine) in [
        ("pooling", pooled_engine()),
        ("on demand", engine_in(&dir.path)),
    ] {
        assert_eq!(run(&engine, &b), 13);
        assert_eq!(engine.cache_stats(), stats(0, 1, 0), "a new {kind} engine");
    }
    for a in artifacts(&dir.path) {
        assert_eq!(warnings_about(&a), Vec::<String>::new());
    }
}

#[test]
fn disabled_disk_cache_still_links_once() {
    let engine = match WasmEngine::with_cache_dir(None) {
        Ok(e) => e,
        Err(e) => panic!("engine: {e:#}"),
    };
    assert_eq!(engine.cache_dir(), None);
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", exit_module(11));
    assert_eq!(run(&engine, &b), 11);
    assert_eq!(run(&engine, &b), 11);
    assert_eq!(engine.cache_stats(), stats(1, 0, 1));
}

#[test]
fn unusable_cache_dir_turns_the_disk_cache_off() {
    let dir = cache_dir();
    check("mkdir", std::fs::create_dir_all(&dir.path));
    let file = dir.path.join("not-a-dir");
    check("write", std::fs::write(&file, b""));
    let engine = match WasmEngine::with_cache_dir(Some(file.clone())) {
        Ok(e) => e,
        Err(e) => panic!("engine: {e:#}"),
    };
    assert_eq!(engine.cache_dir(), None);
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", exit_module(12));
    assert_eq!(run(&engine, &b), 12);
}

#[test]
fn precompiled_code_in_the_image_is_refused() {
    let native = match wasmtime::Engine::default().precompile_module(exit_module(0).as_bytes()) {
        Ok(n) => n,
        Err(e) => panic!("precompile: {e:#}"),
    };
    let b = Bundle::new(&["/app.cwasm"]);
    b.file("app.cwasm", native);
    let e = b.prepare_error();
    assert!(
        e.starts_with("entrypoint /app.cwasm is not a WebAssembly module or component (found wasmtime precompiled native code"),
        "{e}"
    );
}

/// A module with `n` small functions calling each other, for timings.
fn medium_module(n: usize) -> String {
    let mut wat = String::from(
        "(module\n  (import \"wasi_snapshot_preview1\" \"proc_exit\" (func $exit (param i32)))\n  (memory (export \"memory\") 1)\n  (func $f0 (param i32) (result i32) local.get 0)\n",
    );
    for i in 1..n {
        wat.push_str(&format!(
            "  (func $f{i} (param i32) (result i32) (local i32)\n    local.get 0 i32.const {i} i32.mul i32.const 7 i32.add local.tee 1\n    i32.const 3 i32.shr_u local.get 1 i32.xor local.set 1\n    (if (result i32) (i32.and (local.get 0) (i32.const 1))\n      (then (call $f{} (local.get 1)))\n      (else (i32.load (i32.and (local.get 1) (i32.const 1020))))))\n",
            i - 1
        ));
    }
    wat.push_str(&format!(
        "  (func (export \"_start\") (call $exit (i32.and (call $f{} (i32.const 1)) (i32.const 0)))))\n",
        n - 1
    ));
    wat
}

fn time_prepare(engine: &WasmEngine, b: &Bundle) -> Duration {
    let spec = b.spec();
    let started = Instant::now();
    let prepared = engine.prepare(spec, Default::default());
    let took = started.elapsed();
    if let Err(e) = prepared {
        panic!("prepare: {e:#}");
    }
    took
}

/// Prints prepare times cold, from disk and from memory:
/// `cargo test -p wasishim-engine --test cache -- --ignored --nocapture timings`
#[test]
#[ignore = "a measurement, not a check"]
fn timings() {
    let mut guests: Vec<(String, Bundle)> = Vec::new();
    let b = Bundle::new(&["/app.wasm"]);
    let wasm = check("wat", wat::parse_str(medium_module(3000)));
    let label = format!("module, 3000 functions, {} KiB", wasm.len() / 1024);
    b.file("app.wasm", wasm);
    guests.push((label, b));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test/fixtures/out");
    for fixture in ["wasip1/tcp-echo.wasm", "wasip2/tcp-echo.wasm"] {
        if let Ok(bytes) = std::fs::read(fixtures.join(fixture)) {
            let b = Bundle::new(&["/app.wasm"]);
            let label = format!("{fixture}, {} KiB", bytes.len() / 1024);
            b.file("app.wasm", bytes);
            guests.push((label, b));
        }
    }
    println!(
        "| guest | cold (compile + store) | disk cache (new engine) | in memory (same engine) |"
    );
    println!("|---|---|---|---|");
    for (label, b) in &guests {
        let dir = cache_dir();
        let cold_engine = engine_in(&dir.path);
        let cold = time_prepare(&cold_engine, b);
        let disk_engine = engine_in(&dir.path);
        let disk = time_prepare(&disk_engine, b);
        let memory = (0..20)
            .map(|_| time_prepare(&disk_engine, b))
            .min()
            .unwrap_or_default();
        assert_eq!(cold_engine.cache_stats(), stats(1, 0, 0));
        assert_eq!(disk_engine.cache_stats(), stats(0, 1, 20));
        println!("| {label} | {cold:.1?} | {disk:.1?} | {memory:.1?} |");
    }

    // Start to exit of a trivial guest: instantiation (pool or mmap), the
    // guest's thread and runtime, and the exit callback.
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", exit_module(0));
    println!("\n| allocation | start to exit, best of 50 | address space after build |");
    println!("|---|---|---|");
    for pooling in [true, false] {
        let engine = match WasmEngine::builder()
            .cache_dir(None)
            .pooling(pooling)
            .build()
        {
            Ok(e) => e,
            Err(e) => panic!("build: {e:#}"),
        };
        assert_eq!(engine.pooling(), pooling);
        let vm = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmSize:"))
            .unwrap_or_default()
            .to_string();
        let best = (0..50)
            .map(|_| {
                let workload = match engine.prepare(b.spec(), Default::default()) {
                    Ok(w) => w,
                    Err(e) => panic!("prepare: {e:#}"),
                };
                let started = Instant::now();
                let code = common::start(workload).wait(Duration::from_secs(10)).code;
                assert_eq!(code, 0);
                started.elapsed()
            })
            .min()
            .unwrap_or_default();
        let kind = if pooling { "pooling" } else { "on demand" };
        println!("| {kind} | {best:.1?} | {vm} |");
    }
}
