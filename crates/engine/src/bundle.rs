//! An OCI bundle's `config.json`, read once into one typed value.
//!
//! This is the only place in wasishim that parses `config.json`: the engine
//! takes what runs the guest from it ([`WorkloadSpec::from_loaded`]), the shim
//! what places and accounts it (user, capabilities, cgroup, limits,
//! annotations). Each field keeps the spec's meaning; defaults and filters
//! (e.g. a non-positive limit is no limit) are decided here, once.
//!
//! [`WorkloadSpec::from_loaded`]: crate::WorkloadSpec::from_loaded
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Annotation CRI sets on every container of a pod: the pod sandbox's id.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's annotation naming the Kubernetes namespace of a container's pod.
pub const SANDBOX_NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";
/// Annotation CRI sets to `sandbox` on a pod sandbox, `container` otherwise.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Everything wasishim reads from a bundle's `config.json`.
///
/// Built by [`Bundle::load`] (reads the file) or [`Bundle::from_spec`]. It
/// holds no validation beyond what any container needs (readable JSON, bind
/// mounts with a source, UTF-8 `process.cwd`): a pod sandbox has no args, so
/// "args are required" is decided by [`WorkloadSpec::from_loaded`].
///
/// [`WorkloadSpec::from_loaded`]: crate::WorkloadSpec::from_loaded
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The bundle directory (holding `config.json`).
    pub dir: PathBuf,
    /// Host path of the root filesystem: `root.path` anchored at `dir` when
    /// relative; `<dir>/rootfs` when the spec has no `root`.
    pub rootfs: PathBuf,
    /// `root.readonly` (false when absent).
    pub readonly_rootfs: bool,
    /// Whether the spec has a `process` at all (a spec without one can only
    /// be refused, and says so differently from one with empty args).
    pub has_process: bool,
    /// `process.args` as written; empty when absent.
    pub args: Vec<String>,
    /// `process.env` split at the first `=`; entries without `=` are dropped,
    /// as runc does.
    pub env: Vec<(String, String)>,
    /// `process.cwd`, made absolute; `/` when empty or absent.
    pub cwd: String,
    /// `process.terminal` (false when absent).
    pub terminal: bool,
    /// `process.user`; all zero when there is no `process`.
    pub user: User,
    /// `process.capabilities`; every set empty when absent.
    pub capabilities: Capabilities,
    /// `process.noNewPrivileges` (false when absent).
    pub no_new_privileges: bool,
    /// Bind mounts (`type: bind` or a `bind`/`rbind` option), in spec order,
    /// sources anchored at `dir` when relative. Other mounts (proc, sysfs,
    /// tmpfs, ...) mean nothing to a WASI guest and are left out.
    pub mounts: Vec<Mount>,
    /// `linux.resources`, non-positive values dropped.
    pub resources: Resources,
    /// `linux.cgroupsPath`; `None` when absent or empty.
    pub cgroups_path: Option<String>,
    /// The network namespace the guest's sockets live in.
    pub network: NetworkNamespace,
    /// The `path` of the `network` entry of `linux.namespaces`, as written,
    /// when it has a non-empty one (the shim maps a sandbox's
    /// `/proc/<pid>/ns/net` back to the pod's namespace).
    pub network_path: Option<PathBuf>,
    /// `annotations` (empty when absent).
    pub annotations: BTreeMap<String, String>,
    /// `hostname`; `None` when absent or empty (a pod sandbox's is the
    /// pod's hostname).
    pub hostname: Option<String>,
}

/// `process.user`: who the process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// `uid`.
    pub uid: u32,
    /// `gid`.
    pub gid: u32,
    /// `additionalGids` (empty when absent).
    pub additional_gids: Vec<u32>,
    /// `umask`, `None` when absent.
    pub umask: Option<u32>,
}

/// `process.capabilities`: each set as sorted names like `CAP_CHOWN`; a set
/// absent from the spec is empty (no capability), as runc treats it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `effective`.
    pub effective: Vec<String>,
    /// `bounding`.
    pub bounding: Vec<String>,
    /// `permitted`.
    pub permitted: Vec<String>,
    /// `inheritable`.
    pub inheritable: Vec<String>,
    /// `ambient`.
    pub ambient: Vec<String>,
}

