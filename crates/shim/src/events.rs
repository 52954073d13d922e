//! Task events published to containerd (/tasks/create, /tasks/start, /tasks/exit,
//! /tasks/delete).
//!
//! Publishing never blocks a request: events go into the publisher's queue, in
//! the order they were produced, and a lost containerd connection is retried by
//! the queue, not by the caller.

use std::time::SystemTime;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;

/// Publishes task events for one containerd namespace.
pub struct EventPublisher {
    remote: Option<RemotePublisher>,
    namespace: String,
}

impl EventPublisher {
    /// Connects to containerd's ttrpc address. Without one (a shim started by
    /// hand) events are only logged.
    pub async fn connect(ttrpc_address: Option<&str>, namespace: &str) -> EventPublisher {
        let remote = match ttrpc_address {
            Some(address) => match RemotePublisher::new(address).await {
                Ok(publisher) => Some(publisher),
                Err(err) => {
                    log::error!(
                        "cannot connect to containerd at {address} to publish events: {err}"
                    );
                    None
                }
            },
            None => None,
        };
        EventPublisher {
            remote,
            namespace: namespace.to_string(),
        }
    }

    pub async fn task_create(&self, container_id: &str, bundle: &str, pid: u32) {
        let event = TaskCreate {
            container_id: container_id.to_string(),
            bundle: bundle.to_string(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
    }

    pub async fn task_start(&self, container_id: &str, pid: u32) {
        let event = TaskStart {
            container_id: container_id.to_string(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event))
            .await;
    }

    pub async fn task_exit(&self, container_id: &str, pid: u32, code: u32, at: SystemTime) {
        let event = TaskExit {
            container_id: container_id.to_string(),
            id: container_id.to_string(),
            pid,
            exit_status: code,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
            .await;
    }

    pub async fn task_delete(&self, container_id: &str, pid: u32, code: u32, at: SystemTime) {
        let event = TaskDelete {
            container_id: container_id.to_string(),
            id: container_id.to_string(),
            pid,
            exit_status: code,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
            .await;
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        log::debug!("event {topic} in namespace {}", self.namespace);
        if let Some(remote) = &self.remote {
            if let Err(err) = remote
                .publish(Context::default(), topic, &self.namespace, event)
                .await
            {
                log::warn!("dropped event {topic}: {err}");
            }
        }
    }
}

/// A protobuf timestamp for `at`.
pub fn timestamp(at: SystemTime) -> Timestamp {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
        ..Default::default()
    }
}
