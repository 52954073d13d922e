//! Which containerd a node runs: plain containerd, k3s, RKE2 or MicroK8s;
//! where each keeps the config wasishim edits, its socket, and the systemd
//! unit that runs it.

use std::path::{Path, PathBuf};

/// A containerd setup wasishim knows the paths of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// containerd from a package or a release tarball.
    Containerd,
    /// k3s's embedded containerd.
    K3s,
    /// RKE2's embedded containerd.
    Rke2,
    /// MicroK8s's containerd (a snap).
    MicroK8s,
}

impl Flavor {
    /// In the order `wasishim install` probes them.
    pub const ALL: [Flavor; 4] = [
        Flavor::Containerd,
        Flavor::K3s,
        Flavor::Rke2,
        Flavor::MicroK8s,
    ];

    /// The config containerd reads (for k3s and RKE2: the one they render).
    pub fn config(self) -> &'static str {
        match self {
            Flavor::Containerd => "/etc/containerd/config.toml",
            Flavor::K3s => "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            Flavor::Rke2 => "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
            Flavor::MicroK8s => "/var/snap/microk8s/current/args/containerd-template.toml",
        }
    }

    /// The file wasishim edits for this flavor, given the config it found.
    /// k3s and RKE2 rewrite `config.toml` at every start from
    /// `config.toml.tmpl` if it exists (else from a built-in template), so
    /// the edit goes into `config.toml.tmpl`, created from the current
    /// `config.toml` when missing.
    pub fn edited_file(self, config: &Path) -> PathBuf {
        match self {
            Flavor::K3s | Flavor::Rke2 => {
                let mut name = config.as_os_str().to_owned();
                name.push(".tmpl");
                PathBuf::from(name)
            }
            _ => config.to_path_buf(),
        }
    }

    /// The systemd units that may run this containerd, in the order tried.
    pub fn units(self) -> &'static [&'static str] {
        match self {
            Flavor::Containerd => &["containerd"],
            Flavor::K3s => &["k3s", "k3s-agent"],
            Flavor::Rke2 => &["rke2-server", "rke2-agent"],
            Flavor::MicroK8s => &["snap.microk8s.daemon-containerd"],
        }
    }

    /// The containerd socket.
    pub fn socket(self) -> &'static str {
        match self {
            Flavor::Containerd => "/run/containerd/containerd.sock",
            Flavor::K3s | Flavor::Rke2 => "/run/k3s/containerd/containerd.sock",
            Flavor::MicroK8s => "/var/snap/microk8s/common/run/containerd.sock",
        }
    }

    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Containerd => "containerd",
            Flavor::K3s => "k3s",
            Flavor::Rke2 => "RKE2",
            Flavor::MicroK8s => "MicroK8s",
        }
    }

    /// The flavor whose config is at `path` (a plain containerd for a path
    /// of no known flavor, e.g. a private one given with `--config`).
    pub fn of_config(path: &Path) -> Flavor {
        // The others' paths end like containerd's own: they go first.
        [Flavor::K3s, Flavor::Rke2, Flavor::MicroK8s]
            .into_iter()
            .find(|f| path.ends_with(f.config().trim_start_matches('/')))
            .unwrap_or(Flavor::Containerd)
    }
}

/// The host's filesystem as wasishim sees it: `/`, or where a container
/// mounted it (`--host-root /host` in the DaemonSet).
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    /// The host whose `/` is at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    /// Where the host's absolute `path` is for this process.
    pub fn path(&self, path: &Path) -> PathBuf {
        match path.strip_prefix("/") {
            Ok(rel) if self.root != Path::new("/") => self.root.join(rel),
            _ => path.to_path_buf(),
        }
    }

    /// The host path of `local`, a path as this process sees it (the
    /// inverse of [`path`](Self::path)); what the install record keeps, so
    /// an uninstall run on the host itself finds the same files.
    pub fn to_host(&self, local: &Path) -> PathBuf {
        match local.strip_prefix(&self.root) {
            Ok(rel) if self.is_mounted() => Path::new("/").join(rel),
            _ => local.to_path_buf(),
        }
    }

    /// Whether the host is not this process's `/`.
    pub fn is_mounted(&self) -> bool {
        self.root != Path::new("/")
    }

    /// The first flavor whose config exists on the host, with its path as
    /// this process sees it.
    pub fn probe(&self) -> Option<(Flavor, PathBuf)> {
        Flavor::ALL.into_iter().find_map(|f| {
            let p = self.path(Path::new(f.config()));
            p.is_file().then_some((f, p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_in_order_under_a_host_root() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        assert!(host.probe().is_none());
        for f in [Flavor::MicroK8s, Flavor::K3s] {
            let p = host.path(Path::new(f.config()));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "version = 2\n").unwrap();
        }
        let (flavor, path) = host.probe().unwrap();
        assert_eq!(flavor, Flavor::K3s);
        assert!(path.starts_with(dir.path()));
        assert_eq!(Flavor::of_config(&path), Flavor::K3s);
        assert_eq!(
            flavor.edited_file(&path).file_name().unwrap(),
            "config.toml.tmpl"
        );
        assert_eq!(
            Flavor::of_config(Path::new("/tmp/x/config.toml")),
            Flavor::Containerd
        );
        assert_eq!(host.to_host(&path), Path::new(Flavor::K3s.config()));
        assert_eq!(
            Host::new("/").path(Path::new("/etc/containerd")),
            Path::new("/etc/containerd")
        );
    }
}
