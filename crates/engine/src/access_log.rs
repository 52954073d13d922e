//! The access lines of an HTTP server guest (`GET /path 200 3 ms`): queued
//! by the request, written by a task of their own, dropped (and counted)
//! when the container's stdout is not read fast enough.
//!
//! A request only formats its line and appends it to a bounded buffer; a
//! writer task on the guest's runtime writes whatever piled up in one write
//! when the stdout takes it. When nobody reads the stdout (a detached
//! `ctr run -d` without `--null-io`), the buffer fills, further lines are
//! dropped, and once the reader is back, one line says how many: serving
//! goes on either way. `WASISHIM_HTTP_ACCESS_LOG=off` switches the lines off.
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::Notify;

use crate::output::GuestOutput;

/// Container environment variable: `off` switches off the access line an
/// HTTP component's server writes on the container's stdout for every
/// request; `on`, the default, keeps them.
pub const HTTP_ACCESS_LOG_ENV: &str = "WASISHIM_HTTP_ACCESS_LOG";

/// Bytes of access lines waiting for the writer; lines beyond are dropped.
const BUFFER_BYTES: usize = 256 * 1024;
/// How long a stopping server waits for its access lines to be written.
const FLUSH_WAIT: Duration = Duration::from_millis(250);

/// Reads [`HTTP_ACCESS_LOG_ENV`]'s value (`None`: unset).
///
/// # Errors
///
/// Fails, naming the variable, for anything but `on` or `off`.
pub(crate) fn enabled(value: Option<&str>) -> Result<bool> {
    match value {
        None => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("on") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("off") => Ok(false),
        Some(v) => bail!("{HTTP_ACCESS_LOG_ENV}={v} is neither on nor off: set it to off to stop the per-request lines on stdout, or leave it unset"),
    }
}

/// The server's queue of lines for the container's stdout.
pub(crate) struct AccessLog {
    queue: Arc<Queue>,
    /// Access lines wanted ([`HTTP_ACCESS_LOG_ENV`]); notices always are.
    on: bool,
}

struct Queue {
    state: Mutex<State>,
    /// Wakes the writer.
    wake: Notify,
}

#[derive(Default)]
struct State {
    text: String,
    /// Lines dropped since the last write.
    dropped: u64,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
    /// No writer (no stdout, or it failed): lines are discarded.
    gone: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Text and counters: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AccessLog {
    /// Starts the writer task for `stdout` on the current runtime (`None`:
    /// lines go nowhere). Must be called on the guest's runtime.
    pub(crate) fn start(stdout: Option<GuestOutput>, on: bool) -> AccessLog {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        match stdout {
            Some(stdout) => {
                tokio::spawn(write_lines(queue.clone(), stdout));
            }
            None => queue.lock().gone = true,
        }
        AccessLog { queue, on }
    }

    /// Queues the access line `make()` gives, if access lines are on. Never
    /// waits: when the buffer is full the line is dropped and counted.
    pub(crate) fn line(&self, make: impl FnOnce() -> String) {
        if self.on {
            self.push(&make());
        }
    }

    /// Queues a line that is not an access line (e.g. where the server
    /// listens): written even when access lines are off.
    pub(crate) fn notice(&self, line: &str) {
        self.push(line);
    }

    fn push(&self, line: &str) {
        let mut state = self.queue.lock();
        if state.gone {
            return;
        }
        if state.text.len() + line.len() + 1 > BUFFER_BYTES {
            state.dropped += 1;
            return;
        }
        state.text.push_str(line);
        state.text.push('\n');
        drop(state);
        self.queue.wake.notify_one();
    }

    /// Waits until the queued lines are written, at most [`FLUSH_WAIT`]
    /// (nobody may be reading): for a server that stops gracefully.
    pub(crate) async fn flush(&self) {
        let written = async {
            loop {
                {
                    let state = self.queue.lock();
                    if state.gone || (state.text.is_empty() && !state.writing) {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let _ = tokio::time::timeout(FLUSH_WAIT, written).await;
    }
}

/// The writer task: writes what piled up, then waits for more.
async fn write_lines(queue: Arc<Queue>, stdout: GuestOutput) {
    loop {
        let batch = {
            let mut state = queue.lock();
            let mut batch = std::mem::take(&mut state.text);
            if state.dropped > 0 {
                // The dropped lines came after those in the buffer.
                batch.push_str(&format!(
                    "{} access lines dropped: the container's stdout was not read fast enough ({HTTP_ACCESS_LOG_ENV}=off switches them off)\n",
                    state.dropped
                ));
                state.dropped = 0;
            }
            state.writing = !batch.is_empty();
            batch
        };
        if batch.is_empty() {
            queue.wake.notified().await;
            continue;
        }
        let written = stdout.write_all(batch.as_bytes()).await;
        let mut state = queue.lock();
        state.writing = false;
        if let Err(e) = written {
            log::warn!("cannot write access lines to the container's stdout, dropping them from now on: {e}");
            state.gone = true;
            state.text = String::new();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_is_on_off_or_unset() {
        assert!(matches!(enabled(None), Ok(true)));
        assert!(matches!(enabled(Some("ON")), Ok(true)));
        assert!(matches!(enabled(Some("off")), Ok(false)));
        let e = enabled(Some("no")).err().map(|e| e.to_string());
        assert!(e
            .unwrap_or_default()
            .starts_with("WASISHIM_HTTP_ACCESS_LOG=no is neither on nor off"));
    }
}
