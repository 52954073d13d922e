//! cgroups of a Kubernetes pod, end to end, through CRI on a cgroup v1 host:
//! where the shim process and a guest's thread are placed, and that the
//! kernel enforces what is set there.
//!
//! - The per-pod shim moves into its sandbox's cgroup (below the pod's) in
//!   the cpu, cpuacct, pids and memory hierarchies; the per-node server,
//!   hosting every pod, moves into none.
//! - With both binaries, a guest's thread (the engine names it `wasm-` and
//!   its entrypoint's stem) joins its container's cgroup in cpu, cpuacct and
//!   pids, where the container's CPU quota is set and throttles it, and
//!   where it counts against the pod's pids limit (kubelet's `podPidsLimit`
//!   on the pod's cgroup; CRI has no per-container pids limit).
//!
//! Run one: `cargo test -p wasishim-e2e --test cgroups -- v2_1::placement_and_cpu_quota`;
//! with `WASISHIM_RUNTIME=io.containerd.wasmtimed.v1` for the per-node binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasishim_e2e::cri::{self, api, Client};
use wasishim_e2e::{fixture_image, PrivateContainerd};

/// How long a guest may take to be reported running, and its thread placed.
const RUN_LIMIT: Duration = Duration::from_secs(20);
/// The container's CPU quota: 10 ms in every 100 ms period, a tenth of a CPU.
const QUOTA_US: i64 = 10_000;
const PERIOD_US: i64 = 100_000;
/// How long the busy loop is measured.
const MEASURE: Duration = Duration::from_secs(2);
/// The pod's pids limit, as kubelet would set it on the pod's cgroup.
const POD_PIDS_MAX: u32 = 1000;

/// The mount point of the cgroup v1 hierarchy of `controller`.
fn hierarchy(controller: &str) -> PathBuf {
    let dir = Path::new("/sys/fs/cgroup").join(controller);
    assert!(
        dir.join("tasks").exists(),
        "{} is not a cgroup v1 hierarchy: these tests need a cgroup v1 host",
        dir.display()
    );
    dir
}

/// The directory of cgroup `path` (as in `/proc/*/cgroup`) in `controller`'s hierarchy.
fn cgroup_dir(controller: &str, path: &str) -> PathBuf {
    hierarchy(controller).join(path.trim_start_matches('/'))
}

fn read(file: &Path) -> String {
    fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
        .trim()
        .to_string()
}

fn read_u64(file: &Path) -> u64 {
    let text = read(file);
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", file.display()))
}

/// The cgroup of `task` (`/proc/PID` or `/proc/PID/task/TID`) in the v1
/// hierarchy of `controller`.
fn cgroup_of(task: &Path, controller: &str) -> String {
    let text = read(&task.join("cgroup"));
    text.lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} line in {}/cgroup:\n{text}", task.display()))
}

/// `linux.cgroupsPath` in the bundle CRI wrote for task `id`.
fn cgroups_path(cd: &PrivateContainerd, id: &str) -> String {
    let file = cri::task_state_dir(cd).join(id).join("config.json");
    let spec: serde_json::Value = serde_json::from_str(&read(&file)).unwrap();
    let path = spec["linux"]["cgroupsPath"]
        .as_str()
        .unwrap_or_else(|| panic!("no linux.cgroupsPath in {}", file.display()));
    assert!(
        path.starts_with('/'),
        "{}: expected a cgroupfs path, got {path}",
        file.display()
    );
    path.to_string()
}

/// The thread of the only guest in server `pid`: the engine names a guest's
/// thread `wasm-` and the entrypoint's stem, here `wasm-app` (`/app.wasm`).
/// It may start a moment after the container is reported running.
fn guest_thread(pid: i32) -> PathBuf {
    let name = "wasm-app";
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let start = Instant::now();
    loop {
        let found: Vec<PathBuf> = fs::read_dir(&tasks)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|t| fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == name))
            .collect();
        match found.as_slice() {
            [one] => return one.clone(),
            [] if start.elapsed() < RUN_LIMIT => std::thread::sleep(Duration::from_millis(20)),
            _ => panic!("threads named {name} in {}: {found:?}", tasks.display()),
        }
    }
}

/// CPU time of a thread (`/proc/PID/task/TID`), user and system.
fn thread_cpu(thread: &Path) -> Duration {
    let stat = read(&thread.join("stat"));
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// `nr_throttled` and `throttled_time` (ns) of a v1 cpu cgroup.
fn throttled(cpu_dir: &Path) -> (u64, u64) {
    let stat = read(&cpu_dir.join("cpu.stat"));
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in cpu.stat:\n{stat}"))
    };
    (field("nr_throttled "), field("throttled_time "))
}

fn per_pod() -> bool {
    wasishim_e2e::runtime() == "io.containerd.wasmtime.v1"
}

