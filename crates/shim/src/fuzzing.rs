//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): what the shim
//! parses from untrusted input, without containerd or the kernel.
//!
//! Not part of the shim's API: hidden from its documentation and free to
//! change with the fuzz targets. Nothing here panics on any input; the fuzz
//! targets check that, and the properties the callers rely on.
use std::path::PathBuf;

use serde_json::Value;
use wasishim_engine::WasmLayer;

use crate::artifact::{self, Classified};
use crate::negotiation;

pub use crate::artifact::Blob;
pub use crate::negotiation::ReplyForm;

/// `linux.cgroupsPath` as create turns it into a path below each
/// hierarchy's root, or the error text.
pub fn cgroups_path(path: &str) -> Result<PathBuf, String> {
    crate::cgroups::relative_path(path).map_err(|e| format!("{e:#}"))
}

/// What the shim makes of an image whose entrypoint is not in the rootfs.
#[derive(Debug)]
pub enum Image {
    /// An ordinary image (or an index of Linux images): the rootfs decides.
    Rootfs,
    /// A Wasm OCI artifact whose entrypoint is this layer. `layer_check`
    /// is what [`WasmLayer::new`] says of the layer's digest for an empty
    /// body (the content read from containerd is checked against it).
    Entrypoint { layer: Blob, layer_check: String },
    /// Spin's OCI artifact: its locked app's blob, and what
    /// [`wasishim_engine::SpinLockedApp::parse`] says of the `config` bytes
    /// (which are the locked app in older Spin artifacts).
    SpinApp { locked: Blob, config_check: String },
    /// Why the image cannot be run, as the container's create error says.
    Refused(String),
}

/// Follows an image the way create does when `process.args[0]` (`arg0`) is
/// not a file in the rootfs: `index`, if given, is the JSON the image name
/// points to, whose manifest is picked; `manifest` and `config` are the
/// JSON read next (`config` may be anything: unreadable means no hint).
pub fn image(index: Option<&[u8]>, manifest: &[u8], config: &[u8], arg0: &str) -> Image {
    if let Some(index) = index {
        let Ok(index) = serde_json::from_slice::<Value>(index) else {
            return Image::Refused("the index is not JSON".to_string());
        };
        if artifact::pick_manifest(&index).is_none() {
            return Image::Rootfs;
        }
    }
    let Ok(manifest) = serde_json::from_slice::<Value>(manifest) else {
        return Image::Refused("the manifest is not JSON".to_string());
    };
    let config_blob = artifact::config_blob(&manifest);
    let config_bytes = config;
    let config = serde_json::from_slice::<Value>(config).unwrap_or(Value::Null);
    match artifact::classify(&manifest, &config_blob.media_type, &config, arg0) {
        Ok(Classified::Rootfs) => Image::Rootfs,
        Ok(Classified::Entrypoint(layer)) => {
            let layer_check = match WasmLayer::new(Vec::new(), &layer.digest, "the layer") {
                Ok(_) => "matches".to_string(),
                Err(e) => format!("{e:#}"),
            };
            Image::Entrypoint { layer, layer_check }
        }
        Ok(Classified::SpinApp { locked, .. }) => {
            let config_check =
                match wasishim_engine::SpinLockedApp::parse(config_bytes, "locked app") {
                    Ok(app) => format!("{} layers", app.layer_digests().len()),
                    Err(e) => format!("{e:#}"),
                };
            Image::SpinApp {
                locked,
                config_check,
            }
        }
        Err(e) => Image::Refused(e.to_string()),
    }
}

/// What `start` makes of the containerd-versions file `known`: the version
/// remembered for `caller`, the reply form it leads to under
/// `MAX_SHIM_VERSION=2`, and the file rewritten with `caller`'s `version`
/// (every process of the old file taken as still running).
pub fn containerd_versions(
    known: &str,
    caller: &str,
    version: &str,
) -> (Option<String>, ReplyForm, String) {
    let remembered = negotiation::remembered_in(known, caller);
    let form = negotiation::reply_form(Some("2"), remembered.as_deref());
    let rewritten = negotiation::versions_file(known, caller, version, |_, _| true);
    (remembered, form, rewritten)
}
