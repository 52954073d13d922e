//! Resolving a guest path to a host path without leaving the rootfs.
//!
//! The rootfs is the image's file system, so its symlinks are written for the
//! guest's view: an absolute target such as `/lib/app.wasm` means
//! `<rootfs>/lib/app.wasm`, as it would inside a chroot. A `..` that would
//! climb above the rootfs is refused rather than clamped, because it is
//! almost always a mistake or an attack and silently running a different
//! file would hide either.
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::libc;

/// Linux gives up after 40 symlinks (ELOOP); so do we.
const MAX_SYMLINKS: usize = 40;

/// Why a guest path has no host path inside the rootfs.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// Some component does not exist (or a non-directory has a child).
    NotFound,
    /// A `..` would leave the rootfs; `link` names the symlink (guest path and
    /// target) that led there, if any.
    Escapes { link: Option<(String, PathBuf)> },
    /// More than [`MAX_SYMLINKS`] symlinks, probably a loop.
    TooManySymlinks,
    /// The file system refused to tell (permissions, I/O error).
    Io(io::Error),
}

/// Maps `guest_path` (absolute inside the guest) to a host path under
/// `rootfs` with no symlinks left in it, following symlinks as a chroot would.
/// The final component must exist.
///
/// Costs one `lstat` per path component, plus a `readlink` per symlink.
/// Not atomic against concurrent changes to the rootfs; the rootfs is the
/// container's own snapshot, which nothing else changes while it is created.
pub(crate) fn resolve(rootfs: &Path, guest_path: &str) -> Result<PathBuf, ResolveError> {
    let mut todo: VecDeque<OsString> = VecDeque::new();
    push_front(&mut todo, Path::new(guest_path));
    // Resolved components below the rootfs; none of them is a symlink.
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    let mut last_link: Option<(String, PathBuf)> = None;

    while let Some(part) = todo.pop_front() {
        if part == "/" {
            done.clear();
            continue;
        }
        if part == ".." {
            if done.pop().is_none() {
                return Err(ResolveError::Escapes { link: last_link });
            }
            continue;
        }
        let mut host = rootfs.to_path_buf();
        host.extend(&done);
        host.push(&part);
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(e) if is_missing(&e) => return Err(ResolveError::NotFound),
            Err(e) => return Err(ResolveError::Io(e)),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(ResolveError::TooManySymlinks);
            }
            let target = std::fs::read_link(&host).map_err(ResolveError::Io)?;
            let mut link_guest = PathBuf::from("/");
            link_guest.extend(&done);
            link_guest.push(&part);
            last_link = Some((link_guest.to_string_lossy().into_owned(), target.clone()));
            push_front(&mut todo, &target);
        } else {
            done.push(part);
        }
    }
    let mut host = rootfs.to_path_buf();
    host.extend(&done);
    Ok(host)
}

/// Queues `path`'s components ahead of the rest, `/` first if it is absolute.
fn push_front(todo: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::RootDir => Some(OsString::from("/")),
            Component::ParentDir => Some(OsString::from("..")),
            Component::Normal(name) => Some(name.to_os_string()),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    for part in parts.into_iter().rev() {
        todo.push_front(part);
    }
}

/// Largest entrypoint file read (512 MiB): far above real modules and
/// components, low enough that a huge or endless file cannot exhaust the
/// shim's memory.
pub(crate) const MAX_ENTRYPOINT_BYTES: u64 = 512 << 20;

/// Opens the entrypoint at `host` (a path [`resolve`] returned; `shown` is
/// its guest path, for messages) for reading, if and only if it is a
/// regular file of at most [`MAX_ENTRYPOINT_BYTES`].
///
/// The file is first opened for lookups only (`O_PATH | O_NOFOLLOW`), which
/// neither follows a symlink put there since, nor blocks on a FIFO, nor runs
/// a device driver's open; its type is checked on that handle, and only a
/// regular file is then opened for reading, through the handle
/// (`/proc/self/fd`), so what is read is what was checked. Costs three
/// system calls more than a plain open.
///
/// # Errors
///
/// Fails at once, naming the path and what it is, for a directory, FIFO,
/// socket, character or block device, or a file too large; and if it
/// cannot be opened.
pub(crate) fn open_entrypoint_file(host: &Path, shown: &str) -> Result<(File, Metadata)> {
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(host)
        .with_context(|| format!("cannot open entrypoint {shown}"))?;
    let meta = handle
        .metadata()
        .with_context(|| format!("cannot read entrypoint {shown}"))?;
    let kind = file_kind(&meta);
    if kind != "a regular file" {
        bail!("entrypoint {shown} is {kind}, not a WebAssembly file: set process.args[0] to a .wasm file in the image");
    }
    if meta.len() > MAX_ENTRYPOINT_BYTES {
        bail!(
            "entrypoint {shown} is {} bytes, more than the {} MiB wasishim reads: is it really a WebAssembly file?",
            meta.len(),
            MAX_ENTRYPOINT_BYTES >> 20
        );
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(crate::confine::view::proc_path(&handle))
        .with_context(|| format!("cannot open entrypoint {shown}"))?;
    let opened = file
        .metadata()
        .with_context(|| format!("cannot read entrypoint {shown}"))?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        bail!("entrypoint {shown} changed while it was opened: is something rewriting the image?");
    }
    Ok((file, opened))
}

