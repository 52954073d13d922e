//! Kubernetes scenarios: the tests play kubelet, calling containerd's CRI
//! API (`runtime.v1`) of a private containerd of each supported version
//! whose runtime handler `wasmtime` maps to `io.containerd.wasmtime.v1`
//! (a pod with `runtimeClassName: wasmtime`).
//!
//! Every scenario is one function taking the instance and a CRI client;
//! `scenarios!` makes a `#[test]` of it per containerd version
//! (`v1_6::two_containers`, ...). Each starts its own CRI-enabled containerd
//! ([`PrivateContainerd::start_with_cri`]) and ends with
//! [`PrivateContainerd::assert_no_leaks`], which for CRI instances also
//! checks network namespaces, CRI sandbox directories, CNI caches and the
//! pods' cgroups.
//!
//! Needs root, the containerd versions, Debian's containernetworking-plugins
//! (`loopback`), the fixtures, and `containerd-shim-wasmtime-v1` plus
//! `wasishim-static` built into `target/debug`
//! (`cargo build -p containerd-shim-wasmtime-v1 -p wasishim-cni-static`).
//!
//! Run one: `cargo test -p wasishim-e2e --test cri -- v2_1::two_containers`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wasishim_e2e::cri::{self, api, Client, Pod};
use wasishim_e2e::{fixture_image, image_name, Image, PrivateContainerd};

/// How long a short-lived guest may take to be reported exited.
const EXIT_LIMIT: Duration = Duration::from_secs(20);
/// How long a guest may take to be reported running.
const RUN_LIMIT: Duration = Duration::from_secs(20);
/// Where the `tcp-echo` fixture listens inside its pod.
const POD_PORT: u16 = 8080;

/// Imports the fixture `rel` as image `name` into CRI's namespace.
fn import(cd: &PrivateContainerd, name: &str, rel: &str) -> String {
    cri::import(cd, &fixture_image(name, rel).unwrap()).unwrap()
}

fn exited(status: &api::ContainerStatus) -> bool {
    status.state == api::ContainerState::ContainerExited as i32
}

/// Starts a pod named `name`, failing the test with the error otherwise.
fn run_pod(cri: &Client, name: &str) -> Pod {
    cri.run_pod(cri.pod_config(name))
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e:#}"))
}

/// Runs a container and waits until it is RUNNING.
fn run_running(cri: &Client, pod: &Pod, config: api::ContainerConfig) -> String {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let id = cri
        .run_container(pod, config)
        .unwrap_or_else(|e| panic!("container {name}: {e:#}"));
    cri.wait_state(&id, api::ContainerState::ContainerRunning, RUN_LIMIT)
        .unwrap();
    id
}

/// Runs a container to its end and returns its final status.
fn run_to_exit(cri: &Client, pod: &Pod, config: api::ContainerConfig) -> api::ContainerStatus {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let id = cri
        .run_container(pod, config)
        .unwrap_or_else(|e| panic!("container {name}: {e:#}"));
    cri.wait_exited(&id, EXIT_LIMIT).unwrap()
}

/// Stops and removes the pod; nothing of it may remain.
fn remove_pod(cd: &PrivateContainerd, cri: &Client, pod: &Pod) {
    cri.remove_pod(&pod.id).unwrap();
    assert!(
        cri.list_pods().unwrap().iter().all(|p| p.id != pod.id),
        "pod {} still listed after RemovePodSandbox",
        pod.id
    );
    if let Some(ns) = &pod.netns {
        assert!(
            !ns.exists(),
            "network namespace {} outlived its pod",
            ns.display()
        );
    }
    cd.assert_no_leaks();
}

// ---------------------------------------------------------------- harness

