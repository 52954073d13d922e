//! The guest's stdout and stderr: writes that wait for a slow reader
//! without blocking a thread.
//!
//! A FIFO (or socket) is written non-blocking. What the pipe does not take
//! waits in a small buffer, and the writer (the guest's WASI call, the HTTP
//! access log) waits for the pipe to have room as a future on the guest's
//! runtime: a guest whose output nobody reads stays blocked in its write, as
//! a process would, but a kill drops that future at once. Bytes are never
//! dropped and keep their order: a new write waits until the buffer is
//! empty. A regular file (a log file, /dev/null) is written in place: it
//! never waits for a reader.
use std::fs::File;
use std::future::poll_fn;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWrite, Interest};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Bytes a guest may hand over at once (the permit of WASI `check-write`);
/// preview 1 writes in pieces of 4 KiB anyway.
const WRITE_PERMIT: usize = 16 * 1024;

/// One of the guest's output streams (cheap to clone; clones share the
/// buffer, so writes through any of them keep their order).
#[derive(Clone)]
pub(crate) struct GuestOutput {
    shared: Arc<Shared>,
}

struct Shared {
    file: File,
    /// A FIFO or socket: written non-blocking, waited for on the runtime.
    pipe: bool,
    /// `file` registered with the guest's runtime, on the first wait.
    registered: OnceLock<AsyncFd<File>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Written by the guest, not yet taken by the pipe.
    pending: Vec<u8>,
    /// A write failed: reported to every later write.
    failed: Option<io::Error>,
}

impl GuestOutput {
    /// Wraps an opened stdout/stderr; a FIFO or socket is switched to
    /// non-blocking writes, anything else to blocking ones.
    ///
    /// # Errors
    ///
    /// Fails if the descriptor's type or flags cannot be read or set.
    pub(crate) fn new(file: File) -> io::Result<GuestOutput> {
        let kind = file.metadata()?.file_type();
        let pipe = kind.is_fifo() || kind.is_socket();
        set_nonblocking(&file, pipe)?;
        Ok(GuestOutput {
            shared: Arc::new(Shared {
                file,
                pipe,
                registered: OnceLock::new(),
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Whether this is a FIFO or socket (whose unread bytes `wait_until_read` watches).
    pub(crate) fn is_pipe(&self) -> bool {
        self.shared.pipe
    }

    /// A second descriptor of the same stream, for writes of the host that
    /// must not wait (a FIFO's is non-blocking: a write to a full one fails).
    ///
    /// # Errors
    ///
    /// Fails if the process is out of descriptors.
    pub(crate) fn host_handle(&self) -> io::Result<File> {
        self.shared.file.try_clone()
    }

    /// Writes all of `bytes`, after whatever was written before, waiting
    /// (as a future) while the reader is slow.
    ///
    /// # Errors
    ///
    /// Fails if the stream failed (its reader end is gone for good).
    pub(crate) async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        poll_fn(|cx| self.shared.poll_drain(cx)).await?;
        self.shared.accept(bytes)?;
        poll_fn(|cx| self.shared.poll_drain(cx)).await
    }

    /// Writes `bytes` only if that needs no wait: nothing else is waiting
    /// and the pipe takes them whole. For the host's own messages (a failed
    /// request), which must never hold anything up.
    pub(crate) fn try_write_now(&self, bytes: &[u8]) -> bool {
        let shared = &self.shared;
        if !shared.pipe {
            return (&shared.file).write_all(bytes).is_ok();
        }
        let state = shared.lock();
        if !state.pending.is_empty() || state.failed.is_some() {
            return false;
        }
        // Up to PIPE_BUF (4 KiB) a pipe takes all or nothing.
        matches!((&shared.file).write(bytes), Ok(n) if n == bytes.len())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Bytes and an error: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `bytes`: written now as far as the pipe takes them, the rest
    /// kept for [`Self::poll_drain`]. A regular file is written in place.
    fn accept(&self, bytes: &[u8]) -> io::Result<()> {
        if !self.pipe {
            return (&self.file).write_all(bytes);
        }
        let mut state = self.lock();
        if let Some(e) = &state.failed {
            return Err(copy_error(e));
        }
        let mut written = 0;
        if state.pending.is_empty() {
            match (&self.file).write(bytes) {
                Ok(n) => written = n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    state.failed = Some(copy_error(&e));
                    return Err(e);
                }
            }
        }
        state.pending.extend_from_slice(&bytes[written..]);
        Ok(())
    }

    /// Ready once every accepted byte is in the pipe (or the stream failed).
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let state = self.lock();
                if let Some(e) = &state.failed {
                    return Poll::Ready(Err(copy_error(e)));
                }
                if state.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            let fd = match self.async_fd() {
                Ok(fd) => fd,
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            };
            let mut guard = match ready!(fd.poll_write_ready(cx)) {
                Ok(guard) => guard,
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            };
            let written = guard.try_io(|fd| {
                let mut state = self.lock();
                let mut file: &File = fd.get_ref();
                let n = file.write(&state.pending)?;
                state.pending.drain(..n);
                Ok(())
            });
            match written {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(self.fail(e))),
            }
        }
    }

    /// Records a failure for every later write and returns it.
    fn fail(&self, e: io::Error) -> io::Error {
        let mut state = self.lock();
        state.pending.clear();
        state.failed = Some(copy_error(&e));
        e
    }

    /// The descriptor registered with the current runtime's reactor; done
    /// on the first wait, as the stream is made before the runtime.
    fn async_fd(&self) -> io::Result<&AsyncFd<File>> {
        if let Some(fd) = self.registered.get() {
            return Ok(fd);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "the container's output cannot be waited for outside the guest's runtime",
            ));
        }
        let dup = self.file.try_clone()?;
        // SAFETY: `dup` is an open descriptor owned by the AsyncFd, which
        // alone can close it, so it stays the same file until then.
        let fd = unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) }?;
        let _ = self.registered.set(fd);
        self.registered
            .get()
            .ok_or_else(|| io::Error::other("the container's output was not registered"))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Best effort for bytes a guest wrote without waiting for them.
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if self.pipe && !state.pending.is_empty() {
            let _ = (&self.file).write(&state.pending);
        }
    }
}

fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

fn set_nonblocking(file: &File, nonblocking: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)?);
    let flags = if nonblocking {
        flags | OFlag::O_NONBLOCK
    } else {
        flags.difference(OFlag::O_NONBLOCK)
    };
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// As WASI reports it: a reader gone for good is a closed stream.
fn stream_error(e: io::Error) -> StreamError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        StreamError::Closed
    } else {
        StreamError::LastOperationFailed(e.into())
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Stream(self.shared.clone()))
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(Stream(self.shared.clone()))
    }
}

/// A WASI handle on a [`GuestOutput`].
struct Stream(Arc<Shared>);

#[async_trait::async_trait]
impl Pollable for Stream {
    async fn ready(&mut self) {
        // A failure is reported by the next check-write.
        let _ = poll_fn(|cx| self.0.poll_drain(cx)).await;
    }
}

impl OutputStream for Stream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.accept(&bytes).map_err(stream_error)
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Bytes go to the pipe as it takes them; `ready` waits for the rest.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let state = self.0.lock();
        match &state.failed {
            Some(e) => Err(stream_error(copy_error(e))),
            None if state.pending.is_empty() => Ok(WRITE_PERMIT),
            None => Ok(0),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.0.poll_drain(cx))?;
        let n = buf.len().min(WRITE_PERMIT);
        self.0.accept(&buf[..n])?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_drain(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    fn runtime() -> tokio::runtime::Runtime {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("no tokio runtime: {e}"),
        }
    }

    fn fifo(name: &str) -> (std::path::PathBuf, File, File) {
        let path = std::env::temp_dir().join(format!("wasishim-out-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        if let Err(e) = nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU) {
            panic!("mkfifo: {e}");
        }
        let reader = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => panic!("open reader: {e}"),
        };
        let writer = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => panic!("open writer: {e}"),
        };
        (path, reader, writer)
    }

    #[test]
    fn a_full_pipe_makes_the_writer_wait_and_loses_nothing() {
        let (path, mut reader, writer) = fifo("full");
        let out = match GuestOutput::new(writer) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        };
        assert!(out.is_pipe());
        let rt = runtime();
        // More than a pipe holds (64 KiB): the write must wait, not fail.
        let chunk = vec![b'x'; 48 * 1024];
        let written = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(200), async {
                out.write_all(&chunk).await?;
                out.write_all(&chunk).await
            })
            .await
        });
        assert!(written.is_err(), "a write to a full pipe did not wait");
        // The host's own message does not wait either: it is refused.
        assert!(!out.try_write_now(b"note\n"));
        // Once read, the rest goes through, in order.
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while got.len() < 96 * 1024 && std::time::Instant::now() < deadline {
                match reader.read(&mut buf) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
            got
        });
        let rest = rt.block_on(async { out.write_all(b"").await });
        assert!(rest.is_ok(), "{rest:?}");
        let got = match reading.join() {
            Ok(g) => g,
            Err(_) => panic!("reader panicked"),
        };
        // The timed-out second write had its bytes accepted before it waited.
        assert_eq!(got.len(), 96 * 1024);
        assert!(got.iter().all(|&b| b == b'x'));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_regular_file_is_written_in_place() {
        let path = std::env::temp_dir().join(format!("wasishim-out-file-{}", std::process::id()));
        let file = match std::fs::File::create(&path) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        let out = match GuestOutput::new(file) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        };
        assert!(!out.is_pipe());
        assert!(runtime().block_on(out.write_all(b"one\n")).is_ok());
        assert!(out.try_write_now(b"two\n"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            "one\ntwo\n"
        );
        let _ = std::fs::remove_file(&path);
    }
}
