//! Serving wasi:http components: responses, per-request instances, failed
//! requests, body limits, outgoing requests, graceful and immediate kills.
//!
//! Uses the fixture `test/fixtures/out/wasip2/http.wasm` (`make fixtures`
//! builds it; see test/fixtures/rust/http). Without it each test fails
//! and says so. Every server listens on 127.0.0.1 with a free port.
mod common;
// The HTTP/1.1 client the end-to-end tests use too (std only).
#[allow(dead_code, reason = "not every helper is used here")]
#[path = "../../../test/e2e/src/http.rs"]
mod http_client;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{assert_contains, check, Bundle, Running, KILL_LIMIT};
use http_client::{get, read_response, send};
use serde_json::json;

/// The `http` fixture's bytes. A missing fixture fails the test: a test
/// that passes without running would hide a broken build.
fn fixture() -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test/fixtures/out/wasip2/http.wasm");
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!(
            "fixture {} is missing ({e}); build it with `make fixtures`",
            path.display()
        ),
    }
}

/// A free port on 127.0.0.1 (free when asked; taken again by the server).
fn free_address() -> SocketAddr {
    let listener = check("bind 127.0.0.1:0", TcpListener::bind("127.0.0.1:0"));
    check("local_addr", listener.local_addr())
}

/// A bundle serving the fixture on a free loopback address, with extra env.
fn server_bundle(wasm: &[u8], env: &[&str]) -> (Bundle, SocketAddr) {
    let address = free_address();
    let mut b = Bundle::new(&["/app.wasm"]);
    b.file("app.wasm", wasm);
    let mut vars = vec![
        "GREETING=hi".to_string(),
        format!("WASISHIM_HTTP_ADDRESS={address}"),
    ];
    vars.extend(env.iter().map(|v| v.to_string()));
    b.config(|c| c["process"]["env"] = json!(vars));
    (b, address)
}

/// Waits until the server accepts connections.
fn wait_listening(address: SocketAddr, running: &Running) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return;
        }
        assert!(
            running.still_running_after(Duration::from_millis(20)),
            "the server exited before listening on {address}"
        );
        assert!(
            Instant::now() < deadline,
            "nothing listens on {address} after 20 s"
        );
    }
}

fn stop(running: &Running) -> u32 {
    check("kill", running.handle.kill(9));
    running.wait(Duration::from_secs(5)).code
}

#[test]
fn serves_requests_with_the_containers_env_and_mounts() {
    let wasm = fixture();
    let data = check("tempdir", tempfile::tempdir());
    check(
        "write hello.txt",
        std::fs::write(data.path().join("hello.txt"), "hello from a mount\n"),
    );
    let (mut b, address) = server_bundle(&wasm, &[]);
    let source = data.path().to_string_lossy().into_owned();
    b.config(|c| {
        c["mounts"] = json!([{"destination": "/data", "type": "bind", "source": source, "options": ["rbind", "ro"]}])
    });
    let running = b.start();
    wait_listening(address, &running);

    let answer = get(address, "/");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from wasm http\n")
    );
    let answer = get(address, "/file");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from a mount\n")
    );
    let answer = get(address, "/env?name=GREETING");
    assert_eq!((answer.status, answer.body.as_str()), (200, "hi"));
    let answer = get(address, "/nope");
    assert_eq!(answer.status, 404);

    // Two requests on one kept-alive connection, the second with a header.
    let mut stream = check("connect", TcpStream::connect(address));
    check(
        "timeout",
        stream.set_read_timeout(Some(Duration::from_secs(20))),
    );
    let mut reader = BufReader::new(check("clone", stream.try_clone()));
    check(
        "write",
        stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"),
    );
    let first = check("first response", read_response(&mut reader));
    assert_eq!(first.status, 200);
    check(
        "write",
        stream.write_all(
            b"GET /echo-header HTTP/1.1\r\nHost: test\r\nx-echo: over keep-alive\r\n\r\n",
        ),
    );
    let second = check("second response", read_response(&mut reader));
    assert_eq!(
        (second.status, second.body.as_str()),
        (200, "over keep-alive")
    );
    drop(reader);
    drop(stream);

    assert_eq!(stop(&running), 137);
    let out = b.stdout();
    assert_contains(&out, &format!("listening on http://{address}"));
    for line in [
        "GET / 200 ",
        "GET /file 200 ",
        "GET /nope 404 ",
        "GET /echo-header 200 ",
    ] {
        assert_contains(&out, line);
    }
}

