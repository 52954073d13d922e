//! Scenarios of the per-node shim (`io.containerd.wasmtimed.v1`): one server
//! process per containerd hosts every container, whatever its namespace.
//!
//! The per-pod suites (ctr.rs, cri.rs) also run against this binary with
//! `WASISHIM_RUNTIME=io.containerd.wasmtimed.v1`; these are the cases only a
//! shared process has.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wasishim_e2e::{exit_code, fixture_image, output_text, PrivateContainerd};

const NODE_RUNTIME: &str = "io.containerd.wasmtimed.v1";
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

fn run(version: &str, scenario: fn(&PrivateContainerd)) {
    // This test binary is about the per-node shim whatever the environment
    // says; the harness reads the runtime once per process.
    std::env::set_var("WASISHIM_RUNTIME", NODE_RUNTIME);
    assert_eq!(wasishim_e2e::runtime(), NODE_RUNTIME);
    let cd = PrivateContainerd::start(version).unwrap();
    scenario(&cd);
    cd.assert_no_leaks();
}

wasishim_e2e::scenarios!(
    concurrent_first_starts,
    two_namespaces,
    restart_with_20_tasks,
    node_killed,
    failures_stay_contained,
);
