//! The namespaces a pod's native containers share, as kubelet expects of a
//! pod run by runc: IPC and UTS (with the pod's hostname) always, PID when
//! CRI asks for it (`shareProcessNamespace`: the container's PID mode is
//! POD).
//!
//! CRI names them by the sandbox's pid, which in this shim is the shim
//! itself (see [`crate::native`]), so the shim makes them, at the first
//! native container of a pod that names them; a pure-Wasm pod gets none of
//! this. A short-lived thread unshares IPC and UTS, sets the pod's hostname
//! and opens both namespace files, which the shim holds open (no process,
//! no mount): runc joins them through `/proc/<shim pid>/fd/<N>`, and they
//! go with the sandbox's delete, or with the shim. A PID namespace needs a
//! process as its init: the shim binary run with [`POD_INIT_ARG`] unshares
//! PID and forks that init (pid 1 of the new namespace, as the pause
//! process is for runc), which ignores SIGCHLD so that the kernel reaps the
//! orphans it inherits, and ends when its stdin, a pipe whose other end
//! only the shim holds, closes: at the sandbox's delete (which also sends
//! it SIGKILL), or when the shim dies. Its end kills what still runs in
//! the namespace.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;

use crate::reaper;

/// First argument of the shim binary run as a pod's PID namespace init
/// (never by containerd); the second is the sandbox id, so that `ps` on
/// the node tells whose it is.
pub const POD_INIT_ARG: &str = "--wasishim-pod-init";

/// Each hosted pod sandbox's shared namespaces, by (containerd namespace,
/// sandbox id).
#[derive(Clone, Default)]
pub struct PodNamespaces(Arc<Mutex<HashMap<(String, String), Pod>>>);

#[derive(Default)]
struct Pod {
    hostname: Option<String>,
    /// IPC and UTS, once a native container asked for either.
    ipc_uts: Option<(File, File)>,
    init: Option<PodInit>,
}

/// A pod's PID namespace init.
struct PodInit {
    pid: i32,
    /// Set once the reaper collected it.
    ended: Arc<AtomicBool>,
    /// The write end of the init's stdin: dropping it ends the init.
    _stdin: OwnedFd,
}

impl Drop for PodInit {
    fn drop(&mut self) {
        // The closed pipe ends it too; SIGKILL does it now. The reaper
        // signals only a pid it has not collected.
        if let Err(err) = reaper::signal(self.pid, libc::SIGKILL as u32) {
            log::warn!("cannot stop pod init {}: {err}", self.pid);
        }
    }
}

impl PodNamespaces {
    /// Remembers a pod sandbox and its hostname (the sandbox spec's).
    pub fn sandbox_created(&self, namespace: &str, sandbox_id: &str, hostname: Option<String>) {
        let mut pods = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        pods.insert(
            (namespace.to_string(), sandbox_id.to_string()),
            Pod {
                hostname,
                ..Pod::default()
            },
        );
    }

    /// Releases a deleted sandbox's namespaces and ends its PID init.
    pub fn sandbox_deleted(&self, namespace: &str, sandbox_id: &str) {
        let removed = {
            let mut pods = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            pods.remove(&(namespace.to_string(), sandbox_id.to_string()))
        };
        if let Some(init) = removed.as_ref().and_then(|pod| pod.init.as_ref()) {
            log::info!(
                "pod {sandbox_id}: ending its PID namespace init {}",
                init.pid
            );
        }
        drop(removed);
    }

    /// The path runc joins for namespace `kind` (`ipc`, `uts` or `pid`, as
    /// in an OCI spec) of pod `sandbox_id`, made now if not yet; `None` when
    /// this server hosts no such sandbox (a container outside a pod) or the
    /// kind is not one a pod shares. Blocking.
    pub fn shared(&self, namespace: &str, sandbox_id: &str, kind: &str) -> Result<Option<PathBuf>> {
        let mut pods = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pod) = pods.get_mut(&(namespace.to_string(), sandbox_id.to_string())) else {
            return Ok(None);
        };
        match kind {
            "ipc" | "uts" => {
                let (ipc, uts) = match &pod.ipc_uts {
                    Some(files) => files,
                    None => pod
                        .ipc_uts
                        .insert(new_ipc_uts(pod.hostname.clone()).with_context(|| {
                            format!("cannot make the IPC and UTS namespaces of pod {sandbox_id}")
                        })?),
                };
                let file = if kind == "ipc" { ipc } else { uts };
                Ok(Some(PathBuf::from(format!(
                    "/proc/{}/fd/{}",
                    std::process::id(),
                    file.as_raw_fd()
                ))))
            }
            "pid" => {
                let init = match &pod.init {
                    Some(init) if init.ended.load(Ordering::SeqCst) => bail!(
                        "the shared PID namespace of pod {sandbox_id} is gone (its init, pid {}, was killed): remove the pod and create it again",
                        init.pid
                    ),
                    Some(init) => init,
                    None => pod.init.insert(start_pod_init(sandbox_id).with_context(|| {
                        format!("cannot start the shared PID namespace of pod {sandbox_id}")
                    })?),
                };
                Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", init.pid))))
            }
            _ => Ok(None),
        }
    }
}

