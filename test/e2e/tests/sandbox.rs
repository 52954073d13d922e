//! The kernel's confinement of guests, end to end: `ctr run --user`
//! against files in a bind mount, and entrypoints that are special files.
//!
//! Runs with the per-pod shim, or the per-node one with
//! `WASISHIM_RUNTIME=io.containerd.wasmtimed.v1`; there a bystander guest
//! must keep running through every refused Create. `ctr run --user` exists
//! from containerd 1.7 on, so the user scenarios skip 1.6.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use wasishim_e2e::cri::{self, api, Client};
use wasishim_e2e::run_cri;
use wasishim_e2e::{exit_code, fixture_image, output_text, PrivateContainerd};

fn import(cd: &PrivateContainerd, name: &str, rel: &str) -> String {
    cd.import(&fixture_image(name, rel).unwrap()).unwrap()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `files ARGS` as `--user 1000:1000` with `host` mounted read-write at
/// /data; returns (exit code, output).
fn files_as_1000(
    cd: &PrivateContainerd,
    image: &str,
    host: &Path,
    id: &str,
    args: &[&str],
) -> (i32, String) {
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        host.display()
    );
    let mut all = vec!["/app.wasm"];
    all.extend_from_slice(args);
    let out = cd.run_rm(&["--user", "1000:1000", "--mount", &mount], image, id, &all);
    (exit_code(&out.status), output_text(&out))
}

/// A guest run as uid 1000 cannot read root's 0600 file or write into
/// root's 0755 directory in a bind mount; what it creates is 1000:1000.
fn user_1000_in_a_bind_mount(cd: &PrivateContainerd) {
    let host = tempfile::tempdir().unwrap();
    chmod(host.path(), 0o755);
    fs::write(host.path().join("secret"), "root only\n").unwrap();
    chmod(&host.path().join("secret"), 0o600);
    fs::create_dir(host.path().join("open")).unwrap();
    chmod(&host.path().join("open"), 0o777);
    let image = import(cd, "files", "wasip1/files.wasm");

    let (code, text) = files_as_1000(
        cd,
        &image,
        host.path(),
        "user-read",
        &["read", "/data/secret"],
    );
    assert_eq!(code, 1, "uid 1000 read a root 0600 file:\n{text}");
    assert!(text.contains("cannot read /data/secret"), "{text}");

    let (code, text) = files_as_1000(
        cd,
        &image,
        host.path(),
        "user-write",
        &["write", "/data/new", "x"],
    );
    assert_eq!(
        code, 1,
        "uid 1000 wrote into a root 0755 directory:\n{text}"
    );
    assert!(!host.path().join("new").exists());

    let (code, text) = files_as_1000(
        cd,
        &image,
        host.path(),
        "user-create",
        &["write", "/data/open/new", "x"],
    );
    assert_eq!(code, 0, "{text}");
    let meta = fs::metadata(host.path().join("open/new")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (1000, 1000),
        "owner of a created file"
    );
    assert_eq!(
        meta.mode() & 0o777,
        0o644,
        "mode of a created file (umask 022)"
    );

    // Root, as ctr runs it by default (with runc's default capabilities),
    // still reads it.
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        host.path().display()
    );
    let out = cd.run_rm(
        &["--mount", &mount],
        &image,
        "root-read",
        &["/app.wasm", "read", "/data/secret"],
    );
    assert_eq!(exit_code(&out.status), 0, "{}", output_text(&out));
}

