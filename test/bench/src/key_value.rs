//! Case 10: the cost of one `wasi:keyvalue` get, on the container's
//! in-memory store and on Redis (Debian's `redis-server` on a free port of
//! 127.0.0.1). The cloud fixture (test/fixtures/rust/cloud) is served by
//! the per-pod shim; wrk asks for `GET /kv?bucket=b&key=k` (one bucket open
//! and one get) and, as the baseline from the same container, `GET
//! /config?key=k` (one `wasi:config` get: the same request without the
//! store). The difference of CPU per request is the get's cost (with its
//! bucket open), the shim's and, for Redis, the Redis client's thread's;
//! redis-server's own CPU is outside it.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasishim_e2e::{fixture, output_text, Image};

use crate::api::Api;
use crate::http::{free_address, measure_path, print_measured, stop, Measured};
use crate::lab::{Lab, POD};
use crate::report::Row;
use crate::Config;

const CASE: &str = "10 key-value";
/// The value the measured get reads: 64 bytes.
const VALUE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn key_value(lab: &Lab, cfg: &Config, api: &Api) -> Result<Vec<Row>> {
    println!("== 10. key-value: GET /kv (one wasi:keyvalue get of 64 bytes) vs GET /config, in-memory and Redis store");
    let wasm = std::fs::read(fixture("wasip2/cloud.wasm"))
        .context("reading the cloud fixture (make fixtures)")?;
    let image =
        lab.import(&Image::new("docker.io/library/wasishim-bench-cloud:latest").wasm(wasm))?;
    let redis = Redis::start()?;
    let mut rows = Vec::new();
    for (store, url) in [("in-memory", None), ("Redis", Some(redis.url()))] {
        let id = format!("c9-{}", if url.is_some() { "redis" } else { "memory" });
        let address = free_address()?;
        let mut args = vec![
            "run".to_string(),
            "-d".into(),
            "--null-io".into(),
            "--net-host".into(),
            "--env".into(),
            format!("WASISHIM_HTTP_ADDRESS={address}"),
            "--env".into(),
            "WASI_CONFIG_k=v".into(),
        ];
        if let Some(url) = &url {
            args.extend(["--env".into(), format!("WASISHIM_KEYVALUE_REDIS_URL={url}")]);
        }
        args.extend(["--runtime".into(), POD.into(), image.clone(), id.clone()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (out, _) = lab.ctr(&args)?;
        if !out.status.success() {
            let _ = lab.remove(&id);
            bail!("ctr run -d {id} failed:\n{}", output_text(&out));
        }
        let measured = (|| -> Result<(Measured, Measured)> {
            set(address)?;
            let cpu = || {
                let c = lab.cpu();
                c.daemon + c.containers
            };
            let config = measure_path(cfg, address, "/config?key=k", cpu)?;
            print_measured(&format!("{store}: GET /config"), &config);
            let get = measure_path(cfg, address, "/kv?bucket=b&key=k", cpu)?;
            print_measured(&format!("{store}: GET /kv"), &get);
            Ok((config, get))
        })();
        let stopped = stop(lab, api, &id);
        let (config, get) = measured.with_context(|| format!("{store} store"))?;
        stopped?;
        let cost = get.cpu_us_per_request - config.cpu_us_per_request;
        println!("   {store}: a get costs {cost:.1} us of CPU (shim side)");
        rows.push(
            Row::new(
                CASE,
                format!("GET /kv, {store} store: requests/s"),
                get.wrk.requests_per_sec,
                "req/s",
            )
            .baseline("GET /config, same container", config.wrk.requests_per_sec),
        );
        rows.push(
            Row::new(
                CASE,
                format!("GET /kv, {store} store: CPU per request (containerd, shim, guest)"),
                get.cpu_us_per_request,
                "us",
            )
            .baseline("GET /config, same container", config.cpu_us_per_request),
        );
        rows.push(Row::new(
            CASE,
            format!("one wasi:keyvalue get with its bucket open, {store} store: CPU per request above GET /config"),
            cost,
            "us",
        ));
    }
    drop(redis);
    Ok(rows)
}

/// Stores the value the measured gets read, waiting for the server.
fn set(address: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let request = format!(
        "POST /kv?bucket=b&key=k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{VALUE}",
        VALUE.len()
    );
    loop {
        let answer = (|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(request.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match answer {
            Ok(response) if response.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok(response) => bail!("POST /kv on {address} answered:\n{response}"),
            Err(e) if Instant::now() > deadline => bail!("POST /kv on {address}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A redis-server on a free port of 127.0.0.1, nothing saved; killed on drop.
struct Redis {
    child: Child,
    address: SocketAddr,
}

impl Redis {
    fn start() -> Result<Redis> {
        let address = free_address()?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &address.port().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context(
                "starting redis-server (apt-get install redis-server; make deps installs it)",
            )?;
        let redis = Redis { child, address };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server does not listen on {address}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://{}", self.address)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
