//! cgroup placement and CPU limits for a container at `linux.cgroupsPath`.
//!
//! Guests are threads of the shim, not processes, so placement follows what
//! the kernel allows per thread:
//! - a pod sandbox moves the whole shim process into its cgroup (every
//!   hierarchy), so the pod's memory and CPU are accounted where kubelet
//!   looks, and the pod cgroup's limits apply to all its guests;
//! - a container's guest thread joins the container's cgroup in the cgroup v1
//!   hierarchies that account per thread (cpu, cpuacct, pids), where
//!   `linux.resources.cpu` (quota, period, shares) and `pids.limit` apply.
//!   The memory limit is enforced by the engine on the guest's linear memory:
//!   cgroup v1 charges a thread's memory to its process, not its cgroup.
//!   Threads join asynchronously ([`Cgroup::place_thread`]): moving a task
//!   between cgroups waits for an RCU grace period (about 8 ms here), longer
//!   than a short guest's whole run, so the guest starts at once and its
//!   limits apply from a few milliseconds after its start.
//! - on a cgroup v2 host only the process placement applies (threads can only
//!   join "threaded" cgroups, which kubelet does not make).
//!
//! The cgroup filesystem root is a parameter, so the decisions are tested on a
//! plain directory without a kernel.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use wasishim_engine::Resources;

/// Per-thread v1 controllers a guest thread joins.
const THREAD_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "pids"];
/// v1 controllers the sandbox moves the process into.
const PROCESS_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "pids", "memory"];

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    /// cgroup v1: (controllers of the mount, mount point).
    pub v1: Vec<(Vec<String>, PathBuf)>,
    /// The cgroup v2 mount when it is the only (unified) hierarchy.
    pub v2: Option<PathBuf>,
}

impl Hierarchies {
    /// Reads the mounts of this process. A host with v1 controllers is
    /// treated as v1 (hybrid hosts keep the v2 mount controller-less).
    pub fn detect() -> Hierarchies {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Hierarchies::from_mountinfo(&mountinfo)
    }