/// The harness itself: the CRI plugin loaded, CRI sees the pause image and a
/// fixture imported into `k8s.io`, and RunPodSandbox with handler `wasmtime`
/// reaches the shim (it started a shim process for the pod, or the error
/// names the runtime).
fn harness(cd: &PrivateContainerd, cri: &Client) {
    assert!(cri::cri_plugin_problems(cd).unwrap().is_empty());
    let version = cri.version().unwrap();
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");
    assert!(cri.has_image(cri::PAUSE_IMAGE).unwrap());
    let hello = import(cd, "hello", "wasip1/hello.wasm");
    assert!(cri.has_image(&hello).unwrap(), "CRI does not see {hello}");
    let missing = image_name("never-imported");
    assert!(!cri.has_image(&missing).unwrap());
    // A pull goes to the instance's registry redirect, never the network.
    let start = Instant::now();
    let err = cri.pull_image(&missing).unwrap_err();
    assert!(
        format!("{err:#}").contains("127.0.0.1:1"),
        "pull of {missing} did not go to the redirect: {err:#}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );

    match cri.run_pod(cri.pod_config("harness")) {
        Ok(pod) => {
            assert!(
                pod.netns.is_some(),
                "no network namespace in the status of {}",
                pod.id
            );
            // The leak check sees a live pod (so it would see a leaked one).
            let live = cd.leaks().join("\n");
            for what in ["network namespace", "CRI sandboxes dir", "task state dir"] {
                assert!(live.contains(what), "leak check misses the {what}:\n{live}");
            }
            let status = cri.pod_status(&pod.id).unwrap().status.unwrap();
            assert_eq!(status.runtime_handler, cri::HANDLER);
            let ip = status.network.map(|n| n.ip).unwrap_or_default();
            assert_eq!(
                ip,
                cri::POD_ADDRESS.split('/').next().unwrap(),
                "pod IP from wasishim-static"
            );
            remove_pod(cd, cri, &pod);
        }
        Err(e) => {
            let text = format!("{e:#}");
            assert!(
                text.contains(wasishim_e2e::runtime()) || text.contains("wasmtime"),
                "RunPodSandbox failed before reaching the shim: {text}"
            );
            panic!("RunPodSandbox reached the shim but failed: {text}");
        }
    }
}

// ---------------------------------------------------------------- scenarios

/// a. Two wasm containers in one pod both run; their CRI logs hold their
/// stdout up to the last line before exit; both report EXITED with code 0.
fn two_containers(cd: &PrivateContainerd, cri: &Client) {
    let hello = import(cd, "hello", "wasip1/hello.wasm");
    let echo = cri::import(
        cd,
        &Image::new(&image_name("echo"))
            .wasm(std::fs::read(wasishim_e2e::fixture("wasip2/echo.wasm")).unwrap())
            .env("FROM_IMAGE", "yes"),
    )
    .unwrap();
    let pod = run_pod(cri, "two");

    let hello_id = cri
        .run_container(&pod, cri.container_config("hello", &hello))
        .unwrap();
    let echo_cfg = cri::with_env(
        cri::with_args(cri.container_config("echo", &echo), &["one", "two words"]),
        &[("FOO", "bar baz")],
    );
    let echo_id = cri.run_container(&pod, echo_cfg).unwrap();

    for (id, log) in [(&hello_id, "hello.log"), (&echo_id, "echo.log")] {
        let status = cri.wait_exited(id, EXIT_LIMIT).unwrap();
        assert_eq!(status.exit_code, 0, "{log}: {status:?}");
        // Not finished_at >= started_at: CRI stamps started_at after the
        // Start reply, and a short guest may already have exited by then.
        assert!(
            status.started_at > 0 && status.finished_at > 0,
            "{status:?}"
        );
        assert_eq!(
            status.log_path,
            pod.log_dir().join(log).display().to_string()
        );
    }
    let hello_log = pod.log_dir().join("hello.log");
    let lines = cri::wait_log_line(&hello_log, "hello from wasm", EXIT_LIMIT).unwrap();
    assert_eq!(lines, ["hello from wasm"]);

    let echo_log = pod.log_dir().join("echo.log");
    // "cwd=..." is the last line echo prints before it exits.
    let lines = cri::wait_log_line(&echo_log, "cwd=/", EXIT_LIMIT).unwrap();
    for want in [
        "arg[0]=/app.wasm",
        "arg[1]=one",
        "arg[2]=two words",
        "env FOO=bar baz",
        "env FROM_IMAGE=yes",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "no {want:?} in echo's log:\n{}",
            lines.join("\n")
        );
    }
    assert_eq!(lines.last().map(String::as_str), Some("cwd=/"));

    let listed = cri.list_containers(Some(&pod.id)).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for id in [&hello_id, &echo_id] {
        cri.remove_container(id).unwrap();
    }
    remove_pod(cd, cri, &pod);
}

/// b. An exit code reaches ContainerStatus; a trap reports 134.
fn exit_codes(cd: &PrivateContainerd, cri: &Client) {
    let exit = import(cd, "exit", "wasip1/exit.wasm");
    let trap = import(cd, "trap", "wasip1/trap.wasm");
    let pod = run_pod(cri, "exits");
    let status = run_to_exit(
        cri,
        &pod,
        cri::with_args(cri.container_config("three", &exit), &["3"]),
    );
    assert_eq!(status.exit_code, 3, "{status:?}");
    let status = run_to_exit(cri, &pod, cri.container_config("trap", &trap));
    assert_eq!(status.exit_code, 134, "{status:?}");
    let lines =
        cri::wait_log_line(&pod.log_dir().join("trap.log"), "about to trap", EXIT_LIMIT).unwrap();
    assert_eq!(lines, ["about to trap"]);
    remove_pod(cd, cri, &pod);
}

