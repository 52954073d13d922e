//! Native containers: an image whose entrypoint is a Linux executable (ELF
//! or `#!` script), run with the wasmtime runtime, runs under runc (see the
//! README, "Linux containers in Wasm pods").
//!
//! The program is test/fixtures/native/probe.c, built static by `make
//! fixtures`. One scenario per containerd version checks output, exit
//! codes, SIGTERM and SIGKILL, delete, and that nothing of runc is left
//! (state, cgroups, processes), besides the harness's own leak checks.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use wasishim_e2e::cri::{self, Client};
use wasishim_e2e::run_cri;
use wasishim_e2e::{
    cgroup_children, exit_code, fixture, fixture_image, image_name, output_text, Image,
    PrivateContainerd, CRI_NAMESPACE, NAMESPACE,
};

/// The state root the shim gives runc for the harness's namespace.
fn runc_state() -> std::path::PathBuf {
    Path::new("/run/containerd/wasishim/runc").join(NAMESPACE)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The probe at /probe (the entrypoint), and a `#!` script at /script run
/// by it.
fn import_probe(cd: &PrivateContainerd) -> String {
    let probe = fs::read(fixture("native/probe")).expect("make fixtures builds native/probe");
    let image = Image::new(&image_name("native-probe"))
        .file("/probe", probe, 0o755)
        .file("/script", "#!/probe from-script\n", 0o755)
        .env("FROM_IMAGE", "yes")
        .entrypoint(["/probe"]);
    cd.import(&image).unwrap()
}

/// The pid `ctr task ls` reports for `id`.
fn task_pid(cd: &PrivateContainerd, id: &str) -> u32 {
    let tasks = cd.tasks().unwrap();
    let (_, pid, _) = tasks
        .iter()
        .find(|(task, _, _)| task == id)
        .unwrap_or_else(|| panic!("no task {id} in {tasks:?}"));
    pid.parse().unwrap()
}

/// Nothing of container `id` is left: runc state, cgroups in any hierarchy,
/// the init process `pid`. containerd may still be running its cleanup after
/// a dead shim when ctr returns, so the state gets a few seconds to go.
fn assert_runc_gone(id: &str, pid: u32) {
    let state = runc_state().join(id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!state.exists(), "runc state {} left", state.display());
    for hierarchy in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = hierarchy.path().join(NAMESPACE).join(id);
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("probe"),
        "init {pid} of {id} still runs"
    );
}

/// Runs `args` detached, waits until it prints "waiting" (its stdout goes
/// to the containerd log, so the state is polled instead) and returns the
/// init's pid.
fn start_detached(cd: &PrivateContainerd, image: &str, id: &str, args: &[&str]) -> u32 {
    cd.run_detached(&[], image, id, args).unwrap();
    cd.wait_task_status(id, "RUNNING", Duration::from_secs(10))
        .unwrap();
    let pid = task_pid(cd, id);
    // The init is the probe itself, a host process other than the shim.
    let mut cmdline = String::new();
    for _ in 0..100 {
        cmdline =
            String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .replace('\0', " ");
        if cmdline.starts_with("/probe ") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        cmdline.starts_with("/probe "),
        "pid {pid} of {id} runs {cmdline:?}"
    );
    pid
}

