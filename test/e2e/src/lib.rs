//! End-to-end test harness: a private containerd of a chosen version, driven
//! through its own `ctr`, running containers with the wasmtime shim.
//!
//! ```no_run
//! use wasishim_e2e::{runtime, PrivateContainerd};
//! let cd = PrivateContainerd::start("1.7.24")?;
//! let image = cd.import(&wasishim_e2e::fixture_image("hello", "wasip1/hello.wasm")?)?;
//! let out = cd.ctr(["run", "--rm", "--runtime", runtime(), &image, "hello-1"]);
//! assert!(String::from_utf8_lossy(&out.stdout).contains("hello from wasm"));
//! cd.assert_no_leaks();
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Every instance lives in its own temporary directory (root, state, socket,
//! config and log), so instances of different versions can run side by side.
//! Nothing is mocked: the containerd binaries come from
//! `test/containerd/install.sh` and the shim from the workspace's
//! `target/debug`.
//!
//! [`PrivateContainerd::start_with_cri`] starts an instance with the CRI
//! plugin enabled; the [`cri`] module drives it as kubelet would.
//!
//! Environment:
//! - `WASISHIM_CONTAINERD_<VERSION>_BIN` (dots as underscores, e.g.
//!   `WASISHIM_CONTAINERD_1_7_24_BIN`): directory holding that version's
//!   `containerd` and `ctr`.
//! - `WASISHIM_CACHE`: cache directory of `install.sh` (default `<repo>/.cache`).
//! - `WASISHIM_SHIM_DIR`: directory holding `containerd-shim-wasmtime-v1`
//!   (default `<target dir>/debug`).
//! - `WASISHIM_KEEP_TMP=1`: keep each instance's directory after the test.
//! - `WASISHIM_CNI_PLUGIN`, `WASISHIM_CNI_LOOPBACK`: other CNI plugin
//!   binaries for CRI instances (see [`cri`]).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
pub use wasishim_image::{Artifact, ArtifactForm, Image};

/// The runtime name containers are run with: `io.containerd.wasmtime.v1`
/// (per-pod shim), or what `WASISHIM_RUNTIME` names, e.g.
/// `io.containerd.wasmtimed.v1` (per-node shim).
pub fn runtime() -> &'static str {
    static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHOSEN.get_or_init(|| {
        std::env::var("WASISHIM_RUNTIME")
            .ok()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "io.containerd.wasmtime.v1".to_string())
    })
}

/// The shim binary containerd derives from [`runtime`]:
/// `io.containerd.NAME.v1` -> `containerd-shim-NAME-v1`.
pub fn shim_binary() -> String {
    let name = runtime().trim_start_matches("io.containerd.");
    match name.rsplit_once('.') {
        Some((name, version)) => format!("containerd-shim-{name}-{version}"),
        None => format!("containerd-shim-{name}"),
    }
}

/// How long an idle per-node shim lingers in these tests, so that it is gone
/// by the leak check.
pub const NODE_IDLE_SECONDS: &str = "1";
/// The containerd versions the tests cover.
pub const VERSIONS: [&str; 3] = ["1.6.20", "1.7.24", "2.1.9"];
/// Namespace every `ctr` call of the harness uses.
pub const NAMESPACE: &str = "wasishim-e2e";
/// How long [`PrivateContainerd::ctr`] lets one `ctr` command run.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);
/// Namespace containerd's CRI plugin keeps pods, containers and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Where the per-node shim server writes its log, `<socket name>.log`.
pub const NODE_LOG_DIR: &str = "/run/containerd/wasishim";

pub mod cri;
pub mod http;
pub mod registry;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Cache directory of `test/containerd/install.sh`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("WASISHIM_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join(".cache"),
    }
}

/// Directory holding the shim binary: `WASISHIM_SHIM_DIR`, else
/// `$CARGO_TARGET_DIR/debug`, else `<repo>/target/debug`.
pub fn shim_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WASISHIM_SHIM_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        None => repo_root().join("target"),
    };
    target.join("debug")
}