    pub fn from_mountinfo(mountinfo: &str) -> Hierarchies {
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split_whitespace().nth(4).unwrap_or_default();
            let mut right = right.split_whitespace();
            let fs_type = right.next().unwrap_or_default();
            let super_options = right.nth(1).unwrap_or_default();
            match fs_type {
                "cgroup" => {
                    let controllers = super_options
                        .split(',')
                        .filter(|o| {
                            PROCESS_CONTROLLERS.contains(o) || THREAD_CONTROLLERS.contains(o)
                        })
                        .map(str::to_string)
                        .collect::<Vec<_>>();
                    if !controllers.is_empty() {
                        v1.push((controllers, PathBuf::from(mount_point)));
                    }
                }
                "cgroup2" => v2 = Some(PathBuf::from(mount_point)),
                _ => {}
            }
        }
        if !v1.is_empty() {
            v2 = None;
        }
        Hierarchies { v1, v2 }
    }

    /// What the processes in the cgroup at `path` (below each hierarchy's
    /// root) use: CPU nanoseconds and memory bytes, 0 where unreadable.
    /// For native containers, whose processes runc put there.
    pub fn process_usage(&self, path: &Path) -> (u64, u64) {
        let read = |file: PathBuf| fs::read_to_string(file).unwrap_or_default();
        if let Some(root) = &self.v2 {
            let dir = root.join(path);
            let cpu_usec = read(dir.join("cpu.stat"))
                .lines()
                .find_map(|line| line.strip_prefix("usage_usec ")?.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let memory = read(dir.join("memory.current")).trim().parse().unwrap_or(0);
            return (cpu_usec * 1000, memory);
        }
        let first = |controller: &str, file: &str| {
            self.v1_dirs(&[controller])
                .into_iter()
                .find_map(|root| read(root.join(path).join(file)).trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        (
            first("cpuacct", "cpuacct.usage"),
            first("memory", "memory.usage_in_bytes"),
        )
    }

    /// Whether the kernel's OOM killer has killed a process in the cgroup
    /// at `path` (v1 `memory.oom_control`, v2 `memory.events`).
    pub fn oom_killed(&self, path: &Path) -> bool {
        let count = |text: String| {
            text.lines()
                .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let kills = match &self.v2 {
            Some(root) => {
                count(fs::read_to_string(root.join(path).join("memory.events")).unwrap_or_default())
            }
            None => self
                .v1_dirs(&["memory"])
                .into_iter()
                .map(|root| {
                    count(
                        fs::read_to_string(root.join(path).join("memory.oom_control"))
                            .unwrap_or_default(),
                    )
                })
                .max()
                .unwrap_or(0),
        };
        kills > 0
    }

    fn v1_dirs(&self, wanted: &[&str]) -> Vec<PathBuf> {
        self.v1
            .iter()
            .filter(|(controllers, _)| controllers.iter().any(|c| wanted.contains(&c.as_str())))
            .map(|(_, mount)| mount.clone())
            .collect()
    }
}

/// `linux.cgroupsPath` -> a path below each hierarchy's root. Accepts the
/// cgroupfs form (`/kubepods/pod1/abc`) and the systemd form
/// (`kubepods-pod1.slice:cri-containerd:abc`).
pub fn relative_path(cgroups_path: &str) -> Result<PathBuf> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let path = match parts.as_slice() {
        [path] => PathBuf::from(path.trim_start_matches('/')),
        [slice, prefix, name] => {
            // Unit names have no '/': one would make the pushed unit an
            // absolute path that replaces the whole path, out of the
            // cgroup file system.
            if [slice, prefix, name].iter().any(|part| part.contains('/')) {
                bail!("invalid linux.cgroupsPath '{cgroups_path}': the parts of slice:prefix:name cannot contain '/'");
            }
            let mut path = expand_slice(if slice.is_empty() {
                "system.slice"
            } else {
                slice
            })?;
            let unit = if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            path.push(unit);
            path
        }
        _ => bail!(
            "invalid linux.cgroupsPath '{cgroups_path}': expected a path or slice:prefix:name"
        ),
    };
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!("invalid linux.cgroupsPath '{cgroups_path}': '..' is not allowed");
    }
    // Joined under each hierarchy's root, the path must name a cgroup below
    // it: never the root itself (whose limits are the whole machine's).
    if path.is_absolute()
        || !path
            .components()
            .any(|c| matches!(c, std::path::Component::Normal(_)))
    {
        bail!("invalid linux.cgroupsPath '{cgroups_path}': it names no cgroup below the root: give a path such as /wasishim/c1");
    }
    Ok(path)
}

/// `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice`, as systemd nests slices.
fn expand_slice(slice: &str) -> Result<PathBuf> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        bail!("invalid systemd slice '{slice}': it must end in .slice");
    };
    if stem == "-" || stem.is_empty() {
        return Ok(PathBuf::new());
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            bail!("invalid systemd slice '{slice}'");
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

/// The cgroup directories made for one container; removed by [`Cgroup::remove`].
#[derive(Debug)]
pub struct Cgroup {
    /// The path below each hierarchy's root (see [`relative_path`]).
    path: PathBuf,
    /// (hierarchy mount, directory) pairs, in creation order.
    dirs: Vec<(PathBuf, PathBuf)>,
    /// A sandbox holds the shim process; a container only its guest thread.
    holds_process: bool,
}

impl Cgroup {
    /// Makes the cgroup of a pod sandbox and moves this process into it.
    pub fn for_sandbox(hierarchies: &Hierarchies, path: &Path, pid: u32) -> Result<Cgroup> {
        let roots = match &hierarchies.v2 {
            Some(root) => vec![root.clone()],
            None => hierarchies.v1_dirs(PROCESS_CONTROLLERS),
        };
        let cgroup = Cgroup::make(roots, path, true)?;
        for (_, dir) in &cgroup.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(cgroup)
    }

    /// Makes the cgroup of a container and applies its CPU and pids limits
    /// (its memory limit is the engine's);
    /// the guest thread joins it with [`Cgroup::add_thread`]. On a v2 host
    /// there is nothing to make (see the module docs).
    pub fn for_container(
        hierarchies: &Hierarchies,
        path: &Path,
        limits: &Resources,
    ) -> Result<Cgroup> {
        if hierarchies.v2.is_some() {
            return Ok(Cgroup::unmade(path));
        }
        let cgroup = Cgroup::make(hierarchies.v1_dirs(THREAD_CONTROLLERS), path, false)?;
        for (_, dir) in &cgroup.dirs {
            let settings = [
                (
                    "cpu.cfs_period_us",
                    limits.cpu_period.map(|v| v.to_string()),
                ),
                ("cpu.cfs_quota_us", limits.cpu_quota.map(|v| v.to_string())),
                ("cpu.shares", limits.cpu_shares.map(|v| v.to_string())),
                ("pids.max", limits.pids_limit.map(|v| v.to_string())),
            ];
            for (file, value) in settings {
                if let Some(value) = value {
                    if dir.join(file).exists() {
                        write(&dir.join(file), &value)?;
                    }
                }
            }
        }
        Ok(cgroup)
    }

    /// A cgroup with no directory made: what a container gets where threads
    /// cannot join cgroups (v2), and what a stub OS hands out in unit tests.
    pub fn unmade(path: &Path) -> Cgroup {
        Cgroup {
            path: path.to_path_buf(),
            dirs: Vec::new(),
            holds_process: false,
        }
    }

    /// The path below each hierarchy's root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn make(roots: Vec<PathBuf>, path: &Path, holds_process: bool) -> Result<Cgroup> {
        let mut cgroup = Cgroup {
            path: path.to_path_buf(),
            dirs: Vec::new(),
            holds_process,
        };
        for root in roots {
            let dir = root.join(path);
            if cgroup.dirs.iter().any(|(_, d)| d == &dir) {
                continue;
            }
            fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
            cgroup.dirs.push((root, dir));
        }
        Ok(cgroup)
    }

    /// Moves a guest thread into the container's cgroup.
    pub fn add_thread(&self, tid: i32) -> Result<()> {
        for (_, dir) in &self.dirs {
            write(&dir.join("tasks"), &tid.to_string())?;
        }
        Ok(())
    }

    /// Moves thread `tid` into this cgroup from a short-lived thread and
    /// returns at once. A thread that ended meanwhile is skipped; failures
    /// are logged. No thread stays behind to cost an idle shim memory.
    pub fn place_thread(self: &Arc<Cgroup>, tid: i32) {
        let cgroup = self.clone();
        let spawned = std::thread::Builder::new()
            .name("cgroup-placer".into())
            .spawn(move || cgroup.add_thread_if_alive(tid));
        if let Err(err) = spawned {
            log::warn!(
                "cannot start a thread to place thread {tid} in its cgroup, placing inline: {err}"
            );
            self.add_thread_if_alive(tid);
        }
    }

    fn add_thread_if_alive(&self, tid: i32) {
        if let Err(err) = self.add_thread(tid) {
            // ESRCH: the guest ended before its turn; ENOENT: its cgroup is gone.
            let gone = err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .and_then(|e| e.raw_os_error())
                    .is_some_and(|code| code == libc::ESRCH || code == libc::ENOENT)
            });
            if gone {
                log::debug!("thread {tid} not placed, it or its cgroup has ended: {err:#}");
            } else {
                log::warn!("guest thread {tid} not placed in its cgroup: {err:#}");
            }
        }
    }

    /// Removes the directories (the container's threads have ended). A
    /// sandbox first moves the shim process back to the hierarchy's root.
    pub fn remove(&self) {
        for (root, dir) in self.dirs.iter().rev() {
            if self.holds_process {
                let _ = write(&root.join("cgroup.procs"), &std::process::id().to_string());
            }
            if let Err(err) = remove_dir_when_empty(dir, Some(root)) {
                log::warn!("cannot remove cgroup {}: {err}", dir.display());
            }
        }
    }
}

