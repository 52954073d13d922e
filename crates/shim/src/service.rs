//! The containerd task service: one type serving every task API request.
//!
//! Requests move containers through their [`Lifecycle`]; the engine builds and
//! runs guests; guest exits come back through one channel and are recorded and
//! published in order. The service does not know how it is hosted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim_protos::shim::shim::CheckpointTaskRequest;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use containerd_shim_protos::types::mount::Mount;
use containerd_shim_protos::types::task::{ProcessInfo, Status as ProtoStatus};
use tokio::sync::{mpsc, watch, Mutex};
use wasishim_engine::{ExitStatus, NetworkNamespace, Stdio, WasmEngine, WorkloadSpec};

use crate::cgroups::{self, Cgroup, Hierarchies, Limits};
use crate::events::{timestamp, EventPublisher};
use crate::lifecycle::{IllegalTransition, KillAction, Lifecycle, Status};
use crate::process::{self, Prepared};
use crate::stats::{self, Usage};
use crate::{content, rootfs, Hosting, Runtime};

/// One container hosted by this shim.
struct Container {
    bundle: PathBuf,
    stdin: String,
    stdout: String,
    stderr: String,
    rootfs_mounted: bool,
    /// The container's cgroup at `linux.cgroupsPath`, if the spec names one.
    cgroup: Option<Arc<Cgroup>>,
    /// `linux.resources.memory.limit`, reported with the stats (0: none).
    memory_limit: u64,
    /// The sandbox id, when this container is a pod sandbox.
    sandbox_of: Option<String>,
    lifecycle: Lifecycle,
    /// Wakes `wait` requests once the container has stopped.
    exit_watch: watch::Sender<Option<ExitStatus>>,
}

/// containerd's ttrpc metadata key carrying the request's namespace.
const NAMESPACE_METADATA: &str = "containerd-namespace-ttrpc";

/// A task is named by its containerd namespace and id: one server may host
/// containers of several namespaces with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TaskKey {
    namespace: String,
    id: String,
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// Why the hosting server should stop serving.
pub type ShutdownSignal = Arc<tokio::sync::Notify>;

/// The task service shared by the per-pod and per-node servers.
pub struct TaskService {
    runtime: Runtime,
    engine: WasmEngine,
    events: Arc<EventPublisher>,
    containers: Arc<Mutex<HashMap<TaskKey, Container>>>,
    exits: mpsc::UnboundedSender<(TaskKey, ExitStatus)>,
    shutdown: ShutdownSignal,
    /// Guests run inside this process, so every task reports its pid.
    pid: u32,
    hierarchies: Hierarchies,
    /// Namespace of requests that carry none (the `-namespace` the shim was started with).
    default_namespace: String,
    pod_networks: PodNetworks,
    /// When a task was last created, started or deleted.
    last_activity: std::sync::Mutex<std::time::Instant>,
    /// Namespace of the task each connection created (see `create_key`).
    connection_namespaces: std::sync::Mutex<HashMap<u64, String>>,
    /// containerd's gRPC socket, where Wasm OCI artifacts' layers are read.
    containerd_address: Option<String>,
}

/// Key under which [`ConnectionIds`] stores a connection's id.
const CONNECTION_ID: &str = "wasishim.connection-id";

/// Numbers every accepted connection, so that requests can be told apart by
/// the connection they came on.
#[derive(Debug, Default)]
pub struct ConnectionIds(std::sync::atomic::AtomicU64);

impl ttrpc::AcceptHook for ConnectionIds {
    fn on_accept(&self, _fd: std::os::fd::RawFd) -> Result<ttrpc::HookOutput, ttrpc::HookError> {
        let id = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut data = ttrpc::ConnectionData::new();
        data.insert(CONNECTION_ID.to_string(), Box::new(id));
        Ok(ttrpc::HookOutput {
            data,
            payload_transform: None,
        })
    }
}

fn connection_id(ctx: &TtrpcContext) -> Option<u64> {
    use ttrpc::ConnectionDataExt;
    ctx.connection_data.get_typed::<u64>(CONNECTION_ID).copied()
}

/// The network namespace of each pod sandbox this server hosts, by
/// (containerd namespace, sandbox id).
///
/// CRI points a pod's containers at the sandbox's network through
/// `/proc/<sandbox pid>/ns/net`. The sandbox "process" is this server, whose
/// own network is the host's, so that path is mapped back to the network
/// namespace the sandbox was created with.
#[derive(Clone, Default)]
struct PodNetworks(Arc<std::sync::Mutex<HashMap<(String, String), PathBuf>>>);

