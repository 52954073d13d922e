//! Playing kubelet: containerd's CRI plugin driven through its gRPC API
//! (`runtime.v1`), for instances started with
//! [`PrivateContainerd::start_with_cri`].
//!
//! ```no_run
//! use wasishim_e2e::{cri, PrivateContainerd};
//! let cd = PrivateContainerd::start_with_cri("2.1.9")?;
//! let cri = cri::Client::connect(&cd)?;
//! let image = cri::import(&cd, &wasishim_e2e::fixture_image("hello", "wasip1/hello.wasm")?)?;
//! let pod = cri.run_pod(cri.pod_config("hello"))?;
//! let id = cri.run_container(&pod, cri.container_config("hello", &image))?;
//! let status = cri.wait_exited(&id, std::time::Duration::from_secs(10))?;
//! assert_eq!(status.exit_code, 0);
//! cri.remove_pod(&pod.id)?;
//! cd.assert_no_leaks();
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The client is synchronous: it owns a single-threaded tokio runtime and
//! blocks on each call (each limited to [`CALL_TIMEOUT`]).
//!
//! What the CRI instance differs in, per version:
//! - 1.6 / 1.7 (config version 2): everything under
//!   `[plugins."io.containerd.grpc.v1.cri"]`: `sandbox_image`, `cni.bin_dir`,
//!   `containerd.runtimes.{runc,wasmtime}`, `registry.config_path`.
//! - 2.x (config version 3): the sandbox image is
//!   `[plugins."io.containerd.cri.v1.images".pinned_images] sandbox`; runtimes,
//!   CNI (`bin_dirs`, a list), `restrict_oom_score_adj` and
//!   `netns_mounts_under_state_dir` are in `[plugins."io.containerd.cri.v1.runtime"]`;
//!   only the stream server stays in `io.containerd.grpc.v1.cri`. NRI is on by
//!   default in 2.x, so its socket is moved into the instance's directory.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AttachRequest, ContainerConfig, ContainerMetadata, ContainerState, ContainerStats,
    ContainerStatsFilter, ContainerStatsRequest, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec,
    ImageStatusRequest, KeyValue, LinuxContainerConfig, LinuxContainerResources,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainerStatsRequest,
    ListContainersRequest, ListPodSandboxRequest, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, PodSandboxStatusResponse, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest, VersionResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Image, PrivateContainerd, CRI_NAMESPACE};

/// The runtime handler pods ask for (`runtimeClassName: wasmtime`), mapped to
/// [`crate::runtime`] in the generated config.
pub const HANDLER: &str = "wasmtime";
/// The sandbox ("pause") image. The shim runs sandboxes without a process, so
/// the image only holds a placeholder `/pause`; it is imported at start, so
/// CRI never pulls it.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:wasishim";
/// Name of the CNI network in [`cni_conflist`].
pub const CNI_NETWORK: &str = "wasishim-test";
/// The address `wasishim-static` reports for every pod's `eth0`. Nothing is
/// configured with it and no test ever connects to it.
pub const POD_ADDRESS: &str = "10.88.0.2/16";
/// Binary name of the reporting CNI plugin (package `wasishim-cni-static`).
pub const CNI_PLUGIN: &str = "wasishim-static";
/// How long one CRI call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The CNI network list every CRI instance uses: the standard `loopback`
/// plugin (so `lo` is up in each pod's network namespace), then
/// `wasishim-static`, which reports [`POD_ADDRESS`] on `eth0` because CRI
/// refuses a pod whose result has no address there.
pub fn cni_conflist() -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{CNI_NETWORK}","plugins":[{{"type":"loopback"}},{{"type":"{CNI_PLUGIN}","address":"{POD_ADDRESS}"}}]}}"#
    )
}

/// `wasishim-static`: `WASISHIM_CNI_PLUGIN`, else next to the shim
/// (`<target>/debug/wasishim-static`).
pub fn cni_plugin_path() -> PathBuf {
    match std::env::var_os("WASISHIM_CNI_PLUGIN").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => crate::shim_dir().join(CNI_PLUGIN),
    }
}

