//! `ctr` against an instance: any command with a time limit, and the ones
//! tests use most (images, runs, tasks, containers) with their output read.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasishim_image::Image;

use crate::command::{output_text, run_with_timeout};
use crate::containerd::PrivateContainerd;
use crate::paths::{runtime, CTR_TIMEOUT, NAMESPACE};

impl PrivateContainerd {
    fn ctr_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctr_command_in(NAMESPACE, args)
    }

    fn ctr_command_in<I, S>(&self, namespace: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.namespaces
            .lock()
            .unwrap()
            .insert(namespace.to_string());
        let mut cmd = Command::new(self.bin_dir.join("ctr"));
        cmd.arg("--address")
            .arg(self.address())
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        cmd
    }

    /// Runs this version's `ctr` against this instance in [`NAMESPACE`]
    /// with no stdin, killing it after [`CTR_TIMEOUT`] (then its status is
    /// SIGKILL's and stderr says so).
    pub fn ctr<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctr_timeout(args, CTR_TIMEOUT)
    }

    /// [`ctr`](Self::ctr) in another namespace, e.g. [`CRI_NAMESPACE`].
    pub fn ctr_in<I, S>(&self, namespace: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctr_command_in(namespace, args);
        cmd.stdin(Stdio::null());
        run_with_timeout(cmd, None, CTR_TIMEOUT)
    }

    /// [`ctr`](Self::ctr) with its own time limit.
    pub fn ctr_timeout<I, S>(&self, args: I, limit: Duration) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctr_command(args);
        cmd.stdin(Stdio::null());
        run_with_timeout(cmd, None, limit)
    }

    /// [`ctr`](Self::ctr) with `input` on its stdin.
    pub fn ctr_stdin<I, S>(&self, args: I, input: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctr_command(args);
        cmd.stdin(Stdio::piped());
        run_with_timeout(cmd, Some(input.to_vec()), CTR_TIMEOUT)
    }

    /// [`ctr`](Self::ctr) with a pseudo-terminal as stdin, which `ctr run -t`
    /// needs before it sends anything to containerd.
    pub fn ctr_tty<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let pty = nix::pty::openpty(None, None).context("opening a pseudo-terminal")?;
        let mut cmd = self.ctr_command(args);
        cmd.stdin(Stdio::from(pty.slave));
        let master = File::from(pty.master);
        // Drain whatever ctr echoes to the terminal so it never blocks.
        let drain = thread::spawn(move || {
            let mut master = master;
            let mut sink = Vec::new();
            let _ = master.read_to_end(&mut sink);
        });
        let out = run_with_timeout(cmd, None, CTR_TIMEOUT);
        // The master's reader ends with EIO once every slave handle is closed.
        let _ = drain.join();
        Ok(out)
    }

    /// Starts `ctr` in the background (stdout and stderr piped, no stdin).
    pub fn spawn_ctr<I, S>(&self, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctr_command(args);
        Ok(cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// Imports an OCI image layout tarball with `ctr images import`.
    pub fn import_image(&self, tar: &Path) -> Result<()> {
        self.import_image_in(NAMESPACE, tar)
    }

    /// [`import_image`](Self::import_image) into `namespace`.
    pub fn import_image_in(&self, namespace: &str, tar: &Path) -> Result<()> {
        let out = self.ctr_in(
            namespace,
            [OsStr::new("images"), OsStr::new("import"), tar.as_os_str()],
        );
        if !out.status.success() {
            bail!(
                "ctr images import {} failed:\n{}",
                tar.display(),
                output_text(&out)
            );
        }
        Ok(())
    }

    /// Writes `image` into the instance's directory, imports it and returns
    /// its full name.
    pub fn import(&self, image: &Image) -> Result<String> {
        self.import_in(NAMESPACE, image)
    }

    /// [`import`](Self::import) into `namespace`; [`CRI_NAMESPACE`] makes
    /// the image usable by CRI's CreateContainer without a pull.
    pub fn import_in(&self, namespace: &str, image: &Image) -> Result<String> {
        let images = self.dir.join("images");
        fs::create_dir_all(&images)?;
        let file = images.join(format!(
            "{}.tar",
            image
                .name()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        image.write_to(&file)?;
        self.import_image_in(namespace, &file)?;
        Ok(image.name().to_string())
    }

    /// Names of the images in [`NAMESPACE`].
    pub fn images(&self) -> Result<Vec<String>> {
        let out = self.ctr(["images", "ls", "-q"]);
        if !out.status.success() {
            bail!("ctr images ls failed:\n{}", output_text(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Records a container ID so [`leaks`](Self::leaks) also looks for its
    /// shim socket. The `run_*` helpers do it themselves.
    pub fn note_container(&self, id: &str) {
        self.ids.lock().unwrap().insert(id.to_string());
    }

    /// `ctr run --rm --runtime io.containerd.wasmtime.v1 FLAGS IMAGE ID ARGS`.
    /// Non-empty ARGS replace the image's entrypoint and command, so they
    /// start with the wasm path, e.g. `["/app.wasm", "3"]`.
    pub fn run_rm(&self, flags: &[&str], image: &str, id: &str, args: &[&str]) -> Output {
        self.note_container(id);
        self.ctr(run_args(&["--rm"], flags, image, id, args))
    }

    /// Like [`run_rm`](Self::run_rm) with `input` on the container's stdin.
    pub fn run_rm_stdin(
        &self,
        flags: &[&str],
        image: &str,
        id: &str,
        args: &[&str],
        input: &[u8],
    ) -> Output {
        self.note_container(id);
        self.ctr_stdin(run_args(&["--rm"], flags, image, id, args), input)
    }

    /// `ctr run -d --runtime io.containerd.wasmtime.v1 FLAGS IMAGE ID ARGS`;
    /// fails if ctr does.
    pub fn run_detached(&self, flags: &[&str], image: &str, id: &str, args: &[&str]) -> Result<()> {
        self.note_container(id);
        let out = self.ctr(run_args(&["-d"], flags, image, id, args));
        if !out.status.success() {
            bail!("ctr run -d {id} failed:\n{}", output_text(&out));
        }
        Ok(())
    }

    /// `ctr run --runtime io.containerd.wasmtime.v1 FLAGS IMAGE ID ARGS` in
    /// the background, attached: the container's stdin, stdout and stderr
    /// are the child's pipes (stdin stays open, unwritten, until the caller
    /// drops it). ctr deletes the task when it ends, not the container.
    pub fn spawn_run_attached(
        &self,
        flags: &[&str],
        image: &str,
        id: &str,
        args: &[&str],
    ) -> Result<Child> {
        self.note_container(id);
        let mut cmd = self.ctr_command(run_args(&[], flags, image, id, args));
        Ok(cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// Task statuses from `ctr task ls`: (ID, PID, STATUS).
    pub fn tasks(&self) -> Result<Vec<(String, String, String)>> {
        let out = self.ctr(["task", "ls"]);
        if !out.status.success() {
            bail!("ctr task ls failed:\n{}", output_text(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut cols = l.split_whitespace();
                Some((
                    cols.next()?.to_string(),
                    cols.next()?.to_string(),
                    cols.next()?.to_string(),
                ))
            })
            .collect())
    }

    /// The STATUS column of `ctr task ls` for `id` (RUNNING, STOPPED, ...),
    /// `None` if there is no such task.
    pub fn task_status(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .tasks()?
            .into_iter()
            .find(|(t, _, _)| t == id)
            .map(|(_, _, s)| s))
    }

    /// Polls `ctr task ls` until `id` has `status`; returns how long it took.
    pub fn wait_task_status(&self, id: &str, status: &str, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let now = self.task_status(id)?;
            if now.as_deref() == Some(status) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!(
                    "task {id} is {now:?}, not {status}, after {:?}",
                    start.elapsed()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs task `id`, waits for it to stop, deletes it and its
    /// container; returns the task's exit code. Panics (a test helper) on
    /// any step's failure.
    pub fn kill_and_remove(&self, id: &str) -> i32 {
        let out = self.ctr(["task", "kill", "-s", "SIGKILL", id]);
        assert!(out.status.success(), "{}", output_text(&out));
        self.wait_task_status(id, "STOPPED", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("task {id} did not stop: {e:#}"));
        let code = self
            .task_delete(id)
            .unwrap_or_else(|e| panic!("deleting task {id}: {e:#}"));
        let out = self.ctr(["containers", "rm", id]);
        assert!(out.status.success(), "{}", output_text(&out));
        code
    }

    /// `ctr task delete ID`: removes a stopped task and returns its exit
    /// code. ctr itself exits 0 either way and only warns "task ID exit with
    /// non-zero exit code N" on stderr, so the code is read from there.
    pub fn task_delete(&self, id: &str) -> Result<i32> {
        self.task_delete_in(NAMESPACE, id)
    }

    /// [`task_delete`](Self::task_delete) in another namespace.
    pub fn task_delete_in(&self, namespace: &str, id: &str) -> Result<i32> {
        let out = self.ctr_in(namespace, ["task", "delete", id]);
        if !out.status.success() {
            bail!("ctr task delete {id} failed:\n{}", output_text(&out));
        }
        Ok(parse_delete_exit_code(&String::from_utf8_lossy(
            &out.stderr,
        )))
    }

    /// Container IDs from `ctr containers ls -q`.
    pub fn containers(&self) -> Result<Vec<String>> {
        let out = self.ctr(["containers", "ls", "-q"]);
        if !out.status.success() {
            bail!("ctr containers ls failed:\n{}", output_text(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}

fn run_args(mode: &[&str], flags: &[&str], image: &str, id: &str, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["run".into()];
    v.extend(mode.iter().map(|s| s.to_string()));
    v.push("--runtime".into());
    v.push(runtime().into());
    v.extend(flags.iter().map(|s| s.to_string()));
    v.push(image.into());
    v.push(id.into());
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// The exit code in ctr's "exit with non-zero exit code N" warning, else 0.
fn parse_delete_exit_code(stderr: &str) -> i32 {
    const MARK: &str = "non-zero exit code ";
    stderr
        .find(MARK)
        .map(|i| &stderr[i + MARK.len()..])
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_args_order() {
        assert_eq!(
            run_args(&["--rm"], &["--env", "A=1"], "img", "c1", &["x"]),
            [
                "run",
                "--rm",
                "--runtime",
                runtime(),
                "--env",
                "A=1",
                "img",
                "c1",
                "x"
            ]
        );
    }

    #[test]
    fn delete_exit_code() {
        assert_eq!(
            parse_delete_exit_code(
                "time=\"x\" level=warning msg=\"task p1 exit with non-zero exit code 143\"\n"
            ),
            143
        );
        assert_eq!(parse_delete_exit_code(""), 0);
    }
}