fn native_under_runc(cd: &PrivateContainerd) {
    let image = import_probe(cd);

    // Output, arguments, environment and the exit code; a new PID namespace.
    let out = cd.run_rm(
        &["--env", "FOO=bar baz"],
        &image,
        "native-exit",
        &["/probe", "exit", "7"],
    );
    let text = stdout(&out);
    assert_eq!(exit_code(&out.status), 7, "{}", output_text(&out));
    for want in [
        "pid=1",
        "arg[0]=/probe",
        "arg[1]=exit",
        "arg[2]=7",
        "env FOO=bar baz",
        "env FROM_IMAGE=yes",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "no '{want}' in:\n{}",
            output_text(&out)
        );
    }

    // A #! script goes to runc too (the kernel runs its interpreter).
    let out = cd.run_rm(&[], &image, "native-script", &["/script", "x"]);
    assert_eq!(exit_code(&out.status), 0, "{}", output_text(&out));
    let text = stdout(&out);
    assert!(
        text.contains("arg[1]=from-script\n") && text.contains("arg[2]=/script\n"),
        "{}",
        output_text(&out)
    );

    // SIGTERM: the program's handler runs and it exits 0.
    let pid = start_detached(cd, &image, "native-term", &["/probe", "wait"]);
    let out = cd.ctr(["task", "kill", "native-term"]);
    assert!(out.status.success(), "{}", output_text(&out));
    cd.wait_task_status("native-term", "STOPPED", Duration::from_secs(10))
        .unwrap();
    assert_eq!(cd.task_delete("native-term").unwrap(), 0);
    cd.ctr(["containers", "rm", "native-term"]);
    assert_runc_gone("native-term", pid);

    // SIGTERM ignored: still running; SIGKILL ends it with 137.
    let pid = start_detached(cd, &image, "native-kill", &["/probe", "stubborn"]);
    let out = cd.ctr(["task", "kill", "native-kill"]);
    assert!(out.status.success(), "{}", output_text(&out));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        cd.task_status("native-kill").unwrap().as_deref(),
        Some("RUNNING")
    );
    let out = cd.ctr(["task", "kill", "-s", "SIGKILL", "native-kill"]);
    assert!(out.status.success(), "{}", output_text(&out));
    cd.wait_task_status("native-kill", "STOPPED", Duration::from_secs(10))
        .unwrap();
    assert_eq!(cd.task_delete("native-kill").unwrap(), 137);
    cd.ctr(["containers", "rm", "native-kill"]);
    assert_runc_gone("native-kill", pid);

    // Delete of a running container (`ctr task delete --force`) kills and
    // removes it through runc.
    let pid = start_detached(cd, &image, "native-force", &["/probe", "stubborn"]);
    let out = cd.ctr(["task", "delete", "--force", "native-force"]);
    assert!(out.status.success(), "{}", output_text(&out));
    cd.ctr(["containers", "rm", "native-force"]);
    assert_runc_gone("native-force", pid);

    // containerd restarts: the container keeps running under the same shim
    // and is still managed.
    let pid = start_detached(cd, &image, "native-survivor", &["/probe", "stubborn"]);
    let shims = cd.shim_pids();
    cd.restart().unwrap();
    cd.wait_task_status("native-survivor", "RUNNING", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        cd.shim_pids(),
        shims,
        "the shim was replaced across the restart"
    );
    assert_eq!(task_pid(cd, "native-survivor"), pid);
    let out = cd.ctr(["task", "kill", "-s", "SIGKILL", "native-survivor"]);
    assert!(out.status.success(), "{}", output_text(&out));
    cd.wait_task_status("native-survivor", "STOPPED", Duration::from_secs(10))
        .unwrap();
    assert_eq!(cd.task_delete("native-survivor").unwrap(), 137);
    cd.ctr(["containers", "rm", "native-survivor"]);
    assert_runc_gone("native-survivor", pid);

    // The shim is SIGKILLed: the container outlives it until containerd's
    // cleanup (the shim binary's `delete`) removes it with runc.
    let pid = start_detached(cd, &image, "native-orphan", &["/probe", "stubborn"]);
    for shim in cd.shim_pids() {
        kill(Pid::from_raw(shim), Signal::SIGKILL).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cd.task_status("native-orphan").unwrap().as_deref() {
            None | Some("STOPPED") | Some("UNKNOWN") => break,
            Some(other) if Instant::now() > deadline => {
                panic!("task still {other} 10 s after its shim was killed")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    if cd.task_status("native-orphan").unwrap().is_some() {
        let out = cd.ctr(["task", "delete", "native-orphan"]);
        if !out.status.success() {
            cd.ctr(["task", "delete", "--force", "native-orphan"]);
        }
    }
    let out = cd.ctr(["containers", "rm", "native-orphan"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_runc_gone("native-orphan", pid);

    // A Wasm container still runs in the engine next to them.
    let hello = cd
        .import(&wasishim_e2e::fixture_image("hello", "wasip1/hello.wasm").unwrap())
        .unwrap();
    let out = cd.run_rm(&[], &hello, "wasm-after", &[]);
    assert_eq!(stdout(&out), "hello from wasm\n", "{}", output_text(&out));

    for id in ["native-exit", "native-script"] {
        assert_runc_gone(id, 0);
    }
}

/// Without a usable runc (`WASISHIM_RUNC` names a missing file), a native
/// container fails Create with an error naming the setting; Wasm containers
/// still run and nothing is left.
fn runc_missing(cd: &PrivateContainerd) {
    cd.set_env("WASISHIM_RUNC", Some("/nonexistent/runc"));
    cd.restart().unwrap();
    let image = import_probe(cd);
    let out = cd.run_rm(&[], &image, "no-runc", &["/probe", "exit", "0"]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "cannot run /nonexistent/runc (set WASISHIM_RUNC to the runc binary, or install runc)"
        ),
        "{text}"
    );
    let hello = cd
        .import(&fixture_image("hello", "wasip1/hello.wasm").unwrap())
        .unwrap();
    let out = cd.run_rm(&[], &hello, "wasm-without-runc", &[]);
    assert_eq!(stdout(&out), "hello from wasm\n", "{}", output_text(&out));
    assert!(cd.containers().unwrap().is_empty());
    assert_runc_gone("no-runc", 0);
}

/// A pod with the wasi:http server (Wasm) and a native sidecar: the
/// sidecar reaches the server over the pod's loopback, both log through
/// CRI, ExecSync runs in the sidecar through runc and is still refused for
/// the Wasm container, and stopping the pod leaves nothing behind.
fn mixed_pod(cd: &PrivateContainerd, cri: &Client) {
    const LIMIT: Duration = Duration::from_secs(20);
    let http = cri::import(cd, &fixture_image("http", "wasip2/http.wasm").unwrap()).unwrap();
    let sidecar_image = cri_probe(cd);
    let pod = cri.run_pod(cri.pod_config("mixed")).unwrap();
    let started = Instant::now();
    let server = cri
        .run_container(&pod, cri.container_config("server", &http))
        .unwrap();
    let wasm_took = started.elapsed();
    let rss_before = shim_rss_kib(cd);
    let started = Instant::now();
    let sidecar = cri
        .run_container(
            &pod,
            cri::with_args(
                cri.container_config("sidecar", &sidecar_image),
                &["poll", "8080"],
            ),
        )
        .unwrap();
    // Figures for the report, not limits: a loaded CI machine varies.
    eprintln!(
        "mixed pod: Wasm container created and started in {wasm_took:?}, native sidecar in {:?}; shim RSS {rss_before} KiB before the sidecar, {} KiB after",
        started.elapsed(),
        shim_rss_kib(cd)
    );
    cri::wait_log_line(
        &pod.log_dir().join("server.log"),
        "listening on http://0.0.0.0:8080",
        LIMIT,
    )
    .unwrap();
    let lines = cri::wait_log_line(
        &pod.log_dir().join("sidecar.log"),
        "answer: hello from wasm http",
        LIMIT,
    )
    .unwrap();
    // Its own PID namespace, not the host's (the sandbox has no process).
    assert_eq!(
        lines.first().map(String::as_str),
        Some("pid=1"),
        "{lines:?}"
    );
    cri::wait_log_line(&pod.log_dir().join("sidecar.log"), "waiting", LIMIT).unwrap();

    // Stats of the sidecar come from its cgroup: it has run and holds memory.
    let stats = cri.container_stats(&sidecar).unwrap();
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value);
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    assert!(cpu > 0 && memory > 0, "sidecar stats: {stats:?}");

    // ExecSync: runc exec in the sidecar; the Wasm server still refuses.
    let out = cri.exec_sync(&sidecar, &["/probe", "exit", "3"]).unwrap();
    assert_eq!(out.exit_code, 3, "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("arg[1]=exit\n"), "{text}");
    assert!(!text.contains("pid=1\n"), "exec ran as the init: {text}");
    let err = cri.exec_sync(&server, &["/app.wasm"]).unwrap_err();
    assert!(
        format!("{err:#}").contains("exec is not supported"),
        "{err:#}"
    );

    // A native container over its memory limit is OOM-killed: 137, OOMKilled.
    let hog = cri::with_resources(
        cri::with_args(cri.container_config("hog", &sidecar_image), &["hog"]),
        cri::api::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        },
    );
    let hog = cri.run_container(&pod, hog).unwrap();
    let status = cri.wait_exited(&hog, LIMIT).unwrap();
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?}"
    );

    // Stop: SIGTERM reaches the sidecar's handler (exit 0).
    cri.stop_container(&sidecar, 10).unwrap();
    let status = cri.container_status(&sidecar).unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}");
    cri.stop_pod(&pod.id).unwrap();
    cri.remove_pod(&pod.id).unwrap();
    let state = Path::new("/run/containerd/wasishim/runc")
        .join(CRI_NAMESPACE)
        .join(&sidecar);
    assert!(!state.exists(), "runc state {} left", state.display());
}

