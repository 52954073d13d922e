//! Where a guest's code comes from: a file in its rootfs, or, for a Wasm OCI
//! artifact, a layer read from containerd's content store over containerd's
//! gRPC API (container -> image -> index -> manifest -> config and layer).
//!
//! containerd does not unpack raw wasm layers into the rootfs, so such an
//! image reaches the shim as an empty rootfs. The rootfs is tried first: an
//! ordinary image whose `args[0]` is a file there costs no gRPC call. Only
//! when that file is missing does the shim ask containerd what the image is
//! (see `artifact.rs` for the rules), which costs a connection, four to six
//! unary or streaming calls on containerd's socket and reading the layer;
//! the layer's digest then finds its compiled code in the cache.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use containerd_client::tonic::{self, transport::Channel, Code};
use serde_json::Value;
use wasishim_engine::{
    RootfsEntrypoint, SpinLockedApp, Stdio, WasmEngine, WasmLayer, Workload, WorkloadSpec,
    MAX_LOCKED_APP_BYTES,
};

use crate::artifact::{self, Blob, Classified};

/// gRPC metadata key naming the containerd namespace of a request.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// How long asking containerd about an image and reading its layer may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest index, manifest or config read (they are JSON of a few KiB).
const MAX_JSON_BYTES: i64 = 4 << 20;
/// Largest wasm layer read into memory.
pub(crate) const MAX_LAYER_BYTES: i64 = 1 << 30;
/// Largest sum of the wasm layers of one Spin app read into memory.
const MAX_SPIN_APP_BYTES: u64 = 256 << 20;

/// Which container, in which namespace of which containerd.
#[derive(Debug, Clone)]
pub struct ContainerRef<'a> {
    /// containerd's gRPC socket (`-address`), `None` if unknown.
    pub address: Option<&'a str>,
    pub namespace: &'a str,
    pub id: &'a str,
}

/// Prepares the guest of `spec`: from the rootfs when `process.args[0]` is a
/// file there (an ordinary image), else from the image's entrypoint layer
/// when the image is a Wasm OCI artifact. The path is looked up once, by the
/// engine ([`WorkloadSpec::find_entrypoint`]); its reason for a missing file
/// is the error when the image has no layer to run either. Blocking
/// (compiles, and runs its own tokio runtime for the gRPC calls: never call
/// it on an async thread).
///
/// # Errors
///
/// The engine's (compile, link, stdio), an artifact that cannot be run (no
/// wasm layer, several candidates, a layer missing from the content store),
/// or, when the file is missing and containerd cannot say what the image
/// is, the engine's "not found in the image's rootfs" with the reason.
pub fn prepare_guest(
    engine: &WasmEngine,
    spec: WorkloadSpec,
    stdio: Stdio,
    container: &ContainerRef<'_>,
) -> Result<Workload> {
    let missing = match spec.find_entrypoint()? {
        RootfsEntrypoint::Found(file) => return engine.prepare_file(spec, file, stdio),
        RootfsEntrypoint::Missing(reason) => reason,
    };
    let Some(address) = container.address.filter(|a| !a.is_empty()) else {
        return Err(missing);
    };
    match wasm_layer(
        address,
        container.namespace,
        container.id,
        &spec.entrypoint.path,
        engine.max_module_bytes(),
    ) {
        Ok(Some(Found::Layer(layer))) => {
            log::info!(
                "container {}: running {} (Wasm OCI artifact)",
                container.id,
                layer.name()
            );
            engine.prepare_layer(spec, layer, stdio)
        }
        Ok(Some(Found::Spin(app, layers))) => {
            log::info!(
                "container {}: running the Spin app of {} layers (Spin OCI artifact)",
                container.id,
                layers.len()
            );
            engine.prepare_spin_artifact(spec, &app, &layers, stdio)
        }
        // An ordinary image: the rootfs says what is wrong.
        Ok(None) => Err(missing),
        Err(Lookup::Artifact(e)) => Err(e),
        Err(Lookup::Containerd(e)) => {
            log::warn!(
                "container {}: cannot check its image for Wasm layers: {e:#}",
                container.id
            );
            // The rootfs's reason first: the likelier cause.
            Err(anyhow::anyhow!(
                "{missing:#} (and the image could not be checked for Wasm layers: {e:#})"
            ))
        }
    }
}

