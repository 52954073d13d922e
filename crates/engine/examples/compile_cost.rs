//! What compiling in a worker costs, measured; this program is its own
//! compile worker, as the shims are:
//!
//! ```text
//! compile_cost first-start FILE...   # prepare each file on a fresh cache, in
//!                                    # process and with the worker, 9 times each
//! compile_cost largest [N]           # the largest ordinary module (from N
//!                                    # functions, doubling) the worker
//!                                    # compiles under the default limits
//! ```
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use wasishim_engine::{Stdio, WasmEngine, WorkloadSpec, COMPILE_WORKER_ARG, THIS_EXECUTABLE};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(COMPILE_WORKER_ARG) {
        std::process::exit(wasishim_engine::run_compile_worker());
    }
    match args.first().map(String::as_str) {
        Some("first-start") => first_start(&args[1..]),
        Some("largest") => largest(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(4096)),
        _ => bail!("usage: compile_cost first-start FILE... | largest"),
    }
}

/// A bundle whose rootfs holds `wasm` as /app.wasm.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(wasm: &[u8]) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "wasishim-compile-cost-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(dir.join("rootfs"))?;
        std::fs::create_dir_all(dir.join("cache"))?;
        std::fs::write(dir.join("rootfs/app.wasm"), wasm)?;
        let config = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/app.wasm"], "cwd": "/"},
        });
        std::fs::write(dir.join("config.json"), config.to_string())?;
        Ok(Scratch { dir })
    }

    fn engine(&self, worker: bool, pool: bool) -> Result<WasmEngine> {
        let cache = self
            .dir
            .join(format!("cache-{}", Instant::now().elapsed().as_nanos()));
        let builder = WasmEngine::builder()
            .cache_dir(Some(cache))
            .pooling(pool)
            .compile_worker(worker.then(|| PathBuf::from(THIS_EXECUTABLE)));
        builder.build()
    }

    /// One first start: a fresh engine and cache, then prepare. Its wall
    /// time, and the CPU time it took in this process and its workers.
    fn prepare(&self, worker: bool, pool: bool) -> Result<(Duration, Duration)> {
        let engine = self.engine(worker, pool)?;
        let spec = WorkloadSpec::from_bundle(&self.dir)?;
        let cpu = cpu_time();
        let started = Instant::now();
        let prepared = engine.prepare(spec, Stdio::default());
        let took = started.elapsed();
        prepared?;
        Ok((took, cpu_time().saturating_sub(cpu)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// User and system CPU time of this process and its reaped children.
fn cpu_time() -> Duration {
    let of = |who| {
        let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        let usage = unsafe {
            nix::libc::getrusage(who, usage.as_mut_ptr());
            usage.assume_init()
        };
        let time = |t: nix::libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        time(usage.ru_utime) + time(usage.ru_stime)
    };
    of(nix::libc::RUSAGE_SELF) + of(nix::libc::RUSAGE_CHILDREN)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn first_start(files: &[String]) -> Result<()> {
    println!("first start (fresh cache: compile, store, load, link), median of 9, pool on;");
    println!("wall time, and CPU time of the shim and its compile worker:");
    println!("| guest | bytes | in process | compile worker | worker's extra |");
    println!("|---|---|---|---|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for file in files {
        let wasm = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
        let scratch = Scratch::new(&wasm)?;
        let (mut here, mut here_cpu, mut worker, mut worker_cpu) = (vec![], vec![], vec![], vec![]);
        for _ in 0..9 {
            let (wall, cpu) = scratch.prepare(false, true)?;
            here.push(wall);
            here_cpu.push(cpu);
            let (wall, cpu) = scratch.prepare(true, true)?;
            worker.push(wall);
            worker_cpu.push(cpu);
        }
        let (here, here_cpu) = (median(here), median(here_cpu));
        let (worker, worker_cpu) = (median(worker), median(worker_cpu));
        println!(
            "| {} | {} | {:.0} ms wall, {:.0} ms CPU | {:.0} ms wall, {:.0} ms CPU | {:+.0} ms wall, {:+.0} ms CPU |",
            Path::new(file).display(),
            wasm.len(),
            ms(here),
            ms(here_cpu),
            ms(worker),
            ms(worker_cpu),
            ms(worker) - ms(here),
            ms(worker_cpu) - ms(here_cpu),
        );
    }
    Ok(())
}

/// An ordinary module of `n` functions of a few dozen instructions each
/// calling the next, as compilers emit: no bomb.
fn ordinary_module(n: usize) -> Result<Vec<u8>> {
    let mut wat = String::from(
        "(module\n (memory (export \"memory\") 1)\n (func $f0 (param i32) (result i32) local.get 0)\n",
    );
    for i in 1..n {
        wat.push_str(&format!(
            " (func $f{i} (param i32) (result i32) (local i32 i32)\n  local.get 0 i32.const {i} i32.mul i32.const 7 i32.add local.tee 1\n  i32.const 3 i32.shr_u local.get 1 i32.xor local.set 2\n  (block (loop (br_if 1 (i32.eqz (local.get 2))) (local.set 2 (i32.sub (local.get 2) (i32.const 1))) (local.set 1 (i32.add (local.get 1) (i32.load (i32.and (local.get 2) (i32.const 1020))))) (br 0)))\n  (if (result i32) (i32.and (local.get 0) (i32.const 1))\n   (then (call $f{} (local.get 1)))\n   (else (i32.load (i32.and (local.get 1) (i32.const 1020))))))\n",
            i - 1
        ));
    }
    wat.push_str(" (func (export \"_start\") (drop (call $f1 (i32.const 1)))))\n");
    Ok(wat::parse_str(&wat)?)
}

/// The peak resident memory of the largest child reaped so far, in KiB.
fn children_peak_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init().ru_maxrss
    }
}

/// Doubles an ordinary module, from `n` functions, until the worker
/// refuses it under the default limits, then reports the largest it
/// compiled, and how long, how much CPU time and how much memory (the
/// largest worker's peak) that took.
fn largest(mut n: usize) -> Result<()> {
    let mut last_ok = None;
    loop {
        let wasm = ordinary_module(n)?;
        let scratch = Scratch::new(&wasm)?;
        let started = Instant::now();
        let result = scratch.prepare(true, false);
        let took = started.elapsed();
        match result {
            Ok((_, cpu)) => {
                println!(
                    "{n} functions, {} bytes: compiled in {took:.1?} ({cpu:.1?} of CPU), largest worker so far {} MiB resident",
                    wasm.len(),
                    children_peak_kib() >> 10
                );
                last_ok = Some((n, wasm.len(), took));
                if wasm.len() as u64 > wasishim_engine::DEFAULT_MAX_MODULE_BYTES {
                    break;
                }
                n *= 2;
            }
            Err(e) => {
                println!(
                    "{n} functions, {} bytes: refused after {took:?}: {e:#}",
                    wasm.len()
                );
                break;
            }
        }
    }
    if let Some((n, bytes, took)) = last_ok {
        println!("largest compiled: {n} functions, {bytes} bytes, in {took:?}");
    }
    Ok(())
}
