//! The containerd task service: one type serving every task API request.
//!
//! Each request resolves its task ([`crate::keys`]), looks the container up
//! and calls it ([`crate::container`]); `create` runs the create pipeline
//! ([`crate::create`]). Guest exits come back through one channel and are
//! recorded and published in order. The service does not know how it is
//! hosted beyond what [`Hosting`] tells the create pipeline.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

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
use containerd_shim_protos::types::task::ProcessInfo;
use tokio::sync::{mpsc, Mutex, MutexGuard};
use wasishim_engine::ExitStatus;

use crate::container::Container;
use crate::create::{self, BuildContext};
use crate::errors::{error, not_found};
use crate::events::{timestamp, Ended, EventPublisher};
use crate::hosting::{Hosting, Runtime};
use crate::keys::{Caller, Keys, TaskKey};
use crate::lifecycle::Status;
use crate::metrics::{ShimMetrics, TaskCounts, TaskStates};
use crate::native::{NativeTask, Natives, NoNatives};
use crate::os::Os;
use crate::pod_network::PodNetworks;
use crate::process::Guests;
use crate::stats;

type Containers = HashMap<TaskKey, Container>;

/// Why the hosting server should stop serving.
pub type ShutdownSignal = Arc<tokio::sync::Notify>;

/// The task service shared by the per-pod and per-node servers.
pub struct TaskService {
    runtime: Runtime,
    os: Arc<dyn Os>,
    guests: Arc<dyn Guests>,
    /// Runs containers whose entrypoint is a Linux executable.
    natives: Arc<dyn Natives>,
    events: Arc<EventPublisher>,
    containers: Arc<Mutex<Containers>>,
    exits: mpsc::UnboundedSender<(TaskKey, ExitStatus)>,
    shutdown: ShutdownSignal,
    /// Guests run inside this process, so every task reports its pid.
    pid: u32,
    keys: Keys,
    pod_networks: PodNetworks,
    /// When a task was last created, started or deleted.
    last_activity: std::sync::Mutex<Instant>,
    /// Set once the server was told to stop (see [`TaskService::begin_drain`]).
    draining: AtomicBool,
    /// Tasks being created (outside the lock): a second create of one waits
    /// for nothing and is refused.
    creating: std::sync::Mutex<HashSet<TaskKey>>,
    /// Where starts, kills, exits and deletions are counted, if served.
    metrics: Option<Arc<ShimMetrics>>,
}

/// A task id taken by a create under way; released when dropped, also if
/// the create's future is dropped.
struct Reserved<'a> {
    creating: &'a std::sync::Mutex<HashSet<TaskKey>>,
    key: TaskKey,
}

impl<'a> Reserved<'a> {
    /// `None` if another create holds `key`.
    fn take(creating: &'a std::sync::Mutex<HashSet<TaskKey>>, key: &TaskKey) -> Option<Self> {
        let mut set = creating.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(key.clone()).then(|| Reserved {
            creating,
            key: key.clone(),
        })
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut set = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        set.remove(&self.key);
    }
}

impl TaskService {
    /// Creates the service and starts the task that records guest exits.
    /// `default_namespace` names requests that carry none; `shutdown` is
    /// notified when the host may exit: no task remains and containerd asked
    /// for shutdown, or the last task was deleted.
    pub fn new(
        runtime: Runtime,
        default_namespace: &str,
        os: Arc<dyn Os>,
        guests: Arc<dyn Guests>,
        events: EventPublisher,
        shutdown: ShutdownSignal,
    ) -> TaskService {
        let (exits, exit_rx) = mpsc::unbounded_channel();
        let service = TaskService {
            runtime,
            pid: os.pid(),
            os,
            guests,
            natives: Arc::new(NoNatives),
            events: Arc::new(events),
            containers: Arc::new(Mutex::new(HashMap::new())),
            exits,
            shutdown,
            keys: Keys::new(default_namespace),
            pod_networks: PodNetworks::default(),
            last_activity: std::sync::Mutex::new(Instant::now()),
            draining: AtomicBool::new(false),
            creating: std::sync::Mutex::default(),
            metrics: None,
        };
        tokio::spawn(record_exits(
            exit_rx,
            service.containers.clone(),
            service.events.clone(),
            service.pid,
        ));
        service
    }

    /// Runs Linux-executable entrypoints with `natives` instead of refusing them.
    pub fn with_natives(mut self, natives: Arc<dyn Natives>) -> TaskService {
        self.natives = natives;
        self
    }

