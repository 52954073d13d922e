//! The task service's decisions, with a stub OS and fake guests: no root,
//! no containerd, no engine.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use containerd_shim_protos::types::mount::Mount;
use containerd_shim_protos::types::task::Status as ProtoStatus;

use super::*;
use crate::keys::request_context;
use crate::os::tests::RecordingOs;
use crate::process::fakes::FakeGuests;

/// What runs while the service's lock is held, and what must not.
#[path = "service_lock_tests.rs"]
mod locks;

struct Harness {
    service: TaskService,
    os: Arc<RecordingOs>,
    guests: Arc<FakeGuests>,
    shutdown: ShutdownSignal,
    dir: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn harness_with(runtime: Runtime, os: RecordingOs, guests: FakeGuests) -> Harness {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wasishim-service-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let os = Arc::new(os);
    let guests = Arc::new(guests);
    let shutdown = ShutdownSignal::default();
    let service = TaskService::new(
        runtime,
        "default",
        os.clone(),
        guests.clone(),
        EventPublisher::connect(None).await,
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

async fn harness() -> Harness {
    harness_with(
        crate::PER_POD,
        RecordingOs::default(),
        FakeGuests::default(),
    )
    .await
}

/// A plain container's spec, in its cgroup `/pod1/<id>`.
fn container_spec(id: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/app.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {"cgroupsPath": format!("/pod1/{id}")},
    })
}

/// A CRI pod's sandbox, or one of its containers, in network `netns`.
fn pod_spec(kind: &str, id: &str, netns: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/app.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {
            "cgroupsPath": format!("/pod1/{id}"),
            "namespaces": [{"type": "network", "path": netns}],
        },
        "annotations": {
            "io.kubernetes.cri.container-type": kind,
            "io.kubernetes.cri.sandbox-id": "pod1",
        },
    })
}

impl Harness {
    /// Writes `<dir>/<namespace>/<id>/config.json`, as containerd lays bundles out.
    fn bundle(&self, namespace: &str, id: &str, spec: &serde_json::Value) -> PathBuf {
        let bundle = self.dir.join(namespace).join(id);
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        bundle
    }

    async fn create_in(
        &self,
        ctx: &TtrpcContext,
        namespace: &str,
        id: &str,
        spec: &serde_json::Value,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let bundle = self.bundle(namespace, id, spec);
        let req = CreateTaskRequest {
            id: id.to_string(),
            bundle: bundle.display().to_string(),
            rootfs: vec![Mount {
                type_: "overlay".into(),
                source: "overlay".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        self.service.create(ctx, req).await
    }

    async fn create(&self, id: &str) -> ttrpc::Result<CreateTaskResponse> {
        self.create_in(&ns1(), "ns1", id, &container_spec(id)).await
    }

    async fn start(&self, id: &str) -> ttrpc::Result<StartResponse> {
        let req = StartRequest {
            id: id.into(),
            ..Default::default()
        };
        self.service.start(&ns1(), req).await
    }

    async fn kill(&self, id: &str, signal: u32) -> ttrpc::Result<Empty> {
        let req = KillRequest {
            id: id.into(),
            signal,
            ..Default::default()
        };
        self.service.kill(&ns1(), req).await
    }

    async fn wait(&self, id: &str) -> ttrpc::Result<WaitResponse> {
        let req = WaitRequest {
            id: id.into(),
            ..Default::default()
        };
        let ctx = ns1();
        let wait = self.service.wait(&ctx, req);
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("wait returns once the task stopped")
    }

    async fn state_in(&self, ctx: &TtrpcContext, id: &str) -> ttrpc::Result<StateResponse> {
        let req = StateRequest {
            id: id.into(),
            ..Default::default()
        };
        self.service.state(ctx, req).await
    }

    async fn status(&self, id: &str) -> ProtoStatus {
        self.state_in(&ns1(), id)
            .await
            .unwrap()
            .status
            .enum_value_or_default()
    }

    async fn delete(&self, id: &str) -> ttrpc::Result<DeleteResponse> {
        let req = DeleteRequest {
            id: id.into(),
            ..Default::default()
        };
        self.service.delete(&ns1(), req).await
    }

    fn bundle_path(&self, namespace: &str, id: &str) -> String {
        self.dir.join(namespace).join(id).display().to_string()
    }

    fn published(&self) -> Vec<String> {
        self.service.events.published.lock().unwrap().clone()
    }
}

/// A containerd 2.x request in namespace ns1.
fn ns1() -> TtrpcContext {
    request_context(Some("ns1"), None)
}

/// The code and message of a refused request.
fn refusal<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message().to_string()),
        other => panic!("expected a ttrpc status, got {other:?}"),
    }
}

