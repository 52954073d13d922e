//! Records of a pod's native containers on disk, so that the cleanup after
//! a dead shim finds every one of them.
//!
//! containerd 1.x runs the shim binary's `delete` for each task of a dead
//! shim, with that task's bundle; 2.x runs it once, with the sandbox's id
//! and bundle only (the pod's containers were merely grouped into the
//! sandbox's shim). A native container outlives the shim, and any
//! container's cgroup does, so the shim writes a small record for each one
//! under its pod's sandbox bundle, `wasishim-containers/<id>` (for a native
//! container before runc creates it), and removes it at its delete. `delete` then removes every recorded container and any
//! other container `runc list` shows with the pod's sandbox annotation
//! (runc state written without a record: none, unless the disk failed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cgroups::{self, Hierarchies};
use crate::runc::Runc;

/// The directory of records under a sandbox's (or lone container's) bundle.
pub const RECORDS_DIR: &str = "wasishim-containers";

/// Record files read at most: each is a container the shim created.
const RECORDS_READ: usize = 4096;

/// What cleanup needs of one native container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// The containerd namespace, which names runc's state root.
    pub namespace: String,
    /// The container's cgroup below each hierarchy's root.
    pub cgroup: Option<PathBuf>,
    /// `<bundle>/runc` of a native container (the spec runc ran, its pid
    /// file and log); `None` for a Wasm container, which has only its
    /// cgroup to remove.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// The bundle a container's record goes under: its pod sandbox's (the
/// sibling bundle named by the sandbox id) when there is one, else its own.
pub fn group_bundle(bundle: &Path, sandbox_id: Option<&str>) -> PathBuf {
    let sandbox = sandbox_id
        .filter(|id| !id.contains('/') && !id.starts_with('.'))
        .and_then(|id| Some(bundle.parent()?.join(id)));
    match sandbox {
        Some(dir) if dir.is_dir() => dir,
        _ => bundle.to_path_buf(),
    }
}

/// Records the cgroup of Wasm container `id` of `bundle` (its guest dies
/// with the shim, its cgroup stays); best effort: a failure is logged.
pub fn record_cgroup(
    bundle: &wasishim_engine::Bundle,
    namespace: &str,
    id: &str,
    cgroup: &Path,
) -> Option<PathBuf> {
    let record = Record {
        id: id.to_string(),
        namespace: namespace.to_string(),
        cgroup: Some(cgroup.to_path_buf()),
        dir: None,
    };
    match write(&group_bundle(&bundle.dir, bundle.sandbox_id()), &record) {
        Ok(path) => Some(path),
        Err(err) => {
            log::warn!("{err:#}");
            None
        }
    }
}

/// The file of container `id`'s record under `group`.
fn file(group: &Path, id: &str) -> PathBuf {
    group.join(RECORDS_DIR).join(id)
}

/// Writes `record` under `group`; returns its file.
pub fn write(group: &Path, record: &Record) -> Result<PathBuf> {
    let dir = group.join(RECORDS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let path = file(group, &record.id);
    let text = serde_json::to_vec(record)?;
    std::fs::write(&path, text)
        .with_context(|| format!("cannot record native container in {}", path.display()))?;
    Ok(path)
}

/// Removes a record file (the container is gone), and its directory once
/// empty.
pub fn remove(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {err}", path.display());
        }
    }
    if let Some(dir) = path.parent() {
        // Fails while another container's record is there: kept then.
        let _ = std::fs::remove_dir(dir);
    }
}

/// The records under `group`, unreadable ones skipped (logged).
pub fn read_all(group: &Path) -> Vec<(PathBuf, Record)> {
    let dir = group.join(RECORDS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for entry in entries.flatten().take(RECORDS_READ) {
        let path = entry.path();
        let parsed = std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(serde_json::from_slice::<Record>(&bytes)?));
        match parsed {
            Ok(record) => records.push((path, record)),
            Err(err) => log::warn!("skipping record {}: {err:#}", path.display()),
        }
    }
    records
}

/// After the shim died: kills and removes every native container of the
/// pod whose sandbox (or lone container) is `id` in `group`, from the
/// records there and from `runc list` of `namespace`. Failures are logged:
/// containerd's cleanup goes on.
pub fn delete_orphans(group: &Path, namespace: &str, id: &str) {
    let mut found: BTreeMap<String, Option<(PathBuf, Record)>> = BTreeMap::new();
    for (path, record) in read_all(group) {
        found.insert(record.id.clone(), Some((path, record)));
    }
    let runc = Runc::new(namespace);
    match runc.list() {
        Ok(listed) => {
            for container in listed {
                let of_pod =
                    container.annotation(wasishim_engine::SANDBOX_ID_ANNOTATION) == Some(id);
                if of_pod {
                    found.entry(container.id).or_insert(None);
                }
            }
        }
        Err(err) => log::warn!("{err:#}"),
    }
    let hierarchies = Hierarchies::detect();
    for (container, record) in found {
        let known = runc.state_exists(&container);
        if known {
            if let Err(err) = runc.delete_force(&container) {
                log::warn!("native container {container}: {err:#}");
                continue;
            }
            log::info!("removed native container {container} of dead shim");
        }
        let Some((path, record)) = record else {
            continue;
        };
        // runc removed the cgroup it ran in; this one is the shim's own.
        if let Some(cgroup) = &record.cgroup {
            match cgroups::relative_path(&cgroup.display().to_string()) {
                Ok(relative) => cgroups::remove_dead(&hierarchies, &relative),
                Err(err) => log::warn!("record {}: {err:#}", path.display()),
            }
        }
        if let Some(dir) = &record.dir {
            if let Err(err) = std::fs::remove_dir_all(dir) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove {}: {err}", dir.display());
                }
            }
        }
        remove(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_go_under_the_sandboxs_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("pod1");
        let container = dir.path().join("c1");
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::create_dir_all(&container).unwrap();
        assert_eq!(group_bundle(&container, Some("pod1")), sandbox);
        // No such sandbox bundle, or a name that is not one: its own.
        assert_eq!(group_bundle(&container, Some("pod2")), container);
        assert_eq!(group_bundle(&container, Some("../pod1")), container);
        assert_eq!(group_bundle(&container, None), container);
    }

    #[test]
    fn written_records_are_read_back_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let record = |id: &str| Record {
            id: id.to_string(),
            namespace: "k8s.io".to_string(),
            cgroup: Some(PathBuf::from("kubepods/pod1").join(id)),
            dir: Some(dir.path().join(id).join("runc")),
        };
        let a = write(dir.path(), &record("a")).unwrap();
        let b = write(dir.path(), &record("b")).unwrap();
        std::fs::write(dir.path().join(RECORDS_DIR).join("junk"), "{").unwrap();
        let mut read: Vec<Record> = read_all(dir.path()).into_iter().map(|(_, r)| r).collect();
        read.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(read, vec![record("a"), record("b")]);
        remove(&a);
        remove(&b);
        std::fs::remove_file(dir.path().join(RECORDS_DIR).join("junk")).unwrap();
        remove(&dir.path().join(RECORDS_DIR).join("gone"));
        assert!(!dir.path().join(RECORDS_DIR).exists());
    }
}
