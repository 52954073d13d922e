//! The WASI cloud interfaces of a plain component end to end: the fixture
//! test/fixtures/rust/cloud (a `wasi:http` server built with wit-bindgen on
//! the host's WIT; test/fixtures/rust/cloudcmd is a command doing the same) reads `wasi:config/store` from `WASI_CONFIG_*` variables
//! and a mounted directory laid out as a Kubernetes ConfigMap volume, and
//! keeps `wasi:keyvalue` state in memory or in a Redis server (Debian's
//! `redis-server`, started by the test on a free port of 127.0.0.1).
//!
//! Every scenario is one function; `ctr_and_cri_scenarios!` makes a
//! `#[test]` of it per containerd version, each on its own containerd and
//! ending with [`PrivateContainerd::assert_no_leaks`]. With
//! `WASISHIM_RUNTIME=io.containerd.wasmtimed.v1` the pods share the per-node
//! shim and its pooled Redis connection, and stay apart by namespace.
//!
//! Run one: `cargo test -p wasishim-e2e --test cloud -- v2_1::ctr_config_and_memory`.

use std::net::SocketAddr;
use std::path::Path;

use wasishim_e2e::cri::{self, api, Client, Pod};
use wasishim_e2e::http::{self, Answer};
use wasishim_e2e::http::{free_address, wait_listening, LISTEN_LIMIT};
use wasishim_e2e::redis::Redis;
use wasishim_e2e::{fixture_image, output_text, PrivateContainerd};

/// Where the server listens in a pod (`WASISHIM_HTTP_ADDRESS`'s default).
const POD_PORT: u16 = 8080;

// ---------------------------------------------------------------- helpers

fn get(address: SocketAddr, path: &str) -> Answer {
    assert!(address.ip().is_loopback(), "tests only connect to loopback");
    http::get(address, path)
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

fn pair(answer: Answer) -> (u16, String) {
    (answer.status, answer.body)
}

fn image() -> wasishim_e2e::Image {
    fixture_image("cloud", "wasip2/cloud.wasm").unwrap()
}

/// A directory laid out as kubelet mounts a ConfigMap: the values in a
/// timestamped directory, `..data` a symlink to it, each key a symlink
/// into `..data`.
fn config_map(values: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let stamp = dir.path().join("..2026_12_03_17_00_00.000000001");
    std::fs::create_dir(&stamp).unwrap();
    for (key, value) in values {
        std::fs::write(stamp.join(key), value).unwrap();
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key)).unwrap();
    }
    std::os::unix::fs::symlink(stamp.file_name().unwrap(), dir.path().join("..data")).unwrap();
    dir
}

