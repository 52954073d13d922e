//! Case 7: HTTP throughput and latency of the `http` fixture (a
//! `wasi:http/incoming-handler` component) served by each shim, against a
//! native hyper server returning the same body (`wasishim-bench-http`),
//! under the same loopback load from `wrk`.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasishim_e2e::{fixture, output_text, Image};

use crate::api::Api;
use crate::lab::{Lab, NODE, POD};
use crate::report::Row;
use crate::Config;

/// The body of the fixture's `GET /` (test/fixtures/rust/http/src/lib.rs),
/// which the native server returns too.
pub const HELLO: &str = "hello from wasm http\n";
/// wrk's connections, all on one wrk thread: the other core is the server's.
const CONNECTIONS: usize = 16;
/// How long a server may take to answer its first request.
const READY_LIMIT: Duration = Duration::from_secs(20);
const CASE: &str = "7 http";

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Wrk {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// `Non-2xx or 3xx responses`.
    pub non_2xx: u64,
    /// wrk's `Socket errors:` line, if it printed one.
    pub socket_errors: Option<String>,
}

impl Wrk {
    /// Why this run cannot stand as a measurement: responses that were not
    /// 2xx, or socket errors (connect, read, write, timeout), which wrk
    /// leaves out of its latency figures. `None` when clean.
    pub fn failure(&self) -> Option<String> {
        let errors: u64 = self
            .socket_errors
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        match (self.non_2xx, errors) {
            (0, 0) => None,
            (bad, 0) => Some(format!("{bad} of {} responses were not 2xx", self.requests)),
            (bad, _) => Some(format!(
                "socket errors ({}) and {bad} non-2xx responses in {} requests",
                self.socket_errors.as_deref().unwrap_or(""),
                self.requests
            )),
        }
    }
}

/// One server's figures: wrk's, and the server's CPU time per request.
pub struct Measured {
    pub wrk: Wrk,
    pub cpu_us_per_request: f64,
    /// CPU time of the server over the run / wall time of the run (cores).
    pub cpu_cores: f64,
}

/// The native server: `wasishim-bench-http` next to this program.
fn native_server() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("the bench program has no directory")?
        .join("wasishim-bench-http");
    if !path.exists() {
        bail!(
            "{} is missing: cargo build -p wasishim-bench builds it",
            path.display()
        );
    }
    Ok(path)
}

