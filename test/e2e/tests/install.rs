//! The node installer against real containerd: `wasishim install` edits a
//! private containerd's config, copies the shims into a private prefix and
//! stops the running containerd (`--pid`: SIGTERM, as for a containerd no
//! systemd runs); containerd is started again with that prefix first on its
//! PATH, `wasishim status` sees the runtimes loaded, a CRI pod
//! runs through the installed runtime handler `wasmtime`, and `wasishim
//! uninstall` leaves the config byte-identical to before.
//!
//! The config starts as the harness's CRI config with the `wasmtime` and
//! `runc` runtimes taken out, a comment and another runtime (`crun`) put in:
//! on 1.x the install must declare runc again (containerd 1.x refuses a
//! runtimes table without its default runtime), on 2.x it must not need to.
//!
//! Needs what `tests/cri.rs` needs, plus `wasishim` and both shims built
//! into `target/debug` (`cargo build -p wasishim -p containerd-shim-wasmtime-v1
//! -p containerd-shim-wasmtimed-v1`).
//!
//! Run: `cargo test -p wasishim-e2e --test install -- --test-threads=1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use wasishim_e2e::cri::{self, Client};
use wasishim_e2e::{fixture_image, output_text, shim_dir, PrivateContainerd};

/// The tests point the harness at their own shim directory through the
/// environment; one at a time.
static ENV: Mutex<()> = Mutex::new(());

const SHIMS: [&str; 2] = [
    "containerd-shim-wasmtime-v1",
    "containerd-shim-wasmtimed-v1",
];

/// The harness config with runc and wasmtime replaced by a commented `crun`.
fn config_without_runtimes(harness: &str) -> String {
    let lines: Vec<&str> = harness.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let header = |name: &str| {
            trimmed.starts_with("[plugins.") && trimmed.ends_with(&format!(".runtimes.{name}]"))
        };
        if header("runc") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push(format!(
                "{indent}# Another project's runtime; the install leaves it alone."
            ));
            out.push(line.replace(".runtimes.runc]", ".runtimes.crun]"));
            out.push(lines[i + 1].to_string());
            i += 2;
        } else if header(cri::HANDLER) {
            i += 2;
        } else {
            out.push(line.to_string());
            i += 1;
        }
    }
    let text = out.join("\n") + "\n";
    assert!(
        text.contains(".runtimes.crun]") && !text.contains(".runtimes.wasmtime]"),
        "the harness config changed shape:\n{harness}"
    );
    text
}

