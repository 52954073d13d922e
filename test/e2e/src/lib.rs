//! End-to-end test harness: a private containerd of a chosen version, driven
//! through its own `ctr`, running containers with the wasmtime shim.
//!
//! ```no_run
//! use wasishim_e2e::{runtime, PrivateContainerd};
//! let cd = PrivateContainerd::start("1.7.24")?;
//! let image = cd.import(&wasishim_e2e::fixture_image("hello", "wasip1/hello.wasm")?)?;
//! let out = cd.ctr(["run", "--rm", "--runtime", runtime(), &image, "hello-1"]);
//! assert!(String::from_utf8_lossy(&out.stdout).contains("hello from wasm"));
//! cd.assert_no_leaks();
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Every instance lives in its own temporary directory (root, state, socket,
//! config and log), so instances of different versions can run side by side.
//! Nothing is mocked: the containerd binaries come from
//! `test/containerd/install.sh` and the shim from the workspace's
//! `target/debug`.
//!
//! [`PrivateContainerd::start_with_cri`] starts an instance with the CRI
//! plugin enabled; the [`cri`] module drives it as kubelet would.
//!
//! Environment:
//! - `WASISHIM_CONTAINERD_<VERSION>_BIN` (dots as underscores, e.g.
//!   `WASISHIM_CONTAINERD_1_7_24_BIN`): directory holding that version's
//!   `containerd` and `ctr`.
//! - `WASISHIM_CACHE`: cache directory of `install.sh` (default `<repo>/.cache`).
//! - `WASISHIM_SHIM_DIR`: directory holding `containerd-shim-wasmtime-v1`
//!   (default `<target dir>/debug`).
//! - `WASISHIM_KEEP_TMP=1`: keep each instance's directory after the test.
//! - `WASISHIM_CNI_PLUGIN`, `WASISHIM_CNI_LOOPBACK`: other CNI plugin
//!   binaries for CRI instances (see [`cri`]).
//!
//! Where each part lives: `paths.rs` (binaries, fixtures, shared names),
//! `command.rs` (running commands with a time limit), `host.rs` (processes,
//! mounts, sockets, cgroups), `containerd.rs` (one instance),
//! `lifecycle.rs` (starting and cleaning up an instance), `ctr.rs` (`ctr`
//! calls), `leaks.rs` (leak checks), `cri_config.rs`, `cri_client.rs`,
//! `cri_log.rs`, `probes.rs` (CRI, gathered in [`cri`]), `http.rs` (an
//! HTTP/1.1 client), `registry.rs` (a local OCI registry) and `tasks.rs`
//! (kill and wait over containerd's gRPC API, timed).

mod command;
mod containerd;
pub mod cri;
mod cri_client;
mod cri_config;
mod cri_log;
mod ctr;
mod host;
pub mod http;
mod leaks;
mod lifecycle;
mod paths;
mod probes;
pub mod redis;
pub mod registry;
mod tasks;

pub use command::{exit_code, output_text, wait_with_timeout};
pub use containerd::PrivateContainerd;
pub use host::{
    cgroup_children, children_of, footprint, mounts_under, pids, process_mounts_under, processes,
    rss_by_mapping, Footprint,
};
pub use paths::{
    cache_dir, containerd_bin_dir, fixture, fixture_image, fixtures_dir, image_name, repo_root,
    runtime, shim_binary, shim_dir, CRI_NAMESPACE, CTR_TIMEOUT, NAMESPACE, NODE_IDLE_SECONDS,
    NODE_LOG_DIR, VERSIONS,
};
pub use tasks::{Exit, Tasks};
pub use wasishim_image::{Artifact, ArtifactForm, Image};

/// Declares one `#[test]` per containerd version for each scenario: modules
/// `v1_6`, `v1_7` and `v2_1` (or the ones given with `on [...]`) whose tests
/// call `run(version, scenario)` of the invoking file.
///
/// ```ignore
/// wasishim_e2e::scenarios!(hello, exit_codes);
/// wasishim_e2e::scenarios!(on [v1_7 "1.7.24", v2_1 "2.1.9"]: [pull, run_pod]);
/// ```
#[macro_export]
macro_rules! scenarios {
    (on [$($module:ident $version:literal),* $(,)?]: $names:tt) => {
        $( $crate::scenarios!(@module $module $version $names); )*
    };
    (@module $module:ident $version:literal [$($name:ident),* $(,)?]) => {
        mod $module {
            $(#[test] fn $name() { super::run($version, super::$name) })*
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::scenarios!(on [v1_6 "1.6.20", v1_7 "1.7.24", v2_1 "2.1.9"]: [$($name),*]);
    };
}

/// Starts containerd `version`, runs `scenario` on it and checks for leaks.
pub fn run_ctr(version: &str, scenario: fn(&PrivateContainerd)) {
    let cd = PrivateContainerd::start(version).unwrap();
    scenario(&cd);
    cd.assert_no_leaks();
}

/// Starts a CRI-enabled containerd `version`, runs `scenario` on it with a
/// CRI client and checks for leaks.
pub fn run_cri(version: &str, scenario: fn(&PrivateContainerd, &cri::Client)) {
    let cd = PrivateContainerd::start_with_cri(version).unwrap();
    {
        let cri = cri::Client::connect(&cd).unwrap();
        scenario(&cd, &cri);
    }
    cd.assert_no_leaks();
}

/// Like [`scenarios!`] for files with ctr and CRI scenarios: a `#[test]` per
/// scenario and containerd version (1.6, 1.7, 2.1), through [`run_ctr`] and
/// [`run_cri`].
///
/// ```ignore
/// wasishim_e2e::ctr_and_cri_scenarios!(ctr: [ctr_serves], cri: [cri_serves_in_pod]);
/// ```
#[macro_export]
macro_rules! ctr_and_cri_scenarios {
    (ctr: [$($c:ident),* $(,)?], cri: [$($k:ident),* $(,)?] $(,)?) => {
        $crate::ctr_and_cri_scenarios!(@module v1_6 "1.6.20" [$($c),*] [$($k),*]);
        $crate::ctr_and_cri_scenarios!(@module v1_7 "1.7.24" [$($c),*] [$($k),*]);
        $crate::ctr_and_cri_scenarios!(@module v2_1 "2.1.9" [$($c),*] [$($k),*]);
    };
    (@module $module:ident $version:literal [$($c:ident),*] [$($k:ident),*]) => {
        mod $module {
            $(#[test] fn $c() { $crate::run_ctr($version, super::$c) })*
            $(#[test] fn $k() { $crate::run_cri($version, super::$k) })*
        }
    };
}
