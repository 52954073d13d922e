//! A small HTTP/1.1 client for tests: a request per connection, responses
//! read by `Content-Length`, chunked encoding or until close.
//!
//! The engine's tests (`crates/engine/tests/http.rs`) include this file with
//! `#[path]`, as they cannot depend on this crate; so it uses only `std`.
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How long a client waits for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for a response (a `/slow` one takes 1 s).
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a server may take to listen after its container's start.
pub const LISTEN_LIMIT: Duration = Duration::from_secs(20);

/// A port of 127.0.0.1 free a moment ago, for a server the test starts.
pub fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener
        .local_addr()
        .expect("the address of a bound socket")
}

/// Waits until something accepts connections on `address`; panics after
/// [`LISTEN_LIMIT`].
pub fn wait_listening(address: SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < LISTEN_LIMIT,
            "nothing listens on {address} after {LISTEN_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP response: status and body.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or until close).
pub fn read_response(reader: &mut impl BufRead) -> std::io::Result<Answer> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|e| std::io::Error::other(format!("bad chunk size {size:?}: {e}")))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Sends `request` (a whole HTTP/1.1 request) on a new connection and reads
/// the response.
pub fn send(address: SocketAddr, request: &[u8]) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.write_all(request)?;
    read_response(&mut BufReader::new(stream))
}

/// `GET path` on a new connection, with extra header lines (each ending in
/// `\r\n`).
pub fn get_with(address: SocketAddr, path: &str, headers: &str) -> std::io::Result<Answer> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n");
    send(address, request.as_bytes())
}

/// `GET path`; panics, naming the request, if it fails.
pub fn get(address: SocketAddr, path: &str) -> Answer {
    get_with(address, path, "").unwrap_or_else(|e| panic!("GET {path} on {address}: {e}"))
}
