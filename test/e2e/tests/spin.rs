//! Spin applications end to end: test/fixtures/spin/spin.toml with its
//! components (built from test/fixtures/rust/spin with Spin's Rust SDK) in
//! an ordinary image's rootfs, `process.args[0]` the manifest, as SpinKube's
//! images are, served by the shim through `ctr` on the host's network and
//! through CRI in a pod.
//!
//! Every scenario is one function; `ctr_and_cri_scenarios!` makes a `#[test]` of it per
//! containerd version, each on its own containerd and ending with
//! [`PrivateContainerd::assert_no_leaks`]. The Redis scenario starts
//! Debian's `redis-server` on a free port of 127.0.0.1
//! (test/install-deps.sh installs it).
//!
//! The same app as Spin's OCI artifact (`spin registry push`'s form, written
//! by the image builder) is pushed to a loopback registry and pulled by ctr
//! and CRI (`*_spin_artifact`).
//!
//! Run one: `cargo test -p wasishim-e2e --test spin -- v2_1::ctr_spin_app`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use wasishim_e2e::cri::{self, api, Client};
use wasishim_e2e::http::{self, Answer};
use wasishim_e2e::http::{free_address, wait_listening, LISTEN_LIMIT};
use wasishim_e2e::redis::Redis;
use wasishim_e2e::registry::Registry;
use wasishim_e2e::{
    fixture, image_name, output_text, Artifact, ArtifactForm, Image, PrivateContainerd,
};
use wasishim_image::{MEDIA_SPIN_LOCKED_APP, MEDIA_WASM_CONTENT_LAYER};

/// How long an app may take to accept connections after its start.
/// Where an app listens in a pod unless told otherwise (as under SpinKube).
const POD_PORT: u16 = 80;

// ---------------------------------------------------------------- helpers

fn get(address: SocketAddr, path: &str) -> Answer {
    assert!(address.ip().is_loopback(), "tests only connect to loopback");
    http::get(address, path)
}

fn get_with(address: SocketAddr, path: &str, headers: &str) -> Answer {
    assert!(address.ip().is_loopback(), "tests only connect to loopback");
    http::get_with(address, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `method path` with `body`.
fn send(address: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
    assert!(address.ip().is_loopback(), "tests only connect to loopback");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http::send(address, request.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The fixture app as SpinKube packs it: spin.toml and the components at
/// the root of the rootfs, the manifest the entrypoint; `extra` files too.
fn app_image(name: &str, manifest: &str, extra: &[(&str, &str)]) -> Image {
    let mut image = Image::new(&image_name(name))
        .file("/spin.toml", manifest.as_bytes().to_vec(), 0o644)
        .entrypoint(["/spin.toml"]);
    for component in ["hello", "kv", "sqlite"] {
        let wasm = std::fs::read(fixture(&format!("spin/{component}.wasm"))).unwrap();
        image = image.file(&format!("/{component}.wasm"), wasm, 0o644);
    }
    for (path, text) in extra {
        image = image.file(path, text.as_bytes().to_vec(), 0o644);
    }
    image
}

fn fixture_manifest() -> String {
    std::fs::read_to_string(wasishim_e2e::repo_root().join("test/fixtures/spin/spin.toml")).unwrap()
}

/// `ctr run -d --net-host` of `image` listening on `address`, with `env`.
fn run_app(cd: &PrivateContainerd, image: &str, id: &str, address: SocketAddr, env: &[&str]) {
    run_app_with(cd, image, id, address, env, &[]);
}

/// [`run_app`] with more `ctr run` flags.
fn run_app_with(
    cd: &PrivateContainerd,
    image: &str,
    id: &str,
    address: SocketAddr,
    env: &[&str],
    more: &[&str],
) {
    let listen = format!("SPIN_HTTP_LISTEN_ADDR={address}");
    let mut flags = vec!["--net-host", "--env", &listen];
    for e in env {
        flags.extend(["--env", e]);
    }
    flags.extend(more);
    cd.run_detached(&flags, image, id, &[]).unwrap();
    wait_listening(address);
}

/// An HTTP server on 127.0.0.1 answering every request with 200
/// "upstream", for the outbound tests; ends with the test process.
fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = (&stream).write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream",
            );
        }
    });
    address
}

