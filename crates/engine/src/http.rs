//! Serving a `wasi:http/incoming-handler` component: an HTTP/1.1 server on
//! the guest's thread, one fresh instance per request.
//!
//! A component that exports `wasi:http/incoming-handler@0.2.x` and no
//! `wasi:cli/run` (or whose entrypoint names `#wasi:http/incoming-handler`)
//! is linked once against WASI 0.2 and `wasi:http` ([`link`]). When started,
//! the guest's thread, already in the container's network namespace, listens
//! on `WASISHIM_HTTP_ADDRESS` and serves connections on its single-threaded
//! runtime ([`serve`]): each connection is a task, each request gets its own
//! store, WASI context (the container's args, env and preopens, stdout and
//! stderr) and instance, so requests run concurrently, interleaved at every
//! await and every epoch tick (10 ms), but on one CPU at a time.
//!
//! What the container's output shows: one access line per request on stdout
//! (`GET /path 200 3 ms`, the time until the response headers were ready;
//! written off the request path, dropped and counted when nobody reads, off
//! with `WASISHIM_HTTP_ACCESS_LOG=off`: see access_log.rs), and on stderr a
//! line per failed request (trap, guest error), which is also logged. A
//! failed request gets a 500 and the server goes on.
//!
//! Limits: the container's memory limit applies to each instance (each
//! request) separately, not to their sum. Request bodies are capped by
//! `WASISHIM_HTTP_MAX_BODY_BYTES`: a larger `Content-Length` gets 413 without
//! running the guest; a chunked body that grows past it fails the guest's
//! read (`HTTP-request-body-size`) and the request gets 413, unless the guest
//! had already sent its response headers.
//!
//! Ending: SIGTERM or SIGINT stops accepting connections, lets requests in
//! flight finish (idle keep-alive connections are closed), and exits 0;
//! SIGKILL (also after a SIGTERM) and other terminating signals end it at
//! once with 128+signal.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use wasmtime::component::{self, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::access_log::{self, AccessLog, HTTP_ACCESS_LOG_ENV};
use crate::limits::GuestLimiter;
use crate::output::GuestOutput;
use crate::run::{ended_by, yield_on_epoch, Control, Ended};
use crate::wasi::WasiTemplate;

/// Container environment variable: the address an HTTP component listens
/// on, `IP:PORT` (default [`DEFAULT_HTTP_ADDRESS`]). It is bound inside the
/// container's network namespace.
pub const HTTP_ADDRESS_ENV: &str = "WASISHIM_HTTP_ADDRESS";
/// Where an HTTP component listens unless [`HTTP_ADDRESS_ENV`] says otherwise.
pub const DEFAULT_HTTP_ADDRESS: &str = "0.0.0.0:8080";
/// Container environment variable: `off` refuses the outgoing HTTP requests
/// of an HTTP component (`wasi:http/outgoing-handler` then fails with the
/// error code `HTTP-request-denied`); `on`, the default, allows them.
pub const HTTP_OUTGOING_ENV: &str = "WASISHIM_HTTP_OUTGOING";
/// Container environment variable: the largest request body an HTTP
/// component is given, in bytes (default [`DEFAULT_HTTP_MAX_BODY_BYTES`]);
/// larger requests get 413.
pub const HTTP_MAX_BODY_BYTES_ENV: &str = "WASISHIM_HTTP_MAX_BODY_BYTES";
/// The request body limit unless [`HTTP_MAX_BODY_BYTES_ENV`] says otherwise: 10 MiB.
pub const DEFAULT_HTTP_MAX_BODY_BYTES: u64 = 10 << 20;

/// How long the accept loop pauses after a failed accept (e.g. out of file
/// descriptors), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// An HTTP server's settings, from the container's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpSettings {
    pub(crate) address: SocketAddr,
    pub(crate) outgoing: bool,
    pub(crate) max_body_bytes: u64,
    pub(crate) access_log: bool,
}

