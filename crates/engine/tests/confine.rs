//! The kernel's confinement of a guest's threads, each layer alone and all
//! together: credentials, Landlock, seccomp; then guests run through the
//! engine with a `process.user`, device nodes and a cwd swapped for a
//! symlink between HTTP requests.
//!
//! Runs as root (the shim does). Run with `--test-threads=1`: the tests
//! create and chown files in shared temp directories.
mod common;

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_contains, check, Bundle};
use nix::libc;
use serde_json::json;
use wasishim_engine::{CapabilitySets, Confinement, Credentials};

/// A temp directory removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> Dir {
    // Unique per call: tests run in parallel threads of one process, and two
    // asking for the same name must not remove each other's directory.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "wasishim-confine-{name}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    check("create temp dir", std::fs::create_dir_all(&dir));
    check(
        "chmod temp dir",
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)),
    );
    Dir(dir)
}

/// Writes `path` with `mode`, owned by `uid`:`gid`.
fn file_owned(path: &Path, uid: u32, gid: u32, mode: u32) {
    check("write file", std::fs::write(path, b"secret"));
    check(
        "chown",
        std::os::unix::fs::chown(path, Some(uid), Some(gid)),
    );
    check(
        "chmod",
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
    );
}

/// The calling thread's real, effective and saved uid, straight from the
/// kernel (not through a libc cache).
fn thread_uids() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    let rc = unsafe { libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s) };
    assert_eq!(rc, 0, "getresuid failed");
    (r, e, s)
}

/// Runs `f` on a new thread after applying `c` there, and returns its result.
fn confined<T: Send + 'static>(c: Confinement, f: impl FnOnce() -> T + Send + 'static) -> T {
    let joined = std::thread::spawn(move || {
        if let Err(e) = c.apply_to_current_thread() {
            panic!("apply_to_current_thread: {e:#}");
        }
        f()
    })
    .join();
    match joined {
        Ok(v) => v,
        Err(_) => panic!("the confined thread panicked"),
    }
}

fn errno_of<T>(r: io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn user(uid: u32, gid: u32) -> Credentials {
    Credentials::user(uid, gid)
}

#[test]
fn a_thread_as_uid_1000_cannot_read_a_root_0600_file_and_others_keep_uid_0() {
    let dir = temp_dir("creds");
    let secret = dir.0.join("secret");
    file_owned(&secret, 0, 0, 0o600);

    // A thread started before the guest's: it must stay root throughout.
    let (to_other, other_rx) = std::sync::mpsc::channel::<()>();
    let (other_tx, from_other) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        let _ = other_rx.recv();
        let _ = other_tx.send(thread_uids());
    });

    let path = secret.clone();
    let (uids, read, child_uids) = confined(
        Confinement::new().credentials(user(1000, 1000)),
        move || {
            let read = errno_of(std::fs::read(&path));
            let child = std::thread::spawn(thread_uids).join();
            (thread_uids(), read, child.ok())
        },
    );
    assert_eq!(uids, (1000, 1000, 1000));
    assert_eq!(read, Some(libc::EACCES), "uid 1000 read a root 0600 file");
    assert_eq!(
        child_uids,
        Some((1000, 1000, 1000)),
        "a thread started by the confined thread did not inherit its uid"
    );

    // Neither this thread nor one started earlier changed.
    assert_eq!(thread_uids(), (0, 0, 0));
    check("root reads its file", std::fs::read(&secret));
    let _ = to_other.send(());
    assert_eq!(from_other.recv().ok(), Some((0, 0, 0)));
    let _ = other.join();
    // Nor does a thread started now.
    let later = std::thread::spawn(thread_uids).join().ok();
    assert_eq!(later, Some((0, 0, 0)));
    // And the process can still exec (no seccomp leaked to this thread).
    let status = check("run true", std::process::Command::new("true").status());
    assert!(status.success());
}

