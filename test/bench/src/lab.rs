//! The benchmark's containerd: a [`PrivateContainerd`] plus `ctr` calls that
//! are timed exactly (the harness's own helpers poll every 10 ms), a CPU
//! accounting cgroup around containerd, and cleanup of the bench namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasishim_e2e::{output_text, Image, PrivateContainerd};

/// Namespace of every container the benchmark runs. ctr puts each container
/// in the cgroup `/<namespace>/<id>`, so all container CPU time is charged to
/// `cpuacct:/wasishim-bench` too.
pub const NAMESPACE: &str = "wasishim-bench";
/// Per-pod shim.
pub const POD: &str = "io.containerd.wasmtime.v1";
/// Per-node shim.
pub const NODE: &str = "io.containerd.wasmtimed.v1";
/// The baseline.
pub const RUNC: &str = "io.containerd.runc.v2";

/// cgroup v1 cpuacct hierarchy.
const CPUACCT: &str = "/sys/fs/cgroup/cpuacct";

pub struct Lab {
    pub cd: PrivateContainerd,
    /// cpuacct cgroup holding containerd and everything it starts (shims,
    /// runc, and ctr's short-lived shim `start`/`delete` calls).
    daemon_cgroup: PathBuf,
}

/// CPU time counters at one moment, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// containerd, shims, runc (the daemon cgroup).
    pub daemon: u64,
    /// Container cgroups (`/wasishim-bench/*`): guest threads, container processes.
    pub containers: u64,
    /// Reaped children of this process: the `ctr` commands.
    pub ctr: u64,
}

impl CpuSample {
    pub fn since(&self, before: &CpuSample) -> CpuSample {
        CpuSample {
            daemon: self.daemon - before.daemon,
            containers: self.containers.saturating_sub(before.containers),
            ctr: self.ctr - before.ctr,
        }
    }
}