/// Directory with `containerd` and `ctr` of `version`: the
/// `WASISHIM_CONTAINERD_<VERSION>_BIN` override, else install.sh's layout,
/// else whatever `install.sh VERSION` prints (it installs the version if
/// missing, which needs root and the package archive).
pub fn containerd_bin_dir(version: &str) -> Result<PathBuf> {
    let var = format!(
        "WASISHIM_CONTAINERD_{}_BIN",
        version.replace(['.', '-'], "_")
    );
    if let Some(dir) = std::env::var_os(&var).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.join("containerd").exists() {
            bail!("{var}={} has no containerd binary", dir.display());
        }
        return Ok(dir);
    }
    let expected = match version {
        "1.6.20" => PathBuf::from("/usr/bin"),
        _ => cache_dir().join("containerd").join(version).join("usr/bin"),
    };
    if reports_version(&expected, version) {
        return Ok(expected);
    }
    let script = repo_root().join("test/containerd/install.sh");
    let out = Command::new(&script)
        .arg(version)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {version} failed ({}); install containerd {version} with it, or set {var}",
            script.display(),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .map(PathBuf::from)
        .with_context(|| format!("{} {version} printed no directory", script.display()))?;
    if !reports_version(&dir, version) {
        bail!("{}/containerd is not version {version}", dir.display());
    }
    Ok(dir)
}

fn reports_version(dir: &Path, version: &str) -> bool {
    Command::new(dir.join("containerd"))
        .arg("--version")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            o.status.success()
                && s.split_whitespace()
                    .any(|w| w.trim_start_matches('v').starts_with(version))
        })
        .unwrap_or(false)
}

