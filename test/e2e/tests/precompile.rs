//! Compile before the first pod, against real containerd 1.6 and 2.1:
//! - `wasishim precompile IMAGE` compiles an imported image's entrypoint
//!   into the cache directory the shims use; the first container of the
//!   image then starts from the cache. Proven without timing: containerd's
//!   environment gives the shims a compile memory limit no compilation fits
//!   in (`WASISHIM_COMPILE_MEMORY_BYTES=1`), so the container fails before
//!   the precompile and runs after it (either binary);
//! - the same for a Wasm OCI artifact pulled from a loopback registry
//!   (containerd 2.1; 1.6.20 cannot pull one);
//! - its errors: an image containerd does not have, an image whose
//!   entrypoint is a Linux executable, an image without an entrypoint;
//! - per-node (`WASISHIM_RUNTIME=io.containerd.wasmtimed.v1`): with the
//!   server running, `ctr images import` of a Wasm image gets it compiled
//!   in the background (its metrics count the compilation), and its first
//!   container is a cache hit (no further cache miss); a non-Wasm image is
//!   logged as such. With the per-pod binary this scenario only checks that
//!   nothing is precompiled behind its back (no server lives between pods).
//!
//! Needs `wasishim` built into `target/debug` next to the shims
//! (`cargo build -p wasishim -p containerd-shim-wasmtime-v1 -p containerd-shim-wasmtimed-v1`).
//! Run: `cargo test -p wasishim-e2e --test precompile -- --test-threads=1`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use wasishim_e2e::http::free_address;

use wasishim_e2e::registry::Registry;
use wasishim_e2e::{
    fixture, fixture_image, image_name, output_text, runtime, shim_dir, Artifact, ArtifactForm,
    Image, PrivateContainerd, NAMESPACE, NODE_LOG_DIR,
};

const PER_NODE: &str = "io.containerd.wasmtimed.v1";
const LIMIT: Duration = Duration::from_secs(60);

fn run(version: &str, scenario: fn(&PrivateContainerd)) {
    wasishim_e2e::run_ctr(version, scenario)
}

wasishim_e2e::scenarios!(on [v1_6 "1.6.20", v2_1 "2.1.9"]: [
    precompile_makes_a_cached_first_start,
    precompile_errors,
    import_is_precompiled_by_the_node_server,
]);

/// `wasishim precompile ARGS` for `cd`, with `cache` as the shims' cache.
fn precompile(cd: &PrivateContainerd, cache: &Path, args: &[&str]) -> Output {
    let wasishim = shim_dir().join("wasishim");
    assert!(
        wasishim.exists(),
        "{} is missing: cargo build -p wasishim",
        wasishim.display()
    );
    Command::new(wasishim)
        .arg("precompile")
        .args(args)
        .arg("--namespace")
        .arg(NAMESPACE)
        .arg("--address")
        .arg(cd.address())
        .env("WASISHIM_CACHE_DIR", cache)
        .output()
        .unwrap()
}

/// Files in the cache directory that hold compiled code (not lock files).
fn artifacts(cache: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => walk(&path, n),
                Ok(m) if m.len() > 4096 => *n += 1,
                _ => {}
            }
        }
    }
    let mut n = 0;
    walk(cache, &mut n);
    n
}

fn precompile_makes_a_cached_first_start(cd: &PrivateContainerd) {
    let cache = tempfile::tempdir().unwrap();
    cd.set_env(
        "WASISHIM_CACHE_DIR",
        Some(&cache.path().display().to_string()),
    );
    // No compilation fits: a container runs only from the cache.
    cd.set_env("WASISHIM_COMPILE_MEMORY_BYTES", Some("1"));
    cd.restart().unwrap();
    let image = cd
        .import(&fixture_image("precompiled", "wasip1/hello.wasm").unwrap())
        .unwrap();

    let out = cd.run_rm(&[], &image, "before", &[]);
    assert!(
        !out.status.success(),
        "compiled despite the limit:\n{}",
        output_text(&out)
    );

    let out = precompile(cd, cache.path(), &[&image]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("compiled /app.wasm of image"), "{text}");
    assert!(artifacts(cache.path()) >= 1, "no artifact in the cache");

    let out = cd.run_rm(&[], &image, "after", &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from wasm"),
        "{}",
        output_text(&out)
    );

    let out = precompile(cd, cache.path(), &[&image]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("is compiled already"),
        "{}",
        output_text(&out)
    );

    if !cd.version().starts_with("1.6") {
        // containerd 1.6.20 cannot pull a Wasm artifact (its layers are not
        // file system changes; README, Wasm OCI artifacts).
        precompile_pulled_artifact(cd, cache.path());
    }
    cd.set_env("WASISHIM_COMPILE_MEMORY_BYTES", None);
    cd.set_env("WASISHIM_CACHE_DIR", None);
}

