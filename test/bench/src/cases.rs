//! The benchmark cases. Each returns rows for the summary and prints what it
//! does as it goes.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasishim_e2e::children_of;

use crate::api::Api;
use crate::lab::{parallel, pss_kib, Lab, NAMESPACE, NODE, POD, RUNC};
use crate::report::{median, ms, quantile, Row};
use crate::{bigwasm, Config, Images};

pub const POD_BIN: &str = "containerd-shim-wasmtime-v1";
pub const NODE_BIN: &str = "containerd-shim-wasmtimed-v1";
pub const RUNC_BIN: &str = "containerd-shim-runc-v2";

fn label(rt: &str) -> &'static str {
    match rt {
        POD => "per-pod",
        NODE => "per-node",
        _ => "runc",
    }
}

/// ID of the sleeper that keeps the per-node server busy between cases.
const KEEPER: &str = "keeper";

/// Runs a sleeper in the per-node server, so that it never goes idle: its
/// steady state on a node with pods. (The harness gives containerd
/// `WASISHIM_NODE_IDLE_SECONDS=1`, and an idle server may exit between two
/// back-to-back runs, see BENCHMARKS.md.)
pub fn keeper_start(lab: &Lab, img: &Images) -> Result<()> {
    lab.run_detached(NODE, &img.sleep, KEEPER, &["/app.wasm", "3600"])
        .map(|_| ())
}

pub fn keeper_stop(lab: &Lab) -> Result<()> {
    lab.remove(KEEPER)
}

/// Latencies of the `ctr run --rm` hello runs of cases 1 and 2, per runtime,
/// for the create-to-exit distribution.
#[derive(Default)]
pub struct Latencies {
    pub pod: Vec<f64>,
    pub node: Vec<f64>,
    pub runc: Vec<f64>,
}

impl Latencies {
    fn of(&mut self, rt: &str) -> &mut Vec<f64> {
        match rt {
            POD => &mut self.pod,
            NODE => &mut self.node,
            _ => &mut self.runc,
        }
    }
}

fn hello_args(rt: &str) -> (&'static str, &'static str) {
    if rt == RUNC {
        ("/hello", "hello from native")
    } else {
        ("/app.wasm", "hello from wasm")
    }
}

/// Case 1: wall time and CPU time of `ctr run --rm` of hello.
pub fn cold_start(lab: &Lab, cfg: &Config, img: &Images, lat: &mut Latencies) -> Result<Vec<Row>> {
    println!(
        "== 1. cold start: ctr run --rm hello, {} runs after {} warm-up",
        cfg.runs, cfg.warmup
    );
    // The first start of the per-node server: none running before each.
    let mut first_node = Vec::new();
    keeper_stop(lab)?;
    for i in 0..cfg.node_first_runs {
        lab.wait_no_shim(NODE_BIN, Duration::from_secs(30))?;
        let (_, t) = lab.run_rm(
            NODE,
            &img.hello,
            &format!("c1-first-{i}"),
            &[],
            "hello from wasm",
        )?;
        first_node.push(ms(t));
    }
    keeper_start(lab, img)?;
    let mut wall = std::collections::HashMap::new();
    let mut cpu = std::collections::HashMap::new();
    for rt in [RUNC, POD, NODE] {
        let image = img.hello_for(rt);
        let (_, expect) = hello_args(rt);
        for i in 0..cfg.warmup {
            lab.run_rm(rt, image, &format!("c1-{}-w{i}", label(rt)), &[], expect)?;
        }
        let node_before = lab.shim_pids(NODE_BIN);
        let before = lab.cpu();
        let mut times = Vec::new();
        for i in 0..cfg.runs {
            let (_, t) = lab.run_rm(rt, image, &format!("c1-{}-{i}", label(rt)), &[], expect)?;
            times.push(ms(t));
        }
        let used = lab.cpu().since(&before);
        if rt == NODE && lab.shim_pids(NODE_BIN) != node_before {
            println!(
                "   note: the per-node server changed during the runs ({node_before:?} -> {:?})",
                lab.shim_pids(NODE_BIN)
            );
        }
        let per = |ns: u64| ns as f64 / 1e6 / cfg.runs as f64;
        println!(
            "   {:8} wall median {:.1} ms p99 {:.1} ms; CPU per start: daemon side {:.2} ms, containers {:.2} ms, ctr {:.2} ms",
            label(rt),
            median(&times),
            quantile(&times, 0.99),
            per(used.daemon),
            per(used.containers),
            per(used.ctr)
        );
        lat.of(rt).extend_from_slice(&times);
        wall.insert(rt, times);
        cpu.insert(rt, (per(used.daemon), per(used.containers), per(used.ctr)));
    }
    println!(
        "   per-node first start (launches the server): median {:.1} ms",
        median(&first_node)
    );

    let runc_wall = median(&wall[RUNC]);
    let (rd, rc, rctr) = cpu[RUNC];
    let mut rows = vec![
        Row::new(
            "1 cold start",
            "`ctr run --rm` hello wall, per-pod (median)",
            median(&wall[POD]),
            "ms",
        )
        .baseline("runc", runc_wall)
        .goal_ratio(0.8),
        Row::new(
            "1 cold start",
            "`ctr run --rm` hello wall, per-node warm server (median)",
            median(&wall[NODE]),
            "ms",
        )
        .baseline("runc", runc_wall)
        .goal_ratio(0.7),
        Row::new(
            "1 cold start",
            "`ctr run --rm` hello wall, per-node first start, launches the server (median)",
            median(&first_node),
            "ms",
        )
        .baseline("runc", runc_wall),
    ];
    for rt in [POD, NODE] {
        let (d, c, t) = cpu[rt];
        rows.push(
            Row::new(
                "1 cold start",
                format!("CPU per start, containerd+shim+container, {}", label(rt)),
                d + c,
                "ms",
            )
            .baseline("runc", rd + rc)
            .goal_ratio(0.6),
        );
        rows.push(
            Row::new(
                "1 cold start",
                format!("CPU per start incl. the ctr client, {}", label(rt)),
                d + c + t,
                "ms",
            )
            .baseline("runc", rd + rc + rctr),
        );
    }
    Ok(rows)
}

