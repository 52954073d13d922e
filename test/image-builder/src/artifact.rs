//! Wasm OCI artifacts: manifests whose layers are raw `.wasm` bytes rather
//! than tar archives, in the forms registries carry today, written as an OCI
//! image layout directory (for `skopeo copy oci:DIR docker://...`) or tarball
//! (for `ctr images import`).
//!
//! ```no_run
//! use wasishim_image::{Artifact, ArtifactForm};
//! let wasm = std::fs::read("hello.wasm")?;
//! Artifact::new("127.0.0.1:5000/hello:v1", ArtifactForm::WasmConfigV0)
//!     .wasm(wasm)
//!     .write_layout_dir(std::path::Path::new("hello-oci"))?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Every blob is deterministic: the same input gives the same digests.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{digest, full_name, tag, MEDIA_INDEX, MEDIA_MANIFEST};

/// Config of the CNCF TAG-Runtime Wasm artifact.
pub const MEDIA_WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
/// Config of the older wasm-to-oci artifacts.
pub const MEDIA_WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
/// An ordinary OCI image config.
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A raw wasm layer (TAG-Runtime artifact, and some OCI images).
pub const MEDIA_WASM: &str = "application/wasm";
/// A raw component layer as `wkg oci push` writes it.
pub const MEDIA_COMPONENT_LAYER: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// A raw wasm layer of wasm-to-oci (and Spin's registry push).
pub const MEDIA_WASM_CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// Spin's locked app, a layer of a Spin artifact (`spin registry push`).
pub const MEDIA_SPIN_LOCKED_APP: &str = "application/vnd.fermyon.spin.application.v1+config";
/// The label of a Spin artifact's OCI config naming its locked app's digest
/// (which makes the configs of two apps differ, as image IDs must).
pub const SPIN_LOCKED_APP_LABEL: &str = "com.fermyon.spin.lockedAppDigest";

/// Which kind of manifest and config an [`Artifact`] gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactForm {
    /// `wasm-config-v0`: config `application/vnd.wasm.config.v0+json`
    /// (`architecture: wasm`, `os: wasip1|wasip2`, `layerDigests`), layers
    /// `application/wasm`; the first layer is the entrypoint.
    WasmConfigV0,
    /// `oci-component`: an ordinary OCI config with `architecture: wasm`,
    /// layers `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`.
    OciComponent,
    /// `oci-wasm`: an ordinary OCI config with `architecture: wasm`, layers
    /// `application/wasm`.
    OciWasm,
    /// `wasm-to-oci`: config `application/vnd.wasm.config.v1+json`, layers
    /// `application/vnd.wasm.content.layer.v1+wasm`.
    WasmToOci,
    /// Spin's OCI artifact as Spin 3's `spin registry push` writes it: an
    /// OCI config (`architecture: wasm`, a label with the locked app's
    /// digest), wasm layers `application/vnd.wasm.content.layer.v1+wasm`
    /// and the locked app as a layer of
    /// `application/vnd.fermyon.spin.application.v1+config` (see
    /// `crate::spin_artifact`). Not in [`ArtifactForm::ALL`]: it is not a
    /// single program.
    Spin,
}

impl ArtifactForm {
    /// Every form, in the order of [`ArtifactForm::name`]'s documentation.
    pub const ALL: [ArtifactForm; 4] = [
        ArtifactForm::WasmConfigV0,
        ArtifactForm::OciComponent,
        ArtifactForm::OciWasm,
        ArtifactForm::WasmToOci,
    ];

