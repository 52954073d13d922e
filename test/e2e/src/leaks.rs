//! What an instance left behind: shim processes and sockets, per-node
//! server logs, mounts, task bundles, and for CRI instances sandboxes,
//! network namespaces, CNI caches and cgroups. The checks also record what
//! they saw running, so they look for it again once it should be gone.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::containerd::PrivateContainerd;
use crate::cri_config::{self, cgroup_parent, task_state_dir};
use crate::host::{cgroup_children, mounts_under, processes, sockets_under};
use crate::paths::{shim_binary, CRI_NAMESPACE, NAMESPACE, NODE_LOG_DIR};

impl PrivateContainerd {
    /// PIDs of `containerd-shim-wasmtime-v1` processes started for this
    /// instance (their command line names this instance's socket or
    /// directory). Notes the socket of each server among them, which
    /// [`leaks`](Self::leaks) then checks.
    pub fn shim_pids(&self) -> Vec<i32> {
        let dir = self.dir.display().to_string();
        let shims: Vec<(i32, String)> = processes()
            .into_iter()
            .filter(|(pid, cmdline)| {
                *pid != std::process::id() as i32
                    && cmdline.contains(&shim_binary())
                    && cmdline.contains(&dir)
            })
            .collect();
        let mut servers = self.servers.lock().unwrap();
        for (_, cmdline) in &shims {
            let mut args = cmdline.split(' ');
            if let Some(socket) = args.by_ref().skip_while(|a| *a != "-socket").nth(1) {
                servers.insert(PathBuf::from(socket.trim_start_matches("unix://")));
            }
        }
        shims.into_iter().map(|(pid, _)| pid).collect()
    }

    /// The sockets of the shim servers seen running so far (see
    /// [`shim_pids`](Self::shim_pids)).
    pub fn seen_server_sockets(&self) -> Vec<PathBuf> {
        self.servers.lock().unwrap().iter().cloned().collect()
    }

    /// The shim socket path containerd expects for container `id`:
    /// `/run/containerd/s/<sha256 of "<address>/<namespace>/<id>">`.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        let key = format!("{}/{NAMESPACE}/{id}", self.address().display());
        let digest = wasishim_image::digest(key.as_bytes());
        Path::new("/run/containerd/s").join(digest.trim_start_matches("sha256:"))
    }

    /// Everything this instance left behind, one line each: shim processes,
    /// mounts under its directory, task bundles in its state directory (of
    /// every namespace `ctr` was run in), shim sockets of the containers the
    /// harness ran, sockets and per-node logs of the shim servers seen
    /// running, and stray sockets in its directory. Empty when clean.
    pub fn leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        for pid in self.shim_pids() {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            leaks.push(format!("shim process {pid}: {}", cmdline.trim()));
        }
        for m in mounts_under(&self.dir) {
            leaks.push(format!("mount {m}"));
        }
        let namespaces: Vec<String> = self
            .namespaces
            .lock()
            .unwrap()
            .iter()
            .filter(|ns| ns.as_str() != CRI_NAMESPACE)
            .cloned()
            .collect();
        for ns in &namespaces {
            let dir = self
                .state_dir()
                .join("io.containerd.runtime.v2.task")
                .join(ns);
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                leaks.push(format!("task state dir {}", e.path().display()));
            }
        }
        for sock in self.seen_server_sockets() {
            if sock.exists() {
                leaks.push(format!("shim server socket {}", sock.display()));
            }
            if let Some(name) = sock.file_name() {
                let log = Path::new(NODE_LOG_DIR).join(format!("{}.log", name.to_string_lossy()));
                if log.exists() {
                    leaks.push(format!("shim server log {}", log.display()));
                }
            }
        }
        for id in self.ids.lock().unwrap().iter() {
            for ns in &namespaces {
                let sock = self.shim_socket_in(ns, id);
                if sock.exists() {
                    leaks.push(format!("shim socket {} of container {id}", sock.display()));
                }
            }
            // ctr gives each container the cgroup /<namespace>/<id>.
            for hierarchy in ["cpu", "cpuacct", "pids", "memory"] {
                let dir = Path::new("/sys/fs/cgroup")
                    .join(hierarchy)
                    .join(NAMESPACE)
                    .join(id);
                if dir.exists() {
                    leaks.push(format!("cgroup {}", dir.display()));
                }
            }
        }
        // containerd's own: gRPC, ttrpc, and NRI (2.x with CRI, see cri::config_toml).
        let own = [
            self.address(),
            self.dir.join("containerd.sock.ttrpc"),
            self.dir.join("nri.sock"),
        ];
        for sock in sockets_under(&self.dir) {
            if !own.contains(&sock) {
                leaks.push(format!("socket {}", sock.display()));
            }
        }
        if self.cri {
            leaks.extend(cri_leaks(self));
        }
        leaks
    }

    /// Records a pod sandbox ID: [`leaks`](Self::leaks) then also looks for
    /// the pod's shim socket (the shim groups a pod's containers by it).
    /// The [`cri`](crate::cri) helpers do it themselves.
    pub fn note_pod(&self, id: &str) {
        self.pods.lock().unwrap().insert(id.to_string());
    }

    /// The pod sandbox IDs noted so far.
    pub fn noted_pods(&self) -> Vec<String> {
        self.pods.lock().unwrap().iter().cloned().collect()
    }

    /// The shim socket path containerd expects for a task of group `id`
    /// (container or pod sandbox ID) in `namespace`.
    pub fn shim_socket_in(&self, namespace: &str, id: &str) -> PathBuf {
        let key = format!("{}/{namespace}/{id}", self.address().display());
        let digest = wasishim_image::digest(key.as_bytes());
        Path::new("/run/containerd/s").join(digest.trim_start_matches("sha256:"))
    }

    /// Panics unless [`leaks`](Self::leaks) is empty within 5 s (a shim may
    /// take a moment to exit after its last task is deleted).
    pub fn assert_no_leaks(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let leaks = self.leaks();
            if leaks.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "containerd {} instance {} leaked:\n  {}",
                    self.version,
                    self.dir.display(),
                    leaks.join("\n  ")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Shim sockets this instance may have: those of the noted containers
    /// and those named by task bundles' `address` files.
    pub(crate) fn shim_sockets(&self) -> BTreeSet<PathBuf> {
        let mut socks: BTreeSet<PathBuf> = self
            .ids
            .lock()
            .unwrap()
            .iter()
            .map(|id| self.shim_socket(id))
            .collect();
        for pod in self.noted_pods() {
            socks.insert(self.shim_socket_in(CRI_NAMESPACE, &pod));
        }
        let bundles = [self.task_state_dir(), cri_config::task_state_dir(self)]
            .into_iter()
            .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten());
        for e in bundles {
            if let Ok(addr) = fs::read_to_string(e.path().join("address")) {
                let addr = addr.trim();
                socks.insert(PathBuf::from(addr.strip_prefix("unix://").unwrap_or(addr)));
            }
        }
        socks
    }
}

