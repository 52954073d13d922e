//! Per-pod or per-node: every difference between the two binaries, in one place.
//!
//! Both binaries run the same task service; they differ only in which
//! containers share a server process and in how that process is sized, logs
//! and ends. Every other file asks a [`Hosting`] method instead of matching
//! on it.

use std::path::Path;

use containerd_shim::Flags;

use crate::logging;

/// Identity of one shim binary: the runtime name containerd knows it by and
/// how it hosts containers.
#[derive(Debug, Clone, Copy)]
pub struct Runtime {
    /// e.g. `io.containerd.wasmtime.v1`.
    pub name: &'static str,
    /// e.g. `containerd-shim-wasmtime-v1`.
    pub binary: &'static str,
    pub hosting: Hosting,
}

/// Which containers share a server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosting {
    /// One process per pod (containers with the same CRI sandbox id), or per
    /// container outside Kubernetes; it exits with its last task.
    PerPod,
    /// One long-lived process per containerd instance for every container of
    /// every namespace; it lingers idle for a while after its last task.
    PerNode,
}

/// The per-pod shim.
pub const PER_POD: Runtime = Runtime {
    name: "io.containerd.wasmtime.v1",
    binary: "containerd-shim-wasmtime-v1",
    hosting: Hosting::PerPod,
};

/// The per-node shim.
pub const PER_NODE: Runtime = Runtime {
    name: "io.containerd.wasmtimed.v1",
    binary: "containerd-shim-wasmtimed-v1",
    hosting: Hosting::PerNode,
};

impl Runtime {
    /// The address of the server a container belongs to. Per-pod: containers
    /// with the same CRI sandbox id share one server, any other container gets
    /// its own. Per-node: one server for every namespace of this containerd,
    /// named after this build of the binary (see [`node_identity`]).
    pub fn socket_address(&self, flags: &Flags, sandbox_id: Option<&str>) -> String {
        match self.hosting {
            Hosting::PerPod => {
                let grouping = sandbox_id.unwrap_or(&flags.id);
                containerd_shim::socket_address(&flags.address, &flags.namespace, grouping)
            }
            Hosting::PerNode => {
                containerd_shim::socket_address(&flags.address, self.binary, &node_identity())
            }
        }
    }
}

impl Hosting {
    /// The working directory of a newly launched server.
    pub fn server_workdir(self, bundle: &Path) -> &Path {
        match self {
            Hosting::PerPod => bundle,
            // The node server outlives this bundle.
            Hosting::PerNode => Path::new("/"),
        }
    }

    /// Process-wide settings made before the server starts any thread.
    pub fn prepare_process(self) {
        if self == Hosting::PerPod {
            one_malloc_arena();
        }
    }

    /// Sets up the server's log (see [`crate::logging`]).
    pub fn init_log(self, socket: &str, debug: bool) -> Result<(), String> {
        match self {
            Hosting::PerPod => logging::init_per_pod(debug),
            Hosting::PerNode => logging::init_per_node(socket, debug),
        }
    }

    /// Removes what a cleanly exiting server leaves behind besides its socket.
    pub fn remove_log(self, socket: &str) {
        if self == Hosting::PerNode {
            // A clean exit leaves nothing to investigate, and the log is in memory (tmpfs).
            logging::remove_node_log(socket);
        }
    }

    /// Instances the engine's pool holds: a per-node server hosts every guest
    /// of the node, so it has room for thousands.
    pub fn pool_capacity(self) -> u32 {
        match self {
            Hosting::PerPod => wasishim_engine::DEFAULT_POOL_CAPACITY,
            Hosting::PerNode => 10_000,
        }
    }

    /// Containers the pool is shared out between: Kubernetes' default of
    /// 110 pods per node for the per-node server.
    pub fn pool_containers(self) -> u32 {
        match self {
            Hosting::PerPod => wasishim_engine::DEFAULT_POOL_CONTAINERS,
            Hosting::PerNode => 110,
        }
    }

    /// The memory cap of a container without a memory limit: in the
    /// per-node server no cgroup bounds a guest, so the engine does.
    pub fn default_memory_limit(self) -> Option<u64> {
        match self {
            Hosting::PerPod => None,
            Hosting::PerNode => Some(wasishim_engine::NODE_DEFAULT_MEMORY_LIMIT),
        }
    }

    /// Network namespaces made ahead for containers that ask for a new one
    /// (plain `ctr run`); only worth it in the long-lived per-node server.
    pub fn spare_network_namespaces(self) -> usize {
        match self {
            Hosting::PerPod => 0,
            Hosting::PerNode => 2,
        }
    }

    /// Whether the server stays a while after its last task, to keep its
    /// warm engine for the next pod, instead of exiting at once.
    pub fn lingers_when_idle(self) -> bool {
        self == Hosting::PerNode
    }

    /// Whether the server precompiles images as containerd records them
    /// (`image_events.rs`): the per-node server lives on between pods and
    /// shares its engine with them; a per-pod shim lives for its pod only.
    pub fn precompiles_pulled_images(self) -> bool {
        self == Hosting::PerNode
    }

    /// Whether a pod sandbox moves the server process into the pod's cgroup.
    /// Only a per-pod server belongs to one pod; the node server hosts many,
    /// so a pod cgroup gets no process there.
    pub fn sandbox_holds_process(self) -> bool {
        self == Hosting::PerPod
    }
}

/// Identifies this build of the binary: its version and the executable's
/// modification time, so that replacing the binary (an upgrade) makes the
/// next start launch a new node server instead of reusing the old one.
fn node_identity() -> String {
    let modified = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("node-{}-{modified}", env!("CARGO_PKG_VERSION"))
}

/// Makes every thread allocate from glibc's main arena. By default each
/// thread that allocates (ttrpc, guest, stdin, blocking pool) gets an arena
/// of its own, about 130 KiB resident each: a fifth of an idle per-pod
/// shim's private memory. A per-pod shim runs one pod's few threads, so
/// sharing one arena costs it nothing measurable; the per-node server, with
/// a thread per guest, keeps the default.
fn one_malloc_arena() {
    // SAFETY: mallopt only changes allocator settings; called before the
    // server starts any thread.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        log::debug!("mallopt(M_ARENA_MAX, 1) refused");
    }
}