    /// Counts starts, kills, exits and deletions into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ShimMetrics>) -> TaskService {
        self.metrics = Some(metrics);
        self
    }

    /// How long since the last request that created, started or deleted a task.
    pub fn idle_for(&self) -> Duration {
        self.last_activity
            .lock()
            .map(|at| at.elapsed())
            .unwrap_or_default()
    }

    fn mark_activity(&self) {
        if let Ok(mut at) = self.last_activity.lock() {
            *at = Instant::now();
        }
    }

    /// How many tasks this server hosts now.
    pub async fn task_count(&self) -> usize {
        self.containers.lock().await.len()
    }

    /// Whether the server was told to stop and takes no new task.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Refuses new tasks from now on: the server was told to stop. Returns
    /// true the first time.
    pub fn begin_drain(&self) -> bool {
        !self.draining.swap(true, Ordering::SeqCst)
    }

    /// Sends `signal` to every task, as a Kill of each would, so that guests
    /// end as they do on that signal (an HTTP server finishes its requests
    /// in flight): what the server does when it receives SIGTERM or SIGINT.
    pub async fn signal_all(&self, signal: u32) {
        let mut containers = self.containers.lock().await;
        for (key, container) in containers.iter_mut() {
            if let Some(metrics) = &self.metrics {
                metrics.kill_requested(&key.namespace, &key.id, signal);
            }
            match container.kill(&key.id, signal) {
                // Never started: stopped now, and its exit is published here.
                Ok(Some(status)) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.exited(&key.namespace, &key.id, &status);
                    }
                    self.events.task_ended(
                        Ended::Exit,
                        &key.namespace,
                        &key.id,
                        self.pid,
                        status.code,
                        status.exited_at,
                    );
                }
                Ok(None) => log::info!("task {key}: sent signal {signal}"),
                // Already stopped.
                Err(_) => {}
            }
        }
    }

    /// The containers, locked, and the key of the task `id` the caller names.
    async fn lookup(&self, caller: &Caller, id: &str) -> (MutexGuard<'_, Containers>, TaskKey) {
        let containers = self.containers.lock().await;
        let key = self.keys.key(caller, id, containers.keys());
        (containers, key)
    }

    fn hosting(&self) -> Hosting {
        self.runtime.hosting
    }

    fn unsupported(&self, what: &str) -> ttrpc::Error {
        error(
            Code::UNIMPLEMENTED,
            format!("{what} is not supported by {}", self.runtime.name),
        )
    }

    /// The runc container of `container`: only a native container has
    /// processes to exec into; a Wasm guest refuses exec.
    fn native_of(&self, container: &Container) -> ttrpc::Result<Arc<dyn NativeTask>> {
        container
            .native()
            .cloned()
            .ok_or_else(|| self.unsupported("exec"))
    }
}

/// Records each guest exit once, wakes waiters and publishes /tasks/exit,
/// in the order the exits happened.
async fn record_exits(
    mut exit_rx: mpsc::UnboundedReceiver<(TaskKey, ExitStatus)>,
    containers: Arc<Mutex<Containers>>,
    events: Arc<EventPublisher>,
    pid: u32,
) {
    while let Some((key, status)) = exit_rx.recv().await {
        let mut containers = containers.lock().await;
        let Some(container) = containers.get_mut(&key) else {
            continue;
        };
        if container.exited(status) {
            log::info!("task {key} exited with status {}", status.code);
            // Queued at once (events.rs): the lock is not held over containerd.
            let pid = container.pid(pid);
            if status.oom_killed {
                events.task_oom(&key.namespace, &key.id);
            }
            events.task_ended(
                Ended::Exit,
                &key.namespace,
                &key.id,
                pid,
                status.code,
                status.exited_at,
            );
        }
    }
}

