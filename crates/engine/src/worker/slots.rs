//! How many compilations run at once: a counting semaphore in the process
//! (the per-node server's every compile), and, when the cache directory is
//! on, one lock file per slot in it, which the per-pod shims of a node share
//! (`flock` locks belong to an open file, so they also count the threads of
//! one process). A compilation that finds every slot busy waits, up to the
//! time one compilation may take, for one to free.
//!
//! Within a process, a freed slot goes to the tenant (pod) that holds the
//! fewest slots and, among those, was served least recently: a pod that
//! starts many containers of new code does not make another pod's one
//! container wait behind all of them. Between per-pod shims, the slot files
//! are taken first come, first served.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::COMPILE_CONCURRENCY_ENV;

/// How often a compilation waiting for another process's slot looks again.
const RETRY: Duration = Duration::from_millis(50);

/// Tenants remembered for their last turn; beyond this, those with nothing
/// running or waiting are forgotten (they lose no more than their place).
const REMEMBERED_TENANTS: usize = 1024;

/// The compile slots of a process, and of the node if `dir` is set.
pub(crate) struct CompileSlots {
    max: u32,
    state: Mutex<Turns>,
    freed: Condvar,
    /// The cache directory, where the node's slot files live.
    dir: Option<PathBuf>,
}

/// Who holds and who waits for the process's slots.
#[derive(Default)]
struct Turns {
    used: u32,
    /// Slots held per tenant.
    running: HashMap<String, u32>,
    /// When each tenant was last given a slot (a grant counter).
    last_served: HashMap<String, u64>,
    grants: u64,
    /// Waiting compilations: (ticket, tenant), oldest first.
    waiting: Vec<(u64, String)>,
    tickets: u64,
}

impl Turns {
    /// The ticket whose turn it is when a slot is free.
    fn next(&self) -> Option<u64> {
        self.waiting
            .iter()
            .min_by_key(|(ticket, tenant)| {
                (
                    self.running.get(tenant).copied().unwrap_or(0),
                    self.last_served.get(tenant).copied().unwrap_or(0),
                    *ticket,
                )
            })
            .map(|(ticket, _)| *ticket)
    }

    fn leave(&mut self, ticket: u64) {
        self.waiting.retain(|(t, _)| *t != ticket);
    }

    fn grant(&mut self, ticket: u64, tenant: &str) {
        self.leave(ticket);
        self.used += 1;
        self.grants += 1;
        *self.running.entry(tenant.to_string()).or_default() += 1;
        if self.last_served.len() >= REMEMBERED_TENANTS {
            let Turns {
                running,
                waiting,
                last_served,
                ..
            } = self;
            last_served
                .retain(|t, _| running.contains_key(t) || waiting.iter().any(|(_, w)| w == t));
        }
        self.last_served.insert(tenant.to_string(), self.grants);
    }

    fn release(&mut self, tenant: &str) {
        self.used = self.used.saturating_sub(1);
        if let Some(held) = self.running.get_mut(tenant) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.running.remove(tenant);
            }
        }
    }
}

/// A slot held; freed when dropped.
pub(crate) struct Slot<'a> {
    slots: &'a CompileSlots,
    tenant: String,
    /// The node-wide slot's locked file, if any.
    _file: Option<File>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.turns().release(&self.tenant);
        // Every waiter looks again: whose turn it is depends on the tenant.
        self.slots.freed.notify_all();
    }
}

impl CompileSlots {
    pub(crate) fn new(max: u32, dir: Option<PathBuf>) -> CompileSlots {
        CompileSlots {
            max: max.max(1),
            state: Mutex::new(Turns::default()),
            freed: Condvar::new(),
            dir,
        }
    }

    fn busy(&self, shown: &str, waited: Duration) -> anyhow::Error {
        anyhow::anyhow!(
            "entrypoint {shown} waited {} s for one of the {} compile slots of this node ({COMPILE_CONCURRENCY_ENV}), all busy compiling other guests: try again later",
            waited.as_secs(),
            self.max
        )
    }