/// Waits until CRI knows `image`: an image `ctr images import` just
/// wrote reaches CRI's image store through an event, a moment later (a
/// create right after the import was refused with "not found" on 2.1.9).
fn wait_cri_image(cri: &Client, image: &str) {
    let start = Instant::now();
    while !cri.has_image(image).unwrap_or(false) {
        assert!(
            start.elapsed() < LISTEN_LIMIT,
            "CRI does not know image {image} {LISTEN_LIMIT:?} after its import"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- ctr

/// Routing, Spin's headers, variables with and without an override,
/// key-value state across requests, the outbound allow-list, 404s; the
/// second app (no override) answers alongside the first.
fn ctr_spin_app(cd: &PrivateContainerd) {
    let image = cd
        .import(&app_image("spin-app", &fixture_manifest(), &[]))
        .unwrap();
    let address = free_address();
    run_app(cd, &image, "spin-a", address, &["SPIN_VARIABLE_COLOUR=red"]);

    let answer = get(address, "/hello");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from spin\n")
    );
    assert_eq!(get(address, "/exact").status, 200);
    assert_eq!(get(address, "/exact/more").status, 404);
    assert_eq!(get(address, "/nothing").status, 404);
    assert_eq!(
        get(address, "/internal").status,
        404,
        "a private component was routed"
    );

    // A client's own spin-* header is replaced by Spin's.
    let answer = get_with(address, "/hello/headers?x=1", "spin-path-info: spoofed\r\n");
    assert_eq!(answer.status, 200, "{answer:?}");
    let lines: Vec<&str> = answer.body.lines().collect();
    let client = lines
        .iter()
        .find_map(|l| l.strip_prefix("spin-client-addr: "))
        .unwrap_or_default();
    assert!(client.starts_with("127.0.0.1:"), "{}", answer.body);
    assert_eq!(
        lines,
        vec![
            "spin-base-path: /",
            &format!("spin-client-addr: {client}")[..],
            "spin-component-route: /hello",
            "spin-full-url: http://test/hello/headers?x=1",
            "spin-matched-route: /hello/...",
            "spin-path-info: /headers",
            "spin-raw-component-route: /hello/...",
        ]
    );

    let variable = |address, name: &str| {
        let a = get(address, &format!("/hello/variable?name={name}"));
        (a.status, a.body)
    };
    assert_eq!(
        variable(address, "greeting"),
        (200, "hello from the manifest\n".into())
    );
    assert_eq!(
        variable(address, "message"),
        (200, "hello from the manifest, in red\n".into())
    );
    assert_eq!(variable(address, "nope").0, 500);

    // Key-value: state across requests (each a fresh instance).
    assert_eq!(send(address, "PUT", "/kv/k1", "v1").status, 200);
    let answer = get(address, "/kv/k1");
    assert_eq!((answer.status, answer.body.as_str()), (200, "v1"));
    assert_eq!(get(address, "/kv/missing").status, 404);
    let answer = get(address, "/kv/k1?store=other");
    assert_eq!(
        answer.status, 500,
        "a store the component does not list: {answer:?}"
    );
    assert!(
        answer.body.contains("cannot open store other"),
        "{answer:?}"
    );
    assert_eq!(send(address, "DELETE", "/kv/k1", "").status, 200);
    assert_eq!(get(address, "/kv/k1").status, 404);

    // wasi:keyvalue (draft 2, as Spin 3 gives it): the same stores by label.
    assert_eq!(send(address, "PUT", "/kv/both", "spin api").status, 200);
    let answer = get(address, "/kv/both?api=wasi");
    assert_eq!((answer.status, answer.body.as_str()), (200, "spin api"));
    let incr = |by: i64| {
        let a = send(
            address,
            "POST",
            &format!("/kv/n?api=wasi&op=incr&by={by}"),
            "",
        );
        (a.status, a.body)
    };
    assert_eq!(incr(5), (200, "5\n".into()));
    assert_eq!(incr(-2), (200, "3\n".into()));
    let answer = get(address, "/kv/n");
    assert_eq!((answer.status, answer.body.as_str()), (200, "3"));
    let answer = send(address, "PUT", "/kv/c?api=wasi&op=cas", "final");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "conflict, then swapped\n")
    );
    assert_eq!(get(address, "/kv/c?api=wasi").body, "final");
    let answer = get(address, "/kv/k?api=wasi&store=other");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (500, "cannot open bucket other: Error::AccessDenied\n")
    );

    // Outbound: allowed to http://127.0.0.1:*, not to other hosts.
    let up = upstream();
    let answer = get(
        address,
        &format!("/hello/fetch?url=http://127.0.0.1:{}/", up.port()),
    );
    assert_eq!((answer.status, answer.body.as_str()), (200, "200 upstream"));
    let answer = get(
        address,
        &format!("/hello/fetch?url=http://localhost:{}/", up.port()),
    );
    assert_eq!(answer.status, 502, "not allowed, yet: {answer:?}");

    // A second app without the override, and with its own store, counted
    // against its memory limit.
    let second = free_address();
    let limit = (16u64 << 20).to_string();
    run_app_with(
        cd,
        &image,
        "spin-b",
        second,
        &[],
        &["--memory-limit", &limit],
    );
    assert_eq!(
        variable(second, "message"),
        (200, "hello from the manifest, in blue\n".into())
    );
    assert_eq!(send(address, "PUT", "/kv/mine", "a").status, 200);
    assert_eq!(
        get(second, "/kv/mine").status,
        404,
        "in-memory stores are per container"
    );
    // 1 MiB values: the 16 MiB store would take 15; the limit, with the
    // request's instance beside them, fewer.
    let mib = "m".repeat(1 << 20);
    let full = (0..16)
        .find(|i| send(second, "PUT", &format!("/kv/big{i}"), &mib).status != 200)
        .unwrap_or(16);
    assert!(
        full < 15,
        "the in-memory store took {full} MiB in a container limited to 16 MiB"
    );
    let answer = send(second, "PUT", "/kv/one-more", &mib);
    assert_eq!(answer.status, 500, "{answer:?}");
    assert!(!answer.body.contains("store is full"), "{answer:?}");
    for i in 0..full {
        assert_eq!(
            send(second, "DELETE", &format!("/kv/big{i}"), "").status,
            200
        );
    }
    assert_eq!(send(second, "PUT", "/kv/one-more", &mib).status, 200);

    assert_eq!(cd.kill_and_remove("spin-b"), 137);
    assert_eq!(get(address, "/hello").status, 200);
    assert_eq!(cd.kill_and_remove("spin-a"), 137);
}

