//! Hosting the task service on a ttrpc socket until containerd is done with it.
//!
//! The per-pod binary serves one pod on the socket its `start` bound and passed
//! down as file descriptor 3; it exits when the last task is gone. SIGTERM
//! and SIGINT drain the server (see [`drain_on_signals`]).

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use anyhow::{Context, Result};
use containerd_shim_protos::shim_async::{create_task, Task};
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::Server;
use wasishim_engine::{WasmEngine, THIS_EXECUTABLE};

use crate::events::EventPublisher;
use crate::hosting::Runtime;
use crate::keys::ConnectionIds;
use crate::metrics::{self, MetricsAddress, ShimMetrics};
use crate::native::RuncNatives;
use crate::negotiation::{TASK_SERVICE_V2, TASK_SERVICE_V3};
use crate::os::RealOs;
use crate::process::EngineGuests;
use crate::service::{ShutdownSignal, TaskService};
use crate::socket::{self, LISTENER_FD};

/// Where the server listens and for whom.
pub struct ServeOptions {
    pub runtime: Runtime,
    pub namespace: String,
    /// `unix:///run/containerd/s/<hash>`: removed when the server exits.
    pub socket_address: String,
    /// containerd's ttrpc address, for events.
    pub ttrpc_address: Option<String>,
    /// containerd's gRPC socket (`-address`), for Wasm OCI artifacts' layers.
    pub containerd_address: String,
}

/// Serves the task service on the inherited listener until the service asks
/// to shut down, then removes the socket.
pub async fn serve_inherited(options: ServeOptions) -> Result<()> {
    // SAFETY: `start` put a bound, listening unix socket at this descriptor and
    // nothing else in this process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(LISTENER_FD) };
    listener
        .set_nonblocking(true)
        .context("cannot use the inherited shim socket")?;
    let listener = Listener::try_from(listener).context("cannot serve the shim socket")?;

    let hosting = options.runtime.hosting;
    let metrics_address = match MetricsAddress::from_env() {
        Some(Ok(address)) => Some(address),
        Some(Err(e)) => {
            log::error!("{e:#}: metrics are off in this shim (its tasks are served as before)");
            None
        }
        None => None,
    };
    // The environment overrides the hosting's defaults. Guests are compiled
    // by this binary run as a compile worker, never in the server.
    let engine = WasmEngine::builder()
        .compile_worker(Some(THIS_EXECUTABLE.into()))
        .pool_capacity(hosting.pool_capacity())
        .pool_containers(hosting.pool_containers())
        .default_memory_limit(hosting.default_memory_limit())
        .spare_network_namespaces(hosting.spare_network_namespaces())
        .metrics(metrics_address.is_some())
        .from_env()
        .and_then(|builder| builder.build())
        .context("cannot create the wasmtime engine")?;
    let events = EventPublisher::connect(options.ttrpc_address.as_deref()).await;
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let metrics = engine
        .metrics()
        .map(|engine| Arc::new(ShimMetrics::new(engine.clone())));
    let guests = EngineGuests::new(engine, &options.containerd_address);
    // Native containers' inits are re-parented here; their exits are ours.
    crate::reaper::start()?;
    let mut service = TaskService::new(
        options.runtime,
        &options.namespace,
        Arc::new(RealOs::new()),
        Arc::new(guests),
        events,
        shutdown.clone(),
    )
    .with_natives(Arc::new(RuncNatives::default()));
    if let Some(metrics) = &metrics {
        service = service.with_metrics(metrics.clone());
    }
    let service = Arc::new(service);
    if let (Some(address), Some(metrics)) = (&metrics_address, metrics) {
        tokio::spawn(metrics::serve(address.clone(), metrics, service.clone()));
    }

    let mut server = Server::new()
        .set_accept_hook(ConnectionIds::default())
        .add_listener(listener)
        .register_service(task_services(service.clone()));
    server
        .start()
        .await
        .context("cannot start the ttrpc server")?;
    log::info!(
        "serving {} on {}",
        options.runtime.name,
        options.socket_address
    );

    let socket = Arc::new(OwnSocket::new(&options.socket_address));
    tokio::spawn(drain_on_signals(
        service.clone(),
        socket.clone(),
        shutdown.clone(),
    ));
    loop {
        shutdown.notified().await;
        if service.is_draining()
            || !hosting.lingers_when_idle()
            || linger_then_exit(&service, &socket, &shutdown).await
        {
            break;
        }
    }
    log::info!("no tasks left: shutting down");
    // Give the reply that triggered the shutdown a moment to reach containerd.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    if let Err(err) = server.shutdown().await {
        log::warn!("ttrpc server shutdown: {err}");
    }
    socket.remove();
    metrics::remove_socket();
    hosting.remove_log(&options.socket_address);
    Ok(())
}

