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
use std::io;
use std::path::{Component, Path, PathBuf};

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
