//! `wasishim-bench`: start-up, throughput, memory, compute, large-module,
//! kill and HTTP figures of the two wasmtime shims, each next to a baseline
//! measured in the same run (runc with native programs, or native code), on
//! a private containerd. `make bench` runs it; see BENCHMARKS.md.
//!
//! ```text
//! wasishim-bench [--quick] [--explore] [--containerd 1.6.20]
//!                [--cases 1,2,3,3b,4,5,6,7,10,11,8,9] [--out target/bench]
//!                [--benchmarks BENCHMARKS.md]
//! ```
//!
//! Exits non-zero when a case fails or a figure misses its goal (after
//! writing the report); `--explore` reports missed goals without failing.
//!
//! Needs root, cgroup v1 `cpuacct`, runc, gcc (static libc), the fixtures
//! (`make fixtures`), the native fib (`make bench` builds it), and for case 7
//! wrk and `wasishim-bench-http` (this package's other binary, next to this
//! one). The shims come from `WASISHIM_SHIM_DIR`, default `target/release`.

mod api;
mod bigwasm;
mod cases;
mod http;
mod key_value;
mod lab;
mod mixed_pod;
mod overhead;
mod report;
mod spin_app;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use wasishim_e2e::{repo_root, Image};

use crate::lab::{Lab, RUNC};
use crate::report::Row;

/// How much of everything to run.
pub struct Config {
    pub quick: bool,
    pub warmup: usize,
    pub runs: usize,
    pub node_first_runs: usize,
    pub tput_runs: usize,
    pub parallelism: Vec<usize>,
    pub sleepers: Vec<usize>,
    pub node_sleepers_extra: Vec<usize>,
    pub fib_n: u32,
    pub fib_runs: usize,
    pub big_mib: usize,
    pub big_first_runs: usize,
    pub big_cached_runs: usize,
    pub kills: usize,
    pub http_warmup_seconds: u32,
    pub http_seconds: u32,
}

/// Every case, in the order they run.
const CASES: [&str; 12] = [
    "1", "2", "3", "3b", "4", "5", "6", "7", "10", "11", "8", "9",
];

impl Config {
    fn full() -> Config {
        Config {
            quick: false,
            warmup: 5,
            runs: 40,
            node_first_runs: 5,
            tput_runs: 64,
            parallelism: vec![1, 8, 32],
            sleepers: vec![10, 100],
            node_sleepers_extra: vec![500],
            fib_n: 38,
            fib_runs: 9,
            big_mib: 20,
            big_first_runs: 3,
            big_cached_runs: 5,
            kills: 20,
            http_warmup_seconds: 3,
            http_seconds: 10,
        }
    }

    fn quick() -> Config {
        Config {
            quick: true,
            warmup: 2,
            runs: 8,
            node_first_runs: 2,
            tput_runs: 16,
            parallelism: vec![1, 8],
            sleepers: vec![10],
            node_sleepers_extra: vec![],
            fib_n: 32,
            fib_runs: 2,
            big_mib: 4,
            big_first_runs: 1,
            big_cached_runs: 2,
            kills: 4,
            http_warmup_seconds: 1,
            http_seconds: 3,
        }
    }
}

/// Image names the cases use.
pub struct Images {
    pub hello: String,
    pub hello_native: String,
    pub sleep: String,
    pub pause: String,
    pub spin: String,
    pub spin_native: String,
    pub fib: String,
    pub native_fib: PathBuf,
}

impl Images {
    pub fn hello_for(&self, rt: &str) -> &str {
        if rt == RUNC {
            &self.hello_native
        } else {
            &self.hello
        }
    }
}