/// This server's socket file, removed at most once: once removed, the path
/// may be bound by a new server, whose socket must not be taken away.
struct OwnSocket {
    address: String,
    removed: std::sync::atomic::AtomicBool,
}

impl OwnSocket {
    fn new(address: &str) -> OwnSocket {
        OwnSocket {
            address: address.to_string(),
            removed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn path(&self) -> &str {
        socket::socket_path(&self.address)
    }

    /// Removes the socket file, if not done before; the caller holds the
    /// socket directory's lock when a new server may be starting.
    fn remove(&self) {
        if !self.removed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            socket::remove_socket(&self.address);
        }
    }
}

/// SIGTERM or SIGINT to the server drains it (nothing else would end its
/// guests gracefully: they are threads of this process, not processes a
/// node shutdown signals one by one):
/// - it takes no new task: its socket is removed under the lock `start`
///   takes, so the next `start` launches a new server, and a create that
///   still arrives is refused;
/// - every task gets the same signal, as from a Kill: a command guest ends
///   (143, 130), an HTTP server stops accepting and finishes its requests in
///   flight, a pod sandbox ends;
/// - it exits once containerd has deleted its last task, without lingering.
///
/// A second signal is passed on again; SIGKILL still ends the server at once.
async fn drain_on_signals(
    service: Arc<TaskService>,
    socket: Arc<OwnSocket>,
    shutdown: ShutdownSignal,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(err), _) | (_, Err(err)) => {
            log::warn!("cannot handle SIGTERM and SIGINT, they will end the server at once: {err}");
            return;
        }
    };
    loop {
        let signal = tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        };
        let tasks = service.task_count().await;
        log::info!("received signal {signal}: draining, passing it to {tasks} task(s)");
        if service.begin_drain() {
            match socket::lock_socket_dir(socket.path()) {
                Ok(_lock) => socket.remove(),
                Err(err) => {
                    log::warn!("{err:#}: removing the socket without the lock");
                    socket.remove();
                }
            }
        }
        service.signal_all(signal as u32).await;
        if service.task_count().await == 0 {
            shutdown.notify_one();
        }
    }
}

/// Environment variable setting how long an idle per-node server lingers.
const NODE_IDLE_ENV: &str = "WASISHIM_NODE_IDLE_SECONDS";
const NODE_IDLE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long an idle per-node server lingers before it exits.
fn node_idle_time() -> std::time::Duration {
    std::env::var(NODE_IDLE_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or(NODE_IDLE_DEFAULT)
}

/// Lingers while the per-node server has no tasks, so a node with pods coming
/// and going keeps its warm engine. Returns true (socket already removed)
/// once it stayed idle for the whole linger time: no task, no request, and no
/// `start` that sent a container here. The check and the socket's removal
/// happen under the lock `start` holds, so a start either reuses this server
/// before the check (and keeps it alive) or launches a new one after it.
/// A drain (see [`drain_on_signals`]) ends the linger at once.
async fn linger_then_exit(
    service: &TaskService,
    socket: &OwnSocket,
    shutdown: &ShutdownSignal,
) -> bool {
    let idle = node_idle_time();
    let socket_path = socket.path();
    log::info!("no tasks left: exiting after {idle:?} without work");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(idle) => {}
            _ = shutdown.notified() => {}
        }
        if service.is_draining() {
            return true;
        }
        if service.task_count().await > 0 {
            return false;
        }
        let Ok(_lock) = socket::lock_socket_dir(socket_path) else {
            continue;
        };
        let start_was_here = socket::reused_within(socket_path, idle);
        if service.task_count().await == 0 && service.idle_for() >= idle && !start_was_here {
            socket.remove();
            return true;
        }
    }
}

/// The task service under both API names: containerd 1.x calls
/// `containerd.task.v2.Task`, 2.x `containerd.task.v3.Task`; the messages are
/// the same.
fn task_services(
    service: Arc<TaskService>,
) -> std::collections::HashMap<String, containerd_shim_protos::ttrpc::r#async::Service> {
    let service: Arc<dyn Task + Send + Sync> = service;
    let mut services = create_task(service.clone());
    let v2 = create_task(service)
        .into_values()
        .next()
        .map(|s| (TASK_SERVICE_V2.to_string(), s));
    services.extend(v2);
    debug_assert!(services.contains_key(TASK_SERVICE_V3));
    services
}