#[tokio::test]
async fn create_start_exit_wait_delete() {
    let h = harness().await;
    assert_eq!(h.create("c1").await.unwrap().pid, 4242);
    assert_eq!(h.status("c1").await, ProtoStatus::CREATED);
    assert_eq!(h.start("c1").await.unwrap().pid, 4242);
    assert_eq!(h.status("c1").await, ProtoStatus::RUNNING);
    h.guests.last_started().end(3);
    assert_eq!(h.wait("c1").await.unwrap().exit_status, 3);
    let state = h.state_in(&ns1(), "c1").await.unwrap();
    assert_eq!(state.status.enum_value_or_default(), ProtoStatus::STOPPED);
    assert_eq!(state.exit_status, 3);
    // Waiting again after the exit answers at once, with the same status.
    assert_eq!(h.wait("c1").await.unwrap().exit_status, 3);
    assert_eq!(h.delete("c1").await.unwrap().exit_status, 3);
    assert_eq!(refusal(h.status_result("c1").await).0, Code::NOT_FOUND);

    let bundle = h.bundle_path("ns1", "c1");
    assert_eq!(
        h.os.calls(),
        [
            "create cgroup pod1/c1 container".to_string(),
            format!("mount {bundle}"),
            // Delete: the cgroup goes first, then the rootfs.
            "remove cgroup pod1/c1".to_string(),
            format!("unmount {bundle}"),
        ]
    );
    assert_eq!(
        h.published(),
        [
            "/tasks/create ns1",
            "/tasks/start ns1",
            "/tasks/exit ns1",
            "/tasks/delete ns1"
        ]
    );
}

impl Harness {
    async fn metrics(&self, id: &str) -> containerd_shim_protos::cgroups::metrics::Metrics {
        use containerd_shim_protos::protobuf::Message as _;
        let req = StatsRequest {
            id: id.into(),
            ..Default::default()
        };
        let stats = self.service.stats(&ns1(), req).await.unwrap();
        containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&stats.stats.value)
            .unwrap()
    }

    async fn status_result(&self, id: &str) -> ttrpc::Result<StateResponse> {
        self.state_in(&ns1(), id).await
    }
}