#[test]
fn root_without_cap_dac_override_cannot_read_another_users_0600_file() {
    let dir = temp_dir("nocaps");
    let theirs = dir.0.join("theirs");
    file_owned(&theirs, 1000, 1000, 0o600);

    let path = theirs.clone();
    let read = confined(Confinement::new().credentials(user(0, 0)), move || {
        errno_of(std::fs::read(&path))
    });
    assert_eq!(read, Some(libc::EACCES));

    // With CAP_DAC_OVERRIDE granted, as in runc's default set, it can.
    let mut granted = user(0, 0);
    let mask = CapabilitySets::mask(&["CAP_DAC_OVERRIDE"]);
    granted.capabilities = CapabilitySets {
        effective: mask,
        permitted: mask,
        inheritable: 0,
        bounding: mask,
        ambient: 0,
    };
    let path = theirs.clone();
    let read = confined(Confinement::new().credentials(granted), move || {
        errno_of(std::fs::read(&path))
    });
    assert_eq!(read, None);
}

#[test]
fn created_files_belong_to_the_container_user_with_its_umask() {
    let dir = temp_dir("owner");
    let shared = dir.0.join("shared");
    check("mkdir", std::fs::create_dir(&shared));
    check(
        "chmod 1777",
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)),
    );
    let rootdir = dir.0.join("rootonly");
    check("mkdir", std::fs::create_dir(&rootdir));

    let mut c = user(1000, 1001);
    c.umask = Some(0o027);
    let (made, refused) = {
        let shared = shared.clone();
        let rootdir = rootdir.clone();
        confined(Confinement::new().credentials(c), move || {
            let made = std::fs::write(shared.join("new"), b"x");
            let refused = errno_of(std::fs::write(rootdir.join("new"), b"x"));
            (made.is_ok(), refused)
        })
    };
    assert!(made, "uid 1000 could not create a file in a 1777 directory");
    assert_eq!(refused, Some(libc::EACCES), "wrote into a root 0755 dir");
    let meta = check("stat", std::fs::metadata(shared.join("new")));
    assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
    assert_eq!(meta.mode() & 0o777, 0o640, "umask 027 not applied");

    // The umask was the thread's own: this thread's is unchanged.
    let mine = check(
        "write",
        std::fs::write(dir.0.join("mine"), b"x")
            .and_then(|_| std::fs::metadata(dir.0.join("mine"))),
    );
    assert_ne!(mine.mode() & 0o777, 0o640);
}

#[test]
fn additional_gids_grant_group_access() {
    let dir = temp_dir("groups");
    let grouped = dir.0.join("grouped");
    file_owned(&grouped, 0, 2000, 0o640);

    let path = grouped.clone();
    let without = confined(
        Confinement::new().credentials(user(1000, 1000)),
        move || errno_of(std::fs::read(&path)),
    );
    assert_eq!(without, Some(libc::EACCES));

    let mut c = user(1000, 1000);
    c.additional_gids = vec![2000];
    let path = grouped.clone();
    let with = confined(Confinement::new().credentials(c), move || {
        errno_of(std::fs::read(&path))
    });
    assert_eq!(with, None, "additional gid 2000 did not grant read");
}

#[test]
fn landlock_alone_refuses_host_paths_outside_the_allowed_dirs() {
    let dir = temp_dir("landlock");
    let inside = dir.0.join("inside");
    let readonly = dir.0.join("readonly");
    let outside = dir.0.join("outside");
    for d in [&inside, &readonly, &outside] {
        check("mkdir", std::fs::create_dir(d));
        check("write", std::fs::write(d.join("f"), b"x"));
    }
    let c = check(
        "allow inside",
        Confinement::new().allow_path(&inside, false),
    );
    let c = check("allow readonly", c.allow_path(&readonly, true));
    let (inside2, readonly2, outside2) = (inside.clone(), readonly.clone(), outside.clone());
    let got = confined(c, move || {
        (
            thread_uids(),
            errno_of(std::fs::read(inside2.join("f"))),
            errno_of(std::fs::write(inside2.join("g"), b"y")),
            errno_of(std::fs::read(readonly2.join("f"))),
            errno_of(std::fs::write(readonly2.join("g"), b"y")),
            errno_of(std::fs::read(outside2.join("f"))),
            errno_of(std::fs::read("/etc/shadow")),
            errno_of(std::fs::read_dir("/")),
        )
    });
    let (uids, read_in, write_in, read_ro, write_ro, read_out, shadow, root_dir) = got;
    assert_eq!(uids, (0, 0, 0), "Landlock alone must not change the uid");
    assert_eq!(read_in, None);
    assert_eq!(write_in, None);
    assert_eq!(read_ro, None);
    assert_eq!(write_ro, Some(libc::EACCES), "wrote under a read-only rule");
    assert_eq!(
        read_out,
        Some(libc::EACCES),
        "read outside the rules as root"
    );
    assert_eq!(shadow, Some(libc::EACCES));
    assert_eq!(root_dir, Some(libc::EACCES));
    // This thread is not confined.
    check("read outside here", std::fs::read(outside.join("f")));
}