fn wasishim(target: &Path, args: &[&str]) -> Output {
    let bin = target.join("wasishim");
    assert!(
        bin.exists(),
        "{} missing: build it with `cargo build -p wasishim`",
        bin.display()
    );
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(version: &str, scenario: fn(&str)) {
    let _one = ENV.lock().unwrap_or_else(|e| e.into_inner());
    scenario(version);
}

/// Install, install again, run a pod, uninstall.
fn install_run_uninstall(version: &str) {
    let target: PathBuf = shim_dir();
    for s in SHIMS {
        assert!(
            target.join(s).exists(),
            "{s} missing in {}: build the shims",
            target.display()
        );
    }
    let node = tempfile::tempdir().unwrap();
    let prefix = node.path().join("usr/local");
    let bin = prefix.join("bin");
    let state = node.path().join("install.json");
    // The instance's containerd gets the private prefix first on its PATH,
    // so the pod can only run through the installed copy.
    std::env::set_var("WASISHIM_SHIM_DIR", &bin);
    if std::env::var_os("WASISHIM_CNI_PLUGIN").is_none() {
        std::env::set_var("WASISHIM_CNI_PLUGIN", target.join(cri::CNI_PLUGIN));
    }
    let cd = PrivateContainerd::start_with_cri(version).unwrap();
    std::env::remove_var("WASISHIM_SHIM_DIR");
    cd.stop().unwrap();

    let config = cd.config_path();
    let before = config_without_runtimes(&fs::read_to_string(&config).unwrap());
    fs::write(&config, &before).unwrap();
    // Running without the runtimes, for the install to stop it (--pid).
    cd.restart().unwrap();
    let pid = cd.pid().unwrap().to_string();
    let (config_s, prefix_s, state_s, target_s) = (
        config.display().to_string(),
        prefix.display().to_string(),
        state.display().to_string(),
        target.display().to_string(),
    );
    let install = |restart: &[&str]| {
        let mut args = vec![
            "install", "--config", &config_s, "--prefix", &prefix_s, "--from", &target_s,
            "--state", &state_s,
        ];
        args.extend_from_slice(restart);
        wasishim(&target, &args)
    };

    let out = install(&["--pid", &pid]);
    assert!(out.status.success(), "{}", output_text(&out));
    let expected = if version.starts_with("1.") {
        "declared runtimes wasmtime, wasmtimed, runc in"
    } else {
        "declared runtimes wasmtime, wasmtimed in"
    };
    assert!(stdout(&out).contains(expected), "{}", output_text(&out));
    assert!(
        stdout(&out).contains(&format!("stopped containerd (pid {pid}) with SIGTERM")),
        "{}",
        output_text(&out)
    );
    for s in SHIMS {
        assert_eq!(
            fs::read(bin.join(s)).unwrap(),
            fs::read(target.join(s)).unwrap(),
            "{s} not copied"
        );
    }
    let installed = fs::read(&config).unwrap();
    assert!(
        installed.starts_with(before.as_bytes()),
        "rest of the file changed"
    );

    let again = install(&["--no-restart"]);
    assert!(again.status.success(), "{}", output_text(&again));
    assert!(
        stdout(&again).contains("already installed"),
        "{}",
        output_text(&again)
    );
    assert_eq!(
        fs::read(&config).unwrap(),
        installed,
        "second install changed the config"
    );

    cd.restart().unwrap();
    let status = wasishim(
        &target,
        &[
            "status",
            "--config",
            &config_s,
            "--prefix",
            &prefix_s,
            "--state",
            &state_s,
            "--address",
            &cd.address().display().to_string(),
        ],
    );
    let text = stdout(&status);
    assert!(status.status.success(), "{}", output_text(&status));
    assert!(
        text.contains("wasmtime: yes (io.containerd.wasmtime.v1)")
            && text.contains("wasmtimed: yes (io.containerd.wasmtimed.v1)")
            && text.contains("version 0.1.0"),
        "{text}"
    );

    {
        let client = Client::connect(&cd).unwrap();
        let image =
            cri::import(&cd, &fixture_image("hello", "wasip1/hello.wasm").unwrap()).unwrap();
        let pod = client.run_pod(client.pod_config("installed")).unwrap();
        let id = client
            .run_container(&pod, client.container_config("hello", &image))
            .unwrap();
        let exit = client.wait_exited(&id, Duration::from_secs(20)).unwrap();
        assert_eq!(exit.exit_code, 0, "{exit:?}");
        let lines = cri::wait_log_line(
            &pod.log_dir().join("hello.log"),
            "hello from wasm",
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(lines, ["hello from wasm"]);
        // The pod's shim runs from the installed copy.
        let (pid, _) = wasishim_e2e::processes()
            .into_iter()
            .find(|(_, cmd)| cmd.contains("containerd-shim-wasmtime-v1") && cmd.contains(&pod.id))
            .unwrap_or_else(|| panic!("no shim process of pod {}", pod.id));
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.starts_with(&bin),
            "pod ran {}, not the installed shim",
            exe.display()
        );
        client.remove_pod(&pod.id).unwrap();
    }
    cd.assert_no_leaks();

    let uninstall = ["uninstall", "--state", &state_s, "--no-restart"];
    let out = wasishim(&target, &uninstall);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        fs::read(&config).unwrap(),
        before.as_bytes(),
        "uninstall did not restore the config byte for byte"
    );
    for s in SHIMS {
        assert!(!bin.join(s).exists(), "{s} left behind");
    }
    assert!(!state.exists(), "install record left behind");
}

wasishim_e2e::scenarios!(install_run_uninstall);