/// `ctr run -d --net-host` of the fixture on `address`, with `env` and
/// `/config` mounted from `config` if given.
fn run(
    cd: &PrivateContainerd,
    image: &str,
    id: &str,
    address: SocketAddr,
    env: &[String],
    config: Option<&Path>,
) {
    let listen = format!("WASISHIM_HTTP_ADDRESS={address}");
    let mut flags: Vec<String> = vec!["--net-host".into(), "--env".into(), listen];
    for e in env {
        flags.extend(["--env".to_string(), e.clone()]);
    }
    if let Some(dir) = config {
        flags.push("--mount".into());
        flags.push(format!(
            "type=bind,src={},dst=/config,options=rbind:ro",
            dir.display()
        ));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cd.run_detached(&flags, image, id, &[]).unwrap();
    wait_listening(address);
}

// ---------------------------------------------------------------- ctr

/// Config from a ConfigMap-like mount and `WASI_CONFIG_*` (which wins);
/// key-value in memory: state across requests, counters, listing, batch,
/// buckets apart, and a second container with a store of its own.
fn ctr_config_and_memory(cd: &PrivateContainerd) {
    let image = cd.import(&image()).unwrap();
    let config = config_map(&[("colour", "blue"), ("greeting", "from the file")]);
    let address = free_address();
    let env = [
        "WASISHIM_CONFIG_DIR=/config".to_string(),
        "WASI_CONFIG_greeting=from the env".to_string(),
        "WASI_CONFIG_size=7".to_string(),
    ];
    run(cd, &image, "cloud-a", address, &env, Some(config.path()));

    assert_eq!(
        pair(get(address, "/config?key=colour")),
        (200, "blue".into())
    );
    assert_eq!(
        pair(get(address, "/config?key=greeting")),
        (200, "from the env".into())
    );
    assert_eq!(get(address, "/config?key=..data").status, 404);
    assert_eq!(
        pair(get(address, "/config-all")),
        (200, "colour=blue\ngreeting=from the env\nsize=7\n".into())
    );

    assert_eq!(
        send(address, "POST", "/kv?bucket=b&key=k1", "v1").status,
        200
    );
    assert_eq!(
        pair(get(address, "/kv?bucket=b&key=k1")),
        (200, "v1".into())
    );
    assert_eq!(
        get(address, "/kv?bucket=other&key=k1").status,
        404,
        "buckets are apart"
    );
    assert_eq!(get(address, "/kv?bucket=b&key=nope").status, 404);
    assert_eq!(
        pair(send(address, "POST", "/incr?bucket=b&key=n&by=5", "")),
        (200, "5\n".into())
    );
    assert_eq!(
        pair(send(address, "POST", "/incr?bucket=b&key=n&by=2", "")),
        (200, "7\n".into())
    );
    assert_eq!(
        pair(get(address, "/keys?bucket=b")),
        (200, "k1\nn\n".into())
    );
    assert_eq!(
        pair(send(address, "POST", "/batch?bucket=c", "")),
        (200, "a=1 b=2 c=none\n".into())
    );
    assert_eq!(pair(get(address, "/keys?bucket=c")), (200, "".into()));
    let answer = send(address, "POST", "/kv?bucket=a/b&key=k", "x");
    assert_eq!(answer.status, 500, "{answer:?}");
    assert!(answer.body.contains("bucket identifier"), "{answer:?}");
    assert_eq!(
        send(address, "DELETE", "/kv?bucket=b&key=k1", "").status,
        200
    );
    assert_eq!(get(address, "/kv?bucket=b&key=k1").status, 404);

    // Another container: its own memory store, no config.
    let second = free_address();
    run(cd, &image, "cloud-b", second, &[], None);
    assert_eq!(
        get(second, "/kv?bucket=b&key=n").status,
        404,
        "memory stores are per container"
    );
    assert_eq!(pair(get(second, "/config-all")), (200, "".into()));
    assert_eq!(cd.kill_and_remove("cloud-b"), 137);
    assert_eq!(pair(get(address, "/kv?bucket=b&key=n")), (200, "7".into()));
    assert_eq!(cd.kill_and_remove("cloud-a"), 137);
}

/// Two containers given one Redis share their buckets (keys under
/// `wasishim/-/` for containers without a pod); a Redis URL that is not
/// one and a config directory over 1 MiB are refused at create, saying so;
/// a container started next serves.
fn ctr_redis_and_refusals(cd: &PrivateContainerd) {
    let redis = Redis::start();
    let image = cd.import(&image()).unwrap();
    let url = format!("WASISHIM_KEYVALUE_REDIS_URL={}", redis.url());
    let (a, b) = (free_address(), free_address());
    run(cd, &image, "cloud-r1", a, std::slice::from_ref(&url), None);
    run(cd, &image, "cloud-r2", b, std::slice::from_ref(&url), None);
    assert_eq!(
        send(a, "POST", "/kv?bucket=s&key=shared", "from a").status,
        200
    );
    assert_eq!(
        pair(get(b, "/kv?bucket=s&key=shared")),
        (200, "from a".into())
    );
    assert_eq!(redis.get("wasishim/-/s/shared").as_deref(), Some("from a"));
    assert_eq!(
        pair(send(b, "POST", "/incr?bucket=s&key=n&by=3", "")),
        (200, "3\n".into())
    );
    assert_eq!(
        pair(send(a, "POST", "/incr?bucket=s&key=n&by=1", "")),
        (200, "4\n".into())
    );
    assert_eq!(pair(get(a, "/keys?bucket=s")), (200, "n\nshared\n".into()));
    assert_eq!(
        pair(send(a, "POST", "/batch?bucket=s", "")),
        (200, "a=1 b=2 c=none\n".into())
    );
    assert_eq!(send(b, "DELETE", "/kv?bucket=s&key=shared", "").status, 200);
    assert_eq!(get(a, "/kv?bucket=s&key=shared").status, 404);
    assert_eq!(cd.kill_and_remove("cloud-r1"), 137);
    // The other container's connection is the pooled one: still serving.
    assert_eq!(pair(get(b, "/kv?bucket=s&key=n")), (200, "4".into()));
    assert_eq!(cd.kill_and_remove("cloud-r2"), 137);

    let address = free_address();
    let listen = format!("WASISHIM_HTTP_ADDRESS={address}");
    let out = cd.run_rm(
        &[
            "--net-host",
            "--env",
            &listen,
            "--env",
            "WASISHIM_KEYVALUE_REDIS_URL=http://x",
        ],
        &image,
        "cloud-bad-url",
        &[],
    );
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("WASISHIM_KEYVALUE_REDIS_URL=http://x is not a Redis URL"),
        "{text}"
    );
    let _ = cd.ctr(["containers", "rm", "cloud-bad-url"]);

    let big = "x".repeat(600 << 10);
    let config = config_map(&[("one", &big), ("two", &big)]);
    let mount = format!(
        "type=bind,src={},dst=/config,options=rbind:ro",
        config.path().display()
    );
    let out = cd.run_rm(
        &[
            "--net-host",
            "--env",
            &listen,
            "--env",
            "WASISHIM_CONFIG_DIR=/config",
            "--mount",
            &mount,
        ],
        &image,
        "cloud-big",
        &[],
    );
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "config directory /config (WASISHIM_CONFIG_DIR) holds more than 1048576 bytes"
        ),
        "{text}"
    );
    let _ = cd.ctr(["containers", "rm", "cloud-big"]);

    run(cd, &image, "cloud-ok", address, &[], None);
    assert_eq!(send(address, "POST", "/kv?bucket=b&key=k", "v").status, 200);
    assert_eq!(cd.kill_and_remove("cloud-ok"), 137);
    drop(redis);
}