/// Builds the wasm fixtures (`make fixtures`) once per test process and
/// returns `test/fixtures/out`.
///
/// # Panics
///
/// If the build fails: no end-to-end test can run without the fixtures.
pub fn fixtures_dir() -> PathBuf {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = repo_root();
        let out = Command::new("make")
            .arg("-C")
            .arg(&root)
            .arg("fixtures")
            .output()
            .map_err(|e| format!("running make: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "make fixtures failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(root.join("test/fixtures/out"))
    });
    match built {
        Ok(dir) => dir.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A fixture file, e.g. `fixture("wasip1/hello.wasm")`, building the
/// fixtures first if needed.
pub fn fixture(rel: &str) -> PathBuf {
    fixtures_dir().join(rel)
}

/// An image named `docker.io/library/wasishim-<name>:test` holding the
/// fixture `rel` at `/app.wasm`.
pub fn fixture_image(name: &str, rel: &str) -> Result<Image> {
    let path = fixture(rel);
    let wasm = fs::read(&path).with_context(|| format!("reading fixture {}", path.display()))?;
    Ok(Image::new(&image_name(name)).wasm(wasm))
}

/// The full name the harness gives a test image called `name`.
pub fn image_name(name: &str) -> String {
    format!("docker.io/library/wasishim-{name}:test")
}

/// Text of a command's stdout and stderr, for assertions and messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The exit code of a command, or 128+signal if it was killed.
pub fn exit_code(status: &ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// A containerd of one version with its own root, state, socket and log in
/// a fresh temporary directory.
///
/// Dropping it stops containerd, kills any shim of this instance that is
/// still running, unmounts whatever is mounted under the directory and
/// removes it. If the test is panicking, the tail of the containerd log is
/// printed first.
pub struct PrivateContainerd {
    version: String,
    bin_dir: PathBuf,
    shim_dir: PathBuf,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    /// Container IDs used through the harness, for the shim socket check.
    ids: Mutex<BTreeSet<String>>,
    /// Whether the CRI plugin is enabled ([`start_with_cri`](Self::start_with_cri)).
    cri: bool,
    /// Pod sandbox IDs seen through the CRI helpers, for the shim socket check.
    pods: Mutex<BTreeSet<String>>,
    /// Namespaces `ctr` was run in, for the task state and socket checks.
    namespaces: Mutex<BTreeSet<String>>,
    /// Sockets of the shim servers seen running (their `-socket`), for the
    /// socket and per-node log checks once they are gone.
    servers: Mutex<BTreeSet<PathBuf>>,
}

impl PrivateContainerd {
    /// Starts containerd `version` (one of [`VERSIONS`]) and waits until it
    /// answers `ctr version`.
    ///
    /// Costs under a second when the binaries are installed. Fails if the
    /// version cannot be found or installed, or if containerd exits or does
    /// not answer within 20 s (the error carries its log).
    pub fn start(version: &str) -> Result<PrivateContainerd> {
        Self::start_inner(version, false)
    }

    /// Like [`start`](Self::start), with containerd's CRI plugin enabled the
    /// way a Kubernetes node has it: runtime handler `wasmtime` mapped to
    /// [`runtime`] (and `runc` to runc), CNI from [`cri::cni_conflist`] with
    /// the `loopback` and `wasishim-static` plugins, and the sandbox image
    /// [`cri::PAUSE_IMAGE`] imported into [`CRI_NAMESPACE`]. Everything
    /// CRI keeps (sandbox state, network namespaces, CNI config) lives in
    /// the instance's directory; image pulls go to `127.0.0.1:1` and fail,
    /// so a missing image never reaches the network.
    ///
    /// Needs `wasishim-static` built (`cargo build -p wasishim-cni-static`)
    /// and `/usr/lib/cni/loopback` (Debian's containernetworking-plugins).
    /// Fails, with the log, if the CRI plugin does not load.
    pub fn start_with_cri(version: &str) -> Result<PrivateContainerd> {
        Self::start_inner(version, true)
    }

    fn start_inner(version: &str, cri: bool) -> Result<PrivateContainerd> {
        let bin_dir = containerd_bin_dir(version)?;
        let dir = tempfile::Builder::new()
            .prefix("wasishim-cd-")
            .tempdir()
            .context("creating the instance's temporary directory")?
            .keep();
        let cd = PrivateContainerd {
            version: version.to_string(),
            bin_dir,
            shim_dir: shim_dir(),
            dir,
            child: Mutex::new(None),
            ids: Mutex::new(BTreeSet::new()),
            cri,
            pods: Mutex::new(BTreeSet::new()),
            namespaces: Mutex::new(BTreeSet::new()),
            servers: Mutex::new(BTreeSet::new()),
        };
        if cri {
            cri::prepare_dirs(&cd)?;
        }
        fs::write(cd.config_path(), cd.config_toml())?;
        cd.spawn()?;
        if cri {
            cri::after_start(&cd)?;
        }
        Ok(cd)
    }

    /// The containerd version this instance runs, as given to [`start`](Self::start).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Directory of this version's `containerd` and `ctr`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The instance's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's `root` directory.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// containerd's `state` directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The gRPC socket path.
    pub fn address(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Path of the generated config.toml.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Path of the log file (containerd's stdout and stderr, all starts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The containerd log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Where containerd keeps the v2 task bundles of [`NAMESPACE`].
    pub fn task_state_dir(&self) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(NAMESPACE)
    }

    /// The PID of the running containerd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Whether this instance has the CRI plugin enabled.
    pub fn has_cri(&self) -> bool {
        self.cri
    }

    /// The config.toml this version gets. 1.x reads config version 2;
    /// 2.x reads version 3 (it would migrate 2, with a warning). Without
    /// CRI the plugin is disabled: `ctr` does not need it, and it would want
    /// CNI. With CRI, the `cri` module writes the whole file.
    pub fn config_toml(&self) -> String {
        let config_version = if self.version.starts_with("1.") { 2 } else { 3 };
        if self.cri {
            return cri::config_toml(self, config_version);
        }
        format!(
            r#"# Generated by wasishim-e2e for containerd {version}.
version = {config_version}
root = {root:?}
state = {state:?}
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {address:?}

[debug]
  level = "debug"
"#,
            version = self.version,
            root = self.root_dir().display().to_string(),
            state = self.state_dir().display().to_string(),
            address = self.address().display().to_string(),
        )
    }

    /// PATH for containerd: the shim's directory first, then this version's
    /// binaries, then the system's (for runc).
    fn path_env(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.shim_dir.clone(), self.bin_dir.clone()];
        for d in [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ] {
            dirs.push(PathBuf::from(d));
        }
        std::env::join_paths(dirs).expect("no ':' in PATH entries")
    }

    fn spawn(&self) -> Result<()> {
        let _ = fs::remove_file(self.address());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        writeln!(
            &log,
            "=== wasishim-e2e: starting containerd {}",
            self.version
        )?;
        let child = Command::new(self.bin_dir.join("containerd"))
            .arg("--config")
            .arg(self.config_path())
            .env("PATH", self.path_env())
            .env("WASISHIM_NODE_IDLE_SECONDS", NODE_IDLE_SECONDS)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}/containerd", self.bin_dir.display()))?;
        *self.child.lock().unwrap() = Some(child);

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "containerd {} exited at start ({status}); log:\n{}",
                    self.version,
                    self.log()
                );
            }
            if self.address().exists() {
                let out = self.ctr_timeout(["version"], Duration::from_secs(5));
                if out.status.success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd {} did not answer within 20 s; log:\n{}",
                    self.version,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops containerd: SIGTERM, then SIGKILL after 10 s. Shims keep running,
    /// as they would in production. Idempotent.
    pub fn stop(&self) -> Result<()> {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                child.wait()?;
                bail!("containerd {} ignored SIGTERM for 10 s", self.version);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops containerd gracefully and starts it again on the same
    /// directories and socket; running shims are reconnected by containerd.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// The server version `ctr version` reports (e.g. `1.7.24~ds1`).
    pub fn server_version(&self) -> Result<String> {
        let out = self.ctr(["version"]);
        if !out.status.success() {
            bail!("ctr version failed:\n{}", output_text(&out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let server = text
            .split("Server:")
            .nth(1)
            .context("ctr version printed no Server section")?;
        server
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))
            .map(|v| v.trim().to_string())
            .context("ctr version printed no server version")
    }

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
            leaks.extend(cri::leaks(self));
        }
        leaks
    }

    /// Records a pod sandbox ID: [`leaks`](Self::leaks) then also looks for
    /// the pod's shim socket (the shim groups a pod's containers by it).
    /// The [`cri`] helpers do it themselves.
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
    fn shim_sockets(&self) -> BTreeSet<PathBuf> {
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
        let bundles = [self.task_state_dir(), cri::task_state_dir(self)]
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

    fn cleanup(&mut self) {
        // Leftovers of a failed test: remove them through containerd first,
        // so the shims get to clean up after themselves.
        if self.pid().is_some() && self.cri {
            cri::remove_everything(self);
        }
        if self.pid().is_some() {
            let quick = Duration::from_secs(10);
            for (id, _, _) in self.tasks().unwrap_or_default() {
                let _ = self.ctr_timeout(["task", "delete", "--force", &id], quick);
            }
            for id in self.containers().unwrap_or_default() {
                let _ = self.ctr_timeout(["containers", "rm", &id], quick);
            }
        }
        let sockets = self.shim_sockets();
        if let Err(e) = self.stop() {
            eprintln!("wasishim-e2e: {e:#}");
        }
        let shims = self.shim_pids();
        for pid in &shims {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if !shims.is_empty() {
            // A killed shim cannot remove its socket; these names hash this
            // instance's own address, so they belong to no one else.
            for sock in sockets {
                let _ = fs::remove_file(sock);
            }
        }
        let mut mounts = mounts_under(&self.dir);
        // Deepest first, so nested mounts go before their parents.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Err(e) = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("wasishim-e2e: unmounting {m}: {e}");
            }
        }
        if self.cri {
            cri::remove_cgroups(self);
        }
        if std::env::var_os("WASISHIM_KEEP_TMP").is_some_and(|v| !v.is_empty()) {
            eprintln!("wasishim-e2e: kept {}", self.dir.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("wasishim-e2e: removing {}: {e}", self.dir.display());
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "--- last {} lines of the containerd {} log ({}):\n{}",
                tail.len(),
                self.version,
                self.log_path().display(),
                tail.join("\n")
            );
        }
        self.cleanup();
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

/// Runs `cmd` with piped stdout/stderr, feeding `input` if given; kills it
/// after `limit` (then its status is SIGKILL's and stderr says so).
fn run_with_timeout(mut cmd: Command, input: Option<Vec<u8>>, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            use std::os::unix::process::ExitStatusExt;
            return Output {
                status: ExitStatus::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("cannot run {:?}: {e}", cmd.get_program()).into_bytes(),
            };
        }
    };
    let feeder = match (child.stdin.take(), input) {
        (Some(mut stdin), Some(bytes)) => Some(thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })),
        _ => None,
    };
    let (mut out, timed_out) = collect_within(child, limit);
    if let Some(f) = feeder {
        let _ = f.join();
    }
    if timed_out {
        out.stderr.extend_from_slice(
            format!(
                "\nwasishim-e2e: killed after {limit:?} ({:?})\n",
                cmd.get_args().collect::<Vec<_>>()
            )
            .as_bytes(),
        );
    }
    out
}