/// An app whose component imports SQLite is refused at create, naming the
/// interface; one with a bad manifest too; an app started next serves.
fn ctr_refuses_unsupported(cd: &PrivateContainerd) {
    let manifest = "spin_manifest_version = 2\n[application]\nname = \"db\"\n\
        [[trigger.http]]\nroute = \"/...\"\ncomponent = \"db\"\n\
        [component.db]\nsource = \"sqlite.wasm\"\n";
    let image = cd.import(&app_image("spin-sqlite", manifest, &[])).unwrap();
    let address = free_address();
    let listen = format!("SPIN_HTTP_LISTEN_ADDR={address}");
    let out = cd.run_rm(
        &["--net-host", "--env", &listen],
        &image,
        "spin-sqlite",
        &[],
    );
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("imports fermyon:spin/sqlite@2.0.0, which wasishim does not provide"),
        "{text}"
    );
    let _ = cd.ctr(["containers", "rm", "spin-sqlite"]);

    let bad = "spin_manifest_version = 2\n[[trigger.redis]]\ncomponent = \"c\"\n[component.c]\nsource = \"hello.wasm\"\n";
    let image = cd
        .import(&app_image("spin-redis-trigger", bad, &[]))
        .unwrap();
    let out = cd.run_rm(&["--net-host", "--env", &listen], &image, "spin-bad", &[]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("wasishim runs the HTTP trigger only"),
        "{text}"
    );
    let _ = cd.ctr(["containers", "rm", "spin-bad"]);

    let image = cd
        .import(&app_image("spin-app", &fixture_manifest(), &[]))
        .unwrap();
    run_app(cd, &image, "spin-ok", address, &[]);
    assert_eq!(get(address, "/hello").status, 200);
    assert_eq!(cd.kill_and_remove("spin-ok"), 137);
}

