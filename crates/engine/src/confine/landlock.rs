//! The Landlock layer: which host files a guest's thread can reach at all.
//!
//! Every file system access the kernel lets Landlock handle (as of ABI 6,
//! Linux 6.12) is handled, and granted only beneath the guest's own
//! directories. Execute, creating device nodes and device ioctls are never
//! granted. On an older kernel the crate enforces what it can (best effort);
//! on one without Landlock this layer is missing, which is logged once.
use std::os::fd::BorrowedFd;
use std::sync::Once;

use ::landlock::{
    Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};
use anyhow::{Context, Result};

/// The newest ABI whose access rights are asked for.
const ABI_WANTED: ABI = ABI::V6;

/// Files the C library reads to look names up (`getaddrinfo`, used for the
/// guest's `ip-name-lookup` and outgoing HTTP), and the shared libraries
/// it may load for that (NSS modules): readable, nothing else. A runc
/// container reads its own copies; these are the host's, as the guest's
/// name lookups are the host resolver's in the guest's network namespace.
const NAME_LOOKUP_PATHS: [&str; 11] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/ld.so.cache",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
];

/// Restricts the calling thread to `dirs` (each with whether it is
/// read-only). Returns whether Landlock enforces it (false on a kernel
/// without Landlock).
pub(super) fn restrict(dirs: &[(BorrowedFd<'_>, bool)]) -> Result<bool> {
    let handled = AccessFs::from_all(ABI_WANTED);
    let read = AccessFs::from_read(ABI_WANTED) & !BitFlags::from(AccessFs::Execute);
    let never = AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock | AccessFs::IoctlDev;
    let write = handled & !never;

    let mut ruleset = Ruleset::default()
        .handle_access(handled)
        .and_then(|r| r.create())
        .context("cannot create a Landlock ruleset")?;
    for (dir, readonly) in dirs {
        let access = if *readonly { read } else { write };
        ruleset = ruleset
            .add_rule(PathBeneath::new(*dir, access))
            .context("cannot add a guest directory to the Landlock ruleset")?;
    }
    for path in NAME_LOOKUP_PATHS {
        // A missing path needs no rule.
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let Ok(fd) = PathFd::new(path) else {
            continue;
        };
        let access = if meta.is_dir() {
            read
        } else {
            BitFlags::from(AccessFs::ReadFile)
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .with_context(|| format!("cannot let the guest's name lookups read {path}"))?;
    }
    let status = ruleset
        .restrict_self()
        .context("cannot restrict the guest's thread with Landlock")?;
    let enforced = status.ruleset != RulesetStatus::NotEnforced;
    if status.ruleset != RulesetStatus::FullyEnforced {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            log::warn!(
                "Landlock is {:?} on this kernel: guests' file access is confined by credentials and path checks only (see docs/security.md)",
                status.ruleset
            )
        });
    }
    Ok(enforced)
}