/// Waits for `child` (spawned with piped stdout and stderr, e.g. by
/// [`PrivateContainerd::spawn_ctr`]) and returns its output. Use it instead
/// of `Child::wait_with_output`, which hangs a stuck test for ever.
///
/// # Panics
///
/// If `child` has not exited after `limit`: it is killed and the panic
/// names `what`, the limit and the output so far (a killed child's status
/// would look like a SIGKILLed task's 137 and could pass a test).
pub fn wait_with_timeout(child: Child, limit: Duration, what: &str) -> Output {
    let (out, timed_out) = collect_within(child, limit);
    if timed_out {
        panic!(
            "{what} did not exit within {limit:?}; killed it.\n{}",
            output_text(&out)
        );
    }
    out
}

/// Reads `child`'s piped stdout and stderr until it exits, killing it after
/// `limit`; says whether it had to.
fn collect_within(mut child: Child, limit: Duration) -> (Output, bool) {
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut b);
            }
            b
        })
    }
    let out_reader = drain(child.stdout.take());
    let err_reader = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                timed_out = true;
                let _ = child.kill();
                match child.wait() {
                    Ok(status) => break status,
                    Err(e) => panic!("waiting for a killed child {}: {e}", child.id()),
                }
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
    };
    let output = Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    (output, timed_out)
}