/// The code an artifact gives.
enum Found {
    /// The entrypoint layer of a Wasm OCI artifact.
    Layer(WasmLayer),
    /// Spin's OCI artifact: its locked app, and the layers it names.
    Spin(SpinLockedApp, Vec<WasmLayer>),
}

/// Why no layer was found.
pub(crate) enum Lookup {
    /// The image is a Wasm OCI artifact that cannot be run.
    Artifact(anyhow::Error),
    /// containerd could not be asked, or did not know the container.
    Containerd(anyhow::Error),
}

impl Lookup {
    pub(crate) fn into_error(self) -> anyhow::Error {
        match self {
            Lookup::Artifact(e) | Lookup::Containerd(e) => e,
        }
    }
}

/// The entrypoint layer of the image of container `id` if that image is a
/// Wasm OCI artifact; `None` for an ordinary image (or no image).
fn wasm_layer(
    address: &str,
    namespace: &str,
    id: &str,
    file: &str,
    max_module: u64,
) -> Result<Option<Found>, Lookup> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime to ask containerd")
        .map_err(Lookup::Containerd)?;
    let path = address.strip_prefix("unix://").unwrap_or(address);
    runtime.block_on(async {
        match tokio::time::timeout(
            LOOKUP_TIMEOUT,
            lookup(path, namespace, id, file, max_module),
        )
        .await
        {
            Ok(found) => found,
            Err(_) => Err(Lookup::Containerd(anyhow::anyhow!(
                "containerd at {path} did not answer within {LOOKUP_TIMEOUT:?}"
            ))),
        }
    })
}

/// A client of one namespace of containerd's API.
pub(crate) struct Api {
    pub(crate) channel: Channel,
    namespace: String,
}

impl Api {
    /// Connects to containerd's gRPC socket `address` (a path, or
    /// `unix://` and a path) for requests in `namespace`.
    pub(crate) async fn connect(address: &str, namespace: &str) -> Result<Api> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let channel = containerd_client::connect(path)
            .await
            .with_context(|| format!("cannot connect to containerd at {path}"))?;
        Ok(Api {
            channel,
            namespace: namespace.to_string(),
        })
    }

    pub(crate) fn request<T>(&self, message: T) -> Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let value = self.namespace.parse().with_context(|| {
            format!(
                "namespace {:?} cannot be sent to containerd",
                self.namespace
            )
        })?;
        request.metadata_mut().insert(NAMESPACE_HEADER, value);
        Ok(request)
    }

    /// The name of the image container `id` was created from ("" if none).
    async fn container_image(&self, id: &str) -> Result<String> {
        let reply = ContainersClient::new(self.channel.clone())
            .get(self.request(GetContainerRequest { id: id.to_string() })?)
            .await
            .map_err(|s| anyhow::anyhow!("{} ({:?})", s.message(), s.code()))
            .with_context(|| format!("cannot look up container {id}"))?;
        Ok(reply
            .into_inner()
            .container
            .map(|c| c.image)
            .unwrap_or_default())
    }

    /// The blob an image name points to (a manifest or an index).
    async fn image_target(&self, name: &str) -> Result<Blob, Lookup> {
        match self.find_image(name).await {
            Ok(Some(blob)) => Ok(blob),
            Ok(None) => Err(Lookup::Artifact(anyhow::anyhow!(
                "image {name} of the container is no longer in containerd: pull it again"
            ))),
            Err(e) => Err(Lookup::Containerd(e)),
        }
    }

    /// The blob image `name` points to (a manifest or an index), `None` if
    /// containerd has no image of that name in this namespace.
    pub(crate) async fn find_image(&self, name: &str) -> Result<Option<Blob>> {
        let reply = ImagesClient::new(self.channel.clone())
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            })?)
            .await;
        let target = match reply {
            Ok(reply) => reply.into_inner().image.and_then(|i| i.target),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => bail!(
                "cannot look up image {name}: {} ({:?})",
                s.message(),
                s.code()
            ),
        };
        let target =
            target.with_context(|| format!("containerd has no target for image {name}"))?;
        Ok(Some(Blob {
            media_type: target.media_type,
            digest: target.digest,
            size: target.size,
            title: None,
        }))
    }

    /// The whole blob `digest`, which the manifest says is `size` bytes, of
    /// at most `max` bytes. `Ok(None)` if the content store does not have it.
    pub(crate) async fn read(&self, digest: &str, size: i64, max: i64) -> Result<Option<Vec<u8>>> {
        if size > max {
            bail!("blob {digest} is {size} bytes, more than the {max} bytes read");
        }
        let request = self.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })?;
        let mut stream = match ContentClient::new(self.channel.clone()).read(request).await {
            Ok(reply) => reply.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => bail!(
                "cannot read blob {digest}: {} ({:?})",
                s.message(),
                s.code()
            ),
        };
        // Grown as chunks arrive, never to the size the manifest claims up
        // front: a manifest may claim up to `max` for a blob that is small
        // or never comes, and many containers start at once.
        let expected = u64::try_from(size).unwrap_or(0);
        let mut bytes = Vec::with_capacity(usize::try_from(expected.min(64 << 10)).unwrap_or(0));
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    let after = (bytes.len() as u64).saturating_add(chunk.data.len() as u64);
                    if after > expected {
                        bail!("blob {digest} holds more than the {size} bytes its descriptor says: the image is corrupt, pull it again");
                    }
                    // Doubling, but never past the descriptor's size.
                    let room = (bytes.capacity() as u64)
                        .saturating_mul(2)
                        .max(after)
                        .min(expected);
                    let more = usize::try_from(room)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(bytes.len());
                    bytes.try_reserve_exact(more).with_context(|| {
                        format!("no memory for the {size} bytes of blob {digest}")
                    })?;
                    bytes.extend_from_slice(&chunk.data);
                }
                Ok(None) => break,
                Err(s) if s.code() == Code::NotFound => return Ok(None),
                Err(s) => bail!(
                    "cannot read blob {digest}: {} ({:?})",
                    s.message(),
                    s.code()
                ),
            }
        }
        if bytes.len() as u64 != expected {
            bail!(
                "blob {digest} holds {} bytes, not the {size} its descriptor says: the image is corrupt, pull it again",
                bytes.len()
            );
        }
        Ok(Some(bytes))
    }

    /// A JSON blob (index, manifest, config).
    pub(crate) async fn read_json(
        &self,
        blob: &Blob,
        what: &str,
        image: &str,
    ) -> Result<Value, Lookup> {
        let bytes = self
            .read(&blob.digest, blob.size, MAX_JSON_BYTES)
            .await
            .map_err(Lookup::Containerd)?
            .ok_or_else(|| {
                Lookup::Artifact(anyhow::anyhow!(
                    "the {what} {} of image {image} is not in containerd's content store: pull the image again",
                    blob.digest
                ))
            })?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the {what} {} of image {image} is not JSON", blob.digest))
            .map_err(Lookup::Artifact)
    }
}

