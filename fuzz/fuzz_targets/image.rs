//! The JSON of an image the shim follows when a container's code is not in
//! its rootfs: index, manifest and config of a (maybe) Wasm OCI artifact,
//! as any registry may serve them, and the container's `args[0]`.
//!
//! Input: manifest, config, `args[0]` and optionally an index, separated by
//! 0xFF bytes (never part of JSON text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use wasishim_shim::fuzzing::{image, Image};

const WASM_LAYERS: [&str; 3] = [
    "application/wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xFF);
    let manifest = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();
    let arg0 = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let index = parts.next();
    match image(index, manifest, config, &arg0) {
        Image::Rootfs => {}
        Image::Entrypoint { layer, layer_check } => {
            assert!(
                WASM_LAYERS.contains(&layer.media_type.as_str()),
                "{layer:?}"
            );
            // Only the digest of the (empty) body read may pass the check:
            // the algorithm as OCI spells it, the hex digits in any case.
            let empty = format!("{:x}", Sha256::digest(b""));
            let matches = layer
                .digest
                .strip_prefix("sha256:")
                .is_some_and(|hex| hex.eq_ignore_ascii_case(&empty));
            assert_eq!(
                layer_check == "matches",
                matches,
                "{layer:?}: {layer_check}"
            );
        }
        Image::SpinApp {
            locked,
            config_check,
        } => {
            assert_eq!(
                locked.media_type, "application/vnd.fermyon.spin.application.v1+config",
                "{locked:?}"
            );
            assert!(!config_check.is_empty());
        }
        Image::Refused(why) => assert!(!why.is_empty()),
    }
});