#[tokio::test]
async fn double_create_is_refused_without_touching_the_host() {
    let h = harness().await;
    h.create("c1").await.unwrap();
    let calls = h.os.calls();
    let (code, message) = refusal(h.create("c1").await);
    assert_eq!(code, Code::ALREADY_EXISTS);
    assert_eq!(message, "task c1 already exists");
    assert_eq!(h.os.calls(), calls);
    // The same id in another namespace is another task.
    let other = request_context(Some("ns2"), None);
    h.create_in(&other, "ns2", "c1", &container_spec("c1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn delete_while_running_is_refused_and_names_the_state() {
    let h = harness().await;
    h.create("c1").await.unwrap();
    h.start("c1").await.unwrap();
    let (code, message) = refusal(h.delete("c1").await);
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert_eq!(
        message,
        "task c1: cannot delete a running task: kill it first"
    );
    assert!(!h.os.calls().iter().any(|c| c.starts_with("remove")));
    h.kill("c1", 9).await.unwrap();
    assert_eq!(h.wait("c1").await.unwrap().exit_status, 137);
    assert_eq!(h.delete("c1").await.unwrap().exit_status, 137);
}

#[tokio::test]
async fn kill_of_a_created_task_stops_it_without_a_guest() {
    let h = harness().await;
    h.create("c1").await.unwrap();
    h.kill("c1", 15).await.unwrap();
    assert_eq!(h.status("c1").await, ProtoStatus::STOPPED);
    assert_eq!(h.wait("c1").await.unwrap().exit_status, 143);
    assert!(h.guests.started.lock().unwrap().is_empty());
    let (code, message) = refusal(h.start("c1").await);
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert_eq!(message, "task c1: cannot start a stopped task");
    // A second kill finds no process, as containerd expects.
    let (code, message) = refusal(h.kill("c1", 9).await);
    assert_eq!(code, Code::NOT_FOUND);
    assert_eq!(
        message,
        "task c1: cannot kill a stopped task: process already finished"
    );
    assert_eq!(h.delete("c1").await.unwrap().exit_status, 143);
    assert_eq!(
        h.published(),
        ["/tasks/create ns1", "/tasks/exit ns1", "/tasks/delete ns1"]
    );
}

#[tokio::test]
async fn start_twice_is_refused() {
    let h = harness().await;
    h.create("c1").await.unwrap();
    h.start("c1").await.unwrap();
    let (code, message) = refusal(h.start("c1").await);
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert_eq!(message, "task c1: cannot start a running task");
    assert_eq!(h.guests.started.lock().unwrap().len(), 1);
    // Signals other than the ending ones reach the guest and leave it running.
    h.kill("c1", 10).await.unwrap();
    assert_eq!(*h.guests.last_started().signals.lock().unwrap(), [10]);
    assert_eq!(h.status("c1").await, ProtoStatus::RUNNING);
}

#[tokio::test]
async fn a_guest_that_cannot_start_is_stopped_with_128() {
    let guests = FakeGuests {
        fail_start: true,
        ..FakeGuests::default()
    };
    let h = harness_with(crate::PER_POD, RecordingOs::default(), guests).await;
    h.create("c1").await.unwrap();
    let (code, message) = refusal(h.start("c1").await);
    assert_eq!(code, Code::INTERNAL);
    assert!(message.starts_with("cannot start task c1: "), "{message}");
    assert_eq!(h.wait("c1").await.unwrap().exit_status, 128);
    h.delete("c1").await.unwrap();
}

#[tokio::test]
async fn unknown_tasks_and_unsupported_requests() {
    let h = harness().await;
    let (code, message) = refusal(h.start("nope").await);
    assert_eq!(code, Code::NOT_FOUND);
    assert_eq!(message, "task nope not found");
    assert_eq!(refusal(h.delete("nope").await).0, Code::NOT_FOUND);
    let req = StartRequest {
        id: "nope".into(),
        exec_id: "e1".into(),
        ..Default::default()
    };
    let (code, message) = refusal(h.service.start(&ns1(), req).await);
    assert_eq!(code, Code::NOT_FOUND);
    assert_eq!(message, "task nope not found");
    let req = CreateTaskRequest {
        id: "c1".into(),
        terminal: true,
        ..Default::default()
    };
    let (code, message) = refusal(h.service.create(&ns1(), req).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("run without -t"), "{message}");
    assert!(h.os.calls().is_empty());
}

/// A Wasm guest has no process to enter: exec and its exec-id requests
/// are refused with the same words, and the guest runs on.
#[tokio::test]
async fn exec_into_a_wasm_guest_is_refused() {
    let h = harness().await;
    h.create("c1").await.unwrap();
    h.start("c1").await.unwrap();
    let req = ExecProcessRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        ..Default::default()
    };
    let (code, message) = refusal(h.service.exec(&ns1(), req).await);
    assert_eq!(code, Code::UNIMPLEMENTED);
    assert_eq!(
        message,
        "exec is not supported by io.containerd.wasmtime.v1"
    );
    let req = StartRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        ..Default::default()
    };
    let (code, message) = refusal(h.service.start(&ns1(), req).await);
    assert_eq!(code, Code::UNIMPLEMENTED);
    assert_eq!(
        message,
        "exec is not supported by io.containerd.wasmtime.v1"
    );
    let req = StateRequest {
        id: "c1".into(),
        ..Default::default()
    };
    let state = h.service.state(&ns1(), req).await.unwrap();
    assert_eq!(state.status, ProtoStatus::RUNNING.into());
}

