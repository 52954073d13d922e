//! Builds single-layer OCI images of WASI programs, written as an OCI image
//! layout tarball that `ctr images import` accepts.
//!
//! ```no_run
//! use wasishim_image::Image;
//! let wasm = std::fs::read("hello.wasm")?;
//! Image::new("docker.io/library/hello:latest")
//!     .wasm(wasm)
//!     .cmd(["--verbose"])
//!     .env("GREETING", "hi")
//!     .write_to(std::path::Path::new("hello.tar"))?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The image's platform is the host's (`linux` and the host architecture in
//! OCI spelling), so `ctr run` picks it without `--platform`. The layer is a
//! gzip-compressed tar owned by root with fixed timestamps, so the same input
//! always gives the same digests.
//!
//! [`Artifact`] writes Wasm OCI artifacts instead: manifests whose layers are
//! raw `.wasm` bytes, as registries carry them (see `artifact.rs`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

mod artifact;
mod spin;
pub use artifact::{
    Artifact, ArtifactBlobs, ArtifactForm, ArtifactLayer, MEDIA_COMPONENT_LAYER, MEDIA_OCI_CONFIG,
    MEDIA_SPIN_LOCKED_APP, MEDIA_WASM, MEDIA_WASM_CONFIG_V0, MEDIA_WASM_CONFIG_V1,
    MEDIA_WASM_CONTENT_LAYER, SPIN_LOCKED_APP_LABEL,
};
pub use spin::spin_artifact;

/// Where the wasm goes in the image unless [`Image::wasm_path`] says otherwise.
pub const DEFAULT_WASM_PATH: &str = "/app.wasm";

pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Timestamp of every tar entry (2000-01-01T00:00:00Z), for reproducible digests.
const MTIME: u64 = 946_684_800;

/// One regular file of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Absolute path inside the image.
    pub path: String,
    /// File contents.
    pub contents: Vec<u8>,
    /// Unix permission bits.
    pub mode: u32,
}

/// An image description: a name, the files of its single layer and its
/// runtime configuration. Nothing touches the disk until [`Image::write_to`]
/// or [`Image::to_layout_tar`].
#[derive(Debug, Clone)]
pub struct Image {
    name: String,
    wasm: Option<Vec<u8>>,
    wasm_path: String,
    files: Vec<LayerFile>,
    dirs: Vec<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: Option<String>,
}

/// Digests of what [`Image::to_layout_tar`] wrote, for checks and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:...` of the manifest: the image's identity in containerd.
    pub manifest_digest: String,
    /// `sha256:...` of the config blob.
    pub config_digest: String,
    /// `sha256:...` of the compressed layer blob.
    pub layer_digest: String,
    /// `sha256:...` of the uncompressed layer (the config's `diff_ids` entry).
    pub diff_id: String,
}

impl Image {
    /// An image named `name` (e.g. `docker.io/library/hello:latest`; a name
    /// without a tag gets `:latest`) with an empty layer.
    pub fn new(name: &str) -> Self {
        Image {
            name: full_name(name),
            wasm: None,
            wasm_path: DEFAULT_WASM_PATH.to_string(),
            files: Vec::new(),
            dirs: Vec::new(),
            entrypoint: None,
            cmd: Vec::new(),
            env: Vec::new(),
            workdir: None,
        }
    }

    /// The full image name, with its tag.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Puts `wasm` at the wasm path (mode 0755). The bytes are not checked,
    /// so broken modules can be packaged for negative tests.
    pub fn wasm(mut self, wasm: impl Into<Vec<u8>>) -> Self {
        self.wasm = Some(wasm.into());
        self
    }

    /// Where the wasm goes (default [`DEFAULT_WASM_PATH`]); also the default
    /// entrypoint.
    pub fn wasm_path(mut self, path: &str) -> Self {
        self.wasm_path = path.to_string();
        self
    }

