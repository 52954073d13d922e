//! Prometheus metrics of a shim server, served over HTTP on
//! `WASISHIM_METRICS_ADDRESS` (containerd's environment, which shims
//! inherit): the task service's counts here, the engine's (compiling, cache,
//! pool, HTTP servers) registered from `wasishim_engine::EngineMetrics`.
//!
//! Unset, nothing is counted or served. The service records into
//! [`ShimMetrics`]; the listener reads the task counts through
//! [`TaskCounts`] at each scrape, so data still flows from the service out.
//! A container's series go when it is deleted ([`ShimMetrics::deleted`]).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use wasishim_engine::{ContainerLabels, EngineMetrics, ExitStatus};

/// Environment variable: where to serve metrics, `IP:PORT` or
/// `unix:/path`; `{pid}` in it is replaced by the server's process id.
pub const METRICS_ADDRESS_ENV: &str = "WASISHIM_METRICS_ADDRESS";

/// Upper bounds (seconds) of the kill latency buckets: a guest ends within
/// about 10 ms of a kill; an HTTP server drains for its grace period.
const KILL_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5, 30.0];

/// Scrapes served at once; more wait.
const MAX_SCRAPES: usize = 4;
/// A scraper that sends no request header within this is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddress::Tcp(address) => write!(f, "http://{address}/metrics"),
            MetricsAddress::Unix(path) => write!(f, "unix:{} (/metrics)", path.display()),
        }
    }
}

impl MetricsAddress {
    /// Parses `IP:PORT` or `unix:/absolute/path`, `{pid}` replaced by `pid`.
    pub fn parse(value: &str, pid: u32) -> Result<MetricsAddress> {
        let value = value.trim().replace("{pid}", &pid.to_string());
        if let Some(path) = value.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                bail!("{METRICS_ADDRESS_ENV}=unix:{} is not an absolute path: give e.g. unix:/run/wasishim/metrics-{{pid}}.sock", path.display());
            }
            return Ok(MetricsAddress::Unix(path));
        }
        match value.parse::<SocketAddr>() {
            Ok(address) => Ok(MetricsAddress::Tcp(address)),
            Err(_) => bail!(
                "{METRICS_ADDRESS_ENV}={value} is neither IP:PORT nor unix:/path: give e.g. 127.0.0.1:9464 or unix:/run/wasishim/metrics-{{pid}}.sock, or unset it"
            ),
        }
    }

    /// The address in the environment: `None` if unset or empty (metrics
    /// off), else the parsed address or why it is unusable.
    pub fn from_env() -> Option<Result<MetricsAddress>> {
        let value = std::env::var(METRICS_ADDRESS_ENV).ok()?;
        if value.trim().is_empty() {
            return None;
        }
        Some(MetricsAddress::parse(&value, std::process::id()))
    }
}

/// How many tasks are in each state, read at each scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskStates {
    pub created: u64,
    pub running: u64,
    pub stopped: u64,
}

/// The task service as the listener sees it: its task counts.
#[async_trait]
pub trait TaskCounts: Send + Sync {
    async fn task_states(&self) -> TaskStates;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u32,
}

/// Exit codes above this are counted together as 256, so that guests
/// choosing exit codes cannot grow the series without end.
const MAX_EXIT_CODE: u32 = 255;

/// The task service's counters and the registry holding them and the
/// engine's.
#[derive(Debug)]
pub struct ShimMetrics {
    registry: Registry,
    tasks: Family<StateLabel, Gauge>,
    starts: Counter,
    exits: Family<CodeLabel, Counter>,
    ooms: Counter,
    kill_seconds: Histogram,
    /// When each task was first asked to end (SIGKILL, SIGTERM, SIGINT),
    /// until its exit or deletion.
    kills: Mutex<HashMap<(String, String), Instant>>,
    engine: EngineMetrics,
}

impl ShimMetrics {
    /// The service's metrics next to `engine`'s, in one registry.
    pub fn new(engine: EngineMetrics) -> ShimMetrics {
        let mut registry = Registry::default();
        let tasks = Family::<StateLabel, Gauge>::default();
        let starts = Counter::default();
        let exits = Family::<CodeLabel, Counter>::default();
        let ooms = Counter::default();
        let kill_seconds = Histogram::new(KILL_BUCKETS);
        registry.register("wasishim_tasks", "Tasks hosted, by state", tasks.clone());
        registry.register("wasishim_task_starts", "Tasks started", starts.clone());
        registry.register(
            "wasishim_task_exits",
            "Tasks that ended, by exit code (codes above 255 as 256)",
            exits.clone(),
        );
        registry.register(
            "wasishim_task_ooms",
            "Tasks that ended out of memory (their memory limit refused them)",
            ooms.clone(),
        );
        registry.register(
            "wasishim_kill_seconds",
            "Time from the first Kill with SIGKILL, SIGTERM or SIGINT to the task's exit",
            kill_seconds.clone(),
        );
        engine.register(&mut registry);
        ShimMetrics {
            registry,
            tasks,
            starts,
            exits,
            ooms,
            kill_seconds,
            kills: Mutex::default(),
            engine,
        }
    }

