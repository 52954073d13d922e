//! Running commands without hanging a test: output collected from pipes,
//! a time limit after which the command is killed, and readable output.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Text of a command's stdout and stderr, for assertions and messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The exit code of a command, or 128+signal if it was killed.
pub fn exit_code(status: &ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Runs `cmd` with piped stdout/stderr, feeding `input` if given; kills it
/// after `limit` (then its status is SIGKILL's and stderr says so).
pub(crate) fn run_with_timeout(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    limit: Duration,
) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            use std::os::unix::process::ExitStatusExt;
            return Output {
                status: ExitStatus::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("cannot run {:?}: {e}", cmd.get_program()).into_bytes(),
            };
        }
    };
    let feeder = match (child.stdin.take(), input) {
        (Some(mut stdin), Some(bytes)) => Some(thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })),
        _ => None,
    };
    let (mut out, timed_out) = collect_within(child, limit);
    if let Some(f) = feeder {
        let _ = f.join();
    }
    if timed_out {
        out.stderr.extend_from_slice(
            format!(
                "\nwasishim-e2e: killed after {limit:?} ({:?})\n",
                cmd.get_args().collect::<Vec<_>>()
            )
            .as_bytes(),
        );
    }
    out
}

/// Waits for `child` (spawned with piped stdout and stderr, e.g. by
/// [`PrivateContainerd::spawn_ctr`]) and returns its output. Use it instead
/// of `Child::wait_with_output`, which hangs a stuck test for ever.
///
/// # Panics
///
/// If `child` has not exited after `limit`: it is killed and the panic
/// names `what`, the limit and the output so far (a killed child's status
/// would look like a SIGKILLed task's 137 and could pass a test).
pub fn wait_with_timeout(child: Child, limit: Duration, what: &str) -> Output {
    let (out, timed_out) = collect_within(child, limit);
    if timed_out {
        panic!(
            "{what} did not exit within {limit:?}; killed it.\n{}",
            output_text(&out)
        );
    }
    out
}

/// Reads `child`'s piped stdout and stderr until it exits, killing it after
/// `limit`; says whether it had to.
fn collect_within(mut child: Child, limit: Duration) -> (Output, bool) {
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut b);
            }
            b
        })
    }
    let out_reader = drain(child.stdout.take());
    let err_reader = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                timed_out = true;
                let _ = child.kill();
                match child.wait() {
                    Ok(status) => break status,
                    Err(e) => panic!("waiting for a killed child {}: {e}", child.id()),
                }
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
    };
    let output = Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    (output, timed_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_kills() {
        let mut cmd = Command::new("sleep");
        cmd.arg("10");
        let start = Instant::now();
        let out = run_with_timeout(cmd, None, Duration::from_millis(200));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(exit_code(&out.status), 137);
        assert!(String::from_utf8_lossy(&out.stderr).contains("killed after"));
    }

    #[test]
    fn a_stuck_child_fails_the_wait() {
        let child = Command::new("sleep")
            .arg("10")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let waited = std::panic::catch_unwind(|| {
            wait_with_timeout(child, Duration::from_millis(200), "sleep 10")
        });
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            waited.is_err(),
            "a child still running after the limit passed"
        );
    }

    #[test]
    fn stdin_is_fed() {
        let out = run_with_timeout(
            {
                let mut c = Command::new("cat");
                c.stdin(Stdio::piped());
                c
            },
            Some(b"abc".to_vec()),
            Duration::from_secs(10),
        );
        assert_eq!(out.stdout, b"abc");
    }
}