impl PodNetworks {
    fn insert(&self, namespace: &str, sandbox_id: &str, netns: PathBuf) {
        if let Ok(mut map) = self.0.lock() {
            map.insert((namespace.to_string(), sandbox_id.to_string()), netns);
        }
    }

    fn remove(&self, namespace: &str, sandbox_id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&(namespace.to_string(), sandbox_id.to_string()));
        }
    }

    fn get(&self, namespace: &str, sandbox_id: &str) -> Option<PathBuf> {
        let map = self.0.lock().ok()?;
        map.get(&(namespace.to_string(), sandbox_id.to_string()))
            .cloned()
    }
}

/// The network namespace path a spec names, if any.
fn spec_netns(spec: &serde_json::Value) -> Option<PathBuf> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Whether `path` is this process's own network namespace (`/proc/<pid>/ns/net`).
fn is_own_netns(path: &Path, pid: u32) -> bool {
    path == Path::new(&format!("/proc/{pid}/ns/net"))
}

impl TaskService {
    /// Creates the service and starts the task that records guest exits.
    /// `shutdown` is notified when the host may exit: no task remains and
    /// containerd asked for shutdown, or the last task was deleted.
    pub fn new(
        runtime: Runtime,
        default_namespace: &str,
        engine: WasmEngine,
        events: EventPublisher,
        shutdown: ShutdownSignal,
    ) -> TaskService {
        let (exits, exit_rx) = mpsc::unbounded_channel();
        let service = TaskService {
            runtime,
            engine,
            events: Arc::new(events),
            containers: Arc::new(Mutex::new(HashMap::new())),
            exits,
            shutdown,
            pid: std::process::id(),
            hierarchies: Hierarchies::detect(),
            default_namespace: default_namespace.to_string(),
            pod_networks: PodNetworks::default(),
            connection_namespaces: std::sync::Mutex::default(),
            last_activity: std::sync::Mutex::new(std::time::Instant::now()),
            containerd_address: None,
        };
        tokio::spawn(record_exits(
            exit_rx,
            service.containers.clone(),
            service.events.clone(),
            service.pid,
        ));
        service
    }

    /// Reads the layers of Wasm OCI artifacts from the containerd whose gRPC
    /// socket is `address` (see `content.rs`); without it, every image's
    /// code must be a file in its rootfs.
    pub fn with_containerd_address(mut self, address: &str) -> TaskService {
        self.containerd_address = Some(address.to_string()).filter(|a| !a.is_empty());
        self
    }

    /// How long since the last request that created, started or deleted a task.
    pub fn idle_for(&self) -> std::time::Duration {
        self.last_activity
            .lock()
            .map(|at| at.elapsed())
            .unwrap_or_default()
    }

    fn mark_activity(&self) {
        if let Ok(mut at) = self.last_activity.lock() {
            *at = std::time::Instant::now();
        }
    }

    /// How many tasks this server hosts now.
    pub async fn task_count(&self) -> usize {
        self.containers.lock().await.len()
    }

    /// The namespace a request names: containerd 2.x sends it as ttrpc
    /// metadata; 1.x sends none.
    fn metadata_namespace(ctx: &TtrpcContext) -> Option<&String> {
        ctx.metadata
            .get(NAMESPACE_METADATA)
            .and_then(|values| values.first())
            .filter(|ns| !ns.is_empty())
    }

