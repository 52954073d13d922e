//! A real Redis server for the key-value tests (Debian's `redis-server`).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::http::{free_address, wait_listening};

/// A redis-server on a free port of 127.0.0.1, nothing saved; killed on drop.
pub struct Redis {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
}

impl Redis {
    /// Starts one; panics if it cannot (test/install-deps.sh installs it).
    pub fn start() -> Redis {
        let address = free_address();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &address.port().to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server (test/install-deps.sh installs it): {e}"));
        wait_listening(address);
        Redis { child, address }
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address)
    }

    /// `GET key` straight from the server: what the shim wrote where.
    pub fn get(&self, key: &str) -> Option<String> {
        let mut stream = TcpStream::connect(self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let command = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
        stream.write_all(command.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = stream.read(&mut buf).unwrap();
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply).to_string();
            if text.starts_with("$-1\r\n") {
                return None;
            }
            if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) {
                let len: usize = len.parse().unwrap();
                if rest.len() >= len + 2 {
                    return Some(rest[..len].to_string());
                }
            }
            assert!(n > 0, "Redis closed: {text}");
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