/// `linux.resources` limits wasishim enforces; each `None` when absent or
/// not positive (the spec's way of saying "no limit").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `memory.limit` in bytes: caps the guest's linear memories, and is the
    /// limit Stats reports.
    pub memory_limit: Option<u64>,
    /// `cpu.quota` in microseconds per `cpu_period`.
    pub cpu_quota: Option<i64>,
    /// `cpu.period` in microseconds.
    pub cpu_period: Option<u64>,
    /// `cpu.shares` (relative weight).
    pub cpu_shares: Option<u64>,
    /// `pids.limit`.
    pub pids_limit: Option<i64>,
}

/// A bind mount the guest sees as a preopened directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host directory.
    pub source: PathBuf,
    /// Absolute path inside the guest.
    pub destination: String,
    /// Whether the guest may only read under `destination` (the `ro` option).
    pub readonly: bool,
}

/// Where a guest's sockets live, from the spec's `linux.namespaces`.
///
/// Joined (or created) by the guest's own thread before it runs, so guests
/// of different pods in one process each see their own network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkNamespace {
    /// No network namespace in the spec: the host's network (`--net-host`).
    Host,
    /// A network namespace without a path: a new, empty one, as runc makes.
    New,
    /// Join the namespace at this path (a CRI pod's, pinned by containerd).
    Join(PathBuf),
}

impl Bundle {
    /// Reads and parses `<dir>/config.json`.
    ///
    /// Reads one small file; does not look at the rootfs.
    ///
    /// # Errors
    ///
    /// "invalid config.json in bundle <dir>: ..." when the file is missing,
    /// unreadable or not a valid OCI runtime spec; otherwise as
    /// [`Bundle::from_spec`].
    pub fn load(dir: &Path) -> Result<Bundle> {
        let bytes = std::fs::read(dir.join("config.json"))
            .with_context(|| format!("invalid config.json in bundle {}", dir.display()))?;
        Bundle::from_json(&bytes, dir)
    }

    /// Parses the bytes of a `config.json` as [`Bundle::load`] does, for a
    /// bundle at `dir`. No I/O.
    ///
    /// # Errors
    ///
    /// "invalid config.json in bundle <dir>: ..." when `bytes` are not a
    /// valid OCI runtime spec; otherwise as [`Bundle::from_spec`].
    pub fn from_json(bytes: &[u8], dir: &Path) -> Result<Bundle> {
        let spec = serde_json::from_slice::<Spec>(bytes)
            .with_context(|| format!("invalid config.json in bundle {}", dir.display()))?;
        Bundle::from_spec(&spec, dir)
    }

    /// Translates an already parsed spec. `dir` anchors a relative
    /// `root.path` and relative mount sources. No I/O.
    ///
    /// # Errors
    ///
    /// Fails if a bind mount has no source, or `process.cwd` is not UTF-8.
    pub fn from_spec(spec: &Spec, dir: &Path) -> Result<Bundle> {
        let process = spec.process().as_ref();
        let cwd = match process.map(|p| p.cwd().to_str()) {
            None | Some(Some("")) => "/".to_string(),
            Some(Some(cwd)) if cwd.starts_with('/') => cwd.to_string(),
            Some(Some(cwd)) => format!("/{cwd}"),
            Some(None) => bail!(
                "process.cwd {:?} is not valid UTF-8, which WASI requires",
                process.map(|p| p.cwd())
            ),
        };
        let env = process
            .and_then(|p| p.env().as_ref())
            .into_iter()
            .flatten()
            // An entry without '=' has no value to pass; runc drops it too.
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let user = process
            .map(|p| {
                let u = p.user();
                User {
                    uid: u.uid(),
                    gid: u.gid(),
                    additional_gids: u.additional_gids().clone().unwrap_or_default(),
                    umask: u.umask(),
                }
            })
            .unwrap_or_default();
        let capabilities = process
            .and_then(|p| p.capabilities().as_ref())
            .map(|c| Capabilities {
                effective: capability_names(c.effective()),
                bounding: capability_names(c.bounding()),
                permitted: capability_names(c.permitted()),
                inheritable: capability_names(c.inheritable()),
                ambient: capability_names(c.ambient()),
            })
            .unwrap_or_default();

        let (rootfs, readonly_rootfs) = match spec.root() {
            Some(root) => (dir.join(root.path()), root.readonly().unwrap_or(false)),
            None => (dir.join("rootfs"), false),
        };

        let linux = spec.linux().as_ref();
        let resources = linux.and_then(|l| l.resources().as_ref());
        let memory = resources.and_then(|r| r.memory().as_ref());
        let cpu = resources.and_then(|r| r.cpu().as_ref());
        let resources = Resources {
            memory_limit: memory
                .and_then(|m| m.limit())
                .and_then(|limit| u64::try_from(limit).ok())
                .filter(|&limit| limit > 0),
            cpu_quota: cpu.and_then(|c| c.quota()).filter(|&q| q > 0),
            cpu_period: cpu.and_then(|c| c.period()).filter(|&p| p > 0),
            cpu_shares: cpu.and_then(|c| c.shares()).filter(|&s| s > 0),
            pids_limit: resources
                .and_then(|r| r.pids().as_ref())
                .map(|p| p.limit())
                .filter(|&l| l > 0),
        };
        let cgroups_path = linux
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty());

