//! Kill and output nobody reads, end to end through `ctr`: a detached guest
//! (`ctr run -d`, no `--null-io`) that printed more than its stdout FIFO
//! holds is still killed at once and deleted; the README's HTTP example,
//! detached the same way, serves 100,000 requests (its access lines fill
//! the FIFO and are then dropped) and stops promptly on SIGTERM.
//!
//! Through CRI (containerd 2.1), kubelet's StopContainer ends guests
//! blocked in a FIFO open, stdin and a sleep: 137 without a grace period,
//! 143 at once (not after the grace period) with one.
//!
//! Every scenario runs on each containerd version (`v1_6::...`), with the
//! runtime `WASISHIM_RUNTIME` names (per-pod shim by default), and ends with
//! [`PrivateContainerd::assert_no_leaks`]. Run one:
//! `cargo test -p wasishim-e2e --test kill -- --test-threads=1 v2_1::`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wasishim_e2e::cri::{self, api, Client};
use wasishim_e2e::http::{free_address, wait_listening};
use wasishim_e2e::{fixture_image, output_text, PrivateContainerd};

/// What a kill may take, seen through `ctr task ls` polling on a loaded
/// 2-core machine (the shim's own part is a few ms).
const STOP_LIMIT: Duration = Duration::from_secs(2);
/// Requests the detached HTTP server must answer.
const REQUESTS: usize = 100_000;
/// Keep-alive connections the load is spread over.
const CONNECTIONS: usize = 8;

/// Removes a stopped task and its container; returns the task's exit code.
fn remove(cd: &PrivateContainerd, id: &str) -> i32 {
    let started = Instant::now();
    let code = cd.task_delete(id).unwrap();
    let out = cd.ctr(["containers", "rm", id]);
    assert!(out.status.success(), "{}", output_text(&out));
    println!("{id}: deleted in {:?}", started.elapsed());
    code
}

/// A detached guest blocked writing to a stdout nobody reads any more:
/// SIGKILL stops it with 137, and delete completes.
fn detached_printer_is_killed(cd: &PrivateContainerd) {
    let image = cd
        .import(&fixture_image("chatty", "wasip1/chatty.wasm").unwrap())
        .unwrap();
    cd.run_detached(&[], &image, "chatty", &[]).unwrap();
    cd.wait_task_status("chatty", "RUNNING", Duration::from_secs(10))
        .unwrap();
    // ctr went away after the start: the FIFO (64 KiB) fills within
    // milliseconds and the guest blocks in its write.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        cd.task_status("chatty").unwrap().as_deref(),
        Some("RUNNING")
    );
    let sent = Instant::now();
    let out = cd.ctr(["task", "kill", "-s", "SIGKILL", "chatty"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let took = cd
        .wait_task_status("chatty", "STOPPED", STOP_LIMIT)
        .unwrap();
    println!(
        "chatty: STOPPED {took:?} after the kill was sent ({:?} with ctr)",
        sent.elapsed()
    );
    assert_eq!(remove(cd, "chatty"), 137);
}

/// Sends `count` GETs of / over one keep-alive connection; returns how many
/// got 200.
fn load(address: SocketAddr, count: usize) -> std::io::Result<usize> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut ok = 0;
    let mut line = String::new();
    for _ in 0..count {
        writer.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        if line.split_whitespace().nth(1) == Some("200") {
            ok += 1;
        }
        skip_response(&mut reader)?;
    }
    Ok(ok)
}

/// Reads the headers and body (by length or chunked) of a response whose
/// status line was read.
fn skip_response(reader: &mut impl BufRead) -> std::io::Result<()> {
    let (mut length, mut chunked) = (0usize, false);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if header.starts_with("transfer-encoding:") && header.contains("chunked") {
            chunked = true;
        }
    }
    if !chunked {
        let mut body = vec![0; length];
        return reader.read_exact(&mut body);
    }
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim(), 16)
            .map_err(|e| std::io::Error::other(format!("bad chunk size {line:?}: {e}")))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(());
        }
    }
}

