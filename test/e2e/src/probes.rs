//! Reaching into a pod from the test: a thread in the pod's network
//! namespace, a TCP read, and WebSocket clients of CRI's streaming server.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs `f` on a new thread that has joined the network namespace at
/// `netns` (so loopback there is the pod's), and returns its result.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file = fs::File::open(netns)
        .with_context(|| format!("opening network namespace {}", netns.display()))?;
    let handle = thread::spawn(move || -> Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the pod's network namespace")?;
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("thread in the pod's network namespace panicked"))?
}

/// Connects to `addr` (loopback only) and reads until the peer closes,
/// retrying refused connections until `limit`.
pub fn read_from(addr: SocketAddr, limit: Duration) -> std::io::Result<String> {
    assert!(addr.ip().is_loopback(), "tests only connect to loopback");
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut buf = String::new();
                s.read_to_string(&mut buf)?;
                return Ok(buf);
            }
            Err(e) if start.elapsed() < limit => {
                let _ = e;
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens a CRI streaming URL (from [`Client::exec`] or [`Client::attach`])
/// as kubectl would, over WebSocket with protocol `v4.channel.k8s.io`, and
/// returns everything the server sent as text: the HTTP answer when it
/// refuses the upgrade, else the frames' payloads (channel byte dropped,
/// one line per frame, prefixed `[channel]`). The URL must be on loopback.
pub fn stream_probe(url: &str, limit: Duration) -> Result<String> {
    let mut s = match upgrade(url, limit)? {
        Upgraded::Refused(answer) => return Ok(answer),
        Upgraded::Stream(s) => s,
    };
    let mut out = String::new();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let mut h = [0u8; 2];
        if s.read_exact(&mut h).is_err() {
            break;
        }
        let opcode = h[0] & 0x0f;
        let mut len = (h[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload)?;
        if opcode == 8 {
            break;
        }
        if let Some((channel, data)) = payload.split_first() {
            if !data.is_empty() {
                out.push_str(&format!("[{channel}] {}\n", String::from_utf8_lossy(data)));
            }
        }
    }
    Ok(out)
}

/// Opens a CRI streaming URL as [`stream_probe`] does, sends `stdin` on
/// channel 0 and closes the connection, which ends the stream's stdin (as
/// `echo ... | kubectl attach -i` does). Fails with the server's answer if
/// it refuses the upgrade.
pub fn stream_stdin(url: &str, stdin: &[u8], limit: Duration) -> Result<()> {
    let mut s = match upgrade(url, limit)? {
        Upgraded::Refused(answer) => bail!("{url} refused the stream: {answer}"),
        Upgraded::Stream(s) => s,
    };
    let mut payload = vec![0u8];
    payload.extend_from_slice(stdin);
    s.write_all(&client_frame(0x2, &payload))?;
    // A close frame, then the end of the connection.
    s.write_all(&client_frame(0x8, &1000u16.to_be_bytes()))?;
    s.flush()?;
    let _ = s.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// A final WebSocket frame from a client (clients mask their payloads).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x09];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

enum Upgraded {
    /// The server's whole HTTP answer.
    Refused(String),
    Stream(TcpStream),
}

/// Connects to a loopback streaming URL and asks for a WebSocket with
/// protocol `v4.channel.k8s.io`; reads wait at most `limit`.
fn upgrade(url: &str, limit: Duration) -> Result<Upgraded> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("unexpected streaming URL {url}"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("streaming URL host {host} is not IP:port"))?;
    if !addr.ip().is_loopback() {
        bail!("streaming URL {url} is not on loopback; not connecting");
    }
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(limit))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: d2FzaXNoaW0tZTJlLXRlc3Q=\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        return Ok(Upgraded::Refused(format!("{head}{body}")));
    }
    Ok(Upgraded::Stream(s))
}
