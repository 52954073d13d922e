//! Task events published to containerd (/tasks/create, /tasks/start, /tasks/exit,
//! /tasks/delete).
//!
//! Publishing never blocks a request, nor waits: an event goes into this
//! publisher's own queue at once (callers may hold the service's lock), in
//! the order it was produced, and one task forwards the queue to containerd
//! in that order. A containerd that stops taking events delays only that
//! task; once [`QUEUE`] events wait, further ones are dropped and counted in
//! the log. A lost containerd connection is retried by the forwarding, not
//! by the caller.
//!
//! Each event's `Any` is built here with its type name written out, not by
//! `RemotePublisher::publish`, which asks protobuf's reflection for the name:
//! the first such call parses the descriptors of the events' proto files,
//! about 490 KiB of heap that an idle per-pod shim then keeps (measured with
//! `mallinfo2` around the first event: a third of its private memory).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::mpsc;

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

/// Events waiting to be forwarded, at most.
pub const QUEUE: usize = 4096;

/// Where queued events go: containerd's event service, or a test's stand-in.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Hands one event to containerd; may take as long as containerd does.
    async fn forward(&self, request: ForwardRequest) -> Result<(), String>;
}

#[async_trait]
impl EventSink for RemotePublisher {
    async fn forward(&self, request: ForwardRequest) -> Result<(), String> {
        // `forward` queues the envelope as `publish` does, in order, with
        // the remote queue's retries.
        Events::forward(self, &TtrpcContext::default(), request)
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

/// Publishes task events, each in its container's containerd namespace.
pub struct EventPublisher {
    /// The forwarding task's queue; `None` without containerd.
    queue: Option<mpsc::Sender<ForwardRequest>>,
    dropped: AtomicU64,
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
        match remote {
            Some(remote) => EventPublisher::with_sink(Arc::new(remote)),
            None => EventPublisher::unqueued(),
        }
    }

    /// A publisher whose events are only logged.
    fn unqueued() -> EventPublisher {
        EventPublisher {
            queue: None,
            dropped: AtomicU64::new(0),
            #[cfg(test)]
            published: std::sync::Mutex::default(),
        }
    }

    /// A publisher forwarding to `sink` from a task of the current runtime.
    pub fn with_sink(sink: Arc<dyn EventSink>) -> EventPublisher {
        let (queue, mut events) = mpsc::channel::<ForwardRequest>(QUEUE);
        tokio::spawn(async move {
            while let Some(request) = events.recv().await {
                if let Err(err) = sink.forward(request).await {
                    log::warn!("dropped an event: {err}");
                }
            }
        });
        EventPublisher {
            queue: Some(queue),
            ..EventPublisher::unqueued()
        }
    }

    pub fn task_create(&self, namespace: &str, container_id: &str, bundle: &str, pid: u32) {
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
        );
    }

    pub fn task_start(&self, namespace: &str, container_id: &str, pid: u32) {
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
        );
    }

    /// The task's guest ended (/tasks/exit) or the task was deleted
    /// (/tasks/delete): the two events carry the same exit fields.
    pub fn task_ended(
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
            }
            Ended::Delete => {
                let event = ended!(TaskDelete);
                self.publish(
                    namespace,
                    topics::TASK_DELETE_EVENT_TOPIC,
                    TASK_DELETE_TYPE,
                    &event,
                )
            }
        }
    }

    /// The guest ran out of memory under its limit; sent before its exit,
    /// as the kernel's OOM notification precedes a killed process's exit.
    pub fn task_oom(&self, namespace: &str, container_id: &str) {
        let event = TaskOOM {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.publish(
            namespace,
            topics::TASK_OOM_EVENT_TOPIC,
            TASK_OOM_TYPE,
            &event,
        );
    }

    /// Queues `event`, of protobuf type `type_name` (its full name, which
    /// containerd resolves), for containerd. Never waits.
    fn publish<M: Message>(&self, namespace: &str, topic: &str, type_name: &str, event: &M) {
        log::debug!("event {topic} in namespace {namespace}");
        #[cfg(test)]
        if let Ok(mut published) = self.published.lock() {
            published.push(format!("{topic} {namespace}"));
        }
        let Some(queue) = &self.queue else {
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
        if let Err(err) = queue.try_send(request) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Once, then every thousandth: a stuck containerd would flood the log.
            if dropped % 1000 == 1 {
                log::warn!(
                    "dropped event {topic} ({dropped} so far): containerd is not taking events ({err})"
                );
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
