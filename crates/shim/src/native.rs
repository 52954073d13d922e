//! Native containers: a container whose entrypoint is a Linux executable
//! (ELF, `#!` script) runs under runc instead of the engine, so one runtime
//! handler serves pods that mix Wasm and Linux containers.
//!
//! containerd hands the shim a full OCI bundle with the rootfs mounted, so
//! runc runs nearly the same spec. Two things change, in a copy of
//! config.json under `<bundle>/runc/` (containerd's own file is untouched):
//! `root.path` is made absolute, and the namespaces. A CRI container names
//! its sandbox's namespaces by the sandbox's pid, which in this shim is the
//! shim itself: joining them would put the container in the host's PID, IPC,
//! UTS or mount namespace. The network entry is pointed at the pod's pinned
//! network namespace, the one Wasm guests join; IPC, UTS and (when CRI asks
//! for a shared one) PID entries at the pod's own, which
//! [`crate::pod_namespaces`] makes at the first native container that names
//! them; any other entry naming a namespace the shim is in becomes a new
//! namespace.
//!
//! The container then goes through the same lifecycle as a Wasm guest (it
//! is a [`Guest`]); its init's exit comes from [`crate::reaper`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio as ChildStdio;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use wasishim_engine::ExitStatus;

use crate::cgroups::Hierarchies;
use crate::native_records::{self, Record};
use crate::pod_namespaces::PodNamespaces;
use crate::process::{Guest, GuestRequest, OnExit, RunningGuest};
use crate::reaper;
use crate::runc::Runc;

/// A created native container: what `delete` must undo, and its init's pid.
pub trait NativeTask: Send + Sync {
    /// The container's init process, as the host sees it.
    fn pid(&self) -> u32;
    /// Kills what still runs and removes the container's runc state and
    /// cgroup. Blocking.
    fn delete(&self) -> Result<()>;
    /// Starts `process` (OCI process JSON) in the container with `stdio`
    /// (containerd's paths, empty: none); `on_exit` gets its exit code once.
    /// Returns its pid. Blocking.
    fn exec(
        &self,
        exec_id: &str,
        process: &[u8],
        stdio: &[String; 3],
        on_exit: Box<dyn FnOnce(u32) + Send>,
    ) -> Result<u32>;
}

/// A native container made ready by `create`.
pub struct NativePrepared {
    pub guest: Box<dyn Guest>,
    pub task: Arc<dyn NativeTask>,
}

/// Creates native containers: runc in the binaries, a stub in unit tests.
pub trait Natives: Send + Sync {
    /// `None` when the request's entrypoint is not a Linux executable (the
    /// engine takes it); otherwise the container, created. Blocking.
    fn prepare(&self, request: &GuestRequest<'_>) -> Result<Option<NativePrepared>>;
    /// Pod sandbox `sandbox_id` was created, with `hostname` (its spec's):
    /// its native containers will share its namespaces.
    fn sandbox_created(&self, _namespace: &str, _sandbox_id: &str, _hostname: Option<String>) {}
    /// Pod sandbox `sandbox_id` was deleted: what its containers shared goes.
    fn sandbox_deleted(&self, _namespace: &str, _sandbox_id: &str) {}
}

/// No native containers: every entrypoint goes to the engine.
pub struct NoNatives;

impl Natives for NoNatives {
    fn prepare(&self, _request: &GuestRequest<'_>) -> Result<Option<NativePrepared>> {
        Ok(None)
    }
}

/// Native containers run by runc.
#[derive(Default)]
pub struct RuncNatives {
    pods: PodNamespaces,
}

impl Natives for RuncNatives {
    fn sandbox_created(&self, namespace: &str, sandbox_id: &str, hostname: Option<String>) {
        self.pods.sandbox_created(namespace, sandbox_id, hostname);
    }

    fn sandbox_deleted(&self, namespace: &str, sandbox_id: &str) {
        self.pods.sandbox_deleted(namespace, sandbox_id);
    }

