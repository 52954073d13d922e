//! `wasishim-bench-http`: the native baseline of the HTTP case of
//! `wasishim-bench` (case 7). An HTTP/1.1 keep-alive server on hyper and
//! tokio, the stack the shim serves `wasi:http` components with, answering
//! `GET /` with the body of the `http` fixture's `/` route, framed as the
//! fixture's (wstd's) response is: chunked, one chunk, no Content-Length.
//!
//! ```text
//! wasishim-bench-http ADDRESS [THREADS]
//! ```
//!
//! THREADS 1 (the default) runs everything on one current-thread tokio
//! runtime, as the shim runs all requests of one container on the guest's
//! one thread; more runs a multi-thread runtime with that many workers.
//! Prints `listening on http://ADDRESS` once it accepts connections and
//! serves until it is killed.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{bail, Context, Result};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the `http` fixture (test/fixtures/rust/http) answers on `/`.
const HELLO: &str = "hello from wasm http\n";

fn main() {
    if let Err(e) = run() {
        eprintln!("wasishim-bench-http: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(address) = args.next() else {
        bail!("usage: wasishim-bench-http ADDRESS [THREADS]");
    };
    let address: SocketAddr = address
        .parse()
        .with_context(|| format!("{address:?} is not IP:PORT"))?;
    let threads: usize = match args.next() {
        Some(t) => t
            .parse()
            .ok()
            .filter(|&t| t > 0)
            .with_context(|| format!("THREADS {t:?} is not a positive number"))?,
        None => 1,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_io()
            .enable_time()
            .build()?
    };
    runtime.block_on(serve(address, threads))
}

async fn serve(address: SocketAddr, threads: usize) -> Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address}"))?;
    let shown = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{shown} ({threads} thread(s))")?;
        out.flush()?;
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("wasishim-bench-http: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // As the shim does (crates/engine/src/http.rs).
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(respond);
            let served = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                eprintln!("wasishim-bench-http: connection: {e}");
            }
        });
    }
}

async fn respond(request: Request<Incoming>) -> Result<Response<OneChunk>, Infallible> {
    let (status, body) = if request.uri().path() == "/" {
        (StatusCode::OK, HELLO)
    } else {
        (StatusCode::NOT_FOUND, "not found\n")
    };
    let mut response = Response::new(OneChunk(Some(Bytes::from_static(body.as_bytes()))));
    *response.status_mut() = status;
    Ok(response)
}

/// A body of one data frame whose size is not announced, so hyper sends it
/// chunked, as it does the guest's streamed body.
struct OneChunk(Option<Bytes>);

impl Body for OneChunk {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|data| Ok(Frame::data(data))))
    }
}