/// Case 2: tasks per second of `ctr run --rm` hello at several parallelisms.
pub fn throughput(lab: &Lab, cfg: &Config, img: &Images, lat: &mut Latencies) -> Result<Vec<Row>> {
    println!(
        "== 2. throughput: {} x ctr run --rm hello at parallelism {:?}",
        cfg.tput_runs, cfg.parallelism
    );
    let mut rows = Vec::new();
    for &p in &cfg.parallelism {
        let mut rate = std::collections::HashMap::new();
        for rt in [RUNC, POD, NODE] {
            let image = img.hello_for(rt);
            let (_, expect) = hello_args(rt);
            let ids: Vec<String> = (0..cfg.tput_runs)
                .map(|i| format!("c2-{}-p{p}-{i}", label(rt)))
                .collect();
            let times = Mutex::new(Vec::new());
            let start = Instant::now();
            parallel(&ids, p, |id| {
                let (_, t) = lab.run_rm(rt, image, id, &[], expect)?;
                times.lock().unwrap().push(ms(t));
                Ok(())
            })?;
            let elapsed = start.elapsed().as_secs_f64();
            let times = times.into_inner().unwrap();
            let r = cfg.tput_runs as f64 / elapsed;
            println!(
                "   {:8} parallelism {p:2}: {r:.1} tasks/s, per run median {:.1} ms p99 {:.1} ms",
                label(rt),
                median(&times),
                quantile(&times, 0.99)
            );
            if p == 1 {
                lat.of(rt).extend_from_slice(&times);
            }
            rate.insert(rt, r);
        }
        for rt in [POD, NODE] {
            // Higher is better: the ratio is wasishim/runc.
            rows.push(
                Row::new(
                    "2 throughput",
                    format!("`ctr run --rm` hello, {} at parallelism {p}", label(rt)),
                    rate[rt],
                    "tasks/s",
                )
                .baseline("runc", rate[RUNC]),
            );
        }
    }
    Ok(rows)
}

/// PSS (KiB) of everything `rt` runs for the instance's containers, and how
/// many processes that is.
fn runtime_pss(lab: &Lab, rt: &str) -> (u64, usize) {
    let pids = match rt {
        POD => lab.shim_pids(POD_BIN),
        NODE => lab.shim_pids(NODE_BIN),
        _ => {
            let shims = lab.shim_pids(RUNC_BIN);
            let mut all = children_of(&shims);
            all.extend(shims);
            all
        }
    };
    (pids.iter().map(|&p| pss_kib(p)).sum(), pids.len())
}

