//! Compiling an image's Wasm before any container of it is created, so that
//! its first start is a cached start (`wasishim precompile IMAGE`, and the
//! per-node server on containerd's image events: `image_events.rs`).
//!
//! Where the code of an image is:
//! - a Wasm OCI artifact (raw wasm layers, see `artifact.rs`): its
//!   entrypoint layer, or every wasm layer when nothing but a container's
//!   command would say which one runs; each is cached under its digest, as
//!   a container's create looks it up;
//! - an ordinary image: the file its config's `Entrypoint` (else `Cmd`)
//!   names, relative to `WorkingDir`, in the image's filesystem: a read-only
//!   view of the snapshot containerd unpacked it into (found from the
//!   `containerd.io/gc.ref.snapshot.<snapshotter>` label containerd puts on
//!   the config blob when it unpacks), mounted in a directory of ours for
//!   the time it takes, under a lease that expires should this process die.
//!   The file's bytes key the cache, as a container's create looks it up.
//!
//! A container whose command names another file than the image's config
//! does is not helped; nor are Spin apps (their components compile at
//! create).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{RemoveSnapshotRequest, ViewSnapshotRequest};
use containerd_client::services::v1::{CreateRequest, DeleteRequest, InfoRequest};
use serde_json::Value;
use wasishim_engine::{find_entrypoint_in, Precompiled, RootfsEntrypoint, WasmEngine, WasmLayer};

use crate::artifact::{self, ArtifactError, Blob, Classified};
use crate::content::{read_wasm_layer, Api};

/// The label containerd puts on an image's config blob when it unpacks the
/// image for a snapshotter: `<prefix><snapshotter>` = the top chain id.
const SNAPSHOT_LABEL: &str = "containerd.io/gc.ref.snapshot.";
/// gRPC metadata naming the lease a request's new resources belong to.
const LEASE_HEADER: &str = "containerd-lease";
/// How long the lease over our view of a snapshot outlives us at most.
const LEASE_EXPIRY: Duration = Duration::from_secs(600);
/// Where snapshots are mounted while their entrypoint is read.
const MOUNT_DIR: &str = "/run/wasishim/precompile";
/// Wasm layers compiled for one artifact, at most.
const MAX_LAYERS: usize = 16;
/// How long a precompile may wait for containerd (not counting compiles).
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(60);

/// What was precompiled: each piece of code, and whether it was compiled
/// now or was in the cache already.
#[derive(Debug)]
pub struct Report {
    pub code: Vec<(String, Precompiled)>,
}

/// Why an image was not precompiled.
#[derive(Debug)]
pub enum PrecompileError {
    /// The image has no Wasm to compile (said why): not an error for the
    /// per-node server, which hears of every image.
    NotWasm(String),
    /// The image is not unpacked for any snapshotter (yet: containerd 1.x
    /// unpacks after it records the image).
    NotUnpacked(String),
    /// Anything else: containerd, the content store, the compilation.
    Failed(anyhow::Error),
}

impl std::fmt::Display for PrecompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrecompileError::NotWasm(why) | PrecompileError::NotUnpacked(why) => f.write_str(why),
            PrecompileError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for PrecompileError {}

impl From<anyhow::Error> for PrecompileError {
    fn from(e: anyhow::Error) -> PrecompileError {
        PrecompileError::Failed(e)
    }
}

/// Which image, where.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// containerd's gRPC socket.
    pub address: String,
    pub namespace: String,
    pub name: String,
}

/// Compiles the Wasm code of image `image` into `engine`'s cache (see the
/// module documentation for where it is found). `tenant` takes the compile
/// slots' turn. Compiles in the engine's compile worker, on the blocking
/// pool.
///
/// # Errors
///
/// A missing image, an image without Wasm, one not unpacked, an artifact
/// that cannot be run, containerd's and the compilation's errors, each
/// naming the image.
pub async fn precompile_image(
    engine: &WasmEngine,
    image: &ImageRef,
    tenant: &str,
) -> Result<Report, PrecompileError> {
    let name = &image.name;
    let api = Api::connect(&image.address, &image.namespace).await?;
    let max = engine.max_module_bytes();
    let found = tokio::time::timeout(CONTAINERD_TIMEOUT, find_code(&api, image, max))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "containerd at {} did not answer within {CONTAINERD_TIMEOUT:?}",
                image.address
            )
        })??;
    let mut code = Vec::new();
    match found {
        Code::Layers(layers) => {
            for layer in layers {
                let shown = layer.name().to_string();
                let engine = engine.clone();
                let tenant = tenant.to_string();
                let done = blocking(move || engine.precompile_layer(&layer, &tenant)).await?;
                code.push((shown, done));
            }
        }
        Code::Rootfs { arg0, cwd, view } => {
            let done = precompile_in_view(engine, &api, name, &arg0, &cwd, &view, tenant).await;
            view.release(&api).await;
            code.push((format!("{arg0} of image {name}"), done?));
        }
    }
    Ok(Report { code })
}

