//! `wasishim status`: the shims in PREFIX/bin and their versions, the
//! runtimes the config declares, the install record, and whether the
//! running containerd loaded the runtimes: asked through CRI `Status`
//! (verbose), whose `config` info is the CRI plugin's config as loaded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::StatusRequest;
use tonic::transport::{Endpoint, Uri};

use crate::containerd_config::{self, RUNTIMES};
use crate::files::SHIMS;
use crate::flavor::{Flavor, Host};
use crate::install::find_config;
use crate::record;

/// How long the CRI `Status` call may take.
const CRI_TIMEOUT: Duration = Duration::from_secs(10);

/// What `status` looks at; host paths as in [`crate::install::Options`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the host's `/` is.
    pub host: Host,
    /// Host path; shims are looked for in PREFIX/bin.
    pub prefix: PathBuf,
    /// Host path of containerd's config; probed when None.
    pub config: Option<PathBuf>,
    /// Host path of containerd's socket; the flavor's when None.
    pub address: Option<PathBuf>,
    /// Host path of the install record.
    pub state: PathBuf,
}

/// Prints the status; returns whether everything is in place and loaded.
pub fn status(opts: &Options) -> Result<bool> {
    let mut ready = true;
    let bin = opts.host.path(&opts.prefix).join("bin");
    println!("shims in {}:", bin.display());
    for name in SHIMS {
        let path = bin.join(name);
        if path.is_file() {
            println!("  {name}: installed, {}", shim_version(&path));
        } else {
            println!("  {name}: missing");
            ready = false;
        }
    }

    let mut flavor = Flavor::Containerd;
    match find_config(&opts.host, opts.config.as_deref()) {
        Err(e) => {
            println!("config: {e:#}");
            ready = false;
        }
        Ok((f, config)) => {
            flavor = f;
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            match containerd_config::declared_runtimes(&text, &config) {
                Err(e) => {
                    println!("config {}: {e:#}", config.display());
                    ready = false;
                }
                Ok((schema, declared)) => {
                    println!("config {} (version {}):", config.display(), schema.number());
                    for decl in RUNTIMES {
                        match declared.iter().find(|(n, _)| n == decl.name) {
                            Some((_, t)) if t == decl.runtime_type => {
                                println!("  {}: declared ({t})", decl.name)
                            }
                            Some((_, t)) => {
                                println!(
                                    "  {}: declared as {t:?}, not {}",
                                    decl.name, decl.runtime_type
                                );
                                ready = false;
                            }
                            None => {
                                println!("  {}: not declared", decl.name);
                                ready = false;
                            }
                        }
                    }
                }
            }
        }
    }

    let state = opts.host.path(&opts.state);
    match record::load(&state) {
        Ok(Some(r)) => println!(
            "install record {}: {} edited (added: {}), {} shim(s)",
            state.display(),
            r.config.display(),
            if r.added.is_empty() {
                "nothing".to_string()
            } else {
                r.added.join(", ")
            },
            r.binaries.len()
        ),
        Ok(None) => println!("install record {}: none", state.display()),
        Err(e) => println!("install record: {e:#}"),
    }

    let address = opts.host.path(
        opts.address
            .as_deref()
            .unwrap_or_else(|| Path::new(flavor.socket())),
    );
    match loaded_runtimes(&address) {
        Err(e) => {
            // The transport error repeats its cause; the root cause is enough.
            println!(
                "containerd at {}: {e}: {}",
                address.display(),
                e.root_cause()
            );
            ready = false;
        }
        Ok(loaded) => {
            println!("containerd at {} has loaded:", address.display());
            for decl in RUNTIMES {
                match loaded.iter().find(|(n, _)| n == decl.name) {
                    Some((_, t)) => println!("  {}: yes ({t})", decl.name),
                    None => {
                        println!(
                            "  {}: no (restart containerd after `wasishim install`)",
                            decl.name
                        );
                        ready = false;
                    }
                }
            }
        }
    }
    Ok(ready)
}

/// The version line `SHIM -v` prints, or why there is none.
fn shim_version(path: &Path) -> String {
    match Command::new(path).arg("-v").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))
            .map(|v| format!("version {}", v.trim()))
            .unwrap_or_else(|| "version unknown (no Version line from -v)".to_string()),
        Ok(out) => format!("`-v` failed ({})", out.status),
        Err(e) => format!("cannot run it: {e}"),
    }
}

/// The runtimes (name, runtime type) of the CRI config containerd at
/// `socket` runs with.
pub fn loaded_runtimes(socket: &Path) -> Result<Vec<(String, String)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the CRI client")?;
    let socket = socket.to_path_buf();
    let info = rt.block_on(async move {
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_timeout(CRI_TIMEOUT)
            .timeout(CRI_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .context("connecting (is containerd running? pass --address SOCKET otherwise)")?;
        let resp = RuntimeServiceClient::new(channel)
            .status(StatusRequest { verbose: true })
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "CRI Status failed: {} (is the CRI plugin enabled?)",
                    s.message()
                )
            })?;
        anyhow::Ok(resp.into_inner().info)
    })?;
    let config = info
        .get("config")
        .context("CRI Status returned no config info")?;
    let json: serde_json::Value =
        serde_json::from_str(config).context("CRI Status config is not JSON")?;
    Ok(runtimes_in(&json))
}

/// Every entry of every `runtimes` object in the CRI config JSON (its
/// nesting differs between containerd 1.x and 2.x).
fn runtimes_in(v: &serde_json::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                if k == "runtimes" {
                    if let Some(rts) = child.as_object() {
                        for (name, rt) in rts {
                            let ty = rt
                                .get("runtimeType")
                                .or_else(|| rt.get("runtime_type"))
                                .and_then(|t| t.as_str())
                                .unwrap_or("");
                            found.push((name.clone(), ty.to_string()));
                        }
                    }
                } else {
                    found.extend(runtimes_in(child));
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| found.extend(runtimes_in(i))),
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_runtimes_at_any_depth() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"containerd":{"defaultRuntimeName":"runc","runtimes":{
                "runc":{"runtimeType":"io.containerd.runc.v2"},
                "wasmtime":{"runtimeType":"io.containerd.wasmtime.v1"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            runtimes_in(&v),
            [
                ("runc".to_string(), "io.containerd.runc.v2".to_string()),
                (
                    "wasmtime".to_string(),
                    "io.containerd.wasmtime.v1".to_string()
                )
            ]
        );
    }

    #[test]
    fn no_containerd_is_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let e = loaded_runtimes(&dir.path().join("none.sock")).unwrap_err();
        assert!(format!("{e:#}").contains("is containerd running"), "{e:#}");
    }
}
