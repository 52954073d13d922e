//! A private OCI registry on loopback: Debian's `docker-registry` (the CNCF
//! distribution registry 2.8) serving plain HTTP on `127.0.0.1:<free port>`
//! from a temporary directory, with images pushed by `skopeo`.
//!
//! ```no_run
//! use wasishim_e2e::registry::Registry;
//! use wasishim_e2e::{Artifact, ArtifactForm};
//! let registry = Registry::start()?;
//! let wasm = std::fs::read("hello.wasm")?;
//! let name = registry.push(&Artifact::new(&registry.name("hello"), ArtifactForm::WasmConfigV0).wasm(wasm))?;
//! // name == "127.0.0.1:<port>/hello:v1"
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! `skopeo copy oci:DIR docker://...` keeps the manifest bytes as they are,
//! so custom config and layer media types (and the digests) survive the push.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasishim_image::Artifact;

/// Debian's registry binary (package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The tag [`Registry::name`] gives.
pub const TAG: &str = "v1";

/// A running registry; dropping it stops it and removes its storage.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Registry {
    /// Starts a registry bound to `127.0.0.1` only, on a free port, storing
    /// under a new temporary directory; waits until `/v2/` answers.
    ///
    /// Fails if `docker-registry` is not installed (`apt-get install
    /// docker-registry`) or does not answer within 10 s (with its log).
    pub fn start() -> Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} not found: apt-get install docker-registry (test/install-deps.sh does)");
        }
        // The port is free when asked; another process taking it before the
        // registry binds it shows up as a failed start, which is retried.
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("wasishim-registry-")
                .tempdir()
                .context("creating the registry's directory")?;
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let child = Self::spawn(dir.path(), port)?;
            let registry = Registry { child, dir, port };
            match registry.wait_ready(Duration::from_secs(10)) {
                Ok(()) => return Ok(registry),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    fn spawn(dir: &Path, port: u16) -> Result<Child> {
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n",
                dir.join("storage").display()
            ),
        )?;
        let log = fs::File::create(dir.join("registry.log"))?;
        let mut command = Command::new(REGISTRY_BIN);
        // A test process killed outright (timeout, SIGPIPE) never drops the
        // Registry: the registry then goes with the thread that started it.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        command
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("running {REGISTRY_BIN}"))
    }

    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(status) = http_status(self.port, "/v2/") {
                if status == 200 {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                bail!(
                    "registry on {} did not answer /v2/ within {limit:?}; log:\n{}",
                    self.host(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`, the registry host of its image names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>/<repository>:v1`.
    pub fn name(&self, repository: &str) -> String {
        format!("{}/{repository}:{TAG}", self.host())
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Writes `artifact` as an OCI layout and pushes it with `skopeo copy`
    /// under its own name (which must be on this registry); returns the name.
    pub fn push(&self, artifact: &Artifact) -> Result<String> {
        let name = artifact.name();
        let Some(path) = name.strip_prefix(&format!("{}/", self.host())) else {
            bail!("{name} is not on registry {}", self.host());
        };
        let tag = path.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        let layout = self
            .dir
            .path()
            .join("layouts")
            .join(path.replace(['/', ':'], "_"));
        artifact.write_layout_dir(&layout)?;
        self.skopeo_copy(&format!("oci:{}:{tag}", layout.display()), name)?;
        Ok(name.to_string())
    }

    /// Pushes an OCI layout tarball (e.g. from [`wasishim_image::Image`])
    /// as `name`.
    pub fn push_layout_tar(&self, tar: &Path, name: &str) -> Result<()> {
        let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        self.skopeo_copy(&format!("oci-archive:{}:{tag}", tar.display()), name)
    }

    fn skopeo_copy(&self, source: &str, name: &str) -> Result<()> {
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(source)
            .arg(format!("docker://{name}"))
            .stdin(Stdio::null())
            .output()
            .context("running skopeo (apt-get install skopeo)")?;
        if !out.status.success() {
            bail!(
                "skopeo copy {source} docker://{name} failed:\n{}\nregistry log:\n{}",
                crate::output_text(&out),
                self.log()
            );
        }
        Ok(())
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of `GET path` on `127.0.0.1:port`.
fn http_status(port: u16, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP status line: {text}"))
}