/// Runs `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("the precompile was cancelled")?
}

/// Where an image's code is.
enum Code {
    /// Wasm layers, read.
    Layers(Vec<WasmLayer>),
    /// The file `arg0` (relative to `cwd`) of the rootfs seen in `view`.
    Rootfs {
        arg0: String,
        cwd: String,
        view: View,
    },
}

async fn find_code(api: &Api, image: &ImageRef, max_module: u64) -> Result<Code, PrecompileError> {
    let name = &image.name;
    let Some(mut manifest_blob) = api.find_image(name).await? else {
        return Err(PrecompileError::Failed(anyhow::anyhow!(
            "image {name} is not in containerd's namespace {}: pull or import it first (`ctr -n {} images ls` lists what is there)",
            image.namespace,
            image.namespace
        )));
    };
    if artifact::is_index(&manifest_blob.media_type) {
        let index = api
            .read_json(&manifest_blob, "index", name)
            .await
            .map_err(|e| e.into_error())?;
        manifest_blob = artifact::pick_manifest(&index).ok_or_else(|| {
            PrecompileError::NotWasm(format!(
                "image {name} is an index of several platforms, none of them wasm: not a Wasm image"
            ))
        })?;
    }
    let manifest = api
        .read_json(&manifest_blob, "manifest", name)
        .await
        .map_err(|e| e.into_error())?;
    let config_blob = artifact::config_blob(&manifest);
    let config = if config_blob.digest.is_empty() {
        Value::Null
    } else {
        api.read_json(&config_blob, "config", name)
            .await
            .map_err(|e| e.into_error())?
    };
    let layers = match artifact::classify(&manifest, &config_blob.media_type, &config, "") {
        Ok(Classified::Rootfs) => return rootfs_code(api, name, &config_blob, &config).await,
        Ok(Classified::Entrypoint(layer)) => vec![layer],
        // A Spin app's components are its wasm layers.
        Ok(Classified::SpinApp { .. }) | Err(ArtifactError::Ambiguous { .. }) => {
            artifact::wasm_layers(&manifest)
        }
        Err(e) => {
            return Err(PrecompileError::Failed(anyhow::anyhow!(
                "cannot precompile image {name}: {e}"
            )))
        }
    };
    if layers.len() > MAX_LAYERS {
        return Err(PrecompileError::Failed(anyhow::anyhow!(
            "image {name} has {} wasm layers, more than the {MAX_LAYERS} precompiled: its containers compile theirs at create",
            layers.len()
        )));
    }
    let mut read = Vec::new();
    for layer in layers {
        read.push(read_wasm_layer(api, name, &layer, max_module).await?);
    }
    Ok(Code::Layers(read))
}

/// An ordinary image's entrypoint and a view of its unpacked filesystem.
async fn rootfs_code(
    api: &Api,
    name: &str,
    config_blob: &Blob,
    config: &Value,
) -> Result<Code, PrecompileError> {
    let (arg0, cwd) = entrypoint_of(config).ok_or_else(|| {
        PrecompileError::NotWasm(format!(
            "image {name} declares no Entrypoint or Cmd: nothing to precompile (a container of it names its .wasm in its command)"
        ))
    })?;
    let labels = content_labels(api, &config_blob.digest).await?;
    let (snapshotter, chain) = unpacked(&labels).ok_or_else(|| {
        PrecompileError::NotUnpacked(format!(
            "image {name} is not unpacked into a snapshot: unpack it (`ctr images unpack {name}`) or pull it with unpacking, then precompile"
        ))
    })?;
    let view = View::create(api, &snapshotter, &chain)
        .await
        .with_context(|| format!("cannot view the filesystem of image {name}"))?;
    Ok(Code::Rootfs { arg0, cwd, view })
}

