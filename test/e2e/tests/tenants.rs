//! One tenant's attack leaves the others alone: a compile bomb and a module
//! over the size cap fail that container's create, an HTTP handler that
//! never answers is stopped at its request deadline (504), a guest growing
//! tables stops at its memory limit, a module declaring more tables than its
//! pool share is refused, clients holding half-sent requests are capped and
//! timed out. While each attack runs, a second tenant's container (in
//! another namespace) keeps running and a new container starts normally.
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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use wasishim_e2e::http::free_address;
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

/// SIGKILLs detached container `id`, then deletes it (exit 137) and removes it.
/// Starts the wasi:http fixture as detached container `id` on the host's
/// network with extra `env`, and waits until it listens; its address.
fn start_http_server(cd: &PrivateContainerd, runtime: &str, id: &str, env: &[&str]) -> SocketAddr {
    let image = cd
        .import(&fixture_image("http", "wasip2/http.wasm").unwrap())
        .unwrap();
    let address = free_address();
    let listen = format!("WASISHIM_HTTP_ADDRESS={address}");
    let mut flags = vec!["--net-host", "--env", &listen];
    for e in env {
        flags.extend(["--env", e]);
    }
    cd.run_detached(&with_runtime(runtime, &flags), &image, id, &[])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(50));
    }
    address
}

/// Handlers that spin forever are stopped at the 2 s deadline, their
/// clients get 504, the server goes on; meanwhile the neighbour runs on and
/// a new container starts.
fn request_deadline(cd: &PrivateContainerd, runtime: &str) {
    start_neighbour(cd, runtime);
    let address = start_http_server(
        cd,
        runtime,
        "deadline",
        &["WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS=2"],
    );

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

    assert_eq!(cd.kill_and_remove("deadline"), 137);
    remove_neighbour(cd);
}

/// A guest with a 64 MiB limit growing ten tables by 2^20 funcrefs (8 MiB of
/// host memory each) gets seven: the limit counts tables beside its stack
/// and instance state, so it exits 7 (the grows that succeeded). Code
/// declaring more tables than a module may have, or (per-node) than one
/// container's share of the instance pool, is refused at create with the
/// reason. The neighbour runs on and a new container starts.
fn tables(cd: &PrivateContainerd, runtime: &str) {
    start_neighbour(cd, runtime);
    let grow: String = (0..10)
        .map(|i| {
            format!(
                "(if (i32.ne (table.grow $t{i} (ref.null func) (i32.const 1048576)) (i32.const -1)) (then (local.set $n (i32.add (local.get $n) (i32.const 1)))))"
            )
        })
        .collect();
    let declared: String = (0..10)
        .map(|i| format!("(table $t{i} 0 funcref)"))
        .collect();
    let grower = format!(
        r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            {declared}
            (memory (export "memory") 1)
            (func (export "_start") (local $n i32) {grow} (call $exit (local.get $n))))"#
    );
    let grower = cd
        .import(&Image::new(&image_name("tables")).wasm(grower.into_bytes()))
        .unwrap();
    let flags = with_runtime(runtime, &["--memory-limit", "67108864"]);
    let out = cd.run_rm(&flags, &grower, "tables", &[]);
    assert_eq!(
        wasishim_e2e::exit_code(&out.status),
        7,
        "{}",
        output_text(&out)
    );
    assert_neighbour_running(cd);

    // Over what the binary format allows in one module: the validator's
    // error, at create.
    let many: String = (0..101).map(|_| "(table 0 funcref)").collect();
    let many = format!("(module {many} (func (export \"_start\")))");
    let many = cd
        .import(&Image::new(&image_name("many-tables")).wasm(many.into_bytes()))
        .unwrap();
    let out = cd.run_rm(&with_runtime(runtime, &[]), &many, "many-tables", &[]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("entrypoint /app.wasm is not valid WebAssembly")
            && text.contains("tables count exceeds limit of 100"),
        "{text}"
    );
    if runtime == PER_NODE {
        // Four instances of a 100-table module: more than one container's
        // 363 tables of the node's pool, refused at create naming the share.
        let tables: String = (0..100).map(|_| "(table 0 funcref)").collect();
        let four = format!(
            "(component (core module $m {tables}) (core instance (instantiate $m)) (core instance (instantiate $m)) (core instance (instantiate $m)) (core instance (instantiate $m)))"
        );
        let four = cd
            .import(&Image::new(&image_name("share-tables")).wasm(four.into_bytes()))
            .unwrap();
        let out = cd.run_rm(&with_runtime(runtime, &[]), &four, "share-tables", &[]);
        let text = output_text(&out);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("declares 400 tables, more than the 363 one container may have in this shim's instance pool"),
            "{text}"
        );
    }
    new_container_runs(cd, runtime, "after-tables", Duration::from_secs(5));
    assert_neighbour_running(cd);
    remove_neighbour(cd);
}

