//! Serving a `wasi:http/incoming-handler` component: an HTTP/1.1 server on
//! the guest's thread, one fresh instance per request.
//!
//! A component that exports `wasi:http/incoming-handler@0.2.x` and no
//! `wasi:cli/run` (or whose entrypoint names `#wasi:http/incoming-handler`)
//! is linked once against WASI 0.2 and `wasi:http` (link.rs). When started,
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
//! Limits: the container's memory limit applies to the sum over its
//! requests in flight (limits.rs); header and idle timeouts, caps on
//! connections and requests in flight, and the optional request deadline
//! (`WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS`: the guest's instance is
//! interrupted and the client gets 504) are in http_limits.rs. Request bodies are capped by
//! `WASISHIM_HTTP_MAX_BODY_BYTES` (http_settings.rs, http_body.rs): a larger
//! `Content-Length` gets 413 without running the guest; a chunked body that
//! grows past it fails the guest's read (`HTTP-request-body-size`) and the
//! request gets 413, unless the guest had already sent its response headers.
//!
//! Ending: SIGTERM or SIGINT stops accepting connections, lets requests in
//! flight finish (idle keep-alive connections are closed), and exits 0;
//! SIGKILL (also after a SIGTERM) and other terminating signals end it at
//! once with 128+signal.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::access_log::AccessLog;
use crate::cloud::{Cloud, CloudHost};
use crate::control::{ended_by, yield_on_epoch, Control, Ended};
use crate::http_body::{content_length, plain, LimitedBody};
use crate::http_limits::{self, Activity, InFlight, HTTP_REQUEST_TIMEOUT_ENV};
use crate::http_settings::{HttpSettings, HTTP_ADDRESS_ENV, HTTP_MAX_BODY_BYTES_ENV};
use crate::http_state::{HttpState, Outgoing};
use crate::limits::{GuestLimiter, GuestLimits};
use crate::metrics::HttpMetrics;
use crate::output::GuestOutput;
use crate::wasi::WasiTemplate;

/// How long the accept loop pauses after a failed accept (e.g. out of file
/// descriptors), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What answers requests: picks the component for each one, with its host
/// state. A plain `wasi:http` component ([`Single`]) answers all of them; a
/// Spin application (spin/app.rs) routes them to its components.
pub(crate) trait Handlers: Send + Sync + 'static {
    /// The state of the host interfaces the components get beyond WASI and
    /// `wasi:http`, one per request.
    type Host: Send + 'static;

    /// The component that answers the request whose head is `parts`, from
    /// `client`; it may add headers to `parts` (Spin's `spin-*`). `Err`
    /// holds the answer when no component does (e.g. 404).
    fn pick(
        &self,
        parts: &mut hyper::http::request::Parts,
        client: SocketAddr,
    ) -> std::result::Result<Picked<Self::Host>, Box<Response<HyperOutgoingBody>>>;
}

/// The component picked for one request, and what it is given.
pub(crate) struct Picked<T: Send + 'static> {
    pub(crate) pre: ProxyPre<HttpState<T>>,
    pub(crate) host: T,
    pub(crate) outgoing: Outgoing,
    /// Its name in error lines (the component's id), if there are several.
    pub(crate) name: Option<String>,
}

/// A single `wasi:http` component answering every request.
pub(crate) struct Single {
    pub(crate) pre: ProxyPre<HttpState<CloudHost>>,
    /// The container's `wasi:config` values and `wasi:keyvalue` store.
    pub(crate) cloud: Cloud,
    pub(crate) outgoing: Outgoing,
}

impl Handlers for Single {
    type Host = CloudHost;

    fn pick(
        &self,
        _parts: &mut hyper::http::request::Parts,
        _client: SocketAddr,
    ) -> std::result::Result<Picked<CloudHost>, Box<Response<HyperOutgoingBody>>> {
        Ok(Picked {
            pre: self.pre.clone(),
            host: self.cloud.host(),
            outgoing: self.outgoing.clone(),
            name: None,
        })
    }
}