/// The README's HTTP example detached without `--null-io`: its access lines
/// fill the stdout FIFO nobody reads, and it still serves 100,000 requests;
/// SIGTERM then stops it (exit 0) promptly.
fn detached_http_server_keeps_serving(cd: &PrivateContainerd) {
    let image = cd
        .import(&fixture_image("http", "wasip2/http.wasm").unwrap())
        .unwrap();
    let address = free_address();
    let env = format!("WASISHIM_HTTP_ADDRESS={address}");
    cd.run_detached(&["--net-host", "--env", &env], &image, "web", &[])
        .unwrap();
    wait_listening(address);

    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| std::thread::spawn(move || load(address, REQUESTS / CONNECTIONS)))
        .collect();
    let mut ok = 0;
    for (i, client) in clients.into_iter().enumerate() {
        ok += client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
    println!("web: {ok} requests answered 200 in {:?}", started.elapsed());
    assert_eq!(ok, REQUESTS);

    let sent = Instant::now();
    let out = cd.ctr(["task", "kill", "web"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let took = cd.wait_task_status("web", "STOPPED", STOP_LIMIT).unwrap();
    println!(
        "web: STOPPED {took:?} after SIGTERM was sent ({:?} with ctr)",
        sent.elapsed()
    );
    assert_eq!(remove(cd, "web"), 0);
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_err(),
        "something still listens on {address}"
    );
}

macro_rules! scenarios {
    ($($s:ident),* $(,)?) => {
        mod v1_6 { $(#[test] fn $s() { super::run("1.6.20", super::$s) })* }
        mod v1_7 { $(#[test] fn $s() { super::run("1.7.24", super::$s) })* }
        mod v2_1 { $(#[test] fn $s() { super::run("2.1.9", super::$s) })* }
    };
}

/// Starts containerd `version`, runs `scenario` on it and checks for leaks.
fn run(version: &str, scenario: fn(&PrivateContainerd)) {
    let cd = PrivateContainerd::start(version).unwrap();
    scenario(&cd);
    cd.assert_no_leaks();
}

scenarios!(
    detached_printer_is_killed,
    detached_http_server_keeps_serving
);

/// What StopContainer of a blocked guest may take through CRI on a loaded
/// 2-core machine (containerd's own work included; the shim's part is a
/// few ms).
const CRI_STOP_LIMIT: Duration = Duration::from_secs(3);

/// kubelet's StopContainer of guests blocked in host calls: with no grace
/// period (SIGKILL) each exits 137; with a 30 s grace period a guest that
/// does not handle SIGTERM exits 143 at once, not after the grace period.
fn cri_stop_blocked(cd: &PrivateContainerd, cri: &Client) {
    let image = cri::import(cd, &fixture_image("block", "wasip2/block.wasm").unwrap()).unwrap();
    let host = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(&host.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let pod = cri.run_pod(cri.pod_config("blocked")).unwrap();
    let cases: [(&str, &[&str], i64, i32); 4] = [
        ("fifo", &["open", "/data/fifo"], 0, 137),
        ("stdin", &["stdin"], 0, 137),
        ("sleep", &["sleep"], 0, 137),
        ("sleep-term", &["sleep"], 30, 143),
    ];
    for (name, args, grace, want) in cases {
        let mut config = cri.container_config(name, &image);
        config.command = std::iter::once("/app.wasm")
            .chain(args.iter().copied())
            .map(str::to_string)
            .collect();
        config.stdin = name == "stdin";
        config.mounts = vec![api::Mount {
            container_path: "/data".to_string(),
            host_path: host.path().display().to_string(),
            ..Default::default()
        }];
        let id = cri.run_container(&pod, config).unwrap();
        // Let the guest reach its call ("blocking in ..." is printed first).
        let log = pod.log_dir().join(format!("{name}.log"));
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("blocking in")
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name} never printed 'blocking in'"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let sent = Instant::now();
        cri.stop_container(&id, grace).unwrap();
        let took = sent.elapsed();
        let status = cri.container_status(&id).unwrap();
        println!(
            "{name}: StopContainer(timeout {grace}) took {took:?}, exit {}",
            status.exit_code
        );
        assert_eq!(status.exit_code, want, "{name}: exit code");
        assert!(
            took < CRI_STOP_LIMIT,
            "{name}: StopContainer took {took:?} (limit {CRI_STOP_LIMIT:?})"
        );
        cri.remove_container(&id).unwrap();
    }
    cri.stop_pod(&pod.id).unwrap();
    cri.remove_pod(&pod.id).unwrap();
}

mod cri_v2_1 {
    #[test]
    fn cri_stop_blocked() {
        let cd = wasishim_e2e::PrivateContainerd::start_with_cri("2.1.9").unwrap();
        {
            let cri = wasishim_e2e::cri::Client::connect(&cd).unwrap();
            super::cri_stop_blocked(&cd, &cri);
        }
        cd.assert_no_leaks();
    }
}