/// Case 3: PSS per idle container.
pub fn memory(lab: &Lab, cfg: &Config, img: &Images) -> Result<Vec<Row>> {
    println!(
        "== 3. memory: PSS of idle sleepers at {:?} (per-node also {:?})",
        cfg.sleepers, cfg.node_sleepers_extra
    );
    let mut pss: std::collections::HashMap<(&str, usize), f64> = Default::default();
    for rt in [RUNC, POD, NODE] {
        let (image, args): (&str, Vec<&str>) = if rt == RUNC {
            (&img.pause, vec![])
        } else {
            (&img.sleep, vec!["/app.wasm", "3600"])
        };
        let mut counts = vec![1];
        counts.extend(&cfg.sleepers);
        if rt == NODE {
            counts.extend(&cfg.node_sleepers_extra);
        }
        let mut ids: Vec<String> = Vec::new();
        let result = (|| -> Result<()> {
            for &n in &counts {
                let new: Vec<String> = (ids.len()..n)
                    .map(|i| format!("c3-{}-{i}", label(rt)))
                    .collect();
                parallel(&new, 4, |id| {
                    lab.run_detached(rt, image, id, &args).map(|_| ())
                })?;
                ids.extend(new);
                if rt == NODE && n == 1 {
                    // From here on the sleepers keep the server.
                    keeper_stop(lab)?;
                }
                // Let lazily touched pages and freed start-up memory settle.
                thread::sleep(Duration::from_secs(2));
                let (kib, procs) = runtime_pss(lab, rt);
                let mib = kib as f64 / 1024.0;
                println!(
                    "   {:8} {n:3} sleepers: {procs} processes, PSS {mib:.1} MiB total, {:.2} MiB per container",
                    label(rt),
                    mib / n as f64
                );
                pss.insert((rt, n), mib);
            }
            Ok(())
        })();
        if rt == NODE {
            // (Already running if the case failed before stopping it.)
            if let Err(e) = keeper_start(lab, img) {
                eprintln!("wasishim-bench: keeper: {e:#}");
            }
        }
        lab.remove_all(&ids, 8)?;
        result?;
    }
    let mut rows = Vec::new();
    for &n in &cfg.sleepers {
        let runc = pss[&(RUNC, n)] / n as f64;
        rows.push(
            Row::new(
                "3 memory",
                format!("PSS per idle container, per-pod, {n} sleepers (all shims / N)"),
                pss[&(POD, n)] / n as f64,
                "MiB",
            )
            .baseline("runc shims + containers / N", runc)
            .goal_max(2.6),
        );
        rows.push(
            Row::new(
                "3 memory",
                format!("PSS per idle container, per-node, {n} sleepers (node process / N)"),
                pss[&(NODE, n)] / n as f64,
                "MiB",
            )
            .baseline("runc shims + containers / N", runc),
        );
        rows.push(
            Row::new(
                "3 memory",
                format!("PSS per additional container, per-node, 1 -> {n} sleepers"),
                (pss[&(NODE, n)] - pss[&(NODE, 1)]) / (n - 1) as f64,
                "MiB",
            )
            .baseline(
                "runc, same",
                (pss[&(RUNC, n)] - pss[&(RUNC, 1)]) / (n - 1) as f64,
            )
            .goal_max(0.5),
        );
    }
    for &n in &cfg.node_sleepers_extra {
        rows.push(Row::new(
            "3 memory",
            format!("PSS per idle container, per-node, {n} sleepers (node process / N)"),
            pss[&(NODE, n)] / n as f64,
            "MiB",
        ));
        rows.push(
            Row::new(
                "3 memory",
                format!("PSS per additional container, per-node, 1 -> {n} sleepers"),
                (pss[&(NODE, n)] - pss[&(NODE, 1)]) / (n - 1) as f64,
                "MiB",
            )
            .goal_max(0.5),
        );
    }
    Ok(rows)
}

