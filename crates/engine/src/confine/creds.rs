//! A guest thread's credentials: uid, gids, umask, capabilities.
//!
//! Linux keeps credentials per thread; glibc's and nix's `setuid` family
//! make every thread of the process follow (they signal each thread), which
//! in a shim hosting many guests would change them all. So every call here
//! is the raw system call, on the calling thread only.
use std::io;

use anyhow::{bail, Context, Result};
use nix::libc;

/// The capabilities the kernel knows by number, in the order of
/// `linux/capability.h` (`CAP_CHOWN` is 0).
const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Capability sets as bit masks (bit N: capability number N), from a spec's
/// `process.capabilities`, as runc sets them before it executes the
/// container's first program. A guest's thread gets the sets that program
/// ends up with (see [`CapabilitySets::after_exec`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapabilitySets {
    /// What the kernel checks.
    pub effective: u64,
    /// What the thread may make effective.
    pub permitted: u64,
    /// Kept across `execve`; kept for fidelity.
    pub inheritable: u64,
    /// Upper bound of what the thread can ever gain.
    pub bounding: u64,
    /// What a program executed by a non-root user keeps.
    pub ambient: u64,
}

impl CapabilitySets {
    /// No capability at all: a root thread without them is checked like any
    /// other user (no `CAP_DAC_OVERRIDE`, ...).
    pub fn none() -> CapabilitySets {
        CapabilitySets::default()
    }

    /// The bit mask of `names` (`"CAP_NET_BIND_SERVICE"`, or without the
    /// `CAP_` prefix, any case). Unknown names grant nothing and are
    /// logged, as runc does, since ignoring one can only take a privilege
    /// away.
    pub fn mask<S: AsRef<str>>(names: &[S]) -> u64 {
        let mut mask = 0u64;
        for name in names {
            let name = name.as_ref().to_ascii_uppercase();
            let full = if name.starts_with("CAP_") {
                name
            } else {
                format!("CAP_{name}")
            };
            match CAPABILITY_NAMES.iter().position(|&known| known == full) {
                Some(bit) => mask |= 1 << bit,
                None => log::warn!("unknown capability {full} in the spec, not granted"),
            }
        }
        mask
    }

    /// The sets a program has once a process with these sets and user `uid`
    /// executed it (a file without file capabilities, which is what a runc
    /// container's first program is): for uid 0, permitted and effective
    /// become inheritable plus bounding; for any other uid, only the ambient
    /// capabilities (those also permitted and inheritable) remain, in both.
    /// So a uid-1000 container gets no capabilities from runc's default set,
    /// exactly as its process would under runc. The ambient and inheritable
    /// sets are kept.
    pub fn after_exec(self, uid: u32) -> CapabilitySets {
        let ambient = self.ambient & self.permitted & self.inheritable & self.bounding;
        let permitted = if uid == 0 {
            (self.inheritable | self.bounding) & self.bounding
        } else {
            ambient
        };
        CapabilitySets {
            effective: permitted,
            permitted,
            inheritable: self.inheritable & self.bounding,
            bounding: self.bounding,
            ambient,
        }
    }

    /// The names of the capabilities in `mask`, for messages.
    pub fn names(mask: u64) -> Vec<&'static str> {
        CAPABILITY_NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| mask & (1 << bit) != 0)
            .map(|(_, &name)| name)
            .collect()
    }
}

/// The credentials a guest's threads run with: `process.user` and
/// `process.capabilities` of its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Real, effective, saved and file system uid.
    pub uid: u32,
    /// Real, effective, saved and file system gid.
    pub gid: u32,
    /// Supplementary groups (`additionalGids`); the only ones the thread has.
    pub additional_gids: Vec<u32>,
    /// File mode creation mask; `None` keeps the process's (runc: 0022).
    pub umask: Option<u32>,
    /// What the thread may do beyond its uid's file permissions.
    pub capabilities: CapabilitySets,
}

impl Credentials {
    /// `uid`:`gid` with no additional groups, umask 0022 and no
    /// capabilities.
    pub fn user(uid: u32, gid: u32) -> Credentials {
        Credentials {
            uid,
            gid,
            additional_gids: Vec::new(),
            umask: Some(0o022),
            capabilities: CapabilitySets::none(),
        }
    }
}

/// Most supplementary groups Linux allows (NGROUPS_MAX).
const MAX_GROUPS: usize = 65536;