/// The pid of runc container `id`'s init (its `state.json`) in the CRI
/// namespace's runc root, if runc knows it.
fn cri_runc_init_pid(id: &str) -> Option<u32> {
    let state = Path::new("/run/containerd/wasishim/runc")
        .join(CRI_NAMESPACE)
        .join(id)
        .join("state.json");
    let state: serde_json::Value = serde_json::from_slice(&fs::read(state).ok()?).ok()?;
    state["init_process_pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

/// Nothing of CRI container `id` is left: runc state, a cgroup named for
/// it under the instance's cgroup parent, its init `pid`. containerd runs
/// its cleanup after a dead shim in the background, so it gets a few
/// seconds.
fn assert_cri_runc_gone(cd: &PrivateContainerd, id: &str, pid: u32) {
    let state = Path::new("/run/containerd/wasishim/runc")
        .join(CRI_NAMESPACE)
        .join(id);
    let parent = cri::cgroup_parent(cd);
    let left = || {
        let mut left = Vec::new();
        if state.exists() {
            left.push(format!("runc state {}", state.display()));
        }
        for dir in cgroup_children(&parent) {
            if dir.to_string_lossy().contains(id) {
                left.push(format!("cgroup {}", dir.display()));
            }
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("probe") {
            left.push(format!("init {pid}"));
        }
        left
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(left().is_empty(), "container {id} left: {:?}", left());
}

/// The shim of a mixed pod is SIGKILLed: containerd's cleanup (the shim
/// binary's `delete`, called with the sandbox's bundle on 2.x and with each
/// container's on 1.x) kills and removes the native containers: no runc
/// state, cgroup or process is left, and the pod is then removed cleanly.
fn mixed_pod_shim_killed(cd: &PrivateContainerd, cri: &Client) {
    const LIMIT: Duration = Duration::from_secs(20);
    let http = cri::import(cd, &fixture_image("http", "wasip2/http.wasm").unwrap()).unwrap();
    let sidecar_image = cri_probe(cd);
    let pod = cri.run_pod(cri.pod_config("killed")).unwrap();
    cri.run_container(&pod, cri.container_config("server", &http))
        .unwrap();
    let mut sidecars = Vec::new();
    // Two containers, one ignoring SIGTERM: every record is cleaned, not one.
    for (name, mode) in [("stubborn", "stubborn"), ("waiter", "wait")] {
        let id = cri
            .run_container(
                &pod,
                cri::with_args(cri.container_config(name, &sidecar_image), &[mode]),
            )
            .unwrap();
        cri::wait_log_line(&pod.log_dir().join(format!("{name}.log")), "waiting", LIMIT).unwrap();
        let pid = cri_runc_init_pid(&id).unwrap_or_else(|| panic!("no runc state for {name}"));
        sidecars.push((id, pid));
    }
    let shims = cd.shim_pids();
    assert!(!shims.is_empty(), "no shim runs the pod");
    for shim in shims {
        kill(Pid::from_raw(shim), Signal::SIGKILL).unwrap();
    }
    for (id, pid) in &sidecars {
        assert_cri_runc_gone(cd, id, *pid);
    }
    // As kubelet does, retried: containerd 2.x retries deleting the tasks
    // of the dead shim before it sees the containers exited.
    let deadline = Instant::now() + LIMIT;
    while let Err(err) = cri.remove_pod(&pod.id) {
        assert!(Instant::now() < deadline, "{err:#}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The node still runs pods (a new server; the per-node one replaces
    // the killed server's log and removes it when it exits cleanly).
    let hello = cri::import(cd, &fixture_image("hello", "wasip1/hello.wasm").unwrap()).unwrap();
    let pod = cri.run_pod(cri.pod_config("after")).unwrap();
    let id = cri
        .run_container(&pod, cri.container_config("hello", &hello))
        .unwrap();
    let status = cri.wait_exited(&id, LIMIT).unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}");
    cri.remove_pod(&pod.id).unwrap();
}

/// The probe image for CRI, entrypoint /probe.
fn cri_probe(cd: &PrivateContainerd) -> String {
    let probe = fs::read(fixture("native/probe")).expect("make fixtures builds native/probe");
    cri::import(
        cd,
        &Image::new(&image_name("native-sidecar"))
            .file("/probe", probe, 0o755)
            .entrypoint(["/probe"]),
    )
    .unwrap()
}

/// Runs the probe as container `name` of `pod` with `args` to its end;
/// returns its stdout lines, once its log has `last`.
fn run_probe_to_end(
    cri: &Client,
    pod: &cri::Pod,
    image: &str,
    name: &str,
    args: &[&str],
    last: &str,
) -> Vec<String> {
    const LIMIT: Duration = Duration::from_secs(20);
    let id = cri
        .run_container(pod, cri::with_args(cri.container_config(name, image), args))
        .unwrap();
    let status = cri.wait_exited(&id, LIMIT).unwrap();
    assert_eq!(status.exit_code, 0, "{name}: {status:?}");
    cri::wait_log_line(&pod.log_dir().join(format!("{name}.log")), last, LIMIT).unwrap()
}

/// The (ipc, uts, pid) namespace inodes a probe printed in `ns` mode.
fn probe_namespaces(lines: &[String]) -> [u64; 3] {
    let line = lines
        .iter()
        .find(|l| l.starts_with("ns "))
        .unwrap_or_else(|| panic!("no ns line in {lines:?}"));
    let mut inodes = [0; 3];
    for (slot, kind) in inodes.iter_mut().zip(["ipc", "uts", "pid"]) {
        *slot = line
            .split(' ')
            .find_map(|field| field.strip_prefix(&format!("{kind}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {kind} in {line:?}"));
    }
    inodes
}

/// Processes running the shim binary as pod `pod_id`'s PID namespace init.
fn pod_inits(pod_id: &str) -> Vec<(i32, String)> {
    let init = format!("--wasishim-pod-init {pod_id}");
    wasishim_e2e::processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(&init))
        .collect()
}

/// The pod's IPC and UTS namespaces (with its hostname) are shared by its
/// native containers, as runc pods share the pause container's; the PID
/// namespace is each container's own unless the pod asks for one shared
/// (`shareProcessNamespace`), when a container sees the others' processes.
/// A pod without native containers gets no process for it.
fn pod_namespaces(cd: &PrivateContainerd, cri: &Client) {
    const LIMIT: Duration = Duration::from_secs(20);
    let image = cri_probe(cd);
    let hello = cri::import(cd, &fixture_image("hello", "wasip1/hello.wasm").unwrap()).unwrap();
    let host = |kind: &str| fs::metadata(format!("/proc/self/ns/{kind}")).unwrap().ino();

    let pod = cri.run_pod(cri.pod_config("nsshare")).unwrap();
    let a = run_probe_to_end(cri, &pod, &image, "ns-a", &["ns"], "hostname=nsshare");
    let b = run_probe_to_end(cri, &pod, &image, "ns-b", &["ns"], "hostname=nsshare");
    // Each is the init of its own PID namespace (the inodes of two that
    // did not exist at once may be the same number).
    for lines in [&a, &b] {
        assert_eq!(
            lines.first().map(String::as_str),
            Some("pid=1"),
            "{lines:?}"
        );
    }
    let (a, b) = (probe_namespaces(&a), probe_namespaces(&b));
    assert_eq!(a[..2], b[..2], "IPC and UTS are the pod's: {a:?} {b:?}");
    for (inode, kind) in a.iter().zip(["ipc", "uts", "pid"]) {
        assert_ne!(
            *inode,
            host(kind),
            "the container is in the host's {kind} namespace"
        );
    }
    // Without a shared PID namespace a container sees only itself.
    cri.run_container(
        &pod,
        cri::with_args(cri.container_config("waiter", &image), &["wait"]),
    )
    .unwrap();
    cri::wait_log_line(&pod.log_dir().join("waiter.log"), "waiting", LIMIT).unwrap();
    let seen = run_probe_to_end(cri, &pod, &image, "ps", &["ps"], "proc 1 /probe ps");
    assert!(
        !seen.iter().any(|l| l.ends_with("/probe wait")),
        "the other container is visible: {seen:?}"
    );
    assert!(pod_inits(&pod.id).is_empty(), "{:?}", pod_inits(&pod.id));
    cri.remove_pod(&pod.id).unwrap();

    // shareProcessNamespace: one PID namespace, its init the shim's (in
    // the pause process's place), made only once a native container asks.
    let pod = cri
        .run_pod(cri::with_shared_pid(cri.pod_config("pidshare")))
        .unwrap();
    let id = cri
        .run_container(&pod, cri.container_config("hello", &hello))
        .unwrap();
    assert_eq!(cri.wait_exited(&id, LIMIT).unwrap().exit_code, 0);
    assert!(
        pod_inits(&pod.id).is_empty(),
        "a Wasm container started a pod init: {:?}",
        pod_inits(&pod.id)
    );
    cri.run_container(
        &pod,
        cri::with_args(cri.container_config("waiter", &image), &["wait"]),
    )
    .unwrap();
    let lines = cri::wait_log_line(&pod.log_dir().join("waiter.log"), "waiting", LIMIT).unwrap();
    assert_ne!(
        lines.first().map(String::as_str),
        Some("pid=1"),
        "{lines:?}"
    );
    let init = format!("proc 1 /proc/self/exe --wasishim-pod-init {}", pod.id);
    let seen = run_probe_to_end(cri, &pod, &image, "ps", &["ps"], &init);
    assert!(
        seen.iter().any(|l| l.ends_with("/probe wait")),
        "the other container is not visible: {seen:?}"
    );
    assert_eq!(pod_inits(&pod.id).len(), 1, "{:?}", pod_inits(&pod.id));
    cri.remove_pod(&pod.id).unwrap();
}

/// Init containers, run as kubelet runs them: one at a time to completion
/// before the app containers. A native init container writes a file into
/// a shared host directory (an `emptyDir` as kubelet mounts it); the Wasm
/// container then reads it and prints it. A failing init container's exit
/// is reported as with runc (its code, reason `Error`), which is what
/// kubelet fails the pod on.
fn init_containers(cd: &PrivateContainerd, cri: &Client) {
    const LIMIT: Duration = Duration::from_secs(20);
    let image = cri_probe(cd);
    let files = cri::import(cd, &fixture_image("files", "wasip1/files.wasm").unwrap()).unwrap();
    let empty_dir = tempfile::tempdir().unwrap();
    let shared = |mut config: cri::api::ContainerConfig| {
        config.mounts = vec![cri::api::Mount {
            container_path: "/shared".to_string(),
            host_path: empty_dir.path().display().to_string(),
            ..Default::default()
        }];
        config
    };

    let pod = cri.run_pod(cri.pod_config("init")).unwrap();
    let init = cri
        .run_container(
            &pod,
            shared(cri::with_args(
                cri.container_config("init", &image),
                &["write", "/shared/greeting", "hello from the init container"],
            )),
        )
        .unwrap();
    let status = cri.wait_exited(&init, LIMIT).unwrap();
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (0, "Completed"),
        "{status:?}"
    );
    let mut app = shared(cri.container_config("app", &files));
    app.command = ["/app.wasm", "read", "/shared/greeting"]
        .map(String::from)
        .to_vec();
    let app = cri.run_container(&pod, app).unwrap();
    let status = cri.wait_exited(&app, LIMIT).unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}");
    cri::wait_log_line(
        &pod.log_dir().join("app.log"),
        "hello from the init container",
        LIMIT,
    )
    .unwrap();
    cri.remove_pod(&pod.id).unwrap();

    // A failing init container: kubelet sees exit 3, reason Error, and
    // starts nothing after it.
    let pod = cri.run_pod(cri.pod_config("init-fails")).unwrap();
    let init = cri
        .run_container(
            &pod,
            cri::with_args(cri.container_config("init", &image), &["exit", "3"]),
        )
        .unwrap();
    let status = cri.wait_exited(&init, LIMIT).unwrap();
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (3, "Error"),
        "{status:?}"
    );
    cri::wait_log_line(&pod.log_dir().join("init.log"), "arg[2]=3", LIMIT).unwrap();
    cri.remove_pod(&pod.id).unwrap();
}

/// Resident memory of this instance's shim processes, in KiB.
fn shim_rss_kib(cd: &PrivateContainerd) -> u64 {
    cd.shim_pids()
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

mod cri_pods {
    #[test]
    fn v1_6_mixed_pod() {
        super::run_cri("1.6.20", super::mixed_pod)
    }
    #[test]
    fn v1_7_mixed_pod() {
        super::run_cri("1.7.24", super::mixed_pod)
    }
    #[test]
    fn v2_1_mixed_pod() {
        super::run_cri("2.1.9", super::mixed_pod)
    }
    #[test]
    fn v1_6_mixed_pod_shim_killed() {
        super::run_cri("1.6.20", super::mixed_pod_shim_killed)
    }
    #[test]
    fn v1_7_mixed_pod_shim_killed() {
        super::run_cri("1.7.24", super::mixed_pod_shim_killed)
    }
    #[test]
    fn v2_1_mixed_pod_shim_killed() {
        super::run_cri("2.1.9", super::mixed_pod_shim_killed)
    }
    #[test]
    fn v1_6_init_containers() {
        super::run_cri("1.6.20", super::init_containers)
    }
    #[test]
    fn v1_7_init_containers() {
        super::run_cri("1.7.24", super::init_containers)
    }
    #[test]
    fn v2_1_init_containers() {
        super::run_cri("2.1.9", super::init_containers)
    }
    #[test]
    fn v1_6_pod_namespaces() {
        super::run_cri("1.6.20", super::pod_namespaces)
    }
    #[test]
    fn v1_7_pod_namespaces() {
        super::run_cri("1.7.24", super::pod_namespaces)
    }
    #[test]
    fn v2_1_pod_namespaces() {
        super::run_cri("2.1.9", super::pod_namespaces)
    }
}

fn run(version: &str, scenario: fn(&PrivateContainerd)) {
    let cd = PrivateContainerd::start(version).unwrap();
    scenario(&cd);
    cd.assert_no_leaks();
}

wasishim_e2e::scenarios!(native_under_runc, runc_missing);
