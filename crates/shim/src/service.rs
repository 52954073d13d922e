//! The containerd task service: one type serving every task API request.
//!
//! Requests move containers through their [`Lifecycle`]; the engine builds and
//! runs guests; guest exits come back through one channel and are recorded and
//! published in order. The service does not know how it is hosted.

use std::collections::HashMap;
use std::path::PathBuf;
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
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::CheckpointTaskRequest;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use containerd_shim_protos::types::task::{ProcessInfo, Status as ProtoStatus};
use tokio::sync::{mpsc, watch, Mutex};
use wasishim_engine::{ExitStatus, Stdio, WasmEngine, WorkloadSpec};

use crate::events::{timestamp, EventPublisher};
use crate::lifecycle::{IllegalTransition, KillAction, Lifecycle, Status};
use crate::{rootfs, Runtime};

/// One container hosted by this shim.
struct Container {
    bundle: PathBuf,
    stdin: String,
    stdout: String,
    stderr: String,
    rootfs_mounted: bool,
    lifecycle: Lifecycle,
    /// Wakes `wait` requests once the container has stopped.
    exit_watch: watch::Sender<Option<ExitStatus>>,
}

/// Why the hosting server should stop serving.
pub type ShutdownSignal = Arc<tokio::sync::Notify>;

/// The task service shared by the per-pod and per-node servers.
pub struct TaskService {
    runtime: Runtime,
    engine: WasmEngine,
    events: Arc<EventPublisher>,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    exits: mpsc::UnboundedSender<(String, ExitStatus)>,
    shutdown: ShutdownSignal,
    /// Guests run inside this process, so every task reports its pid.
    pid: u32,
}