    /// The form's command-line name: `wasm-config-v0`, `oci-component`,
    /// `oci-wasm` or `wasm-to-oci`.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactForm::WasmConfigV0 => "wasm-config-v0",
            ArtifactForm::OciComponent => "oci-component",
            ArtifactForm::OciWasm => "oci-wasm",
            ArtifactForm::WasmToOci => "wasm-to-oci",
            ArtifactForm::Spin => "spin",
        }
    }

    /// The form named `name` (see [`ArtifactForm::name`]).
    pub fn parse(name: &str) -> Result<ArtifactForm> {
        let all = ArtifactForm::ALL.into_iter().chain([ArtifactForm::Spin]);
        match all.clone().find(|f| f.name() == name) {
            Some(form) => Ok(form),
            None => {
                let names: Vec<&str> = all.map(|f| f.name()).collect();
                bail!(
                    "unknown artifact form '{name}': use one of {}",
                    names.join(", ")
                )
            }
        }
    }

    /// The media type of the form's config blob.
    pub fn config_media_type(self) -> &'static str {
        match self {
            ArtifactForm::WasmConfigV0 => MEDIA_WASM_CONFIG_V0,
            ArtifactForm::OciComponent | ArtifactForm::OciWasm | ArtifactForm::Spin => {
                MEDIA_OCI_CONFIG
            }
            ArtifactForm::WasmToOci => MEDIA_WASM_CONFIG_V1,
        }
    }

    /// The media type the form gives a wasm layer.
    pub fn wasm_media_type(self) -> &'static str {
        match self {
            ArtifactForm::WasmConfigV0 | ArtifactForm::OciWasm => MEDIA_WASM,
            ArtifactForm::OciComponent => MEDIA_COMPONENT_LAYER,
            ArtifactForm::WasmToOci | ArtifactForm::Spin => MEDIA_WASM_CONTENT_LAYER,
        }
    }
}

/// One layer of an artifact: raw bytes, not a tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactLayer {
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// `org.opencontainers.image.title` annotation, e.g. `app.wasm`.
    pub title: Option<String>,
}

/// A file of an OCI image layout: (path, contents).
type LayoutFile = (String, Vec<u8>);

/// A Wasm OCI artifact: a name, a form and its layers. Nothing touches the
/// disk until [`Artifact::write_layout_dir`] or [`Artifact::write_layout_tar`].
#[derive(Debug, Clone)]
pub struct Artifact {
    name: String,
    form: ArtifactForm,
    layers: Vec<ArtifactLayer>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
}

/// The blobs of an artifact, for checks, pushes and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactBlobs {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    /// (media type, bytes, digest) of each layer, in manifest order.
    pub layers: Vec<(String, Vec<u8>, String)>,
}

impl Artifact {
    /// An artifact named `name` (a name without a tag gets `:latest`) with
    /// no layers yet.
    pub fn new(name: &str, form: ArtifactForm) -> Artifact {
        Artifact {
            name: full_name(name),
            form,
            layers: Vec::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The full name, with its tag.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The form.
    pub fn form(&self) -> ArtifactForm {
        self.form
    }

    /// Adds a wasm layer with the form's media type, titled `app.wasm`. The
    /// bytes are not checked, so broken modules can be packaged for tests.
    pub fn wasm(self, wasm: impl Into<Vec<u8>>) -> Artifact {
        let media_type = self.form.wasm_media_type().to_string();
        self.layer(media_type, wasm, Some("app.wasm"))
    }

    /// Adds a layer of any media type, optionally titled.
    pub fn layer(
        mut self,
        media_type: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
        title: Option<&str>,
    ) -> Artifact {
        self.layers.push(ArtifactLayer {
            media_type: media_type.into(),
            bytes: bytes.into(),
            title: title.map(str::to_string),
        });
        self
    }

    /// `config.Entrypoint` of the forms with an ordinary OCI config
    /// (`oci-component`, `oci-wasm`); the other configs have no such field.
    pub fn entrypoint<I, S>(mut self, args: I) -> Artifact
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = args.into_iter().map(Into::into).collect();
        self
    }

    /// `config.Cmd`, as [`Artifact::entrypoint`].
    pub fn cmd<I, S>(mut self, args: I) -> Artifact
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds `K=V` to `config.Env`, as [`Artifact::entrypoint`].
    pub fn env(mut self, key: &str, value: &str) -> Artifact {
        self.env.push(format!("{key}={value}"));
        self
    }

    /// `wasip2` if the first wasm layer is a component (by its header),
    /// else `wasip1`.
    fn os(&self) -> &'static str {
        let component = self
            .layers
            .first()
            .is_some_and(|l| l.bytes.starts_with(b"\0asm") && l.bytes.get(6..8) == Some(&[1, 0]));
        if component {
            "wasip2"
        } else {
            "wasip1"
        }
    }