/// Removes a cgroup directory. A guest's thread reports its exit just before
/// it ends, so the cgroup may be busy for a moment after the exit was seen;
/// a helper thread the guest's runtime started (and placed there, maybe
/// late, from a placer thread) can outlive the guest longer. While the
/// directory is busy, the threads still in it are moved to `evict_to` (the
/// hierarchy's root, where the sandbox moves the process too): the container
/// is gone, and a directory left behind would never be removed.
fn remove_dir_when_empty(dir: &Path, evict_to: Option<&Path>) -> std::io::Result<()> {
    const EBUSY: i32 = 16;
    let mut attempts = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(EBUSY) && attempts < 100 => {
                attempts += 1;
                if let Some(root) = evict_to {
                    evict_threads(dir, root);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Moves every thread listed in `dir`'s `tasks` to `root`'s; a thread that
/// ended meanwhile is skipped.
fn evict_threads(dir: &Path, root: &Path) {
    let Ok(tasks) = fs::read_to_string(dir.join("tasks")) else {
        return;
    };
    for tid in tasks.lines() {
        if let Err(err) = write(&root.join("tasks"), tid) {
            log::debug!("thread {tid} left in {}: {err:#}", dir.display());
        } else {
            log::debug!("moved thread {tid} out of {} to remove it", dir.display());
        }
    }
}

/// Removes the cgroup of a container whose server died (from the `delete`
/// subcommand): its threads are gone, so the directories are empty.
pub fn remove_dead(hierarchies: &Hierarchies, path: &Path) {
    let roots = match &hierarchies.v2 {
        Some(root) => vec![root.clone()],
        None => hierarchies.v1_dirs(PROCESS_CONTROLLERS),
    };
    for root in roots {
        let dir = root.join(path);
        if let Err(err) = remove_dir_when_empty(&dir, None) {
            log::warn!("cannot remove cgroup {}: {err}", dir.display());
        }
    }
}

fn write(file: &Path, value: &str) -> Result<()> {
    fs::write(file, value).with_context(|| format!("cannot write {value} to {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_are_relative_to_each_root() {
        assert_eq!(
            relative_path("/kubepods/besteffort/pod1/abc").unwrap(),
            PathBuf::from("kubepods/besteffort/pod1/abc")
        );
        assert!(relative_path("/kubepods/../../etc").is_err());
    }

    #[test]
    fn systemd_paths_nest_slices() {
        assert_eq!(
            relative_path("kubepods-besteffort-pod1.slice:cri-containerd:abc").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            relative_path(":cri-containerd:abc").unwrap(),
            PathBuf::from("system.slice/cri-containerd-abc.scope")
        );
        assert!(relative_path("bad:x:y").is_err());
        assert!(relative_path("a:b").is_err());
    }

    /// Found by the config_json fuzz target: a '/' in the systemd form made
    /// the unit an absolute path, which replaced the whole path (a cgroup
    /// made at /ri-containerd-abc.scope on the host's file system).
    #[test]
    fn paths_stay_below_the_root() {
        for bad in [
            "kubepods-besteffort-pod1.slice:/ri-containerd:abc",
            "system.slice::/etc/x",
            "a/b.slice:cri-containerd:abc",
            "system.slice:cri:a/../../../etc",
            "/",
            "///",
            "",
            "/./.",
        ] {
            match relative_path(bad) {
                Ok(path) => panic!("{bad:?} accepted as {path:?}"),
                Err(e) => assert!(
                    e.to_string()
                        .starts_with(&format!("invalid linux.cgroupsPath '{bad}': ")),
                    "{e}"
                ),
            }
        }
        assert_eq!(relative_path("//c1").unwrap(), PathBuf::from("c1"));
        assert!(relative_path("/./c1").is_ok());
    }

    #[test]
    fn hybrid_host_is_treated_as_v1() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd";
        let h = Hierarchies::from_mountinfo(mountinfo);
        assert_eq!(h.v2, None);
        assert_eq!(h.v1.len(), 2);
        assert_eq!(
            h.v1_dirs(THREAD_CONTROLLERS),
            vec![PathBuf::from("/sys/fs/cgroup/cpu")]
        );
    }

    #[test]
    fn unified_host_is_v2() {
        let h = Hierarchies::from_mountinfo("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw");
        assert_eq!(h.v2, Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn container_cgroup_gets_limits_and_is_removed() {
        let root = std::env::temp_dir().join(format!("wasishim-cg-{}", std::process::id()));
        let cpu = root.join("cpu");
        fs::create_dir_all(cpu.join("pod/c1")).unwrap();
        // What the kernel would offer in a fresh cgroup.
        fs::write(cpu.join("pod/c1/cpu.cfs_quota_us"), "-1").unwrap();
        let h = Hierarchies {
            v1: vec![(vec!["cpu".into()], cpu.clone())],
            v2: None,
        };
        let limits = Resources {
            cpu_quota: Some(50_000),
            ..Resources::default()
        };
        let cg = Cgroup::for_container(&h, Path::new("pod/c1"), &limits).unwrap();
        assert_eq!(
            fs::read_to_string(cpu.join("pod/c1/cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        fs::remove_file(cpu.join("pod/c1/cpu.cfs_quota_us")).unwrap();
        cg.remove();
        assert!(!cpu.join("pod/c1").exists());
        fs::remove_dir_all(root).unwrap();
    }
}
