//! The compile worker's seccomp filter: an allow list.
//!
//! Unlike the guests' deny list (confine/seccomp.rs), which must follow
//! whatever wasmtime, tokio and the C library call for a running guest, the
//! worker is one narrow program: read a file, compile on a few threads,
//! write a file. Everything else fails with `EPERM` (the worker then fails
//! with a message; nothing is killed at random): no `open` of any path, no
//! socket, no `exec`, no new process (`clone` must create a thread), no
//! executable mapping, no signal to another process, no change of its own
//! limits. `clone3` fails with `ENOSYS` so the C library falls back to
//! `clone`, whose flags the filter can see.
use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Calls allowed whatever their arguments.
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sysinfo,
    libc::SYS_getrusage,
    libc::SYS_restart_syscall,
];

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?)
}

/// A rule of one condition.
fn when(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule> {
    Ok(SeccompRule::new(vec![condition(arg, op, value)?])?)
}

/// Argument `arg` has none of the bits of `mask`.
fn without(arg: u8, mask: u64) -> Result<SeccompRule> {
    when(arg, SeccompCmpOp::MaskedEq(mask), 0)
}

/// Argument `arg` has every bit of `mask`.
fn with(arg: u8, mask: u64) -> Result<SeccompRule> {
    when(arg, SeccompCmpOp::MaskedEq(mask), mask)
}

/// The two filters of a worker whose process id is `pid`.
fn compile(pid: u32) -> Result<(BpfProgram, BpfProgram)> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| anyhow!("no seccomp support for {}: {e:?}", std::env::consts::ARCH))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    let exec = libc::PROT_EXEC as u64;
    rules.insert(libc::SYS_mmap, vec![without(2, exec)?]);
    rules.insert(libc::SYS_mprotect, vec![without(2, exec)?]);
    // Threads only: a new process would escape the worker's wall clock.
    rules.insert(libc::SYS_clone, vec![with(0, libc::CLONE_THREAD as u64)?]);
    // fstat of an open descriptor only, never of a path.
    let empty_path = libc::AT_EMPTY_PATH as u64;
    rules.insert(libc::SYS_newfstatat, vec![with(3, empty_path)?]);
    rules.insert(libc::SYS_statx, vec![with(2, empty_path)?]);
    // Signals to itself only (abort, thread cancellation).
    let own = u64::from(pid);
    rules.insert(libc::SYS_tgkill, vec![when(0, SeccompCmpOp::Eq, own)?]);
    rules.insert(libc::SYS_kill, vec![when(0, SeccompCmpOp::Eq, own)?]);
    // Naming threads; reading (never setting) a limit. Adding filters, as
    // `install` does next, only ever takes rights away.
    rules.insert(
        libc::SYS_prctl,
        vec![
            when(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?,
            when(0, SeccompCmpOp::Eq, libc::PR_GET_NAME as u64)?,
            when(0, SeccompCmpOp::Eq, libc::PR_SET_NO_NEW_PRIVS as u64)?,
        ],
    );
    rules.insert(
        libc::SYS_seccomp,
        vec![when(
            0,
            SeccompCmpOp::Eq,
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
        )?],
    );
    rules.insert(libc::SYS_prlimit64, vec![when(2, SeccompCmpOp::Eq, 0)?]);
    let allow = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok((allow.try_into()?, clone3.try_into()?))
}

/// Sets `no_new_privs` and installs the filters on the calling thread, the
/// worker's only one: threads started later inherit them. The `clone3`
/// filter goes last, so that its `ENOSYS` wins over the allow list's
/// `EPERM` (the kernel returns the last installed filter's error).
pub(super) fn install() -> Result<()> {
    let (allow, clone3) = compile(std::process::id())?;
    seccompiler::apply_filter(&allow).context("allow list")?;
    seccompiler::apply_filter(&clone3).context("clone3")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the filter refuses and allows, tried in a child process (a
    /// filter lasts for the life of its process): each failed expectation
    /// sets a bit of the child's exit code.
    fn probe() -> i32 {
        if install().is_err() {
            return 1;
        }
        let errno = || std::io::Error::last_os_error().raw_os_error();
        let mut failed = 0;
        // SAFETY (all below): plain system calls on constants and locals.
        let fd = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
        if fd != -1 || errno() != Some(libc::EPERM) {
            failed |= 2;
        }
        if unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) } != -1 {
            failed |= 4;
        }
        if unsafe { libc::fork() } != -1 {
            failed |= 8;
        }
        let exec = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if exec != libc::MAP_FAILED {
            failed |= 16;
        }
        // Threads work: compiling uses a few.
        if std::thread::spawn(|| 7).join().ok() != Some(7) {
            failed |= 32;
        }
        if unsafe { libc::kill(1, 0) } != -1 {
            failed |= 64;
        }
        let mut bytes = vec![0u8; 1 << 20];
        bytes[12345] = 1;
        if std::hint::black_box(bytes)
            .iter()
            .map(|&b| u32::from(b))
            .sum::<u32>()
            != 1
        {
            failed |= 128;
        }
        failed
    }

    #[test]
    fn the_filter_allows_compiling_and_refuses_the_rest() {
        assert!(compile(1).is_ok());
        // SAFETY: the child only makes system calls and allocates (glibc's
        // malloc is usable after fork), then exits without unwinding.
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(probe()) },
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "the probe died: {status:#x}");
                assert_eq!(libc::WEXITSTATUS(status), 0, "failed checks (bits)");
            }
        }
    }
}