/// Each request gets a fresh instance: a static counter the handler
/// increments is 1 in every request, also on one kept-alive connection.
#[test]
fn each_request_gets_a_fresh_instance() {
    let wasm = fixture();
    let (b, address) = server_bundle(&wasm, &[]);
    let running = b.start();
    wait_listening(address, &running);
    for _ in 0..3 {
        let answer = get(address, "/count");
        assert_eq!((answer.status, answer.body.as_str()), (200, "1\n"));
    }
    let mut stream = check("connect", TcpStream::connect(address));
    check(
        "timeout",
        stream.set_read_timeout(Some(Duration::from_secs(20))),
    );
    let mut reader = BufReader::new(check("clone", stream.try_clone()));
    for _ in 0..2 {
        check(
            "write",
            stream.write_all(b"GET /count HTTP/1.1\r\nHost: test\r\n\r\n"),
        );
        let answer = check("response", read_response(&mut reader));
        assert_eq!((answer.status, answer.body.as_str()), (200, "1\n"));
    }
    drop(reader);
    drop(stream);
    assert_eq!(stop(&running), 137);
}

#[test]
fn a_trapping_request_gets_500_and_the_server_goes_on() {
    let wasm = fixture();
    let (b, address) = server_bundle(&wasm, &[]);
    let running = b.start();
    wait_listening(address, &running);

    let answer = get(address, "/trap");
    assert_eq!(answer.status, 500, "{}", answer.body);
    let answer = get(address, "/");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from wasm http\n")
    );

    assert_eq!(stop(&running), 137);
    assert_contains(&b.stdout(), "GET /trap 500 ");
    let err = b.stderr();
    assert_contains(&err, "GET /trap failed: wasm trap");
    assert_contains(&err, "trap requested");
}

#[test]
fn requests_run_concurrently() {
    let wasm = fixture();
    let (b, address) = server_bundle(&wasm, &[]);
    let running = b.start();
    wait_listening(address, &running);

    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || get(address, "/slow")))
        .collect();
    for client in clients {
        let answer = match client.join() {
            Ok(answer) => answer,
            Err(_) => panic!("a client thread panicked"),
        };
        assert_eq!((answer.status, answer.body.as_str()), (200, "slow done\n"));
    }
    // Eight one-second requests, one after another, would take 8 s.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "8 slow requests took {took:?}"
    );
    assert_eq!(stop(&running), 137);
}

#[test]
fn bodies_over_the_limit_get_413() {
    let wasm = fixture();
    let (b, address) = server_bundle(&wasm, &["WASISHIM_HTTP_MAX_BODY_BYTES=1024"]);
    let running = b.start();
    wait_listening(address, &running);

    let small = "x".repeat(1000);
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{small}",
        small.len()
    );
    let answer = check("small POST", send(address, request.as_bytes()));
    assert_eq!((answer.status, answer.body.len()), (200, 1000));

    // Refused from its Content-Length, before any body is sent.
    let request = "POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 20000000\r\n\r\n";
    let answer = check("large POST", send(address, request.as_bytes()));
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_contains(&answer.body, "WASISHIM_HTTP_MAX_BODY_BYTES");

    // Chunked: refused while it streams in.
    let chunk = "y".repeat(600);
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = check("chunked POST", send(address, request.as_bytes()));
    assert_eq!(answer.status, 413, "{}", answer.body);

    let answer = get(address, "/");
    assert_eq!(answer.status, 200);
    assert_eq!(stop(&running), 137);
    assert_contains(&b.stdout(), "POST /echo 413 ");
}