#[test]
fn seccomp_alone_refuses_exec_namespaces_and_raising_credentials() {
    let got = confined(Confinement::new().seccomp(true), || {
        let path = CString::new("/bin/true").unwrap_or_default();
        let argv = [path.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: valid NUL-terminated argv/envp; on success the test
        // process would be replaced, which the assertion below catches as
        // the test never finishing.
        let exec = unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let exec_errno = io::Error::last_os_error().raw_os_error();
        // SAFETY: unshare/setresuid with plain integers.
        let unshare = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        let unshare_errno = io::Error::last_os_error().raw_os_error();
        let setuid = unsafe { libc::syscall(libc::SYS_setresuid, 0, 0, 0) };
        let setuid_errno = io::Error::last_os_error().raw_os_error();
        // Threads (tokio's blocking pool) must still start, and inherit.
        let child = std::thread::spawn(|| {
            // SAFETY: as above.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            (rc, io::Error::last_os_error().raw_os_error())
        })
        .join()
        .ok();
        let spawn = std::process::Command::new("true").status();
        (
            (exec, exec_errno),
            (unshare, unshare_errno),
            (setuid, setuid_errno),
            child,
            spawn.is_err(),
        )
    });
    assert_eq!(got.0, (-1, Some(libc::EPERM)), "execve was not refused");
    assert_eq!(got.1, (-1, Some(libc::EPERM)), "unshare was not refused");
    assert_eq!(got.2, (-1, Some(libc::EPERM)), "setresuid was not refused");
    assert_eq!(
        got.3,
        Some((-1, Some(libc::EPERM))),
        "a child thread escaped"
    );
    assert!(got.4, "a confined thread started a process");
    // Not this thread.
    let status = check("run true", std::process::Command::new("true").status());
    assert!(status.success());
}

#[test]
fn all_layers_together_still_run_threads_and_io() {
    let dir = temp_dir("all");
    check(
        "chmod 0777",
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)),
    );
    let c = check(
        "allow",
        Confinement::new()
            .credentials(user(1000, 1000))
            .seccomp(true)
            .allow_path(&dir.0, false),
    );
    let path = dir.0.clone();
    let ok = confined(c, move || {
        let wrote = std::fs::write(path.join("a"), b"x").is_ok();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let blocking =
            rt.map(|rt| rt.block_on(async { tokio::task::spawn_blocking(thread_uids).await.ok() }));
        (wrote, blocking.ok().flatten())
    });
    assert_eq!(ok, (true, Some((1000, 1000, 1000))));
}

/// A file in the rootfs owned by root, mode 0600, read by a guest running
/// as `uid`: the `files` fixture (`make fixtures`); missing, the test fails.
fn files_fixture() -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test/fixtures/out/wasip1/files.wasm");
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!(
            "fixture {} is missing ({e}): build it with `make fixtures`",
            path.display()
        ),
    }
}

fn files_bundle(wasm: &[u8], args: &[&str], uid: u32) -> Bundle {
    let mut all = vec!["/files.wasm"];
    all.extend_from_slice(args);
    let mut b = Bundle::new(&all);
    b.file("files.wasm", wasm);
    b.config(|c| c["process"]["user"] = json!({"uid": uid, "gid": uid}));
    b
}