    fn prepare(&self, request: &GuestRequest<'_>) -> Result<Option<NativePrepared>> {
        let bundle = request.bundle;
        let Some(kind) = wasishim_engine::linux_executable(bundle) else {
            return Ok(None);
        };
        let id = &request.key.id;
        log::info!("container {id}: entrypoint is {kind}: running it with runc");
        let dir = bundle.dir.join("runc");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        let config = std::fs::read(bundle.dir.join("config.json"))
            .context("cannot read the bundle's config.json")?;
        let config: Value =
            serde_json::from_slice(&config).context("invalid config.json in the bundle")?;
        let shared = |kind: &str| match bundle.sandbox_id() {
            Some(sandbox_id) => self.pods.shared(&request.key.namespace, sandbox_id, kind),
            None => Ok(None),
        };
        let config = runc_spec(
            config,
            &bundle.rootfs,
            request.network.as_deref(),
            &names_own_namespace,
            &shared,
        )?;
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&config)?)
            .context("cannot write runc's config.json")?;
        let stdio = [
            open_input(request.stdio.stdin.as_deref())?,
            open_output(request.stdio.stdout.as_deref())?,
            open_output(request.stdio.stderr.as_deref())?,
        ];
        let runc = Runc::new(&request.key.namespace);
        let cgroup = request.cgroup.as_ref().map(|c| c.path().to_path_buf());
        // Recorded before runc makes anything: a shim killed from here on
        // leaves a record for the cleanup (see native_records).
        let record = native_records::write(
            &native_records::group_bundle(&bundle.dir, bundle.sandbox_id()),
            &Record {
                id: id.clone(),
                namespace: request.key.namespace.clone(),
                cgroup: cgroup.clone(),
                dir: Some(dir.clone()),
            },
        )?;
        let pid_file = dir.join("init.pid");
        let created = runc
            .create(id, &dir, &pid_file, stdio, &dir.join("log.json"))
            .with_context(|| format!("cannot create native container {id} ({kind})"));
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        let pid = match (created, pid) {
            (Ok(()), Some(pid)) => pid,
            (created, _) => {
                // runc may have left state even when it failed.
                if runc.state_exists(id) {
                    if let Err(err) = runc.delete_force(id) {
                        log::warn!("native container {id}: {err:#}");
                    }
                }
                native_records::remove(&record);
                created?;
                bail!(
                    "runc created container {id} but wrote no pid to {}",
                    pid_file.display()
                );
            }
        };
        let native = Arc::new(Native {
            runc,
            id: id.clone(),
            pid,
            dir,
            cgroup,
            record,
        });
        Ok(Some(NativePrepared {
            guest: Box::new(NativeGuest(native.clone())),
            task: native,
        }))
    }
}

/// One container created by runc.
struct Native {
    runc: Runc,
    id: String,
    pid: u32,
    /// `<bundle>/runc`: the spec runc runs, its pid file and log.
    dir: PathBuf,
    /// The container's cgroup below each hierarchy's root, where its OOM
    /// kills are counted.
    cgroup: Option<PathBuf>,
    /// Its record for the cleanup after a dead shim.
    record: PathBuf,
}

impl NativeTask for Native {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn delete(&self) -> Result<()> {
        self.runc.delete_force(&self.id)?;
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            log::warn!("cannot remove {}: {err}", self.dir.display());
        }
        native_records::remove(&self.record);
        Ok(())
    }

    fn exec(
        &self,
        exec_id: &str,
        process: &[u8],
        stdio: &[String; 3],
        on_exit: Box<dyn FnOnce(u32) + Send>,
    ) -> Result<u32> {
        if exec_id.contains('/') || exec_id.starts_with('.') {
            bail!("exec id {exec_id:?} is not a plain name");
        }
        let spec: Value = serde_json::from_slice(process).context("invalid exec process spec")?;
        if spec["terminal"].as_bool() == Some(true) {
            bail!("a terminal (tty) is not supported: exec without -t");
        }
        let spec_file = self.dir.join(format!("exec-{exec_id}.json"));
        let pid_file = self.dir.join(format!("exec-{exec_id}.pid"));
        std::fs::write(&spec_file, process).context("cannot write the exec process spec")?;
        let path = |p: &String| (!p.is_empty()).then(|| PathBuf::from(p));
        let stdio = [
            open_input(path(&stdio[0]).as_deref())?,
            open_output(path(&stdio[1]).as_deref())?,
            open_output(path(&stdio[2]).as_deref())?,
        ];
        let result = self.runc.exec(
            &self.id,
            &spec_file,
            &pid_file,
            stdio,
            &self.dir.join("log.json"),
        );
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        let _ = std::fs::remove_file(&spec_file);
        let _ = std::fs::remove_file(&pid_file);
        result?;
        let Some(pid) = pid else {
            bail!("runc exec wrote no pid");
        };
        reaper::watch(pid as i32, on_exit);
        Ok(pid)
    }
}