/// A `wasi:cli` command gets the interfaces too (test/fixtures/rust/cloudcmd):
/// config from the env, a counter in memory that starts over with each
/// container, and one in Redis that goes on from the previous container.
fn ctr_command(cd: &PrivateContainerd) {
    let redis = Redis::start();
    let image = cd
        .import(&fixture_image("cloudcmd", "wasip2/cloudcmd.wasm").unwrap())
        .unwrap();
    let url = format!("WASISHIM_KEYVALUE_REDIS_URL={}", redis.url());
    let run = |id: &str, env: &[&str]| {
        let mut flags = Vec::new();
        for e in env {
            flags.extend(["--env", e]);
        }
        let out = cd.run_rm(&flags, &image, id, &[]);
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(
        run("cmd-1", &["WASI_CONFIG_greeting=hello"]),
        "config greeting=hello\ncount 1 2\n"
    );
    assert_eq!(run("cmd-2", &[]), "config greeting unset\ncount 1 2\n");
    assert_eq!(run("cmd-3", &[&url]), "config greeting unset\ncount 1 2\n");
    assert_eq!(run("cmd-4", &[&url]), "config greeting unset\ncount 3 4\n");
    assert_eq!(redis.get("wasishim/-/runs/count").as_deref(), Some("4"));
    drop(redis);
}

// ---------------------------------------------------------------- CRI

fn pod_in(cri: &Client, name: &str, namespace: &str) -> Pod {
    let mut config = cri.pod_config(name);
    if let Some(metadata) = config.metadata.as_mut() {
        metadata.namespace = namespace.to_string();
    }
    cri.run_pod(config).unwrap()
}

/// The fixture in `pod`, on the shared Redis, with `/config` mounted from
/// `config` if given; waits until it serves.
fn serve_in(cri: &Client, pod: &Pod, image: &str, redis: &Redis, config: Option<&Path>) -> String {
    let url = redis.url();
    let mut env = vec![
        ("WASISHIM_KEYVALUE_REDIS_URL", url.as_str()),
        ("WASI_CONFIG_pod", pod.id.as_str()),
    ];
    if config.is_some() {
        env.push(("WASISHIM_CONFIG_DIR", "/config"));
    }
    let mut container = cri::with_env(cri.container_config("cloud", image), &env);
    if let Some(dir) = config {
        container.mounts = vec![api::Mount {
            container_path: "/config".to_string(),
            host_path: dir.display().to_string(),
            readonly: true,
            ..Default::default()
        }];
    }
    let id = cri.run_container(pod, container).unwrap();
    cri.wait_state(&id, api::ContainerState::ContainerRunning, LISTEN_LIMIT)
        .unwrap();
    let netns = pod.netns.clone().expect("the pod's network namespace");
    cri::in_netns(&netns, || {
        wait_listening(SocketAddr::from(([127, 0, 0, 1], POD_PORT)))
    })
    .unwrap();
    id
}

/// Runs `f` on the pod's server.
fn on<T: Send + 'static>(pod: &Pod, f: impl FnOnce(SocketAddr) -> T + Send + 'static) -> T {
    let netns = pod.netns.clone().expect("the pod's network namespace");
    cri::in_netns(&netns, move || {
        f(SocketAddr::from(([127, 0, 0, 1], POD_PORT)))
    })
    .unwrap()
}