/// Create-to-exit of hello: from `ctr run --rm` (cases 1 and 2) and through
/// the gRPC API (Create, Start, Wait; no ctr process in the measured span).
pub fn lifecycle(
    lab: &Lab,
    cfg: &Config,
    img: &Images,
    api: &Api,
    lat: &Latencies,
) -> Result<Vec<Row>> {
    println!(
        "== 3b. create-to-exit latency of hello: {} API lifecycles per runtime, with and without --net-host",
        cfg.runs
    );
    // (total, Create, Start, Start reply -> Wait reply) per (runtime, host network).
    type Parts = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut res: std::collections::HashMap<(&str, bool), Parts> = Default::default();
    for host_net in [false, true] {
        for rt in [RUNC, POD, NODE] {
            let image = img.hello_for(rt);
            let (entry, _) = hello_args(rt);
            let mut p: Parts = Default::default();
            for i in 0..cfg.warmup + cfg.runs {
                let id = format!(
                    "c3b-{}-{}-{i}",
                    label(rt),
                    if host_net { "hostnet" } else { "netns" }
                );
                let mut create = vec!["containers", "create", "--runtime", rt];
                if host_net {
                    create.push("--net-host");
                }
                create.extend([image, id.as_str(), entry]);
                lab.ctr_ok(&create)?;
                let r = api.lifecycle(&id);
                lab.ctr_ok(&["containers", "rm", &id])?;
                let r = r?;
                if i >= cfg.warmup {
                    p.0.push(ms(r.create_to_exit));
                    p.1.push(ms(r.create));
                    p.2.push(ms(r.start));
                    p.3.push(ms(r.run));
                }
            }
            println!(
                "   {:8}{} API create->exit p50 {:.2} ms p99 {:.2} ms (p50 of Create {:.2} ms, Start {:.2} ms, Start reply -> Wait reply {:.2} ms)",
                label(rt),
                if host_net { " --net-host" } else { "" },
                quantile(&p.0, 0.5),
                quantile(&p.0, 0.99),
                quantile(&p.1, 0.5),
                quantile(&p.2, 0.5),
                quantile(&p.3, 0.5)
            );
            res.insert((rt, host_net), p);
        }
    }
    let mut rows = Vec::new();
    for rt in [POD, NODE] {
        let (t, c, s, r) = &res[&(rt, false)];
        let (rt_, rc, rs, rr) = &res[&(RUNC, false)];
        let mut r50 = Row::new(
            "3 latency",
            format!("create->exit via API, {} p50", label(rt)),
            quantile(t, 0.5),
            "ms",
        )
        .baseline("runc", quantile(rt_, 0.5));
        if rt == NODE {
            r50 = r50.goal_under(5.0);
        }
        rows.push(r50);
        rows.push(
            Row::new(
                "3 latency",
                format!("create->exit via API, {} p99", label(rt)),
                quantile(t, 0.99),
                "ms",
            )
            .baseline("runc", quantile(rt_, 0.99)),
        );
        for (what, xs, base) in [
            ("Create call", c, rc),
            ("Start call", s, rs),
            ("Start reply -> Wait reply (exit)", r, rr),
        ] {
            rows.push(
                Row::new(
                    "3 latency",
                    format!("... of which {what}, {} p50", label(rt)),
                    quantile(xs, 0.5),
                    "ms",
                )
                .baseline("runc", quantile(base, 0.5)),
            );
        }
        let (t, _, _, r) = &res[&(rt, true)];
        let (rt_, _, _, rr) = &res[&(RUNC, true)];
        rows.push(
            Row::new(
                "3 latency",
                format!(
                    "create->exit via API, {} p50, `--net-host` (no new network namespace)",
                    label(rt)
                ),
                quantile(t, 0.5),
                "ms",
            )
            .baseline("runc, --net-host", quantile(rt_, 0.5)),
        );
        rows.push(
            Row::new(
                "3 latency",
                format!(
                    "... of which Start reply -> Wait reply (exit), {} p50, `--net-host`",
                    label(rt)
                ),
                quantile(r, 0.5),
                "ms",
            )
            .baseline("runc, --net-host", quantile(rr, 0.5)),
        );
    }
    for (rt, xs) in [(POD, &lat.pod), (NODE, &lat.node)] {
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            rows.push(
                Row::new(
                    "3 latency",
                    format!(
                        "`ctr run --rm` hello wall, {} {name} ({} runs)",
                        label(rt),
                        xs.len()
                    ),
                    quantile(xs, q),
                    "ms",
                )
                .baseline("runc", quantile(&lat.runc, q)),
            );
        }
    }
    Ok(rows)
}