#[test]
fn outgoing_requests_work_unless_switched_off() {
    let wasm = fixture();
    for (setting, status, needle) in [
        (None, 200, "hello from wasm http\n"),
        (Some("WASISHIM_HTTP_OUTGOING=off"), 502, "HttpRequestDenied"),
    ] {
        let (b, address) = server_bundle(&wasm, setting.as_slice());
        let running = b.start();
        wait_listening(address, &running);
        // The server fetches its own "/".
        let answer = get(address, &format!("/fetch?url=http://{address}/"));
        assert_eq!(answer.status, status, "{setting:?}: {}", answer.body);
        assert_contains(&answer.body, needle);
        assert_eq!(stop(&running), 137);
    }
}

#[test]
fn the_memory_limit_applies_to_each_request() {
    let wasm = fixture();
    // Room for a request's 2 MiB stack and instance state (125 KiB), not for
    // the fixture's initial memory (over 1 MiB): every instance is refused.
    let (mut b, address) = server_bundle(&wasm, &[]);
    b.config(|c| c["linux"] = json!({"resources": {"memory": {"limit": (2 << 20) + (512 << 10)}}}));
    let running = b.start();
    wait_listening(address, &running);
    let answer = get(address, "/");
    assert_eq!(answer.status, 500);
    assert_eq!(stop(&running), 137);
    assert_contains(&b.stderr(), "GET / failed: out of memory");

    // No room for a stack at all: 503, the request never starts.
    let (mut b, address) = server_bundle(&wasm, &[]);
    b.config(|c| c["linux"] = json!({"resources": {"memory": {"limit": 65536}}}));
    let running = b.start();
    wait_listening(address, &running);
    let answer = get(address, "/");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_contains(&answer.body, "memory");
    assert_eq!(stop(&running), 137);
}

/// Summed over the requests in flight: under a 40 MiB limit, one request
/// holding 24 MiB succeeds, but of two holding 24 MiB at once one is refused
/// (each within the limit, together above it); once they are done, a request
/// gets its 24 MiB again.
#[test]
fn the_memory_limit_is_summed_over_requests() {
    const LIMIT: u64 = 40 << 20;
    let wasm = fixture();
    let (mut b, address) = server_bundle(&wasm, &[]);
    b.config(|c| c["linux"] = json!({"resources": {"memory": {"limit": LIMIT}}}));
    let running = b.start();
    wait_listening(address, &running);

    let alone = get(address, "/hold?mib=24");
    assert_eq!((alone.status, alone.body.as_str()), (200, "held 24 MiB\n"));

    let clients: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get(address, "/hold?mib=24")))
        .collect();
    let mut answers: Vec<(u16, String)> = clients
        .into_iter()
        .map(|client| match client.join() {
            Ok(answer) => (answer.status, answer.body),
            Err(_) => panic!("a client thread panicked"),
        })
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        [
            (200, "held 24 MiB\n".to_string()),
            (500, "cannot allocate 24 MiB\n".to_string())
        ],
        "two requests summing above the limit"
    );

    let again = get(address, "/hold?mib=24");
    assert_eq!((again.status, again.body.as_str()), (200, "held 24 MiB\n"));
    assert_eq!(stop(&running), 137);
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let wasm = fixture();
    let (b, address) = server_bundle(&wasm, &[]);
    let running = b.start();
    wait_listening(address, &running);

    let slow = std::thread::spawn(move || get(address, "/slow"));
    std::thread::sleep(Duration::from_millis(300));
    check("SIGTERM", running.handle.kill(15));
    let status = running.wait(Duration::from_secs(10));
    let answer = match slow.join() {
        Ok(answer) => answer,
        Err(_) => panic!("the client thread panicked"),
    };
    assert_eq!((answer.status, answer.body.as_str()), (200, "slow done\n"));
    assert_eq!(status.code, 0);
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_err(),
        "still accepting connections after SIGTERM"
    );
    assert_contains(&b.stdout(), "GET /slow 200 ");
}