/// The `loopback` CNI plugin: `WASISHIM_CNI_LOOPBACK`, else Debian's
/// `/usr/lib/cni/loopback`, else `/opt/cni/bin/loopback`.
pub fn loopback_plugin_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WASISHIM_CNI_LOOPBACK").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let debian = PathBuf::from("/usr/lib/cni/loopback");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("/opt/cni/bin/loopback")
    }
}

/// The sandbox image: a placeholder `/pause` with entrypoint `/pause`.
pub fn pause_image() -> Image {
    Image::new(PAUSE_IMAGE)
        .file(
            "/pause",
            "wasishim runs pod sandboxes without a process; this file is never executed\n",
            0o755,
        )
        .entrypoint(["/pause"])
}

/// Imports `image` into [`CRI_NAMESPACE`], where CRI finds it without a
/// pull; returns its full name.
pub fn import(cd: &PrivateContainerd, image: &Image) -> Result<String> {
    cd.import_in(CRI_NAMESPACE, image)
}

/// Directory of the CNI plugins (symlinks) of the instance.
pub fn cni_bin_dir(cd: &PrivateContainerd) -> PathBuf {
    cd.dir().join("cni/bin")
}

/// Directory of the instance's CNI configuration.
pub fn cni_conf_dir(cd: &PrivateContainerd) -> PathBuf {
    cd.dir().join("cni/net.d")
}

/// Registry host configuration (`certs.d`): registries are sent to
/// `http://127.0.0.1:1`, so an accidental pull fails at once instead of
/// reaching the network (the `harness` scenario checks it).
fn registry_dir(cd: &PrivateContainerd) -> PathBuf {
    cd.dir().join("certs.d")
}

/// Lets the instance pull from the plain-HTTP registry `host` (e.g.
/// `127.0.0.1:5000`, see [`crate::registry`]): a `hosts.toml` in its own
/// directory of the registry config path, read at each pull, so it works on
/// a running instance.
pub fn allow_plain_http_registry(cd: &PrivateContainerd, host: &str) -> Result<()> {
    let dir = registry_dir(cd).join(host);
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
        ),
    )?;
    Ok(())
}

/// Where pods' log directories go: `<dir>/pods/<pod name>`.
pub fn pod_log_root(cd: &PrivateContainerd) -> PathBuf {
    cd.dir().join("pods")
}

/// The cgroup parent of this instance's pods (`/wasishim-e2e-<suffix of the
/// instance directory>`), as kubelet's cgroupfs driver would pass it.
pub fn cgroup_parent(cd: &PrivateContainerd) -> String {
    let name = cd
        .dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("/wasishim-e2e-{}", name.trim_start_matches("wasishim-cd-"))
}

/// Where containerd keeps the task bundles of [`CRI_NAMESPACE`].
pub fn task_state_dir(cd: &PrivateContainerd) -> PathBuf {
    cd.state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(CRI_NAMESPACE)
}