struct Args {
    quick: bool,
    /// Missed goals are reported but do not fail the run.
    explore: bool,
    containerd: String,
    cases: Vec<String>,
    out: PathBuf,
    benchmarks: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        quick: false,
        explore: false,
        containerd: std::env::var("WASISHIM_BENCH_CONTAINERD")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "1.6.20".into()),
        cases: CASES.map(String::from).to_vec(),
        out: repo_root().join("target/bench"),
        benchmarks: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--explore" => a.explore = true,
            "--containerd" => a.containerd = value("--containerd")?,
            "--cases" => {
                a.cases = value("--cases")?
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .collect();
                if let Some(bad) = a.cases.iter().find(|c| !CASES.contains(&c.as_str())) {
                    bail!("--cases: {bad:?} is not one of {}", CASES.join(", "));
                }
                if a.cases.iter().any(|c| c == "3") && !a.cases.iter().any(|c| c == "3b") {
                    a.cases.push("3b".into());
                }
            }
            "--out" => a.out = value("--out")?.into(),
            "--benchmarks" => a.benchmarks = Some(value("--benchmarks")?.into()),
            "-h" | "--help" => {
                println!("wasishim-bench [--quick] [--explore] [--containerd VERSION] [--cases {}] [--out DIR] [--benchmarks BENCHMARKS.md]", CASES.join(","));
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; see --help"),
        }
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("wasishim-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let cfg = if args.quick {
        Config::quick()
    } else {
        Config::full()
    };
    let root = repo_root();
    // Before any thread exists: containerd (and so the shims) inherit these.
    // No backtrace capture, as in a production environment: with
    // RUST_BACKTRACE=1 every error made inside wasmtime takes a backtrace,
    // e.g. the one each dropped store of a wasi:http request makes for its
    // parked fiber (7% of the shim's CPU per request in case 7).
    std::env::remove_var("RUST_BACKTRACE");
    std::env::remove_var("RUST_LIB_BACKTRACE");
    if std::env::var_os("WASISHIM_SHIM_DIR").is_none_or(|d| d.is_empty()) {
        std::env::set_var("WASISHIM_SHIM_DIR", root.join("target/release"));
    }
    let shim_dir = PathBuf::from(std::env::var_os("WASISHIM_SHIM_DIR").unwrap());
    for b in [cases::POD_BIN, cases::NODE_BIN] {
        if !shim_dir.join(b).exists() {
            bail!(
                "{}/{b} is missing: build the release shims (cargo build --release -p {b}) or set WASISHIM_SHIM_DIR",
                shim_dir.display()
            );
        }
    }
    fs::create_dir_all(&args.out)?;
    let cache_dir = args.out.join("compile-cache");
    fs::create_dir_all(&cache_dir)?;
    fs::set_permissions(&cache_dir, fs::Permissions::from_mode(0o700))?;
    std::env::set_var("WASISHIM_CACHE_DIR", &cache_dir);

    let native = args.out.join("native");
    fs::create_dir_all(&native)?;
    for prog in ["hello", "pause", "spin"] {
        let src = root.join(format!("test/bench/native/{prog}.c"));
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(native.join(prog))
            .arg(&src)
            .output()
            .context("running gcc")?;
        if !out.status.success() {
            bail!(
                "gcc -static {} failed:\n{}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let native_fib = root.join("test/fixtures/out/native/fib");
    if !native_fib.exists() {
        bail!(
            "{} is missing: `make bench` builds it (make {})",
            native_fib.display(),
            "test/fixtures/out/native/fib"
        );
    }

    println!(
        "wasishim-bench: containerd {}, shims from {}{}",
        args.containerd,
        shim_dir.display(),
        if args.quick { ", quick" } else { "" }
    );
    let lab = Lab::start(&args.containerd)?;
    let machine = machine(&lab)?;
    println!("{machine}");

    let wasm = |name: &str, rel: &str| -> Result<String> {
        // Read, not built: `make bench` builds the fixtures first.
        let path = root.join("test/fixtures/out").join(rel);
        let bytes = fs::read(&path)
            .with_context(|| format!("reading fixture {} (make fixtures)", path.display()))?;
        lab.import(
            &Image::new(&format!("docker.io/library/wasishim-bench-{name}:latest")).wasm(bytes),
        )
    };
    let elf = |name: &str| -> Result<String> {
        let bytes = fs::read(native.join(name))?;
        lab.import(
            &Image::new(&format!(
                "docker.io/library/wasishim-bench-native-{name}:latest"
            ))
            .file(&format!("/{name}"), bytes, 0o755)
            .entrypoint([format!("/{name}")]),
        )
    };
    let img = Images {
        hello: wasm("hello", "wasip1/hello.wasm")?,
        sleep: wasm("sleep", "wasip1/sleep.wasm")?,
        spin: wasm("spin", "wasip1/spin.wasm")?,
        fib: wasm("fib", "wasip1/fib.wasm")?,
        hello_native: elf("hello")?,
        pause: elf("pause")?,
        spin_native: elf("spin")?,
        native_fib,
    };
    let api = api::Api::connect(&lab.cd.address())?;
    cases::keeper_start(&lab, &img)?;

    let started = std::time::Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut lat = cases::Latencies::default();
    let mut record = |name: &str, r: Result<Vec<Row>>| match r {
        Ok(mut v) => rows.append(&mut v),
        Err(e) => {
            eprintln!("wasishim-bench: case {name} failed: {e:#}");
            failures.push(format!("case {name} failed: {e:#}"));
            lab.clean();
            if let Err(e) = cases::keeper_start(&lab, &img) {
                eprintln!("wasishim-bench: restarting the keeper: {e:#}");
            }
        }
    };
    let want = |c: &str| args.cases.iter().any(|x| x == c);
    if want("1") {
        record("1", cases::cold_start(&lab, &cfg, &img, &mut lat));
    }
    if want("2") {
        record("2", cases::throughput(&lab, &cfg, &img, &mut lat));
    }
    if want("3") {
        record("3", cases::memory(&lab, &cfg, &img));
    }
    if want("3b") {
        record("3b", cases::lifecycle(&lab, &cfg, &img, &api, &lat));
    }
    if want("4") {
        record("4", cases::compute(&lab, &cfg, &img));
    }
    if want("5") {
        record("5", cases::large_module(&lab, &cfg, &cache_dir));
    }
    if want("6") {
        record("6", cases::kill_latency(&lab, &cfg, &img, &api));
    }
    if want("7") {
        record("7", http::http(&lab, &cfg, &api));
    }
    if want("10") {
        record("10", key_value::key_value(&lab, &cfg, &api));
    }
    if want("11") {
        record("11", spin_app::spin_app(&lab, &cfg, &api));
    }
    // Case 8 restarts containerd, whose graceful stop waits for open gRPC
    // connections such as this one.
    drop(api);
    if want("8") {
        record("8", overhead::overhead(&lab, &cfg, &img));
    }
    if want("9") {
        let sleep = fs::read(root.join("test/fixtures/out/wasip1/sleep.wasm"))
            .context("reading fixture wasip1/sleep.wasm (make fixtures)")?;
        record(
            "9",
            mixed_pod::mixed_pod(&args.containerd, &cfg, &native, &sleep),
        );
    }
    let elapsed = started.elapsed();
    drop(lab);
    let _ = fs::remove_dir_all(&cache_dir);

    let command = format!(
        "wasishim-bench{}{} (containerd {})",
        if args.quick { " --quick" } else { "" },
        if args.cases.len() < CASES.len() {
            format!(" --cases {}", args.cases.join(","))
        } else {
            String::new()
        },
        args.containerd
    );
    let mut section = String::new();
    section.push_str(&format!(
        "Run: `{command}`, {:.0} s of cases.\n\n",
        elapsed.as_secs_f64()
    ));
    section.push_str(&machine.replace('\n', "  \n"));
    section.push_str("\n\n");
    section.push_str(&report::markdown(&rows));
    for f in &failures {
        section.push_str(&format!("\n**{f}**\n"));
    }
    println!("\n{section}");
    fs::write(args.out.join("latest.md"), &section)?;
    fs::write(
        args.out.join("latest.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "command": command,
            "machine": machine,
            "seconds": elapsed.as_secs_f64(),
            "rows": report::json(&rows),
            "failures": failures,
        }))?,
    )?;
    if let Some(path) = &args.benchmarks {
        let doc =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let new = report::splice(&doc, &section).with_context(|| {
            format!(
                "{} has no <!-- bench:results:begin/end --> markers",
                path.display()
            )
        })?;
        fs::write(path, new)?;
        println!("wrote the results into {}", path.display());
    }
    let missed = missed_goals(&rows);
    for m in &missed {
        eprintln!("wasishim-bench: goal missed: {m}");
    }
    if !failures.is_empty() {
        bail!("{} case(s) failed", failures.len());
    }
    if !missed.is_empty() && !args.explore {
        bail!(
            "{} goal(s) missed (listed above); --explore reports them without failing",
            missed.len()
        );
    }
    Ok(())
}