#[test]
fn sigkill_ends_at_once_also_after_sigterm() {
    let wasm = fixture();
    for signals in [&[9][..], &[15, 9][..]] {
        let (b, address) = server_bundle(&wasm, &[]);
        let running = b.start();
        wait_listening(address, &running);
        let slow = std::thread::spawn(move || {
            let request = "GET /slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
            send(address, request.as_bytes()).map(|a| a.status)
        });
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        for &signal in signals {
            check("kill", running.handle.kill(signal));
        }
        let status = running.wait(Duration::from_secs(5));
        let took = start.elapsed();
        assert_eq!(status.code, 137, "{signals:?}");
        assert!(took < KILL_LIMIT, "{signals:?}: took {took:?}");
        let answer = slow.join().ok();
        assert!(
            !matches!(answer, Some(Ok(200))),
            "{signals:?}: the slow request was answered: {answer:?}"
        );
        drop(b);
    }
}

/// With `WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS`, a spinning handler is
/// interrupted at its deadline: the client gets 504 saying why, the
/// container's stderr says which request, the instance's memory is given
/// back, and the server goes on.
#[test]
fn a_request_past_its_deadline_gets_504() {
    let wasm = fixture();
    let (b, address) = server_bundle(&wasm, &["WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS=1"]);
    let running = b.start();
    wait_listening(address, &running);
    let started = Instant::now();
    let request = "GET /spin HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let answer = check("GET /spin", send(address, request.as_bytes()));
    let took = started.elapsed();
    assert_eq!(answer.status, 504, "{answer:?}");
    assert_eq!(
        answer.body,
        "the request took longer than 1 s, this server's limit (WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS): its handler was stopped\n"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert_eq!(running.handle.memory_bytes(), 0, "the instance is gone");
    assert_eq!(get(address, "/").status, 200);
    assert_eq!(stop(&running), 137);
    assert_contains(
        &b.stderr(),
        "GET /spin failed: the request took longer than 1 s (WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS): its instance was interrupted",
    );
    assert_contains(&b.stdout(), "GET /spin 504 ");
}

/// A handler spinning in wasm yields at every epoch tick: other requests
/// are answered meanwhile, SIGTERM waits for it, SIGKILL ends it.
#[test]
fn a_spinning_handler_does_not_block_the_server() {
    let wasm = fixture();
    let (b, address) = server_bundle(&wasm, &[]);
    let running = b.start();
    wait_listening(address, &running);
    let _spinning = std::thread::spawn(move || {
        let request = "GET /spin HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
        send(address, request.as_bytes()).map(|a| a.status)
    });
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(get(address, "/").status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    check("SIGTERM", running.handle.kill(15));
    assert!(
        running.still_running_after(Duration::from_millis(500)),
        "SIGTERM did not wait for the request in flight"
    );
    check("SIGKILL", running.handle.kill(9));
    assert_eq!(running.wait(Duration::from_secs(2)).code, 137);
}

#[test]
fn prepare_checks_http_settings_and_exports() {
    let wasm = fixture();
    let (mut b, _) = server_bundle(&wasm, &[]);
    b.config(|c| c["process"]["env"] = json!(["WASISHIM_HTTP_ADDRESS=localhost:80"]));
    assert_contains(
        &b.prepare_error(),
        "WASISHIM_HTTP_ADDRESS=localhost:80 is not an address to listen on",
    );

    // Naming the handler explicitly works too.
    let (mut b, address) = server_bundle(&wasm, &[]);
    b.config(|c| c["process"]["args"] = json!(["/app.wasm#wasi:http/incoming-handler"]));
    let running = b.start();
    wait_listening(address, &running);
    assert_eq!(get(address, "/").status, 200);
    assert_eq!(stop(&running), 137);

    // A component without the handler cannot be served.
    let b = Bundle::new(&["/app.wat#wasi:http/incoming-handler"]);
    b.file(
        "app.wat",
        r#"(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f"))) (export "f" (func $f)))"#,
    );
    assert_contains(
        &b.prepare_error(),
        "has no export named 'wasi:http/incoming-handler@0.2.x' (exports: f)",
    );
}

#[test]
fn listening_on_a_taken_address_fails_the_container() {
    let wasm = fixture();
    let taken = check("bind", TcpListener::bind("127.0.0.1:0"));
    let address = check("local_addr", taken.local_addr());
    let mut b = Bundle::new(&["/app.wasm"]);
    b.file("app.wasm", &wasm);
    b.config(|c| c["process"]["env"] = json!([format!("WASISHIM_HTTP_ADDRESS={address}")]));
    let status = b.start().wait(Duration::from_secs(20));
    assert_eq!(status.code, 134);
    assert_contains(&b.stderr(), &format!("cannot listen for HTTP on {address}"));
    drop(taken);
}

/// Reads what the server sends on `stream` until it closes it, giving up
/// after `limit`: `None` if it was still open then.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    use std::io::Read;
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        check(
            "timeout",
            stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))),
        );
        match stream.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return None;
                }
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// 200 clients that send half a request header are closed after the header
/// timeout (1 s here), while a normal request meanwhile gets its 200.
#[test]
fn half_sent_headers_are_closed_after_the_header_timeout() {
    let wasm = fixture();
    let (b, address) = server_bundle(&wasm, &["WASISHIM_HTTP_HEADER_TIMEOUT_SECONDS=1"]);
    let running = b.start();
    wait_listening(address, &running);

    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut stream = check("connect", TcpStream::connect(address));
            check("write", stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n"));
            stream
        })
        .collect();
    let answer = get(address, "/");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from wasm http\n")
    );
    // Generous for a loaded machine: the timeout is 1 s.
    for (i, stream) in slow.iter_mut().enumerate() {
        assert!(
            read_until_closed(stream, Duration::from_secs(15)).is_some(),
            "slow client {i} still open"
        );
    }
    let answer = get(address, "/");
    assert_eq!(answer.status, 200);
    assert_eq!(stop(&running), 137);
}