/// Pods on one Redis: two in namespace team-a share their buckets, one in
/// team-b sees none of theirs and keeps its own under the same key; config
/// from a mounted ConfigMap; a container whose config directory is too big
/// is refused, and the others keep serving.
fn cri_pods_share_by_namespace(cd: &PrivateContainerd, cri: &Client) {
    let redis = Redis::start();
    let image = cri::import(cd, &image()).unwrap();
    let config = config_map(&[("colour", "green")]);
    let a1 = pod_in(cri, "cloud-a1", "team-a");
    let a2 = pod_in(cri, "cloud-a2", "team-a");
    let b1 = pod_in(cri, "cloud-b1", "team-b");
    let ids = [
        serve_in(cri, &a1, &image, &redis, Some(config.path())),
        serve_in(cri, &a2, &image, &redis, None),
        serve_in(cri, &b1, &image, &redis, None),
    ];

    assert_eq!(
        on(&a1, |s| pair(get(s, "/config?key=colour"))),
        (200, "green".into())
    );
    let a1_id = a1.id.clone();
    assert_eq!(on(&a1, |s| pair(get(s, "/config?key=pod"))), (200, a1_id));
    assert_eq!(
        on(&a1, |s| send(s, "POST", "/kv?bucket=b&key=k", "team a")
            .status),
        200
    );
    assert_eq!(
        on(&a2, |s| pair(get(s, "/kv?bucket=b&key=k"))),
        (200, "team a".into())
    );
    assert_eq!(
        on(&b1, |s| get(s, "/kv?bucket=b&key=k").status),
        404,
        "another namespace's key"
    );
    assert_eq!(
        on(&b1, |s| send(s, "POST", "/kv?bucket=b&key=k", "team b")
            .status),
        200
    );
    assert_eq!(
        on(&a2, |s| pair(get(s, "/kv?bucket=b&key=k"))),
        (200, "team a".into())
    );
    assert_eq!(
        on(&b1, |s| pair(get(s, "/keys?bucket=b"))),
        (200, "k\n".into())
    );
    assert_eq!(redis.get("wasishim/team-a/b/k").as_deref(), Some("team a"));
    assert_eq!(redis.get("wasishim/team-b/b/k").as_deref(), Some("team b"));

    let big = "x".repeat(600 << 10);
    let too_big = config_map(&[("one", &big), ("two", &big)]);
    let mut container = cri::with_env(
        cri.container_config("cloud-big", &image),
        &[("WASISHIM_CONFIG_DIR", "/config")],
    );
    container.mounts = vec![api::Mount {
        container_path: "/config".to_string(),
        host_path: too_big.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let error = cri.refused(&b1, container);
    assert!(error.contains("holds more than 1048576 bytes"), "{error}");
    assert_eq!(
        on(&b1, |s| pair(get(s, "/kv?bucket=b&key=k"))),
        (200, "team b".into())
    );

    for id in &ids {
        cri.stop_container(id, 10).unwrap();
    }
    for pod in [a1, a2, b1] {
        cri.remove_pod(&pod.id).unwrap();
    }
    drop(redis);
}

// ---------------------------------------------------------------- tests

wasishim_e2e::ctr_and_cri_scenarios!(
    ctr: [ctr_config_and_memory, ctr_redis_and_refusals, ctr_command],
    cri: [cri_pods_share_by_namespace],
);