/// Everything CRI use of the instance left behind (part of
/// [`PrivateContainerd::leaks`]): task bundles and shim sockets in
/// [`CRI_NAMESPACE`], CRI sandbox and container directories, network
/// namespaces, CNI result caches and PID namespace inits of the noted pods
/// and cgroups under
/// [`cgroup_parent`].
fn cri_leaks(cd: &PrivateContainerd) -> Vec<String> {
    let mut leaks = Vec::new();
    for e in fs::read_dir(task_state_dir(cd))
        .into_iter()
        .flatten()
        .flatten()
    {
        leaks.push(format!("task state dir {}", e.path().display()));
    }
    let pods = cd.noted_pods();
    let running = processes();
    for pod in &pods {
        let sock = cd.shim_socket_in(CRI_NAMESPACE, pod);
        if sock.exists() {
            leaks.push(format!("shim socket {} of pod {pod}", sock.display()));
        }
        // The init holding a mixed pod's shared PID namespace names its pod.
        let init = format!("--wasishim-pod-init {pod}");
        for (pid, cmdline) in running.iter().filter(|(_, c)| c.contains(&init)) {
            leaks.push(format!("pod init process {pid}: {cmdline}"));
        }
    }
    for base in [cd.root_dir(), cd.state_dir()] {
        for plugin in ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"] {
            for kind in ["sandboxes", "containers"] {
                let dir = base.join(plugin).join(kind);
                for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    leaks.push(format!("CRI {kind} dir {}", e.path().display()));
                }
            }
        }
    }
    for ns in netns_files(cd) {
        leaks.push(format!("network namespace {}", ns.display()));
    }
    for e in fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if pods.iter().any(|p| name.contains(p.as_str())) {
            leaks.push(format!("CNI result cache {}", e.path().display()));
        }
    }
    for dir in cgroup_children(&cgroup_parent(cd)) {
        leaks.push(format!("cgroup {}", dir.display()));
    }
    leaks
}

/// Network namespace files of this instance: those in any `netns` directory
/// under its state directory, and `/var/run/netns` entries named in its pods'
/// sandbox status (recorded by [`Client::run_pod`]).
fn netns_files(cd: &PrivateContainerd) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![cd.state_dir()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if e.file_name() == "netns" {
                    found.extend(
                        fs::read_dir(e.path())
                            .into_iter()
                            .flatten()
                            .flatten()
                            .map(|n| n.path()),
                    );
                } else {
                    stack.push(e.path());
                }
            }
        }
    }
    for path in fs::read_to_string(cd.dir().join("netns-paths"))
        .unwrap_or_default()
        .lines()
    {
        let path = PathBuf::from(path);
        if path.exists() && !found.contains(&path) {
            found.push(path);
        }
    }
    found
}