impl HttpSettings {
    /// Reads `WASISHIM_HTTP_ADDRESS`, `WASISHIM_HTTP_OUTGOING` and
    /// `WASISHIM_HTTP_MAX_BODY_BYTES` from the container's `env` (the last
    /// value of each wins, as in a process environment).
    ///
    /// # Errors
    ///
    /// Fails, naming the variable and what it accepts, if one is set to
    /// something unusable.
    pub(crate) fn from_env(env: &[(String, String)]) -> Result<HttpSettings> {
        let get = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
        };
        let address = get(HTTP_ADDRESS_ENV).unwrap_or(DEFAULT_HTTP_ADDRESS);
        let Ok(address) = address.parse::<SocketAddr>() else {
            bail!("{HTTP_ADDRESS_ENV}={address} is not an address to listen on: give IP:PORT, e.g. {DEFAULT_HTTP_ADDRESS} or 127.0.0.1:3000");
        };
        let outgoing = match get(HTTP_OUTGOING_ENV) {
            None => true,
            Some(v) if v.eq_ignore_ascii_case("on") => true,
            Some(v) if v.eq_ignore_ascii_case("off") => false,
            Some(v) => bail!("{HTTP_OUTGOING_ENV}={v} is neither on nor off: set it to off to refuse the component's outgoing HTTP requests, or leave it unset"),
        };
        let max_body_bytes = match get(HTTP_MAX_BODY_BYTES_ENV) {
            None => DEFAULT_HTTP_MAX_BODY_BYTES,
            Some(v) => match v.parse::<u64>() {
                Ok(n) => n,
                Err(_) => bail!("{HTTP_MAX_BODY_BYTES_ENV}={v} is not a number of bytes: give e.g. 1048576 for 1 MiB, or leave it unset for 10 MiB"),
            },
        };
        let access_log = access_log::enabled(get(HTTP_ACCESS_LOG_ENV))?;
        Ok(HttpSettings {
            address,
            outgoing,
            max_body_bytes,
            access_log,
        })
    }
}

/// Links `component` against WASI 0.2 and `wasi:http` and checks that it
/// exports `wasi:http/incoming-handler`. Done once per component and kept
/// in the code cache: each request only instantiates.
///
/// # Errors
///
/// Fails, naming the entrypoint `shown`, if an import is not provided or
/// the handler export does not have the expected type.
pub(crate) fn link(
    engine: &Engine,
    component: &component::Component,
    shown: &str,
) -> Result<ProxyPre<HttpState>> {
    let mut linker = component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot set up WASI 0.2: {e:#}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot set up wasi:http: {e:#}"))?;
    let pre = linker.instantiate_pre(component).map_err(|e| {
        crate::engine::link_error(shown, "WASI 0.2 (wasi:cli/command and wasi:http/proxy)", e)
    })?;
    ProxyPre::new(pre).map_err(|e| {
        anyhow::anyhow!("entrypoint {shown} cannot be served as wasi:http/incoming-handler: {e:#}")
    })
}

/// Store data of one request's instance.
pub(crate) struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: RequestLimiter,
    outgoing: bool,
    deny: DenyOutgoing,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let hooks: &mut dyn WasiHttpHooks = if self.outgoing {
            wasmtime_wasi_http::default_hooks()
        } else {
            &mut self.deny
        };
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks,
        }
    }
}

/// Hooks that refuse every outgoing request (`WASISHIM_HTTP_OUTGOING=off`).
struct DenyOutgoing;

