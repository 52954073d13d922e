//! wasishim-shim: the containerd task service that hosts wasishim-engine guests.
//!
//! A containerd request arrives at the task service (`service.rs`), which
//! resolves the task (`keys.rs`), moves the container through its lifecycle
//! (`container.rs`, `lifecycle.rs`) and publishes events (`events.rs`); the
//! create pipeline (`create.rs`) has the engine build the guest; the exit
//! status flows back through the same service. Kernel calls go through the
//! OS seam (`os.rs`). The binaries differ only in how they host that service
//! (`hosting.rs`); their public surface is [`cli::main`] and the two runtimes.

mod artifact;
mod cgroups;
mod cleanup;
pub mod cli;
mod container;
mod content;
mod create;
mod errors;
mod events;
mod exec;
#[doc(hidden)]
pub mod fuzzing;
mod hosting;
mod keys;
mod launch;
mod lifecycle;
mod logging;
pub mod metrics;
mod native;
mod native_records;
mod negotiation;
mod os;
mod pod_namespaces;
mod pod_network;
mod process;
mod reaper;
mod rootfs;
mod runc;
mod server;
mod service;
mod socket;
mod stats;

pub use hosting::{Hosting, Runtime, PER_NODE, PER_POD};
