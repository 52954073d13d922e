//! What a container runs: a wasm guest, or, for a CRI pod sandbox, nothing.
//!
//! CRI creates every pod's sandbox container first (the "pause" container)
//! and keeps it until the pod is removed. A runc pod runs a pause binary for
//! it; here the sandbox is a placeholder inside the shim that stays running
//! until it is signalled, so a pod costs no extra process or thread.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use wasishim_engine::{ExitStatus, Workload, WorkloadHandle};

/// Annotation CRI sets to tell a pod's sandbox container from its workloads.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// A container ready to start.
pub enum Prepared {
    Guest(Box<Workload>),
    Sandbox,
}

type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

/// Controls a started container.
#[derive(Clone)]
pub enum Handle {
    Guest(WorkloadHandle),
    /// Holds the exit callback until a terminating signal arrives.
    Sandbox(Arc<Mutex<Option<OnExit>>>),
}

impl Prepared {
    /// Starts the container; `on_exit` runs once when it ends.
    pub fn start(self, on_exit: impl FnOnce(ExitStatus) + Send + 'static) -> Result<Handle> {
        match self {
            Prepared::Guest(workload) => workload.start(on_exit).map(Handle::Guest),
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
            Handle::Guest(guest) => guest.kill(signal as i32),
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

/// Whether the bundle's spec is a CRI pod sandbox.
pub fn is_sandbox(spec: &serde_json::Value) -> bool {
    spec.get("annotations")
        .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION))
        .and_then(|t| t.as_str())
        == Some("sandbox")
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

    #[test]
    fn sandbox_is_told_by_annotation() {
        let spec = serde_json::json!({"annotations": {CONTAINER_TYPE_ANNOTATION: "sandbox"}});
        assert!(is_sandbox(&spec));
        let spec = serde_json::json!({"annotations": {CONTAINER_TYPE_ANNOTATION: "container"}});
        assert!(!is_sandbox(&spec));
        assert!(!is_sandbox(&serde_json::json!({})));
    }
}