/// The same with a Wasm OCI artifact pulled from a registry (layer
/// `application/wasm`, as `wkg oci push` writes): it fails before the
/// precompile and runs after it.
fn precompile_pulled_artifact(cd: &PrivateContainerd, cache: &Path) {
    let registry = Registry::start().unwrap();
    // A module of its own (a custom section), so that nothing of the test
    // above is its cache entry.
    let mut wasm = std::fs::read(fixture("wasip1/hello.wasm")).unwrap();
    wasm.extend_from_slice(&[0, 7, 6, b'p', b'u', b'l', b'l', b'e', b'd']);
    let artifact = Artifact::new(
        &registry.name("precompiled-artifact"),
        ArtifactForm::OciWasm,
    )
    .wasm(wasm);
    let name = registry.push(&artifact).unwrap();
    let out = cd.ctr(["images", "pull", "--plain-http", &name]);
    assert!(out.status.success(), "{}", output_text(&out));

    let out = cd.run_rm(&[], &name, "pulled-before", &["hello"]);
    assert!(
        !out.status.success(),
        "compiled despite the limit:\n{}",
        output_text(&out)
    );
    let out = precompile(cd, cache, &[&name]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("compiled "),
        "{}",
        output_text(&out)
    );
    let out = cd.run_rm(&[], &name, "pulled-after", &["hello"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("hello from wasm"),
        "{}",
        output_text(&out)
    );
}

fn precompile_errors(cd: &PrivateContainerd) {
    let cache = tempfile::tempdir().unwrap();
    let fails_with = |args: &[&str], wanted: &str| {
        let out = precompile(cd, cache.path(), args);
        let text = output_text(&out);
        assert!(
            !out.status.success(),
            "precompile {args:?} succeeded:\n{text}"
        );
        assert!(text.contains(wanted), "no {wanted:?} in:\n{text}");
    };
    let missing = image_name("never-imported");
    fails_with(
        &[&missing],
        &format!(
            "image {missing} is not in containerd's namespace {NAMESPACE}: pull or import it first"
        ),
    );

    let native = Image::new(&image_name("native-tool"))
        .file(
            "/bin/tool",
            b"\x7fELF\x02\x01\x01\0not really".to_vec(),
            0o755,
        )
        .entrypoint(["/bin/tool"]);
    let native = cd.import(&native).unwrap();
    fails_with(
        &[&native],
        &format!(
            "image {native} is not a Wasm image: its entrypoint /bin/tool is an ELF executable"
        ),
    );

    let elsewhere = fixture_image("elsewhere", "wasip1/hello.wasm")
        .unwrap()
        .entrypoint(["/missing.wasm"]);
    let elsewhere = cd.import(&elsewhere).unwrap();
    fails_with(
        &[&elsewhere],
        "entrypoint /missing.wasm not found in the image's rootfs",
    );
    fails_with(&[], "needs an image name");
    assert_eq!(artifacts(cache.path()), 0);
}

/// The per-node server's metrics text ("" while it does not answer).
fn scrape(address: SocketAddr) -> String {
    assert!(address.ip().is_loopback());
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(5)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `series` reaches `least`; returns the text.
fn wait_for(address: SocketAddr, series: &str, least: f64) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(address);
        if value(&text, series) >= least {
            return text;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{series} did not reach {least} in {LIMIT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The per-node server's logs (every server of this machine: the line
/// looked for names this test's image).
fn node_logs() -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(NODE_LOG_DIR)
        .into_iter()
        .flatten()
        .flatten()
    {
        text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    text
}

fn import_is_precompiled_by_the_node_server(cd: &PrivateContainerd) {
    let address = free_address();
    cd.set_env("WASISHIM_METRICS_ADDRESS", Some(&address.to_string()));
    let cache = tempfile::tempdir().unwrap();
    cd.set_env(
        "WASISHIM_CACHE_DIR",
        Some(&cache.path().display().to_string()),
    );
    cd.restart().unwrap();
    // A running container keeps the server alive.
    let sleeper = cd
        .import(&fixture_image("sleep", "wasip1/sleep.wasm").unwrap())
        .unwrap();
    cd.run_detached(&[], &sleeper, "keeper", &["/app.wasm", "3600"])
        .unwrap();
    cd.wait_task_status("keeper", "RUNNING", LIMIT).unwrap();

    if runtime() == PER_NODE {
        let before = wait_for(address, "wasishim_compiles_total", 1.0);
        let compiled = value(&before, "wasishim_compiles_total");
        let image = cd
            .import(&fixture_image("pulled", "wasip1/hello.wasm").unwrap())
            .unwrap();
        let text = wait_for(address, "wasishim_compiles_total", compiled + 1.0);
        let misses = value(&text, "wasishim_cache_misses_total");

        let out = cd.run_rm(&[], &image, "first", &[]);
        assert!(out.status.success(), "{}", output_text(&out));
        let after = scrape(address);
        assert_eq!(
            value(&after, "wasishim_cache_misses_total"),
            misses,
            "the first start compiled:\n{after}"
        );
        assert_eq!(value(&after, "wasishim_compiles_total"), compiled + 1.0);

        let native = Image::new(&image_name("native-pulled"))
            .file(
                "/bin/tool",
                b"\x7fELF\x02\x01\x01\0not really".to_vec(),
                0o755,
            )
            .entrypoint(["/bin/tool"]);
        let native = cd.import(&native).unwrap();
        let wanted = format!("image {native} is not a Wasm image");
        let start = Instant::now();
        while !node_logs().contains(&wanted) {
            assert!(start.elapsed() < LIMIT, "no {wanted:?} in the server's log");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let out = cd.ctr(["task", "kill", "-s", "SIGKILL", "keeper"]);
    assert!(out.status.success(), "{}", output_text(&out));
    cd.wait_task_status("keeper", "STOPPED", LIMIT).unwrap();
    cd.task_delete("keeper").unwrap();
    let out = cd.ctr(["containers", "rm", "keeper"]);
    assert!(out.status.success(), "{}", output_text(&out));
    cd.set_env("WASISHIM_METRICS_ADDRESS", None);
    cd.set_env("WASISHIM_CACHE_DIR", None);
}