    fn turns(&self) -> MutexGuard<'_, Turns> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for compiling `shown` for `tenant` (the pod, or any
    /// name the caller shares slots fairly by), waiting at most `wait`.
    ///
    /// # Errors
    ///
    /// Every slot stayed busy for `wait`.
    pub(crate) fn acquire(&self, wait: Duration, shown: &str, tenant: &str) -> Result<Slot<'_>> {
        let deadline = Instant::now() + wait;
        {
            let mut turns = self.turns();
            let ticket = turns.tickets;
            turns.tickets += 1;
            turns.waiting.push((ticket, tenant.to_string()));
            while turns.used >= self.max || turns.next() != Some(ticket) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    turns.leave(ticket);
                    drop(turns);
                    // The turn may have been this waiter's.
                    self.freed.notify_all();
                    return Err(self.busy(shown, wait));
                }
                turns = self
                    .freed
                    .wait_timeout(turns, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            turns.grant(ticket, tenant);
        }
        // From here the slot is counted: dropping it on an error frees it.
        let mut slot = Slot {
            slots: self,
            tenant: tenant.to_string(),
            _file: None,
        };
        let Some(dir) = &self.dir else {
            return Ok(slot);
        };
        loop {
            for i in 0..self.max {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(dir.join(format!("compile-slot-{i}.lock")));
                match file {
                    Ok(file) => {
                        if file.try_lock().is_ok() {
                            slot._file = Some(file);
                            return Ok(slot);
                        }
                    }
                    Err(e) => {
                        // The directory went away: the process's own
                        // count still holds.
                        log::warn!(
                            "compile slots: cannot open a slot file in {}: {e}; counting this process's compilations only",
                            dir.display()
                        );
                        return Ok(slot);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(self.busy(shown, wait));
            }
            std::thread::sleep(RETRY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_shared_out_and_freed() {
        let slots = CompileSlots::new(2, None);
        let a = slots.acquire(Duration::ZERO, "/a.wasm", "pod");
        let b = slots.acquire(Duration::ZERO, "/b.wasm", "pod");
        assert!(a.is_ok() && b.is_ok());
        let refused = slots.acquire(Duration::from_millis(20), "/c.wasm", "pod");
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(message, "entrypoint /c.wasm waited 0 s for one of the 2 compile slots of this node (WASISHIM_COMPILE_CONCURRENCY), all busy compiling other guests: try again later");
        // A waiter gets the slot another frees.
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                slots
                    .acquire(Duration::from_secs(10), "/d.wasm", "pod")
                    .is_ok()
            });
            std::thread::sleep(Duration::from_millis(30));
            drop(a);
            assert!(waiter.join().unwrap_or(false));
        });
    }

    #[test]
    fn slot_files_count_across_openers() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // Two "processes": separate counters, one directory.
        let one = CompileSlots::new(1, Some(dir.path().to_path_buf()));
        let other = CompileSlots::new(1, Some(dir.path().to_path_buf()));
        let held = one.acquire(Duration::ZERO, "/a.wasm", "pod");
        assert!(held.is_ok());
        assert!(other
            .acquire(Duration::from_millis(100), "/b.wasm", "pod")
            .is_err());
        drop(held);
        assert!(other.acquire(Duration::ZERO, "/b.wasm", "pod").is_ok());
    }

    /// A pod that queued many compilations does not keep another pod's one
    /// waiting behind them all: each freed slot goes to the tenant served
    /// least recently.
    #[test]
    fn a_freed_slot_goes_to_the_tenant_served_least_recently() {
        let slots = CompileSlots::new(1, None);
        let order = Mutex::new(Vec::new());
        let held = slots.acquire(Duration::ZERO, "/a0.wasm", "pod-a");
        assert!(held.is_ok());
        std::thread::scope(|s| {
            let wait = |name: &'static str, tenant: &'static str| {
                let (slots, order) = (&slots, &order);
                s.spawn(move || {
                    let slot = slots.acquire(Duration::from_secs(10), name, tenant);
                    order
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(name);
                    std::thread::sleep(Duration::from_millis(20));
                    drop(slot);
                })
            };
            // Pod A queues three more before pod B's one.
            for name in ["/a1.wasm", "/a2.wasm", "/a3.wasm"] {
                wait(name, "pod-a");
                std::thread::sleep(Duration::from_millis(20));
            }
            wait("/b1.wasm", "pod-b");
            std::thread::sleep(Duration::from_millis(20));
            drop(held);
        });
        let order = order.into_inner().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(order, ["/b1.wasm", "/a1.wasm", "/a2.wasm", "/a3.wasm"]);
    }
}
