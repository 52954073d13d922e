//! The OS seam: every kernel call the task service's decisions lead to.
//!
//! Mounting the rootfs, making, moving and removing cgroups, and naming this
//! process's network namespace go through [`Os`], so the service's logic
//! (lifecycle, keys, cleanup order, error mapping) is unit-tested without
//! root: the tests hand the service a stub that records each call
//! (`tests::RecordingOs`). Signals reach guests through the payload seam,
//! [`crate::process::Guest`], for the same reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use containerd_shim_protos::types::mount::Mount;

use wasishim_engine::Resources;

use crate::cgroups::{Cgroup, Hierarchies};
use crate::rootfs;

/// What a container's cgroup is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupRole {
    /// A pod sandbox's cgroup; with `holds_process`, this server process
    /// moves into it (see [`crate::hosting::Hosting::sandbox_holds_process`]).
    Sandbox { holds_process: bool },
    /// A container's cgroup with its CPU and pids limits; its guest thread
    /// joins it once started.
    Container(Resources),
}

/// The kernel calls of the task service.
pub trait Os: Send + Sync {
    /// This process's id: guests run inside it, so every task reports it.
    fn pid(&self) -> u32;

    /// This process's network namespace, as CRI names a sandbox's network.
    fn own_network_namespace(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// Mounts `mounts` at `<bundle>/rootfs`; false when there was nothing to mount.
    fn mount_rootfs(&self, bundle: &Path, mounts: &[Mount]) -> Result<bool>;

    /// Unmounts everything at or below `<bundle>/rootfs`.
    fn unmount_rootfs(&self, bundle: &Path) -> Result<()>;

    /// Makes the cgroup at `path` (relative to each hierarchy's root).
    fn create_cgroup(&self, path: &Path, role: &CgroupRole) -> Result<Arc<Cgroup>>;

    /// Removes a cgroup made by [`Os::create_cgroup`]; failures are logged.
    fn remove_cgroup(&self, cgroup: &Cgroup);
}

/// The kernel itself.
pub struct RealOs {
    pid: u32,
    hierarchies: Hierarchies,
}

impl RealOs {
    /// Reads where the cgroup hierarchies are mounted.
    pub fn new() -> RealOs {
        RealOs {
            pid: std::process::id(),
            hierarchies: Hierarchies::detect(),
        }
    }
}

impl Os for RealOs {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn mount_rootfs(&self, bundle: &Path, mounts: &[Mount]) -> Result<bool> {
        rootfs::mount(bundle, mounts)
    }

    fn unmount_rootfs(&self, bundle: &Path) -> Result<()> {
        rootfs::unmount(bundle)
    }

    fn create_cgroup(&self, path: &Path, role: &CgroupRole) -> Result<Arc<Cgroup>> {
        let cgroup = match role {
            CgroupRole::Sandbox {
                holds_process: true,
            } => Cgroup::for_sandbox(&self.hierarchies, path, self.pid),
            CgroupRole::Sandbox {
                holds_process: false,
            } => Cgroup::for_container(&self.hierarchies, path, &Resources::default()),
            CgroupRole::Container(limits) => Cgroup::for_container(&self.hierarchies, path, limits),
        };
        cgroup.map(Arc::new)
    }

    fn remove_cgroup(&self, cgroup: &Cgroup) {
        log::debug!("removing cgroup {}", cgroup.path().display());
        cgroup.remove();
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A stub OS that records each call, in order, as a line of text.
    #[derive(Default)]
    pub struct RecordingOs {
        calls: Mutex<Vec<String>>,
        /// Make `mount_rootfs` fail.
        fail_mount: bool,
        /// How long `remove_cgroup` takes, as a cgroup whose last thread is
        /// slow to leave does.
        cgroup_removal: std::time::Duration,
    }

    impl RecordingOs {
        /// A stub whose cgroup removals take `time` each.
        pub fn slow_cgroup_removal(time: std::time::Duration) -> RecordingOs {
            RecordingOs {
                cgroup_removal: time,
                ..RecordingOs::default()
            }
        }

        /// A stub whose rootfs mounts fail.
        pub fn failing_mount() -> RecordingOs {
            RecordingOs {
                fail_mount: true,
                ..RecordingOs::default()
            }
        }

        /// The calls made so far.
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Os for RecordingOs {
        fn pid(&self) -> u32 {
            4242
        }

        fn mount_rootfs(&self, bundle: &Path, mounts: &[Mount]) -> Result<bool> {
            self.record(format!("mount {}", bundle.display()));
            if self.fail_mount {
                anyhow::bail!("cannot mount the image's rootfs (stub)");
            }
            Ok(!mounts.is_empty())
        }

        fn unmount_rootfs(&self, bundle: &Path) -> Result<()> {
            self.record(format!("unmount {}", bundle.display()));
            Ok(())
        }

        fn create_cgroup(&self, path: &Path, role: &CgroupRole) -> Result<Arc<Cgroup>> {
            let role = match role {
                CgroupRole::Sandbox { holds_process } => {
                    format!("sandbox holds_process={holds_process}")
                }
                CgroupRole::Container(_) => "container".to_string(),
            };
            self.record(format!("create cgroup {} {role}", path.display()));
            Ok(Arc::new(Cgroup::unmade(path)))
        }

        fn remove_cgroup(&self, cgroup: &Cgroup) {
            std::thread::sleep(self.cgroup_removal);
            self.record(format!("remove cgroup {}", cgroup.path().display()));
        }
    }
}