async fn lookup(
    path: &str,
    namespace: &str,
    id: &str,
    file: &str,
    max_module: u64,
) -> Result<Option<Found>, Lookup> {
    let api = Api::connect(path, namespace)
        .await
        .map_err(Lookup::Containerd)?;
    let image = api.container_image(id).await.map_err(Lookup::Containerd)?;
    if image.is_empty() {
        return Ok(None);
    }
    let mut manifest_blob = api.image_target(&image).await?;
    if artifact::is_index(&manifest_blob.media_type) {
        let index = api.read_json(&manifest_blob, "index", &image).await?;
        match artifact::pick_manifest(&index) {
            Some(blob) => manifest_blob = blob,
            None => return Ok(None),
        }
    }
    let manifest = api.read_json(&manifest_blob, "manifest", &image).await?;
    let config_blob = artifact::config_blob(&manifest);
    // The config only adds the `architecture: wasm` hint; without it the
    // layers' media types decide.
    let config = if config_blob.digest.is_empty() {
        Value::Null
    } else {
        api.read_json(&config_blob, "config", &image)
            .await
            .unwrap_or(Value::Null)
    };
    let layer = match artifact::classify(&manifest, &config_blob.media_type, &config, file) {
        Ok(Classified::Rootfs) => return Ok(None),
        Ok(Classified::Entrypoint(layer)) => layer,
        Ok(Classified::SpinApp { locked, layers }) => {
            return spin_app(&api, &image, &locked, &layers, max_module)
                .await
                .map(|(app, layers)| Some(Found::Spin(app, layers)))
                .map_err(Lookup::Artifact)
        }
        Err(e) => {
            return Err(Lookup::Artifact(anyhow::anyhow!(
                "cannot run image {image}: {e}"
            )))
        }
    };
    read_wasm_layer(&api, &image, &layer, max_module)
        .await
        .map(|l| Some(Found::Layer(l)))
        .map_err(Lookup::Artifact)
}