    /// The key of a task being created. Without metadata, the namespace is
    /// the bundle's parent directory (containerd lays bundles out as
    /// `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`), and it is
    /// remembered for the connection: containerd 1.x opens one connection per
    /// task, so later requests on it belong to the same namespace.
    fn create_key(&self, ctx: &TtrpcContext, id: &str, bundle: &str) -> TaskKey {
        let namespace = Self::metadata_namespace(ctx)
            .cloned()
            .or_else(|| {
                Path::new(bundle)
                    .parent()
                    .and_then(|dir| dir.file_name())
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| self.default_namespace.clone());
        if let Some(connection) = connection_id(ctx) {
            if let Ok(mut namespaces) = self.connection_namespaces.lock() {
                namespaces.insert(connection, namespace.clone());
            }
        }
        TaskKey {
            namespace,
            id: id.to_string(),
        }
    }

    /// The key of the task a request names: by metadata, else by the
    /// namespace its connection created a task in, else the only task with
    /// that id, else the shim's own namespace.
    fn key(
        &self,
        ctx: &TtrpcContext,
        id: &str,
        containers: &HashMap<TaskKey, Container>,
    ) -> TaskKey {
        let from_connection = || {
            let connection = connection_id(ctx)?;
            self.connection_namespaces
                .lock()
                .ok()?
                .get(&connection)
                .cloned()
        };
        let only_match = || {
            let mut matches = containers.keys().filter(|k| k.id == id);
            match (matches.next(), matches.next()) {
                (Some(key), None) => Some(key.namespace.clone()),
                _ => None,
            }
        };
        let namespace = Self::metadata_namespace(ctx)
            .cloned()
            .or_else(from_connection)
            .or_else(only_match)
            .unwrap_or_else(|| self.default_namespace.clone());
        TaskKey {
            namespace,
            id: id.to_string(),
        }
    }

    fn unsupported(&self, what: &str) -> ttrpc::Error {
        error(
            Code::UNIMPLEMENTED,
            format!("{what} is not supported by {}", self.runtime.name),
        )
    }

    fn no_exec(&self, exec_id: &str) -> ttrpc::Result<()> {
        if exec_id.is_empty() {
            Ok(())
        } else {
            Err(self.unsupported("exec"))
        }
    }

    /// The host may exit once nothing is left to serve.
    fn shutdown_if_idle(&self, containers: &HashMap<TaskKey, Container>) {
        if containers.is_empty() {
            self.shutdown.notify_one();
        }
    }
}

fn error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn not_found(id: &str) -> ttrpc::Error {
    error(Code::NOT_FOUND, format!("task {id} not found"))
}

fn illegal(id: &str, err: IllegalTransition) -> ttrpc::Error {
    let code = match (err.action, err.status) {
        ("kill", Status::Stopped) => Code::NOT_FOUND,
        _ => Code::FAILED_PRECONDITION,
    };
    error(code, format!("task {id}: {err}"))
}

/// Records each guest exit once, wakes waiters and publishes /tasks/exit,
/// in the order the exits happened.
async fn record_exits(
    mut exit_rx: mpsc::UnboundedReceiver<(TaskKey, ExitStatus)>,
    containers: Arc<Mutex<HashMap<TaskKey, Container>>>,
    events: Arc<EventPublisher>,
    pid: u32,
) {
    while let Some((key, status)) = exit_rx.recv().await {
        let mut containers = containers.lock().await;
        let Some(container) = containers.get_mut(&key) else {
            continue;
        };
        if container.lifecycle.exited(status) {
            log::info!("task {key} exited with status {}", status.code);
            container.exit_watch.send_replace(Some(status));
            if status.oom_killed {
                events.task_oom(&key.namespace, &key.id).await;
            }
            events
                .task_exit(&key.namespace, &key.id, pid, status.code, status.exited_at)
                .await;
        }
    }
}

/// A container made ready by `create`.
struct Built {
    prepared: Prepared,
    /// The sandbox id, when this container is a pod sandbox.
    sandbox_of: Option<String>,
    rootfs_mounted: bool,
    cgroup: Option<Arc<Cgroup>>,
    memory_limit: u64,
}

/// Everything `create` does that blocks: cgroup, rootfs mount, compiling.
/// Undoes what it did when a later step fails.
/// Where `build` runs and what it may consult.
struct BuildContext {
    engine: WasmEngine,
    hierarchies: Hierarchies,
    pod_networks: PodNetworks,
    pid: u32,
    key: TaskKey,
    hosting: Hosting,
    containerd_address: Option<String>,
}

fn build(
    bundle: &Path,
    mounts: &[Mount],
    stdio: Stdio,
    cx: &BuildContext,
) -> anyhow::Result<Built> {
    let (engine, hierarchies, pid) = (&cx.engine, &cx.hierarchies, cx.pid);
    // The shim reads only what the engine does not own: the container's kind
    // and its cgroup. An unreadable spec is reported by the engine below.
    let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let sandbox = process::is_sandbox(&spec);
    let memory_limit = spec["linux"]["resources"]["memory"]["limit"]
        .as_i64()
        .and_then(|l| u64::try_from(l).ok())
        .unwrap_or(0);
    let cgroup = match spec["linux"]["cgroupsPath"]
        .as_str()
        .filter(|p| !p.is_empty())
    {
        None => None,
        Some(path) => {
            let relative = cgroups::relative_path(path)?;
            let cgroup = if sandbox && cx.hosting == Hosting::PerPod {
                Cgroup::for_sandbox(hierarchies, &relative, pid)
            } else if sandbox {
                // The node server hosts many pods: the pod cgroup gets no process.
                Cgroup::for_container(hierarchies, &relative, &Limits::default())
            } else {
                Cgroup::for_container(hierarchies, &relative, &Limits::from_spec(&spec))
            };
            Some(Arc::new(cgroup.with_context(|| {
                format!("cannot set up the container's cgroup {path}")
            })?))
        }
    };
    let undo_cgroup = |cgroup: &Option<Arc<Cgroup>>| {
        if let Some(cgroup) = cgroup {
            cgroup.remove();
        }
    };
    let sandbox_id = spec["annotations"][crate::SANDBOX_ID_ANNOTATION]
        .as_str()
        .unwrap_or(&cx.key.id)
        .to_string();
    if sandbox {
        if let Some(netns) = spec_netns(&spec) {
            cx.pod_networks
                .insert(&cx.key.namespace, &sandbox_id, netns);
        }
        // The pod sandbox runs nothing, so its rootfs is not even mounted.
        return Ok(Built {
            prepared: Prepared::Sandbox,
            sandbox_of: Some(sandbox_id),
            rootfs_mounted: false,
            cgroup,
            memory_limit,
        });
    }
    let rootfs_mounted = match rootfs::mount(bundle, mounts) {
        Ok(mounted) => mounted,
        Err(err) => {
            undo_cgroup(&cgroup);
            return Err(err);
        }
    };
    let workload = WorkloadSpec::from_bundle(bundle)
        .and_then(|spec| join_pod_network(spec, cx, &sandbox_id))
        .and_then(|spec| {
            let container = content::ContainerRef {
                address: cx.containerd_address.as_deref(),
                namespace: &cx.key.namespace,
                id: &cx.key.id,
            };
            content::prepare_guest(engine, spec, stdio, &container)
        });
    let workload = match workload {
        Ok(workload) => workload,
        Err(err) => {
            if rootfs_mounted {
                if let Err(unmount_err) = rootfs::unmount(bundle) {
                    log::warn!("{unmount_err:#}");
                }
            }
            undo_cgroup(&cgroup);
            return Err(err);
        }
    };
    let workload = match &cgroup {
        Some(cgroup) => {
            let cgroup = cgroup.clone();
            workload.on_thread_start(move |tid| cgroup.place_thread(tid))
        }
        None => workload,
    };
    Ok(Built {
        prepared: Prepared::Guest(Box::new(workload)),
        sandbox_of: None,
        rootfs_mounted,
        cgroup,
        memory_limit,
    })
}

/// Points a pod container that names the sandbox's `/proc/<pid>/ns/net` at
/// the pod's real network namespace (see [`PodNetworks`]).
fn join_pod_network(
    mut spec: WorkloadSpec,
    cx: &BuildContext,
    sandbox_id: &str,
) -> anyhow::Result<WorkloadSpec> {
    if let NetworkNamespace::Join(path) = &spec.network {
        if is_own_netns(path, cx.pid) {
            let Some(netns) = cx.pod_networks.get(&cx.key.namespace, sandbox_id) else {
                anyhow::bail!(
                    "container {} joins the network of pod sandbox {sandbox_id}, which this shim does not host",
                    cx.key.id
                );
            };
            spec.network = NetworkNamespace::Join(netns);
        }
    }
    Ok(spec)
}

fn stdio_path(path: &str) -> Option<PathBuf> {
    (!path.is_empty()).then(|| PathBuf::from(path))
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        self.mark_activity();
        let id = req.id.clone();
        log::info!("create task {id} from bundle {}", req.bundle);
        if req.terminal {
            return Err(error(
                Code::INVALID_ARGUMENT,
                format!(
                    "terminal (tty) is not supported by {}: run without -t",
                    self.runtime.name
                ),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(self.unsupported("restoring from a checkpoint"));
        }
        let key = self.create_key(ctx, &id, &req.bundle);
        if self.containers.lock().await.contains_key(&key) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("task {id} already exists"),
            ));
        }

