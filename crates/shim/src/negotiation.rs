//! containerd version negotiation: which task API name to serve and how to
//! answer `start` so that the calling containerd understands the reply.
//!
//! The service is registered under both task API names
//! (`containerd.task.v2.Task` and `containerd.task.v3.Task`; the messages are
//! the same), so only the form of `start`'s reply depends on the caller, and
//! the form decides which name containerd then calls:
//!
//! - containerd 1.6 reads a bare address (`unix:///run/containerd/s/<hash>`)
//!   and calls v2. It sets neither `MAX_SHIM_VERSION` nor `GRPC_ADDRESS`.
//! - containerd 1.7 reads a bare address or JSON, but rejects a JSON version
//!   above 2, and calls v2. It sets `MAX_SHIM_VERSION=2`.
//! - containerd 2.x reads JSON `{"version":3,"address":..,"protocol":"ttrpc"}`
//!   and then calls v3 (given a bare address it falls back to v2). 2.1.9 sets
//!   `MAX_SHIM_VERSION=2`, exactly like 1.7, and its environment is otherwise
//!   the same as 1.7's, so the environment cannot tell them apart.
//!
//! So [`reply_form`] decides from two facts:
//!
//! 1. `MAX_SHIM_VERSION >= 3`: a containerd that announces version 3 this way
//!    gets the version-3 reply without further questions.
//! 2. Otherwise, the version containerd reports over its gRPC API
//!    (`containerd.services.version.v1.Version/Version` on the socket named by
//!    `GRPC_ADDRESS`, asked by [`query_containerd_version`]): major version 2
//!    or later gets the version-3 reply.
//!
//! Anything else, including a failed or slow query, gets the bare address,
//! which every containerd accepts. Nothing here writes to stdout or stderr:
//! containerd reads both as `start`'s reply.
//!
//! Cost: the query (a current-thread tokio runtime, a unix-socket connection,
//! an HTTP/2 handshake and one unary call) adds about 1 ms to each `start`.
//! Timed on the 2-core dev machine by running the built shim's `start` 300
//! times per case against containerd 1.7.24 and 2.1.9 (joining an existing
//! server, so no launch): fastest 2.3 ms without the query, 3.3 ms with it;
//! median 5.9 ms vs 6.8-7.1 ms. The query alone, first call in a process:
//! 2.5 ms (`query_a_real_containerd` below, run by hand). `start` runs for
//! every container, so the answer is remembered per containerd process
//! ([`remembered_version`]): a file under `/run/containerd/wasishim` names
//! the process (pid and start time of `start`'s parent, which is containerd)
//! and its version; a restarted or upgraded containerd is a new process and
//! is asked again.

use std::path::Path;
use std::time::Duration;

/// Service names the task service is registered under.
pub const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
pub const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";

/// Environment variable through which containerd 1.7+ says which bootstrap
/// version it accepts (2.1.9 still says 2).
pub const MAX_SHIM_VERSION_ENV: &str = "MAX_SHIM_VERSION";

/// Environment variable naming containerd's main (gRPC) socket; set by 1.7
/// and 2.x, not by 1.6.
pub const GRPC_ADDRESS_ENV: &str = "GRPC_ADDRESS";

/// How long `start` waits for containerd's version before giving up and
/// replying with the bare address.
pub const VERSION_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The form of `start`'s reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyForm {
    /// `unix:///...`: understood by every containerd; it then calls task API v2.
    BareAddress,
    /// `{"version":3,...}`: containerd 2.x; it then calls task API v3.
    JsonV3,
}

/// Decides the reply form from `MAX_SHIM_VERSION` (`None` when unset) and the
/// version containerd reported (`None` when it could not be asked). Pure.
pub fn reply_form(max_shim_version: Option<&str>, containerd_version: Option<&str>) -> ReplyForm {
    if announces_v3(max_shim_version) {
        return ReplyForm::JsonV3;
    }
    match containerd_version.and_then(major_version) {
        Some(major) if major >= 2 => ReplyForm::JsonV3,
        _ => ReplyForm::BareAddress,
    }
}

/// Whether `MAX_SHIM_VERSION` alone already asks for the version-3 reply.
pub fn announces_v3(max_shim_version: Option<&str>) -> bool {
    max_shim_version
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|max| max >= 3)
}