/// Connections that send half a request header: past the connection cap a
/// client gets 503 with Retry-After at once; each half request is closed at
/// the header timeout; then the server answers normally. The neighbour runs
/// on and a new container starts meanwhile.
fn http_clients(cd: &PrivateContainerd, runtime: &str) {
    start_neighbour(cd, runtime);
    let address = start_http_server(
        cd,
        runtime,
        "clients",
        &[
            "WASISHIM_HTTP_MAX_CONNECTIONS=20",
            "WASISHIM_HTTP_HEADER_TIMEOUT_SECONDS=2",
        ],
    );

    // The readiness probe's bare connection counts against the cap until
    // the server has accepted it and seen it close, which under load can
    // come after the half requests below: the cap would then refuse the
    // 20th and take the 21st. A served request first settles it (FIFO).
    assert_eq!(wasishim_e2e::http::get(address, "/").status, 200);
    let started = Instant::now();
    let mut half: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(address).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(address).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    let answer = answer.to_ascii_lowercase();
    assert!(
        answer.starts_with("http/1.1 503") && answer.contains("retry-after: "),
        "the 21st connection got: {answer:?}"
    );
    new_container_runs(cd, runtime, "during-clients", Duration::from_secs(5));
    assert_neighbour_running(cd);
    for c in &mut half {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        // Closed by the server (EOF, or a reset): never a timeout here.
        if let Err(e) = c.read_to_end(&mut rest) {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a half request is still open after {:?}",
                started.elapsed()
            );
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "half requests closed after {took:?}"
    );
    assert_eq!(wasishim_e2e::http::get(address, "/").status, 200);

    assert_eq!(cd.kill_and_remove("clients"), 137);
    remove_neighbour(cd);
}

/// `bytes` with a custom section naming `nonce` appended: the same code
/// under a different digest, so it is compiled anew, not found in the cache.
fn with_nonce(mut bytes: Vec<u8>, nonce: u8) -> Vec<u8> {
    bytes.extend_from_slice(&[0, 2, 1, nonce]);
    bytes
}

/// With one compile slot on the node, a tenant whose three new modules (compile
/// bombs) queue for it does not keep another tenant's new module waiting
/// behind all three: the slot freed by the first bomb goes to the other
/// tenant, whose container runs before the bombs' timeouts add up.
fn node_fair_compile_slots(cd: &PrivateContainerd) {
    cd.set_env("WASISHIM_COMPILE_CONCURRENCY", Some("1"));
    cd.restart().unwrap();
    start_neighbour(cd, PER_NODE);
    let bombs: Vec<String> = (0..3)
        .map(|n| {
            let bytes = with_nonce(bomb::default_compile_bomb(), n);
            let image = Image::new(&image_name(&format!("bomb-{n}"))).wasm(bytes);
            cd.import(&image).unwrap()
        })
        .collect();
    let hello = std::fs::read(wasishim_e2e::fixture("wasip1/hello.wasm")).unwrap();
    let hello = Image::new(&image_name("hello-new")).wasm(with_nonce(hello, 9));
    let hello = cd.import_in(OTHER_TENANT, &hello).unwrap();
    let flags = with_runtime(PER_NODE, &[]);
    let (other, waited) = std::thread::scope(|s| {
        let attacks: Vec<_> = bombs
            .iter()
            .enumerate()
            .map(|(n, bomb)| {
                let flags = &flags;
                let attack = s.spawn(move || cd.run_rm(flags, bomb, &format!("bomb-{n}"), &[]));
                // Queued in this order.
                std::thread::sleep(Duration::from_millis(300));
                attack
            })
            .collect();
        let started = Instant::now();
        let other = cd.ctr_in(
            OTHER_TENANT,
            [
                "run",
                "--rm",
                "--runtime",
                PER_NODE,
                &hello,
                "hello-new",
                "/app.wasm",
            ],
        );
        let waited = started.elapsed();
        for attack in attacks {
            let out = attack.join().unwrap();
            assert!(!out.status.success(), "a bomb ran: {}", output_text(&out));
        }
        (other, waited)
    });
    assert!(other.status.success(), "{}", output_text(&other));
    assert!(
        String::from_utf8_lossy(&other.stdout).contains("hello from wasm"),
        "{}",
        output_text(&other)
    );
    // Its turn came when the first bomb's compile timed out, not after the
    // three (each holds the slot for the compile timeout).
    assert!(
        waited < Duration::from_secs(COMPILE_TIMEOUT_SECONDS + 4),
        "the other tenant waited {waited:?}"
    );
    eprintln!("the other tenant's new container ran after {waited:?}");
    assert_neighbour_running(cd);
    // The server also precompiles each imported image in the background
    // (image_events.rs), one at a time: the bombs' precompiles may still be
    // timing out, but every worker ends within its compile timeout.
    let bound = Duration::from_secs(4 * (COMPILE_TIMEOUT_SECONDS + 2));
    let start = Instant::now();
    while !compile_workers(cd).is_empty() && start.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        compile_workers(cd),
        Vec::<String>::new(),
        "compile workers left after {bound:?}"
    );
    remove_neighbour(cd);
}

/// Scenario functions running `scenario` against one runtime.
macro_rules! on_runtime {
    ($($name:ident => $scenario:ident($runtime:ident)),* $(,)?) => {
        $(fn $name(cd: &PrivateContainerd) {
            $scenario(cd, $runtime);
        })*
    };
}

on_runtime!(
    node_tables => tables(PER_NODE),
    pod_tables => tables(PER_POD),
    node_http_clients => http_clients(PER_NODE),
    pod_http_clients => http_clients(PER_POD),
    node_compile_bomb => compile_bomb(PER_NODE),
    pod_compile_bomb => compile_bomb(PER_POD),
    node_request_deadline => request_deadline(PER_NODE),
    pod_request_deadline => request_deadline(PER_POD),
);

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
    node_tables,
    pod_tables,
    node_http_clients,
    pod_http_clients,
    node_fair_compile_slots,
]);