/// One line per figure that misses its goal.
fn missed_goals(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| {
            let goal = r.goal.as_ref().filter(|g| !g.met)?;
            Some(format!(
                "case {}: {} is {:.3} {}{}, goal {}",
                r.case,
                r.figure,
                r.value,
                r.unit,
                r.ratio().map(|x| format!(" ({x:.2}x)")).unwrap_or_default(),
                goal.text
            ))
        })
        .collect()
}

/// Where the figures were taken: date, CPUs, memory, kernel, containerd.
fn machine(lab: &Lab) -> Result<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem_kib: u64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()?;
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let runc = Command::new("runc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        });
    let root = repo_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--", "crates", "cmd", "Cargo.lock"]).is_empty();
    // The shims' directory says which build they are: cargo's profile
    // directory (`make bench` uses target/release).
    let shims = std::env::var_os("WASISHIM_SHIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_default();
    let build = match shims.file_name().and_then(|n| n.to_str()) {
        Some("release") => "release build".to_string(),
        Some("debug") => "debug build (slower than release: not the product's figures)".to_string(),
        _ => format!("build in {}", shims.display()),
    };
    Ok(format!(
        "Date: {}\nShims: {build} of commit {commit}{}\nMachine: {nproc} CPUs ({model}), {:.1} GiB memory, kernel {}\ncontainerd {} ({}), {}",
        String::from_utf8_lossy(&date.stdout).trim(),
        if dirty { " with uncommitted changes in crates/, cmd/ or Cargo.lock" } else { "" },
        mem_kib as f64 / 1048576.0,
        kernel.trim(),
        lab.cd.server_version().unwrap_or_else(|_| lab.cd.version().to_string()),
        lab.cd.bin_dir().display(),
        runc.unwrap_or_else(|| "runc ?".into())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_goals_are_listed() {
        let rows = [
            Row::new("6 kill", "SIGKILL -> exit, p50", 5.0, "ms").goal_max(10.0),
            Row::new("6 kill", "SIGKILL -> exit, p99", 50.0, "ms").goal_max(10.0),
            Row::new("1 start", "no goal", 1.0, "ms"),
        ];
        let missed = missed_goals(&rows);
        assert_eq!(missed.len(), 1, "{missed:?}");
        assert!(
            missed[0].contains("p99 is 50.000 ms, goal <= 10 ms"),
            "{missed:?}"
        );
    }
}
