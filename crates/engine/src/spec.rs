//! OCI runtime spec (config.json) -> what a WASI guest needs.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

use crate::entrypoint::split_export;
use crate::{Capabilities, Credentials, Entrypoint};

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

/// Everything from a bundle that decides how the guest runs.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Host path of the container's root filesystem, preopened as `/`.
    pub rootfs: PathBuf,
    /// `root.readonly`: the rootfs is preopened read-only.
    pub readonly_rootfs: bool,
    /// The wasm file and export to run, from `process.args[0]`.
    pub entrypoint: Entrypoint,
    /// argv as the guest sees it: `process.args` with `argv[0]` stripped of `#export`.
    pub args: Vec<String>,
    /// `process.env` as (key, value); never the shim's own environment.
    pub env: Vec<(String, String)>,
    /// `process.cwd`, absolute inside the guest.
    pub cwd: String,
    /// Bind mounts (`type: bind` or a `bind`/`rbind` option), in spec order.
    /// Other mounts (proc, sysfs, tmpfs, ...) mean nothing to a WASI guest and
    /// are left out.
    pub mounts: Vec<Mount>,
    /// `linux.resources.memory.limit` in bytes: cap on the guest's linear memories.
    pub memory_limit: Option<u64>,
    /// The network namespace the guest's sockets live in.
    pub network: NetworkNamespace,
    /// `process.user` and `process.capabilities`: what the guest's threads
    /// run as (umask 0022 unless the spec sets one; no capabilities unless
    /// the spec grants them; a non-root user only its ambient ones, as
    /// after runc's `execve`).
    pub credentials: Credentials,
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