    /// Adds a regular file. A later file at the same path replaces an earlier
    /// one, and replaces the wasm if it lands on the wasm path.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push(LayerFile {
            path: path.to_string(),
            contents: contents.into(),
            mode,
        });
        self
    }

    /// Adds an empty directory (mode 0755).
    pub fn dir(mut self, path: &str) -> Self {
        self.dirs.push(path.to_string());
        self
    }

    /// Sets the config's `Entrypoint` (default: `[wasm path]`). May carry an
    /// export suffix, e.g. `/app.wasm#run`.
    pub fn entrypoint<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the config's `Cmd` (the default arguments).
    pub fn cmd<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds `K=V` to the config's `Env`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }

    /// Sets the config's `WorkingDir`.
    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = Some(dir.to_string());
        self
    }

    /// The layer's files in tar order, after replacements.
    pub fn layer_files(&self) -> Vec<LayerFile> {
        let mut by_path: BTreeMap<String, LayerFile> = BTreeMap::new();
        if let Some(wasm) = &self.wasm {
            let path = normalize(&self.wasm_path);
            by_path.insert(
                path.clone(),
                LayerFile {
                    path,
                    contents: wasm.clone(),
                    mode: 0o755,
                },
            );
        }
        for f in &self.files {
            let path = normalize(&f.path);
            by_path.insert(path.clone(), LayerFile { path, ..f.clone() });
        }
        by_path.into_values().collect()
    }

    /// The uncompressed layer tar: parent directories, then files, all owned
    /// by root with a fixed mtime.
    pub fn layer_tar(&self) -> Result<Vec<u8>> {
        let files = self.layer_files();
        let mut dirs: Vec<String> = self.dirs.iter().map(|d| normalize(d)).collect();
        for f in &files {
            let mut parent = Path::new(&f.path).parent();
            while let Some(p) = parent {
                let s = p.to_string_lossy();
                if s == "/" || s.is_empty() {
                    break;
                }
                dirs.push(s.to_string());
                parent = p.parent();
            }
        }
        dirs.sort();
        dirs.dedup();

        let mut builder = tar::Builder::new(Vec::new());
        for d in &dirs {
            let mut header = tar_header(tar::EntryType::Directory, 0o755, 0);
            builder
                .append_data(&mut header, format!("{}/", rel(d)), std::io::empty())
                .with_context(|| format!("adding directory {d} to the layer"))?;
        }
        for f in &files {
            let mut header = tar_header(tar::EntryType::Regular, f.mode, f.contents.len() as u64);
            builder
                .append_data(&mut header, rel(&f.path), f.contents.as_slice())
                .with_context(|| format!("adding {} to the layer", f.path))?;
        }
        Ok(builder.into_inner()?)
    }

    /// The whole OCI image layout (`oci-layout`, `index.json`, `blobs/`) as
    /// tar bytes.
    pub fn to_layout_tar(&self) -> Result<(Vec<u8>, Written)> {
        let layer = self.layer_tar()?;
        let diff_id = digest(&layer);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&layer)?;
        let layer_gz = gz.finish()?;
        let layer_digest = digest(&layer_gz);

        let (os, arch) = host_platform();
        let mut config = serde_json::Map::new();
        config.insert(
            "Entrypoint".into(),
            json!(self
                .entrypoint
                .clone()
                .unwrap_or_else(|| vec![self.wasm_path.clone()])),
        );
        if !self.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        if let Some(w) = &self.workdir {
            config.insert("WorkingDir".into(), json!(w));
        }
        let config_blob = serde_json::to_vec(&json!({
            "created": "2000-01-01T00:00:00Z",
            "architecture": arch,
            "os": os,
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": "2000-01-01T00:00:00Z", "created_by": "wasishim-image" }],
        }))?;
        let config_digest = digest(&config_blob);

        let manifest_blob = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": MEDIA_CONFIG,
                "digest": config_digest,
                "size": config_blob.len(),
            },
            "layers": [{
                "mediaType": MEDIA_LAYER_GZIP,
                "digest": layer_digest,
                "size": layer_gz.len(),
            }],
        }))?;
        let manifest_digest = digest(&manifest_blob);

        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_blob.len(),
                "platform": { "architecture": arch, "os": os },
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag(&self.name),
                },
            }],
        }))?;

        let mut out = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], kind: tar::EntryType, mode: u32| {
            let mut header = tar_header(kind, mode, data.len() as u64);
            out.append_data(&mut header, path, data)
        };
        add(
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            tar::EntryType::Regular,
            0o644,
        )?;
        add("index.json", &index, tar::EntryType::Regular, 0o644)?;
        add("blobs/", &[], tar::EntryType::Directory, 0o755)?;
        add("blobs/sha256/", &[], tar::EntryType::Directory, 0o755)?;
        for (d, data) in [
            (&config_digest, &config_blob),
            (&layer_digest, &layer_gz),
            (&manifest_digest, &manifest_blob),
        ] {
            let hex = d.trim_start_matches("sha256:");
            add(
                &format!("blobs/sha256/{hex}"),
                data,
                tar::EntryType::Regular,
                0o644,
            )?;
        }
        let bytes = out.into_inner()?;
        Ok((
            bytes,
            Written {
                manifest_digest,
                config_digest,
                layer_digest,
                diff_id,
            },
        ))
    }

    /// Writes the OCI image layout tarball to `out`.
    ///
    /// Fails if `out` cannot be written.
    pub fn write_to(&self, out: &Path) -> Result<Written> {
        let (bytes, written) = self.to_layout_tar()?;
        std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
        Ok(written)
    }
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The host platform in OCI spelling: (`os`, `architecture`).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    ("linux", arch)
}

/// Parses a `K=V` pair.
pub fn parse_env(kv: &str) -> Result<(&str, &str)> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => bail!("--env takes KEY=VALUE, got '{kv}'"),
    }
}

pub(crate) fn full_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

pub(crate) fn tag(full: &str) -> &str {
    let last = full.rsplit('/').next().unwrap_or(full);
    last.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest")
}