/// A busy loop with a quota of a tenth of a CPU, in a pod whose cgroup has a
/// pids limit: the shim process and the guest thread are where the README
/// says, the quota throttles the guest to about a tenth of a CPU, the guest
/// counts against the pod's pids limit, and the container's cgroup is
/// removed even with a thread left in it.
fn placement_and_cpu_quota(cd: &PrivateContainerd, cri: &Client) {
    let parent = cri::cgroup_parent(cd);
    // kubelet makes the pod's cgroup, with the pod's pids limit, before the sandbox.
    let pod_pids = cgroup_dir("pids", &parent);
    fs::create_dir_all(&pod_pids).unwrap();
    fs::write(pod_pids.join("pids.max"), POD_PIDS_MAX.to_string()).unwrap();
    let spin = cri::import(cd, &fixture_image("spin", "wasip1/spin.wasm").unwrap()).unwrap();
    let pod = cri
        .run_pod(cri.pod_config("cgroups"))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}"));

    let servers = cd.shim_pids();
    assert_eq!(servers.len(), 1, "shim servers: {servers:?}");
    let server = PathBuf::from(format!("/proc/{}", servers[0]));
    let sandbox = cgroups_path(cd, &pod.id);
    assert!(sandbox.starts_with(&format!("{parent}/")), "{sandbox}");
    for controller in ["cpu", "cpuacct", "pids", "memory"] {
        let at = cgroup_of(&server, controller);
        if per_pod() {
            assert_eq!(at, sandbox, "the per-pod shim in {controller}");
            let procs = read(&cgroup_dir(controller, &sandbox).join("cgroup.procs"));
            assert!(
                procs.lines().any(|p| p == servers[0].to_string()),
                "{controller} cgroup.procs of {sandbox}: {procs}"
            );
        } else {
            assert!(
                !at.starts_with(&parent),
                "the per-node server moved into a pod's {controller} cgroup {at}"
            );
        }
    }

    let config = cri::with_resources(
        cri.container_config("spin", &spin),
        api::LinuxContainerResources {
            cpu_period: PERIOD_US,
            cpu_quota: QUOTA_US,
            // Not the 2 shares of a best-effort pod: on a busy machine the
            // loop must still get its quota, so that the quota is what stops it.
            cpu_shares: 1024,
            ..Default::default()
        },
    );
    let id = cri
        .run_container(&pod, config)
        .unwrap_or_else(|e| panic!("container spin: {e:#}"));
    cri.wait_state(&id, api::ContainerState::ContainerRunning, RUN_LIMIT)
        .unwrap();
    let container = cgroups_path(cd, &id);
    let thread = guest_thread(servers[0]);
    let tid = thread.file_name().unwrap().to_string_lossy().into_owned();

    // The thread joins its cgroups a few milliseconds after the start.
    let start = Instant::now();
    for controller in ["cpu", "cpuacct", "pids"] {
        while cgroup_of(&thread, controller) != container {
            assert!(
                start.elapsed() < RUN_LIMIT,
                "guest thread {} is in {controller} cgroup {}, not its container's {container}",
                thread.display(),
                cgroup_of(&thread, controller)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let tasks = read(&cgroup_dir(controller, &container).join("tasks"));
        assert!(
            tasks.lines().any(|t| t == tid),
            "{controller} tasks of {container}: {tasks}"
        );
    }
    let cpu = cgroup_dir("cpu", &container);
    assert_eq!(read_u64(&cpu.join("cpu.cfs_quota_us")), QUOTA_US as u64);
    assert_eq!(read_u64(&cpu.join("cpu.cfs_period_us")), PERIOD_US as u64);

    // The pod's pids limit counts the guest (and, per-pod, the shim's own threads).
    let in_container = read_u64(&cgroup_dir("pids", &container).join("pids.current"));
    let in_pod = read_u64(&pod_pids.join("pids.current"));
    assert!(
        in_container >= 1,
        "pids.current of {container}: {in_container}"
    );
    if per_pod() {
        assert!(
            in_pod > in_container,
            "pids.current of the pod {in_pod}, of the container {in_container}"
        );
    } else {
        assert!(
            in_pod >= in_container,
            "pids.current of the pod {in_pod}, of the container {in_container}"
        );
    }

    // A thread still in the container's cgroup when the container is
    // deleted (as a helper thread of the guest's runtime may outlive the
    // guest) must not keep the cgroup from being removed: a thread of this
    // test stands in for it.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let lingerer = std::thread::spawn(move || {
        tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let _ = stop_rx.recv_timeout(Duration::from_secs(300));
    });
    let lingering = tid_rx.recv().unwrap();
    fs::write(cpu.join("tasks"), lingering.to_string()).unwrap();

    // The quota throttles the loop: its thread gets about a tenth of a CPU.
    let (throttled_before, throttled_ns_before) = throttled(&cpu);
    let cpu_before = thread_cpu(&thread);
    let start = Instant::now();
    std::thread::sleep(MEASURE);
    let used = thread_cpu(&thread) - cpu_before;
    let elapsed = start.elapsed();
    let (throttled_after, throttled_ns_after) = throttled(&cpu);
    let allowed = elapsed * QUOTA_US as u32 / PERIOD_US as u32;
    assert!(
        used <= allowed + Duration::from_millis(100),
        "the busy loop used {used:?} of CPU in {elapsed:?}; its quota allows {allowed:?}"
    );
    assert!(
        used >= Duration::from_millis(20),
        "the busy loop did not run: {used:?} of CPU in {elapsed:?}"
    );
    let periods = elapsed.as_micros() as u64 / PERIOD_US as u64;
    assert!(
        throttled_after - throttled_before >= periods / 4,
        "throttled in {} of about {periods} periods",
        throttled_after - throttled_before
    );
    assert!(throttled_ns_after > throttled_ns_before);
    eprintln!(
        "busy loop under a {}% quota: {used:?} of CPU in {elapsed:?}, throttled in {} periods",
        QUOTA_US * 100 / PERIOD_US,
        throttled_after - throttled_before
    );

    cri.stop_container(&id, 0).unwrap();
    cri.remove_pod(&pod.id).unwrap();
    cd.assert_no_leaks();
    let lingering = PathBuf::from(format!("/proc/self/task/{lingering}"));
    assert_eq!(cgroup_of(&lingering, "cpu"), "/", "the lingering thread");
    stop_tx.send(()).unwrap();
    lingerer.join().unwrap();
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

wasishim_e2e::scenarios!(placement_and_cpu_quota);
