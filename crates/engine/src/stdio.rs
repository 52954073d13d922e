//! The stdin/stdout/stderr paths containerd hands to the shim, and opening them.
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::{AsyncRead, ReadBuf};
use wasmtime_wasi::cli::{IsTerminal, StdinStream};

use crate::output::GuestOutput;

/// Paths of the container's stdio (FIFOs or files); `None` or empty means /dev/null.
///
/// Opened by [`WasmEngine::prepare`](crate::WasmEngine::prepare): stdout and
/// stderr for writes that never drop output (a guest waits for a slow
/// reader, as a future on its runtime, so a kill still ends it at once),
/// stdin for reading without waiting for a writer to appear. Files must
/// exist; they are appended to, never created.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    /// Read by the guest as fd 0 (`wasi:cli/stdin`).
    pub stdin: Option<PathBuf>,
    /// Written by the guest as fd 1 (`wasi:cli/stdout`).
    pub stdout: Option<PathBuf>,
    /// Written by the guest as fd 2 (`wasi:cli/stderr`), and by the engine
    /// with the reason when a guest traps.
    pub stderr: Option<PathBuf>,
}

/// The opened files behind a [`Stdio`]; `None` is a null stream.
pub(crate) struct OpenStdio {
    pub(crate) stdin: Option<File>,
    pub(crate) stdout: Option<GuestOutput>,
    pub(crate) stderr: Option<GuestOutput>,
}

impl Stdio {
    /// Opens all three, so that a bad path fails task creation instead of the
    /// guest's first write.
    pub(crate) fn open(&self) -> Result<OpenStdio> {
        Ok(OpenStdio {
            stdin: given(&self.stdin).map(open_input).transpose()?,
            stdout: given(&self.stdout)
                .map(|p| open_output(p, "stdout"))
                .transpose()?,
            stderr: given(&self.stderr)
                .map(|p| open_output(p, "stderr"))
                .transpose()?,
        })
    }
}

