//! The container's root filesystem: containerd hands the shim the snapshot's
//! mounts, the shim mounts them at `<bundle>/rootfs` and unmounts them on delete.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use containerd_shim_protos::types::mount::Mount;

/// `<bundle>/rootfs`, where the image's filesystem is mounted.
pub fn rootfs_dir(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Mounts `mounts` one over the other at `<bundle>/rootfs`. Returns whether
/// anything was mounted (containerd sends none when the rootfs is a plain
/// directory already in place).
pub fn mount(bundle: &Path, mounts: &[Mount]) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = rootfs_dir(bundle);
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create rootfs directory {}", target.display()))?;
    for (index, m) in mounts.iter().enumerate() {
        let fs_type = Some(m.type_.as_str()).filter(|t| !t.is_empty());
        let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
        if let Err(err) = containerd_shim::mount::mount_rootfs(fs_type, source, &m.options, &target)
        {
            // Leave nothing half-mounted behind a failed create.
            if index > 0 {
                let _ = unmount(bundle);
            }
            return Err(anyhow::anyhow!(
                "cannot mount the image's rootfs ({} {}) at {}: {err}",
                m.type_,
                m.source,
                target.display()
            ));
        }
    }
    Ok(true)
}

/// Unmounts everything at or below `<bundle>/rootfs`. Succeeds when nothing
/// is mounted there.
pub fn unmount(bundle: &Path) -> Result<()> {
    let target = rootfs_dir(bundle);
    let Some(target) = target.to_str() else {
        anyhow::bail!("rootfs path {} is not UTF-8", target.display());
    };
    containerd_shim::mount::umount_recursive(Some(target), libc_mnt_detach())
        .with_context(|| format!("cannot unmount the rootfs at {target}"))
}

fn libc_mnt_detach() -> i32 {
    nix::mount::MntFlags::MNT_DETACH.bits()
}
