//! How many compilations run at once: a counting semaphore in the process
//! (the per-node server's every compile), and, when the cache directory is
//! on, one lock file per slot in it, which the per-pod shims of a node share
//! (`flock` locks belong to an open file, so they also count the threads of
//! one process). A compilation that finds every slot busy waits, up to the
//! time one compilation may take, for one to free.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::COMPILE_CONCURRENCY_ENV;

/// How often a compilation waiting for another process's slot looks again.
const RETRY: Duration = Duration::from_millis(50);

/// The compile slots of a process, and of the node if `dir` is set.
pub(crate) struct CompileSlots {
    max: u32,
    used: Mutex<u32>,
    freed: Condvar,
    /// The cache directory, where the node's slot files live.
    dir: Option<PathBuf>,
}

/// A slot held; freed when dropped.
pub(crate) struct Slot<'a> {
    slots: &'a CompileSlots,
    /// The node-wide slot's locked file, if any.
    _file: Option<File>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut used = self
            .slots
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *used = used.saturating_sub(1);
        self.slots.freed.notify_one();
    }
}

impl CompileSlots {
    pub(crate) fn new(max: u32, dir: Option<PathBuf>) -> CompileSlots {
        CompileSlots {
            max: max.max(1),
            used: Mutex::new(0),
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

    /// Takes a slot for compiling `shown`, waiting at most `wait`.
    ///
    /// # Errors
    ///
    /// Every slot stayed busy for `wait`.
    pub(crate) fn acquire(&self, wait: Duration, shown: &str) -> Result<Slot<'_>> {
        let deadline = Instant::now() + wait;
        {
            let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
            while *used >= self.max {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.busy(shown, wait));
                }
                used = self
                    .freed
                    .wait_timeout(used, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            *used += 1;
        }
        // From here the slot is counted: dropping it on an error frees it.
        let mut slot = Slot {
            slots: self,
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
        let a = slots.acquire(Duration::ZERO, "/a.wasm");
        let b = slots.acquire(Duration::ZERO, "/b.wasm");
        assert!(a.is_ok() && b.is_ok());
        let refused = slots.acquire(Duration::from_millis(20), "/c.wasm");
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(message, "entrypoint /c.wasm waited 0 s for one of the 2 compile slots of this node (WASISHIM_COMPILE_CONCURRENCY), all busy compiling other guests: try again later");
        // A waiter gets the slot another frees.
        std::thread::scope(|s| {
            let waiter = s.spawn(|| slots.acquire(Duration::from_secs(10), "/d.wasm").is_ok());
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
        let held = one.acquire(Duration::ZERO, "/a.wasm");
        assert!(held.is_ok());
        assert!(other
            .acquire(Duration::from_millis(100), "/b.wasm")
            .is_err());
        drop(held);
        assert!(other.acquire(Duration::ZERO, "/b.wasm").is_ok());
    }
}
