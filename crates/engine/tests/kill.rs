//! Kill ends a guest whatever host call it is blocked in: writing to a
//! stdout nobody reads, reading stdin (no writer; a silent writer), opening
//! a FIFO (a call on a helper thread), sleeping, connecting to a peer that
//! never answers. SIGKILL gives 137 at once (asserted under 200 ms, a margin
//! for a loaded CI machine; the figure is printed), SIGTERM 143. Then 200
//! such kills leave no thread and no descriptor behind. And an HTTP server
//! whose stdout nobody reads keeps answering.
//!
//! The tests of this file run one at a time (they count the process's
//! threads and descriptors). The connect and HTTP cases use the fixtures
//! `test/fixtures/out/wasip2/{block,http}.wasm` (`make fixtures`) and are
//! skipped without them.
mod common;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{check, Bundle, Running};
use serde_json::json;

/// What a kill may take on a loaded 2-core CI machine (the goal is 50 ms).
const KILL_LIMIT: Duration = Duration::from_millis(200);
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Writes 4 KiB to stdout, forever.
const WRITE_FOREVER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 4096))
    (loop $l
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $l))))
"#;

/// Writes "ready\n" to stdout, then reads stdin to its end.
const READ_STDIN: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "ready\n")
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 512))
    (i32.store (i32.const 20) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (loop $l
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 1024))
      (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
        (then unreachable))
      (if (i32.eqz (i32.load (i32.const 8))) (then return))
      (br $l))))
"#;

/// Writes "ready\n" to stdout, then opens /fifo (in the rootfs) for reading.
const OPEN_FIFO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "fifo")
  (data (i32.const 512) "ready\n")
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 512))
    (i32.store (i32.const 20) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    ;; fd 3 is the rootfs; rights: fd_read (1<<1)
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 4)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)))))
"#;

/// Writes "ready\n" to stdout, then sleeps an hour in poll_oneoff.
const SLEEP: &str = r#"
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "ready\n")
  (func (export "_start")
    (i32.store (i32.const 256) (i32.const 512))
    (i32.store (i32.const 260) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 256) (i32.const 1) (i32.const 264)))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
"#;

/// One test at a time: they count the process's threads and descriptors.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn fixture(name: &str) -> Option<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../test/fixtures/out/wasip2")
        .join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) => panic!(
            "fixture {} is missing ({e}): build it with `make fixtures`",
            path.display()
        ),
    }
}

fn mkfifo(path: &Path) {
    check(
        "mkfifo",
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU),
    );
}

/// Opens FIFO `path` without waiting for the other side.
fn open_nonblocking(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
}

/// Bytes in a pipe not read yet.
fn unread(file: &File) -> i32 {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    unsafe { nix::libc::ioctl(file.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    n
}

/// The ways a guest is blocked in these tests.
#[derive(Debug, Clone, Copy)]
enum Blocked {
    /// Writing to a stdout FIFO whose reader never reads.
    Write,
    /// Reading a stdin FIFO nobody opened for writing.
    Stdin,
    /// Reading a stdin FIFO whose writer never writes.
    SlowPipe,
    /// In open(2) of a FIFO without a writer, on a helper thread.
    OpenFifo,
    /// In poll_oneoff with an hour's timeout.
    Sleep,
}

const ALL: [Blocked; 5] = [
    Blocked::Write,
    Blocked::Stdin,
    Blocked::SlowPipe,
    Blocked::OpenFifo,
    Blocked::Sleep,
];

/// A started guest blocked in a call, with what keeps it blocked.
struct Case {
    bundle: Bundle,
    running: Running,
    /// The other ends of the FIFOs, held until the end.
    _held: Vec<File>,
}

fn start_blocked(blocked: Blocked) -> Case {
    let wat = match blocked {
        Blocked::Write => WRITE_FOREVER,
        Blocked::Stdin | Blocked::SlowPipe => READ_STDIN,
        Blocked::OpenFifo => OPEN_FIFO,
        Blocked::Sleep => SLEEP,
    };
    let b = Bundle::new(&["/guest.wat"]);
    b.file("guest.wat", wat);
    let mut stdio = b.stdio();
    let mut held = Vec::new();
    match blocked {
        Blocked::Write => {
            let fifo = b.dir.join("stdout.fifo");
            mkfifo(&fifo);
            // A reader that never reads, as a detached client's FIFO.
            held.push(check("open reader", open_nonblocking(&fifo, false)));
            stdio.stdout = Some(fifo);
        }
        Blocked::Stdin | Blocked::SlowPipe => {
            let fifo = b.dir.join("stdin.fifo");
            mkfifo(&fifo);
            stdio.stdin = Some(fifo.clone());
            if let Blocked::SlowPipe = blocked {
                // The read end is the shim's, opened by prepare below; a
                // writer that never writes keeps it from seeing the end.
                let read_end = check("open read end", open_nonblocking(&fifo, false));
                held.push(check("open writer", open_nonblocking(&fifo, true)));
                held.push(read_end);
            }
        }
        Blocked::OpenFifo => mkfifo(&b.rootfs().join("fifo")),
        Blocked::Sleep => {}
    }
    let workload = match common::engine().prepare(b.spec(), stdio) {
        Ok(w) => w,
        Err(e) => panic!("prepare: {e:#}"),
    };
    let running = common::start(workload);
    let case = Case {
        bundle: b,
        running,
        _held: held,
    };
    wait_blocked(&case, blocked);
    case
}

/// Waits until the guest is in its blocking call (or about to be).
fn wait_blocked(case: &Case, blocked: Blocked) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let there = match blocked {
            // A pipe holds 64 KiB: more than that written means blocked.
            Blocked::Write => case._held.first().map(unread).unwrap_or(0) >= 60 * 1024,
            _ => case.bundle.stdout().starts_with("ready"),
        };
        if there {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the {blocked:?} guest never got to its call"
        );
        assert!(
            case.running.still_running_after(Duration::from_millis(2)),
            "the {blocked:?} guest ended before its call"
        );
    }
    // From "ready" to inside the call: microseconds.
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        case.running.still_running_after(Duration::from_millis(1)),
        "the {blocked:?} guest is not blocked"
    );
}

