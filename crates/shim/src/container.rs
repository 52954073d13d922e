//! One hosted container: its lifecycle and what it holds on the host, and
//! the answers to requests about it.
//!
//! The task service looks a container up and calls it; the container's
//! [`Lifecycle`] decides whether the request fits its state, and refusals
//! become ttrpc errors naming that state.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api::StateResponse;
use containerd_shim_protos::ttrpc::{self, Code};
use containerd_shim_protos::types::task::Status as ProtoStatus;
use tokio::sync::watch;
use wasishim_engine::ExitStatus;

use crate::cgroups::{Cgroup, Hierarchies};
use crate::create::Built;
use crate::errors::error;
use crate::events::timestamp;
use crate::exec::Execs;
use crate::lifecycle::{IllegalTransition, KillAction, Lifecycle, Status};
use crate::native::NativeTask;
use crate::native_records;
use crate::os::Os;
use crate::stats::{self, Usage};

/// One container hosted by this shim.
pub struct Container {
    bundle: PathBuf,
    stdin: String,
    stdout: String,
    stderr: String,
    rootfs_mounted: bool,
    /// The container's cgroup at `linux.cgroupsPath`, if the spec names one.
    cgroup: Option<Arc<Cgroup>>,
    /// The memory cap the guest runs under, reported with the stats (0: none).
    memory_limit: u64,
    /// The sandbox id, when this container is a pod sandbox.
    sandbox_of: Option<String>,
    lifecycle: Lifecycle,
    /// Wakes `wait` requests once the container has stopped.
    exit_watch: watch::Sender<Option<ExitStatus>>,
    /// A delete is undoing what it holds on the host (outside the service's
    /// lock): it may not start, nor be deleted twice.
    deleting: bool,
    /// The runc container, when this is a native container.
    native: Option<Arc<dyn NativeTask>>,
    /// Its record for the cleanup after a dead shim.
    record: Option<PathBuf>,
    /// Exec processes (native containers only).
    execs: Execs,
}

/// What deleting a container leaves to undo on the host, in this order:
/// a native container is deleted by runc, the cgroup is removed, then the
/// rootfs unmounted.
pub struct Teardown {
    native: Option<Arc<dyn NativeTask>>,
    cgroup: Option<Arc<Cgroup>>,
    unmount: Option<PathBuf>,
    record: Option<PathBuf>,
}

impl Teardown {
    /// Blocking: removing a cgroup may wait for its last thread to leave.
    pub fn run(self, os: &dyn Os) -> anyhow::Result<()> {
        if let Some(native) = self.native {
            // Its processes must be gone before the cgroup and rootfs go.
            native.delete()?;
        }
        if let Some(cgroup) = self.cgroup {
            os.remove_cgroup(&cgroup);
        }
        if let Some(record) = &self.record {
            native_records::remove(record);
        }
        match self.unmount {
            Some(bundle) => os.unmount_rootfs(&bundle),
            None => Ok(()),
        }
    }
}

impl Container {
    pub fn new(bundle: PathBuf, stdio: [String; 3], built: Built) -> Container {
        let [stdin, stdout, stderr] = stdio;
        let (exit_watch, _) = watch::channel(None);
        Container {
            bundle,
            stdin,
            stdout,
            stderr,
            rootfs_mounted: built.rootfs_mounted,
            cgroup: built.cgroup,
            memory_limit: built.memory_limit,
            sandbox_of: built.sandbox_of,
            lifecycle: Lifecycle::Created(built.prepared),
            exit_watch,
            deleting: false,
            native: built.native,
            record: built.record,
            execs: Execs::default(),
        }
    }

    /// The runc container, when this is a native container; `None` for a
    /// Wasm guest or a sandbox, which have no process to exec into.
    pub fn native(&self) -> Option<&Arc<dyn NativeTask>> {
        self.native.as_ref()
    }

    /// Exec processes; only a native container that runs gets new ones.
    pub fn execs(&mut self) -> &mut Execs {
        &mut self.execs
    }

    /// The state `ctr task ls` shows.
    pub fn status(&self) -> Status {
        self.lifecycle.status()
    }

    /// Whether the container's init runs now.
    pub fn is_running(&self) -> bool {
        self.lifecycle.status() == Status::Running
    }

    /// The pid containerd is told: a native container's init, else this
    /// shim's own (a Wasm guest runs inside it).
    pub fn pid(&self, shim_pid: u32) -> u32 {
        self.native
            .as_ref()
            .map(|native| native.pid())
            .unwrap_or(shim_pid)
    }

    /// The sandbox id, when this container is a pod sandbox.
    pub fn sandbox_of(&self) -> Option<&str> {
        self.sandbox_of.as_deref()
    }

