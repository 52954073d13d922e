//! The create pipeline: from a bundle and its rootfs mounts to a container
//! ready to start.
//!
//! In order: the bundle's `config.json`, read once as the engine's
//! [`Bundle`] and passed down; the container's cgroup; for a pod sandbox, its network is
//! remembered and nothing else is done (it runs nothing); otherwise the
//! rootfs is mounted and the guest is built. A failed step undoes the ones
//! before it, last first. Kernel calls go through [`Os`], the guest through
//! [`Guests`], so the order is unit-tested with stubs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use containerd_shim_protos::types::mount::Mount;
use wasishim_engine::{Bundle, Stdio};

use crate::cgroups::{self, Cgroup};
use crate::hosting::Hosting;
use crate::keys::TaskKey;
use crate::native::{NativeTask, Natives};
use crate::native_records;
use crate::os::{CgroupRole, Os};
use crate::pod_network::PodNetworks;
use crate::process::{GuestRequest, Guests, Prepared};

/// A container made ready by `create`.
pub struct Built {
    pub prepared: Prepared,
    /// The sandbox id, when this container is a pod sandbox.
    pub sandbox_of: Option<String>,
    pub rootfs_mounted: bool,
    pub cgroup: Option<Arc<Cgroup>>,
    /// The memory cap the guest runs under (its spec's limit, else the
    /// engine's default cap), reported with the stats (0: none).
    pub memory_limit: u64,
    /// The runc container, when the entrypoint is a Linux executable.
    pub native: Option<Arc<dyn NativeTask>>,
    /// The container's record for the cleanup after a dead shim
    /// ([`native_records`]), removed at its delete.
    pub record: Option<PathBuf>,
}

/// What `build` may consult and act through.
pub struct BuildContext {
    pub os: Arc<dyn Os>,
    pub guests: Arc<dyn Guests>,
    pub natives: Arc<dyn Natives>,
    pub pod_networks: PodNetworks,
    pub key: TaskKey,
    pub hosting: Hosting,
}

/// The stdio paths containerd sent (empty: none).
pub fn stdio(stdin: &str, stdout: &str, stderr: &str) -> Stdio {
    let path = |path: &str| (!path.is_empty()).then(|| PathBuf::from(path));
    Stdio {
        stdin: path(stdin),
        stdout: path(stdout),
        stderr: path(stderr),
    }
}

/// Everything `create` does that blocks: reading the bundle, cgroup, rootfs
/// mount, compiling. Undoes what it did when a later step fails.
pub fn build(dir: &Path, mounts: &[Mount], stdio: Stdio, cx: &BuildContext) -> Result<Built> {
    let os = cx.os.as_ref();
    // config.json is read once, here; everything below reads this value.
    let bundle = Bundle::load(dir)?;
    let sandbox = bundle.is_sandbox();
    let cgroup = match bundle.cgroups_path.as_deref() {
        None => None,
        Some(path) => {
            let relative = cgroups::relative_path(path)?;
            let role = if sandbox {
                CgroupRole::Sandbox {
                    holds_process: cx.hosting.sandbox_holds_process(),
                }
            } else {
                CgroupRole::Container(bundle.resources.clone())
            };
            Some(
                os.create_cgroup(&relative, &role)
                    .with_context(|| format!("cannot set up the container's cgroup {path}"))?,
            )
        }
    };
    // The cgroup outlives a killed shim: recorded where containerd 2.x's
    // cleanup of the sandbox finds it.
    let record = match (&cgroup, sandbox) {
        (Some(cgroup), false) => {
            native_records::record_cgroup(&bundle, &cx.key.namespace, &cx.key.id, cgroup.path())
        }
        _ => None,
    };
    let undo_cgroup = |cgroup: &Option<Arc<Cgroup>>| {
        if let Some(cgroup) = cgroup {
            os.remove_cgroup(cgroup);
        }
        if let Some(record) = &record {
            native_records::remove(record);
        }
    };
    // A sandbox runs nothing: its spec's limit is all there is to report.
    let memory_limit = bundle.resources.memory_limit.unwrap_or(0);
    let sandbox_id = bundle.sandbox_id().unwrap_or(&cx.key.id).to_string();
    if sandbox {
        if let Some(netns) = &bundle.network_path {
            cx.pod_networks
                .insert(&cx.key.namespace, &sandbox_id, netns.clone());
        }
        cx.natives
            .sandbox_created(&cx.key.namespace, &sandbox_id, bundle.hostname.clone());
        // The pod sandbox runs nothing, so its rootfs is not even mounted.
        return Ok(Built {
            prepared: Prepared::Sandbox,
            sandbox_of: Some(sandbox_id),
            rootfs_mounted: false,
            cgroup,
            memory_limit,
            native: None,
            record: None,
        });
    }
    let rootfs_mounted = match os.mount_rootfs(dir, mounts) {
        Ok(mounted) => mounted,
        Err(err) => {
            undo_cgroup(&cgroup);
            return Err(err);
        }
    };
    let guest = cx
        .pod_networks
        .replacement(
            bundle.network_path.as_deref(),
            &os.own_network_namespace(),
            &cx.key.namespace,
            &sandbox_id,
            &cx.key.id,
        )
        .and_then(|network| {
            let request = GuestRequest {
                bundle: &bundle,
                key: &cx.key,
                stdio,
                network,
                cgroup: cgroup.clone(),
            };
            // A Linux executable goes to runc, anything else to the engine.
            match cx.natives.prepare(&request)? {
                Some(native) => Ok((native.guest, Some(native.task))),
                None => Ok((cx.guests.prepare(request)?, None)),
            }
        });
    match guest {
        // Stats report the cap the engine enforces, a default one included.
        Ok((guest, native)) => Ok(Built {
            memory_limit: guest.memory_limit().unwrap_or(memory_limit),
            prepared: Prepared::Guest(guest),
            sandbox_of: None,
            rootfs_mounted,
            cgroup,
            native,
            record,
        }),
        Err(err) => {
            if rootfs_mounted {
                if let Err(unmount_err) = os.unmount_rootfs(dir) {
                    log::warn!("{unmount_err:#}");
                }
            }
            undo_cgroup(&cgroup);
            Err(err)
        }
    }
}
