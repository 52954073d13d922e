//! Scenarios of the per-node shim (`io.containerd.wasmtimed.v1`): one server
//! process per containerd hosts every container, whatever its namespace.
//!
//! The per-pod suites (ctr.rs, cri.rs) also run against this binary with
//! `WASISHIM_RUNTIME=io.containerd.wasmtimed.v1`; these are the cases only a
//! shared process has.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wasishim_e2e::http::free_address;
use wasishim_e2e::{exit_code, fixture_image, output_text, PrivateContainerd};

const NODE_RUNTIME: &str = "io.containerd.wasmtimed.v1";
const NODE_BINARY: &str = "containerd-shim-wasmtimed-v1";
const OTHER_NAMESPACE: &str = "wasishim-e2e-other";

fn import(cd: &PrivateContainerd, name: &str, rel: &str) -> String {
    cd.import(&fixture_image(name, rel).unwrap()).unwrap()
}

fn sleepers(cd: &PrivateContainerd, image: &str, ids: &[String]) {
    for id in ids {
        cd.run_detached(&[], image, id, &["/app.wasm", "3600"])
            .unwrap();
    }
    for id in ids {
        cd.wait_task_status(id, "RUNNING", Duration::from_secs(20))
            .unwrap();
    }
}

fn remove(cd: &PrivateContainerd, id: &str) {
    if cd.task_status(id).unwrap().is_some_and(|s| s != "STOPPED") {
        let _ = cd.ctr(["task", "kill", "-s", "SIGKILL", id]);
        cd.wait_task_status(id, "STOPPED", Duration::from_secs(10))
            .unwrap();
    }
    if cd.task_status(id).unwrap().is_some() {
        cd.task_delete(id).unwrap();
    }
    let out = cd.ctr(["containers", "rm", id]);
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Eight `ctr run -d` at once, with no node server yet: exactly one server
/// is launched and hosts all eight.
fn concurrent_first_starts(cd: &PrivateContainerd) {
    let image = import(cd, "sleep", "wasip1/sleep.wasm");
    let ids: Vec<String> = (0..8).map(|i| format!("race-{i}")).collect();
    std::thread::scope(|scope| {
        for id in &ids {
            let image = image.clone();
            scope.spawn(move || {
                cd.run_detached(&[], &image, id, &["/app.wasm", "3600"])
                    .unwrap()
            });
        }
    });
    for id in &ids {
        cd.wait_task_status(id, "RUNNING", Duration::from_secs(20))
            .unwrap();
    }
    let servers = cd.shim_pids();
    assert_eq!(servers.len(), 1, "servers: {servers:?}");
    let log = server_log(servers[0]);
    assert!(log.exists(), "the server logs to {}", log.display());
    for id in &ids {
        remove(cd, id);
    }
    // Idle, the server exits and removes its log (tmpfs is memory).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !cd.shim_pids().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cd.shim_pids().is_empty(), "the idle server did not exit");
    assert!(!log.exists(), "{} left behind", log.display());
}

/// The log file of the per-node server `pid`, from its `-socket` argument.
fn server_log(pid: i32) -> std::path::PathBuf {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let socket = args
        .iter()
        .skip_while(|a| a.as_str() != "-socket")
        .nth(1)
        .unwrap_or_else(|| panic!("no -socket in {args:?}"));
    let name = socket.rsplit('/').next().unwrap_or_default();
    std::path::Path::new("/run/containerd/wasishim").join(format!("{name}.log"))
}

/// The same container id in two namespaces: two tasks in one server, each
/// killed and deleted on its own.
fn two_namespaces(cd: &PrivateContainerd) {
    let image = fixture_image("sleep", "wasip1/sleep.wasm").unwrap();
    let here = cd.import(&image).unwrap();
    let there = cd.import_in(OTHER_NAMESPACE, &image).unwrap();
    sleepers(cd, &here, &["twin".to_string()]);
    let out = cd.ctr_in(
        OTHER_NAMESPACE,
        [
            "run",
            "-d",
            "--runtime",
            NODE_RUNTIME,
            &there,
            "twin",
            "/app.wasm",
            "3600",
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(cd.shim_pids().len(), 1, "one server for both namespaces");

    let out = cd.ctr_in(OTHER_NAMESPACE, ["task", "kill", "-s", "SIGKILL", "twin"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ls = cd.ctr_in(OTHER_NAMESPACE, ["task", "ls"]);
        if String::from_utf8_lossy(&ls.stdout).contains("STOPPED") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", output_text(&ls));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cd.task_status("twin").unwrap().as_deref(),
        Some("RUNNING"),
        "killing the other namespace's twin stopped this one"
    );
    assert_eq!(cd.task_delete_in(OTHER_NAMESPACE, "twin").unwrap(), 137);
    let out = cd.ctr_in(OTHER_NAMESPACE, ["containers", "rm", "twin"]);
    assert!(out.status.success(), "{}", output_text(&out));
    remove(cd, "twin");
}

/// containerd restarts under 20 running tasks: the node server keeps them,
/// and the new containerd manages every one.
fn restart_with_20_tasks(cd: &PrivateContainerd) {
    let image = import(cd, "sleep", "wasip1/sleep.wasm");
    let ids: Vec<String> = (0..20).map(|i| format!("keep-{i}")).collect();
    sleepers(cd, &image, &ids);
    let server = cd.shim_pids();
    assert_eq!(server.len(), 1);

    cd.restart().unwrap();
    for id in &ids {
        cd.wait_task_status(id, "RUNNING", Duration::from_secs(20))
            .unwrap();
    }
    assert_eq!(cd.shim_pids(), server, "the node server was replaced");
    for id in &ids {
        let out = cd.ctr(["task", "kill", id]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    for id in &ids {
        cd.wait_task_status(id, "STOPPED", Duration::from_secs(10))
            .unwrap();
        assert_eq!(cd.task_delete(id).unwrap(), 143);
        let out = cd.ctr(["containers", "rm", id]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
}

/// The node server is SIGKILLed under three tasks: containerd's cleanup
/// removes them, and the next container gets a fresh server.
fn node_killed(cd: &PrivateContainerd) {
    let image = import(cd, "sleep", "wasip1/sleep.wasm");
    let ids: Vec<String> = (0..3).map(|i| format!("doomed-{i}")).collect();
    sleepers(cd, &image, &ids);
    let old = cd.shim_pids();
    for pid in &old {
        kill(Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
    }
    for id in &ids {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cd.task_status(id).unwrap().as_deref() == Some("RUNNING") {
            assert!(std::time::Instant::now() < deadline, "{id} still RUNNING");
            std::thread::sleep(Duration::from_millis(50));
        }
        if cd.task_status(id).unwrap().is_some() {
            let _ = cd.ctr(["task", "delete", "--force", id]);
        }
        let out = cd.ctr(["containers", "rm", id]);
        assert!(out.status.success(), "{}", output_text(&out));
    }

    let hello = import(cd, "hello", "wasip1/hello.wasm");
    let out = cd.run_rm(&[], &hello, "after-kill", &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from wasm"));
    assert!(
        cd.shim_pids().iter().all(|pid| !old.contains(pid)),
        "the killed server is still listed"
    );
}

/// A trapping guest and one that runs out of memory under its limit end on
/// their own; a healthy neighbour in the same process keeps running.
fn failures_stay_contained(cd: &PrivateContainerd) {
    let sleep = import(cd, "sleep", "wasip1/sleep.wasm");
    sleepers(cd, &sleep, &["neighbour".to_string()]);

    let trap = import(cd, "trap", "wasip1/trap.wasm");
    let out = cd.run_rm(&[], &trap, "trapper", &[]);
    assert_eq!(exit_code(&out.status), 134, "{}", output_text(&out));

    let grow = import(cd, "grow", "wasip1/grow.wasm");
    let limit = (32u64 << 20).to_string();
    let out = cd.run_rm(
        &["--memory-limit", &limit],
        &grow,
        "hog",
        &["/app.wasm", "abort"],
    );
    assert_eq!(exit_code(&out.status), 137, "{}", output_text(&out));

    assert_eq!(
        cd.task_status("neighbour").unwrap().as_deref(),
        Some("RUNNING")
    );
    assert_eq!(cd.shim_pids().len(), 1);
    remove(cd, "neighbour");
}

/// The socket the per-node server `pid` serves on (its `-socket` argument).
fn server_socket(pid: i32) -> PathBuf {
    let log = server_log(pid);
    let name = log.file_stem().unwrap();
    Path::new("/run/containerd/s").join(name)
}

/// The address file containerd keeps in task `id`'s bundle: the server it talks to.
fn task_address(cd: &PrivateContainerd, id: &str) -> String {
    std::fs::read_to_string(cd.task_state_dir().join(id).join("address")).unwrap()
}

/// Waits until process `pid` is gone.
fn wait_gone(pid: i32, limit: Duration) {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            start.elapsed() < limit,
            "process {pid} still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces the node binary in `shims` by a copy of the built one with a
/// newer modification time, as an upgrade does (a new file renamed into
/// place, as `wasishim install` writes it).
fn upgrade_binary(shims: &Path) {
    let installed = shims.join(NODE_BINARY);
    let old = std::fs::metadata(&installed).unwrap().modified().unwrap();
    let new = shims.join(format!(".{NODE_BINARY}.new"));
    std::fs::copy(wasishim_e2e::shim_dir().join(NODE_BINARY), &new).unwrap();
    let file = std::fs::File::options().write(true).open(&new).unwrap();
    file.set_modified(old.max(SystemTime::now()) + Duration::from_secs(60))
        .unwrap();
    drop(file);
    std::fs::rename(&new, &installed).unwrap();
}

/// An upgrade replaces the binary while its server hosts two tasks: the next
/// container goes to a new server (its socket is named after the binary's
/// identity), while the old server keeps its tasks, which are then killed
/// and deleted as usual; idle, the old server exits and the new one keeps
/// serving.
fn upgrade(cd: &PrivateContainerd) {
    let image = import(cd, "sleep", "wasip1/sleep.wasm");
    let olds = ["old-1".to_string(), "old-2".to_string()];
    sleepers(cd, &image, &olds);
    let servers = cd.shim_pids();
    assert_eq!(servers.len(), 1, "servers: {servers:?}");
    let old = servers[0];
    let old_socket = server_socket(old);
    let old_address = task_address(cd, "old-1");

    upgrade_binary(cd.shim_dir());
    sleepers(cd, &image, &["new-1".to_string()]);
    let servers = cd.shim_pids();
    assert_eq!(servers.len(), 2, "servers after the upgrade: {servers:?}");
    let new = *servers.iter().find(|p| **p != old).unwrap();
    let new_address = task_address(cd, "new-1");
    assert_ne!(
        new_address, old_address,
        "the new task went to the old server"
    );
    assert!(
        new_address.ends_with(&server_socket(new).display().to_string()),
        "{new_address} is not the socket of the new server {new}"
    );
    assert_eq!(task_address(cd, "old-2"), old_address);
    let old_exe = std::fs::read_link(format!("/proc/{old}/exe")).unwrap();
    assert!(
        old_exe.display().to_string().ends_with(" (deleted)"),
        "the old server runs {}, not the replaced binary",
        old_exe.display()
    );

    // The old server still serves its tasks: SIGTERM and SIGKILL, delete.
    for id in &olds {
        assert_eq!(cd.task_status(id).unwrap().as_deref(), Some("RUNNING"));
    }
    let out = cd.ctr(["task", "kill", "old-1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    cd.wait_task_status("old-1", "STOPPED", Duration::from_secs(10))
        .unwrap();
    assert_eq!(cd.task_delete("old-1").unwrap(), 143);
    let out = cd.ctr(["containers", "rm", "old-1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    remove(cd, "old-2");

    // Idle, the old server exits; the new one keeps its task.
    wait_gone(old, Duration::from_secs(15));
    assert!(!old_socket.exists(), "the old server left its socket");
    assert_eq!(cd.shim_pids(), [new]);
    assert_eq!(cd.task_status("new-1").unwrap().as_deref(), Some("RUNNING"));
    remove(cd, "new-1");
}

/// SIGINT to the node server drains it: it passes the signal to each task
/// (a command guest ends with 130, an HTTP server finishes the request in
/// flight and exits 0), takes no new containers (the next one gets a new
/// server), and exits once its tasks are deleted, leaving nothing behind.
fn sigint_drains(cd: &PrivateContainerd) {
    let sleep = import(cd, "sleep", "wasip1/sleep.wasm");
    let http = import(cd, "http", "wasip2/http.wasm");
    sleepers(cd, &sleep, &["sleeper".to_string()]);
    let address = free_address();
    let env = format!("WASISHIM_HTTP_ADDRESS={address}");
    cd.run_detached(&["--net-host", "--env", &env], &http, "web", &[])
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let servers = cd.shim_pids();
    assert_eq!(servers.len(), 1, "servers: {servers:?}");
    let server = servers[0];
    let socket = server_socket(server);
    assert!(
        socket.exists(),
        "{} is not the server's socket",
        socket.display()
    );

    // The request is sent before the signal, and its handler (one second
    // long) has started well before it.
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let slow = std::thread::spawn(move || {
        wasishim_e2e::http::read_response(&mut std::io::BufReader::new(stream))
    });
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(server), Signal::SIGINT).unwrap();
    let answer = slow.join().unwrap().unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "slow done\n"));
    for id in ["sleeper", "web"] {
        cd.wait_task_status(id, "STOPPED", Duration::from_secs(10))
            .unwrap();
    }
    assert!(!socket.exists(), "the draining server kept its socket");
    assert!(
        Path::new(&format!("/proc/{server}")).exists(),
        "the server exited before containerd deleted its tasks"
    );

    // A new container goes to a new server meanwhile, on the same socket
    // path (same binary).
    sleepers(cd, &sleep, &["after".to_string()]);
    let servers = cd.shim_pids();
    assert_eq!(servers.len(), 2, "servers: {servers:?}");
    let new = *servers.iter().find(|p| **p != server).unwrap();
    assert_eq!(server_socket(new), socket);

    assert_eq!(cd.task_delete("sleeper").unwrap(), 130);
    assert_eq!(cd.task_delete("web").unwrap(), 0);
    wait_gone(server, Duration::from_secs(5));
    for id in ["sleeper", "web"] {
        let out = cd.ctr(["containers", "rm", id]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    // The drained server left the new one's socket alone.
    assert!(
        socket.exists(),
        "the drained server removed its successor's socket"
    );
    let hello = import(cd, "hello", "wasip1/hello.wasm");
    let out = cd.run_rm(&[], &hello, "after-drain", &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from wasm"));
    assert_eq!(cd.shim_pids(), [new]);
    remove(cd, "after");
}

/// Starts containerd `version` with the per-node binary in a directory of
/// the test's own, which a scenario may replace as an upgrade does, runs
/// `scenario` and checks for leaks.
fn run(version: &str, scenario: fn(&PrivateContainerd)) {
    // This test binary is about the per-node shim whatever the environment
    // says; the harness reads the runtime once per process.
    std::env::set_var("WASISHIM_RUNTIME", NODE_RUNTIME);
    assert_eq!(wasishim_e2e::runtime(), NODE_RUNTIME);
    let shims = tempfile::tempdir().unwrap();
    let built = wasishim_e2e::shim_dir().join(NODE_BINARY);
    // A link costs nothing; a copy where the directories are on different filesystems.
    if std::fs::hard_link(&built, shims.path().join(NODE_BINARY)).is_err() {
        std::fs::copy(&built, shims.path().join(NODE_BINARY)).unwrap();
    }
    let cd = PrivateContainerd::start_with_shim_dir(version, shims.path()).unwrap();
    scenario(&cd);
    cd.assert_no_leaks();
    drop(cd);
}

wasishim_e2e::scenarios!(
    concurrent_first_starts,
    two_namespaces,
    restart_with_20_tasks,
    node_killed,
    failures_stay_contained,
    upgrade,
    sigint_drains,
);
