//! What the host shows: processes, mounts, sockets and cgroups, read from
//! `/proc` and the filesystem, for leak checks, cleanup and benchmarks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Every process ID in `/proc`.
pub fn pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every process as (pid, command line with NULs as spaces).
pub fn processes() -> Vec<(i32, String)> {
    pids()
        .into_iter()
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// Direct children of the given processes (from `/proc/*/stat`).
pub fn children_of(parents: &[i32]) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // Fields after the command name, which is in parentheses.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<i32>().ok()
                })
                .is_some_and(|ppid| parents.contains(&ppid))
        })
        .collect()
}

/// Mount points at or under `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    mounts_of_under("self", dir)
}

/// Mount points at or under `dir` that process `pid` sees (its mount
/// namespace's, from `/proc/<pid>/mountinfo`).
pub fn process_mounts_under(pid: i32, dir: &Path) -> Vec<String> {
    mounts_of_under(&pid.to_string(), dir)
}

fn mounts_of_under(process: &str, dir: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string(format!("/proc/{process}/mountinfo")) else {
        return Vec::new();
    };
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unix sockets anywhere under `dir` (not following symlinks).
pub(crate) fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                // Snapshots hold image contents, never sockets; skip the bulk.
                if e.file_name() != "root" {
                    stack.push(e.path());
                }
            } else if ft.is_socket() {
                found.push(e.path());
            }
        }
    }
    found
}

/// Mount points of every cgroup hierarchy (v1 controllers, or the v2 root).
pub(crate) fn cgroup_roots() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut roots = BTreeSet::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            if let Some(mp) = left.split(' ').nth(4) {
                roots.insert(PathBuf::from(mp));
            }
        }
    }
    roots.into_iter().collect()
}

/// Cgroup directories below `parent` in every hierarchy, deepest first.
pub fn cgroup_children(parent: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in cgroup_roots() {
        let mut stack = vec![root.join(parent.trim_start_matches('/'))];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(e.path());
                    stack.push(e.path());
                }
            }
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// What a process holds, read from `/proc/<pid>`: compared before and
/// after many cycles of work to find what leaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: usize,
    /// Distinct network namespaces its threads are in or its descriptors
    /// hold.
    pub net_namespaces: usize,
    /// Resident memory (VmRSS), KiB.
    pub rss_kib: u64,
}

/// The [`Footprint`] of process `pid`; `None` if it is gone.
pub fn footprint(pid: i32) -> Option<Footprint> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let status = fs::read_to_string(proc.join("status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let links = |dir: PathBuf| -> Vec<String> {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| fs::read_link(e.path()).ok())
            .map(|l| l.display().to_string())
            .collect()
    };
    let fds = links(proc.join("fd"));
    let tasks: Vec<PathBuf> = fs::read_dir(proc.join("task"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    let mut net: BTreeSet<String> = fds
        .iter()
        .filter(|l| l.starts_with("net:["))
        .cloned()
        .collect();
    for task in &tasks {
        if let Ok(ns) = fs::read_link(task.join("ns/net")) {
            net.insert(ns.display().to_string());
        }
    }
    Some(Footprint {
        fds: fds.len(),
        threads: tasks.len(),
        net_namespaces: net.len(),
        rss_kib,
    })
}

/// Resident memory of process `pid` (KiB) by what is mapped: a file's
/// path, `[heap]`, `[stack]`, or `[anonymous]`; from `/proc/<pid>/smaps`.
/// Empty if the process is gone.
pub fn rss_by_mapping(pid: i32) -> BTreeMap<String, u64> {
    let mut rss = BTreeMap::new();
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut name = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first == "Rss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *rss.entry(name.clone()).or_insert(0) += kib;
        } else if !first.ends_with(':') {
            // A mapping's header: "start-end perms offset dev inode [path]".
            name = fields
                .nth(4)
                .map_or("[anonymous]".to_string(), str::to_string);
        }
    }
    rss
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
    }
}