/// Reads wasm `layer` of `image` from the content store: refused before it
/// is read if it is larger than `max_module` (the engine would refuse it).
pub(crate) async fn read_wasm_layer(
    api: &Api,
    image: &str,
    layer: &Blob,
    max_module: u64,
) -> Result<WasmLayer> {
    let name = match &layer.title {
        Some(title) => format!("layer {} ({title}) of image {image}", layer.digest),
        None => format!("layer {} of image {image}", layer.digest),
    };
    if u64::try_from(layer.size).unwrap_or(u64::MAX) > max_module {
        bail!(
            "the wasm {name} is {} bytes, more than the {max_module} bytes of WebAssembly this shim compiles ({}): build a smaller module, or raise the limit in containerd's environment",
            layer.size,
            wasishim_engine::MAX_MODULE_BYTES_ENV
        );
    }
    let max = i64::try_from(max_module)
        .unwrap_or(i64::MAX)
        .min(MAX_LAYER_BYTES);
    let bytes = api
        .read(&layer.digest, layer.size, max)
        .await
        .with_context(|| format!("cannot read the wasm {name}"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the wasm {name} is not in containerd's content store: pull the image again (containerd 1.6 before 1.6.25 and 1.7 before 1.7.7 cannot pull Wasm OCI artifacts: use 1.6.25+, 1.7.7+ or 2.x)"
            )
        })?;
    WasmLayer::new(bytes, &layer.digest, &name)
}

/// The locked app of Spin's OCI artifact `image` and the wasm layers it
/// names, each read once, size-capped alone and together.
async fn spin_app(
    api: &Api,
    image: &str,
    locked: &Blob,
    layers: &[Blob],
    max_module: u64,
) -> Result<(SpinLockedApp, Vec<WasmLayer>)> {
    let shown = format!("locked app {} of image {image}", locked.digest);
    let max = i64::try_from(MAX_LOCKED_APP_BYTES).unwrap_or(i64::MAX);
    if locked.size > max {
        bail!(
            "the Spin {shown} is {} bytes, more than the {MAX_LOCKED_APP_BYTES} bytes of a locked app wasishim reads",
            locked.size
        );
    }
    let json = api
        .read(&locked.digest, locked.size, max)
        .await
        .with_context(|| format!("cannot read the Spin {shown}"))?
        .with_context(|| {
            format!("the Spin {shown} is not in containerd's content store: pull the image again")
        })?;
    // The digest holds for the locked app as for a layer: a damaged store
    // is told apart from a malformed app.
    WasmLayer::new(json.clone(), &locked.digest, &format!("the Spin {shown}"))?;
    let app = SpinLockedApp::parse(&json, &shown)?;
    let mut read = Vec::new();
    let mut total: u64 = 0;
    for digest in app.layer_digests() {
        let Some(blob) = layers.iter().find(|l| l.digest == digest) else {
            bail!(
                "the Spin {shown} names component layer {digest}, which is not a layer of the image: push the app again with `spin registry push`"
            );
        };
        let name = format!("layer {digest} of image {image}");
        let size = u64::try_from(blob.size).unwrap_or(u64::MAX);
        if size > max_module {
            bail!(
                "the Spin component {name} is {size} bytes, more than the {max_module} bytes of WebAssembly this shim compiles ({}): build a smaller component, or raise the limit in containerd's environment",
                wasishim_engine::MAX_MODULE_BYTES_ENV
            );
        }
        total = total.saturating_add(size);
        if total > MAX_SPIN_APP_BYTES {
            bail!(
                "the Spin app of image {image} has more than {} MiB of components, more than wasishim reads for one app",
                MAX_SPIN_APP_BYTES >> 20
            );
        }
        let bytes = api
            .read(&digest, blob.size, i64::try_from(max_module).unwrap_or(i64::MAX))
            .await
            .with_context(|| format!("cannot read the Spin component {name}"))?
            .with_context(|| {
                format!("the Spin component {name} is not in containerd's content store: pull the image again")
            })?;
        read.push(WasmLayer::new(bytes, &digest, &name)?);
    }
    Ok((app, read))
}