/// Entrypoints that are a FIFO or a character device fail Create at once,
/// naming what they are; a guest running meanwhile (in the per-node server:
/// the same process) keeps running.
fn special_file_entrypoints(cd: &PrivateContainerd) {
    let sleep = import(cd, "sleep", "wasip1/sleep.wasm");
    cd.run_detached(&[], &sleep, "bystander", &["/app.wasm", "3600"])
        .unwrap();
    cd.wait_task_status("bystander", "RUNNING", Duration::from_secs(20))
        .unwrap();

    for (id, kind) in [
        ("fifo-entry", "a FIFO"),
        ("chardev-entry", "a character device"),
    ] {
        let rootfs = tempfile::tempdir().unwrap();
        chmod(rootfs.path(), 0o755);
        let entry = rootfs.path().join("app.wasm");
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o644);
        if id == "fifo-entry" {
            nix::unistd::mkfifo(&entry, mode).unwrap();
        } else {
            // The numbers of /dev/zero: reading it never ends.
            nix::sys::stat::mknod(
                &entry,
                nix::sys::stat::SFlag::S_IFCHR,
                mode,
                nix::sys::stat::makedev(1, 5),
            )
            .unwrap();
        }
        let started = Instant::now();
        let path = rootfs.path().display().to_string();
        let out = cd.run_rm(&["--rootfs"], &path, id, &["/app.wasm"]);
        let text = output_text(&out);
        assert!(!out.status.success(), "{id} was not refused:\n{text}");
        assert!(
            text.contains(&format!("entrypoint /app.wasm is {kind}")),
            "{id}: expected the file type in:\n{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{id}: Create took {:?}",
            started.elapsed()
        );
        if cd.containers().unwrap().iter().any(|c| c == id) {
            let _ = cd.ctr(["containers", "rm", id]);
        }
    }

    assert_eq!(
        cd.task_status("bystander").unwrap().as_deref(),
        Some("RUNNING"),
        "the bystander guest did not survive"
    );
    let _ = cd.ctr(["task", "kill", "-s", "SIGKILL", "bystander"]);
    cd.wait_task_status("bystander", "STOPPED", Duration::from_secs(10))
        .unwrap();
    cd.task_delete("bystander").unwrap();
    let out = cd.ctr(["containers", "rm", "bystander"]);
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Through CRI: `runAsUser`/`runAsGroup` 1000 cannot read root's 0600 file
/// in a hostPath mount and creates files as 1000:1000;
/// `supplementalGroups` grant group access; a volume prepared for `fsGroup`
/// (setgid, group-writable; kubelet passes the group as a supplemental
/// group) takes files as the fsGroup; `readOnlyRootFilesystem` refuses
/// writes to the rootfs.
fn cri_security_context(cd: &PrivateContainerd, cri: &Client) {
    let host = tempfile::tempdir().unwrap();
    chmod(host.path(), 0o755);
    fs::write(host.path().join("secret"), "root only\n").unwrap();
    chmod(&host.path().join("secret"), 0o600);
    fs::write(host.path().join("grouped"), "group 2000\n").unwrap();
    std::os::unix::fs::chown(host.path().join("grouped"), Some(0), Some(2000)).unwrap();
    chmod(&host.path().join("grouped"), 0o640);
    fs::create_dir(host.path().join("open")).unwrap();
    chmod(&host.path().join("open"), 0o777);
    // A volume as kubelet prepares it for `fsGroup: 3000`: group 3000,
    // setgid, group-writable; kubelet then adds 3000 to the container's
    // supplemental groups (CRI has no fsGroup field of its own).
    fs::create_dir(host.path().join("fsgroup")).unwrap();
    std::os::unix::fs::chown(host.path().join("fsgroup"), Some(0), Some(3000)).unwrap();
    chmod(&host.path().join("fsgroup"), 0o2770);
    let image = cri::import(cd, &fixture_image("files", "wasip1/files.wasm").unwrap()).unwrap();
    let pod = cri.run_pod(cri.pod_config("sandbox")).unwrap();

    let run = |name: &str, args: &[&str], groups: Vec<i64>, readonly_rootfs: bool| -> i32 {
        let mut all = vec!["/app.wasm"];
        all.extend_from_slice(args);
        let mut config = cri.container_config(name, &image);
        config.command = all.iter().map(|a| a.to_string()).collect();
        config.mounts = vec![api::Mount {
            container_path: "/data".to_string(),
            host_path: host.path().display().to_string(),
            ..Default::default()
        }];
        if let Some(linux) = config.linux.as_mut() {
            linux.security_context = Some(api::LinuxContainerSecurityContext {
                run_as_user: Some(api::Int64Value { value: 1000 }),
                run_as_group: Some(api::Int64Value { value: 1000 }),
                supplemental_groups: groups,
                readonly_rootfs,
                ..Default::default()
            });
        }
        let id = cri.run_container(&pod, config).unwrap();
        let code = cri
            .wait_exited(&id, Duration::from_secs(30))
            .unwrap()
            .exit_code;
        let log = fs::read_to_string(pod.log_dir().join(format!("{name}.log")));
        println!(
            "{name}: exit {code}, log: {}",
            log.unwrap_or_default().trim()
        );
        code
    };
    assert_eq!(
        run("read-secret", &["read", "/data/secret"], vec![], false),
        1
    );
    assert_eq!(
        run("read-grouped", &["read", "/data/grouped"], vec![], false),
        1
    );
    assert_eq!(
        run(
            "read-grouped-2000",
            &["read", "/data/grouped"],
            vec![2000],
            false
        ),
        0
    );
    assert_eq!(
        run("create", &["write", "/data/open/new", "x"], vec![], false),
        0
    );
    let meta = fs::metadata(host.path().join("open/new")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert_eq!(
        run(
            "fsgroup-none",
            &["write", "/data/fsgroup/denied", "x"],
            vec![],
            false
        ),
        1,
        "wrote into the fsGroup volume without the group"
    );
    assert_eq!(
        run(
            "fsgroup",
            &["write", "/data/fsgroup/new", "x"],
            vec![3000],
            false
        ),
        0
    );
    let meta = fs::metadata(host.path().join("fsgroup/new")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (1000, 3000),
        "a file in an fsGroup volume belongs to the pod's fsGroup"
    );
    assert!(!host.path().join("fsgroup/denied").exists());
    assert_eq!(
        run(
            "write-rootfs",
            &["write", "/data/open/ro", "x"],
            vec![],
            true
        ),
        0
    );
    assert_eq!(
        run("write-ro-rootfs", &["write", "/new", "x"], vec![], true),
        1
    );
    cri.stop_pod(&pod.id).unwrap();
    cri.remove_pod(&pod.id).unwrap();
}

mod cri_v1_6 {
    #[test]
    fn cri_security_context() {
        super::run_cri("1.6.20", super::cri_security_context)
    }
}
mod cri_v1_7 {
    #[test]
    fn cri_security_context() {
        super::run_cri("1.7.24", super::cri_security_context)
    }
}
mod cri_v2_1 {
    #[test]
    fn cri_security_context() {
        super::run_cri("2.1.9", super::cri_security_context)
    }
}

/// Starts containerd `version`, runs `scenario` on it and checks for leaks.
fn run(version: &str, scenario: fn(&PrivateContainerd)) {
    let cd = PrivateContainerd::start(version).unwrap();
    scenario(&cd);
    cd.assert_no_leaks();
}

wasishim_e2e::scenarios!(on [user_v1_7 "1.7.24", user_v2_1 "2.1.9"]: [user_1000_in_a_bind_mount]);
wasishim_e2e::scenarios!(special_file_entrypoints);
