//! Moving a guest's thread into its network namespace.
//!
//! Only the calling thread (and threads it starts later) changes namespace,
//! so guests of one process each keep their own.
//!
//! A new namespace takes about 0.5 ms to create, as long as a short guest's
//! whole run. An engine built with
//! [`spare_network_namespaces`](crate::WasmEngineBuilder::spare_network_namespaces)
//! has a background thread make that many empty namespaces ahead of need, once
//! a guest first asks for a new one; a guest then only enters a spare. Spares
//! are made exactly as a guest's own `unshare` would make them, so a guest
//! cannot tell the difference. Nodes whose guests always join a pod's
//! namespace never make any.

use std::fs::File;
use std::sync::{Condvar, Mutex, OnceLock};

use nix::sched::{setns, unshare, CloneFlags};

use crate::NetworkNamespace;

/// How many spares to keep; 0 (the default) makes none.
static WANTED: OnceLock<usize> = OnceLock::new();

/// Sets how many spare namespaces the process keeps (first call wins).
pub(crate) fn keep_spares(count: usize) {
    let _ = WANTED.set(count);
}

/// Moves the calling thread into `network`.
pub(crate) fn enter(network: &NetworkNamespace) -> Result<(), String> {
    match network {
        NetworkNamespace::Host => Ok(()),
        NetworkNamespace::New => {
            if let Some(spare) = spares().and_then(Spares::take) {
                if setns(&spare, CloneFlags::CLONE_NEWNET).is_ok() {
                    return Ok(());
                }
            }
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot create a network namespace for the guest: {e}"))
        }
        NetworkNamespace::Join(path) => File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|ns| setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()))
            .map_err(|e| format!("cannot join the network namespace {}: {e}", path.display())),
    }
}

struct Spares {
    wanted: usize,
    ready: Mutex<Vec<File>>,
    used: Condvar,
}

/// The process's spares, starting their maker on first use; `None` when
/// none are wanted or the maker cannot run.
fn spares() -> Option<&'static Spares> {
    static SPARES: OnceLock<Option<Spares>> = OnceLock::new();
    SPARES
        .get_or_init(|| {
            let wanted = WANTED.get().copied().unwrap_or(0);
            (wanted > 0).then(|| Spares {
                wanted,
                ready: Mutex::new(Vec::new()),
                used: Condvar::new(),
            })
        })
        .as_ref()
        .filter(|spares| spares.start_maker())
}

impl Spares {
    /// A ready spare, if any; asks the maker for another either way.
    fn take(&self) -> Option<File> {
        let spare = self.ready.lock().ok()?.pop();
        self.used.notify_one();
        spare
    }

    /// Starts the maker thread once; false if it could not be started.
    fn start_maker(&'static self) -> bool {
        static STARTED: OnceLock<bool> = OnceLock::new();
        *STARTED.get_or_init(|| {
            std::thread::Builder::new()
                .name("netns-spares".into())
                .spawn(move || self.make())
                .is_ok()
        })
    }

    /// Keeps `wanted` spares ready until making one fails.
    fn make(&self) {
        let home = match File::open("/proc/thread-self/ns/net") {
            Ok(home) => home,
            Err(err) => {
                log::warn!("no spare network namespaces: {err}");
                return;
            }
        };
        loop {
            let Ok(ready) = self.ready.lock() else { return };
            let Ok(ready) = self.used.wait_while(ready, |r| r.len() >= self.wanted) else {
                return;
            };
            drop(ready);
            let made = unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| e.to_string())
                .and_then(|()| File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string()));
            let back = setns(&home, CloneFlags::CLONE_NEWNET);
            match (made, back) {
                (Ok(spare), Ok(())) => match self.ready.lock() {
                    Ok(mut ready) => ready.push(spare),
                    Err(_) => return,
                },
                (made, back) => {
                    log::warn!(
                        "no more spare network namespaces: {:?} {:?}",
                        made.err(),
                        back.err()
                    );
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn namespace_of_this_thread() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net")
            .map(|m| m.ino())
            .unwrap_or(0)
    }

    /// Needs root (CAP_SYS_ADMIN), as the shim does.
    #[test]
    fn each_new_namespace_is_a_fresh_one_and_the_host_keeps_its_own() {
        keep_spares(2);
        let host = namespace_of_this_thread();
        let mut seen = Vec::new();
        // Threads stay alive to the end, so no namespace is freed and its
        // inode number reused while the test compares them.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Arc::new(Mutex::new(released));
        let mut threads = Vec::new();
        for _ in 0..4 {
            let (report, reported) = std::sync::mpsc::channel();
            let released = released.clone();
            threads.push(std::thread::spawn(move || {
                let _ =
                    report.send(enter(&NetworkNamespace::New).map(|()| namespace_of_this_thread()));
                let _ = released.lock().map(|r| r.recv());
            }));
            let ns = match reported.recv() {
                Ok(Ok(ns)) => ns,
                Ok(Err(err)) => panic!("{err}"),
                Err(err) => panic!("{err}"),
            };
            assert_ne!(ns, host);
            assert!(!seen.contains(&ns), "namespace {ns} handed out twice");
            seen.push(ns);
            // Give the maker a moment, so later rounds use spares.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(namespace_of_this_thread(), host);
        for _ in &threads {
            let _ = release.send(());
        }
        for thread in threads {
            let _ = thread.join();
        }
    }
}