/// The first word of an image config's `Entrypoint`, else of its `Cmd`,
/// and its `WorkingDir` (`/` if unset).
pub(crate) fn entrypoint_of(config: &Value) -> Option<(String, String)> {
    let config = &config["config"];
    let first = |key: &str| {
        config[key]
            .as_array()
            .and_then(|words| words.first())
            .and_then(Value::as_str)
            .filter(|word| !word.is_empty())
            .map(str::to_string)
    };
    let arg0 = first("Entrypoint").or_else(|| first("Cmd"))?;
    let cwd = config["WorkingDir"]
        .as_str()
        .filter(|d| !d.is_empty())
        .unwrap_or("/")
        .to_string();
    Some((arg0, cwd))
}

/// The snapshotter an image was unpacked for and its top chain id, from its
/// config blob's labels (overlayfs first when there are several).
pub(crate) fn unpacked(labels: &HashMap<String, String>) -> Option<(String, String)> {
    let mut found: Vec<(String, String)> = labels
        .iter()
        .filter_map(|(key, value)| {
            let snapshotter = key.strip_prefix(SNAPSHOT_LABEL)?;
            Some((snapshotter.to_string(), value.clone()))
        })
        .filter(|(s, chain)| !s.is_empty() && !chain.is_empty())
        .collect();
    found.sort_by_key(|(s, _)| (s != "overlayfs", s.clone()));
    found.into_iter().next()
}

async fn content_labels(api: &Api, digest: &str) -> Result<HashMap<String, String>> {
    let reply = ContentClient::new(api.channel.clone())
        .info(api.request(InfoRequest {
            digest: digest.to_string(),
        })?)
        .await
        .map_err(|s| anyhow::anyhow!("{} ({:?})", s.message(), s.code()))
        .with_context(|| format!("cannot read the labels of blob {digest}"))?;
    Ok(reply
        .into_inner()
        .info
        .map(|info| info.labels)
        .unwrap_or_default())
}

/// Mounts the view, finds the entrypoint, compiles it, unmounts.
async fn precompile_in_view(
    engine: &WasmEngine,
    api: &Api,
    name: &str,
    arg0: &str,
    cwd: &str,
    view: &View,
    tenant: &str,
) -> Result<Precompiled, PrecompileError> {
    let mounts = view.mounts(api).await?;
    let dir = view.dir.clone();
    let engine = engine.clone();
    let (name, arg0, cwd, tenant) = (
        name.to_string(),
        arg0.to_string(),
        cwd.to_string(),
        tenant.to_string(),
    );
    tokio::task::spawn_blocking(move || -> Result<Precompiled, PrecompileError> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mounted = crate::rootfs::mount(&dir, &mounts)
            .with_context(|| format!("cannot mount the filesystem of image {name}"))?;
        let rootfs = crate::rootfs::rootfs_dir(&dir);
        let done = compile_entrypoint(&engine, &rootfs, &name, &arg0, &cwd, &tenant);
        if mounted {
            if let Err(e) = crate::rootfs::unmount(&dir) {
                log::warn!("precompile of image {name}: {e:#}");
            }
        }
        let _ = std::fs::remove_dir(&rootfs);
        let _ = std::fs::remove_dir(&dir);
        done
    })
    .await
    .map_err(|e| PrecompileError::Failed(anyhow::anyhow!("the precompile was cancelled: {e}")))?
}

fn compile_entrypoint(
    engine: &WasmEngine,
    rootfs: &Path,
    name: &str,
    arg0: &str,
    cwd: &str,
    tenant: &str,
) -> Result<Precompiled, PrecompileError> {
    let file = match find_entrypoint_in(rootfs, arg0, cwd)? {
        RootfsEntrypoint::Found(file) => file,
        RootfsEntrypoint::Missing(reason) => {
            return Err(PrecompileError::NotWasm(format!(
                "image {name} has no Wasm entrypoint: {reason:#}"
            )))
        }
    };
    if let Some(kind) = file.not_webassembly() {
        return Err(PrecompileError::NotWasm(format!(
            "image {name} is not a Wasm image: its entrypoint {arg0} is {kind}"
        )));
    }
    engine
        .precompile_file(file, tenant)
        .with_context(|| format!("cannot precompile image {name}"))
        .map_err(PrecompileError::Failed)
}

/// A read-only view of an image's snapshot, held by a lease of ours.
struct View {
    snapshotter: String,
    key: String,
    lease: String,
    /// Where it is mounted (`<dir>/rootfs`).
    dir: PathBuf,
}

