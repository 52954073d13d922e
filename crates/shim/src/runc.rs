//! runc's command line, for native containers (see [`crate::native`]).
//!
//! A thin wrapper rather than containerd's `runc` crate: that crate waits
//! for the runc commands it starts itself (std's or tokio's child wait), and
//! in this process, a child subreaper, every exit must be collected by the
//! one reaping loop ([`crate::reaper`]) so that a container's exit is never
//! taken by the wrong waiter.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use anyhow::{bail, Context, Result};

use crate::reaper;

/// Names the runc binary to use instead of `runc` on PATH.
pub const RUNC_ENV: &str = "WASISHIM_RUNC";

/// Where runc keeps its state for native containers, one directory per
/// containerd namespace (runc ids are unique only within one).
pub const RUNC_ROOT: &str = "/run/containerd/wasishim/runc";

/// One container as `runc list --format json` shows it.
#[derive(Debug, Deserialize)]
pub struct Listed {
    pub id: String,
    /// runc writes `null` for none.
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

impl Listed {
    /// The value of annotation `key` of the container's spec.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// One runc binary and state root.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl Runc {
    /// runc for the containers of containerd namespace `namespace`.
    pub fn new(namespace: &str) -> Runc {
        Runc {
            binary: binary(),
            root: Path::new(RUNC_ROOT).join(namespace),
        }
    }

    fn command(&self, log: Option<&Path>) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.root);
        if let Some(log) = log {
            command.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        command.stdin(Stdio::null());
        command
    }

    /// `runc create`: the container's init waits for [`Runc::start`]. Its
    /// stdio is the container's; runc's own errors go to `log`.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdio: [Stdio; 3],
        log: &Path,
    ) -> Result<()> {
        let args = [
            "create".as_ref(),
            "--bundle".as_ref(),
            bundle.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            id.as_ref(),
        ];
        self.with_stdio(&args, stdio, log)
    }

    /// `runc exec --detach`: starts `process` (an OCI process JSON file) in
    /// the container with `stdio`, writes its pid to `pid_file`.
    pub fn exec(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        stdio: [Stdio; 3],
        log: &Path,
    ) -> Result<()> {
        let args = [
            "exec".as_ref(),
            "--detach".as_ref(),
            "--process".as_ref(),
            process.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            id.as_ref(),
        ];
        self.with_stdio(&args, stdio, log)
    }

    /// Runs runc with `args` (the first is the command), `stdio` handed to
    /// the process it starts, and its errors logged to `log`, the last of
    /// which a failure names.
    fn with_stdio(&self, args: &[&OsStr], stdio: [Stdio; 3], log: &Path) -> Result<()> {
        let mut command = self.command(Some(log));
        let [stdin, stdout, stderr] = stdio;
        command
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        let output = self.spawn(&mut command, false)?;
        if output.code != 0 {
            bail!(
                "runc {} failed (exit {}): {}",
                args.first()
                    .map(|verb| verb.to_string_lossy())
                    .unwrap_or_default(),
                output.code,
                last_log_error(log)
            );
        }
        Ok(())
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.simple(&["start", id]).map(drop)
    }

    /// Kills whatever still runs and removes the container's cgroup and state.
    pub fn delete_force(&self, id: &str) -> Result<()> {
        self.simple(&["delete", "--force", id]).map(drop)
    }

    /// Whether runc has state for container `id` (it was created and not
    /// yet deleted).
    pub fn state_exists(&self, id: &str) -> bool {
        !id.contains('/') && self.root.join(id).join("state.json").exists()
    }

    /// `runc list`: the containers of this state root.
    pub fn list(&self) -> Result<Vec<Listed>> {
        if !self.root.exists() {
            // runc would make the root; nothing was ever created there.
            return Ok(Vec::new());
        }
        let stdout = self.simple(&["list", "--format", "json"])?;
        // runc prints `null` for an empty root.
        let listed: Option<Vec<Listed>> = serde_json::from_slice(&stdout)
            .context("runc list printed something else than its JSON list")?;
        Ok(listed.unwrap_or_default())
    }

    /// Runs runc with `args`; returns its stdout.
    fn simple(&self, args: &[&str]) -> Result<Vec<u8>> {
        let mut command = self.command(None);
        command.args(args);
        let output = self.spawn(&mut command, true)?;
        if output.code != 0 {
            bail!(
                "runc {} failed (exit {}): {}",
                args.first().copied().unwrap_or_default(),
                output.code,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output.stdout)
    }

    fn spawn(&self, command: &mut Command, capture: bool) -> Result<reaper::Output> {
        reaper::run(command, capture).with_context(|| {
            format!(
                "cannot run {} (set {RUNC_ENV} to the runc binary, or install runc)",
                self.binary.display()
            )
        })
    }
}

/// The runc binary: `$WASISHIM_RUNC`, else `runc` on PATH or in the sbin
/// directories a service's PATH may lack.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os(RUNC_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join("runc"))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| PathBuf::from("runc"))
}

/// The last error runc wrote to its JSON log, for the user.
fn last_log_error(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["level"] == "error")
        .and_then(|entry| entry["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| "runc logged no error".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_runcs_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"/x\\\": no such file\"}\n",
        )
        .unwrap();
        assert_eq!(last_log_error(&log), "exec: \"/x\": no such file");
        assert_eq!(
            last_log_error(&dir.path().join("none")),
            "runc logged no error"
        );
    }

    #[test]
    fn reads_runc_list() {
        let text = r#"[{"ociVersion":"1.0.2","id":"c1","pid":42,"status":"running",
            "bundle":"/b/c1/runc","annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}},
            {"id":"c2","annotations":null}]"#;
        let listed: Vec<Listed> = serde_json::from_str(text).unwrap();
        assert_eq!(
            listed[0].annotation("io.kubernetes.cri.sandbox-id"),
            Some("pod1")
        );
        assert_eq!(listed[1].annotation("io.kubernetes.cri.sandbox-id"), None);
    }
}