/// An idle keep-alive connection is closed after the idle timeout.
#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let wasm = fixture();
    let (b, address) = server_bundle(
        &wasm,
        &[
            "WASISHIM_HTTP_IDLE_TIMEOUT_SECONDS=1",
            "WASISHIM_HTTP_HEADER_TIMEOUT_SECONDS=60",
        ],
    );
    let running = b.start();
    wait_listening(address, &running);
    let mut idle = check("connect", TcpStream::connect(address));
    let started = Instant::now();
    assert!(
        read_until_closed(&mut idle, Duration::from_secs(15)).is_some(),
        "an idle connection stayed open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout"
    );
    assert_eq!(stop(&running), 137);
}

/// Above the caps on open connections and on requests in flight, clients
/// get 503 with `Retry-After` at once; the server goes on serving.
#[test]
fn connections_and_requests_above_the_caps_get_503() {
    let wasm = fixture();
    let (b, address) = server_bundle(
        &wasm,
        &[
            "WASISHIM_HTTP_MAX_CONNECTIONS=3",
            "WASISHIM_HTTP_MAX_REQUESTS=1",
        ],
    );
    let running = b.start();
    wait_listening(address, &running);

    // One request in flight (it holds 1 MiB for a second): another gets 503.
    let holding = std::thread::spawn(move || get(address, "/hold?mib=1"));
    std::thread::sleep(Duration::from_millis(300));
    let mut second = check("connect", TcpStream::connect(address));
    check(
        "write",
        second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    let refused = read_until_closed(&mut second, Duration::from_secs(10)).unwrap_or_default();
    assert_contains(&refused, "HTTP/1.1 503");
    assert_contains(&refused.to_ascii_lowercase(), "retry-after: 1");
    assert_contains(&refused, "too many requests in flight");
    let held = match holding.join() {
        Ok(answer) => answer,
        Err(_) => panic!("the client thread panicked"),
    };
    assert_eq!((held.status, held.body.as_str()), (200, "held 1 MiB\n"));

    // Three open connections: a fourth is turned away.
    let _open: Vec<TcpStream> = (0..3)
        .map(|_| check("connect", TcpStream::connect(address)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fourth = check("connect", TcpStream::connect(address));
    let refused = read_until_closed(&mut fourth, Duration::from_secs(10)).unwrap_or_default();
    assert_contains(&refused, "HTTP/1.1 503");
    assert_contains(&refused, "retry-after: 1");
    assert_contains(&refused, "too many connections");
    drop(_open);
    // Once they are closed, requests are served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(address, "/");
        if answer.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused: {}",
            answer.status
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stop(&running), 137);
}