#[async_trait]
impl TaskCounts for TaskService {
    async fn task_states(&self) -> TaskStates {
        let containers = self.containers.lock().await;
        let mut states = TaskStates::default();
        for container in containers.values() {
            match container.status() {
                Status::Created => states.created += 1,
                Status::Running => states.running += 1,
                Status::Stopped => states.stopped += 1,
            }
        }
        states
    }
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
        if self.is_draining() {
            return Err(error(
                Code::UNAVAILABLE,
                format!(
                    "the {} server is stopping (it received SIGTERM or SIGINT) and takes no new task: create the task again, a new server will take it",
                    self.runtime.binary
                ),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let key = self.keys.create_key(&Caller::of(ctx), &id, &bundle);
        let _reserved = {
            let containers = self.containers.lock().await;
            match Reserved::take(&self.creating, &key) {
                Some(reserved) if !containers.contains_key(&key) => reserved,
                _ => {
                    return Err(error(
                        Code::ALREADY_EXISTS,
                        format!("task {id} already exists"),
                    ))
                }
            }
        };

        let cx = BuildContext {
            os: self.os.clone(),
            guests: self.guests.clone(),
            natives: self.natives.clone(),
            pod_networks: self.pod_networks.clone(),
            key: key.clone(),
            hosting: self.hosting(),
        };
        let stdio = create::stdio(&req.stdin, &req.stdout, &req.stderr);
        let mounts = req.rootfs.to_vec();
        let build_bundle = bundle.clone();
        // Mounting, cgroups and compiling block; keep them off the request executor.
        let built =
            tokio::task::spawn_blocking(move || create::build(&build_bundle, &mounts, stdio, &cx))
                .await
                .map_err(|err| error(Code::INTERNAL, format!("create task {id}: {err}")))?
                .map_err(|err| {
                    log::error!("create task {id}: {err:#}");
                    error(Code::INVALID_ARGUMENT, format!("{err:#}"))
                })?;

        let stdio = [req.stdin, req.stdout, req.stderr];
        let mut containers = self.containers.lock().await;
        let container = Container::new(bundle, stdio, built);
        let pid = container.pid(self.pid);
        containers.insert(key.clone(), container);
        self.events
            .task_create(&key.namespace, &id, &req.bundle, pid);
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        self.mark_activity();
        let (mut containers, key) = self.lookup(&Caller::of(ctx), &req.id).await;
        let container = containers.get_mut(&key).ok_or_else(|| not_found(&req.id))?;
        if !req.exec_id.is_empty() {
            let native = self.native_of(container)?;
            let launch = container.execs().begin_start(&req.id, &req.exec_id)?;
            // runc exec blocks; the container stays locked meanwhile.
            let launched = tokio::task::spawn_blocking(move || launch.run(&native))
                .await
                .map_err(|err| error(Code::INTERNAL, format!("start exec: {err}")))?;
            let pid = container.execs().started(&req.id, &req.exec_id, launched)?;
            log::info!("started exec {} in task {}", req.exec_id, req.id);
            return Ok(StartResponse {
                pid,
                ..Default::default()
            });
        }
        let exits = self.exits.clone();
        let exit_key = key.clone();
        let metrics = self.metrics.clone();
        container.start(&req.id, move |status| {
            if let Some(metrics) = metrics {
                metrics.exited(&exit_key.namespace, &exit_key.id, &status);
            }
            // The receiver lives as long as the service; nothing to do if it is gone.
            let _ = exits.send((exit_key, status));
        })?;
        if let Some(metrics) = &self.metrics {
            metrics.started();
        }
        log::info!("started task {}", req.id);
        let pid = container.pid(self.pid);
        self.events.task_start(&key.namespace, &key.id, pid);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(&self, ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let (mut containers, key) = self.lookup(&Caller::of(ctx), &req.id).await;
        let container = containers.get_mut(&key).ok_or_else(|| not_found(&req.id))?;
        if !req.exec_id.is_empty() {
            return container.execs().state(&req.id, &req.exec_id);
        }
        Ok(container.state(&req.id, container.pid(self.pid)))
    }

    async fn kill(&self, ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let (mut containers, key) = self.lookup(&Caller::of(ctx), &req.id).await;
        let container = containers.get_mut(&key).ok_or_else(|| not_found(&req.id))?;
        if !req.exec_id.is_empty() {
            container.execs().kill(&req.id, &req.exec_id, req.signal)?;
            return Ok(Empty::new());
        }
        log::info!("kill task {} with signal {}", req.id, req.signal);
        let pid = container.pid(self.pid);
        if let Some(metrics) = &self.metrics {
            metrics.kill_requested(&key.namespace, &key.id, req.signal);
        }
        if let Some(status) = container.kill(&req.id, req.signal)? {
            if let Some(metrics) = &self.metrics {
                metrics.exited(&key.namespace, &key.id, &status);
            }
            self.events.task_ended(
                Ended::Exit,
                &key.namespace,
                &key.id,
                pid,
                status.code,
                status.exited_at,
            );
        }
        Ok(Empty::new())
    }

    async fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let mut exit_rx = {
            let (mut containers, key) = self.lookup(&Caller::of(ctx), &req.id).await;
            let container = containers.get_mut(&key).ok_or_else(|| not_found(&req.id))?;
            if req.exec_id.is_empty() {
                container.exit_watch()
            } else {
                container.execs().exit_watch(&req.id, &req.exec_id)?
            }
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
        let id = req.id;
        let caller = Caller::of(ctx);
        let (key, exit, teardown, sandbox_of, pid) = {
            let (mut containers, key) = self.lookup(&caller, &id).await;
            let container = containers.get_mut(&key).ok_or_else(|| not_found(&id))?;
            if !req.exec_id.is_empty() {
                let (pid, exit) = container.execs().remove(&id, &req.exec_id)?;
                return Ok(DeleteResponse {
                    pid,
                    exit_status: exit.code,
                    exited_at: Some(timestamp(exit.exited_at)).into(),
                    ..Default::default()
                });
            }
            let (exit, teardown) = container.begin_delete(&id)?;
            let sandbox_of = container.sandbox_of().map(str::to_string);
            let pid = container.pid(self.pid);
            (key, exit, teardown, sandbox_of, pid)
        };
        // Unmounting and removing cgroups block (a cgroup's removal waits
        // for its last thread to leave): off the request executor, and
        // without the lock every other tenant's requests need.
        let os = self.os.clone();
        let torn_down = tokio::task::spawn_blocking(move || teardown.run(os.as_ref()))
            .await
            .map_err(|err| error(Code::INTERNAL, format!("delete task {id}: {err}")))
            .and_then(|done| {
                done.map_err(|err| error(Code::INTERNAL, format!("delete task {id}: {err:#}")))
            });
        let mut containers = self.containers.lock().await;
        if let Err(err) = torn_down {
            // Still there to be deleted again.
            if let Some(container) = containers.get_mut(&key) {
                container.delete_failed();
            }
            return Err(err);
        }
        if let Some(sandbox_id) = &sandbox_of {
            self.pod_networks.remove(&key.namespace, sandbox_id);
            self.natives.sandbox_deleted(&key.namespace, sandbox_id);
        }
        containers.remove(&key);
        if let Some(metrics) = &self.metrics {
            metrics.deleted(&key.namespace, &key.id);
        }
        self.keys.forget(&caller);
        log::info!("deleted task {id}");
        let (code, exited_at) = exit
            .map(|exit| (exit.code, exit.exited_at))
            .unwrap_or((0, SystemTime::now()));
        self.events
            .task_ended(Ended::Delete, &key.namespace, &id, pid, code, exited_at);
        if containers.is_empty() {
            // The host may exit once nothing is left to serve.
            self.shutdown.notify_one();
        }
        Ok(DeleteResponse {
            pid,
            exit_status: code,
            exited_at: Some(timestamp(exited_at)).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let (containers, key) = self.lookup(&Caller::of(ctx), &req.id).await;
        let container = containers.get(&key).ok_or_else(|| not_found(&req.id))?;
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: container.pid(self.pid),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn close_io(&self, ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let (containers, key) = self.lookup(&Caller::of(ctx), &req.id).await;
        let container = containers.get(&key).ok_or_else(|| not_found(&req.id))?;
        if !req.exec_id.is_empty() {
            // An exec process holds its stdin itself; the shim keeps no copy.
            return Ok(Empty::new());
        }
        container.close_stdin();
        Ok(Empty::new())
    }

    async fn stats(&self, ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let (containers, key) = self.lookup(&Caller::of(ctx), &req.id).await;
        let container = containers.get(&key).ok_or_else(|| not_found(&req.id))?;
        let stats = stats::encode(container.usage())
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

    async fn exec(&self, ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let (mut containers, key) = self.lookup(&Caller::of(ctx), &req.id).await;
        let container = containers.get_mut(&key).ok_or_else(|| not_found(&req.id))?;
        self.native_of(container)?;
        if req.terminal {
            return Err(error(
                Code::INVALID_ARGUMENT,
                format!(
                    "terminal (tty) is not supported by {}: exec without -t",
                    self.runtime.name
                ),
            ));
        }
        if !container.is_running() {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("task {} is not running: cannot exec in it", req.id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let stdio = [req.stdin, req.stdout, req.stderr];
        container.execs().add(&req.id, &req.exec_id, spec, stdio)?;
        log::info!("added exec {} to task {}", req.exec_id, req.id);
        Ok(Empty::new())
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

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