        let network_entry = linux
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|namespaces| {
                namespaces
                    .iter()
                    .find(|n| n.typ() == LinuxNamespaceType::Network)
            });
        let network_path = network_entry
            .and_then(|n| n.path().clone())
            .filter(|path| !path.as_os_str().is_empty());
        let network = match (network_entry, &network_path) {
            (None, _) => NetworkNamespace::Host,
            (Some(_), None) => NetworkNamespace::New,
            (Some(_), Some(path)) => NetworkNamespace::Join(path.clone()),
        };

        Ok(Bundle {
            dir: dir.to_path_buf(),
            rootfs,
            readonly_rootfs,
            has_process: process.is_some(),
            args: process.and_then(|p| p.args().clone()).unwrap_or_default(),
            env,
            cwd,
            terminal: process.and_then(|p| p.terminal()) == Some(true),
            user,
            capabilities,
            no_new_privileges: process.and_then(|p| p.no_new_privileges()) == Some(true),
            mounts: bind_mounts(spec, dir)?,
            resources,
            cgroups_path,
            network,
            network_path,
            annotations: spec
                .annotations()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        })
    }

    /// The pod sandbox's id (annotation `io.kubernetes.cri.sandbox-id`), if
    /// the container belongs to a CRI pod and the id is not empty.
    pub fn sandbox_id(&self) -> Option<&str> {
        self.annotations
            .get(SANDBOX_ID_ANNOTATION)
            .map(String::as_str)
            .filter(|id| !id.is_empty())
    }

    /// The Kubernetes namespace of the container's pod (annotation
    /// `io.kubernetes.cri.sandbox-namespace`), if any and not empty.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.annotations
            .get(SANDBOX_NAMESPACE_ANNOTATION)
            .map(String::as_str)
            .filter(|ns| !ns.is_empty())
    }

    /// Whether the bundle is a CRI pod sandbox (annotation
    /// `io.kubernetes.cri.container-type` is `sandbox`).
    pub fn is_sandbox(&self) -> bool {
        self.annotations
            .get(CONTAINER_TYPE_ANNOTATION)
            .is_some_and(|t| t == "sandbox")
    }
}

