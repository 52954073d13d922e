//! One tenant's attack leaves the others alone: a compile bomb and a module
//! over the size cap fail that container's create, an HTTP handler that
//! never answers is stopped at its request deadline (504). While each attack
//! runs, a second tenant's container (in another namespace) keeps running
//! and a new container starts normally.
//!
//! Each scenario runs against the per-node server (one process for every
//! tenant: the case that matters) and the per-pod shim, on one containerd
//! version: what is tested is the shim's, not containerd's. The shims get
//! small compile limits and their own cache directory from containerd's
//! environment ([`shim_env`]).
//!
//! Run one: `cargo test --workspace --test tenants -- v2_1::node_compile_bomb`.

#[path = "../../fixtures/generate/bomb.rs"]
mod bomb;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use wasishim_e2e::{fixture_image, image_name, output_text, processes, Image, PrivateContainerd};

const PER_NODE: &str = "io.containerd.wasmtimed.v1";
const PER_POD: &str = "io.containerd.wasmtime.v1";
/// The second tenant's namespace.
const OTHER_TENANT: &str = "wasishim-e2e-tenant-b";
/// The shims' compile timeout here: long enough for a new container's
/// compile to finish while the bomb's runs.
const COMPILE_TIMEOUT_SECONDS: u64 = 8;
/// The shims' module size cap here: above the bomb's 720 KB.
const MAX_MODULE_BYTES: usize = 8 << 20;

/// The shims' settings, through containerd's environment (the harness
/// starts containerd with this process's).
fn shim_env(cache: &Path) {
    std::env::set_var(
        "WASISHIM_COMPILE_TIMEOUT_SECONDS",
        COMPILE_TIMEOUT_SECONDS.to_string(),
    );
    std::env::set_var("WASISHIM_MAX_MODULE_BYTES", MAX_MODULE_BYTES.to_string());
    // A fresh cache: the new container's code is compiled, not loaded.
    std::env::set_var("WASISHIM_CACHE_DIR", cache);
}

/// `ctr run` flags choosing `runtime` (ctr takes the last `--runtime`).
fn with_runtime<'a>(runtime: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--runtime", runtime];
    all.extend_from_slice(flags);
    all
}