    fn kills(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        // Plain inserts and removals: a panic elsewhere leaves it consistent.
        self.kills.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn started(&self) {
        self.starts.inc();
    }

    /// A Kill of task `id` with `signal`: the terminating ones start the
    /// clock of the kill latency.
    pub fn kill_requested(&self, namespace: &str, id: &str, signal: u32) {
        if matches!(signal, 2 | 9 | 15) {
            self.kills()
                .entry((namespace.to_string(), id.to_string()))
                .or_insert_with(Instant::now);
        }
    }

    pub fn exited(&self, namespace: &str, id: &str, status: &ExitStatus) {
        let code = status.code.min(MAX_EXIT_CODE + 1);
        self.exits.get_or_create(&CodeLabel { code }).inc();
        if status.oom_killed {
            self.ooms.inc();
        }
        let killed = self
            .kills()
            .remove(&(namespace.to_string(), id.to_string()));
        if let Some(at) = killed {
            self.kill_seconds.observe(at.elapsed().as_secs_f64());
        }
    }

    /// Task `id` was deleted: its series and its pending kill go.
    pub fn deleted(&self, namespace: &str, id: &str) {
        self.kills()
            .remove(&(namespace.to_string(), id.to_string()));
        self.engine.forget(&ContainerLabels {
            namespace: namespace.to_string(),
            container: id.to_string(),
        });
    }

    /// Every metric in Prometheus' text format, with the task counts `states`.
    pub fn encode(&self, states: TaskStates) -> Result<String, std::fmt::Error> {
        for (state, count) in [
            ("created", states.created),
            ("running", states.running),
            ("stopped", states.stopped),
        ] {
            self.tasks
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut text = String::with_capacity(64 << 10);
        prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Serves `GET /metrics` on `address` until the process ends. A failure to
/// listen is logged, not fatal: the shim serves its tasks without metrics.
pub async fn serve(
    address: MetricsAddress,
    metrics: Arc<ShimMetrics>,
    counts: Arc<dyn TaskCounts>,
) {
    let served = match &address {
        MetricsAddress::Tcp(socket) => match TcpListener::bind(*socket).await {
            Ok(listener) => {
                log::info!("serving metrics on {address}");
                accept_loop(|| listener.accept(), metrics, counts).await
            }
            Err(e) => Err(anyhow::Error::from(e)),
        },
        MetricsAddress::Unix(path) => match bind_unix(path) {
            Ok(listener) => {
                log::info!("serving metrics on {address}");
                accept_loop(|| listener.accept(), metrics, counts).await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = served {
        log::error!(
            "{METRICS_ADDRESS_ENV}: cannot serve metrics on {address}: {e:#}: metrics are off in this shim (its tasks are served as before); give a free IP:PORT, or a unix:/path in an existing directory, with {{pid}} if each per-pod shim needs its own"
        );
    }
}

/// Binds a Unix socket at `path`, replacing a stale socket left there.
fn bind_unix(path: &std::path::Path) -> Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another process serves {} already", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)?;
    let _ = BOUND_SOCKET.set(path.to_path_buf());
    Ok(listener)
}

/// The Unix socket this process bound, to remove when it exits (and no
/// other: one bound by another shim at the same path is left alone).
static BOUND_SOCKET: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Removes the Unix socket metrics were served on, if any: call when the
/// server exits.
pub fn remove_socket() {
    if let Some(path) = BOUND_SOCKET.get() {
        let _ = std::fs::remove_file(path);
    }
}

/// Serves each connection `accept` gives until accepting ends.
async fn accept_loop<S, P, A, F>(
    accept: A,
    metrics: Arc<ShimMetrics>,
    counts: Arc<dyn TaskCounts>,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Fn() -> F,
    F: std::future::Future<Output = std::io::Result<(S, P)>>,
{
    let scrapes = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let stream = match accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of descriptors: pause rather than spin.
                log::warn!("metrics: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = scrapes.clone().acquire_owned().await else {
            return Ok(());
        };
        let metrics = metrics.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                let counts = counts.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        answer(request, &metrics, counts.as_ref()).await,
                    )
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                log::debug!("metrics connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn answer<B>(
    request: Request<B>,
    metrics: &ShimMetrics,
    counts: &dyn TaskCounts,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: metrics are at /metrics\n".to_string(),
        );
    }
    let states = counts.task_states().await;
    match metrics.encode(states) {
        Ok(text) => reply(StatusCode::OK, prometheus_text::CONTENT_TYPE, text),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_the_pid() {
        assert_eq!(
            MetricsAddress::parse("127.0.0.1:9464", 7).ok(),
            Some(MetricsAddress::Tcp(SocketAddr::from((
                [127, 0, 0, 1],
                9464
            ))))
        );
        assert_eq!(
            MetricsAddress::parse("unix:/run/m-{pid}.sock", 42).ok(),
            Some(MetricsAddress::Unix(PathBuf::from("/run/m-42.sock")))
        );
        let relative = MetricsAddress::parse("unix:m.sock", 1)
            .err()
            .map(|e| e.to_string());
        assert!(relative.is_some_and(|e| e.contains("not an absolute path")));
        let bad = MetricsAddress::parse("localhost", 1)
            .err()
            .map(|e| e.to_string());
        assert!(bad.is_some_and(|e| e
            .starts_with("WASISHIM_METRICS_ADDRESS=localhost is neither IP:PORT nor unix:/path")));
    }

    #[test]
    fn tasks_exits_and_kills_are_counted_and_deleted_tasks_forgotten() {
        let metrics = ShimMetrics::new(EngineMetrics::new());
        metrics.started();
        metrics.kill_requested("default", "a", 9);
        metrics.exited("default", "a", &ExitStatus::now(137));
        metrics.exited("default", "b", &ExitStatus::now(70_000));
        metrics.kill_requested("default", "c", 15);
        metrics.deleted("default", "c");
        let text = metrics
            .encode(TaskStates {
                created: 1,
                running: 2,
                stopped: 3,
            })
            .unwrap_or_default();
        for line in [
            "wasishim_tasks{state=\"running\"} 2",
            "wasishim_task_starts_total 1",
            "wasishim_task_exits_total{code=\"137\"} 1",
            "wasishim_task_exits_total{code=\"256\"} 1",
            "wasishim_kill_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(metrics.kills().is_empty());
    }
}
