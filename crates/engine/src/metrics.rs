//! The engine's metrics: compiling, the compiled-code cache, the instance
//! pool and HTTP servers, as Prometheus metrics for the host to register and
//! serve ([`EngineMetrics::register`]).
//!
//! Off unless asked for ([`WasmEngineBuilder::metrics`](crate::WasmEngineBuilder::metrics)):
//! then nothing is counted and nothing is allocated. HTTP series are per
//! container, labelled with the names the host gives
//! ([`Workload::with_http_metrics`](crate::Workload::with_http_metrics)); the
//! host removes them with [`EngineMetrics::forget`] when the container goes,
//! so nothing grows with containers that were deleted. Status codes are
//! counted by class (`2xx`...), five series at most per container.
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use wasmtime::{Engine, EngineWeak};

/// Upper bounds (seconds) of the HTTP request latency buckets: a decade
/// each, from a fast handler to a slow one. Few, because each is a line per
/// container in every scrape.
const HTTP_BUCKETS: [f64; 4] = [0.005, 0.05, 0.5, 5.0];
/// Upper bounds (seconds) of the compile time buckets: a small module takes
/// milliseconds, a 20 MiB one seconds, the worker's default limit is 60 s.
const COMPILE_BUCKETS: [f64; 7] = [0.01, 0.05, 0.25, 1.0, 5.0, 15.0, 60.0];

/// The status classes a request is counted under.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A container's names: the host's (for the shims, the containerd
/// namespace and the container id). Its series carry them as one label,
/// `container="<namespace>/<container>"`: half the labels to write per
/// line makes a scrape of hundreds of containers markedly cheaper.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ContainerLabels {
    pub namespace: String,
    pub container: String,
}

impl ContainerLabels {
    fn series(&self) -> SeriesLabel {
        SeriesLabel {
            container: format!("{}/{}", self.namespace, self.container),
        }
    }
}

/// The label of a container's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeriesLabel {
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    container: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaceLabel {
    place: &'static str,
}

type HistogramFamily = Family<SeriesLabel, Histogram, fn() -> Histogram>;

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

/// The engine's counters, shared by its clones (cheap to clone: handles).
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    compiles: Counter,
    compile_failures: Counter,
    compile_seconds: Histogram,
    compile_bytes: Counter,
    cache_hits: Family<PlaceLabel, Counter>,
    cache_misses: Counter,
    cache_evictions: Counter,
    cache_bytes: Gauge,
    http_requests: Family<RequestLabels, Counter>,
    http_seconds: HistogramFamily,
    http_connections: Family<SeriesLabel, Gauge>,
    /// The engine whose instance pool is read at each scrape; unset for
    /// metrics without an engine (tests, `examples`).
    pool: PoolSource,
}

/// The engine a scrape reads the pool of (a weak reference: metrics do not
/// keep an engine alive).
#[derive(Clone, Default)]
struct PoolSource(Arc<OnceLock<EngineWeak>>);

impl std::fmt::Debug for PoolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolSource")
    }
}

impl Default for EngineMetrics {
    fn default() -> EngineMetrics {
        EngineMetrics::new()
    }
}

impl EngineMetrics {
    /// Metrics with every count at zero and no engine's pool attached
    /// ([`WasmEngine::metrics`](crate::WasmEngine::metrics) gives an engine's).
    pub fn new() -> EngineMetrics {
        EngineMetrics {
            compiles: Counter::default(),
            compile_failures: Counter::default(),
            compile_seconds: Histogram::new(COMPILE_BUCKETS),
            compile_bytes: Counter::default(),
            cache_hits: Family::default(),
            cache_misses: Counter::default(),
            cache_evictions: Counter::default(),
            cache_bytes: Gauge::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(http_histogram),
            http_connections: Family::default(),
            pool: PoolSource::default(),
        }
    }