impl View {
    async fn create(api: &Api, snapshotter: &str, chain: &str) -> Result<View> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "wasishim-precompile-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let expires = rfc3339(SystemTime::now() + LEASE_EXPIRY);
        LeasesClient::new(api.channel.clone())
            .create(api.request(CreateRequest {
                id: unique.clone(),
                labels: HashMap::from([("containerd.io/gc.expire".to_string(), expires)]),
            })?)
            .await
            .map_err(|s| {
                anyhow::anyhow!("cannot take a lease: {} ({:?})", s.message(), s.code())
            })?;
        let view = View {
            snapshotter: snapshotter.to_string(),
            key: unique.clone(),
            lease: unique.clone(),
            dir: Path::new(MOUNT_DIR).join(&unique),
        };
        let mut request = api.request(ViewSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: unique.clone(),
            parent: chain.to_string(),
            labels: HashMap::new(),
        })?;
        request.metadata_mut().insert(
            LEASE_HEADER,
            unique.parse().context("lease id is not ASCII")?,
        );
        if let Err(s) = SnapshotsClient::new(api.channel.clone())
            .view(request)
            .await
        {
            view.release(api).await;
            anyhow::bail!(
                "snapshot {chain} of snapshotter {snapshotter}: {} ({:?})",
                s.message(),
                s.code()
            );
        }
        Ok(view)
    }

    /// The view's mounts, as the shim mounts a container's rootfs.
    async fn mounts(&self, api: &Api) -> Result<Vec<containerd_shim_protos::types::mount::Mount>> {
        use containerd_client::services::v1::snapshots::MountsRequest;
        let reply = SnapshotsClient::new(api.channel.clone())
            .mounts(api.request(MountsRequest {
                snapshotter: self.snapshotter.clone(),
                key: self.key.clone(),
            })?)
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "cannot get the mounts of our view of the image: {} ({:?})",
                    s.message(),
                    s.code()
                )
            })?;
        Ok(reply
            .into_inner()
            .mounts
            .into_iter()
            .map(|m| {
                let mut mount = containerd_shim_protos::types::mount::Mount::new();
                mount.type_ = m.r#type;
                mount.source = m.source;
                mount.target = m.target;
                mount.options = m.options;
                mount
            })
            .collect())
    }

    /// Removes the view and its lease; failures are logged (the lease
    /// expires on its own).
    async fn release(&self, api: &Api) {
        if let Ok(request) = api.request(RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: self.key.clone(),
        }) {
            if let Err(s) = SnapshotsClient::new(api.channel.clone())
                .remove(request)
                .await
            {
                if s.code() != containerd_client::tonic::Code::NotFound {
                    log::warn!(
                        "precompile: cannot remove snapshot view {}: {}",
                        self.key,
                        s.message()
                    );
                }
            }
        }
        if let Ok(request) = api.request(DeleteRequest {
            id: self.lease.clone(),
            sync: false,
        }) {
            if let Err(s) = LeasesClient::new(api.channel.clone()).delete(request).await {
                log::warn!(
                    "precompile: cannot delete lease {} (it expires within {LEASE_EXPIRY:?}): {}",
                    self.lease,
                    s.message()
                );
            }
        }
    }
}

/// `time` as RFC 3339 in UTC, as containerd's lease expiry label wants it.
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_times() {
        let at = |secs| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn entrypoint_from_config() {
        let config: Value = serde_json::json!({"config": {"Entrypoint": ["/app.wasm", "x"], "Cmd": ["/other.wasm"], "WorkingDir": "/srv"}});
        assert_eq!(
            entrypoint_of(&config),
            Some(("/app.wasm".to_string(), "/srv".to_string()))
        );
        let config: Value =
            serde_json::json!({"config": {"Entrypoint": [], "Cmd": ["hello.wasm"]}});
        assert_eq!(
            entrypoint_of(&config),
            Some(("hello.wasm".to_string(), "/".to_string()))
        );
        assert_eq!(entrypoint_of(&serde_json::json!({"config": {}})), None);
        assert_eq!(entrypoint_of(&Value::Null), None);
    }

    #[test]
    fn snapshot_from_labels() {
        let labels = HashMap::from([
            (
                "containerd.io/gc.ref.snapshot.native".to_string(),
                "sha256:a".to_string(),
            ),
            (
                "containerd.io/gc.ref.snapshot.overlayfs".to_string(),
                "sha256:b".to_string(),
            ),
            (
                "containerd.io/distribution.source.x".to_string(),
                "y".to_string(),
            ),
        ]);
        assert_eq!(
            unpacked(&labels),
            Some(("overlayfs".to_string(), "sha256:b".to_string()))
        );
        assert_eq!(unpacked(&HashMap::new()), None);
    }
}
