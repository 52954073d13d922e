//! What a container runs: a wasm guest, or, for a CRI pod sandbox, nothing.
//!
//! CRI creates every pod's sandbox container first (the "pause" container)
//! and keeps it until the pod is removed. A runc pod runs a pause binary for
//! it; here the sandbox is a placeholder inside the shim that stays running
//! until it is signalled, so a pod costs no extra process or thread.
//!
//! The guest is behind a seam ([`Guests`], [`Guest`], [`RunningGuest`]):
//! the engine in the binaries, `fakes` in the task service's unit tests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use wasishim_engine::{
    Bundle, ContainerLabels, ExitStatus, NetworkNamespace, Stdio, WasmEngine, Workload,
    WorkloadHandle, WorkloadSpec,
};

use crate::cgroups::Cgroup;
use crate::content;
use crate::keys::TaskKey;

/// Runs once when a started container ends.
pub type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

/// A guest ready to start: the engine's [`Workload`], or a fake in unit tests.
pub trait Guest: Send {
    /// Starts the guest on its own thread; `on_exit` runs once when it ends.
    fn start(self: Box<Self>, on_exit: OnExit) -> Result<Arc<dyn RunningGuest>>;
    /// The memory cap the guest runs under (its limit or the engine's
    /// default cap), for Stats; `None` if there is none.
    fn memory_limit(&self) -> Option<u64>;
}

/// Controls a started guest.
pub trait RunningGuest: Send + Sync {
    /// Delivers a signal (9 and 15 end it; see the engine's `WorkloadHandle::kill`).
    fn kill(&self, signal: u32) -> Result<()>;
    fn close_stdin(&self);
    /// The thread running the guest, once it runs.
    fn thread_id(&self) -> Option<i32>;
    /// Bytes of linear memory the guest holds.
    fn memory_bytes(&self) -> u64;
}

/// What a guest is built from.
pub struct GuestRequest<'a> {
    pub bundle: &'a Bundle,
    pub key: &'a TaskKey,
    pub stdio: Stdio,
    /// The pod network to join instead of the spec's (see [`crate::pod_network`]).
    pub network: Option<PathBuf>,
    /// The container's cgroup, which the guest's thread joins.
    pub cgroup: Option<Arc<Cgroup>>,
}

/// Builds guests: the engine (and containerd's content store for Wasm OCI
/// artifacts), or a fake in unit tests.
pub trait Guests: Send + Sync {
    /// Compiles and links the guest, opens its stdio. Blocking.
    fn prepare(&self, request: GuestRequest<'_>) -> Result<Box<dyn Guest>>;
}

/// Guests built by the wasmtime engine.
pub struct EngineGuests {
    engine: WasmEngine,
    /// containerd's gRPC socket, where Wasm OCI artifacts' layers are read;
    /// without it, every image's code must be a file in its rootfs.
    containerd_address: Option<String>,
}

impl EngineGuests {
    pub fn new(engine: WasmEngine, containerd_address: &str) -> EngineGuests {
        EngineGuests {
            engine,
            containerd_address: Some(containerd_address.to_string()).filter(|a| !a.is_empty()),
        }
    }
}

impl Guests for EngineGuests {
    fn prepare(&self, request: GuestRequest<'_>) -> Result<Box<dyn Guest>> {
        let mut spec = WorkloadSpec::from_loaded(request.bundle)?;
        if let Some(netns) = request.network {
            spec.network = NetworkNamespace::Join(netns);
        }
        // Compile slots are shared fairly between pods; containers without
        // a pod (ctr run) share their containerd namespace's turn.
        spec.tenant = match spec.tenant.is_empty() {
            true => request.key.namespace.clone(),
            false => format!("{}/{}", request.key.namespace, spec.tenant),
        };
        let container = content::ContainerRef {
            address: self.containerd_address.as_deref(),
            namespace: &request.key.namespace,
            id: &request.key.id,
        };
        let workload = content::prepare_guest(&self.engine, spec, request.stdio, &container)?;
        let workload = match self.engine.http_metrics(ContainerLabels {
            namespace: request.key.namespace.clone(),
            container: request.key.id.clone(),
        }) {
            Some(metrics) => workload.with_http_metrics(metrics),
            None => workload,
        };
        let workload = match request.cgroup {
            Some(cgroup) => workload.on_thread_start(move |tid| cgroup.place_thread(tid)),
            None => workload,
        };
        Ok(Box::new(workload))
    }
}

impl Guest for Workload {
    fn start(self: Box<Self>, on_exit: OnExit) -> Result<Arc<dyn RunningGuest>> {
        let handle = Workload::start(*self, on_exit)?;
        Ok(Arc::new(handle))
    }

    fn memory_limit(&self) -> Option<u64> {
        Workload::memory_limit(self)
    }
}

impl RunningGuest for WorkloadHandle {
    fn kill(&self, signal: u32) -> Result<()> {
        WorkloadHandle::kill(self, signal as i32)
    }

    fn close_stdin(&self) {
        WorkloadHandle::close_stdin(self)
    }

    fn thread_id(&self) -> Option<i32> {
        WorkloadHandle::thread_id(self)
    }

