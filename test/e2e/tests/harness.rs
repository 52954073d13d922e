//! Self-test of the harness: needs containerd but not the wasmtime shim.
//! Starts each containerd version, imports a fixture image, restarts it and
//! checks that it cleans up after itself.

use std::path::PathBuf;
use std::time::Duration;

use wasishim_e2e::{fixture_image, mounts_under, PrivateContainerd, VERSIONS};

fn check_version(version: &str) {
    let cd = PrivateContainerd::start(version).unwrap();
    let server = cd.server_version().unwrap();
    assert!(
        server.starts_with(version),
        "containerd {version} reports server version {server}"
    );
    assert!(
        cd.log().contains("containerd successfully booted"),
        "{}",
        cd.log()
    );

    let image = fixture_image("hello", "wasip1/hello.wasm").unwrap();
    let (_, written) = image.to_layout_tar().unwrap();
    let name = cd.import(&image).unwrap();
    assert!(cd.images().unwrap().contains(&name));
    // What containerd stored, not what the test asked for: the image's
    // manifest digest in `ctr images ls` is the one the builder wrote.
    let out = cd.ctr(["images", "ls"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let row: Vec<&str> = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("no {name} in `ctr images ls`:\n{listing}"))
        .split_whitespace()
        .collect();
    assert!(
        row.contains(&written.manifest_digest.as_str()),
        "{name} has not the manifest digest {} in:\n{listing}",
        written.manifest_digest
    );
    assert!(cd.tasks().unwrap().is_empty());
    assert!(cd.containers().unwrap().is_empty());

    // A container without a task: created and removed through ctr.
    let out = cd.ctr([
        "containers",
        "create",
        "--runtime",
        wasishim_e2e::runtime(),
        &name,
        "idle",
    ]);
    assert!(out.status.success(), "{}", wasishim_e2e::output_text(&out));
    assert_eq!(cd.containers().unwrap(), ["idle"]);

    let pid = cd.pid().unwrap();
    cd.restart().unwrap();
    assert_ne!(cd.pid().unwrap(), pid);
    assert!(
        cd.images().unwrap().contains(&name),
        "images survive a restart"
    );
    assert_eq!(
        cd.containers().unwrap(),
        ["idle"],
        "containers survive a restart"
    );
    let out = cd.ctr(["containers", "rm", "idle"]);
    assert!(out.status.success(), "{}", wasishim_e2e::output_text(&out));

    cd.assert_no_leaks();
    let dir: PathBuf = cd.dir().to_path_buf();
    cd.stop().unwrap();
    let out = cd.ctr_timeout(["version"], Duration::from_secs(5));
    assert!(
        !out.status.success(),
        "ctr still reaches a stopped containerd"
    );
    drop(cd);
    assert!(!dir.exists(), "{} not removed", dir.display());
    assert!(mounts_under(&dir).is_empty());
}

#[test]
fn containerd_1_6_20() {
    check_version(VERSIONS[0]);
}

#[test]
fn containerd_1_7_24() {
    check_version(VERSIONS[1]);
}

#[test]
fn containerd_2_1_9() {
    check_version(VERSIONS[2]);
}

#[test]
fn versions_run_side_by_side() {
    let all: Vec<PrivateContainerd> = VERSIONS
        .iter()
        .map(|v| PrivateContainerd::start(v).unwrap())
        .collect();
    for cd in &all {
        assert!(cd.server_version().unwrap().starts_with(cd.version()));
    }
}