/// The second tenant's long-running container, in its own namespace.
fn start_neighbour(cd: &PrivateContainerd, runtime: &str) {
    let image = fixture_image("sleep", "wasip1/sleep.wasm").unwrap();
    let image = cd.import_in(OTHER_TENANT, &image).unwrap();
    let out = cd.ctr_in(
        OTHER_TENANT,
        [
            "run",
            "-d",
            "--runtime",
            runtime,
            &image,
            "neighbour",
            "/app.wasm",
            "3600",
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_neighbour_running(cd);
}

fn assert_neighbour_running(cd: &PrivateContainerd) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ls = cd.ctr_in(OTHER_TENANT, ["task", "ls"]);
        let text = String::from_utf8_lossy(&ls.stdout).into_owned();
        if text
            .lines()
            .any(|l| l.starts_with("neighbour") && l.contains("RUNNING"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the neighbour is not running:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove_neighbour(cd: &PrivateContainerd) {
    let out = cd.ctr_in(OTHER_TENANT, ["task", "kill", "-s", "SIGKILL", "neighbour"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ls = cd.ctr_in(OTHER_TENANT, ["task", "ls"]);
        if String::from_utf8_lossy(&ls.stdout).contains("STOPPED") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", output_text(&ls));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cd.task_delete_in(OTHER_TENANT, "neighbour").unwrap(), 137);
    let out = cd.ctr_in(OTHER_TENANT, ["containers", "rm", "neighbour"]);
    assert!(out.status.success(), "{}", output_text(&out));
}

/// A new container starts and runs normally, within `limit`.
fn new_container_runs(cd: &PrivateContainerd, runtime: &str, id: &str, limit: Duration) {
    let hello = cd
        .import(&fixture_image("hello", "wasip1/hello.wasm").unwrap())
        .unwrap();
    let started = Instant::now();
    let out = cd.run_rm(&with_runtime(runtime, &[]), &hello, id, &[]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from wasm"),
        "{}",
        output_text(&out)
    );
    assert!(took < limit, "{id} took {took:?} to run");
}

/// The compile workers of this instance's shims (their parent names the
/// instance's directory), as `pid cmdline`.
fn compile_workers(cd: &PrivateContainerd) -> Vec<String> {
    let all = processes();
    let dir = cd.dir().display().to_string();
    let parent_of = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 2..]
            .split(' ')
            .nth(1)?
            .parse::<i32>()
            .ok()
    };
    all.iter()
        .filter(|(_, cmdline)| cmdline.starts_with("wasishim-compile-worker"))
        .filter(|(pid, _)| {
            parent_of(*pid).is_some_and(|parent| {
                all.iter()
                    .any(|(p, cmdline)| *p == parent && cmdline.contains(&dir))
            })
        })
        .map(|(pid, cmdline)| format!("{pid} {cmdline}"))
        .collect()
}

/// A compile bomb fails its container's create, naming the limit, after the
/// compile timeout; meanwhile the neighbour runs on and a new container
/// (whose code is compiled too) starts. Its retry fails at once in the
/// per-node server, which remembers. A module over the size cap is refused
/// before it is compiled. No compile worker is left, and per-node, the
/// server is the one it was.
fn compile_bomb(cd: &PrivateContainerd, runtime: &str) {
    start_neighbour(cd, runtime);
    let servers = cd.shim_pids();
    let bomb = Image::new(&image_name("bomb")).wasm(bomb::default_compile_bomb());
    let bomb = cd.import(&bomb).unwrap();
    let flags = with_runtime(runtime, &[]);
    let (attack, took) = std::thread::scope(|s| {
        let attack = s.spawn(|| {
            let started = Instant::now();
            (cd.run_rm(&flags, &bomb, "bomb", &[]), started.elapsed())
        });
        std::thread::sleep(Duration::from_secs(1));
        assert!(!compile_workers(cd).is_empty(), "the bomb is not compiling");
        new_container_runs(cd, runtime, "during-bomb", Duration::from_secs(5));
        assert!(
            !attack.is_finished(),
            "the bomb ended before the new container ran"
        );
        assert_neighbour_running(cd);
        attack.join().unwrap()
    });
    let text = output_text(&attack);
    assert!(!attack.status.success(), "the bomb ran:\n{text}");
    assert!(
        text.contains(&format!(
            "compiling entrypoint /app.wasm took longer than {COMPILE_TIMEOUT_SECONDS} s, the limit of one compilation (WASISHIM_COMPILE_TIMEOUT_SECONDS"
        )),
        "{text}"
    );
    let timeout = Duration::from_secs(COMPILE_TIMEOUT_SECONDS);
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(10),
        "the bomb's create took {took:?}"
    );

    if runtime == PER_NODE {
        let started = Instant::now();
        let again = cd.run_rm(&flags, &bomb, "bomb-again", &[]);
        let text = output_text(&again);
        assert!(!again.status.success(), "{text}");
        assert!(text.contains("remembered from an attempt"), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    // A valid module padded with a custom section past the cap.
    let mut big = std::fs::read(wasishim_e2e::fixture("wasip1/hello.wasm")).unwrap();
    let pad = MAX_MODULE_BYTES + 1024;
    big.push(0); // custom section
    let mut size = pad + 2;
    while size >= 0x80 {
        big.push((size as u8 & 0x7f) | 0x80);
        size >>= 7;
    }
    big.push(size as u8);
    big.extend_from_slice(&[1, b'x']);
    big.resize(big.len() + pad, 0);
    let big = cd
        .import(&Image::new(&image_name("big")).wasm(big.clone()))
        .unwrap();
    let out = cd.run_rm(&flags, &big, "big", &[]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "bytes, more than the {MAX_MODULE_BYTES} bytes of WebAssembly this shim compiles (WASISHIM_MAX_MODULE_BYTES)"
        )),
        "{text}"
    );

    assert_neighbour_running(cd);
    new_container_runs(cd, runtime, "after-bomb", Duration::from_secs(5));
    assert_eq!(
        compile_workers(cd),
        Vec::<String>::new(),
        "compile workers left"
    );
    if runtime == PER_NODE {
        assert_eq!(cd.shim_pids(), servers, "the node server changed");
    }
    remove_neighbour(cd);
}

/// A free port on 127.0.0.1 (free when asked).
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Handlers that spin forever are stopped at the 2 s deadline, their
/// clients get 504, the server goes on; meanwhile the neighbour runs on and
/// a new container starts.
fn request_deadline(cd: &PrivateContainerd, runtime: &str) {
    start_neighbour(cd, runtime);
    let image = cd
        .import(&fixture_image("http", "wasip2/http.wasm").unwrap())
        .unwrap();
    let address = free_address();
    let listen = format!("WASISHIM_HTTP_ADDRESS={address}");
    let flags = with_runtime(
        runtime,
        &[
            "--net-host",
            "--env",
            &listen,
            "--env",
            "WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS=2",
        ],
    );
    cd.run_detached(&flags, &image, "deadline", &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let started = Instant::now();
    let spinning: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let request = "GET /spin HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
                wasishim_e2e::http::send(address, request.as_bytes())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    new_container_runs(cd, runtime, "during-spin", Duration::from_secs(5));
    assert_neighbour_running(cd);
    for client in spinning {
        let answer = client.join().unwrap().unwrap();
        assert_eq!(answer.status, 504, "{answer:?}");
        assert!(
            answer
                .body
                .contains("WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS"),
            "{answer:?}"
        );
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "the 504s took {took:?}");
    assert_eq!(wasishim_e2e::http::get(address, "/").status, 200);

    let out = cd.ctr(["task", "kill", "-s", "SIGKILL", "deadline"]);
    assert!(out.status.success(), "{}", output_text(&out));
    cd.wait_task_status("deadline", "STOPPED", Duration::from_secs(10))
        .unwrap();
    assert_eq!(cd.task_delete("deadline").unwrap(), 137);
    let out = cd.ctr(["containers", "rm", "deadline"]);
    assert!(out.status.success(), "{}", output_text(&out));
    remove_neighbour(cd);
}

fn node_compile_bomb(cd: &PrivateContainerd) {
    compile_bomb(cd, PER_NODE);
}

fn pod_compile_bomb(cd: &PrivateContainerd) {
    compile_bomb(cd, PER_POD);
}

fn node_request_deadline(cd: &PrivateContainerd) {
    request_deadline(cd, PER_NODE);
}

fn pod_request_deadline(cd: &PrivateContainerd) {
    request_deadline(cd, PER_POD);
}

fn run(version: &str, scenario: fn(&PrivateContainerd)) {
    // The harness (leak checks, `shim_pids`) follows the per-node shim; the
    // per-pod scenarios choose theirs with `--runtime`.
    std::env::set_var("WASISHIM_RUNTIME", PER_NODE);
    assert_eq!(wasishim_e2e::runtime(), PER_NODE);
    let cache = tempfile::tempdir().unwrap();
    shim_env(cache.path());
    let cd = PrivateContainerd::start(version).unwrap();
    scenario(&cd);
    cd.assert_no_leaks();
}

wasishim_e2e::scenarios!(on [v2_1 "2.1.9"]: [
    node_compile_bomb,
    pod_compile_bomb,
    node_request_deadline,
    pod_request_deadline,
]);