/// Sends `signal` and returns the exit code and how long the exit took.
fn kill(case: &Case, signal: i32) -> (u32, Duration) {
    let sent = Instant::now();
    check("kill", case.running.handle.kill(signal));
    let status = case.running.wait(Duration::from_secs(10));
    (status.code, sent.elapsed())
}

fn kill_blocked(blocked: Blocked) {
    let _serial = serial();
    for (signal, code) in [(SIGKILL, 137), (SIGTERM, 143)] {
        let case = start_blocked(blocked);
        let (got, took) = kill(&case, signal);
        println!("{blocked:?}: signal {signal} -> exit {got} in {took:?}");
        assert_eq!(got, code, "{blocked:?}, signal {signal}");
        assert!(
            took < KILL_LIMIT,
            "{blocked:?}: signal {signal} took {took:?}"
        );
        if let Blocked::OpenFifo = blocked {
            // The interrupted open left no reader behind: a writer that
            // does not wait finds none.
            let deadline = Instant::now() + Duration::from_secs(2);
            let fifo = case.bundle.rootfs().join("fifo");
            while open_nonblocking(&fifo, true).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "the guest's open of its FIFO is still pending after the kill"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[test]
fn kill_ends_a_write_to_a_fifo_nobody_reads() {
    kill_blocked(Blocked::Write);
}

#[test]
fn kill_ends_a_read_of_stdin_without_a_writer() {
    kill_blocked(Blocked::Stdin);
}

#[test]
fn kill_ends_a_read_of_a_silent_pipe() {
    kill_blocked(Blocked::SlowPipe);
}

#[test]
fn kill_ends_an_open_of_a_fifo() {
    kill_blocked(Blocked::OpenFifo);
}

#[test]
fn kill_ends_a_sleep() {
    kill_blocked(Blocked::Sleep);
}

/// A listener whose accept queue is full: a further connect gets no answer
/// (its SYN is dropped) and waits, as for a peer that blackholes packets.
fn blackhole() -> (TcpListener, Vec<TcpStream>) {
    let listener = check("bind", TcpListener::bind("127.0.0.1:0"));
    let address = check("local_addr", listener.local_addr());
    // SAFETY: listen on a socket this function owns.
    unsafe { nix::libc::listen(listener.as_raw_fd(), 0) };
    let mut filled = Vec::new();
    // Backlog 0 still queues one connection; two more fill it for sure.
    for _ in 0..3 {
        if let Ok(s) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            filled.push(s);
        }
    }
    (listener, filled)
}

#[test]
fn kill_ends_a_connect_that_gets_no_answer() {
    let _serial = serial();
    let Some(wasm) = fixture("block.wasm") else {
        return;
    };
    let (listener, _filled) = blackhole();
    let address = check("local_addr", listener.local_addr()).to_string();
    for (signal, code) in [(SIGKILL, 137), (SIGTERM, 143)] {
        let b = Bundle::new(&["/app.wasm", "connect", &address]);
        b.file("app.wasm", &wasm);
        let case = Case {
            running: b.start(),
            bundle: b,
            _held: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while case.bundle.stdout() != "blocking in connect\n" {
            assert!(
                case.running.still_running_after(Duration::from_millis(5)),
                "connect returned: {}",
                case.bundle.stdout()
            );
            assert!(Instant::now() < deadline, "the guest never got to connect");
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            case.running.still_running_after(Duration::from_millis(1)),
            "connect returned: {}",
            case.bundle.stdout()
        );
        let (got, took) = kill(&case, signal);
        println!("Connect: signal {signal} -> exit {got} in {took:?}");
        assert_eq!(got, code, "connect, signal {signal}");
        assert!(took < KILL_LIMIT, "connect: signal {signal} took {took:?}");
    }
}

/// A network namespace whose default route leads nowhere (a gateway on a
/// veth pair that nobody answers for): a name lookup to the host's
/// non-local name server gets neither answer nor error and waits for the
/// resolver's timeout. Removed on drop.
struct SilentNetns(String);

impl SilentNetns {
    fn new() -> SilentNetns {
        let name = format!("wasishim-silent-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ns = SilentNetns(name.clone());
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec![
                "-n", &name, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
            ],
            vec!["-n", &name, "link", "set", "d0", "up"],
            vec!["-n", &name, "link", "set", "d1", "up"],
            vec!["-n", &name, "addr", "add", "10.254.0.1/24", "dev", "d0"],
            // A gateway that is never asked for its address, and whose
            // frames the peer (another MAC) drops.
            vec![
                "-n",
                &name,
                "neigh",
                "add",
                "10.254.0.2",
                "lladdr",
                "02:00:00:00:00:02",
                "dev",
                "d0",
                "nud",
                "permanent",
            ],
            vec![
                "-n",
                &name,
                "route",
                "add",
                "default",
                "via",
                "10.254.0.2",
                "dev",
                "d0",
            ],
        ] {
            let out = check("ip", std::process::Command::new("ip").args(&args).output());
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for SilentNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// A guest waiting for a name server that never answers ends at once on
/// SIGKILL (137) and SIGTERM (143). glibc's resolver goes on waiting after
/// the interrupting signal, so its helper thread lasts until the resolver's
/// timeout (README, "Kill"); it must not hold up the exit.
#[test]
fn kill_ends_a_name_lookup_that_gets_no_answer() {
    let _serial = serial();
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let server = resolv
        .lines()
        .find_map(|l| l.strip_prefix("nameserver"))
        .map(str::trim)
        .unwrap_or("");
    assert!(
        !server.is_empty() && !server.starts_with("127.") && server != "::1",
        "this test needs a name server off the host (got {server:?} in /etc/resolv.conf): a local one answers 'refused' at once in the test's network namespace"
    );
    let Some(wasm) = fixture("block.wasm") else {
        return;
    };
    let netns = SilentNetns::new();
    for (signal, code) in [(SIGKILL, 137), (SIGTERM, 143)] {
        let mut b = Bundle::new(&["/app.wasm", "lookup", "wasishim-test.example"]);
        b.file("app.wasm", &wasm);
        let path = netns.path();
        b.config(|c| {
            c["linux"] = json!({"namespaces": [{"type": "network", "path": path}]});
        });
        let case = Case {
            running: b.start(),
            bundle: b,
            _held: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while case.bundle.stdout() != "blocking in lookup\n" {
            assert!(
                case.running.still_running_after(Duration::from_millis(5)),
                "the lookup returned: {}",
                case.bundle.stdout()
            );
            assert!(
                Instant::now() < deadline,
                "the guest never got to its lookup"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            case.running.still_running_after(Duration::from_millis(1)),
            "the lookup returned: {} {}",
            case.bundle.stdout(),
            case.bundle.stderr()
        );
        let (got, took) = kill(&case, signal);
        println!("Lookup: signal {signal} -> exit {got} in {took:?}");
        assert_eq!(got, code, "lookup, signal {signal}");
        assert!(took < KILL_LIMIT, "lookup: signal {signal} took {took:?}");
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 200 kills of guests blocked in each way leave the process with the
/// threads and descriptors it had. A small tolerance covers what starts
/// lazily and stays (none was seen, but e.g. a logger's thread would).
#[test]
fn two_hundred_kills_leave_no_thread_and_no_descriptor() {
    let _serial = serial();
    // Warm up what is started once per process (the engine's epoch thread,
    // the compiled code of each guest).
    for blocked in ALL {
        let case = start_blocked(blocked);
        assert_eq!(kill(&case, SIGKILL).0, 137);
    }
    let settle = |start_threads: usize, start_fds: usize| {
        // A stdin reader thread notices a close within 100 ms.
        let deadline = Instant::now() + Duration::from_secs(5);
        while (threads() > start_threads || fds() > start_fds) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        (threads(), fds())
    };
    let (start_threads, start_fds) = settle(0, 0);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let blocked = ALL[i % ALL.len()];
        let case = start_blocked(blocked);
        let (code, took) = kill(&case, if i % 2 == 0 { SIGKILL } else { SIGTERM });
        assert!(code == 137 || code == 143, "{blocked:?}: exit {code}");
        slowest = slowest.max(took);
    }
    const TOLERANCE: usize = 2;
    let (end_threads, end_fds) = settle(start_threads, start_fds);
    println!(
        "200 kills in {:?} (slowest {slowest:?}): threads {start_threads} -> {end_threads}, fds {start_fds} -> {end_fds}",
        started.elapsed()
    );
    assert!(
        end_threads <= start_threads + TOLERANCE,
        "threads {start_threads} -> {end_threads}"
    );
    assert!(
        end_fds <= start_fds + TOLERANCE,
        "fds {start_fds} -> {end_fds}"
    );
}

/// Reads the headers and body of a response whose status line was read.
fn skip_response(reader: &mut impl BufRead) {
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut line = String::new();
        check("header", reader.read_line(&mut line));
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            chunked = true;
        }
    }
    if !chunked {
        let mut body = vec![0; length];
        check("body", std::io::Read::read_exact(reader, &mut body));
        return;
    }
    loop {
        let mut size = String::new();
        check("chunk size", reader.read_line(&mut size));
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let mut chunk = vec![0; size + 2];
        check("chunk", std::io::Read::read_exact(reader, &mut chunk));
        if size == 0 {
            return;
        }
    }
}

/// An HTTP server whose stdout is a FIFO nobody reads: the access lines
/// fill it, then are dropped and counted, and requests go on being served;
/// once the FIFO is read, one line says how many were dropped.
#[test]
fn http_server_goes_on_serving_when_nobody_reads_its_stdout() {
    let _serial = serial();
    let Some(wasm) = fixture("http.wasm") else {
        return;
    };
    let address: SocketAddr = {
        let l = check("bind", TcpListener::bind("127.0.0.1:0"));
        check("local_addr", l.local_addr())
    };
    let mut b = Bundle::new(&["/app.wasm"]);
    b.file("app.wasm", &wasm);
    b.config(|c| c["process"]["env"] = json!([format!("WASISHIM_HTTP_ADDRESS={address}")]));
    let fifo = b.dir.join("stdout.fifo");
    mkfifo(&fifo);
    let mut reader = check("open reader", open_nonblocking(&fifo, false));
    let mut stdio = b.stdio();
    stdio.stdout = Some(fifo);
    let workload = match common::engine().prepare(b.spec(), stdio) {
        Ok(w) => w,
        Err(e) => panic!("prepare: {e:#}"),
    };
    let running = common::start(workload);
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        if let Ok(s) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            break s;
        }
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(20));
    };
    check(
        "timeout",
        stream.set_read_timeout(Some(Duration::from_secs(10))),
    );
    let mut writer = check("clone", stream.try_clone());
    let mut reader_side = BufReader::new(stream);
    // Long paths make long access lines: 2,000 of 2 KiB are far more than
    // the pipe (64 KiB) and the server's buffer hold.
    let long = format!("GET /{} HTTP/1.1\r\nHost: test\r\n\r\n", "x".repeat(2048));
    for i in 0..2000 {
        let request = if i % 2 == 0 {
            long.as_bytes()
        } else {
            &b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"[..]
        };
        check("send", writer.write_all(request));
        let mut status = String::new();
        check("status line", reader_side.read_line(&mut status));
        assert!(status.starts_with("HTTP/1.1 "), "request {i}: {status:?}");
        skip_response(&mut reader_side);
    }
    // Now read: the dropped lines are counted in one line.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("access lines dropped") {
        let mut buf = [0u8; 65536];
        match std::io::Read::read(&mut reader, &mut buf) {
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
        if Instant::now() >= deadline {
            break;
        }
        if seen.len() > 64 << 20 {
            break;
        }
        // Keeps the writer going: one more request after each read.
        let _ = writer.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("GET / 200 "),
        "{}",
        &text[..text.len().min(500)]
    );
    assert!(
        text.contains("access lines dropped: the container's stdout was not read fast enough"),
        "no count of dropped lines in {} bytes of output",
        seen.len()
    );
    check("kill", running.handle.kill(SIGKILL));
    assert_eq!(running.wait(Duration::from_secs(5)).code, 137);
}