/// Case 4: fib computed in a wasm guest (per-node shim) vs natively.
pub fn compute(lab: &Lab, cfg: &Config, img: &Images) -> Result<Vec<Row>> {
    println!(
        "== 4. compute: fib({}) x {}, wasm (per-node) vs native",
        cfg.fib_n, cfg.fib_runs
    );
    let n = cfg.fib_n.to_string();
    let mut wasm = Vec::new();
    let mut native = Vec::new();
    for i in 0..cfg.fib_runs {
        let out = Command::new(&img.native_fib)
            .arg(&n)
            .output()
            .context("running native fib")?;
        native.push(fib_ms(&String::from_utf8_lossy(&out.stdout))?);
        let (out, _) = lab.run_rm(
            NODE,
            &img.fib,
            &format!("c4-{i}"),
            &["/app.wasm", &n],
            "fib(",
        )?;
        wasm.push(fib_ms(&String::from_utf8_lossy(&out.stdout))?);
    }
    println!(
        "   wasm median {:.1} ms, native median {:.1} ms",
        median(&wasm),
        median(&native)
    );
    Ok(vec![Row::new(
        "4 compute",
        format!("fib({}) guest compute time, per-node (median)", cfg.fib_n),
        median(&wasm),
        "ms",
    )
    .baseline("native, same source", median(&native))
    .goal_ratio(1.3)])
}

fn fib_ms(out: &str) -> Result<f64> {
    out.split(" in ")
        .nth(1)
        .and_then(|s| s.trim().trim_end_matches("ms").trim().parse().ok())
        .with_context(|| format!("fib printed no time: {out:?}"))
}

/// Case 5: start of a large module, compile cache empty vs filled.
pub fn large_module(lab: &Lab, cfg: &Config, cache_dir: &Path) -> Result<Vec<Row>> {
    let size = cfg.big_mib << 20;
    println!(
        "== 5. large module ({} MiB): {} first starts with an empty cache, then {} cached",
        cfg.big_mib, cfg.big_first_runs, cfg.big_cached_runs
    );
    let mut rows = Vec::new();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    for (k, rt) in [POD, NODE].into_iter().enumerate() {
        let mut first = Vec::new();
        let mut last_image = String::new();
        for i in 0..cfg.big_first_runs {
            let nonce = stamp * 1000 + k as u64 * 100 + i as u64;
            let wasm = bigwasm::module(size, nonce);
            let name = format!(
                "docker.io/library/wasishim-bench-big-{}-{i}:latest",
                label(rt)
            );
            last_image = lab.import(&wasishim_image::Image::new(&name).wasm(wasm))?;
            clear_dir(cache_dir)?;
            let (_, t) = lab.run_rm(
                rt,
                &last_image,
                &format!("c5-{}-first-{i}", label(rt)),
                &[],
                "",
            )?;
            first.push(ms(t));
        }
        let mut cached = Vec::new();
        for i in 0..cfg.big_cached_runs {
            let (_, t) = lab.run_rm(
                rt,
                &last_image,
                &format!("c5-{}-cached-{i}", label(rt)),
                &[],
                "",
            )?;
            cached.push(ms(t));
        }
        // The first pod after a pull, with `wasishim precompile` run
        // between the import and the pod (a node hook would); after the
        // cached starts, whose artifact the emptied cache loses.
        let mut precompiled = Vec::new();
        let mut precompile_times = Vec::new();
        for i in 0..cfg.big_first_runs {
            let nonce = stamp * 1000 + k as u64 * 100 + 50 + i as u64;
            let wasm = bigwasm::module(size, nonce);
            let name = format!(
                "docker.io/library/wasishim-bench-big-pre-{}-{i}:latest",
                label(rt)
            );
            let image = lab.import(&wasishim_image::Image::new(&name).wasm(wasm))?;
            clear_dir(cache_dir)?;
            precompile_times.push(ms(precompile(lab, &image)?));
            let (_, t) = lab.run_rm(
                rt,
                &image,
                &format!("c5-{}-precompiled-{i}", label(rt)),
                &[],
                "",
            )?;
            precompiled.push(ms(t));
        }
        println!(
            "   {:8} first {:?} ms, after precompile {:?} ms (precompile {:?} ms), cached {:?} ms",
            label(rt),
            first.iter().map(|x| x.round()).collect::<Vec<_>>(),
            precompiled.iter().map(|x| x.round()).collect::<Vec<_>>(),
            precompile_times
                .iter()
                .map(|x| x.round())
                .collect::<Vec<_>>(),
            cached.iter().map(|x| x.round()).collect::<Vec<_>>()
        );
        let what = if rt == POD {
            "new shim process, code from the disk cache"
        } else {
            "same server, code in memory"
        };
        rows.push(Row::new(
            "5 large module",
            format!(
                "`ctr run --rm` {} MiB module, {} first start, empty cache (median)",
                cfg.big_mib,
                label(rt)
            ),
            median(&first),
            "ms",
        ));
        rows.push(
            Row::new(
                "5 large module",
                format!(
                    "... {} first start after `wasishim precompile` of the pulled image (median; the precompile took {:.0} ms)",
                    label(rt),
                    median(&precompile_times)
                ),
                median(&precompiled),
                "ms",
            )
            .baseline("first start", median(&first)),
        );
        rows.push(
            Row::new(
                "5 large module",
                format!("... {} cached start ({what}, median)", label(rt)),
                median(&cached),
                "ms",
            )
            .baseline("first start", median(&first))
            .goal_ratio(0.1),
        );
    }
    Ok(rows)
}