/// Two containers whose runtime config puts the default store in one Redis
/// share its keys.
fn ctr_redis_shared(cd: &PrivateContainerd) {
    let redis = Redis::start();
    let config = format!(
        "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://{}\"\n",
        redis.address
    );
    let image = cd
        .import(&app_image(
            "spin-redis",
            &fixture_manifest(),
            &[("/runtime-config.toml", &config)],
        ))
        .unwrap();
    let (a, b) = (free_address(), free_address());
    run_app(cd, &image, "spin-r1", a, &[]);
    run_app(cd, &image, "spin-r2", b, &[]);
    assert_eq!(send(a, "PUT", "/kv/shared-key", "from a").status, 200);
    let answer = get(b, "/kv/shared-key");
    assert_eq!((answer.status, answer.body.as_str()), (200, "from a"));
    assert_eq!(send(b, "DELETE", "/kv/shared-key", "").status, 200);
    assert_eq!(get(a, "/kv/shared-key").status, 404);
    // wasi:keyvalue's atomics on Redis: the compare-and-swap script and
    // INCRBY, seen by the other container.
    let answer = send(a, "PUT", "/kv/swapped?api=wasi&op=cas", "by a");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "conflict, then swapped\n")
    );
    assert_eq!(get(b, "/kv/swapped?api=wasi").body, "by a");
    assert_eq!(
        send(a, "POST", "/kv/count?api=wasi&op=incr&by=2", "").body,
        "2\n"
    );
    assert_eq!(
        send(b, "POST", "/kv/count?api=wasi&op=incr&by=3", "").body,
        "5\n"
    );
    assert_eq!(cd.kill_and_remove("spin-r1"), 137);
    assert_eq!(cd.kill_and_remove("spin-r2"), 137);
    drop(redis);
}

// ---------------------------------------------------------------- CRI

/// A pod serving the app on its default 0.0.0.0:80: routes, variables
/// overridden in the container's env, key-value; StopContainer ends it 0.
fn cri_spin_in_pod(cd: &PrivateContainerd, cri: &Client) {
    let image = cri::import(cd, &app_image("spin-app", &fixture_manifest(), &[])).unwrap();
    let pod = cri.run_pod(cri.pod_config("spin")).unwrap();
    let netns = pod.netns.clone().expect("the pod's network namespace");
    let config = cri::with_env(
        cri.container_config("spin", &image),
        &[("SPIN_VARIABLE_COLOUR", "green")],
    );
    let id = cri.run_container(&pod, config).unwrap();
    cri.wait_state(&id, api::ContainerState::ContainerRunning, LISTEN_LIMIT)
        .unwrap();
    let address = SocketAddr::from(([127, 0, 0, 1], POD_PORT));
    let answers = cri::in_netns(&netns, move || {
        wait_listening(address);
        let put = send(address, "PUT", "/kv/p", "pod value");
        [
            get(address, "/hello"),
            get(address, "/hello/variable?name=message"),
            put,
            get(address, "/kv/p"),
            get(address, "/nothing"),
        ]
        .map(|a| (a.status, a.body))
    })
    .unwrap();
    assert_eq!(answers[0], (200, "hello from spin\n".to_string()));
    assert_eq!(
        answers[1],
        (200, "hello from the manifest, in green\n".to_string())
    );
    assert_eq!(answers[2].0, 200);
    assert_eq!(answers[3], (200, "pod value".to_string()));
    assert_eq!(answers[4].0, 404);

    // A refused app in the same pod says why; the first keeps serving.
    let manifest = "spin_manifest_version = 2\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"db\"\n[component.db]\nsource = \"sqlite.wasm\"\n";
    let bad = cri::import(cd, &app_image("spin-sqlite", manifest, &[])).unwrap();
    wait_cri_image(cri, &bad);
    let error = cri.refused(&pod, cri.container_config("spin-sqlite", &bad));
    assert!(error.contains("fermyon:spin/sqlite@2.0.0"), "{error}");
    let answer = cri::in_netns(&netns, move || get(address, "/hello").status).unwrap();
    assert_eq!(answer, 200);

    cri.stop_container(&id, 10).unwrap();
    let status = cri.container_status(&id).unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}");
    cri.remove_pod(&pod.id).unwrap();
}