    fn memory_bytes(&self) -> u64 {
        WorkloadHandle::memory_bytes(self)
    }
}

/// A container ready to start.
pub enum Prepared {
    Guest(Box<dyn Guest>),
    Sandbox,
}

/// Controls a started container.
#[derive(Clone)]
pub enum Handle {
    Guest(Arc<dyn RunningGuest>),
    /// Holds the exit callback until a terminating signal arrives.
    Sandbox(Arc<Mutex<Option<OnExit>>>),
}

impl Prepared {
    /// Starts the container; `on_exit` runs once when it ends.
    pub fn start(self, on_exit: impl FnOnce(ExitStatus) + Send + 'static) -> Result<Handle> {
        match self {
            Prepared::Guest(guest) => guest.start(Box::new(on_exit)).map(Handle::Guest),
            Prepared::Sandbox => Ok(Handle::Sandbox(Arc::new(Mutex::new(Some(Box::new(
                on_exit,
            )))))),
        }
    }
}

impl Handle {
    /// Delivers a signal. The sandbox ends on SIGKILL, SIGTERM and SIGINT,
    /// like the pause process, and ignores every other signal.
    pub fn kill(&self, signal: u32) -> Result<()> {
        match self {
            Handle::Guest(guest) => guest.kill(signal),
            Handle::Sandbox(on_exit) => {
                const SIGINT: u32 = 2;
                const SIGKILL: u32 = 9;
                const SIGTERM: u32 = 15;
                if matches!(signal, SIGINT | SIGKILL | SIGTERM) {
                    let callback = on_exit.lock().ok().and_then(|mut slot| slot.take());
                    if let Some(callback) = callback {
                        callback(ExitStatus::now(128 + signal));
                    }
                }
                Ok(())
            }
        }
    }

    pub fn close_stdin(&self) {
        if let Handle::Guest(guest) = self {
            guest.close_stdin();
        }
    }

    /// The thread running the guest; the sandbox has none.
    pub fn thread_id(&self) -> Option<i32> {
        match self {
            Handle::Guest(guest) => guest.thread_id(),
            Handle::Sandbox(_) => None,
        }
    }

    /// Bytes of linear memory the guest holds; the sandbox holds none.
    pub fn memory_bytes(&self) -> u64 {
        match self {
            Handle::Guest(guest) => guest.memory_bytes(),
            Handle::Sandbox(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn sandbox_runs_until_terminated() {
        let (tx, rx) = mpsc::channel();
        let handle = Prepared::Sandbox
            .start(move |status| tx.send(status.code).unwrap())
            .unwrap();
        handle.kill(0).unwrap();
        handle.kill(28).unwrap(); // SIGWINCH: ignored
        assert!(rx.try_recv().is_err());
        handle.kill(15).unwrap();
        assert_eq!(rx.try_recv().unwrap(), 143);
        handle.kill(9).unwrap(); // already ended: no second exit
        assert!(rx.try_recv().is_err());
    }
}

/// Fake guests for the task service's unit tests: they start at once, end
/// when the test says or on SIGKILL/SIGTERM, and record what they were asked.
#[cfg(test)]
pub mod fakes {
    use super::*;

    /// A started fake guest: ends on SIGKILL/SIGTERM or when the test says.
    #[derive(Default)]
    pub struct FakeRunning {
        on_exit: Mutex<Option<OnExit>>,
        pub signals: Mutex<Vec<u32>>,
    }

    impl FakeRunning {
        pub fn end(&self, code: u32) {
            if let Some(on_exit) = self.on_exit.lock().unwrap().take() {
                on_exit(ExitStatus::now(code));
            }
        }
    }

    impl RunningGuest for FakeRunning {
        fn kill(&self, signal: u32) -> anyhow::Result<()> {
            self.signals.lock().unwrap().push(signal);
            if matches!(signal, 9 | 15) {
                self.end(128 + signal);
            }
            Ok(())
        }
        fn close_stdin(&self) {}
        fn thread_id(&self) -> Option<i32> {
            None
        }
        fn memory_bytes(&self) -> u64 {
            65536
        }
    }

    struct FakeGuest {
        started: Arc<Mutex<Vec<Arc<FakeRunning>>>>,
        fail_start: bool,
        memory_limit: Option<u64>,
    }

    impl Guest for FakeGuest {
        fn start(self: Box<Self>, on_exit: OnExit) -> anyhow::Result<Arc<dyn RunningGuest>> {
            if self.fail_start {
                anyhow::bail!("cannot create the guest's thread (fake)");
            }
            let running = Arc::new(FakeRunning {
                on_exit: Mutex::new(Some(on_exit)),
                ..FakeRunning::default()
            });
            self.started.lock().unwrap().push(running.clone());
            Ok(running)
        }

        fn memory_limit(&self) -> Option<u64> {
            self.memory_limit
        }
    }

    /// Builds fake guests, or fails as a bad image would.
    #[derive(Default)]
    pub struct FakeGuests {
        pub fail_prepare: bool,
        pub fail_start: bool,
        /// The engine's cap for a container without a memory limit.
        pub default_memory_limit: Option<u64>,
        /// The network each guest was asked to join instead of its spec's.
        pub networks: Mutex<Vec<Option<PathBuf>>>,
        pub started: Arc<Mutex<Vec<Arc<FakeRunning>>>>,
    }

    impl FakeGuests {
        pub fn last_started(&self) -> Arc<FakeRunning> {
            self.started.lock().unwrap().last().unwrap().clone()
        }
    }

    impl Guests for FakeGuests {
        fn prepare(&self, request: GuestRequest<'_>) -> anyhow::Result<Box<dyn Guest>> {
            self.networks.lock().unwrap().push(request.network);
            if self.fail_prepare {
                anyhow::bail!("entrypoint /app.wasm not found in the image's rootfs");
            }
            Ok(Box::new(FakeGuest {
                started: self.started.clone(),
                fail_start: self.fail_start,
                memory_limit: request
                    .bundle
                    .resources
                    .memory_limit
                    .or(self.default_memory_limit),
            }))
        }
    }
}