/// New IPC and UTS namespaces with `hostname` set, held by their files.
fn new_ipc_uts(hostname: Option<String>) -> Result<(File, File)> {
    // On a thread of its own: unshare moves only the calling thread, which
    // then ends; the namespaces live on through the files.
    let made = std::thread::Builder::new()
        .name("pod-namespaces".to_string())
        .spawn(move || -> Result<(File, File)> {
            nix::sched::unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
                .context("unshare failed")?;
            if let Some(hostname) = hostname {
                // SAFETY: a pointer and length of a live string.
                if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
                    return Err(std::io::Error::last_os_error()).with_context(|| {
                        format!("cannot set the pod's hostname {hostname:?} (at most 64 bytes)")
                    });
                }
            }
            let ipc = File::open("/proc/thread-self/ns/ipc")
                .context("cannot open the new IPC namespace")?;
            let uts = File::open("/proc/thread-self/ns/uts")
                .context("cannot open the new UTS namespace")?;
            Ok((ipc, uts))
        })
        .context("cannot start a thread")?;
    match made.join() {
        Ok(result) => result,
        Err(_) => bail!("the thread making the namespaces panicked"),
    }
}

/// Runs this binary as the pod's PID init; returns it once it runs.
fn start_pod_init(sandbox_id: &str) -> Result<PodInit> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe failed")?;
    let mut command = Command::new(wasishim_engine::THIS_EXECUTABLE);
    command
        .arg(POD_INIT_ARG)
        .arg(sandbox_id)
        .stdin(Stdio::from(read));
    let output = reaper::run(&mut command, true).context("cannot run the shim binary")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let pid = text.trim().parse::<i32>().ok().filter(|_| output.code == 0);
    let Some(pid) = pid else {
        bail!(
            "the pod init failed (exit {}): {}",
            output.code,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    };
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    // Re-parented to this process, the subreaper, when its parent exited;
    // an exit before this call is kept for it.
    reaper::watch(pid, move |code| {
        flag.store(true, Ordering::SeqCst);
        log::info!("pod init {pid} ended ({code})");
    });
    log::info!("pod init {pid} holds the shared PID namespace");
    Ok(PodInit {
        pid,
        ended,
        _stdin: write,
    })
}

/// The shim binary run with [`POD_INIT_ARG`]: unshares PID, forks the
/// namespace's init, prints its pid and exits. Returns the exit code.
pub fn run_pod_init() -> i32 {
    if let Err(err) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
        eprintln!("cannot make a PID namespace: {err}");
        return 1;
    }
    // SAFETY: the caller runs this first thing in main, with one thread;
    // the child makes only raw system calls.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            println!("{child}");
            0
        }
        Ok(nix::unistd::ForkResult::Child) => pod_init(),
        Err(err) => {
            eprintln!("cannot fork the pod init: {err}");
            1
        }
    }
}

/// Pid 1 of the pod's PID namespace: waits for its stdin to close.
fn pod_init() -> ! {
    // SAFETY: raw system calls on this process's own descriptors and
    // signal dispositions.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
        // Nothing the shim passed on (its ttrpc listener is inherited
        // without close-on-exec) stays open here.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        // Ignored, the kernel reaps this init's children and the orphans
        // it inherits: no zombies, no loop.
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    let mut byte = [0u8; 64];
    loop {
        // SAFETY: reads into a buffer on the stack.
        let n = unsafe { libc::read(0, byte.as_mut_ptr().cast(), byte.len()) };
        let interrupted =
            n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if n == 0 || (n < 0 && !interrupted) {
            // The shim closed its end or died: the pod is over.
            // SAFETY: ends this process.
            unsafe { libc::_exit(0) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn unknown_pods_and_kinds_share_nothing() {
        let pods = PodNamespaces::default();
        assert_eq!(pods.shared("k8s.io", "pod1", "ipc").unwrap(), None);
        pods.sandbox_created("k8s.io", "pod1", Some("web".into()));
        // Another namespace's pod of that name is not this one.
        assert_eq!(pods.shared("moby", "pod1", "uts").unwrap(), None);
        // A pod's network is pod_network's; mount, user... are never shared.
        assert_eq!(pods.shared("k8s.io", "pod1", "network").unwrap(), None);
        assert_eq!(pods.shared("k8s.io", "pod1", "mount").unwrap(), None);
        pods.sandbox_deleted("k8s.io", "pod1");
        assert_eq!(pods.shared("k8s.io", "pod1", "ipc").unwrap(), None);
    }

    /// Needs root (unshare), as the tests of this crate run.
    #[test]
    fn ipc_and_uts_are_made_once_with_the_pods_hostname() {
        let pods = PodNamespaces::default();
        pods.sandbox_created("k8s.io", "pod1", Some("web-0".into()));
        let ipc = pods.shared("k8s.io", "pod1", "ipc").unwrap().unwrap();
        let uts = pods.shared("k8s.io", "pod1", "uts").unwrap().unwrap();
        assert_eq!(
            pods.shared("k8s.io", "pod1", "ipc").unwrap(),
            Some(ipc.clone())
        );
        let inode = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        assert_ne!(inode(&ipc), inode("/proc/self/ns/ipc".as_ref()));
        assert_ne!(inode(&uts), inode("/proc/self/ns/uts".as_ref()));
        // A thread joining the UTS namespace sees the pod's hostname.
        let file = File::open(&uts).unwrap();
        let hostname = std::thread::spawn(move || {
            nix::sched::setns(file, CloneFlags::CLONE_NEWUTS).unwrap();
            let mut name = [0u8; 65];
            // SAFETY: a buffer on the stack and its length.
            assert_eq!(
                unsafe { libc::gethostname(name.as_mut_ptr().cast(), 64) },
                0
            );
            let end = name.iter().position(|b| *b == 0).unwrap();
            String::from_utf8(name[..end].to_vec()).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(hostname, "web-0");
        // Another pod gets its own.
        pods.sandbox_created("k8s.io", "pod2", None);
        let other = pods.shared("k8s.io", "pod2", "ipc").unwrap().unwrap();
        assert_ne!(inode(&other), inode(&ipc));
        pods.sandbox_deleted("k8s.io", "pod1");
        pods.sandbox_deleted("k8s.io", "pod2");
    }
}
