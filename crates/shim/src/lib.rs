//! wasishim-shim: the containerd task service that hosts wasishim-engine guests.
//!
//! A containerd request arrives at [`service::TaskService`], which moves the
//! container through its [`lifecycle`] and publishes [`events`]; the engine builds
//! and runs the guest; the exit status flows back through the same service.
//! The binaries differ only in how they host that service ([`server`]).

pub mod artifact;
pub mod cgroups;
pub mod cleanup;
pub mod cli;
pub mod content;
pub mod events;
pub mod launch;
pub mod lifecycle;
pub mod logging;
pub mod negotiation;
pub mod process;
pub mod rootfs;
pub mod server;
pub mod service;
pub mod stats;

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

/// Annotation CRI sets on every container of a pod, the sandbox included.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