#[test]
fn a_guest_with_process_user_1000_cannot_read_root_0600_files_or_write_root_dirs() {
    let wasm = files_fixture();
    let b = files_bundle(&wasm, &["read", "/secret"], 1000);
    file_owned(&b.rootfs().join("secret"), 0, 0, 0o600);
    assert_eq!(b.run(), 1, "stdout: {}", b.stdout());
    assert_contains(&b.stderr(), "cannot read /secret");

    let b = files_bundle(&wasm, &["write", "/new", "x"], 1000);
    assert_eq!(b.run(), 1, "a uid 1000 guest wrote into a root 0755 rootfs");
    assert!(!b.rootfs().join("new").exists());

    // Files a guest creates are its own.
    let b = files_bundle(&wasm, &["write", "/tmp/new", "x"], 1000);
    let tmp = b.rootfs().join("tmp");
    check("mkdir tmp", std::fs::create_dir(&tmp));
    check(
        "chmod 1777",
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)),
    );
    assert_eq!(b.run(), 0, "stderr: {}", b.stderr());
    let meta = check("stat", std::fs::metadata(tmp.join("new")));
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert_eq!(meta.mode() & 0o777, 0o644);

    // As root with runc's default capabilities it can read.
    let mut b = files_bundle(&wasm, &["read", "/secret"], 0);
    b.config(|c| {
        c["process"]["capabilities"] = json!({
            "effective": ["CAP_DAC_OVERRIDE"], "permitted": ["CAP_DAC_OVERRIDE"],
            "bounding": ["CAP_DAC_OVERRIDE"]
        })
    });
    file_owned(&b.rootfs().join("secret"), 1000, 1000, 0o600);
    assert_eq!(b.run(), 0, "stderr: {}", b.stderr());
    assert_eq!(b.stdout(), "secret");
}

#[test]
fn a_guest_cannot_open_device_nodes_in_its_rootfs() {
    let wasm = files_fixture();
    let b = files_bundle(&wasm, &["read", "/zero"], 0);
    let made = nix::sys::stat::mknod(
        &b.rootfs().join("zero"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 5),
    );
    check("mknod", made);
    assert_eq!(b.run(), 1, "a guest read a character device");
    assert_contains(&b.stderr(), "cannot read /zero");
}

#[test]
fn fifo_device_socket_and_directory_entrypoints_fail_create_at_once() {
    let kinds = [
        ("fifo", "a FIFO"),
        ("chr", "a character device"),
        ("blk", "a block device"),
        ("sock", "a socket"),
        ("dir", "a directory"),
    ];
    for (name, kind) in kinds {
        let b = Bundle::new(&["/app.wasm"]);
        let path = b.rootfs().join("app.wasm");
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o644);
        let device = |flag, major, minor| {
            nix::sys::stat::mknod(&path, flag, mode, nix::sys::stat::makedev(major, minor))
                .map_err(io::Error::from)
        };
        // Kept open while Create runs: a socket file with a listener.
        let mut _listener = None;
        let made = match name {
            "fifo" => nix::unistd::mkfifo(&path, mode).map_err(io::Error::from),
            // The numbers of /dev/zero: reading never ends.
            "chr" => device(nix::sys::stat::SFlag::S_IFCHR, 1, 5),
            // The numbers of /dev/loop0.
            "blk" => device(nix::sys::stat::SFlag::S_IFBLK, 7, 0),
            "sock" => std::os::unix::net::UnixListener::bind(&path).map(|l| {
                _listener = Some(l);
            }),
            _ => std::fs::create_dir(&path),
        };
        check("make the special file", made);
        let started = std::time::Instant::now();
        let err = b.prepare_error();
        assert_contains(&err, &format!("entrypoint /app.wasm is {kind}"));
        assert!(started.elapsed() < Duration::from_secs(5), "Create waited");
    }
}

fn http_fixture() -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test/fixtures/out/wasip2/http.wasm");
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!(
            "fixture {} is missing ({e}): build it with `make fixtures`",
            path.display()
        ),
    }
}

