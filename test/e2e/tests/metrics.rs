//! Prometheus metrics (`WASISHIM_METRICS_ADDRESS` in containerd's
//! environment, which the shims inherit), with the runtime the harness
//! picks (`WASISHIM_RUNTIME`):
//! - per-node: the server serves on a TCP address of 127.0.0.1; hello, a
//!   trap and an HTTP guest with some requests show in the counters, and the
//!   HTTP container's series go when it is deleted;
//! - per-pod: each shim serves on its own Unix socket (`{pid}` in the
//!   address), the HTTP guest's shim counting its requests; the socket goes
//!   with the shim;
//! - an address that cannot be served is logged, and the shim serves its
//!   tasks all the same.
//!
//! What is tested is the shim's, not containerd's: one containerd version.
//! Run one: `cargo test --workspace --test metrics -- v2_1::serves_metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasishim_e2e::http::{free_address, wait_listening, LISTEN_LIMIT};
use wasishim_e2e::{fixture_image, runtime, scenarios, PrivateContainerd};

const ADDRESS_ENV: &str = "WASISHIM_METRICS_ADDRESS";
const PER_NODE: &str = "io.containerd.wasmtimed.v1";

fn per_node() -> bool {
    runtime() == PER_NODE
}

/// Where a scrape goes.
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// `GET /metrics`: the status line and the body.
fn scrape(target: &Target) -> std::io::Result<(String, String)> {
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut answer = Vec::new();
    match target {
        Target::Tcp(address) => {
            assert!(address.ip().is_loopback(), "tests only connect to loopback");
            let mut stream = TcpStream::connect_timeout(address, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request)?;
            stream.read_to_end(&mut answer)?;
        }
        Target::Unix(path) => {
            let mut stream = UnixStream::connect(path)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request)?;
            stream.read_to_end(&mut answer)?;
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// Scrapes until the metrics answer (the server starts with the first task).
fn scrape_ok(target: &Target) -> String {
    let start = Instant::now();
    loop {
        match scrape(target) {
            Ok((status, body)) if status.contains(" 200 ") => return body,
            Ok((status, body)) => panic!("scrape answered {status}:\n{body}"),
            Err(e) => assert!(
                start.elapsed() < LISTEN_LIMIT,
                "no metrics after {LISTEN_LIMIT:?}: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample `series` (name and labels as printed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn assert_value(text: &str, series: &str, want: f64) {
    assert_eq!(value(text, series), Some(want), "{series} in:\n{text}");
}

fn assert_at_least(text: &str, series: &str, least: f64) {
    let found = value(text, series);
    assert!(
        found.is_some_and(|v| v >= least),
        "{series} is {found:?}, want at least {least}, in:\n{text}"
    );
}

/// Starts the http fixture on the host's network at a free address; returns it.
fn start_http(cd: &PrivateContainerd, id: &str) -> SocketAddr {
    let image = cd
        .import(&fixture_image("http", "wasip2/http.wasm").unwrap())
        .unwrap();
    let address = free_address();
    let env = format!("WASISHIM_HTTP_ADDRESS={address}");
    cd.run_detached(&["--net-host", "--env", &env], &image, id, &[])
        .unwrap();
    wait_listening(address);
    address
}

/// Sends the HTTP guest three good requests and one that traps (500).
fn requests(address: SocketAddr) {
    for _ in 0..3 {
        let answer = wasishim_e2e::http::get(address, "/");
        assert_eq!(answer.status, 200);
    }
    let answer = wasishim_e2e::http::get(address, "/trap");
    assert_eq!(answer.status, 500, "{}", answer.body);
}

/// Runs `rel` to its end with `ctr run --rm`; returns its exit code.
fn run_to_end(cd: &PrivateContainerd, name: &str, rel: &str) -> i32 {
    let image = cd.import(&fixture_image(name, rel).unwrap()).unwrap();
    let out = cd.run_rm(&[], &image, name, &[]);
    out.status.code().unwrap_or(-1)
}

fn serves_metrics(cd: &PrivateContainerd) {
    if per_node() {
        serves_metrics_per_node(cd)
    } else {
        serves_metrics_per_pod(cd)
    }
}

fn serves_metrics_per_node(cd: &PrivateContainerd) {
    let address = free_address();
    cd.set_env(ADDRESS_ENV, Some(&address.to_string()));
    // A fresh cache: the guests are compiled, not found on disk.
    let cache = tempfile::tempdir().unwrap();
    cd.set_env(
        "WASISHIM_CACHE_DIR",
        Some(&cache.path().display().to_string()),
    );
    cd.restart().unwrap();
    let target = Target::Tcp(address);

    assert_eq!(run_to_end(cd, "hello", "wasip1/hello.wasm"), 0);
    assert_eq!(run_to_end(cd, "trap", "wasip1/trap.wasm"), 134);
    let http = start_http(cd, "web");
    requests(http);

    let text = scrape_ok(&target);
    assert_value(&text, "wasishim_tasks{state=\"running\"}", 1.0);
    assert_value(&text, "wasishim_task_starts_total", 3.0);
    assert_value(&text, "wasishim_task_exits_total{code=\"0\"}", 1.0);
    assert_value(&text, "wasishim_task_exits_total{code=\"134\"}", 1.0);
    assert_at_least(&text, "wasishim_compiles_total", 3.0);
    assert_at_least(&text, "wasishim_cache_misses_total", 3.0);
    assert_at_least(&text, "wasishim_compile_seconds_count", 3.0);
    assert_at_least(&text, "wasishim_compile_input_bytes_total", 1000.0);
    assert_at_least(&text, "wasishim_pool_slots_in_use{kind=\"memories\"}", 0.0);
    let web = "container=\"wasishim-e2e/web\"";
    assert_value(
        &text,
        &format!("wasishim_http_requests_total{{{web},status=\"2xx\"}}"),
        3.0,
    );
    assert_value(
        &text,
        &format!("wasishim_http_requests_total{{{web},status=\"5xx\"}}"),
        1.0,
    );
    assert_value(
        &text,
        &format!("wasishim_http_request_seconds_count{{{web}}}"),
        4.0,
    );
    // The clients' connections are closed; the server sees it soon after.
    let open = format!("wasishim_http_connections_open{{{web}}}");
    let start = Instant::now();
    while value(&scrape_ok(&target), &open) != Some(0.0) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{open} in:\n{}",
            scrape_ok(&target)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The same guest again: found compiled in the server's memory.
    assert_eq!(run_to_end(cd, "hello", "wasip1/hello.wasm"), 0);
    assert_eq!(cd.kill_and_remove("web"), 137);
    let text = scrape_ok(&target);
    assert_at_least(&text, "wasishim_cache_hits_total{place=\"memory\"}", 1.0);
    assert_value(&text, "wasishim_task_exits_total{code=\"137\"}", 1.0);
    assert_value(&text, "wasishim_kill_seconds_count", 1.0);
    assert_value(&text, "wasishim_tasks{state=\"running\"}", 0.0);
    assert!(
        !text.contains("container=\"wasishim-e2e/web\""),
        "the deleted container's series are gone:\n{text}"
    );
}

fn serves_metrics_per_pod(cd: &PrivateContainerd) {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix:{}/metrics-{{pid}}.sock", dir.path().display());
    cd.set_env(ADDRESS_ENV, Some(&address));
    let cache = tempfile::tempdir().unwrap();
    cd.set_env(
        "WASISHIM_CACHE_DIR",
        Some(&cache.path().display().to_string()),
    );
    cd.restart().unwrap();

    // A shim per container: hello's serves while it runs and takes its
    // socket along when it exits.
    assert_eq!(run_to_end(cd, "hello", "wasip1/hello.wasm"), 0);
    let http = start_http(cd, "web");
    requests(http);
    let sockets = sockets_in(dir.path());
    assert_eq!(sockets.len(), 1, "the HTTP guest's shim only: {sockets:?}");
    let text = scrape_ok(&Target::Unix(sockets[0].clone()));
    assert_value(&text, "wasishim_tasks{state=\"running\"}", 1.0);
    assert_value(&text, "wasishim_task_starts_total", 1.0);
    assert_at_least(&text, "wasishim_compiles_total", 1.0);
    let web = "container=\"wasishim-e2e/web\"";
    assert_value(
        &text,
        &format!("wasishim_http_requests_total{{{web},status=\"2xx\"}}"),
        3.0,
    );
    assert_value(
        &text,
        &format!("wasishim_http_requests_total{{{web},status=\"5xx\"}}"),
        1.0,
    );
    assert_eq!(cd.kill_and_remove("web"), 137);
    let start = Instant::now();
    while !sockets_in(dir.path()).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the exited shim's metrics socket is left: {:?}",
            sockets_in(dir.path())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// An address taken by another process: the shim logs why it serves no
/// metrics, and runs its containers as before.
fn bad_address_is_logged(cd: &PrivateContainerd) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    cd.set_env(ADDRESS_ENV, Some(&address.to_string()));
    cd.restart().unwrap();
    let image = cd
        .import(&fixture_image("sleep", "wasip1/sleep.wasm").unwrap())
        .unwrap();
    cd.run_detached(&[], &image, "sleeper", &["/app.wasm", "3600"])
        .unwrap();
    cd.wait_task_status("sleeper", "RUNNING", Duration::from_secs(20))
        .unwrap();
    assert_eq!(run_to_end(cd, "hello", "wasip1/hello.wasm"), 0);

    let wanted = format!("cannot serve metrics on http://{address}/metrics");
    let start = Instant::now();
    loop {
        let log = if per_node() {
            cd.shim_pids()
                .first()
                .map(|pid| std::fs::read_to_string(server_log(*pid)).unwrap_or_default())
                .unwrap_or_default()
        } else {
            cd.log()
        };
        if log.contains(&wanted) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no line with '{wanted}' in the shim's log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cd.kill_and_remove("sleeper"), 137);
    drop(taken);
}

/// The log file of the per-node server `pid`, from its `-socket` argument.
fn server_log(pid: i32) -> PathBuf {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let socket = args
        .iter()
        .skip_while(|a| a.as_str() != "-socket")
        .nth(1)
        .cloned()
        .unwrap_or_default();
    let name = socket.rsplit('/').next().unwrap_or_default();
    Path::new(wasishim_e2e::NODE_LOG_DIR).join(format!("{name}.log"))
}

fn run(version: &str, scenario: fn(&PrivateContainerd)) {
    let cd = PrivateContainerd::start(version).unwrap();
    scenario(&cd);
    cd.assert_no_leaks();
}

scenarios!(on [v2_1 "2.1.9"]: [serves_metrics, bad_address_is_logged]);
