//! wasi:http components end to end: the `http` fixture (a component
//! exporting `wasi:http/incoming-handler`, test/fixtures/rust/http) served by
//! the shim, through `ctr` on the host's network and through CRI in a pod.
//!
//! Every scenario is one function; `ctr_and_cri_scenarios!` makes a `#[test]` of it per
//! containerd version (`v1_6::ctr_serves`, `v2_1::cri_serves_in_pod`, ...),
//! each on its own containerd and ending with
//! [`PrivateContainerd::assert_no_leaks`].
//!
//! Clients only ever connect to 127.0.0.1: with `--net-host` the server is
//! told to listen there (`WASISHIM_HTTP_ADDRESS=127.0.0.1:<free port>`); in
//! a pod it listens on its default 0.0.0.0:8080 and the client joins the
//! pod's network namespace to reach 127.0.0.1:8080 there.
//!
//! Needs what tests/ctr.rs and tests/cri.rs need. Run one:
//! `cargo test -p wasishim-e2e --test http -- v1_6::ctr_serves`.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wasishim_e2e::cri::{self, api, Client, Pod};
use wasishim_e2e::http::{self, Answer};
use wasishim_e2e::http::{free_address, wait_listening, LISTEN_LIMIT};
use wasishim_e2e::{exit_code, fixture_image, output_text, wait_with_timeout, PrivateContainerd};

/// Where the server listens inside a pod (the default address).
const POD_PORT: u16 = 8080;

// ---------------------------------------------------------------- client

/// `GET path` on a new connection to `address` (loopback only), with
/// extra header lines.
fn get_with(address: SocketAddr, path: &str, headers: &str) -> std::io::Result<Answer> {
    assert!(address.ip().is_loopback(), "tests only connect to loopback");
    http::get_with(address, path, headers)
}

fn get(address: SocketAddr, path: &str) -> Answer {
    assert!(address.ip().is_loopback(), "tests only connect to loopback");
    http::get(address, path)
}

// ---------------------------------------------------------------- ctr

fn import(cd: &PrivateContainerd) -> String {
    cd.import(&fixture_image("http", "wasip2/http.wasm").unwrap())
        .unwrap()
}

/// Stops (SIGKILL) and removes a task and its container; returns the exit code.
/// `ctr run -d --net-host`: responses (keep-alive aside), a mounted file,
/// 16 parallel requests, a trapping request (500) after which the server
/// still answers, a fresh instance per request; SIGKILL ends it with 137.
fn ctr_serves(cd: &PrivateContainerd) {
    let image = import(cd);
    let address = free_address();
    let data = tempfile::tempdir().unwrap();
    fs::write(data.path().join("hello.txt"), "hello from the host\n").unwrap();
    let env = format!("WASISHIM_HTTP_ADDRESS={address}");
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        data.path().display()
    );
    cd.run_detached(
        &["--net-host", "--env", &env, "--mount", &mount],
        &image,
        "http",
        &[],
    )
    .unwrap();
    wait_listening(address);

    let answer = get(address, "/");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from wasm http\n")
    );
    let answer = get_with(address, "/echo-header", "x-echo: from ctr\r\n").unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "from ctr"));
    let answer = get(address, "/file?path=/data/hello.txt");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from the host\n")
    );

    let start = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let path = if i % 2 == 0 { "/slow" } else { "/echo-header" };
                (
                    i,
                    get_with(address, path, &format!("x-echo: client {i}\r\n")),
                )
            })
        })
        .collect();
    for client in clients {
        let (i, answer) = client.join().unwrap();
        let answer = answer.unwrap_or_else(|e| panic!("client {i}: {e}"));
        let want = if i % 2 == 0 {
            "slow done\n".to_string()
        } else {
            format!("client {i}")
        };
        assert_eq!((answer.status, answer.body), (200, want), "client {i}");
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "16 requests (8 of them sleeping 1 s) took {took:?}"
    );

    let answer = get(address, "/trap");
    assert_eq!(answer.status, 500, "{answer:?}");
    let answer = get(address, "/");
    assert_eq!(answer.status, 200, "after a trap: {answer:?}");

    // A fresh instance per request: the handler's static counter is 1 in
    // each, after all the requests above.
    for _ in 0..2 {
        let answer = get(address, "/count");
        assert_eq!((answer.status, answer.body.as_str()), (200, "1\n"));
    }

    assert_eq!(cd.kill_and_remove("http"), 137);
}

