//! Wasm OCI artifacts: images whose layers are raw `.wasm` bytes rather than
//! tar archives of files, and which of their layers is the entrypoint.
//!
//! containerd does not unpack such layers into the rootfs, so the guest's code
//! is read from containerd's content store (see `content.rs`). Pure functions
//! of the image's index, manifest and config JSON; nothing here does I/O.
//!
//! The forms recognised:
//! - CNCF TAG-Runtime artifact: config `application/vnd.wasm.config.v0+json`,
//!   layers `application/wasm`; the first layer is the entrypoint.
//! - An ordinary OCI config with `architecture: wasm`, layers
//!   `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm` or
//!   `application/wasm` (`wkg oci push`).
//! - wasm-to-oci: config `application/vnd.wasm.config.v1+json`, layers
//!   `application/vnd.wasm.content.layer.v1+wasm`.
//!
//! - Spin's OCI artifact (`spin registry push`): a locked app of media type
//!   `application/vnd.fermyon.spin.application.v1+config`, as a layer (Spin
//!   3, beside an OCI config with `architecture: wasm`) or as the config
//!   itself (older Spin), wasm layers named from it by digest, and static
//!   files as data layers or a gzip'd tar "bundle" layer. The whole app runs;
//!   no layer is the entrypoint.
//!
//! An image with any tar layer (but Spin's bundle) is an ordinary image, whose entrypoint is a
//! file in its rootfs, whatever else it carries.
//!
//! Entrypoint rule for the forms without a "first layer" rule: the only wasm
//! layer; with several, the one whose `org.opencontainers.image.title`
//! annotation equals the file name of the container's `args[0]`; otherwise
//! the image is refused as ambiguous, naming the candidates.

use std::fmt;

use serde_json::Value;

/// Config media type of the CNCF TAG-Runtime Wasm artifact.
pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
/// Config media type of wasm-to-oci artifacts.
pub const WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
/// Layer media types holding raw wasm.
pub const WASM_LAYERS: [&str; 3] = [
    "application/wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];
/// Media type of Spin's locked app (a layer, or the config of older Spin).
pub const SPIN_LOCKED_APP: &str = "application/vnd.fermyon.spin.application.v1+config";
/// Media type of Spin's static-file bundle, a layer that is a tar but no
/// file system change.
pub const SPIN_ARCHIVE_LAYER: &str = "application/vnd.wasm.content.bundle.v1.tar+gzip";
/// Annotation naming a layer's file.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A blob an index or manifest points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    /// `org.opencontainers.image.title`, if any.
    pub title: Option<String>,
}

impl Blob {
    fn from_json(v: &Value) -> Option<Blob> {
        Some(Blob {
            media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
            digest: v["digest"].as_str()?.to_string(),
            size: v["size"].as_i64().unwrap_or(0),
            title: v["annotations"][TITLE_ANNOTATION]
                .as_str()
                .map(str::to_string),
        })
    }

    /// The title if the layer has one, else its digest, for messages.
    fn shown(&self) -> String {
        match &self.title {
            Some(title) => format!("{title} ({})", self.digest),
            None => self.digest.clone(),
        }
    }
}

/// Whether an image target of `media_type` is an index (a list of manifests).
pub fn is_index(media_type: &str) -> bool {
    INDEX_TYPES.contains(&media_type)
}

/// The manifest of an index to run as wasm: the one entry whose platform
/// architecture is `wasm`, else the only entry. `None` for a multi-platform
/// index of Linux images (an ordinary image).
pub fn pick_manifest(index: &Value) -> Option<Blob> {
    let entries = index["manifests"].as_array()?;
    let wasm: Vec<&Value> = entries
        .iter()
        .filter(|e| e["platform"]["architecture"] == "wasm")
        .collect();
    let chosen = match (wasm.as_slice(), entries.as_slice()) {
        ([one], _) => *one,
        ([], [one]) => one,
        _ => return None,
    };
    Blob::from_json(chosen)
}

