//! Exec processes (`kubectl exec`, exec probes, `ctr task exec`) in native
//! containers: added by the Exec request, started by `runc exec`, each with
//! its own exit, ended and removed by their own requests. A Wasm guest has
//! no process to enter, so a container without a runc container refuses
//! exec (see the task service).

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim_protos::api::StateResponse;
use containerd_shim_protos::ttrpc::{self, Code};
use containerd_shim_protos::types::task::Status as ProtoStatus;
use tokio::sync::watch;
use wasishim_engine::ExitStatus;

use crate::errors::error;
use crate::events::timestamp;
use crate::native::NativeTask;
use crate::reaper;

/// One exec process of a container.
struct ExecProcess {
    /// The OCI process (JSON) containerd sent.
    spec: Vec<u8>,
    stdio: [String; 3],
    /// Set once started.
    pid: Option<u32>,
    exit: watch::Sender<Option<ExitStatus>>,
}

/// What starting one exec process needs, outside the container's lock.
pub struct Launch {
    exec_id: String,
    spec: Vec<u8>,
    stdio: [String; 3],
    exit: watch::Sender<Option<ExitStatus>>,
}

impl Launch {
    /// Starts the process in `native` (blocking); its exit is recorded when
    /// it ends. Returns its pid.
    pub fn run(self, native: &Arc<dyn NativeTask>) -> anyhow::Result<u32> {
        let exit = self.exit;
        let on_exit = Box::new(move |code: u32| {
            exit.send_replace(Some(ExitStatus::now(code)));
        });
        native.exec(&self.exec_id, &self.spec, &self.stdio, on_exit)
    }
}

/// The exec processes of one container, by exec id.
#[derive(Default)]
pub struct Execs(HashMap<String, ExecProcess>);

fn unknown(id: &str, exec_id: &str) -> ttrpc::Error {
    error(
        Code::NOT_FOUND,
        format!("exec {exec_id} of task {id} not found"),
    )
}

impl Execs {
    /// Exec: remembers the process to start.
    pub fn add(
        &mut self,
        id: &str,
        exec_id: &str,
        spec: Vec<u8>,
        stdio: [String; 3],
    ) -> ttrpc::Result<()> {
        if self.0.contains_key(exec_id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("exec {exec_id} of task {id} already exists"),
            ));
        }
        let (exit, _) = watch::channel(None);
        self.0.insert(
            exec_id.to_string(),
            ExecProcess {
                spec,
                stdio,
                pid: None,
                exit,
            },
        );
        Ok(())
    }

    /// Start, first half: what starting the process needs, taken while the
    /// container is locked; [`Launch::run`] blocks (runc exec), so the
    /// caller runs it off the request thread, then calls [`Execs::started`].
    pub fn begin_start(&self, id: &str, exec_id: &str) -> ttrpc::Result<Launch> {
        let process = self.0.get(exec_id).ok_or_else(|| unknown(id, exec_id))?;
        if process.pid.is_some() || process.exit.borrow().is_some() {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("exec {exec_id} of task {id} was already started"),
            ));
        }
        Ok(Launch {
            exec_id: exec_id.to_string(),
            spec: process.spec.clone(),
            stdio: process.stdio.clone(),
            exit: process.exit.clone(),
        })
    }

    /// Start, second half: records the pid, or that the process never ran
    /// (its waiters get 128).
    pub fn started(
        &mut self,
        id: &str,
        exec_id: &str,
        launched: anyhow::Result<u32>,
    ) -> ttrpc::Result<u32> {
        let process = self
            .0
            .get_mut(exec_id)
            .ok_or_else(|| unknown(id, exec_id))?;
        match launched {
            Ok(pid) => {
                process.pid = Some(pid);
                Ok(pid)
            }
            Err(err) => {
                process.exit.send_replace(Some(ExitStatus::now(128)));
                Err(error(
                    Code::INTERNAL,
                    format!("cannot start exec {exec_id} in task {id}: {err:#}"),
                ))
            }
        }
    }

    /// Wakes when the process has ended.
    pub fn exit_watch(
        &self,
        id: &str,
        exec_id: &str,
    ) -> ttrpc::Result<watch::Receiver<Option<ExitStatus>>> {
        let process = self.0.get(exec_id).ok_or_else(|| unknown(id, exec_id))?;
        Ok(process.exit.subscribe())
    }

    /// Kill: signals the running process.
    pub fn kill(&self, id: &str, exec_id: &str, signal: u32) -> ttrpc::Result<()> {
        let process = self.0.get(exec_id).ok_or_else(|| unknown(id, exec_id))?;
        match (process.pid, *process.exit.borrow()) {
            (Some(pid), None) => reaper::signal(pid as i32, signal).map_err(|err| {
                error(
                    Code::INTERNAL,
                    format!("kill exec {exec_id} of task {id}: {err}"),
                )
            }),
            _ => Err(error(
                Code::NOT_FOUND,
                format!("exec {exec_id} of task {id} is not running"),
            )),
        }
    }

    /// State of one exec process.
    pub fn state(&self, id: &str, exec_id: &str) -> ttrpc::Result<StateResponse> {
        let process = self.0.get(exec_id).ok_or_else(|| unknown(id, exec_id))?;
        let exit = *process.exit.borrow();
        let status = match (process.pid, exit) {
            (_, Some(_)) => ProtoStatus::STOPPED,
            (Some(_), None) => ProtoStatus::RUNNING,
            (None, None) => ProtoStatus::CREATED,
        };
        let [stdin, stdout, stderr] = process.stdio.clone();
        let mut resp = StateResponse {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            pid: process.pid.unwrap_or(0),
            status: status.into(),
            stdin,
            stdout,
            stderr,
            ..Default::default()
        };
        if let Some(exit) = exit {
            resp.exit_status = exit.code;
            resp.exited_at = Some(timestamp(exit.exited_at)).into();
        }
        Ok(resp)
    }

    /// Delete: forgets an ended (or never started) process; its pid and exit.
    pub fn remove(&mut self, id: &str, exec_id: &str) -> ttrpc::Result<(u32, ExitStatus)> {
        let process = self.0.get(exec_id).ok_or_else(|| unknown(id, exec_id))?;
        let exit = *process.exit.borrow();
        let exit = match (process.pid, exit) {
            (Some(_), None) => {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} of task {id} is running: kill it first"),
                ))
            }
            (_, Some(exit)) => exit,
            (None, None) => ExitStatus::now(0),
        };
        let pid = process.pid.unwrap_or(0);
        self.0.remove(exec_id);
        Ok((pid, exit))
    }
}