        let bundle = PathBuf::from(&req.bundle);
        let cx = BuildContext {
            engine: self.engine.clone(),
            hierarchies: self.hierarchies.clone(),
            pod_networks: self.pod_networks.clone(),
            pid: self.pid,
            key: key.clone(),
            hosting: self.runtime.hosting,
            containerd_address: self.containerd_address.clone(),
        };
        let stdio = Stdio {
            stdin: stdio_path(&req.stdin),
            stdout: stdio_path(&req.stdout),
            stderr: stdio_path(&req.stderr),
        };
        let mounts = req.rootfs.to_vec();
        let build_bundle = bundle.clone();
        // Mounting, cgroups and compiling block; keep them off the request executor.
        let built = tokio::task::spawn_blocking(move || build(&build_bundle, &mounts, stdio, &cx))
            .await
            .map_err(|err| error(Code::INTERNAL, format!("create task {id}: {err}")))?;

        let built = built.map_err(|err| {
            log::error!("create task {id}: {err:#}");
            error(Code::INVALID_ARGUMENT, format!("{err:#}"))
        })?;

        let (exit_watch, _) = watch::channel(None);
        let container = Container {
            bundle,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            rootfs_mounted: built.rootfs_mounted,
            cgroup: built.cgroup,
            memory_limit: built.memory_limit,
            sandbox_of: built.sandbox_of,
            lifecycle: Lifecycle::Created(built.prepared),
            exit_watch,
        };
        let mut containers = self.containers.lock().await;
        containers.insert(key.clone(), container);
        self.events
            .task_create(&key.namespace, &id, &req.bundle, self.pid)
            .await;
        Ok(CreateTaskResponse {
            pid: self.pid,
            ..Default::default()
        })
    }

    async fn start(&self, ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        self.mark_activity();
        self.no_exec(&req.exec_id)?;
        let id = req.id;
        let mut containers = self.containers.lock().await;
        let key = self.key(ctx, &id, &containers);
        let container = containers.get_mut(&key).ok_or_else(|| not_found(&id))?;
        let prepared = container
            .lifecycle
            .begin_start()
            .map_err(|err| illegal(&id, err))?;
        let exits = self.exits.clone();
        let exit_key = key.clone();
        let started = prepared.start(move |status| {
            // The receiver lives as long as the service; nothing to do if it is gone.
            let _ = exits.send((exit_key, status));
        });
        match started {
            Ok(handle) => {
                container.lifecycle.started(handle);
                log::info!("started task {id}");
                self.events.task_start(&key.namespace, &id, self.pid).await;
                Ok(StartResponse {
                    pid: self.pid,
                    ..Default::default()
                })
            }
            Err(err) => {
                let status = ExitStatus::now(128);
                container.lifecycle.exited(status);
                container.exit_watch.send_replace(Some(status));
                Err(error(
                    Code::INTERNAL,
                    format!("cannot start task {id}: {err:#}"),
                ))
            }
        }
    }

    async fn state(&self, ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        self.no_exec(&req.exec_id)?;
        let containers = self.containers.lock().await;
        let container = containers
            .get(&self.key(ctx, &req.id, &containers))
            .ok_or_else(|| not_found(&req.id))?;
        let status = match container.lifecycle.status() {
            Status::Created => ProtoStatus::CREATED,
            Status::Running => ProtoStatus::RUNNING,
            Status::Stopped => ProtoStatus::STOPPED,
        };
        let mut resp = StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.display().to_string(),
            pid: self.pid,
            status: status.into(),
            stdin: container.stdin.clone(),
            stdout: container.stdout.clone(),
            stderr: container.stderr.clone(),
            ..Default::default()
        };
        if let Some(exit) = container.lifecycle.exit_status() {
            resp.exit_status = exit.code;
            resp.exited_at = Some(timestamp(exit.exited_at)).into();
        }
        Ok(resp)
    }

    async fn kill(&self, ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.no_exec(&req.exec_id)?;
        let id = req.id;
        let mut containers = self.containers.lock().await;
        let key = self.key(ctx, &id, &containers);
        let container = containers.get_mut(&key).ok_or_else(|| not_found(&id))?;
        log::info!("kill task {id} with signal {}", req.signal);
        match container
            .lifecycle
            .kill(req.signal)
            .map_err(|err| illegal(&id, err))?
        {
            KillAction::Signal(handle) => handle
                .kill(req.signal)
                .map_err(|err| error(Code::INVALID_ARGUMENT, format!("kill task {id}: {err:#}")))?,
            KillAction::StoppedBeforeStart(status) => {
                container.exit_watch.send_replace(Some(status));
                self.events
                    .task_exit(&key.namespace, &id, self.pid, status.code, status.exited_at)
                    .await;
            }
        }
        Ok(Empty::new())
    }

    async fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        self.no_exec(&req.exec_id)?;
        let mut exit_rx = {
            let containers = self.containers.lock().await;
            let container = containers
                .get(&self.key(ctx, &req.id, &containers))
                .ok_or_else(|| not_found(&req.id))?;
            container.exit_watch.subscribe()
        };
        let status = exit_rx
            .wait_for(|status| status.is_some())
            .await
            .map_err(|_| error(Code::NOT_FOUND, format!("task {} was deleted", req.id)))?
            .unwrap_or(ExitStatus::now(0));
        Ok(WaitResponse {
            exit_status: status.code,
            exited_at: Some(timestamp(status.exited_at)).into(),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        self.mark_activity();
        self.no_exec(&req.exec_id)?;
        let id = req.id;
        let mut containers = self.containers.lock().await;
        let key = self.key(ctx, &id, &containers);
        let container = containers.get(&key).ok_or_else(|| not_found(&id))?;
        let exit = container
            .lifecycle
            .check_delete()
            .map_err(|err| illegal(&id, err))?;
        let unmount = container.rootfs_mounted.then(|| container.bundle.clone());
        let cgroup = container.cgroup.clone();
        let sandbox_of = container.sandbox_of.clone();
        // Unmounting and removing cgroups block; keep them off the request executor.
        tokio::task::spawn_blocking(move || {
            if let Some(cgroup) = cgroup {
                cgroup.remove();
            }
            unmount.map(|bundle| rootfs::unmount(&bundle)).transpose()
        })
        .await
        .map_err(|err| error(Code::INTERNAL, format!("delete task {id}: {err}")))?
        .map_err(|err| error(Code::INTERNAL, format!("delete task {id}: {err:#}")))?;
        if let Some(sandbox_id) = &sandbox_of {
            self.pod_networks.remove(&key.namespace, sandbox_id);
        }
        containers.remove(&key);
        if let Some(connection) = connection_id(ctx) {
            if let Ok(mut namespaces) = self.connection_namespaces.lock() {
                namespaces.remove(&connection);
            }
        }
        log::info!("deleted task {id}");
        let (code, exited_at) = exit
            .map(|exit| (exit.code, exit.exited_at))
            .unwrap_or((0, SystemTime::now()));
        self.events
            .task_delete(&key.namespace, &id, self.pid, code, exited_at)
            .await;
        self.shutdown_if_idle(&containers);
        Ok(DeleteResponse {
            pid: self.pid,
            exit_status: code,
            exited_at: Some(timestamp(exited_at)).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let containers = self.containers.lock().await;
        if !containers.contains_key(&self.key(ctx, &req.id, &containers)) {
            return Err(not_found(&req.id));
        }
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: self.pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn close_io(&self, ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        self.no_exec(&req.exec_id)?;
        let containers = self.containers.lock().await;
        let container = containers
            .get(&self.key(ctx, &req.id, &containers))
            .ok_or_else(|| not_found(&req.id))?;
        if let Lifecycle::Running(handle) = &container.lifecycle {
            handle.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn stats(&self, ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let containers = self.containers.lock().await;
        let container = containers
            .get(&self.key(ctx, &req.id, &containers))
            .ok_or_else(|| not_found(&req.id))?;
        let usage = match &container.lifecycle {
            Lifecycle::Running(handle) => Usage {
                cpu_nanos: handle.thread_id().map(stats::thread_cpu_nanos).unwrap_or(0),
                memory_bytes: handle.memory_bytes(),
                memory_limit: container.memory_limit,
            },
            _ => Usage {
                memory_limit: container.memory_limit,
                ..Usage::default()
            },
        };
        let stats = stats::encode(usage)
            .map_err(|err| error(Code::INTERNAL, format!("stats for {}: {err}", req.id)))?;
        Ok(StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: self.pid,
            task_pid: self.pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        let containers = self.containers.lock().await;
        if containers.is_empty() {
            log::info!("shutdown requested with no tasks left");
            self.shutdown.notify_one();
        } else {
            log::info!(
                "shutdown ignored: {} task(s) still hosted",
                containers.len()
            );
        }
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: PauseRequest) -> ttrpc::Result<Empty> {
        Err(self.unsupported("pause"))
    }

    async fn resume(&self, _ctx: &TtrpcContext, _req: ResumeRequest) -> ttrpc::Result<Empty> {
        Err(self.unsupported("resume"))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        Err(self.unsupported("checkpoint"))
    }

    async fn exec(&self, _ctx: &TtrpcContext, _req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        Err(self.unsupported("exec"))
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        _req: ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        Err(self.unsupported("a terminal (resize pty)"))
    }

    async fn update(&self, _ctx: &TtrpcContext, _req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        Err(self.unsupported("update"))
    }
}