type SendResult = wasmtime_wasi_http::Result<(
    Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for DenyOutgoing {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        log::info!(
            "refused the guest's outgoing HTTP request to {} ({HTTP_OUTGOING_ENV}=off)",
            request.uri()
        );
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// The memory limit of one request's instance, which also keeps the
/// container's memory figure (the sum over live requests) up to date.
struct RequestLimiter {
    inner: GuestLimiter,
    /// This store's linear memory, kept by `inner`.
    used: Arc<AtomicU64>,
    /// What of `used` was last added to `total`.
    counted: u64,
    /// The container's memory figure.
    total: Arc<AtomicU64>,
    /// Set when the limit refused this instance memory.
    limit_hit: Arc<AtomicBool>,
}

impl RequestLimiter {
    fn new(limit: Option<u64>, total: Arc<AtomicU64>) -> RequestLimiter {
        let used = Arc::new(AtomicU64::new(0));
        let limit_hit = Arc::new(AtomicBool::new(false));
        RequestLimiter {
            inner: GuestLimiter::new(limit, used.clone(), limit_hit.clone()),
            used,
            counted: 0,
            total,
            limit_hit,
        }
    }

    fn count(&mut self) {
        let now = self.used.load(Ordering::Relaxed);
        if now >= self.counted {
            self.total.fetch_add(now - self.counted, Ordering::Relaxed);
        } else {
            self.total.fetch_sub(self.counted - now, Ordering::Relaxed);
        }
        self.counted = now;
    }
}

impl Drop for RequestLimiter {
    fn drop(&mut self) {
        self.total.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

impl ResourceLimiter for RequestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let granted = self.inner.memory_growing(current, desired, maximum);
        self.count();
        granted
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let result = self.inner.memory_grow_failed(error);
        self.count();
        result
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// A prepared HTTP component with what it needs to serve: made by
/// `WasmEngine::prepare`, served by [`serve`].
pub(crate) struct HttpGuest {
    pre: ProxyPre<HttpState>,
    wasi: WasiTemplate,
    settings: HttpSettings,
    stdout: Option<GuestOutput>,
    stderr: Option<GuestOutput>,
}

impl HttpGuest {
    pub(crate) fn new(
        pre: ProxyPre<HttpState>,
        wasi: WasiTemplate,
        settings: HttpSettings,
        stdout: Option<GuestOutput>,
        stderr: Option<GuestOutput>,
    ) -> HttpGuest {
        HttpGuest {
            pre,
            wasi,
            settings,
            stdout,
            stderr,
        }
    }
}

/// Everything a request needs, shared by the connection tasks.
struct Server {
    engine: Engine,
    guest: HttpGuest,
    memory_limit: Option<u64>,
    memory: Arc<AtomicU64>,
    log: AccessLog,
}

/// Listens and serves until a signal ends it; see the module documentation.
/// Runs on the guest's thread and runtime (its network namespace).
pub(crate) async fn serve(
    engine: &Engine,
    guest: HttpGuest,
    memory_limit: Option<u64>,
    control: &Control,
) -> Ended {
    let address = guest.settings.address;
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            return Ended::Failed(format!(
                "cannot listen for HTTP on {address}: {e}: set {HTTP_ADDRESS_ENV} to a free IP:PORT of the container's network"
            ))
        }
    };
    let shown = listener.local_addr().unwrap_or(address);
    log::info!("serving wasi:http on {shown}");
    let log = AccessLog::start(guest.stdout.clone(), guest.settings.access_log);
    log.notice(&format!("listening on http://{shown}"));
    let server = Arc::new(Server {
        engine: engine.clone(),
        guest,
        memory_limit,
        memory: control.memory.clone(),
        log,
    });

    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let signal = loop {
        tokio::select! {
            biased;
            signal = control.killed() => break signal,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(connection(server.clone(), stream, stopped.clone()));
                }
                Err(e) => {
                    log::warn!("HTTP server on {shown}: cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    };
    if !graceful(signal) {
        return Ended::Killed(signal);
    }
    drop(listener);
    log::info!(
        "HTTP server on {shown}: signal {signal}, finishing {} connection(s)",
        connections.len()
    );
    let _ = stop.send(true);
    let drained = async {
        while connections.join_next().await.is_some() {}
        server.log.flush().await;
    };
    tokio::select! {
        biased;
        signal = control.killed_by(|s| !graceful(s)) => Ended::Killed(signal),
        () = drained => Ended::Returned(0),
    }
}

/// Whether `signal` stops an HTTP server gracefully: SIGTERM and SIGINT.
fn graceful(signal: i32) -> bool {
    signal == nix::sys::signal::Signal::SIGTERM as i32
        || signal == nix::sys::signal::Signal::SIGINT as i32
}

/// Serves one connection (HTTP/1.1, keep-alive) until the client closes it,
/// or, once `stop` turns true, until its request in flight is answered.
async fn connection(server: Arc<Server>, stream: TcpStream, mut stop: watch::Receiver<bool>) {
    // A response goes out as the guest produces it, so its end can follow
    // its headers in a second small write; with Nagle's algorithm that write
    // waits for the client's delayed ACK (40 ms on Linux): the slow tail of
    // `make bench` case 7 before this was set.
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("HTTP connection: cannot set TCP_NODELAY: {e}");
    }
    let service = hyper::service::service_fn(move |request| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(server.handle(request).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                log::debug!("HTTP connection ended: {e}");
            }
            return;
        }
        _ = stop.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        log::debug!("HTTP connection ended while stopping: {e}");
    }
}

/// A request body that fails once more than `remaining` bytes arrived.
struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    received: u64,
    exceeded: Arc<AtomicBool>,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.exceeded.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                this.received = this.received.saturating_add(len);
                if len > this.remaining {
                    this.exceeded.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                        Some(this.received),
                    ))));
                }
                this.remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response made by the server itself (not the guest), with a plain text body.
