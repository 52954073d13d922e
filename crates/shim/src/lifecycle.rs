//! One container's lifecycle, written down as a state machine.
//!
//! created --start--> running --exit/kill--> stopped --delete--> (gone)
//! created --kill--> stopped
//!
//! Every request that does not fit the current state is an error naming that
//! state, never a silent no-op.

use std::fmt;

use wasishim_engine::ExitStatus;

use crate::process::{Handle, Prepared};

/// Where a container is in its life, with what that state owns.
pub enum Lifecycle {
    /// Compiled and linked, stdio open, not started.
    Created(Prepared),
    /// Between taking the workload out of `Created` and getting its handle.
    Starting,
    /// The guest runs on its own thread.
    Running(Handle),
    /// The guest ended (or was killed before it started).
    Stopped(ExitStatus),
}

/// The status containerd sees (`ctr task ls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// A request that the container's current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IllegalTransition {
    pub action: &'static str,
    pub status: Status,
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} a {} task", self.action, self.status)?;
        match (self.action, self.status) {
            ("delete", Status::Running) => f.write_str(": kill it first"),
            ("kill", Status::Stopped) => f.write_str(": process already finished"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for IllegalTransition {}

/// What `kill` decided.
pub enum KillAction {
    /// Deliver the signal to the running guest.
    Signal(Handle),
    /// The guest never started: it is now stopped with this status.
    StoppedBeforeStart(ExitStatus),
}

impl Lifecycle {
    pub fn status(&self) -> Status {
        match self {
            Lifecycle::Created(_) => Status::Created,
            // Reported as created until the start request finishes.
            Lifecycle::Starting => Status::Created,
            Lifecycle::Running(_) => Status::Running,
            Lifecycle::Stopped(_) => Status::Stopped,
        }
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self {
            Lifecycle::Stopped(status) => Some(*status),
            _ => None,
        }
    }

    /// created -> starting: hands out the workload to start.
    pub fn begin_start(&mut self) -> Result<Prepared, IllegalTransition> {
        match std::mem::replace(self, Lifecycle::Starting) {
            Lifecycle::Created(prepared) => Ok(prepared),
            other => {
                // A second start while the first is under way is a start of a running task.
                let status = match other {
                    Lifecycle::Starting => Status::Running,
                    _ => other.status(),
                };
                *self = other;
                Err(IllegalTransition {
                    action: "start",
                    status,
                })
            }
        }
    }

    /// starting -> running.
    pub fn started(&mut self, handle: Handle) {
        *self = Lifecycle::Running(handle);
    }

    /// running (or starting) -> stopped. Returns false when the container was
    /// already stopped, so an exit is recorded once.
    pub fn exited(&mut self, status: ExitStatus) -> bool {
        if matches!(self, Lifecycle::Stopped(_)) {
            return false;
        }
        *self = Lifecycle::Stopped(status);
        true
    }

    /// What a signal means in this state.
    pub fn kill(&mut self, signal: u32) -> Result<KillAction, IllegalTransition> {
        match self {
            Lifecycle::Running(handle) => Ok(KillAction::Signal(handle.clone())),
            Lifecycle::Created(_) | Lifecycle::Starting => {
                let status = ExitStatus::now(128 + signal);
                *self = Lifecycle::Stopped(status);
                Ok(KillAction::StoppedBeforeStart(status))
            }
            Lifecycle::Stopped(_) => Err(IllegalTransition {
                action: "kill",
                status: Status::Stopped,
            }),
        }
    }

    /// created/stopped -> gone. A created container that never ran is deleted
    /// with no exit status of its own.
    pub fn check_delete(&self) -> Result<Option<ExitStatus>, IllegalTransition> {
        match self {
            Lifecycle::Created(_) => Ok(None),
            Lifecycle::Stopped(status) => Ok(Some(*status)),
            Lifecycle::Starting | Lifecycle::Running(_) => Err(IllegalTransition {
                action: "delete",
                status: Status::Running,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: u32) -> ExitStatus {
        ExitStatus::now(code)
    }

    #[test]
    fn stopped_task_cannot_start_or_be_killed() {
        let mut state = Lifecycle::Stopped(exit(0));
        let err = state.begin_start().err().unwrap();
        assert_eq!(err.to_string(), "cannot start a stopped task");
        assert!(matches!(state, Lifecycle::Stopped(_)));
        let err = state.kill(15).err().unwrap();
        assert_eq!(
            err.to_string(),
            "cannot kill a stopped task: process already finished"
        );
    }

    #[test]
    fn starting_task_cannot_start_twice_or_be_deleted() {
        let mut state = Lifecycle::Starting;
        assert_eq!(
            state.begin_start().err().unwrap().to_string(),
            "cannot start a running task"
        );
        assert!(matches!(state, Lifecycle::Starting));
        assert_eq!(
            state.check_delete().unwrap_err().to_string(),
            "cannot delete a running task: kill it first"
        );
    }

    #[test]
    fn exit_is_recorded_once() {
        let mut state = Lifecycle::Starting;
        assert!(state.exited(exit(3)));
        assert!(!state.exited(exit(137)));
        assert_eq!(state.exit_status().unwrap().code, 3);
        assert_eq!(state.check_delete().unwrap().unwrap().code, 3);
    }

    #[test]
    fn kill_before_start_stops_with_signal_status() {
        let mut state = Lifecycle::Starting;
        match state.kill(9).ok().unwrap() {
            KillAction::StoppedBeforeStart(status) => assert_eq!(status.code, 137),
            KillAction::Signal(_) => panic!("a task that never ran has no guest to signal"),
        }
        assert_eq!(state.status(), Status::Stopped);
    }
}