/// Creates the CNI bin and conf directories, the registry redirect and the
/// pods' log root.
pub(crate) fn prepare_dirs(cd: &PrivateContainerd) -> Result<()> {
    let plugin = cni_plugin_path();
    if !plugin.exists() {
        bail!(
            "CNI plugin {} not found: build it with `cargo build -p wasishim-cni-static` \
             (or set WASISHIM_CNI_PLUGIN)",
            plugin.display()
        );
    }
    let loopback = loopback_plugin_path();
    if !loopback.exists() {
        bail!(
            "CNI plugin {} not found: install Debian's containernetworking-plugins \
             (or set WASISHIM_CNI_LOOPBACK)",
            loopback.display()
        );
    }
    let bin = cni_bin_dir(cd);
    fs::create_dir_all(&bin)?;
    std::os::unix::fs::symlink(&loopback, bin.join("loopback"))?;
    std::os::unix::fs::symlink(&plugin, bin.join(CNI_PLUGIN))?;
    let conf = cni_conf_dir(cd);
    fs::create_dir_all(&conf)?;
    fs::write(conf.join("10-wasishim.conflist"), cni_conflist())?;
    // `_default` covers registries without a directory of their own; the
    // ones tests name get their own, to be sure on every version.
    for registry in ["_default", "docker.io", "registry.k8s.io"] {
        let hosts = registry_dir(cd).join(registry);
        fs::create_dir_all(&hosts)?;
        fs::write(
            hosts.join("hosts.toml"),
            // 1.x refuses (and then ignores) a hosts.toml without a host table.
            "# wasishim-e2e: no pulls from the network\n\
             server = \"http://127.0.0.1:1\"\n\
             [host.\"http://127.0.0.1:1\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        )?;
    }
    fs::create_dir_all(pod_log_root(cd))?;
    Ok(())
}

/// The whole config.toml of a CRI instance.
pub(crate) fn config_toml(cd: &PrivateContainerd, config_version: u32) -> String {
    let q = |p: PathBuf| format!("{:?}", p.display().to_string());
    let head = format!(
        r#"# Generated by wasishim-e2e for containerd {version}, with CRI.
version = {config_version}
root = {root}
state = {state}

[grpc]
  address = {address}

[debug]
  level = "debug"
"#,
        version = cd.version(),
        root = q(cd.root_dir()),
        state = q(cd.state_dir()),
        address = q(cd.address()),
    );
    let bin = q(cni_bin_dir(cd));
    let conf = q(cni_conf_dir(cd));
    let registry = q(registry_dir(cd));
    let runtime = crate::runtime();
    let cri = if config_version == 2 {
        format!(
            r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {bin}
    conf_dir = {conf}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{HANDLER}]
    runtime_type = "{runtime}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {registry}
"#
        )
    } else {
        format!(
            r#"
[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = {registry}

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{bin}]
    conf_dir = {conf}
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{HANDLER}]
    runtime_type = "{runtime}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.nri.v1.nri"]
  socket_path = {nri}
"#,
            nri = q(cd.dir().join("nri.sock")),
        )
    };
    head + &cri
}

/// After containerd answers: the CRI plugins must have loaded, the pause
/// image is imported, and the CRI API must answer.
pub(crate) fn after_start(cd: &PrivateContainerd) -> Result<()> {
    let broken = cri_plugin_problems(cd)?;
    if !broken.is_empty() {
        bail!(
            "containerd {}: CRI plugins did not load:\n  {}\nlog:\n{}",
            cd.version(),
            broken.join("\n  "),
            cd.log()
        );
    }
    import(cd, &pause_image()).context("importing the pause image")?;
    let client = Client::connect(cd)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.version() {
            Ok(v) if !v.runtime_api_version.is_empty() => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100))
            }
            Ok(v) => bail!("CRI Version answered without an API version: {v:?}"),
            Err(e) => return Err(e.context(format!("CRI of containerd {}", cd.version()))),
        }
    }
}

