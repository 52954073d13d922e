//! `process.args[0]` (and `process.cwd`) looked up in a rootfs full of
//! traps: symlinks out of it (relative, absolute, through `..`), loops, a
//! FIFO (opening it would block: a hang is a finding), a socket, a
//! directory. Whatever the input, the file found is one of the rootfs's
//! two regular files, never the one beside the rootfs.
//!
//! Input: `args[0]`, then optionally a NUL byte and `process.cwd`.
#![no_main]

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wasishim_engine::fuzzing::entrypoint;

struct Rootfs {
    root: PathBuf,
    /// (dev, ino) of the files the rootfs may yield.
    inside: Vec<(u64, u64)>,
}

fn id(path: &Path) -> (u64, u64) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.dev(), meta.ino())
}

fn rootfs() -> &'static Rootfs {
    static ROOTFS: OnceLock<Rootfs> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        // One per fuzzing process; those of processes that ended go first
        // (libFuzzer ends a process with exit(), which runs no destructor).
        let tmp = std::env::temp_dir();
        for entry in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("wasishim-fuzz-rootfs-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let base = tmp.join(format!("wasishim-fuzz-rootfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let root = base.join("root");
        fs::create_dir_all(root.join("dir/sub")).unwrap();
        fs::write(base.join("secret.wasm"), b"\0asm outside").unwrap();
        fs::write(root.join("app.wasm"), b"\0asm").unwrap();
        fs::write(root.join("dir/inner.wasm"), b"\0asm inner").unwrap();
        let links: [(&str, PathBuf); 12] = [
            ("link", "/app.wasm".into()),
            ("rel", "dir/inner.wasm".into()),
            ("dir/up", "../app.wasm".into()),
            ("dir/sub/deep", "../../dir/./inner.wasm".into()),
            ("loop", "loop".into()),
            ("a", "b".into()),
            ("b", "a".into()),
            ("escape", "../secret.wasm".into()),
            ("escape_abs", "/../secret.wasm".into()),
            ("dir/escape", "../../secret.wasm".into()),
            ("host", base.join("secret.wasm")),
            ("todir", "/dir/sub/..".into()),
        ];
        for (name, target) in links {
            symlink(target, root.join(name)).unwrap();
        }
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        symlink("/fifo", root.join("dir/tofifo")).unwrap();
        // Kept bound for the process's life: a socket file in the rootfs.
        std::mem::forget(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());
        let inside = vec![id(&root.join("app.wasm")), id(&root.join("dir/inner.wasm"))];
        Rootfs { root, inside }
    })
}

fuzz_target!(|data: &[u8]| {
    let rootfs = rootfs();
    let (arg0, cwd) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"/"[..]),
    };
    let arg0 = String::from_utf8_lossy(arg0);
    let cwd = String::from_utf8_lossy(cwd);
    if let Ok(Some(meta)) = entrypoint(&rootfs.root, &arg0, &cwd) {
        assert!(meta.is_file(), "{arg0:?} in {cwd:?}: {meta:?}");
        assert!(
            rootfs.inside.contains(&(meta.dev(), meta.ino())),
            "{arg0:?} in {cwd:?} opened a file outside the rootfs"
        );
    }
});