/// Foreground `ctr run`: SIGTERM with a request in flight lets it finish,
/// then the task exits 0; ctr's output has the access lines and the trap.
fn ctr_graceful_stop(cd: &PrivateContainerd) {
    let image = import(cd);
    let address = free_address();
    let env = format!("WASISHIM_HTTP_ADDRESS={address}");
    cd.note_container("http-fg");
    let child = cd
        .spawn_ctr([
            "run",
            "--rm",
            "--net-host",
            "--env",
            &env,
            "--runtime",
            wasishim_e2e::runtime(),
            &image,
            "http-fg",
        ])
        .unwrap();
    wait_listening(address);
    assert_eq!(get(address, "/trap").status, 500);

    let slow = std::thread::spawn(move || get_with(address, "/slow", ""));
    std::thread::sleep(Duration::from_millis(300));
    let out = cd.ctr(["task", "kill", "http-fg"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let answer = slow.join().unwrap().unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "slow done\n"));

    // The guest drains in a second; a ctr stuck past that fails here.
    let out = wait_with_timeout(child, Duration::from_secs(30), "ctr run http-fg");
    let text = output_text(&out);
    assert_eq!(exit_code(&out.status), 0, "{text}");
    for needle in [
        &format!("listening on http://{address}")[..],
        "GET /trap 500 ",
        "GET /slow 200 ",
        "GET /trap failed: wasm trap",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_err(),
        "something still listens on {address}"
    );
}

// ---------------------------------------------------------------- CRI

fn run_pod(cri: &Client, name: &str) -> Pod {
    cri.run_pod(cri.pod_config(name))
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e:#}"))
}

/// A pod serving on 0.0.0.0:8080 of its own network: answers on the pod's
/// 127.0.0.1:8080 (not the host's), a trap gets 500, StopContainer with a
/// request in flight lets it finish and the container exits 0; the CRI log
/// has the access lines.
fn cri_serves_in_pod(cd: &PrivateContainerd, cri: &Client) {
    let image = cri::import(cd, &fixture_image("http", "wasip2/http.wasm").unwrap()).unwrap();
    let pod = run_pod(cri, "http");
    let netns = pod
        .netns
        .clone()
        .expect("the pod's network namespace from its status");
    let id = cri
        .run_container(&pod, cri.container_config("http", &image))
        .unwrap_or_else(|e| panic!("container http: {e:#}"));
    cri.wait_state(&id, api::ContainerState::ContainerRunning, LISTEN_LIMIT)
        .unwrap();
    let address = SocketAddr::from(([127, 0, 0, 1], POD_PORT));

    let answers = cri::in_netns(&netns, move || {
        wait_listening(address);
        [
            get(address, "/"),
            get_with(address, "/echo-header", "x-echo: in a pod\r\n").unwrap(),
            get(address, "/trap"),
            get(address, "/"),
        ]
        .map(|a| (a.status, a.body))
    })
    .unwrap();
    let trap_status = answers[2].0;
    assert_eq!(answers[0], (200, "hello from wasm http\n".to_string()));
    assert_eq!(answers[1], (200, "in a pod".to_string()));
    assert_eq!(trap_status, 500);
    assert_eq!(answers[3].0, 200);
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err(),
        "something answers on the host's 127.0.0.1:{POD_PORT}: the server is not in the pod's namespace"
    );

    let slow_netns = netns.clone();
    let slow = std::thread::spawn(move || {
        cri::in_netns(&slow_netns, move || {
            get_with(address, "/slow", "").map_err(|e| e.to_string())
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    cri.stop_container(&id, 10).unwrap();
    let answer = slow.join().unwrap().unwrap().unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "slow done\n"));
    let status = cri.container_status(&id).unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}");

    let log = fs::read_to_string(pod.log_dir().join("http.log")).unwrap_or_default();
    let lines: Vec<String> = cri::parse_log(&log)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    for needle in [
        "GET / 200 ",
        "GET /trap 500 ",
        "GET /slow 200 ",
        "GET /trap failed: wasm trap",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(needle)),
            "no line starting with {needle:?} in the CRI log:\n{log}"
        );
    }

    cri.remove_pod(&pod.id).unwrap();
    assert!(
        !netns.exists(),
        "network namespace {} outlived its pod",
        netns.display()
    );
}

// ---------------------------------------------------------------- tests

wasishim_e2e::ctr_and_cri_scenarios!(
    ctr: [ctr_serves, ctr_graceful_stop],
    cri: [cri_serves_in_pod],
);
