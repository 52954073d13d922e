//! Test bundles: a temp directory with config.json and a rootfs holding a
//! guest written by the test (WAT, so no wasm toolchain is needed).
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use wasishim_engine::{ExitStatus, Stdio, WasmEngine, Workload, WorkloadHandle, WorkloadSpec};

/// The engine shared by a test binary. Its disk cache is off so that tests
/// never write to the node's cache directory; tests/cache.rs covers it.
pub fn engine() -> &'static WasmEngine {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    ENGINE.get_or_init(|| match WasmEngine::with_cache_dir(None) {
        Ok(e) => e,
        Err(e) => panic!("WasmEngine::new failed: {e:#}"),
    })
}

pub struct Bundle {
    pub dir: PathBuf,
    config: Value,
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn check<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

impl Bundle {
    /// A bundle whose process runs `args` (args[0] is the entrypoint).
    pub fn new(args: &[&str]) -> Bundle {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wasishim-engine-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        check("create rootfs", std::fs::create_dir_all(dir.join("rootfs")));
        for f in ["stdin", "stdout", "stderr"] {
            check("create stdio file", std::fs::write(dir.join(f), b""));
        }
        let config = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/", "env": ["GREETING=hi"]},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        });
        Bundle { dir, config }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Writes a file into the rootfs, creating parent directories.
    pub fn file(&self, path: &str, bytes: impl AsRef<[u8]>) -> &Bundle {
        let host = self.rootfs().join(path.trim_start_matches('/'));
        if let Some(parent) = host.parent() {
            check("create parent", std::fs::create_dir_all(parent));
        }
        check("write rootfs file", std::fs::write(host, bytes));
        self
    }

    /// Changes config.json: `f` gets the JSON to edit.
    pub fn config(&mut self, f: impl FnOnce(&mut Value)) -> &mut Bundle {
        f(&mut self.config);
        self
    }

    pub fn spec(&self) -> WorkloadSpec {
        check(
            "write config.json",
            std::fs::write(self.dir.join("config.json"), self.config.to_string()),
        );
        match WorkloadSpec::from_bundle(&self.dir) {
            Ok(s) => s,
            Err(e) => panic!("from_bundle: {e:#}"),
        }
    }

    pub fn stdio(&self) -> Stdio {
        Stdio {
            stdin: Some(self.dir.join("stdin")),
            stdout: Some(self.dir.join("stdout")),
            stderr: Some(self.dir.join("stderr")),
        }
    }

    pub fn prepare(&self) -> anyhow::Result<Workload> {
        engine().prepare(self.spec(), self.stdio())
    }

    /// The message of a failing prepare.
    pub fn prepare_error(&self) -> String {
        match self.prepare() {
            Ok(_) => panic!("prepare succeeded, expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    pub fn start(&self) -> Running {
        let workload = match self.prepare() {
            Ok(w) => w,
            Err(e) => panic!("prepare: {e:#}"),
        };
        start(workload)
    }

    /// Runs to the end (at most 10 s) and returns the exit code.
    pub fn run(&self) -> u32 {
        self.start().wait(Duration::from_secs(10)).code
    }

    pub fn stdout(&self) -> String {
        check(
            "read stdout",
            std::fs::read_to_string(self.dir.join("stdout")),
        )
    }

    pub fn stderr(&self) -> String {
        check(
            "read stderr",
            std::fs::read_to_string(self.dir.join("stderr")),
        )
    }
}

/// How soon after a terminating signal a guest must have ended, also in a
/// tight loop. The README's "about 10 ms" is `make bench`'s figure; this is
/// that with the margin a loaded 2-core CI machine needs, still far below
/// the 1 s a guest that ignored the signal until a timer fired would take.
pub const KILL_LIMIT: Duration = Duration::from_millis(200);

pub struct Running {
    pub handle: WorkloadHandle,
    exited: mpsc::Receiver<ExitStatus>,
}

pub fn start(workload: Workload) -> Running {
    let (tx, exited) = mpsc::channel();
    let handle = match workload.start(move |status| {
        let _ = tx.send(status);
    }) {
        Ok(h) => h,
        Err(e) => panic!("start: {e:#}"),
    };
    Running { handle, exited }
}

impl Running {
    pub fn wait(&self, timeout: Duration) -> ExitStatus {
        match self.exited.recv_timeout(timeout) {
            Ok(s) => s,
            Err(e) => panic!("guest did not exit within {timeout:?}: {e}"),
        }
    }

    /// Sends `signal` and waits for the exit, which must come within
    /// [`KILL_LIMIT`] of the signal; returns the exit code.
    pub fn kill_and_wait(&self, signal: i32) -> u32 {
        let killed_at = std::time::Instant::now();
        check("kill", self.handle.kill(signal));
        let status = self.wait(Duration::from_secs(5));
        let took = killed_at.elapsed();
        assert!(
            took < KILL_LIMIT,
            "signal {signal} took {took:?} to end the guest (limit {KILL_LIMIT:?})"
        );
        status.code
    }

    /// Whether the guest is still running after `d`.
    pub fn still_running_after(&self, d: Duration) -> bool {
        self.exited.recv_timeout(d).is_err()
    }
}

pub fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}
