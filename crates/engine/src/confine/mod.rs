//! Confining a guest's threads with the kernel: credentials, Landlock,
//! seccomp.
//!
//! A guest runs as threads of the shim, a root process that may host many
//! tenants. wasmtime-wasi's path resolution keeps a well-behaved guest inside
//! its preopened directories; the layers here make the kernel refuse what a
//! guest must not do even if that resolution (or wasmtime itself) were wrong:
//!
//! 1. **Credentials** ([`Credentials`]): the container's uid, gid,
//!    additional gids and umask, and the capability sets its spec grants, so
//!    file permissions are checked as for a runc container's process.
//! 2. **Landlock**: the thread may reach the directories given with
//!    [`Confinement::allow_dir`] (read-only where asked) and nothing else on
//!    the host.
//! 3. **seccomp** (with `no_new_privs`): system calls a WASI host never makes
//!    for a guest (exec, ptrace, mount, namespaces, module loading, bpf,
//!    keyrings, perf, userfaultfd, io_uring, raising credentials) fail with
//!    `EPERM`.
//!
//! All three are per thread in Linux and inherited by threads created
//! afterwards, so a confinement is applied once on the guest's own thread,
//! before any guest code runs, and covers the threads its runtime starts
//! later for blocking I/O. Every other thread of the process keeps its
//! credentials: the system calls are made raw, never through the libc or nix
//! wrappers, which change every thread of the process.
//!
//! ```no_run
//! # use wasishim_engine::{Confinement, Credentials};
//! let confinement = Confinement::new()
//!     .credentials(Credentials::user(1000, 1000))
//!     .allow_path("/srv/rootfs", false)?
//!     .seccomp(true);
//! std::thread::spawn(move || {
//!     confinement.apply_to_current_thread()?;
//!     // From here on this thread (and threads it starts) is uid 1000, can
//!     // reach only /srv/rootfs, and cannot exec.
//!     anyhow::Ok(())
//! });
//! # anyhow::Ok(())
//! ```
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};

mod creds;
mod landlock;
mod seccomp;
pub(crate) mod view;

pub use creds::{CapabilitySets, Credentials};

/// Names the confinement layers a debugging or test run applies (a comma
/// separated subset of `creds,landlock,seccomp`, or empty for none).
/// Unset: all of them. Read once per process; a warning is logged when it
/// leaves a layer out. Meant for showing that each layer alone holds, never
/// for production.
pub const CONFINE_LAYERS_ENV: &str = "WASISHIM_TEST_CONFINE";

/// What the kernel enforces on a guest's threads. Built with the methods
/// below, applied with [`Confinement::apply_to_current_thread`].
///
/// [`Confinement::new`] confines nothing; each method adds one layer. Cheap to
/// clone (the directories are shared handles).
#[derive(Clone, Default)]
pub struct Confinement {
    credentials: Option<Credentials>,
    /// `None`: no Landlock domain; `Some(empty)`: no file system at all.
    landlock: Option<Vec<AllowedDir>>,
    seccomp: bool,
}

#[derive(Clone)]
struct AllowedDir {
    dir: Arc<OwnedFd>,
    readonly: bool,
}

impl fmt::Debug for Confinement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Confinement")
            .field("credentials", &self.credentials)
            .field(
                "landlock_dirs",
                &self.landlock.as_ref().map(|dirs| {
                    dirs.iter()
                        .map(|d| (d.dir.clone(), d.readonly))
                        .collect::<Vec<_>>()
                }),
            )
            .field("seccomp", &self.seccomp)
            .finish()
    }
}

/// What [`Confinement::apply_to_current_thread`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Credentials were changed.
    pub credentials: bool,
    /// A Landlock domain restricts the thread (false on a kernel without
    /// Landlock, or when the layer was not asked for).
    pub landlock: bool,
    /// A seccomp filter restricts the thread.
    pub seccomp: bool,
}

impl Confinement {
    /// A confinement that changes nothing.
    pub fn new() -> Confinement {
        Confinement::default()
    }

    /// Runs the thread with `credentials` (uid, gids, umask, capabilities).
    pub fn credentials(mut self, credentials: Credentials) -> Confinement {
        self.credentials = Some(credentials);
        self
    }

    /// Turns Landlock on: the thread reaches only the directories added with
    /// [`Self::allow_dir`] / [`Self::allow_path`] (none yet: no file at all,
    /// apart from the few read-only files name lookup needs, see
    /// docs/security.md).
    pub fn landlock(mut self) -> Confinement {
        self.landlock.get_or_insert_with(Vec::new);
        self
    }