// ---------------------------------------------------------------- Spin's OCI artifact

/// The fixture app as `spin registry push` writes it (the image builder's
/// `spin_artifact`), named `repository` on `registry`.
fn spin_artifact(registry: &Registry, repository: &str) -> Artifact {
    wasishim_image::spin_artifact(
        &registry.name(repository),
        &fixture_manifest(),
        &fixture("spin"),
    )
    .unwrap()
}

/// A Spin artifact whose locked app is `locked` (bytes as they are) beside
/// the hello component's layer.
fn artifact_with_locked_app(registry: &Registry, repository: &str, locked: &str) -> Artifact {
    let hello = std::fs::read(fixture("spin/hello.wasm")).unwrap();
    Artifact::new(&registry.name(repository), ArtifactForm::Spin)
        .layer(MEDIA_WASM_CONTENT_LAYER, hello, None)
        .layer(MEDIA_SPIN_LOCKED_APP, locked.as_bytes().to_vec(), None)
}

/// The locked app of `artifact` with `edit` applied, as text.
fn edited_locked_app(artifact: &Artifact, edit: impl Fn(&mut serde_json::Value)) -> String {
    let blobs = artifact.blobs().unwrap();
    let (_, bytes, _) = blobs
        .layers
        .iter()
        .find(|l| l.0 == MEDIA_SPIN_LOCKED_APP)
        .unwrap();
    let mut locked: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    edit(&mut locked);
    locked.to_string()
}

/// Pushes `artifact` and pulls it into `namespace` with ctr.
fn push_and_pull(cd: &PrivateContainerd, registry: &Registry, namespace: &str, a: &Artifact) {
    let name = registry.push(a).unwrap();
    let out = cd.ctr_in(namespace, ["images", "pull", "--plain-http", &name]);
    assert!(
        out.status.success(),
        "ctr images pull: {}",
        output_text(&out)
    );
}