impl Lab {
    /// Starts containerd `version` and moves it into a fresh cpuacct cgroup
    /// before anything else runs, so every shim it launches is accounted there.
    pub fn start(version: &str) -> Result<Lab> {
        let cd = PrivateContainerd::start(version)?;
        let daemon_cgroup =
            Path::new(CPUACCT).join(format!("wasishim-bench-{}", std::process::id()));
        fs::create_dir_all(&daemon_cgroup).with_context(|| {
            format!(
                "creating {} (cgroup v1 cpuacct is needed)",
                daemon_cgroup.display()
            )
        })?;
        let pid = cd.pid().context("containerd is not running")?;
        fs::write(daemon_cgroup.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving containerd into {}", daemon_cgroup.display()))?;
        fs::create_dir_all(Path::new(CPUACCT).join(NAMESPACE))?;
        Ok(Lab { cd, daemon_cgroup })
    }

    /// Restarts containerd with variable `key` set (`Some`) or removed
    /// (`None`) in its environment, which the shims it starts from then on
    /// inherit, and puts it back into the accounting cgroup. A per-node
    /// server already running keeps its own environment: stop it first.
    pub fn restart_with_env(&self, key: &str, value: Option<&str>) -> Result<()> {
        self.cd.set_env(key, value);
        self.cd.restart()?;
        let pid = self.cd.pid().context("containerd is not running")?;
        fs::write(self.daemon_cgroup.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving containerd into {}", self.daemon_cgroup.display()))
    }

    pub fn cpu(&self) -> CpuSample {
        CpuSample {
            daemon: read_u64(&self.daemon_cgroup.join("cpuacct.usage")),
            containers: read_u64(&Path::new(CPUACCT).join(NAMESPACE).join("cpuacct.usage")),
            ctr: children_cpu_ns(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.cd.dir()
    }

    /// `ctr --address ... --namespace wasishim-bench ARGS`, not yet run.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.cd.bin_dir().join("ctr"));
        cmd.arg("--address")
            .arg(self.cd.address())
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs ctr to completion; (output, wall time of the process).
    pub fn ctr(&self, args: &[&str]) -> Result<(Output, Duration)> {
        let mut cmd = self.ctr_cmd(args);
        let start = Instant::now();
        let out = cmd.output().context("running ctr")?;
        Ok((out, start.elapsed()))
    }

    /// Runs ctr and fails unless it succeeds.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<(Output, Duration)> {
        let (out, t) = self.ctr(args)?;
        if !out.status.success() {
            bail!("ctr {} failed:\n{}", args.join(" "), output_text(&out));
        }
        Ok((out, t))
    }

    /// `ctr run --rm --runtime RT IMAGE ID ARGS`: wall time; fails unless it
    /// exits 0 and prints `expect`.
    pub fn run_rm(
        &self,
        rt: &str,
        image: &str,
        id: &str,
        args: &[&str],
        expect: &str,
    ) -> Result<(Output, Duration)> {
        let mut a = vec!["run", "--rm", "--runtime", rt, image, id];
        a.extend_from_slice(args);
        let (out, t) = self.ctr_ok(&a)?;
        if !String::from_utf8_lossy(&out.stdout).contains(expect) {
            bail!(
                "ctr run {id} did not print {expect:?}:\n{}",
                output_text(&out)
            );
        }
        Ok((out, t))
    }

    /// `ctr run -d --runtime RT IMAGE ID ARGS`.
    pub fn run_detached(&self, rt: &str, image: &str, id: &str, args: &[&str]) -> Result<Duration> {
        let mut a = vec!["run", "-d", "--runtime", rt, image, id];
        a.extend_from_slice(args);
        Ok(self.ctr_ok(&a)?.1)
    }

    /// Kills (SIGKILL) and deletes task `id`, then removes the container.
    pub fn remove(&self, id: &str) -> Result<()> {
        let (out, _) = self.ctr(&["task", "delete", "--force", id])?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !err.contains("not found") {
            bail!("ctr task delete --force {id}:\n{}", output_text(&out));
        }
        self.ctr_ok(&["containers", "rm", id])?;
        Ok(())
    }

    /// Removes `ids` with `workers` threads.
    pub fn remove_all(&self, ids: &[String], workers: usize) -> Result<()> {
        parallel(ids, workers, |id| self.remove(id))
    }

    /// Writes `image` into the instance and imports it into the bench namespace.
    pub fn import(&self, image: &Image) -> Result<String> {
        self.cd.import_in(NAMESPACE, image)
    }

    /// Every container left in the bench namespace, removed.
    pub fn clean(&self) {
        if let Ok((out, _)) = self.ctr(&["containers", "ls", "-q"]) {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            if let Err(e) = self.remove_all(&ids, 4) {
                eprintln!("wasishim-bench: cleanup: {e:#}");
            }
        }
    }

    /// PIDs of the server processes of shim `binary` of this instance
    /// (their command line names the instance's directory), without the
    /// short-lived `start`/`delete` invocations.
    pub fn shim_pids(&self, binary: &str) -> Vec<i32> {
        let dir = self.dir().display().to_string();
        wasishim_e2e::processes()
            .into_iter()
            .filter(|(_, cmd)| {
                let argv0 = cmd.split(' ').next().unwrap_or("");
                argv0.ends_with(binary)
                    && cmd.contains(&dir)
                    && !cmd.split(' ').any(|a| a == "start" || a == "delete")
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Waits until no server of `binary` runs (e.g. the per-node server's
    /// idle linger is over).
    pub fn wait_no_shim(&self, binary: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !self.shim_pids(binary).is_empty() {
            if Instant::now() > deadline {
                bail!("{binary} still running after {limit:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.clean();
        let _ = self.cd.stop();
        // Processes of a removed cgroup must be gone; containerd is stopped,
        // and shims that outlive it keep the directory busy, so retry briefly.
        for _ in 0..50 {
            if fs::remove_dir(&self.daemon_cgroup).is_ok() || !self.daemon_cgroup.exists() {
                break;
            }
            let _ = fs::read_to_string(self.daemon_cgroup.join("cgroup.procs")).map(|procs| {
                for pid in procs.lines() {
                    let _ = fs::write(Path::new(CPUACCT).join("cgroup.procs"), pid);
                }
            });
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `f` on every item with `workers` threads; the first error wins.
pub fn parallel<T: Sync, F>(items: &[T], workers: usize, f: F) -> Result<()>
where
    F: Fn(&T) -> Result<()> + Sync,
{
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errors = std::sync::Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                if let Err(e) = f(item) {
                    errors.lock().unwrap().push(e);
                }
            });
        }
    });
    match errors.into_inner().unwrap().into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// user+sys CPU time of reaped children, in nanoseconds.
fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Proportional set size of `pid` in KiB (`Pss:` of smaps_rollup); 0 if gone.
pub fn pss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
