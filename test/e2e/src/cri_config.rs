//! How a CRI instance is configured: the runtime handler, the sandbox
//! image, CNI plugins and network, the registry redirect, log and cgroup
//! locations, and the config.toml of each containerd version.
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

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Result};
use k8s_cri::v1::{ContainerConfig, KeyValue, LinuxContainerResources, PodSandboxConfig};
use wasishim_image::Image;

use crate::command::output_text;
use crate::containerd::PrivateContainerd;
use crate::paths::{runtime, shim_dir, CRI_NAMESPACE};

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
        None => shim_dir().join(CNI_PLUGIN),
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
/// pull; returns its full name once CRI knows it. CRI's image store learns
/// of an import through an event, a moment later: a create right after the
/// import was refused with "not found" on 2.1.9. An image CRI never takes
/// (some artifacts on 1.6) is returned after [`CRI_IMAGE_WAIT`].
pub fn import(cd: &PrivateContainerd, image: &Image) -> Result<String> {
    let name = cd.import_in(CRI_NAMESPACE, image)?;
    let Ok(cri) = crate::cri::Client::connect(cd) else {
        return Ok(name);
    };
    let start = std::time::Instant::now();
    while !cri.has_image(&name).unwrap_or(false) && start.elapsed() < CRI_IMAGE_WAIT {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(name)
}

/// How long [`import`] waits for CRI to see an imported image.
const CRI_IMAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
    let runtime = runtime();
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

/// Lines of `ctr plugins ls` for CRI plugins whose status is not `ok`; fails
/// if there is no CRI plugin at all.
pub fn cri_plugin_problems(cd: &PrivateContainerd) -> Result<Vec<String>> {
    let out = cd.ctr(["plugins", "ls"]);
    if !out.status.success() {
        bail!("ctr plugins ls failed:\n{}", output_text(&out));
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

/// A pod config whose containers share one PID namespace, as kubelet asks
/// for `shareProcessNamespace: true`.
pub fn with_shared_pid(mut config: PodSandboxConfig) -> PodSandboxConfig {
    let options = config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default);
    options.pid = k8s_cri::v1::NamespaceMode::Pod as i32;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_chains_loopback_then_static() {
        let v: serde_json::Value = serde_json::from_str(&cni_conflist()).unwrap();
        assert_eq!(v["plugins"][0]["type"], "loopback");
        assert_eq!(v["plugins"][1]["type"], CNI_PLUGIN);
        assert_eq!(v["plugins"][1]["address"], POD_ADDRESS);
    }
}
