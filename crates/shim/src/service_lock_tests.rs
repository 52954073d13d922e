//! Nothing slow runs under the service's lock: one tenant's slow delete or a
//! containerd that stops taking events does not delay another tenant's
//! requests.

use std::future::Future;
use std::time::Instant;

use super::*;
use crate::events::{EventSink, QUEUE};
use containerd_shim_protos::shim::events::ForwardRequest;

/// A containerd whose event service never answers.
struct StuckSink;

#[async_trait]
impl EventSink for StuckSink {
    async fn forward(&self, _request: ForwardRequest) -> Result<(), String> {
        std::future::pending().await
    }
}

async fn harness_with_events(os: RecordingOs, events: EventPublisher) -> Harness {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wasishim-locks-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let os = Arc::new(os);
    let guests = Arc::new(FakeGuests::default());
    let shutdown = ShutdownSignal::default();
    let service = TaskService::new(
        crate::PER_NODE,
        "default",
        os.clone(),
        guests.clone(),
        events,
        shutdown.clone(),
    );
    Harness {
        service,
        os,
        guests,
        shutdown,
        dir,
    }
}

/// Runs `request`, which must be answered within `limit`.
async fn quickly<T>(what: &str, limit: Duration, request: impl Future<Output = T>) -> T {
    let started = Instant::now();
    match tokio::time::timeout(limit, request).await {
        Ok(answer) => answer,
        Err(_) => panic!("{what} waited more than {limit:?} (started {started:?})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cgroup_removal_does_not_hold_up_other_tasks() {
    let removal = Duration::from_secs(2);
    let h = Arc::new(
        harness_with_events(
            RecordingOs::slow_cgroup_removal(removal),
            EventPublisher::connect(None).await,
        )
        .await,
    );
    h.create("slow").await.unwrap();
    h.create("other").await.unwrap();
    h.start("other").await.unwrap();
    let deleting = {
        let h = h.clone();
        tokio::spawn(async move { h.delete("slow").await })
    };
    // The delete is now removing the cgroup (2 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fast = Duration::from_millis(500);
    quickly("state", fast, h.status_result("other"))
        .await
        .unwrap();
    quickly("create", fast, h.create("third")).await.unwrap();
    let (code, message) = refusal(quickly("a second delete", fast, h.delete("slow")).await);
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert_eq!(message, "cannot delete task slow: it is being deleted");
    quickly("kill", fast, h.kill("other", 9)).await.unwrap();
    let deleted = deleting.await.unwrap().unwrap();
    assert_eq!(deleted.exit_status, 0);
    assert_eq!(h.service.task_count().await, 2);
    assert!(h
        .os
        .calls()
        .contains(&"remove cgroup pod1/slow".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_event_sink_does_not_hold_up_requests() {
    let h = harness_with_events(
        RecordingOs::default(),
        EventPublisher::with_sink(Arc::new(StuckSink)),
    )
    .await;
    quickly("task cycles", Duration::from_secs(5), async {
        for i in 0..5 {
            let id = format!("c{i}");
            h.create(&id).await.unwrap();
            h.start(&id).await.unwrap();
            h.kill(&id, 9).await.unwrap();
            h.wait(&id).await.unwrap();
            h.delete(&id).await.unwrap();
        }
    })
    .await;
    assert_eq!(h.published().len(), 5 * 4);
    // More events than the queue holds: the rest are dropped, not waited for.
    let events = EventPublisher::with_sink(Arc::new(StuckSink));
    quickly("a full queue", Duration::from_secs(2), async {
        for i in 0..QUEUE + 100 {
            events.task_start("ns1", &format!("c{i}"), 1);
        }
    })
    .await;
}
