//! What one metrics scrape costs a server hosting 500 HTTP containers: every
//! per-container series registered (requests by status class, the latency
//! histogram, open connections), then the whole text encoded, timed.
//!
//! `cargo run --release -p wasishim-shim --example metrics_scrape [CONTAINERS]`
//! prints the median and the slowest of 200 encodes, in wall-clock and in
//! the thread's CPU time (what the scrape costs, also on a busy machine),
//! and the size of one.
use std::time::{Duration, Instant};

use wasishim_engine::{ContainerLabels, EngineMetrics, ExitStatus};
use wasishim_shim::metrics::{ShimMetrics, TaskStates};

const ROUNDS: usize = 200;

/// CPU time of this thread so far.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

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
    let (mut wall, mut cpu): (Vec<Duration>, Vec<Duration>) = (0..ROUNDS)
        .map(|_| {
            let (start, start_cpu) = (Instant::now(), thread_cpu());
            let text = metrics.encode(states);
            let took = (start.elapsed(), thread_cpu().saturating_sub(start_cpu));
            std::hint::black_box(text.ok());
            took
        })
        .unzip();
    wall.sort();
    cpu.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{containers} containers: one scrape encodes {bytes} bytes in {:.3} ms of CPU (median of {ROUNDS}; slowest {:.3} ms), {:.3} ms wall-clock (slowest {:.3} ms)",
        ms(cpu[ROUNDS / 2]),
        ms(cpu[ROUNDS - 1]),
        ms(wall[ROUNDS / 2]),
        ms(wall[ROUNDS - 1]),
    );
    drop(open);
}