fn given(path: &Option<PathBuf>) -> Option<&Path> {
    path.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// Opens stdout/stderr for writing. A FIFO is opened read-write, as runc's
/// shim keeps a read end too: a guest's write never fails with EPIPE after
/// the client that read the output (a detached `ctr run -d`) went away. But
/// first the client's reader must have the FIFO open ([`wait_for_reader`]),
/// as runc's shim waits for it: a FIFO's buffered bytes are discarded when
/// its last descriptor closes, so a short guest that wrote and ended before
/// the client's open would lose its whole output. A regular file is appended
/// to. See [`GuestOutput`] for how it is written.
fn open_output(path: &Path, which: &str) -> Result<GuestOutput> {
    use std::os::unix::fs::FileTypeExt;
    let is_fifo = std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    let mut options = OpenOptions::new();
    // Held until the real descriptor is open: a reader that just opened must
    // never see zero writers, which it would read as end of file.
    let mut _probe = None;
    if is_fifo {
        _probe = wait_for_reader(path, which);
        options.read(true).write(true);
    } else {
        options.append(true);
    }
    let file = options
        .open(path)
        .with_context(|| format!("cannot open the container's {which} {}", path.display()))?;
    GuestOutput::new(file)
        .with_context(|| format!("cannot set up the container's {which} {}", path.display()))
}

/// Second handles on stdout and stderr where they are FIFOs, for
/// [`wait_until_read`].
pub(crate) fn fifo_handles(opened: &OpenStdio) -> io::Result<Vec<File>> {
    let mut handles = Vec::new();
    for output in [opened.stdout.as_ref(), opened.stderr.as_ref()]
        .into_iter()
        .flatten()
    {
        if output.is_pipe() {
            handles.push(output.host_handle()?);
        }
    }
    Ok(handles)
}

/// How long an ended guest's output may wait in its FIFOs for the client.
const UNREAD_OUTPUT_WAIT: Duration = Duration::from_millis(250);

/// Waits until the client has read what the guest wrote to `fifos`, at most
/// [`UNREAD_OUTPUT_WAIT`], before the guest's exit is reported. A client
/// such as `ctr run --rm` stops waiting for a reader it has not finished
/// opening once it sees the exit, and a guest that ends within milliseconds
/// can end before that open completes: its output, still in the FIFO, would
/// be lost. Nobody reading (a detached `ctr run -d`) costs the full wait;
/// a killed guest does not wait (see `Workload::start`).
pub(crate) fn wait_until_read(fifos: &[File]) {
    let deadline = std::time::Instant::now() + UNREAD_OUTPUT_WAIT;
    for fifo in fifos {
        loop {
            let mut unread: nix::libc::c_int = 0;
            // SAFETY: FIONREAD writes one int through the pointer.
            let ok =
                unsafe { nix::libc::ioctl(fifo.as_raw_fd(), nix::libc::FIONREAD, &mut unread) }
                    == 0;
            if !ok || unread == 0 || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// How long [`wait_for_reader`] waits for the client's reader.
const READER_WAIT: Duration = Duration::from_secs(5);

/// Waits until some process has FIFO `path` open for reading, at most
/// [`READER_WAIT`], and returns the write-only descriptor that found it.
/// containerd's clients (ctr, the CRI plugin) open their readers before they
/// create the task, so this normally succeeds at the first try; without a
/// reader the output is kept as before, with a warning.
fn wait_for_reader(path: &Path, which: &str) -> Option<File> {
    let deadline = std::time::Instant::now() + READER_WAIT;
    loop {
        // A write-only, non-blocking open fails with ENXIO while no reader has it open.
        let probe = OpenOptions::new()
            .write(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(path);
        match probe {
            Ok(writer) => return Some(writer),
            Err(e) if e.raw_os_error() == Some(Errno::ENXIO as i32) => {}
            // Anything else is reported by the real open that follows.
            Err(_) => return None,
        }
        if std::time::Instant::now() >= deadline {
            log::warn!(
                "no reader opened the container's {which} {} within {READER_WAIT:?}: output the guest writes before one does may be lost",
                path.display()
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Opens stdin for reading without waiting for a writer to appear.
fn open_input(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .with_context(|| format!("cannot open the container's stdin {}", path.display()))?;
    set_blocking(&file)
        .with_context(|| format!("cannot set up the container's stdin {}", path.display()))?;
    Ok(file)
}

fn set_blocking(file: &File) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_SETFL(flags.difference(OFlag::O_NONBLOCK)),
    )?;
    Ok(())
}

/// How much stdin is read ahead of the guest.
const STDIN_BUFFER: usize = 64 * 1024;
/// How often the stdin reader thread checks whether stdin was closed while it
/// waits for input.
const STDIN_POLL: u16 = 100;

/// The guest's stdin: a buffer filled by a reader thread, which
/// [`GuestStdin::close`] can end at any time (containerd's CloseIO, or the
/// guest ending) even while the reader waits on an idle FIFO.
#[derive(Clone)]
pub(crate) struct GuestStdin {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the buffer has room again, or on close.
    room: Condvar,
}

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    /// The writer went away or reading failed: end of file after `buf`.
    eof: bool,
    /// Closed by the host: end of file now, buffered bytes are dropped.
    closed: bool,
    /// The client is done writing (containerd's CloseIO): end of file once
    /// the FIFO has nothing more to give, with nothing dropped.
    finishing: bool,
    /// Guest-side readers waiting for bytes.
    wakers: Vec<Waker>,
}

impl GuestStdin {
    pub(crate) fn new() -> GuestStdin {
        GuestStdin {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                room: Condvar::new(),
            }),
        }
    }

    /// Starts the thread that reads `file` into the buffer. It ends at end of
    /// file, on a read error, or within [`STDIN_POLL`] ms of [`Self::close`].
    pub(crate) fn spawn_reader(&self, file: File, name: &str) -> io::Result<()> {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name(format!("stdin-{name}"))
            .spawn(move || read_into(file, &shared))
            .map(|_| ())
    }

    /// Ends stdin after what its writers already sent (containerd's CloseIO,
    /// sent once the client wrote all its input): reads get those bytes,
    /// then end of file, even if a writer still holds the FIFO open.
    pub(crate) fn finish(&self) {
        let mut state = self.shared.lock();
        state.finishing = true;
        self.shared.room.notify_all();
    }

    /// Ends stdin at once (the guest ended): pending and future reads see
    /// end of file, buffered bytes are dropped.
    pub(crate) fn close(&self) {
        let mut state = self.shared.lock();
        state.closed = true;
        state.buf.clear();
        for w in state.wakers.drain(..) {
            w.wake();
        }
        self.shared.room.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain bytes and flags behind,
        // which are still consistent, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn read_into(mut file: File, shared: &Shared) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let finishing;
        {
            let mut state = shared.lock();
            while state.buf.len() >= STDIN_BUFFER && !state.closed {
                state = shared
                    .room
                    .wait_timeout(state, Duration::from_millis(STDIN_POLL.into()))
                    .map(|(s, _)| s)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            if state.closed {
                return;
            }
            finishing = state.finishing;
        }
        // Wait for data (or the writer hanging up) with a timeout, so that a
        // close is noticed even if no writer ever shows up. For a FIFO opened
        // non-blocking, the kernel reports no hang-up before a first writer,
        // so this does not mistake "no writer yet" for end of file. Once
        // finishing, only what the FIFO holds now is read.
        let timeout = if finishing {
            PollTimeout::ZERO
        } else {
            PollTimeout::from(STDIN_POLL)
        };
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) if finishing => {
                shared.lock().eof = true;
                wake(shared);
                return;
            }
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                log::warn!("polling the container's stdin failed, closing it: {e}");
                shared.lock().eof = true;
                wake(shared);
                return;
            }
        }
        let read = file.read(&mut chunk);
        let mut state = shared.lock();
        match read {
            Ok(0) => state.eof = true,
            Ok(n) => state.buf.extend(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("reading the container's stdin failed, closing it: {e}");
                state.eof = true;
            }
        }
        let done = state.eof;
        for w in state.wakers.drain(..) {
            w.wake();
        }
        drop(state);
        if done {
            return;
        }
    }
}

fn wake(shared: &Shared) {
    for w in shared.lock().wakers.drain(..) {
        w.wake();
    }
}

impl AsyncRead for GuestStdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        if !state.buf.is_empty() {
            let n = out.remaining().min(state.buf.len());
            let (a, b) = state.buf.as_slices();
            let from_a = n.min(a.len());
            out.put_slice(&a[..from_a]);
            out.put_slice(&b[..n - from_a]);
            state.buf.drain(..n);
            self.shared.room.notify_all();
            return Poll::Ready(Ok(()));
        }
        if state.eof || state.closed {
            return Poll::Ready(Ok(()));
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl IsTerminal for GuestStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for GuestStdin {
    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    fn runtime() -> tokio::runtime::Runtime {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("no tokio runtime: {e}"),
        }
    }

    #[test]
    fn reads_a_file_to_the_end() {
        let path = std::env::temp_dir().join(format!("wasishim-stdin-{}", std::process::id()));
        if let Err(e) = std::fs::write(&path, b"hello stdin") {
            panic!("cannot write {}: {e}", path.display());
        }
        let file = match open_input(&path) {
            Ok(f) => f,
            Err(e) => panic!("{e:#}"),
        };
        let stdin = GuestStdin::new();
        if let Err(e) = stdin.spawn_reader(file, "test") {
            panic!("{e}");
        }
        let mut got = String::new();
        let mut reader = stdin.clone();
        let read = runtime().block_on(reader.read_to_string(&mut got));
        assert!(read.is_ok(), "{read:?}");
        assert_eq!(got, "hello stdin");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn close_ends_a_read_waiting_on_a_silent_fifo() {
        let path = std::env::temp_dir().join(format!("wasishim-stdin-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        if let Err(e) = nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU) {
            panic!("mkfifo: {e}");
        }
        // No writer ever opens the FIFO: reads must wait, not see end of file.
        let file = match open_input(&path) {
            Ok(f) => f,
            Err(e) => panic!("{e:#}"),
        };
        let stdin = GuestStdin::new();
        if let Err(e) = stdin.spawn_reader(file, "test") {
            panic!("{e}");
        }
        let closer = stdin.clone();
        let rt = runtime();
        let got = rt.block_on(async move {
            let mut reader = stdin.clone();
            let mut buf = Vec::new();
            let early =
                tokio::time::timeout(Duration::from_millis(300), reader.read_to_end(&mut buf))
                    .await;
            assert!(early.is_err(), "read ended without a writer: {early:?}");
            closer.close();
            tokio::time::timeout(Duration::from_secs(1), reader.read_to_end(&mut buf)).await
        });
        assert!(matches!(got, Ok(Ok(0))), "{got:?}");
        let _ = std::fs::remove_file(&path);
    }

    /// containerd's CloseIO comes right after the client's last write: the
    /// guest still reads all of it, then end of file, even with a writer left.
    #[test]
    fn finish_keeps_what_was_written() {
        let path = std::env::temp_dir().join(format!("wasishim-stdin-fin-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        if let Err(e) = nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU) {
            panic!("mkfifo: {e}");
        }
        let file = match open_input(&path) {
            Ok(f) => f,
            Err(e) => panic!("{e:#}"),
        };
        let stdin = GuestStdin::new();
        if let Err(e) = stdin.spawn_reader(file, "test") {
            panic!("{e}");
        }
        let mut writer = match OpenOptions::new().write(true).open(&path) {
            Ok(w) => w,
            Err(e) => panic!("opening the FIFO to write: {e}"),
        };
        if let Err(e) = writer.write_all(b"typed before CloseIO") {
            panic!("writing the FIFO: {e}");
        }
        // Let the reader buffer it, as it does while the guest is busy.
        std::thread::sleep(Duration::from_millis(50));
        stdin.finish();
        let got = runtime().block_on(async move {
            let mut reader = stdin.clone();
            let mut buf = String::new();
            tokio::time::timeout(Duration::from_secs(2), reader.read_to_string(&mut buf))
                .await
                .map(|r| r.map(|_| buf))
        });
        assert!(
            matches!(&got, Ok(Ok(text)) if text == "typed before CloseIO"),
            "{got:?}"
        );
        drop(writer);
        let _ = std::fs::remove_file(&path);
    }
}