    /// Lets the thread reach everything beneath the open directory `dir`
    /// (turning Landlock on): read-only if `readonly`, else also write,
    /// create, remove and rename; never execute, create device nodes or
    /// send ioctls to devices. The handle is kept, so the rule means this
    /// directory, whatever is later mounted or linked at its path.
    pub fn allow_dir(mut self, dir: Arc<OwnedFd>, readonly: bool) -> Confinement {
        self.landlock
            .get_or_insert_with(Vec::new)
            .push(AllowedDir { dir, readonly });
        self
    }

    /// [`Self::allow_dir`] for the directory at `path`, opened now
    /// (`O_PATH`).
    ///
    /// # Errors
    ///
    /// Fails if `path` cannot be opened.
    pub fn allow_path(self, path: impl AsRef<Path>, readonly: bool) -> Result<Confinement> {
        let path = path.as_ref();
        let dir = view::open_path(path)
            .with_context(|| format!("cannot open {} for a Landlock rule", path.display()))?;
        Ok(self.allow_dir(Arc::new(dir), readonly))
    }

    /// Installs (`true`) the seccomp filter that refuses what a guest's
    /// thread never needs, with `no_new_privs`.
    pub fn seccomp(mut self, on: bool) -> Confinement {
        self.seccomp = on;
        self
    }

    /// Keeps only the layers named in [`CONFINE_LAYERS_ENV`] when it is set.
    pub(crate) fn with_layers_from_env(mut self) -> Confinement {
        let layers = env_layers();
        if !layers.credentials {
            self.credentials = None;
        }
        if !layers.landlock {
            self.landlock = None;
        }
        if !layers.seccomp {
            self.seccomp = false;
        }
        self
    }

    /// Confines the calling thread, and threads it starts from now on. Other
    /// threads of the process are not touched. Irreversible for this thread.
    ///
    /// Order: a private file system context (`unshare(CLONE_FS)`, so umask
    /// and working directory are the thread's own), credentials
    /// (capability bounding set, groups, gid, uid, capabilities, umask),
    /// Landlock, then seccomp, which forbids the calls made before it.
    /// Costs a few dozen system calls (well under a millisecond).
    ///
    /// # Errors
    ///
    /// Fails, naming the step, if one of them is refused (e.g. not run as
    /// root). The thread may then be partly confined: the caller must not run
    /// the guest on it.
    pub fn apply_to_current_thread(&self) -> Result<Applied> {
        // SAFETY: unshare(2) with CLONE_FS only affects the calling thread.
        if unsafe { nix::libc::unshare(nix::libc::CLONE_FS) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot give the guest's thread its own umask and working directory (unshare CLONE_FS)");
        }
        let mut applied = Applied {
            credentials: false,
            landlock: false,
            seccomp: false,
        };
        if let Some(credentials) = &self.credentials {
            creds::apply(credentials)?;
            applied.credentials = true;
        }
        if let Some(dirs) = &self.landlock {
            let dirs: Vec<(std::os::fd::BorrowedFd<'_>, bool)> =
                dirs.iter().map(|d| (d.dir.as_fd(), d.readonly)).collect();
            applied.landlock = landlock::restrict(&dirs)?;
        }
        if self.seccomp {
            seccomp::install()?;
            applied.seccomp = true;
        }
        Ok(applied)
    }
}

/// Which layers [`CONFINE_LAYERS_ENV`] leaves on.
#[derive(Debug, Clone, Copy)]
struct Layers {
    credentials: bool,
    landlock: bool,
    seccomp: bool,
}

fn env_layers() -> Layers {
    static LAYERS: OnceLock<Layers> = OnceLock::new();
    *LAYERS.get_or_init(|| {
        let Ok(value) = std::env::var(CONFINE_LAYERS_ENV) else {
            return Layers {
                credentials: true,
                landlock: true,
                seccomp: true,
            };
        };
        let names: Vec<&str> = value.split(',').map(str::trim).collect();
        let layers = Layers {
            credentials: names.contains(&"creds"),
            landlock: names.contains(&"landlock"),
            seccomp: names.contains(&"seccomp"),
        };
        log::warn!(
            "{CONFINE_LAYERS_ENV}={value}: guests are confined by {layers:?} only; this is a test switch, unset it in production"
        );
        layers
    })
}

/// Checks the seccomp filter compiles on this architecture, so a bad
/// filter fails early (engine build) rather than at a guest's start.
pub(crate) fn check() -> Result<()> {
    seccomp::program().map(|_| ())
}
