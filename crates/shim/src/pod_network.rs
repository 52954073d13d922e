//! The network namespace of each pod sandbox a server hosts.
//!
//! CRI points a pod's containers at the sandbox's network through
//! `/proc/<sandbox pid>/ns/net`. The sandbox "process" is this server, whose
//! own network is the host's, so that path is mapped back to the network
//! namespace the sandbox was created with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

/// Network namespace paths by (containerd namespace, sandbox id).
#[derive(Clone, Default)]
pub struct PodNetworks(Arc<Mutex<HashMap<(String, String), PathBuf>>>);

impl PodNetworks {
    /// Remembers the network a pod sandbox was created with.
    pub fn insert(&self, namespace: &str, sandbox_id: &str, netns: PathBuf) {
        if let Ok(mut map) = self.0.lock() {
            map.insert((namespace.to_string(), sandbox_id.to_string()), netns);
        }
    }

    /// Forgets a deleted sandbox's network.
    pub fn remove(&self, namespace: &str, sandbox_id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&(namespace.to_string(), sandbox_id.to_string()));
        }
    }

    fn get(&self, namespace: &str, sandbox_id: &str) -> Option<PathBuf> {
        let map = self.0.lock().ok()?;
        map.get(&(namespace.to_string(), sandbox_id.to_string()))
            .cloned()
    }

    /// The network namespace a pod container joins instead of the one its
    /// spec names (`requested`): when that is this server's own
    /// (`own_netns`), the pod's real one. `None`: keep the spec's.
    ///
    /// # Errors
    ///
    /// The container names this server's network but its pod's sandbox is
    /// not hosted here.
    pub fn replacement(
        &self,
        requested: Option<&Path>,
        own_netns: &Path,
        namespace: &str,
        sandbox_id: &str,
        container_id: &str,
    ) -> Result<Option<PathBuf>> {
        if requested != Some(own_netns) {
            return Ok(None);
        }
        match self.get(namespace, sandbox_id) {
            Some(netns) => Ok(Some(netns)),
            None => bail!(
                "container {container_id} joins the network of pod sandbox {sandbox_id}, which this shim does not host"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_network_maps_to_the_pods() {
        let networks = PodNetworks::default();
        let own = Path::new("/proc/42/ns/net");
        networks.insert("k8s.io", "pod1", PathBuf::from("/var/run/netns/cni-1"));
        assert_eq!(
            networks
                .replacement(Some(own), own, "k8s.io", "pod1", "c1")
                .unwrap(),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        // Another namespace's pod of that name is not this one.
        let err = networks
            .replacement(Some(own), own, "moby", "pod1", "c1")
            .unwrap_err();
        assert!(err.to_string().contains("does not host"), "{err}");
        // Any other path is the container's own business.
        let other = Path::new("/var/run/netns/x");
        assert_eq!(
            networks
                .replacement(Some(other), own, "k8s.io", "pod1", "c1")
                .unwrap(),
            None
        );
        networks.remove("k8s.io", "pod1");
        assert!(networks
            .replacement(Some(own), own, "k8s.io", "pod1", "c1")
            .is_err());
    }
}