pub fn http(lab: &Lab, cfg: &Config, api: &Api) -> Result<Vec<Row>> {
    let wrk_cmd = format!(
        "wrk -t1 -c{CONNECTIONS} -d{}s --latency (after {} s of warm-up)",
        cfg.http_seconds, cfg.http_warmup_seconds
    );
    println!("== 7. http: GET / of the http fixture vs a native hyper server, {wrk_cmd}");
    let version = Command::new("wrk").arg("--version").output();
    if version.is_err() {
        bail!("wrk is not installed (apt-get install wrk; make deps installs it)");
    }
    let server = native_server()?;
    let wasm = fs::read(fixture("wasip2/http.wasm"))
        .context("reading the http fixture (make fixtures)")?;
    let image =
        lab.import(&Image::new("docker.io/library/wasishim-bench-http:latest").wasm(wasm))?;

    let mut native = Vec::new();
    for threads in [1usize, 2] {
        let address = free_address()?;
        let child = Command::new(&server)
            .arg(address.to_string())
            .arg(threads.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", server.display()))?;
        let mut child = KillOnDrop(child);
        let m = (|| -> Result<Measured> {
            let headers = wait_ready(address)?;
            if threads == 1 {
                println!("   native response: {}", headers.replace("\r\n", " | "));
            }
            let pid = child.0.id() as i32;
            measure(cfg, address, || process_cpu_ns(pid))
        })();
        child.stop();
        let m = m.with_context(|| format!("native server, {threads} thread(s)"))?;
        print_measured(&format!("native, {threads} thread(s)"), &m);
        native.push(m);
    }

    let mut wasm = Vec::new();
    for rt in [POD, NODE] {
        let name = if rt == POD { "per-pod" } else { "per-node" };
        let id = format!("c7-{name}");
        let address = free_address()?;
        let env = format!("WASISHIM_HTTP_ADDRESS={address}");
        let (out, _) = lab.ctr(&[
            "run",
            "-d",
            "--null-io",
            "--net-host",
            "--env",
            &env,
            "--runtime",
            rt,
            &image,
            &id,
        ])?;
        if !out.status.success() {
            let _ = lab.remove(&id);
            bail!("ctr run -d {id} failed:\n{}", output_text(&out));
        }
        let m = (|| -> Result<Measured> {
            let headers = wait_ready(address)?;
            if rt == POD {
                println!("   wasm response:   {}", headers.replace("\r\n", " | "));
            }
            // containerd, the shims and the guest threads (their container's
            // cgroup); containerd itself is idle meanwhile.
            measure(cfg, address, || {
                let c = lab.cpu();
                c.daemon + c.containers
            })
        })();
        let stopped = stop(lab, api, &id);
        let m = m.with_context(|| format!("{name} shim"))?;
        stopped?;
        print_measured(name, &m);
        wasm.push((name, m));
    }

    let floor = bare_wasmtime_floor()?;
    println!(
        "   bare wasmtime, in process, no sockets: {:.1} us per GET / (store {:.1}, instantiate {:.1}, handle {:.1}, drop {:.1})",
        floor.total_us, floor.store_us, floor.instantiate_us, floor.handle_us, floor.drop_us
    );

    let base = &native[0];
    // The most a fresh-instance-per-request server could do on one core:
    // bare wasmtime's work per request plus the native server's (sockets,
    // HTTP), nothing for the shim.
    let ceiling = 1e6 / (floor.total_us + base.cpu_us_per_request);
    println!(
        "   ceiling on one core (1 / (bare wasmtime + native server per request)): {ceiling:.0} req/s, {:.2}x native",
        ceiling / base.wrk.requests_per_sec
    );
    let mut rows = vec![Row::new(
        CASE,
        "GET / hello, native hyper server on 1 thread (current-thread tokio): requests/s",
        base.wrk.requests_per_sec,
        "req/s",
    )];
    for (name, m) in &wasm {
        let row = Row::new(
            CASE,
            format!("GET / hello, {name}: requests/s"),
            m.wrk.requests_per_sec,
            "req/s",
        )
        .baseline("native, 1 thread", base.wrk.requests_per_sec)
        .goal_ratio_min(0.4);
        println!(
            "   goal >= 0.4x native throughput, {name}: {:.2}x, {}",
            row.ratio().unwrap_or(f64::NAN),
            if row.goal.as_ref().is_some_and(|g| g.met) {
                "met"
            } else {
                "NOT met"
            }
        );
        rows.push(row);
    }
    rows.push(
        Row::new(
            CASE,
            "GET / hello, ceiling of one core: 1 s / (bare wasmtime's CPU per request + native server's)",
            ceiling,
            "req/s",
        )
        .baseline("native, 1 thread", base.wrk.requests_per_sec),
    );
    rows.push(Row::new(
        CASE,
        "GET / hello, native hyper server on 2 threads (multi-thread tokio, sharing the 2 CPUs with wrk): requests/s",
        native[1].wrk.requests_per_sec,
        "req/s",
    ));
    rows.push(Row::new(
        CASE,
        "GET / hello p99 latency, native, 1 thread",
        base.wrk.p99_ms,
        "ms",
    ));
    for (name, m) in &wasm {
        rows.push(
            Row::new(
                CASE,
                format!("GET / hello p99 latency, {name}"),
                m.wrk.p99_ms,
                "ms",
            )
            .baseline("native, 1 thread", base.wrk.p99_ms),
        );
    }
    rows.push(Row::new(
        CASE,
        "CPU per request, native, 1 thread (server process)",
        base.cpu_us_per_request,
        "us",
    ));
    rows.push(
        Row::new(
            CASE,
            "CPU per request, bare wasmtime: store, instance, handle, drop (in process, no sockets)",
            floor.total_us,
            "us",
        )
        .baseline("native, 1 thread", base.cpu_us_per_request),
    );
    for (name, m) in &wasm {
        rows.push(
            Row::new(
                CASE,
                format!("CPU per request, {name} (containerd, shim and guest thread)"),
                m.cpu_us_per_request,
                "us",
            )
            .baseline("native, 1 thread", base.cpu_us_per_request),
        );
    }
    Ok(rows)
}

/// Bare wasmtime's time per request, from `http_floor` (an example of the
/// engine crate, built with the release shims): microseconds in total and
/// per phase.
struct Floor {
    total_us: f64,
    store_us: f64,
    instantiate_us: f64,
    handle_us: f64,
    drop_us: f64,
}

/// Runs `examples/http_floor` next to the release shims on the http fixture.
fn bare_wasmtime_floor() -> Result<Floor> {
    let shims = PathBuf::from(std::env::var_os("WASISHIM_SHIM_DIR").unwrap_or_default());
    let program = shims.join("examples/http_floor");
    if !program.exists() {
        bail!(
            "{} is missing: cargo build --release --example http_floor -p wasishim-engine builds it",
            program.display()
        );
    }
    let out = Command::new(&program)
        .arg(fixture("wasip2/http.wasm"))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!("{} failed:\n{}", program.display(), output_text(&out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    parse_floor(&text).with_context(|| format!("reading http_floor's output {text:?}"))
}

/// Reads `us_per_request T store A instantiate B handle C drop D`.
fn parse_floor(text: &str) -> Result<Floor> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let value = |name: &str| -> Result<f64> {
        let at = words
            .iter()
            .position(|w| *w == name)
            .with_context(|| format!("no {name}"))?;
        let v = words
            .get(at + 1)
            .with_context(|| format!("no value after {name}"))?;
        v.parse()
            .with_context(|| format!("{name} {v:?} is not a number"))
    };
    Ok(Floor {
        total_us: value("us_per_request")?,
        store_us: value("store")?,
        instantiate_us: value("instantiate")?,
        handle_us: value("handle")?,
        drop_us: value("drop")?,
    })
}

pub fn print_measured(name: &str, m: &Measured) {
    let w = &m.wrk;
    println!(
        "   {name:22} {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} requests, server CPU {:.1} us/request ({:.2} cores){}{}",
        w.requests_per_sec,
        w.p50_ms,
        w.p99_ms,
        w.requests,
        m.cpu_us_per_request,
        m.cpu_cores,
        if w.non_2xx > 0 { format!(", {} non-2xx", w.non_2xx) } else { String::new() },
        w.socket_errors.as_deref().map(|e| format!(", socket errors: {e}")).unwrap_or_default(),
    );
}

/// A warm-up run, then the measured run, with the server's CPU time
/// (`cpu_ns`, a counter in nanoseconds) around the measured one.
pub fn measure(cfg: &Config, address: SocketAddr, cpu_ns: impl Fn() -> u64) -> Result<Measured> {
    measure_path(cfg, address, "/", cpu_ns)
}

/// [`measure`] of requests for `path`.
pub fn measure_path(
    cfg: &Config,
    address: SocketAddr,
    path: &str,
    cpu_ns: impl Fn() -> u64,
) -> Result<Measured> {
    wrk(address, path, cfg.http_warmup_seconds)?;
    let before = cpu_ns();
    let started = Instant::now();
    let (w, text) = wrk(address, path, cfg.http_seconds)?;
    let wall = started.elapsed();
    let used = cpu_ns().saturating_sub(before) as f64;
    show_wrk(&text);
    if let Some(failure) = w.failure() {
        bail!("{failure}");
    }
    Ok(Measured {
        cpu_us_per_request: used / 1e3 / w.requests.max(1) as f64,
        cpu_cores: used / 1e9 / wall.as_secs_f64(),
        wrk: w,
    })
}

fn wrk(address: SocketAddr, path: &str, seconds: u32) -> Result<(Wrk, String)> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s")])
        .args(["--latency", "--timeout", "5s"])
        .arg(format!("http://{address}{path}"))
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed:\n{}", output_text(&out));
    }
    let w = parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))?;
    Ok((w, text.into_owned()))
}