/// c. StopContainer: SIGTERM, then SIGKILL when the grace period runs out.
///
/// A WASI guest cannot install signal handlers, so a command guest cannot
/// ignore SIGTERM: a busy loop ends with 143 at once, well inside the grace
/// period. What keeps a Wasm guest alive past SIGTERM is an HTTP server
/// draining a request that never finishes (`/spin` of the `http` fixture):
/// it stays until the grace period runs out, then SIGKILL ends it with 137.
/// StopPodSandbox ends another busy loop as quickly.
fn stop_with_grace(cd: &PrivateContainerd, cri: &Client) {
    const GRACE: i64 = 4;
    let grace = Duration::from_secs(GRACE as u64);
    let spin = import(cd, "spin", "wasip1/spin.wasm");
    let http = import(cd, "http", "wasip2/http.wasm");
    let pod = run_pod(cri, "stop");

    // SIGTERM ends a busy loop: 143, long before the grace period is over.
    let id = run_running(cri, &pod, cri.container_config("spin-one", &spin));
    let start = Instant::now();
    cri.stop_container(&id, GRACE).unwrap();
    let took = start.elapsed();
    let status = cri.container_status(&id).unwrap();
    assert!(exited(&status), "{status:?}");
    assert_eq!(status.exit_code, 143, "{status:?}");
    assert!(
        took < grace / 2,
        "StopContainer of a busy loop took {took:?} (grace {grace:?}): SIGTERM did not end it"
    );

    // An HTTP server with a request that never ends outlives SIGTERM until
    // the grace period runs out.
    let netns = pod.netns.clone().expect("the pod's network namespace");
    let id = run_running(cri, &pod, cri.container_config("server", &http));
    let address = SocketAddr::from(([127, 0, 0, 1], POD_PORT));
    let spinning = std::thread::spawn(move || {
        cri::in_netns(&netns, move || {
            let start = Instant::now();
            while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                .is_err()
            {
                if start.elapsed() > RUN_LIMIT {
                    return Err(format!("nothing listens on {address}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Never answered: the server is killed while it spins.
            match wasishim_e2e::http::get_with(address, "/spin", "") {
                Ok(answer) => Err(format!("/spin was answered: {answer:?}")),
                Err(_) => Ok(()),
            }
        })
    });
    let log = pod.log_dir().join("server.log");
    cri::wait_log_line(&log, "listening on http://0.0.0.0:8080", RUN_LIMIT).unwrap();
    // The request reaches the handler (its access line comes only when it
    // ends, so give it a moment).
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    cri.stop_container(&id, GRACE).unwrap();
    let took = start.elapsed();
    let status = cri.container_status(&id).unwrap();
    assert!(exited(&status), "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert!(
        took >= grace && took < grace + Duration::from_secs(3),
        "StopContainer with a request in flight took {took:?} (grace {grace:?})"
    );
    let client = spinning.join().unwrap().unwrap();
    assert_eq!(client, Ok(()));

    let id = run_running(cri, &pod, cri.container_config("spin-two", &spin));
    let start = Instant::now();
    cri.stop_pod(&pod.id).unwrap();
    let took = start.elapsed();
    let status = cri.container_status(&id).unwrap();
    assert!(exited(&status), "{status:?}");
    assert!(took < grace / 2, "StopPodSandbox took {took:?}");
    assert!(
        [143, 137].contains(&status.exit_code),
        "exit code {}",
        status.exit_code
    );
    remove_pod(cd, cri, &pod);
}

/// d. ContainerStats and ListContainerStats of a busy guest report CPU time
/// and, as working set, exactly what counts against its memory limit: the
/// `hold` fixture's linear memory of 160 pages (10 MiB), which never grows,
/// its store's 2 MiB stack and its instance state.
fn stats(cd: &PrivateContainerd, cri: &Client) {
    const LINEAR_MEMORY: u64 = 160 * 65536 + (2 << 20);
    let hold = import(cd, "hold", "wat/hold.wasm");
    let pod = run_pod(cri, "stats");
    let id = run_running(cri, &pod, cri.container_config("hold", &hold));
    std::thread::sleep(Duration::from_millis(1500));

    let check = |stats: &api::ContainerStats, from: &str| {
        let cpu = stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|v| v.value)
            .unwrap_or(0);
        assert!(cpu > 0, "{from}: no CPU usage: {stats:?}");
        let mem = stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map(|v| v.value)
            .unwrap_or(0);
        // Plus a few KiB of instance state, estimated from the module.
        assert!(
            (LINEAR_MEMORY + 4096..LINEAR_MEMORY + (32 << 10)).contains(&mem),
            "{from}: working set is not the guest's linear memory, stack and instance state: {mem} {stats:?}"
        );
    };
    let stats = cri.container_stats(&id).unwrap();
    check(&stats, "ContainerStats");
    let listed = cri.list_container_stats(&pod.id).unwrap();
    let ours = listed
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id))
        .unwrap_or_else(|| panic!("ListContainerStats has no {id}: {listed:?}"));
    check(ours, "ListContainerStats");

    cri.stop_container(&id, 0).unwrap();
    remove_pod(cd, cri, &pod);
}

/// e. A guest that allocates past its 32 MiB memory limit, and aborts when
/// an allocation fails, ends with 137 and reason OOMKilled.
fn memory_limit(cd: &PrivateContainerd, cri: &Client) {
    let grow = import(cd, "grow", "wasip1/grow.wasm");
    let pod = run_pod(cri, "oom");
    let config = cri::with_resources(
        cri::with_args(cri.container_config("grow", &grow), &["abort"]),
        api::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        },
    );
    let status = run_to_exit(cri, &pod, config);
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    let log = std::fs::read_to_string(pod.log_dir().join("grow.log")).unwrap_or_default();
    let most = cri::parse_log(&log)
        .unwrap()
        .iter()
        .filter_map(|l| {
            l.text
                .strip_prefix("allocated ")?
                .strip_suffix(" MiB")?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(
        (1..32).contains(&most),
        "expected the guest to allocate some, but under 32, MiB; log:\n{log}"
    );
    remove_pod(cd, cri, &pod);
}

/// f. A wasip2 TCP server listening on 0.0.0.0:8080 inside the pod answers
/// on 127.0.0.1:8080 of the pod's network namespace, and not on the host's.
fn networking(cd: &PrivateContainerd, cri: &Client) {
    let server = import(cd, "tcp-echo", "wasip2/tcp-echo.wasm");
    let pod = run_pod(cri, "net");
    let netns = pod
        .netns
        .clone()
        .expect("the pod's network namespace from its status");
    let id = run_running(cri, &pod, cri.container_config("server", &server));
    let addr = SocketAddr::from(([127, 0, 0, 1], POD_PORT));

    let answer = cri::in_netns(&netns, move || {
        cri::read_from(addr, Duration::from_secs(10)).map_err(|e| e.to_string())
    })
    .unwrap();
    let log = std::fs::read_to_string(pod.log_dir().join("server.log")).unwrap_or_default();
    assert_eq!(
        answer,
        Ok("hello from wasm pod\n".to_string()),
        "server log:\n{log}"
    );
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "something answers on the host's 127.0.0.1:{POD_PORT}: the server is not in the pod's namespace"
    );

    cri.stop_container(&id, 0).unwrap();
    remove_pod(cd, cri, &pod);
}

/// g. A missing entrypoint and a corrupt module are refused with their
/// cause, while another container of the pod keeps running.
fn bad_input(cd: &PrivateContainerd, cri: &Client) {
    let sleep = import(cd, "sleep", "wasip1/sleep.wasm");
    let empty = cri::import(
        cd,
        &Image::new(&image_name("empty")).file("/README", "no wasm here\n", 0o644),
    )
    .unwrap();
    let corrupt = cri::import(
        cd,
        &Image::new(&image_name("corrupt")).wasm(b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff".to_vec()),
    )
    .unwrap();
    let pod = run_pod(cri, "bad");
    let sleeper = run_running(cri, &pod, cri.container_config("sleeper", &sleep));

    for (name, image, needle) in [
        ("missing", &empty, "not found in the image's rootfs"),
        ("corrupt", &corrupt, "not valid WebAssembly"),
    ] {
        let text = cri.refused(&pod, cri.container_config(name, image));
        assert!(
            text.contains(needle),
            "{name}: expected {needle:?} in: {text}"
        );
        let status = cri.container_status(&sleeper).unwrap();
        assert_eq!(
            status.state,
            api::ContainerState::ContainerRunning as i32,
            "after {name}: {status:?}"
        );
    }
    cri.stop_container(&sleeper, 0).unwrap();
    remove_pod(cd, cri, &pod);
}

/// h. ExecSync and Exec are refused with "not supported" (Exec's refusal
/// arrives on the stream's error channel); the container keeps running.
fn exec_unsupported(cd: &PrivateContainerd, cri: &Client) {
    let sleep = import(cd, "sleep", "wasip1/sleep.wasm");
    let pod = run_pod(cri, "exec");
    let id = run_running(cri, &pod, cri.container_config("sleeper", &sleep));

    let err = cri.exec_sync(&id, &["/app.wasm", "1"]).unwrap_err();
    assert!(
        format!("{err:#}").contains("not supported"),
        "ExecSync: {err:#}"
    );

    let text = match cri.exec(&id, &["/app.wasm", "1"]) {
        Err(e) => format!("{e:#}"),
        Ok(url) => cri::stream_probe(&url, Duration::from_secs(10)).unwrap(),
    };
    assert!(text.contains("not supported"), "Exec: {text}");

    let status = cri.container_status(&id).unwrap();
    assert_eq!(status.state, api::ContainerState::ContainerRunning as i32);
    cri.stop_container(&id, 0).unwrap();
    remove_pod(cd, cri, &pod);
}

/// j. Attach (`kubectl attach`), which containerd serves from the
/// container's stdio: a running guest's output reaches the attached client
/// as it is written, and a client's stdin reaches a guest started with
/// `stdin: true` (`stdin_once`: the end of the attach is its end of file).
fn attach(cd: &PrivateContainerd, cri: &Client) {
    let sleep = import(cd, "sleep", "wasip1/sleep.wasm");
    let echo = import(cd, "echo", "wasip1/echo.wasm");
    let pod = run_pod(cri, "attach");

    // Prints "sleeping", then "woke" two seconds later, while attached.
    let id = run_running(
        cri,
        &pod,
        cri::with_args(cri.container_config("sleeper", &sleep), &["2"]),
    );
    let url = cri.attach(&id, false).unwrap();
    let streamed = cri::stream_probe(&url, EXIT_LIMIT).unwrap();
    assert!(
        streamed.contains("[1] woke\n"),
        "attached client got: {streamed:?}"
    );
    let status = cri.wait_exited(&id, EXIT_LIMIT).unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}");

    let mut config = cri::with_args(cri.container_config("reader", &echo), &["--stdin"]);
    config.stdin = true;
    config.stdin_once = true;
    let id = run_running(cri, &pod, config);
    let url = cri.attach(&id, true).unwrap();
    cri::stream_stdin(&url, b"typed into attach\n", EXIT_LIMIT).unwrap();
    let status = cri.wait_exited(&id, EXIT_LIMIT).unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}");
    let lines = cri::wait_log_line(
        &pod.log_dir().join("reader.log"),
        "stdin=typed into attach",
        EXIT_LIMIT,
    )
    .unwrap();
    assert!(
        lines.iter().any(|l| l == "stdin=typed into attach"),
        "{lines:?}"
    );
    remove_pod(cd, cri, &pod);
}