/// Changes the calling thread's credentials to `c`. Needs `CAP_SETUID`,
/// `CAP_SETGID` and `CAP_SETPCAP` (the shim runs as root).
pub(super) fn apply(c: &Credentials) -> Result<()> {
    if c.additional_gids.len() > MAX_GROUPS {
        bail!(
            "the spec lists {} additional gids; Linux allows at most {MAX_GROUPS}",
            c.additional_gids.len()
        );
    }
    let caps = c.capabilities.after_exec(c.uid);
    // Keep the permitted set across the uid change, then cut it below.
    prctl(libc::PR_SET_KEEPCAPS, 1).context("cannot keep capabilities across the uid change")?;
    // The bounding set needs CAP_SETPCAP, which the capset below takes away.
    for cap in 0..64u64 {
        if caps.bounding & (1 << cap) != 0 {
            continue;
        }
        if let Err(e) = prctl(libc::PR_CAPBSET_DROP, cap) {
            // EINVAL: the kernel has no capability of that number.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e)
                .with_context(|| format!("cannot drop capability {cap} from the bounding set"));
        }
    }
    // SAFETY: raw system calls with valid arguments; each changes only the
    // calling thread's credentials.
    unsafe {
        let gids: Vec<libc::gid_t> = c.additional_gids.clone();
        check(libc::syscall(
            libc::SYS_setgroups,
            gids.len(),
            gids.as_ptr(),
        ))
        .with_context(|| format!("cannot set additional gids {:?}", c.additional_gids))?;
        check(libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid))
            .with_context(|| format!("cannot set gid {}", c.gid))?;
        check(libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid))
            .with_context(|| format!("cannot set uid {}", c.uid))?;
    }
    capset(&caps).with_context(|| {
        format!(
            "cannot set capabilities (effective {:?})",
            CapabilitySets::names(caps.effective)
        )
    })?;
    prctl(libc::PR_SET_KEEPCAPS, 0).context("cannot reset keep-capabilities")?;
    // Ambient capabilities only matter across an execve, which a guest's
    // thread cannot make; none are kept.
    if let Err(e) = prctl4(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as u64) {
        // EINVAL: a kernel older than 4.3 has no ambient set.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e).context("cannot clear the ambient capabilities");
        }
    }
    if let Some(mask) = c.umask {
        // SAFETY: umask(2) cannot fail; after unshare(CLONE_FS) it is this
        // thread's own.
        unsafe { libc::syscall(libc::SYS_umask, mask & 0o777) };
    }
    Ok(())
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn prctl(option: libc::c_int, arg: u64) -> io::Result<()> {
    prctl4(option, arg)
}

fn prctl4(option: libc::c_int, arg: u64) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; the options used here act
    // on the calling thread.
    check(unsafe { libc::syscall(libc::SYS_prctl, option, arg, 0u64, 0u64, 0u64) })
}

/// `capset(2)` with version 3 (64-bit sets) on the calling thread.
fn capset(caps: &CapabilitySets) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let permitted = caps.permitted & caps.bounding;
    let effective = caps.effective & permitted;
    let inheritable = caps.inheritable & caps.bounding;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        Data {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and two data structs as capset(2) version 3 expects;
    // pid 0 is the calling thread.
    check(unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_map_to_bits() {
        let mask = CapabilitySets::mask(&["CAP_CHOWN", "net_bind_service", "CAP_NOPE"]);
        assert_eq!(mask, 1 | 1 << 10);
        assert_eq!(
            CapabilitySets::names(mask),
            vec!["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(CapabilitySets::mask(&["CAP_CHECKPOINT_RESTORE"]), 1 << 40);
    }

    #[test]
    fn sets_after_exec_follow_the_kernels_rules() {
        let dac = CapabilitySets::mask(&["CAP_DAC_OVERRIDE"]);
        let bind = CapabilitySets::mask(&["CAP_NET_BIND_SERVICE"]);
        let default = CapabilitySets {
            effective: dac | bind,
            permitted: dac | bind,
            inheritable: 0,
            bounding: dac | bind,
            ambient: 0,
        };
        // Root keeps its bounding set.
        let root = default.after_exec(0);
        assert_eq!((root.effective, root.permitted), (dac | bind, dac | bind));
        // Another user keeps only ambient capabilities: none here.
        let user = default.after_exec(1000);
        assert_eq!((user.effective, user.permitted), (0, 0));
        let with_ambient = CapabilitySets {
            inheritable: bind,
            ambient: bind,
            ..default
        };
        let user = with_ambient.after_exec(1000);
        assert_eq!((user.effective, user.permitted), (bind, bind));
        // Nothing at all for root without a bounding set.
        assert_eq!(CapabilitySets::none().after_exec(0).effective, 0);
    }
}