/// Lines of `ctr plugins ls` for CRI plugins whose status is not `ok`; fails
/// if there is no CRI plugin at all.
pub fn cri_plugin_problems(cd: &PrivateContainerd) -> Result<Vec<String>> {
    let out = cd.ctr(["plugins", "ls"]);
    if !out.status.success() {
        bail!("ctr plugins ls failed:\n{}", crate::output_text(&out));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cri: Vec<&str> = text
        .lines()
        .filter(|l| {
            let mut cols = l.split_whitespace();
            let typ = cols.next().unwrap_or("");
            let id = cols.next().unwrap_or("");
            id == "cri" || typ.starts_with("io.containerd.cri.")
        })
        .collect();
    if cri.is_empty() {
        bail!("ctr plugins ls shows no CRI plugin:\n{text}");
    }
    Ok(cri
        .into_iter()
        .filter(|l| l.split_whitespace().last() != Some("ok"))
        .map(str::to_string)
        .collect())
}

/// Everything CRI use of the instance left behind (part of
/// [`PrivateContainerd::leaks`]): task bundles and shim sockets in
/// [`CRI_NAMESPACE`], CRI sandbox and container directories, network
/// namespaces, CNI result caches of the noted pods and cgroups under
/// [`cgroup_parent`].
pub(crate) fn leaks(cd: &PrivateContainerd) -> Vec<String> {
    let mut leaks = Vec::new();
    for e in fs::read_dir(task_state_dir(cd))
        .into_iter()
        .flatten()
        .flatten()
    {
        leaks.push(format!("task state dir {}", e.path().display()));
    }
    let pods = cd.noted_pods();
    for pod in &pods {
        let sock = cd.shim_socket_in(CRI_NAMESPACE, pod);
        if sock.exists() {
            leaks.push(format!("shim socket {} of pod {pod}", sock.display()));
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

/// Mount points of every cgroup hierarchy (v1 controllers, or the v2 root).
fn cgroup_roots() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut roots = BTreeSet::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            if let Some(mp) = left.split(' ').nth(4) {
                roots.insert(PathBuf::from(mp));
            }
        }
    }
    roots.into_iter().collect()
}

/// Cgroup directories below `parent` in every hierarchy, deepest first.
fn cgroup_children(parent: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in cgroup_roots() {
        let mut stack = vec![root.join(parent.trim_start_matches('/'))];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(e.path());
                    stack.push(e.path());
                }
            }
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Removes the instance's cgroup parent (and anything below it) from every
/// hierarchy. Used when the instance is dropped.
pub(crate) fn remove_cgroups(cd: &PrivateContainerd) {
    let parent = cgroup_parent(cd);
    for dir in cgroup_children(&parent) {
        if let Err(e) = fs::remove_dir(&dir) {
            eprintln!("wasishim-e2e: removing cgroup {}: {e}", dir.display());
        }
    }
    for root in cgroup_roots() {
        let dir = root.join(parent.trim_start_matches('/'));
        if dir.exists() {
            if let Err(e) = fs::remove_dir(&dir) {
                eprintln!("wasishim-e2e: removing cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// Stops and removes every container and pod through CRI, ignoring errors.
/// Used when the instance is dropped, before the `ctr` cleanup.
pub(crate) fn remove_everything(cd: &PrivateContainerd) {
    let Ok(client) = Client::connect(cd) else {
        return;
    };
    for c in client.list_containers(None).unwrap_or_default() {
        let _ = client.stop_container(&c.id, 0);
        let _ = client.remove_container(&c.id);
    }
    for p in client.list_pods().unwrap_or_default() {
        let _ = client.stop_pod(&p.id);
        let _ = client.remove_pod(&p.id);
    }
}

/// A pod sandbox that [`Client::run_pod`] started.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The sandbox ID.
    pub id: String,
    /// The config it was started with (CreateContainer repeats it).
    pub config: PodSandboxConfig,
    /// Its network namespace, from the sandbox's verbose status.
    pub netns: Option<PathBuf>,
}

impl Pod {
    /// The pod's log directory.
    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from(&self.config.log_directory)
    }
}

/// A synchronous CRI client of one instance.
pub struct Client<'a> {
    cd: &'a PrivateContainerd,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// Turns a gRPC failure into an error whose text starts with the call and
/// carries the server's message (which tests search).
fn status_err(call: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("CRI {call} failed: {} ({:?})", s.message(), s.code())
}

macro_rules! call {
    ($self:ident, $svc:ident, $method:ident, $req:expr) => {{
        let mut svc = $self.$svc.clone();
        let req = $req;
        $self.rt.block_on(async move {
            match tokio::time::timeout(CALL_TIMEOUT, svc.$method(req)).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(status_err(stringify!($method), s)),
                Err(_) => Err(anyhow::anyhow!(
                    "CRI {} took longer than {:?}",
                    stringify!($method),
                    CALL_TIMEOUT
                )),
            }
        })
    }};
}

impl<'a> Client<'a> {
    /// Connects to the instance's socket (no request is sent yet).
    pub fn connect(cd: &'a PrivateContainerd) -> Result<Client<'a>> {
        if !cd.has_cri() {
            bail!("containerd instance was started without CRI (use start_with_cri)");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = cd.address();
        let channel = rt.block_on(async move {
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
        })?;
        Ok(Client {
            cd,
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// `Version`.
    pub fn version(&self) -> Result<VersionResponse> {
        call!(self, runtime, version, VersionRequest::default())
    }

    /// Whether CRI sees `image` (ImageService `ImageStatus`).
    pub fn has_image(&self, image: &str) -> Result<bool> {
        let r = call!(
            self,
            images,
            image_status,
            ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            }
        )?;
        Ok(r.image.is_some())
    }

    /// ImageService `PullImage`; returns the image reference (its id). The
    /// instance sends every registry to `127.0.0.1:1`, so this fails but for
    /// registries allowed by [`allow_plain_http_registry`].
    pub fn pull_image(&self, image: &str) -> Result<String> {
        Ok(call!(
            self,
            images,
            pull_image,
            api::PullImageRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        )?
        .image_ref)
    }

    /// A pod config as kubelet would send it for pod `name` in namespace
    /// `default`: log directory `<dir>/pods/<name>`, cgroup parent
    /// [`cgroup_parent`], pod network namespace, own PID namespace per
    /// container.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let log_dir = pod_log_root(self.cd).join(name);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "default".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_dir.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent(self.cd),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: api::NamespaceMode::Pod as i32,
                        pid: api::NamespaceMode::Container as i32,
                        ipc: api::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `RunPodSandbox` with runtime handler [`HANDLER`]. Notes the pod for
    /// the leak check and records its network namespace.
    pub fn run_pod(&self, config: PodSandboxConfig) -> Result<Pod> {
        fs::create_dir_all(&config.log_directory)?;
        let r = call!(
            self,
            runtime,
            run_pod_sandbox,
            RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: HANDLER.to_string(),
            }
        )?;
        let id = r.pod_sandbox_id;
        self.cd.note_pod(&id);
        let netns = self.pod_netns(&id).ok();
        if let Some(ns) = &netns {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.cd.dir().join("netns-paths"))?;
            writeln!(f, "{}", ns.display())?;
        }
        Ok(Pod { id, config, netns })
    }

    /// `PodSandboxStatus`, verbose (with the `info` map).
    pub fn pod_status(&self, id: &str) -> Result<PodSandboxStatusResponse> {
        call!(
            self,
            runtime,
            pod_sandbox_status,
            PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            }
        )
    }

    /// The pod's network namespace path, from its verbose status: the
    /// sandbox's `runtimeSpec.linux.namespaces` (network), else the
    /// `NetNSPath` CRI records in its metadata.
    pub fn pod_netns(&self, id: &str) -> Result<PathBuf> {
        let status = self.pod_status(id)?;
        let info = status
            .info
            .get("info")
            .context("PodSandboxStatus has no verbose info")?;
        netns_from_info(info)
            .with_context(|| format!("no network namespace in sandbox info {info}"))
    }

    /// `ListPodSandbox` (all pods).
    pub fn list_pods(&self) -> Result<Vec<api::PodSandbox>> {
        Ok(call!(
            self,
            runtime,
            list_pod_sandbox,
            ListPodSandboxRequest::default()
        )?
        .items)
    }

    /// `StopPodSandbox`.
    pub fn stop_pod(&self, id: &str) -> Result<()> {
        call!(
            self,
            runtime,
            stop_pod_sandbox,
            StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }
        )
        .map(drop)
    }

    /// `StopPodSandbox` then `RemovePodSandbox`.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        self.stop_pod(id)?;
        call!(
            self,
            runtime,
            remove_pod_sandbox,
            RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }
        )
        .map(drop)
    }

    /// A container config for `name` from `image`, logging to `<name>.log`
    /// in the pod's log directory. Set `command`/`args`/`envs`/`linux`
    /// on the result as needed (see [`with_args`], [`with_env`],
    /// [`with_resources`]).
    pub fn container_config(&self, name: &str, image: &str) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// `CreateContainer` in `pod`; returns the container ID.
    pub fn create_container(&self, pod: &Pod, config: ContainerConfig) -> Result<String> {
        Ok(call!(
            self,
            runtime,
            create_container,
            CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }
        )?
        .container_id)
    }

    /// The error of a container that must not run: CreateContainer's, or
    /// StartContainer's (the container is then removed). Panics if it starts.
    pub fn refused(&self, pod: &Pod, config: ContainerConfig) -> String {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let err = match self.create_container(pod, config) {
            Err(e) => e,
            Ok(id) => match self.start_container(&id) {
                Err(e) => {
                    self.remove_container(&id).unwrap();
                    e
                }
                Ok(()) => panic!("{name} was started"),
            },
        };
        format!("{err:#}")
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<()> {
        call!(
            self,
            runtime,
            start_container,
            StartContainerRequest {
                container_id: id.to_string(),
            }
        )
        .map(drop)
    }

    /// `CreateContainer` then `StartContainer`; returns the container ID.
    pub fn run_container(&self, pod: &Pod, config: ContainerConfig) -> Result<String> {
        let id = self.create_container(pod, config)?;
        self.start_container(&id)?;
        Ok(id)
    }

    /// `StopContainer` with a grace period of `timeout_secs` (0: SIGKILL at once).
    pub fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        call!(
            self,
            runtime,
            stop_container,
            StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_secs,
            }
        )
        .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        call!(
            self,
            runtime,
            remove_container,
            RemoveContainerRequest {
                container_id: id.to_string(),
            }
        )
        .map(drop)
    }

    /// `ListContainers`, of one pod or all.
    pub fn list_containers(&self, pod: Option<&str>) -> Result<Vec<api::Container>> {
        Ok(call!(
            self,
            runtime,
            list_containers,
            ListContainersRequest {
                filter: pod.map(|p| api::ContainerFilter {
                    pod_sandbox_id: p.to_string(),
                    ..Default::default()
                }),
            }
        )?
        .containers)
    }

    /// `ContainerStatus`.
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        call!(
            self,
            runtime,
            container_status,
            ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }
        )?
        .status
        .with_context(|| format!("ContainerStatus of {id} has no status"))
    }

    /// Polls `ContainerStatus` until the container is in `state`.
    pub fn wait_state(
        &self,
        id: &str,
        state: ContainerState,
        limit: Duration,
    ) -> Result<ContainerStatus> {
        let start = Instant::now();
        loop {
            let status = self.container_status(id)?;
            if status.state == state as i32 {
                return Ok(status);
            }
            if start.elapsed() > limit {
                bail!(
                    "container {id} is {:?}, not {state:?}, after {:?}: {status:?}",
                    ContainerState::try_from(status.state),
                    start.elapsed()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`wait_state`](Self::wait_state) for `CONTAINER_EXITED`.
    pub fn wait_exited(&self, id: &str, limit: Duration) -> Result<ContainerStatus> {
        self.wait_state(id, ContainerState::ContainerExited, limit)
    }

    /// `ContainerStats`.
    pub fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        call!(
            self,
            runtime,
            container_stats,
            ContainerStatsRequest {
                container_id: id.to_string(),
            }
        )?
        .stats
        .with_context(|| format!("ContainerStats of {id} has no stats"))
    }

    /// `ListContainerStats` of one pod.
    pub fn list_container_stats(&self, pod: &str) -> Result<Vec<ContainerStats>> {
        Ok(call!(
            self,
            runtime,
            list_container_stats,
            ListContainerStatsRequest {
                filter: Some(ContainerStatsFilter {
                    pod_sandbox_id: pod.to_string(),
                    ..Default::default()
                }),
            }
        )?
        .stats)
    }

    /// `ExecSync` with a 10 s timeout.
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse> {
        call!(
            self,
            runtime,
            exec_sync,
            ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            }
        )
    }

    /// `Exec` (stdout and stderr, no stdin or tty); returns the streaming URL.
    pub fn exec(&self, id: &str, cmd: &[&str]) -> Result<String> {
        Ok(call!(
            self,
            runtime,
            exec,
            ExecRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            }
        )?
        .url)
    }

    /// `Attach` (stdout and stderr); returns the streaming URL.
    pub fn attach(&self, id: &str) -> Result<String> {
        Ok(call!(
            self,
            runtime,
            attach,
            AttachRequest {
                container_id: id.to_string(),
                stdin: false,
                tty: false,
                stdout: true,
                stderr: true,
            }
        )?
        .url)
    }
}