/// `wasishim precompile IMAGE` (from the shims' directory) into the
/// bench's cache; its wall time.
fn precompile(lab: &Lab, image: &str) -> Result<Duration> {
    let dir = std::env::var_os("WASISHIM_SHIM_DIR").context("WASISHIM_SHIM_DIR is not set")?;
    let wasishim = Path::new(&dir).join("wasishim");
    let start = Instant::now();
    let out = Command::new(&wasishim)
        .args(["precompile", image, "--namespace", NAMESPACE, "--address"])
        .arg(lab.cd.address())
        .output()
        .with_context(|| format!("running {}", wasishim.display()))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "wasishim precompile {image} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn clear_dir(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Case 6: Kill to exit of a guest in a tight loop.
pub fn kill_latency(lab: &Lab, cfg: &Config, img: &Images, api: &Api) -> Result<Vec<Row>> {
    println!(
        "== 6. kill latency: {} kills per signal of a busy loop",
        cfg.kills
    );
    let mut res: std::collections::HashMap<(&str, u32), Vec<f64>> = Default::default();
    for rt in [RUNC, POD, NODE] {
        let (image, entry) = if rt == RUNC {
            (&img.spin_native, "/spin")
        } else {
            (&img.spin, "/app.wasm")
        };
        for signal in [9u32, 15] {
            let mut xs = Vec::new();
            for i in 0..cfg.kills + 1 {
                let id = format!("c6-{}-{signal}-{i}", label(rt));
                lab.run_detached(rt, image, &id, &[entry])?;
                // Let it get into its loop.
                thread::sleep(Duration::from_millis(100));
                let r = api.kill_to_exit(&id, signal);
                lab.ctr_ok(&["containers", "rm", &id])?;
                let (t, status) = r?;
                if status != 128 + signal {
                    bail!("{id}: exit status {status} after signal {signal}");
                }
                if i > 0 {
                    xs.push(ms(t));
                }
            }
            println!(
                "   {:8} signal {signal:2}: p50 {:.2} ms p99 {:.2} ms",
                label(rt),
                quantile(&xs, 0.5),
                quantile(&xs, 0.99)
            );
            res.insert((rt, signal), xs);
        }
    }
    let mut rows = Vec::new();
    for rt in [POD, NODE] {
        for (signal, name) in [(9u32, "SIGKILL"), (15, "SIGTERM")] {
            for (q, qn) in [(0.5, "p50"), (0.99, "p99")] {
                rows.push(
                    Row::new(
                        "6 kill",
                        format!("Kill -> exit, busy loop, {name}, {} {qn}", label(rt)),
                        quantile(&res[&(rt, signal)], q),
                        "ms",
                    )
                    .baseline("runc, native loop", quantile(&res[&(RUNC, signal)], q)),
                );
            }
        }
    }
    Ok(rows)
}