fn plain(status: StatusCode, text: String) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(text))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The `Content-Length` of a request, if it has a valid one.
fn content_length(request: &Request<Incoming>) -> Option<u64> {
    request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Server {
    /// Answers one request and writes its access line.
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let started = Instant::now();
        let what = format!("{} {}", request.method(), request.uri().path());
        let response = self.respond(request, &what).await;
        self.log.line(|| {
            format!(
                "{what} {} {} ms",
                response.status().as_u16(),
                started.elapsed().as_millis()
            )
        });
        response
    }

    async fn respond(
        self: &Arc<Self>,
        request: Request<Incoming>,
        what: &str,
    ) -> Response<HyperOutgoingBody> {
        let max = self.guest.settings.max_body_bytes;
        if let Some(length) = content_length(&request).filter(|&n| n > max) {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {length} bytes is larger than the limit of {max} bytes ({HTTP_MAX_BODY_BYTES_ENV})\n"),
            );
        }
        let exceeded = Arc::new(AtomicBool::new(false));
        let too_large = || {
            plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than the limit of {max} bytes ({HTTP_MAX_BODY_BYTES_ENV})\n"),
            )
        };
        let request = request.map(|inner| LimitedBody {
            inner,
            remaining: max,
            received: 0,
            exceeded: exceeded.clone(),
        });

        let mut store = match self.store() {
            Ok(store) => store,
            Err(e) => {
                return self.failed(
                    what,
                    &format!("cannot set up the request's WASI context: {e:#}"),
                )
            }
        };
        let (sender, receiver) = oneshot::channel();
        let incoming = match store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
        {
            Ok(incoming) => incoming,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("bad request: {e:#}\n")),
        };
        let out = match store.data_mut().http().new_response_outparam(sender) {
            Ok(out) => out,
            Err(e) => return self.failed(what, &format!("cannot pass the request on: {e:#}")),
        };
        let pre = self.guest.pre.clone();
        let server = self.clone();
        let request_name = what.to_string();
        // The guest runs in its own task: it may go on writing the response
        // body after the headers were sent.
        let task = tokio::spawn(async move {
            let result = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, out)
                    .await
            }
            .await;
            let oom = store.data().limiter.limit_hit.load(Ordering::Relaxed);
            drop(store);
            let message = match result {
                Ok(()) => return Ok(()),
                Err(e) => match ended_by(e) {
                    Ended::Failed(message) => message,
                    Ended::Returned(code) => format!("the handler exited with code {code}"),
                    Ended::Killed(signal) => format!("the handler was killed by signal {signal}"),
                },
            };
            let message = if oom {
                format!(
                    "out of memory: the request's instance failed after its memory limit of {} bytes refused it more\n{message}",
                    server.memory_limit.unwrap_or_default()
                )
            } else {
                message
            };
            server.report(&request_name, &message);
            Err(message)
        });

        match receiver.await {
            Ok(Ok(response)) if !exceeded.load(Ordering::Relaxed) => response,
            Ok(Ok(_)) => too_large(),
            Ok(Err(_)) if exceeded.load(Ordering::Relaxed) => too_large(),
            Ok(Err(code)) => self.failed(
                what,
                &format!("the handler answered with error {}", describe(&code)),
            ),
            // The guest dropped its response without setting it: it failed
            // (already reported by its task) or returned without answering.
            Err(_) => {
                let failed = match task.await {
                    Ok(Ok(())) => {
                        Some("the handler returned without sending a response".to_string())
                    }
                    Ok(Err(_)) => None,
                    Err(e) => Some(format!("the handler's task failed: {e}")),
                };
                if exceeded.load(Ordering::Relaxed) {
                    return too_large();
                }
                match failed {
                    Some(message) => self.failed(what, &message),
                    None => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the request's handler failed (see the container's stderr)\n".to_string(),
                    ),
                }
            }
        }
    }

    /// A fresh store for one request: its own WASI context (the container's
    /// args, env, preopens; stdout and stderr), `wasi:http` context and
    /// memory limit.
    fn store(&self) -> Result<Store<HttpState>> {
        let (stdout, stderr) = (self.guest.stdout.clone(), self.guest.stderr.clone());
        let wasi = self.guest.wasi.builder(None, stdout, stderr)?.build();
        let state = HttpState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: RequestLimiter::new(self.memory_limit, self.memory.clone()),
            outgoing: self.guest.settings.outgoing,
            deny: DenyOutgoing,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        yield_on_epoch(&mut store);
        Ok(store)
    }

    /// Reports a failed request and makes its 500.
    fn failed(&self, what: &str, message: &str) -> Response<HyperOutgoingBody> {
        self.report(what, message);
        plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request's handler failed (see the container's stderr)\n".to_string(),
        )
    }

    /// Logs a failed request and writes it on the container's stderr.
    fn report(&self, what: &str, message: &str) {
        log::error!("wasi:http request {what} failed: {message}");
        if let Some(stderr) = self.guest.stderr.as_ref() {
            // Best effort, one write per line, never waiting: the request
            // must not hang on a stderr nobody reads (it is logged anyway).
            stderr.try_write_now(format!("{what} failed: {message}\n").as_bytes());
        }
    }
}

