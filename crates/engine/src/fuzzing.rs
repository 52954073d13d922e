//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): what the
//! engine parses from untrusted input, without the rest of a create.
//!
//! Not part of the engine's API: hidden from its documentation and free to
//! change with the fuzz targets. Nothing here panics on any input; the fuzz
//! targets check that, and the properties the callers rely on.
use std::fs::Metadata;
use std::path::Path;
use std::time::Duration;

use crate::http_settings::HttpSettings;
use crate::{Bundle, RootfsEntrypoint, WorkloadSpec};

/// Where [`config_json`] pretends the bundle is.
pub const BUNDLE_DIR: &str = "/run/containerd/io.containerd.runtime.v2.task/fuzz/c1";

/// What the engine makes of one `config.json`.
#[derive(Debug)]
pub struct ConfigJson {
    /// The typed bundle (the shim reads it too).
    pub bundle: Bundle,
    /// What runs the guest, or why the bundle cannot run one.
    pub workload: Result<WorkloadSpec, String>,
    /// An HTTP guest's settings from `process.env`: the timeouts its
    /// server arms (header, idle), or why the settings are refused.
    pub http_timeouts: Result<Vec<Duration>, String>,
}

/// Parses `bytes` as the `config.json` of a bundle at [`BUNDLE_DIR`], as
/// a create does up to the point where it touches the file system: the
/// typed bundle, the workload spec (entrypoint, argv, credentials) and an
/// HTTP guest's settings. `Err` holds the error text when the bytes are not
/// a runtime spec.
pub fn config_json(bytes: &[u8]) -> Result<ConfigJson, String> {
    let bundle = Bundle::from_json(bytes, Path::new(BUNDLE_DIR)).map_err(|e| format!("{e:#}"))?;
    let workload = WorkloadSpec::from_loaded(&bundle).map_err(|e| format!("{e:#}"));
    let http_timeouts = HttpSettings::from_env(&bundle.env)
        .map(|s| vec![s.limits.header_timeout, s.limits.idle_timeout])
        .map_err(|e| format!("{e:#}"));
    Ok(ConfigJson {
        bundle,
        workload,
        http_timeouts,
    })
}

/// Looks `arg0` (`process.args[0]`, with `process.cwd` `cwd`) up in
/// `rootfs` the way a create does: parsed through a `config.json`, then
/// resolved and opened inside the rootfs. `Ok(Some(..))` is the metadata of
/// the file that would be compiled, `Ok(None)` a missing entrypoint, `Err`
/// the error text of a refused spec or file.
pub fn entrypoint(rootfs: &Path, arg0: &str, cwd: &str) -> Result<Option<Metadata>, String> {
    let json = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": [arg0], "cwd": cwd},
        "root": {"path": rootfs},
    });
    let bytes = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
    let bundle = Bundle::from_json(&bytes, Path::new(BUNDLE_DIR)).map_err(|e| format!("{e:#}"))?;
    let spec = WorkloadSpec::from_loaded(&bundle).map_err(|e| format!("{e:#}"))?;
    match spec.find_entrypoint().map_err(|e| format!("{e:#}"))? {
        RootfsEntrypoint::Found(found) => {
            found.file.metadata().map(Some).map_err(|e| e.to_string())
        }
        RootfsEntrypoint::Missing(_) => Ok(None),
    }
}
