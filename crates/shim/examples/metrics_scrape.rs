//! What one metrics scrape costs a server hosting 500 HTTP containers: every
//! per-container series registered (requests by status class, the latency
//! histogram, open connections), then the whole text encoded, timed.
//!
//! `cargo run --release -p wasishim-shim --example metrics_scrape [CONTAINERS]`
//! prints the median and the slowest of 200 encodes, and the size of one.
use std::time::{Duration, Instant};

use wasishim_engine::{ContainerLabels, EngineMetrics, ExitStatus};
use wasishim_shim::metrics::{ShimMetrics, TaskStates};

const ROUNDS: usize = 200;

fn main() {
    let containers: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let engine = EngineMetrics::new();
    let metrics = ShimMetrics::new(engine.clone());
    let mut open = Vec::new();
    for i in 0..containers {
        // CRI container ids are 64 hex digits.
        let id = format!("{i:064x}");
        let http = engine.http(ContainerLabels {
            namespace: "k8s.io".to_string(),
            container: id.clone(),
        });
        http.listening();
        for status in [200, 200, 301, 404, 500] {
            http.request(status, Duration::from_micros(300 + i as u64));
        }
        open.push(http.connection());
        metrics.started();
        metrics.exited("k8s.io", &id, &ExitStatus::now((i % 3) as u32));
    }
    let states = TaskStates {
        created: 0,
        running: containers as u64,
        stopped: 0,
    };
    let mut bytes = 0;
    for _ in 0..10 {
        bytes = metrics.encode(states).map(|t| t.len()).unwrap_or(0);
    }
    let mut took: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let text = metrics.encode(states);
            let elapsed = start.elapsed();
            std::hint::black_box(text.ok());
            elapsed
        })
        .collect();
    took.sort();
    println!(
        "{containers} containers: one scrape encodes {bytes} bytes in {:.3} ms (median of {ROUNDS}; slowest {:.3} ms)",
        took[ROUNDS / 2].as_secs_f64() * 1e3,
        took[ROUNDS - 1].as_secs_f64() * 1e3,
    );
    drop(open);
}