/// The config a manifest points to; empty digest and media type when the
/// manifest names none.
pub fn config_blob(manifest: &Value) -> Blob {
    let config = &manifest["config"];
    Blob {
        media_type: config["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: config["digest"].as_str().unwrap_or_default().to_string(),
        size: config["size"].as_i64().unwrap_or(0),
        title: None,
    }
}

/// What a manifest says about where a container's code is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// An ordinary image: the code is a file in the rootfs.
    Rootfs,
    /// A Wasm OCI artifact whose entrypoint is this layer.
    Entrypoint(Blob),
    /// Spin's OCI artifact: its locked app, and every layer of the manifest
    /// (where the locked app's digests are looked up).
    SpinApp { locked: Blob, layers: Vec<Blob> },
}

/// Why a Wasm OCI artifact cannot be run. Each says what the image has and
/// what to push instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactError {
    /// The manifest is not JSON with a `layers` list.
    BadManifest(String),
    /// A wasm artifact without a single wasm layer.
    NoWasmLayer { found: Vec<String> },
    /// A TAG-Runtime artifact whose first layer is not wasm.
    FirstLayerNotWasm { media_type: String },
    /// Several wasm layers, and nothing says which one to run.
    Ambiguous { candidates: Vec<String> },
    /// A Spin artifact with more than one locked app.
    SeveralLockedApps { count: usize },
}

impl fmt::Display for ArtifactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactError::BadManifest(why) => write!(f, "its manifest cannot be read: {why}"),
            ArtifactError::NoWasmLayer { found } => {
                let found = if found.is_empty() {
                    "no layers".to_string()
                } else {
                    format!("layers of media type {}", found.join(", "))
                };
                write!(
                    f,
                    "it is a Wasm OCI artifact without a wasm layer (it has {found}): push the .wasm as a layer of media type {}",
                    WASM_LAYERS.join(", ")
                )
            }
            ArtifactError::FirstLayerNotWasm { media_type } => write!(
                f,
                "its config is {WASM_CONFIG_V0}, whose first layer is the entrypoint, but that layer is {media_type}, not wasm: push the .wasm as the first layer, of media type application/wasm"
            ),
            ArtifactError::Ambiguous { candidates } => write!(
                f,
                "it has {} wasm layers and nothing says which one to run ({}): give the container the file name of one of them (its {TITLE_ANNOTATION} annotation) as its command, or push a {WASM_CONFIG_V0} artifact, whose first layer is the entrypoint",
                candidates.len(),
                candidates.join(", ")
            ),
            ArtifactError::SeveralLockedApps { count } => write!(
                f,
                "it is a Spin app with {count} locked apps ({SPIN_LOCKED_APP} layers), and nothing says which one to run: push it again with `spin registry push`"
            ),
        }
    }
}

impl std::error::Error for ArtifactError {}

/// Every wasm layer of `manifest`: a precompile compiles them all when
/// only a container's command would say which one runs.
pub fn wasm_layers(manifest: &Value) -> Vec<Blob> {
    manifest["layers"]
        .as_array()
        .map(|layers| {
            layers
                .iter()
                .filter_map(Blob::from_json)
                .filter(|l| is_wasm_layer(&l.media_type))
                .collect()
        })
        .unwrap_or_default()
}

fn is_wasm_layer(media_type: &str) -> bool {
    WASM_LAYERS.contains(&media_type)
}

fn is_tar_layer(media_type: &str) -> bool {
    // OCI (`...layer.v1.tar`, `+gzip`, `+zstd`, non-distributable) and
    // Docker (`...rootfs.diff.tar.gzip`, foreign) layers.
    media_type.contains(".tar")
}