/// A prepared HTTP server with what it needs to serve: made by
/// `WasmEngine::prepare`, served by [`serve`].
pub(crate) struct HttpGuest<H = Single> {
    handlers: H,
    wasi: WasiTemplate,
    settings: HttpSettings,
    stdout: Option<GuestOutput>,
    stderr: Option<GuestOutput>,
    /// Where requests are counted, if the host asked.
    pub(crate) metrics: Option<HttpMetrics>,
}

impl<H: Handlers> HttpGuest<H> {
    pub(crate) fn new(
        handlers: H,
        wasi: WasiTemplate,
        settings: HttpSettings,
        stdout: Option<GuestOutput>,
        stderr: Option<GuestOutput>,
    ) -> HttpGuest<H> {
        HttpGuest {
            handlers,
            wasi,
            settings,
            stdout,
            stderr,
            metrics: None,
        }
    }
}

impl HttpGuest<Single> {
    /// The container's `wasi:config` and `wasi:keyvalue` state.
    pub(crate) fn cloud(&self) -> &Cloud {
        &self.handlers.cloud
    }
}

impl<H> HttpGuest<H> {
    /// What serves its requests.
    pub(crate) fn handlers(&self) -> &H {
        &self.handlers
    }
}

/// Everything a request needs, shared by the connection tasks.
struct Server<H> {
    engine: Engine,
    guest: HttpGuest<H>,
    limits: GuestLimits,
    memory: Arc<AtomicU64>,
    log: AccessLog,
    in_flight: InFlight,
}

