//! Task events published to containerd (/tasks/create, /tasks/start, /tasks/exit,
//! /tasks/delete).
//!
//! Publishing never blocks a request: events go into the publisher's queue, in
//! the order they were produced, and a lost containerd connection is retried by
//! the queue, not by the caller.
//!
//! Each event's `Any` is built here with its type name written out, not by
//! `RemotePublisher::publish`, which asks protobuf's reflection for the name:
//! the first such call parses the descriptors of the events' proto files,
//! about 490 KiB of heap that an idle per-pod shim then keeps (measured with
//! `mallinfo2` around the first event: a third of its private memory).

use std::time::SystemTime;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskOOM, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::Events;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;

// The protobuf full names containerd resolves the events' types by (checked
// against protobuf's own in the tests).
const TASK_CREATE_TYPE: &str = "containerd.events.TaskCreate";
const TASK_START_TYPE: &str = "containerd.events.TaskStart";
const TASK_EXIT_TYPE: &str = "containerd.events.TaskExit";
const TASK_OOM_TYPE: &str = "containerd.events.TaskOOM";
const TASK_DELETE_TYPE: &str = "containerd.events.TaskDelete";

/// Which of the two events that carry an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// /tasks/exit: the guest ended.
    Exit,
    /// /tasks/delete: the task is gone.
    Delete,
}

/// Publishes task events, each in its container's containerd namespace.
pub struct EventPublisher {
    remote: Option<RemotePublisher>,
    /// Unit tests read the topics published, in order.
    #[cfg(test)]
    pub published: std::sync::Mutex<Vec<String>>,
}

impl EventPublisher {
    /// Connects to containerd's ttrpc address. Without one (a shim started by
    /// hand) events are only logged.
    pub async fn connect(ttrpc_address: Option<&str>) -> EventPublisher {
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
            #[cfg(test)]
            published: std::sync::Mutex::default(),
        }
    }

    pub async fn task_create(&self, namespace: &str, container_id: &str, bundle: &str, pid: u32) {
        let event = TaskCreate {
            container_id: container_id.to_string(),
            bundle: bundle.to_string(),
            pid,
            ..Default::default()
        };
        self.publish(
            namespace,
            topics::TASK_CREATE_EVENT_TOPIC,
            TASK_CREATE_TYPE,
            &event,
        )
        .await;
    }

    pub async fn task_start(&self, namespace: &str, container_id: &str, pid: u32) {
        let event = TaskStart {
            container_id: container_id.to_string(),
            pid,
            ..Default::default()
        };
        self.publish(
            namespace,
            topics::TASK_START_EVENT_TOPIC,
            TASK_START_TYPE,
            &event,
        )
        .await;
    }

    /// The task's guest ended (/tasks/exit) or the task was deleted
    /// (/tasks/delete): the two events carry the same exit fields.
    pub async fn task_ended(
        &self,
        event: Ended,
        namespace: &str,
        container_id: &str,
        pid: u32,
        code: u32,
        at: SystemTime,
    ) {
        // TaskExit and TaskDelete are distinct messages with the same fields.
        macro_rules! ended {
            ($message:ident) => {
                $message {
                    container_id: container_id.to_string(),
                    id: container_id.to_string(),
                    pid,
                    exit_status: code,
                    exited_at: Some(timestamp(at)).into(),
                    ..Default::default()
                }
            };
        }
        match event {
            Ended::Exit => {
                let event = ended!(TaskExit);
                self.publish(
                    namespace,
                    topics::TASK_EXIT_EVENT_TOPIC,
                    TASK_EXIT_TYPE,
                    &event,
                )
                .await
            }
            Ended::Delete => {
                let event = ended!(TaskDelete);
                self.publish(
                    namespace,
                    topics::TASK_DELETE_EVENT_TOPIC,
                    TASK_DELETE_TYPE,
                    &event,
                )
                .await
            }
        }
    }

    /// The guest ran out of memory under its limit; sent before its exit,
    /// as the kernel's OOM notification precedes a killed process's exit.
    pub async fn task_oom(&self, namespace: &str, container_id: &str) {
        let event = TaskOOM {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.publish(
            namespace,
            topics::TASK_OOM_EVENT_TOPIC,
            TASK_OOM_TYPE,
            &event,
        )
        .await;
    }

    /// Queues `event`, of protobuf type `type_name` (its full name, which
    /// containerd resolves), for containerd.
    async fn publish<M: Message>(&self, namespace: &str, topic: &str, type_name: &str, event: &M) {
        log::debug!("event {topic} in namespace {namespace}");
        #[cfg(test)]
        if let Ok(mut published) = self.published.lock() {
            published.push(format!("{topic} {namespace}"));
        }
        let Some(remote) = &self.remote else {
            return;
        };
        let value = match event.write_to_bytes() {
            Ok(value) => value,
            Err(err) => {
                log::warn!("dropped event {topic}: cannot encode it: {err}");
                return;
            }
        };
        let envelope = Envelope {
            timestamp: Some(timestamp(SystemTime::now())).into(),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(Any {
                type_url: type_name.to_string(),
                value,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let request = ForwardRequest {
            envelope: Some(envelope).into(),
            ..Default::default()
        };
        // `forward` queues the envelope as `publish` does, in order, with
        // the queue's retries.
        if let Err(err) = remote.forward(&TtrpcContext::default(), request).await {
            log::warn!("dropped event {topic}: {err}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::MessageFull;

    #[test]
    fn type_names_are_the_protobuf_full_names() {
        assert_eq!(TASK_CREATE_TYPE, TaskCreate::descriptor().full_name());
        assert_eq!(TASK_START_TYPE, TaskStart::descriptor().full_name());
        assert_eq!(TASK_EXIT_TYPE, TaskExit::descriptor().full_name());
        assert_eq!(TASK_OOM_TYPE, TaskOOM::descriptor().full_name());
        assert_eq!(TASK_DELETE_TYPE, TaskDelete::descriptor().full_name());
    }
}