/// After the shim died: kills and removes native container `id` of `bundle`,
/// if it was one; failures are logged (containerd's cleanup goes on).
pub fn delete_orphan(bundle: &Path, namespace: &str, id: &str) {
    let dir = bundle.join("runc");
    if !dir.exists() {
        return;
    }
    if let Err(err) = Runc::new(namespace).delete_force(id) {
        log::warn!("native container {id}: {err:#}");
    }
    if let Err(err) = std::fs::remove_dir_all(&dir) {
        log::warn!("cannot remove {}: {err}", dir.display());
    }
}

struct NativeGuest(Arc<Native>);

impl Guest for NativeGuest {
    fn start(self: Box<Self>, on_exit: OnExit) -> Result<Arc<dyn RunningGuest>> {
        let native = self.0;
        // Watched before the start: an init that ends at once is not missed.
        let cgroup = native.cgroup.clone();
        reaper::watch(native.pid as i32, move |code| {
            let mut status = ExitStatus::now(code);
            // Killed by SIGKILL with an OOM kill counted: the kernel's doing.
            status.oom_killed =
                code == 137 && cgroup.is_some_and(|path| Hierarchies::detect().oom_killed(&path));
            on_exit(status)
        });
        native.runc.start(&native.id)?;
        Ok(Arc::new(NativeRunning(native)))
    }

    /// None: the container's cgroup enforces the spec's limit, which Stats
    /// report as it is.
    fn memory_limit(&self) -> Option<u64> {
        None
    }
}

struct NativeRunning(Arc<Native>);

impl RunningGuest for NativeRunning {
    /// As `runc kill` does, a kill(2) of the init, through the reaper so a
    /// pid already collected is never signalled; without a runc process,
    /// so the request does not wait.
    fn kill(&self, signal: u32) -> Result<()> {
        reaper::signal(self.0.pid as i32, signal)
            .with_context(|| format!("cannot signal container {}", self.0.id))
    }

    fn close_stdin(&self) {
        // The container holds its stdin itself; the shim keeps no copy.
    }

    fn thread_id(&self) -> Option<i32> {
        None
    }

    fn memory_bytes(&self) -> u64 {
        0
    }
}

/// The name of namespace type `kind` under /proc/<pid>/ns.
fn proc_ns_name(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "pid" => "pid",
        "ipc" => "ipc",
        "uts" => "uts",
        "mount" => "mnt",
        "network" => "net",
        "cgroup" => "cgroup",
        "user" => "user",
        "time" => "time",
        _ => return None,
    })
}

/// Whether `path` names the namespace of type `kind` this shim is in.
fn names_own_namespace(kind: &str, path: &Path) -> Result<bool> {
    let Some(name) = proc_ns_name(kind) else {
        return Ok(false);
    };
    let target = std::fs::metadata(path)
        .with_context(|| format!("cannot open the {kind} namespace {}", path.display()))?;
    let own = std::fs::metadata(format!("/proc/self/ns/{name}"))
        .with_context(|| format!("cannot read the shim's own {kind} namespace"))?;
    Ok((target.dev(), target.ino()) == (own.dev(), own.ino()))
}

/// The spec runc runs: `config` with an absolute `root.path`, the network
/// namespace at `network` when the pod has one, and no entry joining a
/// namespace `is_own` says the shim itself is in: such an entry joins the
/// pod's namespace of its kind that `shared` gives, else a new one.
fn runc_spec(
    mut config: Value,
    rootfs: &Path,
    network: Option<&Path>,
    is_own: &dyn Fn(&str, &Path) -> Result<bool>,
    shared: &dyn Fn(&str) -> Result<Option<PathBuf>>,
) -> Result<Value> {
    config["root"]["path"] = Value::String(rootfs.display().to_string());
    let Some(namespaces) = config
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    else {
        return Ok(config);
    };
    for entry in namespaces.iter_mut() {
        let kind = entry["type"].as_str().unwrap_or_default().to_string();
        if kind == "network" {
            if let Some(network) = network {
                entry["path"] = Value::String(network.display().to_string());
                continue;
            }
        }
        let Some(path) = entry.get("path").and_then(Value::as_str).map(PathBuf::from) else {
            continue;
        };
        if is_own(&kind, &path)? {
            if kind == "network" {
                bail!("the container would join the host's network namespace {}: it belongs to no pod network this shim hosts", path.display());
            }
            // The pod's, or a new one, instead of the host's (see the
            // module doc).
            match shared(&kind)? {
                Some(pod) => entry["path"] = Value::String(pod.display().to_string()),
                None => {
                    if let Some(entry) = entry.as_object_mut() {
                        entry.remove("path");
                    }
                }
            }
        }
    }
    Ok(config)
}

