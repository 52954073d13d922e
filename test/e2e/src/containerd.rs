//! One private containerd: its directories, its process (start, stop,
//! restart) and its version. Starting an instance with everything it needs
//! is in `lifecycle.rs`; `ctr` calls in `ctr.rs`; leak checks in `leaks.rs`.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command::output_text;
use crate::paths::{NAMESPACE, NODE_IDLE_SECONDS};

/// A containerd of one version with its own root, state, socket and log in
/// a fresh temporary directory.
///
/// Dropping it stops containerd, kills any shim of this instance that is
/// still running, unmounts whatever is mounted under the directory and
/// removes it. If the test is panicking, the tail of the containerd log is
/// printed first.
pub struct PrivateContainerd {
    pub(crate) version: String,
    pub(crate) bin_dir: PathBuf,
    pub(crate) shim_dir: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) child: Mutex<Option<Child>>,
    /// Container IDs used through the harness, for the shim socket check.
    pub(crate) ids: Mutex<BTreeSet<String>>,
    /// Whether the CRI plugin is enabled ([`start_with_cri`](Self::start_with_cri)).
    pub(crate) cri: bool,
    /// Pod sandbox IDs seen through the CRI helpers, for the shim socket check.
    pub(crate) pods: Mutex<BTreeSet<String>>,
    /// Namespaces `ctr` was run in, for the task state and socket checks.
    pub(crate) namespaces: Mutex<BTreeSet<String>>,
    /// Sockets of the shim servers seen running (their `-socket`), for the
    /// socket and per-node log checks once they are gone.
    pub(crate) servers: Mutex<BTreeSet<PathBuf>>,
    /// Variables given to containerd (and so to the shims it starts) at its
    /// next start, on top of this process's environment: `None` removes one.
    pub(crate) env: Mutex<Vec<(String, Option<String>)>>,
}

impl PrivateContainerd {
    /// The containerd version this instance runs, as given to [`start`](Self::start).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Directory of this version's `containerd` and `ctr`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Directory containerd finds the shims in (first on its `PATH`).
    pub fn shim_dir(&self) -> &Path {
        &self.shim_dir
    }

    /// The instance's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's `root` directory.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// containerd's `state` directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The gRPC socket path.
    pub fn address(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Path of the generated config.toml.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Path of the log file (containerd's stdout and stderr, all starts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The containerd log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Where containerd keeps the v2 task bundles of [`NAMESPACE`].
    pub fn task_state_dir(&self) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(NAMESPACE)
    }

    /// The PID of the running containerd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Whether this instance has the CRI plugin enabled.
    pub fn has_cri(&self) -> bool {
        self.cri
    }

    /// PATH for containerd: the shim's directory first, then this version's
    /// binaries, then the system's (for runc).
    fn path_env(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.shim_dir.clone(), self.bin_dir.clone()];
        for d in [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ] {
            dirs.push(PathBuf::from(d));
        }
        std::env::join_paths(dirs).expect("no ':' in PATH entries")
    }

    /// Sets (`Some`) or removes (`None`) variable `key` in containerd's
    /// environment from its next start ([`restart`](Self::restart)) on; the
    /// shims containerd launches from then on inherit it. A per-node server
    /// already running keeps its own.
    pub fn set_env(&self, key: &str, value: Option<&str>) {
        let mut env = self.env.lock().unwrap();
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.map(str::to_string)));
    }

    pub(crate) fn spawn(&self) -> Result<()> {
        let _ = fs::remove_file(self.address());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        writeln!(
            &log,
            "=== wasishim-e2e: starting containerd {}",
            self.version
        )?;
        let mut command = Command::new(self.bin_dir.join("containerd"));
        command
            .arg("--config")
            .arg(self.config_path())
            .env("PATH", self.path_env())
            .env("WASISHIM_NODE_IDLE_SECONDS", NODE_IDLE_SECONDS)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        for (key, value) in self.env.lock().unwrap().iter() {
            match value {
                Some(v) => command.env(key, v),
                None => command.env_remove(key),
            };
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}/containerd", self.bin_dir.display()))?;
        *self.child.lock().unwrap() = Some(child);

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "containerd {} exited at start ({status}); log:\n{}",
                    self.version,
                    self.log()
                );
            }
            if self.address().exists() {
                let out = self.ctr_timeout(["version"], Duration::from_secs(5));
                if out.status.success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd {} did not answer within 20 s; log:\n{}",
                    self.version,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops containerd: SIGTERM, then SIGKILL after 10 s. Shims keep running,
    /// as they would in production. Idempotent.
    pub fn stop(&self) -> Result<()> {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                child.wait()?;
                bail!("containerd {} ignored SIGTERM for 10 s", self.version);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops containerd gracefully and starts it again on the same
    /// directories and socket; running shims are reconnected by containerd.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// The server version `ctr version` reports (e.g. `1.7.24~ds1`).
    pub fn server_version(&self) -> Result<String> {
        let out = self.ctr(["version"]);
        if !out.status.success() {
            bail!("ctr version failed:\n{}", output_text(&out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let server = text
            .split("Server:")
            .nth(1)
            .context("ctr version printed no Server section")?;
        server
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))
            .map(|v| v.trim().to_string())
            .context("ctr version printed no server version")
    }
}