    /// Builds the manifest, config and layer blobs.
    pub fn blobs(&self) -> Result<ArtifactBlobs> {
        let layers: Vec<(String, Vec<u8>, String)> = self
            .layers
            .iter()
            .map(|l| (l.media_type.clone(), l.bytes.clone(), digest(&l.bytes)))
            .collect();
        let layer_digests: Vec<&str> = layers.iter().map(|l| l.2.as_str()).collect();
        let created = "2000-01-01T00:00:00Z";
        let config = match self.form {
            ArtifactForm::WasmConfigV0 => json!({
                "created": created,
                "architecture": "wasm",
                "os": self.os(),
                "layerDigests": layer_digests,
            }),
            ArtifactForm::OciComponent | ArtifactForm::OciWasm => {
                let mut config = serde_json::Map::new();
                if !self.entrypoint.is_empty() {
                    config.insert("Entrypoint".into(), json!(self.entrypoint));
                }
                if !self.cmd.is_empty() {
                    config.insert("Cmd".into(), json!(self.cmd));
                }
                if !self.env.is_empty() {
                    config.insert("Env".into(), json!(self.env));
                }
                json!({
                    "created": created,
                    "architecture": "wasm",
                    "os": self.os(),
                    "config": config,
                    // Raw layers are not file system changes: no diff_ids.
                    "rootfs": { "type": "layers", "diff_ids": [] },
                })
            }
            ArtifactForm::WasmToOci => json!({}),
            ArtifactForm::Spin => {
                let locked = layers
                    .iter()
                    .find(|l| l.0 == MEDIA_SPIN_LOCKED_APP)
                    .map(|l| l.2.clone())
                    .unwrap_or_default();
                json!({
                    "architecture": "wasm",
                    "os": "wasip1",
                    "config": { "Labels": { SPIN_LOCKED_APP_LABEL: locked } },
                    "rootfs": { "type": "layers", "diff_ids": [] },
                })
            }
        };
        let config = serde_json::to_vec(&config)?;
        let config_digest = digest(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": self.form.config_media_type(),
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": self.layers.iter().zip(&layers).map(|(l, (_, bytes, d))| {
                let mut desc = json!({ "mediaType": l.media_type, "digest": d, "size": bytes.len() });
                if let Some(title) = &l.title {
                    desc["annotations"] = json!({ "org.opencontainers.image.title": title });
                }
                desc
            }).collect::<Vec<_>>(),
        }))?;
        let manifest_digest = digest(&manifest);
        Ok(ArtifactBlobs {
            manifest,
            manifest_digest,
            config,
            config_digest,
            layers,
        })
    }

    /// The layout's `index.json`: the manifest, named by its tag (what
    /// skopeo's `oci:DIR:TAG` looks for) and its full name (what `ctr images
    /// import` names the image).
    fn index(&self, blobs: &ArtifactBlobs) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": blobs.manifest_digest,
                "size": blobs.manifest.len(),
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag(&self.name),
                },
            }],
        }))?)
    }

    /// Every file of the layout, and the blobs.
    fn layout_files(&self) -> Result<(Vec<LayoutFile>, ArtifactBlobs)> {
        if self.layers.is_empty() {
            bail!("artifact {} has no layers: add the wasm", self.name);
        }
        let blobs = self.blobs()?;
        let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        let mut files = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_string(), self.index(&blobs)?),
            (blob(&blobs.manifest_digest), blobs.manifest.clone()),
            (blob(&blobs.config_digest), blobs.config.clone()),
        ];
        for (_, bytes, d) in &blobs.layers {
            files.push((blob(d), bytes.clone()));
        }
        Ok((files, blobs))
    }

    /// Writes the OCI image layout into directory `dir` (created if needed).
    pub fn write_layout_dir(&self, dir: &Path) -> Result<ArtifactBlobs> {
        let (files, blobs) = self.layout_files()?;
        for (path, contents) in files {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(blobs)
    }

    /// Writes the OCI image layout as a tarball (for `ctr images import`).
    pub fn write_layout_tar(&self, out: &Path) -> Result<ArtifactBlobs> {
        let (files, blobs) = self.layout_files()?;
        let mut tar = tar::Builder::new(Vec::new());
        for (path, contents) in files {
            let mut header =
                crate::tar_header(tar::EntryType::Regular, 0o644, contents.len() as u64);
            tar.append_data(&mut header, path, contents.as_slice())?;
        }
        std::fs::write(out, tar.into_inner()?)
            .with_context(|| format!("writing {}", out.display()))?;
        Ok(blobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn parse(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn forms_have_their_media_types() {
        for (form, config, layer) in [
            (ArtifactForm::WasmConfigV0, MEDIA_WASM_CONFIG_V0, MEDIA_WASM),
            (
                ArtifactForm::OciComponent,
                MEDIA_OCI_CONFIG,
                MEDIA_COMPONENT_LAYER,
            ),
            (ArtifactForm::OciWasm, MEDIA_OCI_CONFIG, MEDIA_WASM),
            (
                ArtifactForm::WasmToOci,
                MEDIA_WASM_CONFIG_V1,
                MEDIA_WASM_CONTENT_LAYER,
            ),
        ] {
            assert_eq!(ArtifactForm::parse(form.name()).unwrap(), form);
            let blobs = Artifact::new("x", form).wasm(MODULE).blobs().unwrap();
            let manifest = parse(&blobs.manifest);
            assert_eq!(manifest["config"]["mediaType"], config);
            assert_eq!(manifest["layers"][0]["mediaType"], layer);
            assert_eq!(manifest["layers"][0]["digest"], digest(MODULE));
            assert_eq!(
                manifest["layers"][0]["annotations"]["org.opencontainers.image.title"],
                "app.wasm"
            );
            assert_eq!(digest(&blobs.config), blobs.config_digest);
        }
        assert!(ArtifactForm::parse("docker").is_err());
    }

    #[test]
    fn v0_config_names_platform_and_layers() {
        let blobs = Artifact::new("x", ArtifactForm::WasmConfigV0)
            .wasm(COMPONENT)
            .blobs()
            .unwrap();
        let config = parse(&blobs.config);
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["os"], "wasip2");
        assert_eq!(config["layerDigests"], json!([digest(COMPONENT)]));
        let module = Artifact::new("x", ArtifactForm::WasmConfigV0).wasm(MODULE);
        assert_eq!(parse(&module.blobs().unwrap().config)["os"], "wasip1");
    }

    #[test]
    fn oci_config_carries_the_runtime_config() {
        let blobs = Artifact::new("x", ArtifactForm::OciWasm)
            .wasm(MODULE)
            .entrypoint(["/app.wasm"])
            .env("A", "1")
            .blobs()
            .unwrap();
        let config = parse(&blobs.config);
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["config"]["Entrypoint"], json!(["/app.wasm"]));
        assert_eq!(config["config"]["Env"], json!(["A=1"]));
        assert_eq!(config["rootfs"]["diff_ids"], json!([]));
    }

    #[test]
    fn layout_dir_holds_every_blob() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Artifact::new("reg/x:v1", ArtifactForm::WasmToOci)
            .wasm(MODULE)
            .write_layout_dir(dir.path())
            .unwrap();
        let index = parse(&std::fs::read(dir.path().join("index.json")).unwrap());
        assert_eq!(index["manifests"][0]["digest"], blobs.manifest_digest);
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "v1"
        );
        for d in [
            &blobs.manifest_digest,
            &blobs.config_digest,
            &blobs.layers[0].2,
        ] {
            let path = dir
                .path()
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"));
            assert_eq!(digest(&std::fs::read(path).unwrap()), *d);
        }
        assert!(Artifact::new("y", ArtifactForm::OciWasm)
            .write_layout_dir(dir.path())
            .is_err());
    }
}