/// The container's stdin: the FIFO or file, read-only, blocking as a
/// process expects; none is /dev/null.
fn open_input(path: Option<&Path>) -> Result<ChildStdio> {
    let Some(path) = path else {
        return Ok(ChildStdio::null());
    };
    // Opened without blocking on a FIFO that has no writer yet, then made
    // blocking for the container.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open the container's stdin {}", path.display()))?;
    set_blocking(&file)?;
    Ok(file.into())
}

/// The container's stdout or stderr: a FIFO is opened read-write, which
/// never blocks, as runc's shim does; a file is appended to.
fn open_output(path: Option<&Path>) -> Result<ChildStdio> {
    let Some(path) = path else {
        return Ok(ChildStdio::null());
    };
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the container's output {}", path.display()))?;
    Ok(file.into())
}

fn set_blocking(file: &File) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot set up the container's stdin");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [
                {"type": "pid", "path": "/proc/42/ns/pid"},
                {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "uts", "path": "/proc/42/ns/uts"},
                {"type": "mount"},
                {"type": "network", "path": "/proc/42/ns/net"},
            ]}
        })
    }

    fn no_pod(_: &str) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    #[test]
    fn never_joins_the_shims_own_namespaces() {
        let own = |_: &str, path: &Path| Ok(path.starts_with("/proc/42"));
        let out = runc_spec(
            spec(),
            Path::new("/b/rootfs"),
            Some(Path::new("/var/run/netns/cni-1")),
            &own,
            &no_pod,
        )
        .unwrap();
        assert_eq!(out["root"]["path"], "/b/rootfs");
        assert_eq!(
            out["linux"]["namespaces"],
            json!([
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/cni-1"},
            ])
        );
    }

    #[test]
    fn joins_the_pods_shared_namespaces() {
        let own = |_: &str, path: &Path| Ok(path.starts_with("/proc/42"));
        let asked = std::sync::Mutex::new(Vec::new());
        let pod = |kind: &str| {
            asked.lock().unwrap().push(kind.to_string());
            Ok((kind != "pid").then(|| PathBuf::from(format!("/proc/7/fd/{kind}"))))
        };
        let mut config = spec();
        // PID mode CONTAINER: no path, and the pod is not asked for one.
        config["linux"]["namespaces"][0] = json!({"type": "pid"});
        let out = runc_spec(
            config,
            Path::new("/r"),
            Some(Path::new("/var/run/netns/cni-1")),
            &own,
            &pod,
        )
        .unwrap();
        assert_eq!(
            out["linux"]["namespaces"],
            json!([
                {"type": "pid"},
                {"type": "ipc", "path": "/proc/7/fd/ipc"},
                {"type": "uts", "path": "/proc/7/fd/uts"},
                {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/cni-1"},
            ])
        );
        assert_eq!(*asked.lock().unwrap(), ["ipc", "uts"]);
        // PID mode POD: the pod's PID namespace.
        let shared_pid = |kind: &str| Ok(Some(PathBuf::from(format!("/proc/9/ns/{kind}"))));
        let out = runc_spec(
            spec(),
            Path::new("/r"),
            Some(Path::new("/var/run/netns/cni-1")),
            &own,
            &shared_pid,
        )
        .unwrap();
        assert_eq!(
            out["linux"]["namespaces"][0],
            json!({"type": "pid", "path": "/proc/9/ns/pid"})
        );
    }

    #[test]
    fn keeps_other_namespaces_and_refuses_the_hosts_network() {
        let none = |_: &str, _: &Path| Ok(false);
        let out = runc_spec(spec(), Path::new("/r"), None, &none, &no_pod).unwrap();
        assert_eq!(out["linux"]["namespaces"][0]["path"], "/proc/42/ns/pid");
        let all = |_: &str, _: &Path| Ok(true);
        let err = runc_spec(spec(), Path::new("/r"), None, &all, &no_pod).unwrap_err();
        assert!(err.to_string().contains("host's network"), "{err}");
    }
}