/// wrk's report, indented, for the log.
fn show_wrk(text: &str) {
    for line in text.lines() {
        println!("      | {line}");
    }
}

/// Reads wrk 4's report (run with `--latency`).
pub fn parse_wrk(text: &str) -> Result<Wrk> {
    let mut w = Wrk {
        requests: 0,
        requests_per_sec: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
        socket_errors: None,
    };
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            w.requests_per_sec = v.trim().parse().context("Requests/sec")?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = v.trim().parse().context("Non-2xx or 3xx responses")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            w.socket_errors = Some(v.trim().to_string());
        } else if line.contains(" requests in ") {
            w.requests = words
                .next()
                .and_then(|n| n.parse().ok())
                .context("requests in")?;
        } else {
            match (words.next(), words.next(), words.next()) {
                (Some("50%"), Some(t), None) => w.p50_ms = duration_ms(t)?,
                (Some("99%"), Some(t), None) => w.p99_ms = duration_ms(t)?,
                _ => {}
            }
        }
    }
    if w.requests == 0 || w.requests_per_sec.is_nan() || w.p99_ms.is_nan() {
        bail!("no request count, Requests/sec or 99% latency (was --latency given?)");
    }
    Ok(w)
}

/// A wrk duration (`812.00us`, `1.20ms`, `2.01s`, `1.50m`) in milliseconds.
fn duration_ms(t: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600e3)
    } else {
        bail!("{t:?} is not a duration");
    };
    let n: f64 = number
        .parse()
        .with_context(|| format!("{t:?} is not a duration"))?;
    Ok(n * scale)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_address() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Waits until `GET /` on `address` answers 200 with [`HELLO`]; returns the