    /// created -> running; `on_exit` runs once when the guest ends. A guest
    /// that cannot start is stopped with status 128.
    pub fn start(
        &mut self,
        id: &str,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> ttrpc::Result<()> {
        self.not_deleting(id, "start")?;
        let prepared = self
            .lifecycle
            .begin_start()
            .map_err(|err| illegal(id, err))?;
        match prepared.start(on_exit) {
            Ok(handle) => {
                self.lifecycle.started(handle);
                Ok(())
            }
            Err(err) => {
                self.stopped(ExitStatus::now(128));
                Err(error(
                    Code::INTERNAL,
                    format!("cannot start task {id}: {err:#}"),
                ))
            }
        }
    }

    /// Records the guest's exit; false when it was already stopped.
    pub fn exited(&mut self, status: ExitStatus) -> bool {
        if !self.lifecycle.exited(status) {
            return false;
        }
        self.exit_watch.send_replace(Some(status));
        true
    }

    fn stopped(&mut self, status: ExitStatus) {
        self.lifecycle.exited(status);
        self.exit_watch.send_replace(Some(status));
    }

    /// Signals the running guest. A container that never started is stopped
    /// at once: its exit status is returned, for the caller to publish.
    pub fn kill(&mut self, id: &str, signal: u32) -> ttrpc::Result<Option<ExitStatus>> {
        match self
            .lifecycle
            .kill(signal)
            .map_err(|err| illegal(id, err))?
        {
            KillAction::Signal(handle) => {
                handle.kill(signal).map_err(|err| {
                    error(Code::INVALID_ARGUMENT, format!("kill task {id}: {err:#}"))
                })?;
                Ok(None)
            }
            KillAction::StoppedBeforeStart(status) => {
                self.exit_watch.send_replace(Some(status));
                Ok(Some(status))
            }
        }
    }

    /// What `ctr task ls` shows.
    pub fn state(&self, id: &str, pid: u32) -> StateResponse {
        let status = match self.lifecycle.status() {
            Status::Created => ProtoStatus::CREATED,
            Status::Running => ProtoStatus::RUNNING,
            Status::Stopped => ProtoStatus::STOPPED,
        };
        let mut resp = StateResponse {
            id: id.to_string(),
            bundle: self.bundle.display().to_string(),
            pid,
            status: status.into(),
            stdin: self.stdin.clone(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            ..Default::default()
        };
        if let Some(exit) = self.lifecycle.exit_status() {
            resp.exit_status = exit.code;
            resp.exited_at = Some(timestamp(exit.exited_at)).into();
        }
        resp
    }

    /// Wakes when the container has stopped.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit_watch.subscribe()
    }

    pub fn close_stdin(&self) {
        if let Lifecycle::Running(handle) = &self.lifecycle {
            handle.close_stdin();
        }
    }

    /// What the guest uses now, and its memory limit.
    pub fn usage(&self) -> Usage {
        if let (Some(_), Some(cgroup), Lifecycle::Running(_)) =
            (&self.native, &self.cgroup, &self.lifecycle)
        {
            // A native container's processes are in its cgroup (runc's).
            let (cpu_nanos, memory_bytes) = Hierarchies::detect().process_usage(cgroup.path());
            return Usage {
                cpu_nanos,
                memory_bytes,
                memory_limit: self.memory_limit,
            };
        }
        match &self.lifecycle {
            Lifecycle::Running(handle) => Usage {
                cpu_nanos: handle.thread_id().map(stats::thread_cpu_nanos).unwrap_or(0),
                memory_bytes: handle.memory_bytes(),
                memory_limit: self.memory_limit,
            },
            _ => Usage {
                memory_limit: self.memory_limit,
                ..Usage::default()
            },
        }
    }

    fn not_deleting(&self, id: &str, action: &str) -> ttrpc::Result<()> {
        if self.deleting {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("cannot {action} task {id}: it is being deleted"),
            ));
        }
        Ok(())
    }

    /// Whether the container may be deleted now: its exit status (none for a
    /// container that never ran) and what to undo on the host, which the
    /// caller does without the service's lock, then removes the container
    /// (or calls [`Self::delete_failed`]).
    pub fn begin_delete(&mut self, id: &str) -> ttrpc::Result<(Option<ExitStatus>, Teardown)> {
        self.not_deleting(id, "delete")?;
        let exit = self
            .lifecycle
            .check_delete()
            .map_err(|err| illegal(id, err))?;
        self.deleting = true;
        let teardown = Teardown {
            native: self.native.clone(),
            cgroup: self.cgroup.clone(),
            unmount: self.rootfs_mounted.then(|| self.bundle.clone()),
            record: self.record.clone(),
        };
        Ok((exit, teardown))
    }

    /// The teardown of a delete failed: the container may be deleted again.
    pub fn delete_failed(&mut self) {
        self.deleting = false;
    }
}

/// A request the state does not allow. Killing a stopped task is NOT_FOUND,
/// as containerd expects of a process that is gone; the rest are
/// FAILED_PRECONDITION.
fn illegal(id: &str, err: IllegalTransition) -> ttrpc::Error {
    let code = match (err.action, err.status) {
        ("kill", Status::Stopped) => Code::NOT_FOUND,
        _ => Code::FAILED_PRECONDITION,
    };
    error(code, format!("task {id}: {err}"))
}
