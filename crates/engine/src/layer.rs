//! Guest code handed over as the bytes of an image layer (a Wasm OCI
//! artifact's) instead of a file in the rootfs; prepared with
//! [`WasmEngine::prepare_layer`](crate::WasmEngine::prepare_layer).
use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

/// The wasm of a guest that is not a file in its rootfs: one layer of a Wasm
/// OCI artifact, read by the caller from wherever the image's content lives.
///
/// Its OCI digest keys the compiled-code cache, so a layer is compiled once
/// per node whichever image, tag or container names it.
#[derive(Clone)]
pub struct WasmLayer {
    bytes: Vec<u8>,
    digest: String,
    name: String,
}

impl std::fmt::Debug for WasmLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmLayer")
            .field("digest", &self.digest)
            .field("name", &self.name)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl WasmLayer {
    /// `bytes` whose OCI digest is `digest` (`sha256:<64 hex digits>`);
    /// `name` says in errors where they come from, e.g. `layer sha256:1ec3…
    /// of image example.com/hello:v1`.
    ///
    /// Costs one SHA-256 pass over `bytes` (about 1 ms per MB).
    ///
    /// # Errors
    ///
    /// Fails if `digest` is not a sha256 digest, or does not match `bytes`
    /// (a damaged content store: pulling the image again fixes it).
    ///
    /// ```
    /// # use wasishim_engine::WasmLayer;
    /// let wasm = b"(module)".to_vec();
    /// let digest = "sha256:2d3ec4d27f1a4d2a54a5b1c8aac12cf3e2f7adca36b1bb0a1bf8e75dc7cfc1a4";
    /// assert!(WasmLayer::new(wasm, digest, "layer of example").is_err()); // not its digest
    /// ```
    pub fn new(bytes: Vec<u8>, digest: &str, name: &str) -> Result<WasmLayer> {
        let Some(hex) = digest.strip_prefix("sha256:") else {
            bail!("{name}: digest {digest} is not a sha256 digest, the only algorithm supported for wasm layers");
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{name}: {digest} is not a valid sha256 digest");
        }
        let actual = Sha256::digest(&bytes);
        let matches = actual
            .iter()
            .zip(hex.as_bytes().chunks(2))
            .all(|(byte, pair)| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    == Some(*byte)
            });
        if !matches {
            bail!("{name}: its {} bytes do not match its digest {digest}: the image's content is damaged; remove the image and pull it again", bytes.len());
        }
        Ok(WasmLayer {
            bytes,
            digest: digest.to_string(),
            name: name.to_string(),
        })
    }

    /// The layer's OCI digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What errors call the layer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The layer's wasm.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_must_match_the_bytes() {
        let bytes = b"(module)".to_vec();
        let good = format!("sha256:{:x}", Sha256::digest(&bytes));
        let layer = match WasmLayer::new(bytes.clone(), &good, "layer x") {
            Ok(layer) => layer,
            Err(e) => panic!("matching digest refused: {e:#}"),
        };
        assert_eq!(layer.digest(), good);
        let upper = good.to_uppercase().replace("SHA256:", "sha256:");
        assert!(WasmLayer::new(bytes.clone(), &upper, "layer x").is_ok());
        for (bad, says) in [
            ("sha512:00", "not a sha256 digest"),
            ("sha256:1234", "not a valid sha256 digest"),
            (
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "do not match its digest",
            ),
        ] {
            match WasmLayer::new(bytes.clone(), bad, "layer x") {
                Ok(_) => panic!("{bad} accepted"),
                Err(e) => assert!(e.to_string().contains(says), "{bad}: {e}"),
            }
        }
    }
}