/// Listens and serves until a signal ends it; see the module documentation.
/// Runs on the guest's thread and runtime (its network namespace).
pub(crate) async fn serve<H: Handlers>(
    engine: &Engine,
    guest: HttpGuest<H>,
    limits: GuestLimits,
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
    if let Some(metrics) = &guest.metrics {
        metrics.listening();
    }
    let limits_of_clients = guest.settings.limits;
    let server = Arc::new(Server {
        engine: engine.clone(),
        guest,
        limits,
        memory: control.memory.clone(),
        log,
        in_flight: InFlight::new(limits_of_clients.max_requests),
    });

    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let signal = loop {
        tokio::select! {
            biased;
            signal = control.killed() => break signal,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) if connections.len() >= limits_of_clients.max_connections => {
                    http_limits::refuse_connection(&stream, limits_of_clients.max_connections);
                }
                Ok((stream, peer)) => {
                    let open = server.guest.metrics.as_ref().map(HttpMetrics::connection);
                    let served = connection(server.clone(), stream, peer, stopped.clone());
                    connections.spawn(async move {
                        served.await;
                        drop(open);
                    });
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
async fn connection<H: Handlers>(
    server: Arc<Server<H>>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    // A response goes out as the guest produces it, so its end can follow
    // its headers in a second small write; with Nagle's algorithm that write
    // waits for the client's delayed ACK (40 ms on Linux): the slow tail of
    // `make bench` case 7 before this was set.
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("HTTP connection: cannot set TCP_NODELAY: {e}");
    }
    let limits = server.guest.settings.limits;
    let activity = Activity::new();
    let busy = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let server = server.clone();
        let busy = busy.begin();
        async move {
            let response = server.handle(request, peer).await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    // hyper's timer also bounds the wait for a keep-alive connection's next
    // header; the idle timeout below closes one that sends nothing.
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    loop {
        let wait = match activity.idle_for() {
            Some(idle) if idle >= limits.idle_timeout => break,
            Some(idle) => limits.idle_timeout - idle,
            None => limits.idle_timeout,
        };
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    log::debug!("HTTP connection ended: {e}");
                }
                return;
            }
            _ = stop.wait_for(|stop| *stop) => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        log::debug!("HTTP connection ended while stopping: {e}");
    }
}

impl<H: Handlers> Server<H> {
    /// Answers one request from `client` and writes its access line.
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<HyperOutgoingBody> {
        let started = Instant::now();
        let what = format!("{} {}", request.method(), request.uri().path());
        let response = self.respond(request, client, &what).await;
        if let Some(metrics) = &self.guest.metrics {
            metrics.request(response.status().as_u16(), started.elapsed());
        }
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
        client: SocketAddr,
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

        let (mut parts, body) = request.into_parts();
        let picked = match self.guest.handlers.pick(&mut parts, client) {
            Ok(picked) => picked,
            Err(response) => return *response,
        };
        let request = Request::from_parts(parts, body);
        let Some(in_flight) = self.in_flight.enter() else {
            return http_limits::too_many_requests(self.in_flight.max());
        };
        let what = match &picked.name {
            Some(name) => format!("{what} ({name})"),
            None => what.to_string(),
        };
        let what = what.as_str();
        let pre = picked.pre;
        let mut store = match self.store(picked.outgoing, picked.host) {
            Ok(Some(store)) => store,
            Ok(None) => return http_limits::no_memory_for_request(self.limits.memory),
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
        let server = self.clone();
        let request_name = what.to_string();
        let timeout = self.guest.settings.limits.request_timeout;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let timed_out = Arc::new(AtomicBool::new(false));
        let late = timed_out.clone();
        // The guest runs in its own task: it may go on writing the response
        // body after the headers were sent.
        let task = tokio::spawn(async move {
            // Counted until the instance is gone, also while it writes the body.
            let _in_flight = in_flight;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, out)
                    .await
            };
            // The store yields at every epoch tick, so the deadline drops
            // the guest's future there, whether it computes or waits.
            let result = match deadline {
                None => run.await,
                Some(deadline) => match tokio::time::timeout_at(deadline, run).await {
                    Ok(result) => result,
                    Err(_) => {
                        late.store(true, Ordering::Relaxed);
                        Err(wasmtime::Error::msg("deadline"))
                    }
                },
            };
            let oom = store.data().limiter.limit_hit();
            drop(store);
            let message = match result {
                Ok(()) => return Ok(()),
                Err(_) if late.load(Ordering::Relaxed) => format!(
                    "the request took longer than {} s ({HTTP_REQUEST_TIMEOUT_ENV}): its instance was interrupted",
                    timeout.unwrap_or_default().as_secs()
                ),
                Err(e) => match ended_by(e) {
                    Ended::Failed(message) => message,
                    Ended::Returned(code) => format!("the handler exited with code {code}"),
                    Ended::Killed(signal) => format!("the handler was killed by signal {signal}"),
                },
            };
            let message = if oom {
                format!(
                    "out of memory: the request's instance failed after the container's memory limit of {} bytes, summed over its requests in flight, refused it more\n{message}",
                    server.limits.memory.unwrap_or_default()
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
                if timed_out.load(Ordering::Relaxed) {
                    return http_limits::deadline_passed(timeout.unwrap_or_default());
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
    /// memory limit, which must have room for its stack (`None`: it has
    /// not, with the requests already in flight).
    fn store(
        &self,
        outgoing: Outgoing,
        host: H::Host,
    ) -> Result<Option<Store<HttpState<H::Host>>>> {
        let (stdout, stderr) = (self.guest.stdout.clone(), self.guest.stderr.clone());
        let wasi = self.guest.wasi.builder(None, stdout, stderr)?.build();
        let mut limiter = GuestLimiter::per_request(self.limits, self.memory.clone());
        if !limiter.reserve_store() {
            return Ok(None);
        }
        let state = HttpState::new(wasi, limiter, outgoing, host);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        yield_on_epoch(&mut store);
        Ok(Some(store))
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

    #[test]
    fn only_sigterm_and_sigint_are_graceful() {
        assert!(graceful(15));
        assert!(graceful(2));
        assert!(!graceful(9));
        assert!(!graceful(1));
    }
}
