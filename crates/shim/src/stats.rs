//! Per-container usage for the task API's Stats (what CRI turns into
//! `kubectl top` figures), reported as cgroup v1 metrics.
//!
//! Guests share the shim's process, so usage is measured per guest rather
//! than read from a cgroup: CPU time from the guest thread's scheduler
//! statistics, memory as the guest's linear memory (the memory the guest
//! itself asked for; host-side buffers are the shim's).

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

/// Type URL containerd registers for cgroup v1 metrics.
const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// What one container uses now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub cpu_nanos: u64,
    pub memory_bytes: u64,
    pub memory_limit: u64,
}

/// CPU time a thread of this process has run, in nanoseconds; 0 once it ended.
pub fn thread_cpu_nanos(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Encodes `usage` as the `Any` the Stats reply carries.
pub fn encode(usage: Usage) -> Result<Any, containerd_shim_protos::protobuf::Error> {
    let metrics = Metrics {
        cpu: Some(CPUStat {
            usage: Some(CPUUsage {
                total: usage.cpu_nanos,
                user: usage.cpu_nanos,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStat {
            rss: usage.memory_bytes,
            total_rss: usage.memory_bytes,
            usage: Some(MemoryEntry {
                usage: usage.memory_bytes,
                max: usage.memory_bytes,
                limit: usage.memory_limit,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    Ok(Any {
        type_url: METRICS_TYPE_URL.to_string(),
        value: metrics.write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_round_trips_through_metrics() {
        let any = encode(Usage {
            cpu_nanos: 5,
            memory_bytes: 65536,
            memory_limit: 1 << 20,
        })
        .unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let metrics = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(metrics.cpu.usage.total, 5);
        assert_eq!(metrics.memory.usage.usage, 65536);
        assert_eq!(metrics.memory.usage.limit, 1 << 20);
    }

    #[test]
    fn this_thread_has_used_cpu() {
        let tid = nix::unistd::gettid().as_raw();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        // The kernel adds up a running thread's time at ticks and switches:
        // sleep once so that the loop is counted.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(thread_cpu_nanos(tid) > 0);
        assert_eq!(thread_cpu_nanos(-1), 0);
    }
}