impl WorkloadSpec {
    /// Reads `<bundle>/config.json`. Fails with a message naming the problem
    /// (unreadable or invalid JSON, no `process.args`, `terminal: true`, ...).
    ///
    /// Reads one small file; does not look at the rootfs (see
    /// [`WasmEngine::prepare`](crate::WasmEngine::prepare) for that).
    pub fn from_bundle(bundle: &Path) -> Result<WorkloadSpec> {
        let path = bundle.join("config.json");
        let spec = std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(serde_json::from_slice::<Spec>(&bytes)?))
            .with_context(|| format!("invalid config.json in bundle {}", bundle.display()))?;
        WorkloadSpec::from_spec(&spec, bundle)
    }

    /// Translates an already parsed spec. `bundle` is only used to anchor a
    /// relative `root.path` (default `rootfs`) and relative mount sources.
    ///
    /// # Errors
    ///
    /// Fails if `process` or `process.args` is missing or empty, if
    /// `process.terminal` is true (no tty support), or if a bind mount has no
    /// source.
    pub fn from_spec(spec: &Spec, bundle: &Path) -> Result<WorkloadSpec> {
        let Some(process) = spec.process() else {
            bail!("config.json has no process: set process.args to the .wasm file to run, e.g. [\"/app.wasm\"]");
        };
        if process.terminal() == Some(true) {
            bail!("terminal (tty) is not supported by wasishim: run without -t");
        }
        let args = match process.args() {
            Some(args) if !args.is_empty() => args,
            _ => bail!("config.json has no process.args: set the image's entrypoint (or the command) to the .wasm file to run, e.g. [\"/app.wasm\"]"),
        };

        let cwd = match process.cwd().to_str() {
            Some("") => "/".to_string(),
            Some(cwd) if cwd.starts_with('/') => cwd.to_string(),
            Some(cwd) => format!("/{cwd}"),
            None => bail!(
                "process.cwd {:?} is not valid UTF-8, which WASI requires",
                process.cwd()
            ),
        };
        let entrypoint = Entrypoint::parse(&args[0], &cwd)?;

        let mut guest_args = args.clone();
        guest_args[0] = split_export(&args[0]).0.to_string();

        let env = process
            .env()
            .iter()
            .flatten()
            // An entry without '=' has no value to pass; runc drops it too.
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();

        let (rootfs, readonly_rootfs) = match spec.root() {
            Some(root) => (bundle.join(root.path()), root.readonly().unwrap_or(false)),
            None => (bundle.join("rootfs"), false),
        };

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
                source: bundle.join(source),
                destination,
                readonly: options.iter().any(|o| o == "ro"),
            });
        }

        let memory_limit = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .and_then(|limit| u64::try_from(limit).ok())
            .filter(|&limit| limit > 0);

        let network = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|namespaces| {
                namespaces
                    .iter()
                    .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            })
            .map(|n| match n.path() {
                Some(path) if !path.as_os_str().is_empty() => NetworkNamespace::Join(path.clone()),
                _ => NetworkNamespace::New,
            })
            .unwrap_or(NetworkNamespace::Host);

        let user = process.user();
        let sets = process.capabilities().as_ref();
        let mask = |set: Option<&oci_spec::runtime::Capabilities>| {
            let names: Vec<String> = set.into_iter().flatten().map(|c| c.to_string()).collect();
            Capabilities::mask(&names)
        };
        let credentials = Credentials {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: Some(user.umask().unwrap_or(0o022)),
            capabilities: Capabilities {
                effective: mask(sets.and_then(|c| c.effective().as_ref())),
                permitted: mask(sets.and_then(|c| c.permitted().as_ref())),
                inheritable: mask(sets.and_then(|c| c.inheritable().as_ref())),
                bounding: mask(sets.and_then(|c| c.bounding().as_ref())),
                ambient: mask(sets.and_then(|c| c.ambient().as_ref())),
            },
        };

        Ok(WorkloadSpec {
            rootfs,
            readonly_rootfs,
            entrypoint,
            args: guest_args,
            env,
            cwd,
            mounts,
            memory_limit,
            network,
            credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        match serde_json::from_str(json) {
            Ok(s) => s,
            Err(e) => panic!("test spec does not parse: {e}\n{json}"),
        }
    }

    fn translate(json: &str) -> Result<WorkloadSpec> {
        WorkloadSpec::from_spec(&spec(json), Path::new("/bundles/c1"))
    }

    fn ok(json: &str) -> WorkloadSpec {
        match translate(json) {
            Ok(w) => w,
            Err(e) => panic!("from_spec failed: {e:#}"),
        }
    }

    fn err(json: &str) -> String {
        match translate(json) {
            Ok(w) => panic!("from_spec accepted a bad spec: {w:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn args_env_cwd() {
        let w = ok(r#"{"ociVersion":"1.0.2",
            "process":{"user":{"uid":0,"gid":0},"args":["/app.wasm#serve","--port","80"],"cwd":"/srv",
                       "env":["A=1","B=x=y","NOVALUE"]}}"#);
        assert_eq!(w.entrypoint.path, "/app.wasm");
        assert_eq!(w.entrypoint.export.as_deref(), Some("serve"));
        assert_eq!(w.args, ["/app.wasm", "--port", "80"]);
        assert_eq!(
            w.env,
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string())
            ]
        );
        assert_eq!(w.cwd, "/srv");
    }

    #[test]
    fn defaults() {
        let w = ok(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["app.wasm"],"cwd":""}}"#,
        );
        assert_eq!(w.cwd, "/");
        assert_eq!(w.entrypoint.path, "/app.wasm");
        assert_eq!(w.rootfs, Path::new("/bundles/c1/rootfs"));
        assert!(!w.readonly_rootfs);
        assert!(w.env.is_empty());
        assert!(w.mounts.is_empty());
        assert_eq!(w.memory_limit, None);
    }

    #[test]
    fn root_path_relative_and_absolute() {
        let w = ok(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["/a.wasm"],"cwd":"/"},
                       "root":{"path":"fs","readonly":true}}"#,
        );
        assert_eq!(w.rootfs, Path::new("/bundles/c1/fs"));
        assert!(w.readonly_rootfs);
        let w = ok(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["/a.wasm"],"cwd":"/"},
                       "root":{"path":"/var/lib/snap/1/fs"}}"#,
        );
        assert_eq!(w.rootfs, Path::new("/var/lib/snap/1/fs"));
    }

    #[test]
    fn only_bind_mounts_are_kept() {
        let w = ok(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["/a.wasm"],"cwd":"/"},
            "mounts":[
              {"destination":"/proc","type":"proc","source":"proc"},
              {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid"]},
              {"destination":"/sys","type":"sysfs","source":"sysfs","options":["ro"]},
              {"destination":"/data","type":"bind","source":"/host/data","options":["rbind","rw"]},
              {"destination":"/cfg","source":"/host/cfg","options":["rbind","ro"]},
              {"destination":"/etc/hosts","type":"none","source":"/host/hosts","options":["bind","ro"]}
            ]}"#,
        );
        assert_eq!(
            w.mounts,
            [
                Mount {
                    source: "/host/data".into(),
                    destination: "/data".into(),
                    readonly: false
                },
                Mount {
                    source: "/host/cfg".into(),
                    destination: "/cfg".into(),
                    readonly: true
                },
                Mount {
                    source: "/host/hosts".into(),
                    destination: "/etc/hosts".into(),
                    readonly: true
                },
            ]
        );
    }

    #[test]
    fn memory_limit() {
        let with = |limit: &str| {
            ok(&format!(
                r#"{{"ociVersion":"1.0.2","process":{{"user":{{"uid":0,"gid":0}},"args":["/a.wasm"],"cwd":"/"}},
                    "linux":{{"resources":{{"memory":{{"limit":{limit}}}}}}}}}"#
            ))
            .memory_limit
        };
        assert_eq!(with("67108864"), Some(64 << 20));
        assert_eq!(with("-1"), None);
        assert_eq!(with("0"), None);
    }

    #[test]
    fn terminal_is_refused() {
        let e = err(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["/a.wasm"],"cwd":"/","terminal":true}}"#,
        );
        assert_eq!(
            e,
            "terminal (tty) is not supported by wasishim: run without -t"
        );
    }

    #[test]
    fn missing_args_are_refused() {
        for json in [
            r#"{"ociVersion":"1.0.2"}"#,
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/"}}"#,
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":[],"cwd":"/"}}"#,
        ] {
            let e = err(json);
            assert!(e.contains("process.args"), "{e}");
        }
        let e = err(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":[""],"cwd":"/"}}"#,
        );
        assert!(e.contains("process.args[0] is empty"), "{e}");
    }

    #[test]
    fn bad_or_missing_config_json() {
        let dir = std::env::temp_dir().join(format!("wasishim-spec-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);

        let e = match WorkloadSpec::from_bundle(&dir) {
            Ok(_) => panic!("a bundle without config.json was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.starts_with(&format!(
                "invalid config.json in bundle {}: ",
                dir.display()
            )),
            "{e}"
        );

        let _ = std::fs::write(dir.join("config.json"), "{ not json");
        let e = match WorkloadSpec::from_bundle(&dir) {
            Ok(_) => panic!("broken JSON was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.starts_with(&format!(
                "invalid config.json in bundle {}: ",
                dir.display()
            )),
            "{e}"
        );
        assert!(e.contains("line 1"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
