//! A loaded bundle ([`Bundle`]) -> what a WASI guest needs, validated.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use oci_spec::runtime::Spec;

use crate::bundle::{Bundle, Mount, NetworkNamespace};
use crate::entrypoint::split_export;
use crate::source::{open_entrypoint, RootfsEntrypoint};
use crate::{CapabilitySets, Credentials, Entrypoint};

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
    /// Who this container shares the node's compile slots with fairly: its
    /// pod (the sandbox id annotation), or "" when it has none. The shim
    /// makes it unique on the node with the containerd namespace (alone for
    /// a container without a pod).
    pub tenant: String,
    /// The Kubernetes namespace of the container's pod, or "" when it has
    /// none: what scopes its `wasi:keyvalue` keys in a shared Redis.
    pub pod_namespace: String,
}

impl WorkloadSpec {
    /// Reads `<bundle>/config.json`: [`Bundle::load`] then
    /// [`WorkloadSpec::from_loaded`]. Fails with a message naming the problem
    /// (unreadable or invalid JSON, no `process.args`, `terminal: true`, ...).
    ///
    /// Reads one small file; does not look at the rootfs (see
    /// [`WasmEngine::prepare`](crate::WasmEngine::prepare) for that).
    pub fn from_bundle(bundle: &Path) -> Result<WorkloadSpec> {
        WorkloadSpec::from_loaded(&Bundle::load(bundle)?)
    }

    /// Translates an already parsed spec: [`Bundle::from_spec`] then
    /// [`WorkloadSpec::from_loaded`]. `bundle` is only used to anchor a
    /// relative `root.path` (default `rootfs`) and relative mount sources.
    ///
    /// # Errors
    ///
    /// As [`Bundle::from_spec`] and [`WorkloadSpec::from_loaded`].
    pub fn from_spec(spec: &Spec, bundle: &Path) -> Result<WorkloadSpec> {
        WorkloadSpec::from_loaded(&Bundle::from_spec(spec, bundle)?)
    }

    /// What of a loaded bundle runs the guest, validated for a guest. No I/O.
    ///
    /// # Errors
    ///
    /// Fails if `process` or `process.args` is missing or empty, if
    /// `process.terminal` is true (no tty support), or if `process.args[0]`
    /// is not a usable entrypoint.
    pub fn from_loaded(bundle: &Bundle) -> Result<WorkloadSpec> {
        if !bundle.has_process {
            bail!("config.json has no process: set process.args to the .wasm file to run, e.g. [\"/app.wasm\"]");
        }
        if bundle.terminal {
            bail!("terminal (tty) is not supported by wasishim: run without -t");
        }
        let Some(first) = bundle.args.first() else {
            bail!("config.json has no process.args: set the image's entrypoint (or the command) to the .wasm file to run, e.g. [\"/app.wasm\"]");
        };
        let entrypoint = Entrypoint::parse(first, &bundle.cwd)?;

        let mut args = bundle.args.clone();
        args[0] = split_export(first).0.to_string();

        let user = &bundle.user;
        let caps = &bundle.capabilities;
        let credentials = Credentials {
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids.clone(),
            umask: Some(user.umask.unwrap_or(0o022)),
            capabilities: CapabilitySets {
                effective: CapabilitySets::mask(&caps.effective),
                permitted: CapabilitySets::mask(&caps.permitted),
                inheritable: CapabilitySets::mask(&caps.inheritable),
                bounding: CapabilitySets::mask(&caps.bounding),
                ambient: CapabilitySets::mask(&caps.ambient),
            },
        };

        Ok(WorkloadSpec {
            rootfs: bundle.rootfs.clone(),
            readonly_rootfs: bundle.readonly_rootfs,
            entrypoint,
            args,
            env: bundle.env.clone(),
            cwd: bundle.cwd.clone(),
            mounts: bundle.mounts.clone(),
            memory_limit: bundle.resources.memory_limit,
            network: bundle.network.clone(),
            credentials,
            tenant: bundle.sandbox_id().unwrap_or_default().to_string(),
            pod_namespace: bundle.pod_namespace().unwrap_or_default().to_string(),
        })
    }

    /// Looks `process.args[0]` up in the rootfs, once, as
    /// [`WasmEngine::prepare`](crate::WasmEngine::prepare) does: the file,
    /// opened, or why there is none. The one place that decides whether the
    /// guest's code is a rootfs file; a caller that may also find it in an
    /// image layer ([`WasmEngine::prepare_layer`](crate::WasmEngine::prepare_layer))
    /// goes on to that on [`RootfsEntrypoint::Missing`].
    ///
    /// A few file system lookups and an open; nothing is read.
    ///
    /// # Errors
    ///
    /// Only if the file is there but cannot be opened (e.g. permissions).
    pub fn find_entrypoint(&self) -> Result<RootfsEntrypoint> {
        open_entrypoint(&self.rootfs, &self.entrypoint.path)
    }

    /// Whether `process.args[0]` names a regular file inside the rootfs
    /// (see [`Self::find_entrypoint`], which also says why not).
    pub fn entrypoint_in_rootfs(&self) -> bool {
        matches!(self.find_entrypoint(), Ok(RootfsEntrypoint::Found(_)))
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
