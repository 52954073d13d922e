//! The create pipeline: from a bundle and its rootfs mounts to a container
//! ready to start.
//!
//! In order: the container's cgroup; for a pod sandbox, its network is
//! remembered and nothing else is done (it runs nothing); otherwise the
//! rootfs is mounted and the guest is built. A failed step undoes the ones
//! before it, last first. Kernel calls go through [`Os`], the guest through
//! [`Guests`], so the order is unit-tested with stubs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use containerd_shim_protos::types::mount::Mount;
use wasishim_engine::Stdio;

use crate::cgroups::{self, Cgroup, Limits};
use crate::hosting::Hosting;
use crate::keys::TaskKey;
use crate::os::{CgroupRole, Os};
use crate::pod_network::PodNetworks;
use crate::process::{self, GuestRequest, Guests, Prepared};

/// A container made ready by `create`.
pub struct Built {
    pub prepared: Prepared,
    /// The sandbox id, when this container is a pod sandbox.
    pub sandbox_of: Option<String>,
    pub rootfs_mounted: bool,
    pub cgroup: Option<Arc<Cgroup>>,
    /// `linux.resources.memory.limit`, reported with the stats (0: none).
    pub memory_limit: u64,
}

/// What `build` may consult and act through.
pub struct BuildContext {
    pub os: Arc<dyn Os>,
    pub guests: Arc<dyn Guests>,
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

/// Everything `create` does that blocks: cgroup, rootfs mount, compiling.
/// Undoes what it did when a later step fails.
pub fn build(bundle: &Path, mounts: &[Mount], stdio: Stdio, cx: &BuildContext) -> Result<Built> {
    let os = cx.os.as_ref();
    // The shim reads only what the engine does not own: the container's kind
    // and its cgroup. An unreadable spec is reported by the engine below.
    let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let sandbox = process::is_sandbox(&spec);
    let memory_limit = spec["linux"]["resources"]["memory"]["limit"]
        .as_i64()
        .and_then(|l| u64::try_from(l).ok())
        .unwrap_or(0);
    let cgroup = match spec["linux"]["cgroupsPath"]
        .as_str()
        .filter(|p| !p.is_empty())
    {
        None => None,
        Some(path) => {
            let relative = cgroups::relative_path(path)?;
            let role = if sandbox {
                CgroupRole::Sandbox {
                    holds_process: cx.hosting.sandbox_holds_process(),
                }
            } else {
                CgroupRole::Container(Limits::from_spec(&spec))
            };
            Some(
                os.create_cgroup(&relative, &role)
                    .with_context(|| format!("cannot set up the container's cgroup {path}"))?,
            )
        }
    };
    let undo_cgroup = |cgroup: &Option<Arc<Cgroup>>| {
        if let Some(cgroup) = cgroup {
            os.remove_cgroup(cgroup);
        }
    };
    let sandbox_id = spec["annotations"][crate::SANDBOX_ID_ANNOTATION]
        .as_str()
        .unwrap_or(&cx.key.id)
        .to_string();
    let netns = spec_netns(&spec);
    if sandbox {
        if let Some(netns) = netns {
            cx.pod_networks
                .insert(&cx.key.namespace, &sandbox_id, netns);
        }
        // The pod sandbox runs nothing, so its rootfs is not even mounted.
        return Ok(Built {
            prepared: Prepared::Sandbox,
            sandbox_of: Some(sandbox_id),
            rootfs_mounted: false,
            cgroup,
            memory_limit,
        });
    }
    let rootfs_mounted = match os.mount_rootfs(bundle, mounts) {
        Ok(mounted) => mounted,
        Err(err) => {
            undo_cgroup(&cgroup);
            return Err(err);
        }
    };
    let guest = cx
        .pod_networks
        .replacement(
            netns.as_deref(),
            &os.own_network_namespace(),
            &cx.key.namespace,
            &sandbox_id,
            &cx.key.id,
        )
        .and_then(|network| {
            cx.guests.prepare(GuestRequest {
                bundle,
                key: &cx.key,
                stdio,
                network,
                cgroup: cgroup.clone(),
            })
        });
    match guest {
        Ok(guest) => Ok(Built {
            prepared: Prepared::Guest(guest),
            sandbox_of: None,
            rootfs_mounted,
            cgroup,
            memory_limit,
        }),
        Err(err) => {
            if rootfs_mounted {
                if let Err(unmount_err) = os.unmount_rootfs(bundle) {
                    log::warn!("{unmount_err:#}");
                }
            }
            undo_cgroup(&cgroup);
            Err(err)
        }
    }
}

/// The network namespace path a spec names, if any.
fn spec_netns(spec: &serde_json::Value) -> Option<PathBuf> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}