/// i. UpdateContainerResources (an in-place resize) is refused with
/// "update is not supported by RUNTIME"; the container keeps running.
fn update_refused(cd: &PrivateContainerd, cri: &Client) {
    let sleep = import(cd, "sleep", "wasip1/sleep.wasm");
    let pod = run_pod(cri, "update");
    let id = run_running(cri, &pod, cri.container_config("sleeper", &sleep));
    let err = cri
        .update_resources(
            &id,
            api::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            },
        )
        .unwrap_err();
    let needle = format!("update is not supported by {}", wasishim_e2e::runtime());
    assert!(format!("{err:#}").contains(&needle), "{err:#}");
    let status = cri.container_status(&id).unwrap();
    assert_eq!(status.state, api::ContainerState::ContainerRunning as i32);
    cri.stop_container(&id, 0).unwrap();
    remove_pod(cd, cri, &pod);
}

/// Starts a CRI-enabled containerd `version`, runs `scenario` on it and
/// checks for leaks.
fn run(version: &str, scenario: fn(&PrivateContainerd, &Client)) {
    let cd = PrivateContainerd::start_with_cri(version).unwrap();
    {
        let cri = Client::connect(&cd).unwrap();
        scenario(&cd, &cri);
    }
    cd.assert_no_leaks();
}

wasishim_e2e::scenarios!(
    harness,
    two_containers,
    exit_codes,
    stop_with_grace,
    stats,
    memory_limit,
    networking,
    bad_input,
    exec_unsupported,
    update_refused,
    attach,
);
