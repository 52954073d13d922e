//! Where things are: the runtime under test and its shim binary, the
//! repository, each containerd version's binaries and the fixtures; and the
//! names and limits every part of the harness shares.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use wasishim_image::Image;

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