/// Sets the container's `args` (after the image's entrypoint).
pub fn with_args(mut config: ContainerConfig, args: &[&str]) -> ContainerConfig {
    config.args = args.iter().map(|s| s.to_string()).collect();
    config
}

/// Adds environment variables.
pub fn with_env(mut config: ContainerConfig, env: &[(&str, &str)]) -> ContainerConfig {
    config.envs.extend(env.iter().map(|(k, v)| KeyValue {
        key: k.to_string(),
        value: v.to_string(),
    }));
    config
}

/// Sets `linux.resources`.
pub fn with_resources(
    mut config: ContainerConfig,
    resources: LinuxContainerResources,
) -> ContainerConfig {
    config.linux.get_or_insert_with(Default::default).resources = Some(resources);
    config
}

/// The network namespace path in a sandbox's verbose `info` JSON.
pub fn netns_from_info(info: &str) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    let from_spec = v
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(|n| n.as_array())
        .and_then(|ns| {
            ns.iter().find_map(|n| {
                (n.get("type")?.as_str()? == "network")
                    .then(|| n.get("path")?.as_str().map(PathBuf::from))
                    .flatten()
            })
        });
    from_spec
        .or_else(|| {
            v.pointer("/metadata/NetNSPath")
                .and_then(|p| p.as_str())
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .filter(|p| !p.as_os_str().is_empty())
}

/// One line of a CRI container log: `<RFC 3339 time> <stream> <P|F> <text>`,
/// partial (`P`) lines already joined with their continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The timestamp as written.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line without its newline.
    pub text: String,
}