/// Decides whether the image is a Wasm OCI artifact and which layer is its
/// entrypoint, from its `manifest`, its config's media type and its `config`
/// (`Value::Null` if unreadable), and the container's `args[0]` (for the
/// title rule, see the module documentation).
///
/// # Errors
///
/// Fails for an artifact that cannot be run (see [`ArtifactError`]).
pub fn classify(
    manifest: &Value,
    config_media_type: &str,
    config: &Value,
    arg0: &str,
) -> Result<Classified, ArtifactError> {
    let Some(layers) = manifest["layers"].as_array() else {
        return Err(ArtifactError::BadManifest("no layers list".to_string()));
    };
    let layers: Vec<Blob> = layers.iter().filter_map(Blob::from_json).collect();
    // Spin's artifact first: its bundle layer is a tar, of static files.
    let locked: Vec<&Blob> = layers
        .iter()
        .filter(|l| l.media_type == SPIN_LOCKED_APP)
        .collect();
    match locked.as_slice() {
        [] if config_media_type == SPIN_LOCKED_APP => {
            return Ok(Classified::SpinApp {
                locked: config_blob(manifest),
                layers,
            })
        }
        [] => {}
        [one] => {
            return Ok(Classified::SpinApp {
                locked: (*one).clone(),
                layers: layers.clone(),
            })
        }
        several => {
            return Err(ArtifactError::SeveralLockedApps {
                count: several.len(),
            })
        }
    }
    if layers
        .iter()
        .any(|l| is_tar_layer(&l.media_type) && l.media_type != SPIN_ARCHIVE_LAYER)
    {
        return Ok(Classified::Rootfs);
    }
    let v0 = config_media_type == WASM_CONFIG_V0;
    let wasm_config = v0 || config_media_type == WASM_CONFIG_V1 || config["architecture"] == "wasm";
    let wasm: Vec<&Blob> = layers
        .iter()
        .filter(|l| is_wasm_layer(&l.media_type))
        .collect();
    if !wasm_config && wasm.is_empty() {
        return Ok(Classified::Rootfs);
    }
    let no_wasm = || ArtifactError::NoWasmLayer {
        found: layers.iter().map(|l| l.media_type.clone()).collect(),
    };
    if v0 {
        let first = layers.first().ok_or_else(no_wasm)?;
        if !is_wasm_layer(&first.media_type) {
            return Err(ArtifactError::FirstLayerNotWasm {
                media_type: first.media_type.clone(),
            });
        }
        return Ok(Classified::Entrypoint(first.clone()));
    }
    match wasm.as_slice() {
        [] => Err(no_wasm()),
        [one] => Ok(Classified::Entrypoint((*one).clone())),
        several => {
            let file = arg0.rsplit_once('#').map_or(arg0, |(file, _)| file);
            let name = file.rsplit('/').next().unwrap_or(file);
            let named: Vec<&&Blob> = several
                .iter()
                .filter(|l| l.title.as_deref() == Some(name))
                .collect();
            match named.as_slice() {
                [one] => Ok(Classified::Entrypoint((**one).clone())),
                _ => Err(ArtifactError::Ambiguous {
                    candidates: several.iter().map(|l| l.shown()).collect(),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn layer(media_type: &str, digest: &str, title: Option<&str>) -> Value {
        let mut l = json!({"mediaType": media_type, "digest": digest, "size": 10});
        if let Some(t) = title {
            l["annotations"] = json!({ TITLE_ANNOTATION: t });
        }
        l
    }

    fn manifest(layers: Vec<Value>) -> Value {
        json!({"schemaVersion": 2, "layers": layers})
    }

    fn entry(c: Result<Classified, ArtifactError>) -> String {
        match c {
            Ok(Classified::Entrypoint(blob)) => blob.digest,
            other => panic!("no entrypoint: {other:?}"),
        }
    }

    #[test]
    fn tag_runtime_artifact_runs_its_first_layer() {
        let m = manifest(vec![
            layer("application/wasm", D1, None),
            layer("application/wasm", D2, None),
        ]);
        let config = json!({"architecture": "wasm", "os": "wasip2", "layerDigests": [D1, D2]});
        assert_eq!(entry(classify(&m, WASM_CONFIG_V0, &config, "x")), D1);
    }

    #[test]
    fn oci_config_with_wasm_architecture() {
        let config = json!({"architecture": "wasm", "os": "wasip2"});
        for media_type in [
            "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
            "application/wasm",
        ] {
            let m = manifest(vec![layer(media_type, D1, None)]);
            assert_eq!(entry(classify(&m, OCI_CONFIG, &config, "/app.wasm")), D1);
        }
    }

    #[test]
    fn wasm_to_oci_artifact() {
        let m = manifest(vec![layer(
            "application/vnd.wasm.content.layer.v1+wasm",
            D2,
            None,
        )]);
        assert_eq!(entry(classify(&m, WASM_CONFIG_V1, &json!({}), "a")), D2);
    }

    #[test]
    fn wasm_layers_alone_make_an_artifact() {
        let config = json!({"architecture": "amd64", "os": "linux"});
        let m = manifest(vec![layer("application/wasm", D1, None)]);
        assert_eq!(entry(classify(&m, OCI_CONFIG, &config, "a")), D1);
    }

    #[test]
    fn tar_layers_make_an_ordinary_image() {
        let config = json!({"architecture": "amd64", "os": "linux"});
        let m = manifest(vec![layer(TAR_GZ, D1, None)]);
        assert_eq!(
            classify(&m, OCI_CONFIG, &config, "/app.wasm"),
            Ok(Classified::Rootfs)
        );
        // Even with a wasm layer and a wasm config beside it.
        let m = manifest(vec![
            layer(
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                D1,
                None,
            ),
            layer("application/wasm", D2, None),
        ]);
        assert_eq!(
            classify(&m, WASM_CONFIG_V0, &json!({"architecture": "wasm"}), "a"),
            Ok(Classified::Rootfs)
        );
        // An image without layers or wasm hints is not an artifact either.
        assert_eq!(
            classify(&manifest(vec![]), OCI_CONFIG, &config, "a"),
            Ok(Classified::Rootfs)
        );
    }

    #[test]
    fn artifact_without_wasm_layer_is_refused() {
        let m = manifest(vec![layer("text/plain", D1, None)]);
        let e = classify(&m, WASM_CONFIG_V1, &json!({}), "a").unwrap_err();
        assert_eq!(
            e,
            ArtifactError::NoWasmLayer {
                found: vec!["text/plain".to_string()]
            }
        );
        assert!(
            e.to_string()
                .contains("without a wasm layer (it has layers of media type text/plain)"),
            "{e}"
        );
        let e = classify(&manifest(vec![]), WASM_CONFIG_V0, &json!({}), "a").unwrap_err();
        assert!(e.to_string().contains("(it has no layers)"), "{e}");
        let e = classify(&json!({}), WASM_CONFIG_V0, &json!({}), "a").unwrap_err();
        assert!(matches!(e, ArtifactError::BadManifest(_)));
    }

    #[test]
    fn v0_artifact_needs_wasm_first() {
        let m = manifest(vec![
            layer("application/octet-stream", D1, None),
            layer("application/wasm", D2, None),
        ]);
        let e = classify(&m, WASM_CONFIG_V0, &json!({}), "a").unwrap_err();
        assert!(
            e.to_string()
                .contains("that layer is application/octet-stream, not wasm"),
            "{e}"
        );
    }

    #[test]
    fn several_wasm_layers_need_a_title_match() {
        let m = manifest(vec![
            layer("application/wasm", D1, Some("a.wasm")),
            layer("application/wasm", D2, Some("b.wasm")),
        ]);
        let config = json!({"architecture": "wasm"});
        assert_eq!(entry(classify(&m, OCI_CONFIG, &config, "/b.wasm")), D2);
        assert_eq!(entry(classify(&m, OCI_CONFIG, &config, "a.wasm#run")), D1);
        let e = classify(&m, OCI_CONFIG, &config, "/app.wasm").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("it has 2 wasm layers and nothing says which one to run (a.wasm ({D1}), b.wasm ({D2})): give the container the file name of one of them (its org.opencontainers.image.title annotation) as its command, or push a application/vnd.wasm.config.v0+json artifact, whose first layer is the entrypoint")
        );
    }

    #[test]
    fn spin_artifacts_run_their_locked_app() {
        const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
        let config = json!({"architecture": "wasm", "os": "wasip1"});
        // Spin 3: the locked app is a layer beside the components.
        let m = manifest(vec![
            layer("application/vnd.wasm.content.layer.v1+wasm", D1, None),
            layer("application/vnd.wasm.content.layer.v1+data", D2, None),
            layer(SPIN_LOCKED_APP, D3, None),
        ]);
        match classify(&m, OCI_CONFIG, &config, "/") {
            Ok(Classified::SpinApp { locked, layers }) => {
                assert_eq!(locked.digest, D3);
                assert_eq!(layers.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        // Older Spin: the locked app is the config; a bundle layer is no
        // ordinary image's tar.
        let mut m = manifest(vec![
            layer("application/vnd.wasm.content.layer.v1+wasm", D1, None),
            layer(SPIN_ARCHIVE_LAYER, D2, None),
        ]);
        m["config"] = json!({"mediaType": SPIN_LOCKED_APP, "digest": D3, "size": 9});
        match classify(&m, SPIN_LOCKED_APP, &Value::Null, "/") {
            Ok(Classified::SpinApp { locked, .. }) => assert_eq!(locked.digest, D3),
            other => panic!("{other:?}"),
        }
        let m = manifest(vec![
            layer(SPIN_LOCKED_APP, D1, None),
            layer(SPIN_LOCKED_APP, D2, None),
        ]);
        let e = classify(&m, OCI_CONFIG, &config, "/").unwrap_err();
        assert!(e.to_string().contains("with 2 locked apps"), "{e}");
    }

    #[test]
    fn config_blob_of_a_manifest() {
        let m =
            json!({"config": {"mediaType": WASM_CONFIG_V0, "digest": D1, "size": 7}, "layers": []});
        let config = config_blob(&m);
        assert_eq!(
            (
                config.media_type.as_str(),
                config.digest.as_str(),
                config.size
            ),
            (WASM_CONFIG_V0, D1, 7)
        );
        // Anything else (no config, wrong types) is an empty one.
        for m in [
            json!({}),
            json!([]),
            json!({"config": {"mediaType": 1, "digest": [], "size": "7"}}),
        ] {
            assert_eq!(
                config_blob(&m),
                Blob {
                    media_type: String::new(),
                    digest: String::new(),
                    size: 0,
                    title: None
                }
            );
        }
    }

    #[test]
    fn index_entry_for_wasm() {
        let index = json!({"manifests": [
            {"mediaType": "m", "digest": D1, "size": 1, "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "m", "digest": D2, "size": 2, "platform": {"architecture": "wasm", "os": "wasip1"}},
        ]});
        assert_eq!(
            pick_manifest(&index).map(|b| b.digest),
            Some(D2.to_string())
        );
        let single = json!({"manifests": [{"mediaType": "m", "digest": D1, "size": 1}]});
        assert_eq!(
            pick_manifest(&single).map(|b| b.digest),
            Some(D1.to_string())
        );
        let linux = json!({"manifests": [
            {"mediaType": "m", "digest": D1, "size": 1, "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "m", "digest": D2, "size": 1, "platform": {"architecture": "arm64", "os": "linux"}},
        ]});
        assert_eq!(pick_manifest(&linux), None);
        assert!(is_index("application/vnd.oci.image.index.v1+json"));
        assert!(!is_index("application/vnd.oci.image.manifest.v1+json"));
    }
}