/// A capability set's names (`CAP_CHOWN`, ...), sorted; empty when absent.
fn capability_names(set: &Option<oci_spec::runtime::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> = set
        .iter()
        .flatten()
        // The serde name is the spec's spelling, with the CAP_ prefix.
        .filter_map(|cap| match serde_json::to_value(cap) {
            Ok(serde_json::Value::String(name)) => Some(name),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// The spec's bind mounts, in order.
fn bind_mounts(spec: &Spec, dir: &Path) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let options = m.options().as_deref().unwrap_or_default();
        let is_bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            continue;
        }
        let destination = m.destination().to_string_lossy();
        let destination = if destination.starts_with('/') {
            destination.into_owned()
        } else {
            format!("/{destination}")
        };
        let Some(source) = m.source() else {
            bail!("bind mount at {destination} has no source: set the host directory to mount");
        };
        mounts.push(Mount {
            source: dir.join(source),
            destination,
            readonly: options.iter().any(|o| o == "ro"),
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(json: &str) -> Bundle {
        let spec: Spec = match serde_json::from_str(json) {
            Ok(s) => s,
            Err(e) => panic!("test spec does not parse: {e}\n{json}"),
        };
        match Bundle::from_spec(&spec, Path::new("/bundles/c1")) {
            Ok(b) => b,
            Err(e) => panic!("from_spec failed: {e:#}"),
        }
    }

    const PROCESS: &str = r#""process":{"user":{"uid":0,"gid":0},"args":["/a.wasm"],"cwd":"/"}"#;

    #[test]
    fn a_bare_spec_has_defaults() {
        let b = bundle(r#"{"ociVersion":"1.0.2"}"#);
        assert_eq!(b.dir, Path::new("/bundles/c1"));
        assert_eq!(b.rootfs, Path::new("/bundles/c1/rootfs"));
        assert!(!b.readonly_rootfs && !b.has_process && !b.terminal && !b.no_new_privileges);
        assert!(b.args.is_empty() && b.env.is_empty() && b.mounts.is_empty());
        assert_eq!(b.cwd, "/");
        assert_eq!(b.user, User::default());
        assert_eq!(b.capabilities, Capabilities::default());
        assert_eq!(b.resources, Resources::default());
        assert_eq!(b.cgroups_path, None);
        assert_eq!(b.network, NetworkNamespace::Host);
        assert_eq!(b.network_path, None);
        assert!(b.annotations.is_empty());
        assert_eq!(b.sandbox_id(), None);
        assert!(!b.is_sandbox());
    }

    #[test]
    fn process_user_and_capabilities() {
        let b = bundle(
            r#"{"ociVersion":"1.0.2","process":{
                "user":{"uid":1000,"gid":100,"additionalGids":[4,27],"umask":18},
                "args":["/a.wasm","x"],"cwd":"srv","terminal":true,"noNewPrivileges":true,
                "env":["A=1","B=x=y","NOVALUE"],
                "capabilities":{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_NET_BIND_SERVICE"]}}}"#,
        );
        assert!(b.has_process && b.terminal && b.no_new_privileges);
        assert_eq!(b.args, ["/a.wasm", "x"]);
        assert_eq!(b.cwd, "/srv");
        assert_eq!(
            b.env,
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string())
            ]
        );
        assert_eq!(
            b.user,
            User {
                uid: 1000,
                gid: 100,
                additional_gids: vec![4, 27],
                umask: Some(18)
            }
        );
        assert_eq!(b.capabilities.bounding, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(b.capabilities.effective, ["CAP_NET_BIND_SERVICE"]);
        assert!(b.capabilities.permitted.is_empty());
        assert!(b.capabilities.inheritable.is_empty());
        assert!(b.capabilities.ambient.is_empty());
    }

    #[test]
    fn resources_drop_non_positive_values() {
        let b = bundle(&format!(
            r#"{{"ociVersion":"1.0.2",{PROCESS},"linux":{{"cgroupsPath":"/pods/p1/c1",
                "resources":{{"memory":{{"limit":67108864}},
                  "cpu":{{"quota":50000,"period":100000,"shares":512}},"pids":{{"limit":64}}}}}}}}"#
        ));
        assert_eq!(
            b.resources,
            Resources {
                memory_limit: Some(64 << 20),
                cpu_quota: Some(50000),
                cpu_period: Some(100000),
                cpu_shares: Some(512),
                pids_limit: Some(64),
            }
        );
        assert_eq!(b.cgroups_path.as_deref(), Some("/pods/p1/c1"));
        let b = bundle(&format!(
            r#"{{"ociVersion":"1.0.2",{PROCESS},"linux":{{"cgroupsPath":"",
                "resources":{{"memory":{{"limit":-1}},
                  "cpu":{{"quota":-1,"period":0,"shares":0}},"pids":{{"limit":0}}}}}}}}"#
        ));
        assert_eq!(b.resources, Resources::default());
        assert_eq!(b.cgroups_path, None);
    }

    #[test]
    fn annotations_tell_sandboxes_and_pods() {
        let b = bundle(
            r#"{"ociVersion":"1.0.2","annotations":{
                "io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"abc"}}"#,
        );
        assert!(b.is_sandbox());
        assert_eq!(b.sandbox_id(), Some("abc"));
        let b = bundle(
            r#"{"ociVersion":"1.0.2","annotations":{
                "io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":""}}"#,
        );
        assert!(!b.is_sandbox());
        assert_eq!(b.sandbox_id(), None);
    }

    #[test]
    fn network_namespace() {
        let with = |namespaces: &str| {
            bundle(&format!(
                r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":{namespaces}}}}}"#
            ))
        };
        let b = with(r#"[{"type":"pid"}]"#);
        assert_eq!((b.network, b.network_path), (NetworkNamespace::Host, None));
        let b = with(r#"[{"type":"network"}]"#);
        assert_eq!((b.network, b.network_path), (NetworkNamespace::New, None));
        let b = with(r#"[{"type":"network","path":""}]"#);
        assert_eq!((b.network, b.network_path), (NetworkNamespace::New, None));
        let b = with(r#"[{"type":"network","path":"/proc/7/ns/net"}]"#);
        assert_eq!(
            b.network,
            NetworkNamespace::Join(PathBuf::from("/proc/7/ns/net"))
        );
        assert_eq!(b.network_path, Some(PathBuf::from("/proc/7/ns/net")));
    }

    #[test]
    fn root_path_relative_and_absolute() {
        let b = bundle(r#"{"ociVersion":"1.0.2","root":{"path":"fs","readonly":true}}"#);
        assert_eq!(b.rootfs, Path::new("/bundles/c1/fs"));
        assert!(b.readonly_rootfs);
        let b = bundle(r#"{"ociVersion":"1.0.2","root":{"path":"/var/lib/snap/1/fs"}}"#);
        assert_eq!(b.rootfs, Path::new("/var/lib/snap/1/fs"));
        assert!(!b.readonly_rootfs);
    }

    #[test]
    fn bind_mount_without_source_is_refused() {
        let spec: Spec = match serde_json::from_str(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"data","type":"bind"}]}"#,
        ) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        match Bundle::from_spec(&spec, Path::new("/b")) {
            Ok(b) => panic!("accepted: {b:?}"),
            Err(e) => assert_eq!(
                e.to_string(),
                "bind mount at /data has no source: set the host directory to mount"
            ),
        }
    }

    #[test]
    fn from_json_is_load_without_the_file() {
        let dir = Path::new("/bundles/c1");
        match Bundle::from_json(br#"{"ociVersion":"1.0.2","root":{"path":"fs"}}"#, dir) {
            Ok(b) => assert_eq!(b.rootfs, Path::new("/bundles/c1/fs")),
            Err(e) => panic!("{e:#}"),
        }
        match Bundle::from_json(b"{\"ociVersion\":", dir) {
            Ok(b) => panic!("accepted: {b:?}"),
            Err(e) => assert!(
                format!("{e:#}").starts_with("invalid config.json in bundle /bundles/c1: "),
                "{e:#}"
            ),
        }
    }

    #[test]
    fn bad_or_missing_config_json() {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("{e}"),
        };
        let expected = format!("invalid config.json in bundle {}: ", dir.path().display());
        match Bundle::load(dir.path()) {
            Ok(_) => panic!("a bundle without config.json was accepted"),
            Err(e) => assert!(format!("{e:#}").starts_with(&expected), "{e:#}"),
        }
        let _ = std::fs::write(dir.path().join("config.json"), "{ not json");
        match Bundle::load(dir.path()) {
            Ok(_) => panic!("broken JSON was accepted"),
            Err(e) => {
                let e = format!("{e:#}");
                assert!(e.starts_with(&expected) && e.contains("line 1"), "{e}");
            }
        }
        let _ = std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"fs"}}"#,
        );
        match Bundle::load(dir.path()) {
            Ok(b) => assert_eq!(b.rootfs, dir.path().join("fs")),
            Err(e) => panic!("{e:#}"),
        }
    }
}