/// `GET path` on a fresh connection; (status, body as sent, possibly
/// chunked).
fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = check(
        "connect",
        std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5)),
    );
    check(
        "timeout",
        stream.set_read_timeout(Some(Duration::from_secs(20))),
    );
    check(
        "send",
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        ),
    );
    let mut answer = String::new();
    check("read", stream.read_to_string(&mut answer));
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An HTTP guest whose working directory `work` lies in a writable bind
/// mount (`in_rootfs` false) or in its writable rootfs: between two
/// requests, `work` is replaced by a symlink to a host directory (what the
/// guest itself could do); the next request must still see the directory
/// opened at Create.
fn cwd_swap_between_requests(in_rootfs: bool) {
    let wasm = http_fixture();
    let data = temp_dir("http-data");
    let outside = temp_dir("http-outside");
    check(
        "write outside marker",
        std::fs::write(outside.0.join("marker.txt"), "outside\n"),
    );
    let address = {
        let l = check("bind", std::net::TcpListener::bind("127.0.0.1:0"));
        check("addr", l.local_addr())
    };
    let mut b = Bundle::new(&["/app.wasm"]);
    b.file("app.wasm", &wasm);
    let parent = if in_rootfs {
        b.rootfs()
    } else {
        data.0.clone()
    };
    check("mkdir work", std::fs::create_dir(parent.join("work")));
    check(
        "write marker",
        std::fs::write(parent.join("work/marker.txt"), "inside\n"),
    );
    let source = data.0.display().to_string();
    b.config(|c| {
        c["process"]["env"] = json!([format!("WASISHIM_HTTP_ADDRESS={address}")]);
        if in_rootfs {
            c["process"]["cwd"] = json!("/work");
        } else {
            c["process"]["cwd"] = json!("/data/work");
            c["mounts"] = json!([{
                "destination": "/data", "type": "bind", "source": source,
                "options": ["rbind", "rw"]
            }]);
        }
    });
    let running = b.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(
            running.still_running_after(Duration::from_millis(20)),
            "the server exited: {}",
            b.stderr()
        );
        assert!(std::time::Instant::now() < deadline, "nothing listens");
    }
    let (status, body) = get(address, "/file?path=marker.txt");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("inside\n"), "{body}");

    check(
        "rename",
        std::fs::rename(parent.join("work"), parent.join("old")),
    );
    check(
        "symlink",
        std::os::unix::fs::symlink(&outside.0, parent.join("work")),
    );
    let (status, body) = get(address, "/file?path=marker.txt");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("inside\n") && !body.contains("outside"),
        "a request saw the swapped cwd: {body}"
    );
    check("kill", running.handle.kill(9));
    running.wait(Duration::from_secs(10));
}

#[test]
fn http_requests_keep_the_cwd_opened_at_create_after_a_symlink_swap_in_a_mount() {
    cwd_swap_between_requests(false);
}

#[test]
fn http_requests_keep_the_cwd_opened_at_create_after_a_symlink_swap_in_the_rootfs() {
    cwd_swap_between_requests(true);
}

#[test]
fn landlock_alone_refuses_hard_links_and_renames_from_outside() {
    let dir = temp_dir("landlock-link");
    let inside = dir.0.join("inside");
    let outside = dir.0.join("outside");
    for d in [&inside, &outside] {
        check("mkdir", std::fs::create_dir(d));
    }
    check("write", std::fs::write(outside.join("f"), b"host"));
    let c = check(
        "allow inside",
        Confinement::new().allow_path(&inside, false),
    );
    let (inside2, outside2) = (inside.clone(), outside.clone());
    let (link, rename) = confined(c, move || {
        (
            errno_of(std::fs::hard_link(outside2.join("f"), inside2.join("l"))),
            errno_of(std::fs::rename(outside2.join("f"), inside2.join("r"))),
        )
    });
    // Landlock answers EXDEV or EACCES for a link or rename that would
    // bring a file into a hierarchy with more rights than it has.
    for (what, errno) in [("link", link), ("rename", rename)] {
        assert!(
            matches!(errno, Some(libc::EXDEV) | Some(libc::EACCES)),
            "{what} from outside the allowed dirs: {errno:?}"
        );
    }
    assert!(!inside.join("l").exists() && !inside.join("r").exists());
    assert!(outside.join("f").exists());
}

#[test]
fn credentials_alone_refuse_hard_links_to_files_the_user_cannot_write() {
    // fs.protected_hardlinks (on by default in Debian and most
    // distributions) is what makes this hold for a non-root container.
    let protected = check(
        "read protected_hardlinks",
        std::fs::read_to_string("/proc/sys/fs/protected_hardlinks"),
    );
    assert_eq!(
        protected.trim(),
        "1",
        "this test needs fs.protected_hardlinks=1, which the host's sysctl turned off"
    );
    let dir = temp_dir("creds-link");
    let shared = dir.0.join("shared");
    check("mkdir", std::fs::create_dir(&shared));
    check(
        "chmod 1777",
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)),
    );
    file_owned(&dir.0.join("secret"), 0, 0, 0o644);
    let (secret, target) = (dir.0.join("secret"), shared.join("l"));
    let got = confined(
        Confinement::new().credentials(user(1000, 1000)),
        move || errno_of(std::fs::hard_link(secret, target)),
    );
    assert_eq!(got, Some(libc::EPERM), "uid 1000 linked a root-owned file");
    assert!(!shared.join("l").exists());
}