/// The major version of a containerd version string such as `1.7.24~ds1`,
/// `2.1.9+ds1` or `v2.1.9`; `None` when it does not start with a number.
pub fn major_version(version: &str) -> Option<u32> {
    let version = version.trim();
    let version = version.strip_prefix('v').unwrap_or(version);
    let digits = version.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// The text `start` prints for `address` in `form`.
pub fn start_reply(address: &str, form: ReplyForm) -> String {
    match form {
        // Built by hand to keep serde out of the start path; the address is
        // a path we generated (hex digest), so it needs no JSON escaping.
        ReplyForm::JsonV3 => {
            format!(r#"{{"version":3,"address":"{address}","protocol":"ttrpc"}}"#)
        }
        ReplyForm::BareAddress => address.to_string(),
    }
}

/// The reply form for the containerd that ran this process, from its
/// environment and, when that does not settle it, its reported version.
///
/// Costs one gRPC call to containerd (about 1 ms) unless
/// `MAX_SHIM_VERSION >= 3`; waits at most [`VERSION_QUERY_TIMEOUT`].
pub fn caller_reply_form() -> ReplyForm {
    let max_shim_version = std::env::var(MAX_SHIM_VERSION_ENV).ok();
    if announces_v3(max_shim_version.as_deref()) {
        return ReplyForm::JsonV3;
    }
    let containerd_version = std::env::var(GRPC_ADDRESS_ENV)
        .ok()
        .filter(|address| !address.is_empty())
        .and_then(|address| remembered_version(&address, Path::new(VERSION_MEMORY_DIR)));
    reply_form(max_shim_version.as_deref(), containerd_version.as_deref())
}

/// Where `start` remembers containerd versions (root-only, on tmpfs).
pub const VERSION_MEMORY_DIR: &str = "/run/containerd/wasishim";

/// The version of the containerd at `grpc_address` that ran this process:
/// read from `dir` when this same containerd process was asked before,
/// otherwise asked with [`query_containerd_version`] and written down.
/// Without a readable parent process it just asks.
///
/// One file holds a line per containerd process (`<pid> <start time>
/// <address>\t<version>`); writing it drops the lines of processes that
/// have ended, so it stays as small as the number of running containerds.
pub fn remembered_version(grpc_address: &str, dir: &Path) -> Option<String> {
    let Some(caller) = parent_identity() else {
        return query_containerd_version(grpc_address, VERSION_QUERY_TIMEOUT);
    };
    let caller = format!("{caller} {grpc_address}");
    let file = dir.join("containerd-versions");
    let known = std::fs::read_to_string(&file).unwrap_or_default();
    let remembered = remembered_in(&known, &caller);
    if remembered.is_some() {
        return remembered;
    }
    let version = query_containerd_version(grpc_address, VERSION_QUERY_TIMEOUT)?;
    let contents = versions_file(&known, &caller, &version, still_running);
    // Best effort, and atomic so that concurrent starts never read half a
    // file; a line lost to a concurrent writer only means one more query.
    let temp = dir.join(format!(".containerd-versions.{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&temp, contents))
        .and_then(|()| std::fs::rename(&temp, &file));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    Some(version)
}

/// The version the versions file `known` remembers for `caller` ("<pid>
/// <start time> <address>"), if any. Pure.
pub fn remembered_in(known: &str, caller: &str) -> Option<String> {
    known.lines().find_map(|line| {
        let (who, version) = line.split_once('\t')?;
        (who == caller && !version.is_empty()).then(|| version.to_string())
    })
}

/// The new versions file: the lines of `known` whose process `running`
/// says still runs (given its pid and the line), then `caller`'s `version`.
pub fn versions_file(
    known: &str,
    caller: &str,
    version: &str,
    running: impl Fn(&str, &str) -> bool,
) -> String {
    let mut lines: Vec<&str> = known
        .lines()
        .filter(|line| {
            line.split_once(' ')
                .is_some_and(|(pid, _)| running(pid, line))
        })
        .collect();
    let mine = format!("{caller}\t{version}");
    lines.push(&mine);
    lines.join("\n") + "\n"
}

/// Whether the process `pid` of a remembered `line` ("<pid> <start time> ...")
/// is still the same running process.
fn still_running(pid: &str, line: &str) -> bool {
    // The file is only ever written with numeric pids; anything else is not
    // a process to look for under /proc.
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && process_identity(pid).is_some_and(|identity| line.starts_with(&format!("{identity} ")))
}

/// "<pid> <start time>" of this process's parent: unique per process over
/// the machine's uptime, unlike the pid alone.
fn parent_identity() -> Option<String> {
    process_identity(&std::os::unix::process::parent_id().to_string())
}

/// "<pid> <start time>" of process `pid`, if it runs.
fn process_identity(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 is the start time; the command name (field 2) may hold spaces,
    // so count from its closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let start_time = after_name.split_whitespace().nth(19)?;
    Some(format!("{pid} {start_time}"))
}

/// Asks the containerd listening on `grpc_address` (a unix socket path, with
/// or without `unix://`) for its version, e.g. `2.1.9+ds1`.
///
/// Runs its own current-thread tokio runtime, so it must not be called from
/// inside one. Returns `None`, silently, when the runtime cannot be built,
/// the socket cannot be reached, the call fails or `timeout` passes.
pub fn query_containerd_version(grpc_address: &str, timeout: Duration) -> Option<String> {
    use containerd_client::services::v1::version_client::VersionClient;

    let path = grpc_address
        .strip_prefix("unix://")
        .unwrap_or(grpc_address)
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async move {
        let query = async {
            let channel = containerd_client::connect(&path).await.ok()?;
            let reply = VersionClient::new(channel).version(()).await.ok()?;
            Some(reply.into_inner().version)
        };
        tokio::time::timeout(timeout, query).await.ok().flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_1_6_gets_a_bare_address() {
        // Sets neither MAX_SHIM_VERSION nor GRPC_ADDRESS: nothing to ask.
        assert_eq!(reply_form(None, None), ReplyForm::BareAddress);
        assert_eq!(reply_form(None, Some("1.6.20~ds1")), ReplyForm::BareAddress);
    }

    #[test]
    fn containerd_1_7_gets_a_bare_address() {
        assert_eq!(
            reply_form(Some("2"), Some("1.7.24~ds1")),
            ReplyForm::BareAddress
        );
        assert_eq!(
            reply_form(Some("2"), Some("v1.7.0-beta.0")),
            ReplyForm::BareAddress
        );
    }

    #[test]
    fn containerd_2_is_recognised_by_its_version_despite_max_shim_version_2() {
        assert_eq!(reply_form(Some("2"), Some("2.1.9+ds1")), ReplyForm::JsonV3);
        assert_eq!(reply_form(Some("2"), Some("v2.1.9")), ReplyForm::JsonV3);
        assert_eq!(
            reply_form(Some("2"), Some("2.1.9+unknown")),
            ReplyForm::JsonV3
        );
        assert_eq!(reply_form(None, Some("2.0.0-rc.1")), ReplyForm::JsonV3);
        assert_eq!(reply_form(Some("2"), Some("3.0.0")), ReplyForm::JsonV3);
    }

    #[test]
    fn max_shim_version_3_needs_no_version() {
        assert_eq!(reply_form(Some("3"), None), ReplyForm::JsonV3);
        assert_eq!(reply_form(Some(" 4\n"), None), ReplyForm::JsonV3);
    }

    #[test]
    fn failed_query_falls_back_to_a_bare_address() {
        assert_eq!(reply_form(Some("2"), None), ReplyForm::BareAddress);
    }

    #[test]
    fn garbage_falls_back_to_a_bare_address() {
        assert_eq!(reply_form(Some("three"), None), ReplyForm::BareAddress);
        assert_eq!(reply_form(Some("2"), Some("")), ReplyForm::BareAddress);
        assert_eq!(
            reply_form(Some("2"), Some("unknown")),
            ReplyForm::BareAddress
        );
        assert_eq!(reply_form(Some("2"), Some("v")), ReplyForm::BareAddress);
    }

    #[test]
    fn major_version_reads_the_leading_number() {
        assert_eq!(major_version("1.6.20~ds1"), Some(1));
        assert_eq!(major_version("2.1.9+ds1"), Some(2));
        assert_eq!(major_version("v2.1.9"), Some(2));
        assert_eq!(major_version("10.0"), Some(10));
        assert_eq!(major_version("x1.0"), None);
    }

    #[test]
    fn bare_reply_is_the_address() {
        assert_eq!(
            start_reply("unix:///run/x", ReplyForm::BareAddress),
            "unix:///run/x"
        );
    }

    #[test]
    fn v3_reply_is_version_3_json() {
        let reply = start_reply("unix:///run/x", ReplyForm::JsonV3);
        let parsed: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(parsed["version"], 3);
        assert_eq!(parsed["address"], "unix:///run/x");
        assert_eq!(parsed["protocol"], "ttrpc");
    }

    #[test]
    fn query_without_a_containerd_gives_none_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let socket = dir.path().join("missing.sock");
        assert_eq!(
            query_containerd_version(socket.to_str().unwrap(), VERSION_QUERY_TIMEOUT),
            None
        );
        assert!(started.elapsed() < VERSION_QUERY_TIMEOUT);
    }

    #[test]
    fn query_of_a_silent_socket_gives_none_after_the_timeout() {
        // A listener that accepts but never answers the HTTP/2 handshake.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("silent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        assert_eq!(
            query_containerd_version(&format!("unix://{}", socket.display()), timeout),
            None
        );
        assert!(started.elapsed() >= timeout);
        assert!(started.elapsed() < timeout * 10);
    }

    #[test]
    fn a_version_is_remembered_only_for_the_same_containerd_process() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens here, so any answer must come from the file.
        let address = dir.path().join("no-containerd.sock").display().to_string();
        let file = dir.path().join("containerd-versions");
        let me = parent_identity().unwrap();
        std::fs::write(
            &file,
            format!("1 12345 /other\t1.7.24\n{me} {address}\t2.1.9+ds1\n"),
        )
        .unwrap();
        assert_eq!(
            remembered_version(&address, dir.path()).as_deref(),
            Some("2.1.9+ds1")
        );
        std::fs::write(&file, format!("1 12345 {address}\t2.1.9+ds1\n")).unwrap();
        assert_eq!(remembered_version(&address, dir.path()), None);
    }

    #[test]
    fn the_versions_file_keeps_running_processes_and_adds_the_caller() {
        let known = "1 10 /a\t1.7.24\n2 20 /b\t2.1.9\nno-space-line\n\n";
        let file = versions_file(known, "3 30 /c", "2.1.9+ds1", |pid, _| pid == "2");
        assert_eq!(file, "2 20 /b\t2.1.9\n3 30 /c\t2.1.9+ds1\n");
        assert_eq!(
            remembered_in(&file, "3 30 /c").as_deref(),
            Some("2.1.9+ds1")
        );
        assert_eq!(remembered_in(&file, "2 20 /b").as_deref(), Some("2.1.9"));
        assert_eq!(remembered_in("3 30 /c\t\n", "3 30 /c"), None);
        assert_eq!(remembered_in("", "3 30 /c"), None);
    }

    #[test]
    fn only_numeric_pids_are_looked_up() {
        let me = process_identity("self").unwrap();
        assert!(!still_running("self", &format!("{me} /sock\t2.1.9")));
        assert!(!still_running("", " 1 /sock\t2.1.9"));
        assert!(!still_running("../1", "../1 1 /sock\t2.1.9"));
    }

    #[test]
    fn only_running_processes_are_kept() {
        let me = process_identity(&std::process::id().to_string()).unwrap();
        let pid = std::process::id().to_string();
        assert!(still_running(&pid, &format!("{me} /sock\t2.1.9")));
        assert!(!still_running(&pid, &format!("{pid} 1 /sock\t2.1.9")));
        assert!(!still_running("999999999", "999999999 1 /sock\t2.1.9"));
    }

    /// Asks a real containerd for its version and prints how long it took.
    /// Run by hand: `WASISHIM_TEST_GRPC_ADDRESS=/run/containerd/containerd.sock
    /// cargo test -p wasishim-shim query_a_real_containerd -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs a running containerd named by WASISHIM_TEST_GRPC_ADDRESS"]
    fn query_a_real_containerd() {
        let address = std::env::var("WASISHIM_TEST_GRPC_ADDRESS").unwrap();
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let version = query_containerd_version(&address, VERSION_QUERY_TIMEOUT);
            println!("{version:?} in {:?}", started.elapsed());
            assert!(version.is_some());
        }
    }
}