#[tokio::test]
async fn a_failed_build_undoes_mount_then_cgroup() {
    let guests = FakeGuests {
        fail_prepare: true,
        ..FakeGuests::default()
    };
    let h = harness_with(crate::PER_POD, RecordingOs::default(), guests).await;
    let (code, message) = refusal(h.create("c1").await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert_eq!(
        message,
        "entrypoint /app.wasm not found in the image's rootfs"
    );
    let bundle = h.bundle_path("ns1", "c1");
    assert_eq!(
        h.os.calls(),
        [
            "create cgroup pod1/c1 container".to_string(),
            format!("mount {bundle}"),
            format!("unmount {bundle}"),
            "remove cgroup pod1/c1".to_string(),
        ]
    );
    assert_eq!(refusal(h.status_result("c1").await).0, Code::NOT_FOUND);
    assert!(h.published().is_empty());
}

#[tokio::test]
async fn a_failed_mount_removes_the_cgroup() {
    let h = harness_with(
        crate::PER_POD,
        RecordingOs::failing_mount(),
        FakeGuests::default(),
    )
    .await;
    let (code, message) = refusal(h.create("c1").await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("cannot mount"), "{message}");
    let bundle = h.bundle_path("ns1", "c1");
    assert_eq!(
        h.os.calls(),
        [
            "create cgroup pod1/c1 container".to_string(),
            format!("mount {bundle}"),
            "remove cgroup pod1/c1".to_string(),
        ]
    );
    assert!(h.guests.networks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn without_metadata_requests_find_their_namespace() {
    let h = harness().await;
    // containerd 1.x: no namespace metadata, one connection per task; the
    // namespace comes from the bundle path (`.../k8s.io/c1`).
    let conn1 = request_context(None, Some(1));
    h.create_in(&conn1, "k8s.io", "c1", &container_spec("c1"))
        .await
        .unwrap();
    let req = StartRequest {
        id: "c1".into(),
        ..Default::default()
    };
    h.service.start(&conn1, req).await.unwrap();
    // Another connection without metadata: the only task with that id.
    let conn2 = request_context(None, Some(2));
    let state = h.state_in(&conn2, "c1").await.unwrap();
    assert_eq!(state.status.enum_value_or_default(), ProtoStatus::RUNNING);
    assert_eq!(state.bundle, h.bundle_path("k8s.io", "c1"));
    assert_eq!(
        h.published(),
        ["/tasks/create k8s.io", "/tasks/start k8s.io"]
    );

    // A second c1, in another namespace: the connection still knows its own,
    // a stranger cannot tell them apart and gets the shim's namespace.
    let moby = request_context(Some("moby"), Some(3));
    h.create_in(&moby, "moby", "c1", &container_spec("c1"))
        .await
        .unwrap();
    let state = h.state_in(&conn1, "c1").await.unwrap();
    assert_eq!(state.bundle, h.bundle_path("k8s.io", "c1"));
    assert_eq!(
        refusal(h.state_in(&request_context(None, Some(4)), "c1").await).0,
        Code::NOT_FOUND
    );
}

#[tokio::test]
async fn a_pod_joins_its_sandbox_network() {
    let h = harness().await;
    h.create_in(
        &ns1(),
        "ns1",
        "pod1",
        &pod_spec("sandbox", "pod1", "/var/run/netns/cni-1"),
    )
    .await
    .unwrap();
    // The sandbox runs nothing: no rootfs mount, no guest; the per-pod
    // server moves into the pod's cgroup.
    assert_eq!(
        h.os.calls(),
        ["create cgroup pod1/pod1 sandbox holds_process=true"]
    );
    assert!(h.guests.networks.lock().unwrap().is_empty());
    h.start("pod1").await.unwrap();

    // CRI names the sandbox's network as /proc/<sandbox pid>/ns/net.
    h.create_in(
        &ns1(),
        "ns1",
        "c1",
        &pod_spec("container", "c1", "/proc/4242/ns/net"),
    )
    .await
    .unwrap();
    assert_eq!(
        *h.guests.networks.lock().unwrap(),
        [Some(PathBuf::from("/var/run/netns/cni-1"))]
    );

    // The sandbox ends on SIGTERM, like the pause process.
    h.kill("pod1", 15).await.unwrap();
    assert_eq!(h.wait("pod1").await.unwrap().exit_status, 143);
    h.delete("pod1").await.unwrap();
    // The pod's network is forgotten with its sandbox.
    let (code, message) = refusal(
        h.create_in(
            &ns1(),
            "ns1",
            "c2",
            &pod_spec("container", "c2", "/proc/4242/ns/net"),
        )
        .await,
    );
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(
        message.contains("pod sandbox pod1, which this shim does not host"),
        "{message}"
    );
}

#[tokio::test]
async fn the_node_server_keeps_out_of_pod_cgroups() {
    let h = harness_with(
        crate::PER_NODE,
        RecordingOs::default(),
        FakeGuests::default(),
    )
    .await;
    h.create_in(
        &ns1(),
        "ns1",
        "pod1",
        &pod_spec("sandbox", "pod1", "/var/run/netns/cni-1"),
    )
    .await
    .unwrap();
    assert_eq!(
        h.os.calls(),
        ["create cgroup pod1/pod1 sandbox holds_process=false"]
    );
}

#[tokio::test]
async fn deleting_the_last_task_lets_the_host_exit() {
    let h = harness().await;
    h.create("c1").await.unwrap();
    h.create("c2").await.unwrap();
    h.delete("c1").await.unwrap();
    let notified = tokio::time::timeout(Duration::from_millis(50), h.shutdown.notified());
    assert!(notified.await.is_err(), "a task is still hosted");
    h.delete("c2").await.unwrap();
    let notified = tokio::time::timeout(Duration::from_secs(5), h.shutdown.notified());
    assert!(notified.await.is_ok());
    assert_eq!(h.service.task_count().await, 0);
}

#[tokio::test]
async fn stats_report_the_memory_limit() {
    let h = harness().await;
    let mut spec = container_spec("c1");
    spec["linux"]["resources"] = serde_json::json!({"memory": {"limit": 1048576}});
    h.create_in(&ns1(), "ns1", "c1", &spec).await.unwrap();
    let metrics = h.metrics("c1").await;
    assert_eq!(metrics.memory.usage.limit, 1 << 20);
    assert_eq!(metrics.memory.usage.usage, 0);
    h.start("c1").await.unwrap();
    let metrics = h.metrics("c1").await;
    assert_eq!(metrics.memory.usage.usage, 65536);

    // Without a limit, the default cap the engine applies is reported.
    let guests = FakeGuests {
        default_memory_limit: Some(512 << 20),
        ..FakeGuests::default()
    };
    let h = harness_with(crate::PER_NODE, RecordingOs::default(), guests).await;
    h.create("c2").await.unwrap();
    assert_eq!(h.metrics("c2").await.memory.usage.limit, 512 << 20);
}

#[tokio::test]
async fn a_drain_signals_every_task_and_refuses_new_ones() {
    let h = harness().await;
    h.create("runs").await.unwrap();
    h.start("runs").await.unwrap();
    h.create("created").await.unwrap();
    h.create("ended").await.unwrap();
    h.start("ended").await.unwrap();
    h.guests.last_started().end(0);
    assert_eq!(h.wait("ended").await.unwrap().exit_status, 0);

    assert!(h.service.begin_drain());
    assert!(!h.service.begin_drain(), "a second drain is not a first");
    h.service.signal_all(2).await;
    assert_eq!(
        h.guests.started.lock().unwrap()[0].signals.lock().unwrap()[..],
        [2]
    );
    // The fake guest ends only on 9 and 15, as a spinning guest would not on
    // other signals: SIGTERM ends it.
    h.service.signal_all(15).await;
    assert_eq!(h.wait("runs").await.unwrap().exit_status, 143);
    assert_eq!(h.wait("created").await.unwrap().exit_status, 130);
    assert_eq!(h.wait("ended").await.unwrap().exit_status, 0);

    let (code, message) = refusal(h.create("late").await);
    assert_eq!(code, Code::UNAVAILABLE);
    assert!(message.contains("received SIGTERM or SIGINT"), "{message}");
    for id in ["runs", "created", "ended"] {
        h.delete(id).await.unwrap();
    }
    let notified = tokio::time::timeout(Duration::from_secs(5), h.shutdown.notified());
    assert!(notified.await.is_ok());
}