/// Parses a CRI log file's contents. Fails on a line that is not in the CRI
/// format.
pub fn parse_log(contents: &str) -> Result<Vec<LogLine>> {
    let mut lines = Vec::new();
    let mut partial: HashMap<String, String> = HashMap::new();
    for raw in contents.lines() {
        let mut parts = raw.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("not a CRI log line: {raw:?}");
        };
        let text = parts.next().unwrap_or("");
        if !time.contains('T') || !matches!(stream, "stdout" | "stderr") {
            bail!("not a CRI log line: {raw:?}");
        }
        let pending = partial.entry(stream.to_string()).or_default();
        pending.push_str(text);
        match tag {
            "P" => {}
            "F" => lines.push(LogLine {
                time: time.to_string(),
                stream: stream.to_string(),
                text: std::mem::take(pending),
            }),
            other => bail!("unknown CRI log tag {other:?} in {raw:?}"),
        }
    }
    Ok(lines)
}

/// The stdout lines of the CRI log at `path`, polling up to `limit` until
/// `last` is among them (the log is written asynchronously).
pub fn wait_log_line(path: &Path, last: &str, limit: Duration) -> Result<Vec<String>> {
    let start = Instant::now();
    loop {
        let contents = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = parse_log(&contents)?
            .into_iter()
            .filter(|l| l.stream == "stdout")
            .map(|l| l.text)
            .collect();
        if lines.iter().any(|l| l == last) {
            return Ok(lines);
        }
        if start.elapsed() > limit {
            bail!(
                "no line {last:?} in {} after {limit:?}; contents:\n{contents}",
                path.display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

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
        return Ok(format!("{head}{body}"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_join_partials() {
        let log = "2024-01-01T00:00:00.1Z stdout P hel\n\
                   2024-01-01T00:00:00.2Z stderr F oops\n\
                   2024-01-01T00:00:00.3Z stdout F lo\n\
                   2024-01-01T00:00:00.4Z stdout F \n";
        let lines = parse_log(log).unwrap();
        let texts: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l.stream.as_str(), l.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [("stderr", "oops"), ("stdout", "hello"), ("stdout", "")]
        );
        assert!(parse_log("hello\n").is_err());
    }

    #[test]
    fn netns_from_sandbox_info() {
        let v1 = r#"{"pid":1,"runtimeSpec":{"linux":{"namespaces":[
            {"type":"pid"},{"type":"network","path":"/run/x/netns/cni-1"}]}}}"#;
        assert_eq!(
            netns_from_info(v1),
            Some(PathBuf::from("/run/x/netns/cni-1"))
        );
        let meta = r#"{"metadata":{"NetNSPath":"/var/run/netns/cni-2"}}"#;
        assert_eq!(
            netns_from_info(meta),
            Some(PathBuf::from("/var/run/netns/cni-2"))
        );
        assert_eq!(netns_from_info("{}"), None);
    }

    #[test]
    fn conflist_chains_loopback_then_static() {
        let v: serde_json::Value = serde_json::from_str(&cni_conflist()).unwrap();
        assert_eq!(v["plugins"][0]["type"], "loopback");
        assert_eq!(v["plugins"][1]["type"], CNI_PLUGIN);
        assert_eq!(v["plugins"][1]["address"], POD_ADDRESS);
    }
}
