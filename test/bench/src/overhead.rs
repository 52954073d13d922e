//! Case 8: what the sandbox and the HTTP access lines cost, each measured
//! on and off in the same run.
//!
//! Confinement (per-thread credentials, Landlock, seccomp) is switched off
//! with the engine's test switch `WASISHIM_TEST_CONFINE=` (empty: no layer)
//! in containerd's environment, which every shim it starts inherits; the
//! per-node server is stopped in between so that a new one starts with the
//! new setting. Access lines are switched per container with
//! `WASISHIM_HTTP_ACCESS_LOG`, with `ctr run` (attached) reading the
//! container's stdout as a logging agent would.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use wasishim_e2e::{fixture, Image};

use crate::api::Api;
use crate::cases::{keeper_start, keeper_stop, NODE_BIN};
use crate::http::{free_address, measure, print_measured, stop, wait_ready};
use crate::lab::{Lab, NODE, POD};
use crate::report::{median, ms, quantile, Row};
use crate::{Config, Images};

const CASE: &str = "8 overhead";
/// The engine's switch for confinement layers (`CONFINE_LAYERS_ENV`).
const CONFINE_ENV: &str = "WASISHIM_TEST_CONFINE";
/// Aim of the sandbox issue: confinement costs under 5% on each figure.
const CONFINE_COST: f64 = 0.05;

fn label(rt: &str) -> &'static str {
    if rt == POD {
        "per-pod"
    } else {
        "per-node"
    }
}

/// One runtime's figures in one setting.
struct Figures {
    hello_ms: f64,
    create_to_exit_ms: f64,
    http_rps: f64,
}