/// response's status line and headers.
pub fn wait_ready(address: SocketAddr) -> Result<String> {
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        match get_root(address) {
            Ok(response) => {
                let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
                let chunked = head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked");
                let body = if chunked {
                    dechunk(body)
                } else {
                    Some(body.to_string())
                };
                if !head.starts_with("HTTP/1.1 200") || body.as_deref() != Some(HELLO) {
                    bail!("GET / on {address} answered:\n{response}");
                }
                return Ok(head.to_string());
            }
            Err(e) if Instant::now() > deadline => {
                bail!("GET / on {address} failed for {READY_LIMIT:?}: {e}")
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The body of a chunked response, without trailers; `None` if malformed.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

fn get_root(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// SIGTERM (the server finishes its requests and exits 0), then the task
/// and the container are deleted.
pub fn stop(lab: &Lab, api: &Api, id: &str) -> Result<()> {
    let stopped = api.kill_to_exit(id, 15);
    let removed = match &stopped {
        Ok(_) => lab.ctr_ok(&["containers", "rm", id]).map(|_| ()),
        Err(_) => lab.remove(id),
    };
    let (took, status) = stopped?;
    removed?;
    if status != 0 {
        bail!("{id} exited with {status} after SIGTERM, not 0");
    }
    println!(
        "   {id}: SIGTERM -> exit 0 in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    Ok(())
}

/// user+system CPU time of process `pid` (all its threads), in nanoseconds.
fn process_cpu_ns(pid: i32) -> u64 {
    let stat = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .unwrap_or_default();
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // Fields after the command name, which is in parentheses: utime and
    // stime are fields 14 and 15 of the line, 12th and 13th after it.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0;
    };
    let field = |n: usize| -> u64 {
        rest.split(' ')
            .nth(n)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field(11) + field(12)) * 1_000_000_000 / ticks
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_floor() {
        let f =
            parse_floor("us_per_request 22.68 store 0.96 instantiate 9.27 handle 9.64 drop 2.80\n")
                .unwrap();
        assert_eq!(f.total_us, 22.68);
        assert_eq!(f.instantiate_us, 9.27);
        assert_eq!(f.drop_us, 2.80);
        assert!(parse_floor("us_per_request x").is_err());
    }

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:41234/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   180.40us   50.22us   2.91ms   90.12%
    Req/Sec    85.20k     3.11k   90.12k    72.00%
  Latency Distribution
     50%  170.00us
     75%  190.00us
     90%  220.00us
     99%    1.35ms
  848123 requests in 10.00s, 100.34MB read
  Socket errors: connect 0, read 0, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:  84802.12
Transfer/sec:     10.03MB
";

    #[test]
    fn reads_wrk_reports() {
        let w = parse_wrk(REPORT).unwrap();
        assert_eq!(w.requests, 848123);
        assert_eq!(w.requests_per_sec, 84802.12);
        assert!((w.p50_ms - 0.17).abs() < 1e-9);
        assert!((w.p99_ms - 1.35).abs() < 1e-9);
        assert_eq!(w.non_2xx, 3);
        assert_eq!(
            w.socket_errors.as_deref(),
            Some("connect 0, read 0, write 0, timeout 2")
        );
        assert!(parse_wrk("Running 1s test\n").is_err());
    }

    #[test]
    fn socket_errors_and_non_2xx_fail_a_run() {
        let w = parse_wrk(REPORT).unwrap();
        let failure = w.failure().unwrap();
        assert!(failure.contains("timeout 2"), "{failure}");
        let timeouts_only = Wrk {
            non_2xx: 0,
            ..w.clone()
        };
        assert!(timeouts_only.failure().is_some());
        let clean = Wrk {
            socket_errors: Some("connect 0, read 0, write 0, timeout 0".into()),
            ..timeouts_only.clone()
        };
        assert_eq!(clean.failure(), None);
        let non_2xx_only = Wrk {
            non_2xx: 1,
            ..clean.clone()
        };
        assert!(non_2xx_only.failure().unwrap().contains("not 2xx"));
        let unprinted = Wrk {
            socket_errors: None,
            ..clean
        };
        assert_eq!(unprinted.failure(), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("15\r\nhello from wasm http\n\r\n0\r\n\r\n").as_deref(),
            Some(HELLO)
        );
        assert_eq!(dechunk("3\r\nab").as_deref(), None);
    }

    #[test]
    fn reads_wrk_durations() {
        assert_eq!(duration_ms("2.00s").unwrap(), 2000.0);
        assert_eq!(duration_ms("1.50m").unwrap(), 90000.0);
        assert_eq!(duration_ms("12.5ms").unwrap(), 12.5);
        assert!(duration_ms("12").is_err());
    }
}