/// The artifact form through `ctr run`: pulled from the loopback registry,
/// run with `/` as its command (its config has no Entrypoint, as Spin's);
/// routing, a private component, variables with and without an override,
/// key-value state. Then malformed artifacts, each refused at create with
/// its reason while the app goes on serving: a locked app that is not JSON,
/// one naming a layer the image lacks, one with another trigger, and a
/// component layer gone from the content store.
fn ctr_spin_artifact(cd: &PrivateContainerd) {
    let registry = Registry::start().unwrap();
    let app = spin_artifact(&registry, "spin-artifact");
    push_and_pull(cd, &registry, wasishim_e2e::NAMESPACE, &app);
    let address = free_address();
    let listen = format!("SPIN_HTTP_LISTEN_ADDR={address}");
    let flags = [
        "--net-host",
        "--env",
        &listen,
        "--env",
        "SPIN_VARIABLE_COLOUR=red",
    ];
    cd.run_detached(&flags, app.name(), "spin-oci", &["/"])
        .unwrap();
    wait_listening(address);
    let answer = get(address, "/hello");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from spin\n")
    );
    assert_eq!(get(address, "/exact").status, 200);
    assert_eq!(get(address, "/internal").status, 404);
    assert_eq!(get(address, "/nothing").status, 404);
    let answer = get(address, "/hello/variable?name=message");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from the manifest, in red\n")
    );
    assert_eq!(send(address, "PUT", "/kv/k", "oci").status, 200);
    let answer = get(address, "/kv/k");
    assert_eq!((answer.status, answer.body.as_str()), (200, "oci"));

    let missing_layer = format!("sha256:{}", "0".repeat(64));
    let cases = [
        (
            artifact_with_locked_app(&registry, "spin-not-json", "{ not json"),
            "is not a valid locked app".to_string(),
        ),
        (
            artifact_with_locked_app(
                &registry,
                "spin-no-layer",
                &edited_locked_app(&app, |l| {
                    l["components"][0]["source"]["digest"] = missing_layer.clone().into()
                }),
            ),
            format!("names component layer {missing_layer}, which is not a layer of the image"),
        ),
        (
            artifact_with_locked_app(
                &registry,
                "spin-redis-trigger",
                &edited_locked_app(&app, |l| l["triggers"][0]["trigger_type"] = "redis".into()),
            ),
            "wasishim runs the HTTP trigger only".to_string(),
        ),
    ];
    let second = free_address();
    let listen = format!("SPIN_HTTP_LISTEN_ADDR={second}");
    for (i, (artifact, needle)) in cases.iter().enumerate() {
        push_and_pull(cd, &registry, wasishim_e2e::NAMESPACE, artifact);
        let id = format!("spin-bad-{i}");
        let out = cd.run_rm(
            &["--net-host", "--env", &listen],
            artifact.name(),
            &id,
            &["/"],
        );
        let text = output_text(&out);
        assert!(!out.status.success(), "{}: {text}", artifact.name());
        assert!(
            text.contains(needle.as_str()),
            "{}: no {needle:?} in {text}",
            artifact.name()
        );
        let _ = cd.ctr(["containers", "rm", &id]);
        assert_eq!(get(address, "/hello").status, 200);
    }
    // A component's layer taken out of the content store (a pull cut short).
    let gone = spin_artifact_with_own_layer(&registry, "spin-partial");
    push_and_pull(cd, &registry, wasishim_e2e::NAMESPACE, &gone.0);
    let out = cd.ctr(["content", "rm", &gone.1]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = cd.run_rm(
        &["--net-host", "--env", &listen],
        gone.0.name(),
        "spin-partial",
        &["/"],
    );
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("is not in containerd's content store: pull the image again"),
        "{text}"
    );
    let _ = cd.ctr(["containers", "rm", "spin-partial"]);
    assert_eq!(get(address, "/hello").status, 200);
    assert_eq!(cd.kill_and_remove("spin-oci"), 137);
}

/// A Spin artifact whose one component layer is in no other image (the
/// kv component, padded by a custom section), and that layer's digest.
fn spin_artifact_with_own_layer(registry: &Registry, repository: &str) -> (Artifact, String) {
    let mut kv = std::fs::read(fixture("spin/kv.wasm")).unwrap();
    // A custom section (id 0, name "pad"): the same component, another digest.
    kv.extend_from_slice(&[0, 4, 3, b'p', b'a', b'd']);
    let digest = wasishim_image::digest(&kv);
    let locked = serde_json::json!({
        "spin_lock_version": 0,
        "triggers": [{"id": "t", "trigger_type": "http", "trigger_config": {"component": "kv", "route": "/kv/..."}}],
        "components": [{"id": "kv", "source": {"content_type": "application/wasm", "digest": digest},
                        "metadata": {"key_value_stores": ["default"]}}],
    });
    let artifact = Artifact::new(&registry.name(repository), ArtifactForm::Spin)
        .layer(MEDIA_WASM_CONTENT_LAYER, kv, None)
        .layer(MEDIA_SPIN_LOCKED_APP, locked.to_string().into_bytes(), None);
    (artifact, digest)
}