pub fn overhead(lab: &Lab, cfg: &Config, img: &Images) -> Result<Vec<Row>> {
    println!(
        "== 8. overhead: confinement on/off ({} hello runs, {} API lifecycles, wrk {} s) and HTTP access lines on/off",
        cfg.runs, cfg.runs, cfg.http_seconds
    );
    let wasm = std::fs::read(fixture("wasip2/http.wasm"))
        .context("reading the http fixture (make fixtures)")?;
    let http_image =
        lab.import(&Image::new("docker.io/library/wasishim-bench-http:latest").wasm(wasm))?;

    // Off first, so that the run ends with the default (confined) shims.
    let mut settings = Vec::new();
    for confined in [false, true] {
        let api = restart(lab, img, confined)?;
        let mut per_rt = Vec::new();
        for rt in [POD, NODE] {
            let f = figures(lab, cfg, img, &api, &http_image, rt)
                .with_context(|| format!("{}, confinement {}", label(rt), on_off(confined)))?;
            println!(
                "   {:8} confinement {:3}: hello median {:.1} ms, create->exit p50 {:.2} ms, HTTP {:.0} req/s",
                label(rt),
                on_off(confined),
                f.hello_ms,
                f.create_to_exit_ms,
                f.http_rps
            );
            per_rt.push(f);
        }
        settings.push(per_rt);
    }
    let mut rows = Vec::new();
    for (i, rt) in [POD, NODE].into_iter().enumerate() {
        let (off, on) = (&settings[0][i], &settings[1][i]);
        let name = label(rt);
        rows.push(
            Row::new(
                CASE,
                format!("`ctr run --rm` hello wall, {name}, confined (median)"),
                on.hello_ms,
                "ms",
            )
            .baseline("unconfined", off.hello_ms)
            .goal_ratio(1.0 + CONFINE_COST),
        );
        rows.push(
            Row::new(
                CASE,
                format!("create->exit via API, {name}, confined (p50)"),
                on.create_to_exit_ms,
                "ms",
            )
            .baseline("unconfined", off.create_to_exit_ms)
            .goal_ratio(1.0 + CONFINE_COST),
        );
        rows.push(
            Row::new(
                CASE,
                format!("GET / hello, {name}, confined: requests/s"),
                on.http_rps,
                "req/s",
            )
            .baseline("unconfined", off.http_rps)
            .goal_ratio_min(1.0 - CONFINE_COST),
        );
    }
    for rt in [POD, NODE] {
        let mut rps = Vec::new();
        for log in ["on", "off"] {
            let m = http_read_by_ctr(lab, cfg, &http_image, rt, log)
                .with_context(|| format!("{}, access lines {log}", label(rt)))?;
            rps.push(m);
        }
        rows.push(
            Row::new(
                CASE,
                format!(
                    "GET / hello, {}, access lines on (stdout read by `ctr run`): requests/s",
                    label(rt)
                ),
                rps[0],
                "req/s",
            )
            .baseline("access lines off", rps[1]),
        );
    }
    Ok(rows)
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// Restarts containerd with confinement on or off and a fresh per-node
/// server; the keeper runs again when it returns.
fn restart(lab: &Lab, img: &Images, confined: bool) -> Result<Api> {
    keeper_stop(lab)?;
    lab.wait_no_shim(NODE_BIN, Duration::from_secs(30))?;
    lab.restart_with_env(CONFINE_ENV, if confined { None } else { Some("") })?;
    keeper_start(lab, img)?;
    Api::connect(&lab.cd.address())
}

fn figures(
    lab: &Lab,
    cfg: &Config,
    img: &Images,
    api: &Api,
    http_image: &str,
    rt: &str,
) -> Result<Figures> {
    let mut hello = Vec::new();
    for i in 0..cfg.warmup + cfg.runs {
        let (_, t) = lab.run_rm(
            rt,
            &img.hello,
            &format!("c8-hello-{}-{i}", label(rt)),
            &[],
            "hello from wasm",
        )?;
        if i >= cfg.warmup {
            hello.push(ms(t));
        }
    }
    let mut lifecycles = Vec::new();
    for i in 0..cfg.warmup + cfg.runs {
        let id = format!("c8-api-{}-{i}", label(rt));
        lab.ctr_ok(&[
            "containers",
            "create",
            "--runtime",
            rt,
            &img.hello,
            &id,
            "/app.wasm",
        ])?;
        let r = api.lifecycle(&id);
        lab.ctr_ok(&["containers", "rm", &id])?;
        let r = r?;
        if i >= cfg.warmup {
            lifecycles.push(ms(r.create_to_exit));
        }
    }
    let id = format!("c8-http-{}", label(rt));
    let address = free_address()?;
    let env = format!("WASISHIM_HTTP_ADDRESS={address}");
    lab.ctr_ok(&[
        "run",
        "-d",
        "--null-io",
        "--net-host",
        "--env",
        &env,
        "--runtime",
        rt,
        http_image,
        &id,
    ])?;
    let m = wait_ready(address).and_then(|_| {
        measure(cfg, address, || {
            let c = lab.cpu();
            c.daemon + c.containers
        })
    });
    let stopped = stop(lab, api, &id);
    let m = m?;
    stopped?;
    print_measured(&format!("{}, confined or not", label(rt)), &m);
    Ok(Figures {
        hello_ms: median(&hello),
        create_to_exit_ms: quantile(&lifecycles, 0.5),
        http_rps: m.wrk.requests_per_sec,
    })
}

/// Requests/s of the HTTP fixture run attached (`ctr run` copies the
/// container's stdout to /dev/null), with access lines `log` ("on"/"off").
fn http_read_by_ctr(lab: &Lab, cfg: &Config, image: &str, rt: &str, log: &str) -> Result<f64> {
    let id = format!("c8-log-{log}-{}", label(rt));
    let address: SocketAddr = free_address()?;
    let env = format!("WASISHIM_HTTP_ADDRESS={address}");
    let access = format!("WASISHIM_HTTP_ACCESS_LOG={log}");
    let mut child: Child = lab
        .ctr_cmd(&[
            "run",
            "--net-host",
            "--env",
            &env,
            "--env",
            &access,
            "--runtime",
            rt,
            image,
            &id,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ctr run")?;
    let m = wait_ready(address).and_then(|_| {
        measure(cfg, address, || {
            let c = lab.cpu();
            c.daemon + c.containers
        })
    });
    // ctr run deletes the task itself once it exits: only signal it here.
    let killed = lab.ctr_ok(&["task", "kill", &id]);
    let waited = wait_child(&mut child, Duration::from_secs(20));
    let removed = lab.remove(&id);
    let m = m?;
    killed?;
    removed?;
    if !waited?.success() {
        bail!("ctr run {id} did not exit 0 after SIGTERM");
    }
    print_measured(&format!("{}, access lines {log}", label(rt)), &m);
    Ok(m.wrk.requests_per_sec)
}

/// Waits for `child` up to `limit`, then kills it.
fn wait_child(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ctr run did not exit within {limit:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