    /// Adds every metric to `registry` under the `wasishim_` names listed in
    /// the README. Call once per registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "wasishim_compiles",
            "Guests compiled (in a compile worker)",
            self.compiles.clone(),
        );
        registry.register(
            "wasishim_compile_failures",
            "Compilations that failed: invalid code, or a compile limit reached",
            self.compile_failures.clone(),
        );
        registry.register(
            "wasishim_compile_seconds",
            "Wall-clock time of each successful compilation",
            self.compile_seconds.clone(),
        );
        registry.register(
            "wasishim_compile_input_bytes",
            "Bytes of WebAssembly compiled",
            self.compile_bytes.clone(),
        );
        registry.register(
            "wasishim_cache_hits",
            "Guests whose code was found compiled: in memory, or in the cache directory",
            self.cache_hits.clone(),
        );
        registry.register(
            "wasishim_cache_misses",
            "Guests whose code was in neither place and had to be compiled",
            self.cache_misses.clone(),
        );
        registry.register(
            "wasishim_cache_evictions",
            "Artifacts removed from the cache directory to stay under its cap",
            self.cache_evictions.clone(),
        );
        registry.register(
            "wasishim_cache_size_bytes",
            "Bytes of artifacts in the cache directory, as of the last store",
            self.cache_bytes.clone(),
        );
        registry.register(
            "wasishim_http_requests",
            "HTTP requests answered by a container's wasi:http server, by status class",
            self.http_requests.clone(),
        );
        registry.register(
            "wasishim_http_request_seconds",
            "Time from a request's arrival to its response headers",
            self.http_seconds.clone(),
        );
        registry.register(
            "wasishim_http_connections_open",
            "Connections a container's wasi:http server holds open",
            self.http_connections.clone(),
        );
        registry.register_collector(Box::new(PoolSlots {
            pool: self.pool.clone(),
        }));
    }

    /// Reads the instance pool of `engine` at each scrape from now on.
    pub(crate) fn attach(&self, engine: &Engine) {
        let _ = self.pool.0.set(engine.weak());
    }

    /// The HTTP metrics of the container named by `labels`; its series
    /// appear once its server listens.
    pub fn http(&self, labels: ContainerLabels) -> HttpMetrics {
        HttpMetrics {
            metrics: self.clone(),
            label: labels.series(),
            requests: Default::default(),
            seconds: OnceLock::new(),
            connections: OnceLock::new(),
        }
    }

    /// Removes every series of the container named by `labels`: call when it
    /// is deleted.
    pub fn forget(&self, labels: &ContainerLabels) {
        let label = labels.series();
        self.http_seconds.remove(&label);
        self.http_connections.remove(&label);
        for status in STATUS_CLASSES {
            self.http_requests.remove(&RequestLabels {
                container: label.container.clone(),
                status,
            });
        }
    }

    pub(crate) fn memory_hit(&self) {
        self.cache_hits
            .get_or_create(&PlaceLabel { place: "memory" })
            .inc();
    }

    pub(crate) fn disk_hit(&self) {
        self.cache_hits
            .get_or_create(&PlaceLabel { place: "disk" })
            .inc();
    }

    pub(crate) fn miss(&self) {
        self.cache_misses.inc();
    }

    pub(crate) fn compiled(&self, bytes: usize, took: Duration) {
        self.compiles.inc();
        self.compile_bytes.inc_by(bytes as u64);
        self.compile_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn compile_failed(&self) {
        self.compile_failures.inc();
    }

    /// After an eviction pass: `evicted` artifacts removed, `total` bytes left.
    pub(crate) fn evicted(&self, evicted: u64, total: u64) {
        self.cache_evictions.inc_by(evicted);
        self.cache_bytes
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }
}

/// One container's HTTP series; the handle its server records into.
#[derive(Debug)]
pub struct HttpMetrics {
    metrics: EngineMetrics,
    label: SeriesLabel,
    /// The counter of each status class, taken from the family once.
    requests: [OnceLock<Counter>; 5],
    seconds: OnceLock<Histogram>,
    connections: OnceLock<Gauge>,
}

impl HttpMetrics {
    fn seconds(&self) -> &Histogram {
        self.seconds
            .get_or_init(|| self.metrics.http_seconds.get_or_create_owned(&self.label))
    }

    fn connections(&self) -> &Gauge {
        self.connections.get_or_init(|| {
            self.metrics
                .http_connections
                .get_or_create_owned(&self.label)
        })
    }

    /// The server listens: its series appear, at zero.
    pub fn listening(&self) {
        self.seconds();
        self.connections();
    }

    /// A request was answered with `status` after `took` (until its headers).
    pub fn request(&self, status: u16, took: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        let counter = self.requests[class].get_or_init(|| {
            self.metrics
                .http_requests
                .get_or_create_owned(&RequestLabels {
                    container: self.label.container.clone(),
                    status: STATUS_CLASSES[class],
                })
        });
        counter.inc();
        self.seconds().observe(took.as_secs_f64());
    }

    /// A connection was accepted; open until the guard is dropped.
    pub fn connection(&self) -> OpenConnection {
        let gauge = self.connections().clone();
        gauge.inc();
        OpenConnection(gauge)
    }
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The instance pool's slots in use, read from wasmtime at each scrape.
#[derive(Debug)]
struct PoolSlots {
    pool: PoolSource,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl Collector for PoolSlots {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(pool) = self
            .pool
            .0
            .get()
            .and_then(EngineWeak::upgrade)
            .and_then(|engine| engine.pooling_allocator_metrics())
        else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "wasishim_pool_slots_in_use",
            "Slots of the engine's instance pool in use, by kind",
            None,
            MetricType::Gauge,
        )?;
        for (kind, used) in [
            ("memories", pool.memories() as u64),
            ("tables", pool.tables() as u64),
            ("core_instances", pool.core_instances()),
            ("component_instances", pool.component_instances()),
        ] {
            let gauge = ConstGauge::new(i64::try_from(used).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&KindLabel { kind })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn text(metrics: &EngineMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    #[test]
    fn a_forgotten_container_leaves_no_series() {
        let metrics = EngineMetrics::new();
        let labels = |c: &str| ContainerLabels {
            namespace: "k8s.io".into(),
            container: c.into(),
        };
        let web = metrics.http(labels("web"));
        web.listening();
        let open = web.connection();
        web.request(200, Duration::from_millis(2));
        web.request(404, Duration::from_millis(2));
        web.request(503, Duration::from_millis(2));
        let other = metrics.http(labels("other"));
        other.request(200, Duration::from_millis(1));
        let out = text(&metrics);
        assert!(
            out.contains("wasishim_http_requests_total{container=\"k8s.io/web\",status=\"4xx\"} 1")
        );
        assert!(out.contains("wasishim_http_connections_open{container=\"k8s.io/web\"} 1"));
        drop(open);
        metrics.forget(&labels("web"));
        let out = text(&metrics);
        assert!(!out.contains("container=\"k8s.io/web\""), "{out}");
        assert!(out.contains("container=\"k8s.io/other\""), "{out}");
    }
}