fn normalize(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    format!("/{trimmed}")
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

pub(crate) fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::collections::HashMap;
    use std::io::Read;

    /// Reads a tar into path -> (entry type, mode, contents).
    fn entries(tar_bytes: &[u8]) -> HashMap<String, (tar::EntryType, u32, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut map = HashMap::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().to_string();
            let kind = e.header().entry_type();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            map.insert(path, (kind, mode, data));
        }
        map
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn blob<'a>(
        layout: &'a HashMap<String, (tar::EntryType, u32, Vec<u8>)>,
        digest: &str,
    ) -> &'a [u8] {
        let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        &layout
            .get(&path)
            .unwrap_or_else(|| panic!("no blob {path}"))
            .2
    }

    fn sample() -> Image {
        Image::new("docker.io/library/hello")
            .wasm(b"\0asm\x01\0\0\0".to_vec())
            .file("/etc/greeting.txt", "hi\n", 0o644)
            .dir("/work")
            .cmd(["a", "b"])
            .env("K", "V")
            .workdir("/work")
    }

    #[test]
    fn names_get_a_tag() {
        assert_eq!(Image::new("hello").name(), "hello:latest");
        assert_eq!(
            Image::new("localhost:5000/x/hello").name(),
            "localhost:5000/x/hello:latest"
        );
        assert_eq!(Image::new("docker.io/a/b:v1").name(), "docker.io/a/b:v1");
        assert_eq!(tag("docker.io/a/b:v1"), "v1");
    }

    #[test]
    fn layer_lists_files_and_parents() {
        let layer = sample().layer_tar().unwrap();
        let e = entries(&layer);
        let mut paths: Vec<_> = e.keys().cloned().collect();
        paths.sort();
        assert_eq!(
            paths,
            ["app.wasm", "etc/", "etc/greeting.txt", "work/"],
            "{paths:?}"
        );
        assert_eq!(e["app.wasm"].1, 0o755);
        assert_eq!(e["app.wasm"].2, b"\0asm\x01\0\0\0");
        assert_eq!(e["etc/greeting.txt"].2, b"hi\n");
        assert_eq!(e["work/"].0, tar::EntryType::Directory);
    }

    #[test]
    fn later_file_replaces_the_wasm() {
        let img = sample().file("/app.wasm", "not wasm", 0o755);
        let files = img.layer_files();
        let app = files.iter().find(|f| f.path == "/app.wasm").unwrap();
        assert_eq!(app.contents, b"not wasm");
        assert_eq!(files.iter().filter(|f| f.path == "/app.wasm").count(), 1);
    }

    #[test]
    fn digests_match_contents() {
        let (bytes, w) = sample().to_layout_tar().unwrap();
        let layout = entries(&bytes);
        assert_eq!(json(&layout["oci-layout"].2)["imageLayoutVersion"], "1.0.0");

        let index = json(&layout["index.json"].2);
        let desc = &index["manifests"][0];
        assert_eq!(desc["digest"], w.manifest_digest.as_str());
        assert_eq!(
            desc["annotations"]["io.containerd.image.name"],
            "docker.io/library/hello:latest"
        );
        assert_eq!(
            desc["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );

        let manifest_bytes = blob(&layout, &w.manifest_digest);
        assert_eq!(digest(manifest_bytes), w.manifest_digest);
        assert_eq!(desc["size"], manifest_bytes.len());
        let manifest = json(manifest_bytes);

        let config_bytes = blob(&layout, &w.config_digest);
        assert_eq!(digest(config_bytes), w.config_digest);
        assert_eq!(manifest["config"]["digest"], w.config_digest.as_str());
        assert_eq!(manifest["config"]["size"], config_bytes.len());

        let layer_gz = blob(&layout, &w.layer_digest);
        assert_eq!(digest(layer_gz), w.layer_digest);
        assert_eq!(manifest["layers"][0]["size"], layer_gz.len());
        let mut layer = Vec::new();
        GzDecoder::new(layer_gz).read_to_end(&mut layer).unwrap();
        assert_eq!(digest(&layer), w.diff_id);

        let config = json(config_bytes);
        assert_eq!(config["rootfs"]["diff_ids"][0], w.diff_id.as_str());
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], host_platform().1);
        assert_eq!(config["config"]["Entrypoint"], json!(["/app.wasm"]));
        assert_eq!(config["config"]["Cmd"], json!(["a", "b"]));
        assert_eq!(config["config"]["Env"], json!(["K=V"]));
        assert_eq!(config["config"]["WorkingDir"], "/work");
    }

    #[test]
    fn output_is_reproducible() {
        let (a, wa) = sample().to_layout_tar().unwrap();
        let (b, wb) = sample().to_layout_tar().unwrap();
        assert_eq!(wa, wb);
        assert_eq!(a, b);
    }

    #[test]
    fn entrypoint_defaults_to_wasm_path() {
        let (bytes, w) = Image::new("x")
            .wasm(b"\0asm".to_vec())
            .wasm_path("/bin/tool.wasm")
            .to_layout_tar()
            .unwrap();
        let layout = entries(&bytes);
        let config = json(blob(&layout, &w.config_digest));
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/tool.wasm"]));
        assert!(config["config"].get("Cmd").is_none());
    }

    #[test]
    fn env_needs_a_key() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A", "b=c"));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("nope").is_err());
    }
}
