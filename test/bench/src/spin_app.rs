//! Case 11: a Spin app vs the plain `wasi:http` fixture, same run, same
//! per-pod shim. The Spin app is the test app (test/fixtures/spin, its
//! components built with Spin's Rust SDK), packed as SpinKube's images are
//! (spin.toml and the components in the rootfs); wrk asks its hello
//! component for `GET /hello` ("hello from spin"). The baseline is `GET /`
//! of the http fixture ("hello from wasi:http"). What separates the two is
//! Spin's routing, its `spin-*` headers and the SDK's request plumbing.
use anyhow::{bail, Context, Result};
use wasishim_e2e::{fixture, output_text, repo_root, Image};

use crate::api::Api;
use crate::http::{free_address, measure_path, print_measured, stop, Measured};
use crate::lab::{Lab, POD};
use crate::report::Row;
use crate::Config;

const CASE: &str = "11 Spin app";

pub fn spin_app(lab: &Lab, cfg: &Config, api: &Api) -> Result<Vec<Row>> {
    println!("== 11. Spin app: GET /hello of the Spin test app vs GET / of the wasi:http fixture, per-pod shim");
    let manifest = std::fs::read(repo_root().join("test/fixtures/spin/spin.toml"))
        .context("reading test/fixtures/spin/spin.toml")?;
    let mut spin = Image::new("docker.io/library/wasishim-bench-spin-app:latest")
        .file("/spin.toml", manifest, 0o644)
        .entrypoint(["/spin.toml"]);
    for component in ["hello", "kv"] {
        let wasm = std::fs::read(fixture(&format!("spin/{component}.wasm")))
            .with_context(|| format!("reading the Spin fixture {component} (make fixtures)"))?;
        spin = spin.file(&format!("/{component}.wasm"), wasm, 0o644);
    }
    let spin = lab.import(&spin)?;
    let http = std::fs::read(fixture("wasip2/http.wasm"))
        .context("reading the http fixture (make fixtures)")?;
    let http =
        lab.import(&Image::new("docker.io/library/wasishim-bench-http:latest").wasm(http))?;

    let plain = serve(
        lab,
        cfg,
        api,
        &http,
        "c11-http",
        "WASISHIM_HTTP_ADDRESS",
        "/",
    )
    .context("the wasi:http fixture")?;
    print_measured("wasi:http fixture: GET /", &plain);
    let app = serve(
        lab,
        cfg,
        api,
        &spin,
        "c11-spin",
        "SPIN_HTTP_LISTEN_ADDR",
        "/hello",
    )
    .context("the Spin app")?;
    print_measured("Spin app: GET /hello", &app);
    let baseline = "wasi:http fixture GET /, same run";
    Ok(vec![
        Row::new(
            CASE,
            "Spin app GET /hello: requests/s",
            app.wrk.requests_per_sec,
            "req/s",
        )
        .baseline(baseline, plain.wrk.requests_per_sec),
        Row::new(
            CASE,
            "Spin app GET /hello: CPU per request (containerd, shim, guest)",
            app.cpu_us_per_request,
            "us",
        )
        .baseline(baseline, plain.cpu_us_per_request),
        Row::new(
            CASE,
            "Spin app GET /hello: p99 latency",
            app.wrk.p99_ms,
            "ms",
        )
        .baseline(baseline, plain.wrk.p99_ms),
    ])
}

/// Runs `image` as `id` listening where `env` says, measures `path`, stops it.
fn serve(
    lab: &Lab,
    cfg: &Config,
    api: &Api,
    image: &str,
    id: &str,
    env: &str,
    path: &str,
) -> Result<Measured> {
    let address = free_address()?;
    let listen = format!("{env}={address}");
    let (out, _) = lab.ctr(&[
        "run",
        "-d",
        "--null-io",
        "--net-host",
        "--env",
        &listen,
        "--runtime",
        POD,
        image,
        id,
    ])?;
    if !out.status.success() {
        let _ = lab.remove(id);
        bail!("ctr run -d {id} failed:\n{}", output_text(&out));
    }
    let measured = (|| -> Result<Measured> {
        ready(address, path)?;
        let cpu = || {
            let c = lab.cpu();
            c.daemon + c.containers
        };
        measure_path(cfg, address, path, cpu)
    })();
    let stopped = stop(lab, api, id);
    let measured = measured?;
    stopped?;
    Ok(measured)
}

/// Waits until `path` on `address` answers 200.
fn ready(address: std::net::SocketAddr, path: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match wasishim_e2e::http::get_with(address, path, "") {
            Ok(answer) if answer.status == 200 => return Ok(()),
            Ok(answer) => bail!("GET {path} on {address} answered {answer:?}"),
            Err(e) if std::time::Instant::now() > deadline => {
                bail!("GET {path} on {address}: {e}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}