/// The artifact form in a pod, pulled by CRI from the loopback registry:
/// routes, variables overridden in the container's env, key-value; a
/// malformed artifact in the same pod is refused with its reason and the
/// app goes on serving; StopContainer ends it 0, nothing leaks.
fn cri_spin_artifact(cd: &PrivateContainerd, cri: &Client) {
    let registry = Registry::start().unwrap();
    cri::allow_plain_http_registry(cd, &registry.host()).unwrap();
    let app = spin_artifact(&registry, "spin-artifact");
    let image = registry.push(&app).unwrap();
    let bad = artifact_with_locked_app(&registry, "spin-not-json", "[1, 2");
    let bad_image = registry.push(&bad).unwrap();
    if cd.version().starts_with("1.6") {
        // containerd 1.6 before 1.6.25 cannot pull layers that are not
        // file system changes; an image imported without unpacking runs.
        let err = cri.pull_image(&image).unwrap_err();
        assert!(
            format!("{err:#}").contains("mismatched image rootfs and manifest layers"),
            "{err:#}"
        );
        for a in [&app, &bad] {
            let dir = tempfile::tempdir().unwrap();
            let tar = dir.path().join("spin.tar");
            a.write_layout_tar(&tar).unwrap();
            let tar = tar.to_string_lossy().into_owned();
            let out = cd.ctr_in(
                wasishim_e2e::CRI_NAMESPACE,
                ["images", "import", "--no-unpack", &tar],
            );
            assert!(out.status.success(), "{}", output_text(&out));
        }
    } else {
        for name in [&image, &bad_image] {
            cri.pull_image(name)
                .unwrap_or_else(|e| panic!("PullImage {name}: {e:#}"));
        }
    }
    let pod = cri.run_pod(cri.pod_config("spin-oci")).unwrap();
    let netns = pod.netns.clone().expect("the pod's network namespace");
    let mut config = cri::with_env(
        cri.container_config("spin", &image),
        &[("SPIN_VARIABLE_COLOUR", "green")],
    );
    config.command = vec!["/".to_string()];
    let id = cri.run_container(&pod, config).unwrap();
    cri.wait_state(&id, api::ContainerState::ContainerRunning, LISTEN_LIMIT)
        .unwrap();
    let address = SocketAddr::from(([127, 0, 0, 1], POD_PORT));
    let answers = cri::in_netns(&netns, move || {
        wait_listening(address);
        let put = send(address, "PUT", "/kv/p", "pod value");
        [
            get(address, "/hello"),
            get(address, "/hello/variable?name=message"),
            put,
            get(address, "/kv/p"),
            get(address, "/internal"),
        ]
        .map(|a| (a.status, a.body))
    })
    .unwrap();
    assert_eq!(answers[0], (200, "hello from spin\n".to_string()));
    assert_eq!(
        answers[1],
        (200, "hello from the manifest, in green\n".to_string())
    );
    assert_eq!(answers[2].0, 200);
    assert_eq!(answers[3], (200, "pod value".to_string()));
    assert_eq!(answers[4].0, 404);

    let mut config = cri.container_config("spin-bad", &bad_image);
    config.command = vec!["/".to_string()];
    let error = cri.refused(&pod, config);
    assert!(error.contains("is not a valid locked app"), "{error}");
    assert!(
        error.contains(&bad_image),
        "the error names no image: {error}"
    );
    let answer = cri::in_netns(&netns, move || get(address, "/hello").status).unwrap();
    assert_eq!(answer, 200);

    cri.stop_container(&id, 10).unwrap();
    let status = cri.container_status(&id).unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}");
    cri.remove_pod(&pod.id).unwrap();
}

// ---------------------------------------------------------------- tests

wasishim_e2e::ctr_and_cri_scenarios!(
    ctr: [ctr_spin_app, ctr_refuses_unsupported, ctr_redis_shared],
    cri: [cri_spin_in_pod, cri_spin_artifact],
);

/// ctr runs the artifact form where containerd pulls it (1.7.7+, 2.x; 1.6
/// from 1.6.25): `ctr run` of containerd 1.6.20 unpacks first, which fails
/// for layers that are not file system changes.
mod artifact_ctr {
    #[test]
    fn v1_7() {
        wasishim_e2e::run_ctr("1.7.24", super::ctr_spin_artifact)
    }
    #[test]
    fn v2_1() {
        wasishim_e2e::run_ctr("2.1.9", super::ctr_spin_artifact)
    }
}
