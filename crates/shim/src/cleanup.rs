//! The `delete` subcommand: containerd's cleanup after a shim that died.
//!
//! A Wasm guest lived inside the dead shim, so it is gone too; a native
//! container (see [`crate::native`]) outlives it and is killed and removed
//! here with `runc delete --force`. containerd 2.x runs this for a pod's
//! sandbox only, so a sandbox's cleanup also cleans the pod's containers
//! the shim recorded under the sandbox's bundle or runc lists (see
//! [`crate::native_records`]).
//! What else remains on the host is the rootfs mount and possibly the
//! socket file. The reply tells containerd the task ended by SIGKILL.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use wasishim_engine::Bundle;

use crate::events::timestamp;
use crate::{cgroups, native, native_records, rootfs, socket};

/// Removes the container's cgroup named by its spec, if any.
fn remove_cgroup(bundle: &Path) {
    let Some(path) = Bundle::load(bundle).ok().and_then(|b| b.cgroups_path) else {
        return;
    };
    match cgroups::relative_path(&path) {
        Ok(relative) => cgroups::remove_dead(&cgroups::Hierarchies::detect(), &relative),
        Err(err) => log::warn!("{err:#}"),
    }
}

/// Kills and removes what task `id` in `bundle` left: a native
/// container's processes first (they hold the rootfs and the cgroup).
fn clean_task(bundle: &Path, namespace: &str, id: &str) {
    native::delete_orphan(bundle, namespace, id);
    if let Err(err) = rootfs::unmount(bundle) {
        log::warn!("{err:#}");
    }
    remove_cgroup(bundle);
}

/// Exit status reported for a task whose shim was killed.
const KILLED: u32 = 128 + 9;

/// Cleans up after task `id` of containerd namespace `namespace` in
/// `bundle` and returns the encoded DeleteResponse.
pub fn delete(bundle: &Path, namespace: &str, id: &str) -> Result<Vec<u8>> {
    // containerd 2.x cleans up after the pod's sandbox only: the pod's
    // recorded containers go first, their processes before anything else.
    native_records::delete_orphans(bundle, namespace, id);
    clean_task(bundle, namespace, id);
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let path = address.trim().trim_start_matches("unix://").to_string();
        // A live server still hosts other containers of the pod: keep its socket.
        if !socket::is_live(&path) {
            socket::remove_socket(&path);
        }
    }
    let response = DeleteResponse {
        pid: 0,
        exit_status: KILLED,
        exited_at: Some(timestamp(SystemTime::now())).into(),
        ..Default::default()
    };
    Ok(response.write_to_bytes()?)
}