impl TaskService {
    /// Creates the service and starts the task that records guest exits.
    /// `shutdown` is notified when the host may exit: no task remains and
    /// containerd asked for shutdown, or the last task was deleted.
    pub fn new(
        runtime: Runtime,
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
        };
        tokio::spawn(record_exits(
            exit_rx,
            service.containers.clone(),
            service.events.clone(),
            service.pid,
        ));
        service
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
    fn shutdown_if_idle(&self, containers: &HashMap<String, Container>) {
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
    mut exit_rx: mpsc::UnboundedReceiver<(String, ExitStatus)>,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    events: Arc<EventPublisher>,
    pid: u32,
) {
    while let Some((id, status)) = exit_rx.recv().await {
        let mut containers = containers.lock().await;
        let Some(container) = containers.get_mut(&id) else {
            continue;
        };
        if container.lifecycle.exited(status) {
            log::info!("task {id} exited with status {}", status.code);
            container.exit_watch.send_replace(Some(status));
            events
                .task_exit(&id, pid, status.code, status.exited_at)
                .await;
        }
    }
}

fn stdio_path(path: &str) -> Option<PathBuf> {
    (!path.is_empty()).then(|| PathBuf::from(path))
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
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
        if self.containers.lock().await.contains_key(&id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("task {id} already exists"),
            ));
        }

        let bundle = PathBuf::from(&req.bundle);
        let engine = self.engine.clone();
        let stdio = Stdio {
            stdin: stdio_path(&req.stdin),
            stdout: stdio_path(&req.stdout),
            stderr: stdio_path(&req.stderr),
        };
        let mounts = req.rootfs.to_vec();
        let build_bundle = bundle.clone();
        // Mounting and compiling block; keep them off the request executor.
        let built = tokio::task::spawn_blocking(move || {
            let mounted = rootfs::mount(&build_bundle, &mounts)?;
            let workload = WorkloadSpec::from_bundle(&build_bundle)
                .and_then(|spec| engine.prepare(spec, stdio));
            match workload {
                Ok(workload) => Ok((workload, mounted)),
                Err(err) => {
                    if mounted {
                        if let Err(unmount_err) = rootfs::unmount(&build_bundle) {
                            log::warn!("{unmount_err:#}");
                        }
                    }
                    Err(err)
                }
            }
        })
        .await
        .map_err(|err| error(Code::INTERNAL, format!("create task {id}: {err}")))?;

        let (workload, rootfs_mounted) = built.map_err(|err| {
            log::error!("create task {id}: {err:#}");
            error(Code::INVALID_ARGUMENT, format!("{err:#}"))
        })?;

        let (exit_watch, _) = watch::channel(None);
        let container = Container {
            bundle,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            rootfs_mounted,
            lifecycle: Lifecycle::Created(Box::new(workload)),
            exit_watch,
        };
        let mut containers = self.containers.lock().await;
        containers.insert(id.clone(), container);
        self.events.task_create(&id, &req.bundle, self.pid).await;
        Ok(CreateTaskResponse {
            pid: self.pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        self.no_exec(&req.exec_id)?;
        let id = req.id;
        let mut containers = self.containers.lock().await;
        let container = containers.get_mut(&id).ok_or_else(|| not_found(&id))?;
        let workload = container
            .lifecycle
            .begin_start()
            .map_err(|err| illegal(&id, err))?;
        let exits = self.exits.clone();
        let exit_id = id.clone();
        let started = workload.start(move |status| {
            // The receiver lives as long as the service; nothing to do if it is gone.
            let _ = exits.send((exit_id, status));
        });
        match started {
            Ok(handle) => {
                container.lifecycle.started(handle);
                log::info!("started task {id}");
                self.events.task_start(&id, self.pid).await;
                Ok(StartResponse {
                    pid: self.pid,
                    ..Default::default()
                })
            }
            Err(err) => {
                let status = ExitStatus {
                    code: 128,
                    exited_at: SystemTime::now(),
                };
                container.lifecycle.exited(status);
                container.exit_watch.send_replace(Some(status));
                Err(error(
                    Code::INTERNAL,
                    format!("cannot start task {id}: {err:#}"),
                ))
            }
        }
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        self.no_exec(&req.exec_id)?;
        let containers = self.containers.lock().await;
        let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
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

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.no_exec(&req.exec_id)?;
        let id = req.id;
        let mut containers = self.containers.lock().await;
        let container = containers.get_mut(&id).ok_or_else(|| not_found(&id))?;
        log::info!("kill task {id} with signal {}", req.signal);
        match container
            .lifecycle
            .kill(req.signal)
            .map_err(|err| illegal(&id, err))?
        {
            KillAction::Signal(handle) => handle
                .kill(req.signal as i32)
                .map_err(|err| error(Code::INVALID_ARGUMENT, format!("kill task {id}: {err:#}")))?,
            KillAction::StoppedBeforeStart(status) => {
                container.exit_watch.send_replace(Some(status));
                self.events
                    .task_exit(&id, self.pid, status.code, status.exited_at)
                    .await;
            }
        }
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        self.no_exec(&req.exec_id)?;
        let mut exit_rx = {
            let containers = self.containers.lock().await;
            let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            container.exit_watch.subscribe()
        };
        let status = exit_rx
            .wait_for(|status| status.is_some())
            .await
            .map_err(|_| error(Code::NOT_FOUND, format!("task {} was deleted", req.id)))?
            .unwrap_or(ExitStatus {
                code: 0,
                exited_at: SystemTime::now(),
            });
        Ok(WaitResponse {
            exit_status: status.code,
            exited_at: Some(timestamp(status.exited_at)).into(),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        self.no_exec(&req.exec_id)?;
        let id = req.id;
        let mut containers = self.containers.lock().await;
        let container = containers.get(&id).ok_or_else(|| not_found(&id))?;
        let exit = container
            .lifecycle
            .check_delete()
            .map_err(|err| illegal(&id, err))?;
        if container.rootfs_mounted {
            let bundle = container.bundle.clone();
            tokio::task::spawn_blocking(move || rootfs::unmount(&bundle))
                .await
                .map_err(|err| error(Code::INTERNAL, format!("delete task {id}: {err}")))?
                .map_err(|err| error(Code::INTERNAL, format!("delete task {id}: {err:#}")))?;
        }
        containers.remove(&id);
        log::info!("deleted task {id}");
        let (code, exited_at) = exit
            .map(|exit| (exit.code, exit.exited_at))
            .unwrap_or((0, SystemTime::now()));
        self.events
            .task_delete(&id, self.pid, code, exited_at)
            .await;
        self.shutdown_if_idle(&containers);
        Ok(DeleteResponse {
            pid: self.pid,
            exit_status: code,
            exited_at: Some(timestamp(exited_at)).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let containers = self.containers.lock().await;
        if !containers.contains_key(&req.id) {
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

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        self.no_exec(&req.exec_id)?;
        let containers = self.containers.lock().await;
        let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        if let Lifecycle::Running(handle) = &container.lifecycle {
            handle.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let containers = self.containers.lock().await;
        if !containers.contains_key(&req.id) {
            return Err(not_found(&req.id));
        }
        // Until cgroup accounting lands, report an empty cgroup v1 metrics set
        // so clients that decode it (ctr task metrics) get a valid answer.
        let metrics = containerd_shim_protos::cgroups::metrics::Metrics::new();
        let value = metrics
            .write_to_bytes()
            .map_err(|err| error(Code::INTERNAL, format!("stats for {}: {err}", req.id)))?;
        Ok(StatsResponse {
            stats: Some(Any {
                type_url: "io.containerd.cgroups.v1.Metrics".to_string(),
                value,
                ..Default::default()
            })
            .into(),
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