/// What a file is, for messages: "a FIFO", "a directory", ...
pub(crate) fn file_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rootfs(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("wasishim-rootfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = std::fs::create_dir_all(dir.join("rootfs/bin"))
            .and_then(|_| std::fs::write(dir.join("rootfs/bin/app.wasm"), b"x"))
            .and_then(|_| std::fs::write(dir.join("outside.wasm"), b"x"));
        if let Err(e) = made {
            panic!("cannot build a test rootfs in {}: {e}", dir.display());
        }
        TempDir(dir)
    }

    #[test]
    fn plain_and_dotted_paths() {
        let t = rootfs("plain");
        let root = t.0.join("rootfs");
        let want = root.join("bin/app.wasm");
        assert_eq!(resolve(&root, "/bin/app.wasm").ok(), Some(want.clone()));
        assert_eq!(resolve(&root, "/bin/./../bin/app.wasm").ok(), Some(want));
        assert!(matches!(
            resolve(&root, "/bin/nope.wasm"),
            Err(ResolveError::NotFound)
        ));
        assert!(matches!(
            resolve(&root, "/bin/app.wasm/x"),
            Err(ResolveError::NotFound)
        ));
    }

    #[test]
    fn dot_dot_above_the_root_is_refused() {
        let t = rootfs("dotdot");
        let root = t.0.join("rootfs");
        assert!(matches!(
            resolve(&root, "/../outside.wasm"),
            Err(ResolveError::Escapes { link: None })
        ));
        assert!(matches!(
            resolve(&root, "/bin/../../outside.wasm"),
            Err(ResolveError::Escapes { link: None })
        ));
    }

    #[test]
    fn only_regular_files_are_entrypoints() {
        let t = rootfs("special");
        let root = t.0.join("rootfs");
        let fifo = root.join("fifo.wasm");
        let dev = root.join("zero.wasm");
        let made = nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)
            .map_err(io::Error::from)
            .and_then(|_| {
                nix::sys::stat::mknod(
                    &dev,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::S_IRWXU,
                    nix::sys::stat::makedev(1, 5),
                )
                .map_err(io::Error::from)
            });
        if let Err(e) = made {
            panic!("cannot create special files (run as root): {e}");
        }
        let started = std::time::Instant::now();
        for (path, kind) in [
            (fifo, "a FIFO"),
            (dev, "a character device"),
            (root.join("bin"), "a directory"),
        ] {
            let err = open_entrypoint_file(&path, "/x.wasm")
                .map(|_| ())
                .unwrap_err();
            let text = format!("{err:#}");
            assert!(
                text.contains("entrypoint /x.wasm is") && text.contains(kind),
                "{text}"
            );
        }
        // Nothing blocked (a FIFO without writer) or read a device.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let (mut file, meta) =
            match open_entrypoint_file(&root.join("bin/app.wasm"), "/bin/app.wasm") {
                Ok(opened) => opened,
                Err(e) => panic!("a regular file was refused: {e:#}"),
            };
        assert_eq!(meta.len(), 1);
        let mut text = String::new();
        assert!(io::Read::read_to_string(&mut file, &mut text).is_ok());
        assert_eq!(text, "x");
        // A symlink at the last component is not followed.
        if let Err(e) = symlink("bin/app.wasm", root.join("link.wasm")) {
            panic!("cannot create a symlink: {e}");
        }
        assert!(open_entrypoint_file(&root.join("link.wasm"), "/link.wasm").is_err());
    }

    #[test]
    fn symlinks_stay_inside() {
        let t = rootfs("links");
        let root = t.0.join("rootfs");
        let made = symlink("bin/app.wasm", root.join("rel.wasm"))
            .and_then(|_| symlink("/bin/app.wasm", root.join("abs.wasm")))
            .and_then(|_| symlink("../outside.wasm", root.join("evil.wasm")))
            .and_then(|_| symlink(t.0.join("outside.wasm"), root.join("host.wasm")))
            .and_then(|_| symlink("loop", root.join("loop")));
        if let Err(e) = made {
            panic!("cannot create test symlinks: {e}");
        }
        let want = root.join("bin/app.wasm");
        assert_eq!(resolve(&root, "/rel.wasm").ok(), Some(want.clone()));
        assert_eq!(resolve(&root, "/abs.wasm").ok(), Some(want));
        match resolve(&root, "/evil.wasm") {
            Err(ResolveError::Escapes {
                link: Some((link, target)),
            }) => {
                assert_eq!(link, "/evil.wasm");
                assert_eq!(target, Path::new("../outside.wasm"));
            }
            other => panic!("escape through a symlink was not refused: {other:?}"),
        }
        // An absolute host path means a path inside the rootfs, which is not there.
        assert!(matches!(
            resolve(&root, "/host.wasm"),
            Err(ResolveError::NotFound)
        ));
        assert!(matches!(
            resolve(&root, "/loop"),
            Err(ResolveError::TooManySymlinks)
        ));
    }
}