/// An error code a guest answered with, as text.
fn describe(code: &ErrorCode) -> String {
    format!("{code:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_come_from_the_environment() {
        let Ok(s) = HttpSettings::from_env(&env(&[("PATH", "/")])) else {
            panic!("defaults refused")
        };
        assert_eq!(s.address, SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert!(s.outgoing);
        assert_eq!(s.max_body_bytes, 10 << 20);

        let Ok(s) = HttpSettings::from_env(&env(&[
            (HTTP_ADDRESS_ENV, "127.0.0.1:1"),
            (HTTP_ADDRESS_ENV, "127.0.0.1:3000"),
            (HTTP_OUTGOING_ENV, "OFF"),
            (HTTP_MAX_BODY_BYTES_ENV, "1024"),
        ])) else {
            panic!("valid settings refused")
        };
        assert_eq!(s.address, SocketAddr::from(([127, 0, 0, 1], 3000)));
        assert!(!s.outgoing);
        assert_eq!(s.max_body_bytes, 1024);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let error = |pairs: &[(&str, &str)]| {
            HttpSettings::from_env(&env(pairs))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            error(&[(HTTP_ADDRESS_ENV, "localhost")]),
            "WASISHIM_HTTP_ADDRESS=localhost is not an address to listen on: give IP:PORT, e.g. 0.0.0.0:8080 or 127.0.0.1:3000"
        );
        assert!(error(&[(HTTP_OUTGOING_ENV, "maybe")])
            .starts_with("WASISHIM_HTTP_OUTGOING=maybe is neither on nor off"));
        assert!(error(&[(HTTP_MAX_BODY_BYTES_ENV, "10M")])
            .starts_with("WASISHIM_HTTP_MAX_BODY_BYTES=10M is not a number of bytes"));
    }

    #[test]
    fn only_sigterm_and_sigint_are_graceful() {
        assert!(graceful(15));
        assert!(graceful(2));
        assert!(!graceful(9));
        assert!(!graceful(1));
    }
}