#[test]
fn a_guest_cannot_hard_link_a_file_from_outside_its_mounts() {
    let wasm = files_fixture();
    let volume = temp_dir("link-volume");
    let mut b = files_bundle(&wasm, &["link", "/../../etc/passwd", "/data/p"], 0);
    let source = volume.0.display().to_string();
    b.config(|c| {
        c["mounts"] = json!([{
            "destination": "/data", "type": "bind", "source": source,
            "options": ["rbind", "rw"]
        }])
    });
    assert_eq!(b.run(), 1, "stdout: {}", b.stdout());
    assert_contains(&b.stderr(), "cannot link");
    assert!(!volume.0.join("p").exists());
    // Linking inside the volume works: the refusal above is not a broken
    // `link`.
    check("write", std::fs::write(volume.0.join("a"), b"a"));
    let mut b = files_bundle(&wasm, &["link", "/data/a", "/data/b"], 0);
    b.config(|c| {
        c["mounts"] = json!([{
            "destination": "/data", "type": "bind", "source": volume.0.display().to_string(),
            "options": ["rbind", "rw"]
        }])
    });
    assert_eq!(b.run(), 0, "stderr: {}", b.stderr());
    let (a, bb) = (
        check("stat a", std::fs::metadata(volume.0.join("a"))),
        check("stat b", std::fs::metadata(volume.0.join("b"))),
    );
    assert_eq!(a.ino(), bb.ino());
}

#[test]
fn a_guest_cannot_open_device_nodes_in_a_bind_mount() {
    let wasm = files_fixture();
    let volume = temp_dir("devmount");
    let made = nix::sys::stat::mknod(
        &volume.0.join("zero"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 5),
    );
    check("mknod", made);
    let mut b = files_bundle(&wasm, &["read", "/data/zero"], 0);
    let source = volume.0.display().to_string();
    b.config(|c| {
        c["mounts"] = json!([{
            "destination": "/data", "type": "bind", "source": source,
            "options": ["rbind", "rw"]
        }])
    });
    assert_eq!(b.run(), 1, "a guest read a character device in a mount");
    assert_contains(&b.stderr(), "cannot read /data/zero");
}

#[test]
fn a_guest_blocked_opening_a_fifo_stays_killable() {
    let wasm = files_fixture();
    let b = files_bundle(&wasm, &["read", "/fifo"], 0);
    let made = nix::unistd::mkfifo(
        &b.rootfs().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    );
    check("mkfifo", made);
    let running = b.start();
    assert!(
        running.still_running_after(Duration::from_millis(300)),
        "the guest did not wait for a writer: {}",
        b.stderr()
    );
    check("kill", running.handle.kill(9));
    assert_eq!(running.wait(Duration::from_secs(10)).code, 137);
}

#[test]
fn a_guest_writes_into_a_setgid_group_volume_with_its_additional_gid() {
    let wasm = files_fixture();
    let volume = temp_dir("fsgroup");
    let shared = volume.0.join("shared");
    check("mkdir", std::fs::create_dir(&shared));
    check(
        "chown",
        std::os::unix::fs::chown(&shared, Some(0), Some(3000)),
    );
    check(
        "chmod 2770",
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2770)),
    );
    let source = volume.0.display().to_string();
    let bundle = |args: &[&str], gids: &[u32]| {
        let mut b = files_bundle(&wasm, args, 1000);
        b.config(|c| {
            c["process"]["user"]["additionalGids"] = json!(gids);
            c["mounts"] = json!([{
                "destination": "/data", "type": "bind", "source": source,
                "options": ["rbind", "rw"]
            }]);
        });
        b
    };
    let b = bundle(&["write", "/data/shared/denied", "x"], &[]);
    assert_eq!(b.run(), 1, "wrote without the group");
    assert_contains(&b.stderr(), "cannot write");
    let b = bundle(&["write", "/data/shared/new", "x"], &[3000]);
    assert_eq!(b.run(), 0, "stderr: {}", b.stderr());
    let meta = check("stat", std::fs::metadata(shared.join("new")));
    assert_eq!((meta.uid(), meta.gid()), (1000, 3000));
}