/// Every process as (pid, command line with NULs as spaces).
pub fn processes() -> Vec<(i32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// Mount points at or under `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unix sockets anywhere under `dir` (not following symlinks).
fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                // Snapshots hold image contents, never sockets; skip the bulk.
                if e.file_name() != "root" {
                    stack.push(e.path());
                }
            } else if ft.is_socket() {
                found.push(e.path());
            }
        }
    }
    found
}

/// Declares one `#[test]` per containerd version for each scenario: modules
/// `v1_6`, `v1_7` and `v2_1` (or the ones given with `on [...]`) whose tests
/// call `run(version, scenario)` of the invoking file.
///
/// ```ignore
/// wasishim_e2e::scenarios!(hello, exit_codes);
/// wasishim_e2e::scenarios!(on [v1_7 "1.7.24", v2_1 "2.1.9"]: [pull, run_pod]);
/// ```
#[macro_export]
macro_rules! scenarios {
    (on [$($module:ident $version:literal),* $(,)?]: $names:tt) => {
        $( $crate::scenarios!(@module $module $version $names); )*
    };
    (@module $module:ident $version:literal [$($name:ident),* $(,)?]) => {
        mod $module {
            $(#[test] fn $name() { super::run($version, super::$name) })*
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::scenarios!(on [v1_6 "1.6.20", v1_7 "1.7.24", v2_1 "2.1.9"]: [$($name),*]);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
    }

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

    #[test]
    fn timeout_kills() {
        let mut cmd = Command::new("sleep");
        cmd.arg("10");
        let start = Instant::now();
        let out = run_with_timeout(cmd, None, Duration::from_millis(200));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(exit_code(&out.status), 137);
        assert!(String::from_utf8_lossy(&out.stderr).contains("killed after"));
    }

    #[test]
    fn a_stuck_child_fails_the_wait() {
        let child = Command::new("sleep")
            .arg("10")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let waited = std::panic::catch_unwind(|| {
            wait_with_timeout(child, Duration::from_millis(200), "sleep 10")
        });
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            waited.is_err(),
            "a child still running after the limit passed"
        );
    }

    #[test]
    fn stdin_is_fed() {
        let out = run_with_timeout(
            {
                let mut c = Command::new("cat");
                c.stdin(Stdio::piped());
                c
            },
            Some(b"abc".to_vec()),
            Duration::from_secs(10),
        );
        assert_eq!(out.stdout, b"abc");
    }
}
