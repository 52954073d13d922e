//! The directories a guest sees, opened once when its container is created.
//!
//! Each preopened directory (the rootfs, each bind mount) becomes a private,
//! detached copy of its mount (`open_tree(OPEN_TREE_CLONE)`) with `nodev`,
//! `nosuid` and `noexec` set, and `rdonly` when the spec says read-only: the
//! kernel then refuses opening a device node found there, and writing under
//! a read-only one, whatever wasmtime-wasi does. The copy is attached
//! nowhere and disappears with its last handle; nothing is mounted on the
//! host. Landlock rules name these copies, so the thread reaches the host's
//! files only through them.
//!
//! A handle is used again later through `/proc/self/fd/N`, a link the
//! kernel resolves to the open directory itself, never by walking its old
//! path: that is how an HTTP guest's per-request WASI context is built
//! without reopening anything by path.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Once;

use nix::libc;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `struct mount_attr` of `mount_setattr(2)`, first version.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn fd_from(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(rc)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file descriptor out of range"))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory at `path` as a handle for lookups only (`O_PATH`).
pub(crate) fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let rc = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    fd_from(rc.into())
}

/// A detached `nodev,nosuid,noexec` copy of the directory at `path` (and
/// the mounts below it), read-only if `readonly`. Costs two system calls.
///
/// Where the kernel refuses (older than 5.12, or not root), falls back to a
/// plain handle of the directory, logged once: the guest then reaches the
/// directory's device nodes as the directory's mount allows.
///
/// # Errors
///
/// Fails if `path` cannot be opened or is not a directory.
pub(crate) fn open_view(path: &Path, readonly: bool) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let tree = fd_from(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    });
    let tree = match tree {
        Ok(tree) => tree,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            return fallback(path, e);
        }
        Err(e) => return Err(e),
    };
    let mut attr_set = MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC;
    if readonly {
        attr_set |= MOUNT_ATTR_RDONLY;
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: an open mount handle, an empty path, and a mount_attr of the
    // size passed; the result is checked.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH as libc::c_uint) | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
            return fallback(path, e);
        }
        return Err(e);
    }
    // open_tree also clones a file; a preopen must be a directory.
    let meta = std::fs::metadata(proc_path(&tree))?;
    if !meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    Ok(tree)
}

fn fallback(path: &Path, why: io::Error) -> io::Result<OwnedFd> {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::warn!(
            "cannot make nodev copies of guests' directories ({why}); device nodes in rootfs and mounts are only as closed as their mounts (see docs/security.md)"
        )
    });
    open_path(path)
}

/// The path through which `/proc` reaches the open `fd` itself: opening it
/// opens that very directory, wherever it has moved or whatever replaced
/// its old path.
pub(crate) fn proc_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens the directory `rel` inside `root` as a chroot would resolve it
/// (`openat2` with `RESOLVE_IN_ROOT`: absolute symlinks and `..` stay
/// inside `root`), without following `/proc` magic links, atomically
/// against concurrent renames.
pub(crate) fn open_dir_in(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    let rel = rel.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let c = c_path(Path::new(rel))?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: an open directory, a NUL-terminated path and an open_how of
    // the size passed; the result is checked.
    fd_from(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })
}
