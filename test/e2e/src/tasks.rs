//! containerd's Tasks and Events APIs, called directly over its gRPC
//! socket: kill a task and see its `/tasks/exit` event without a `ctr`
//! process in between, so the time from the kill request to the exit can be
//! measured in milliseconds.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use containerd_client::events::TaskExit;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{KillRequest, SubscribeRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use prost::Message;

use crate::containerd::PrivateContainerd;

/// How long a kill may take to answer, and its exit to be published.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Kills tasks of an instance, and sees them exit.
///
/// Its `/tasks/exit` subscription starts at [`Tasks::connect`]; exits
/// published from then on are seen, whoever caused or deleted them.
pub struct Tasks {
    rt: tokio::runtime::Runtime,
    client: TasksClient<Channel>,
    exits: mpsc::Receiver<Published>,
}

/// A `/tasks/exit` event and when it arrived here.
struct Published {
    namespace: String,
    exit: TaskExit,
    arrived: Instant,
}

/// A task's end after a kill, as its `/tasks/exit` event says.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// The exit status (137 for SIGKILL).
    pub status: u32,
    /// From the kill request being sent to the exit time the shim reported.
    pub exited_after: Duration,
    /// From the kill request being sent to the event arriving here.
    pub published_after: Duration,
}

impl Tasks {
    /// Connects to the instance's socket and subscribes to `/tasks/exit`
    /// (in all namespaces). Takes about 100 ms, for the subscription to
    /// be in place.
    pub fn connect(cd: &PrivateContainerd) -> Result<Tasks> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt
            .block_on(containerd_client::connect(cd.address()))
            .with_context(|| format!("connecting to {}", cd.address().display()))?;
        let (tx, exits) = mpsc::channel();
        let address = cd.address();
        // Its own thread, runtime and connection: the stream is read while
        // the caller waits for something else.
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(forward_exits(address, tx));
        });
        // containerd answers a subscription only with its first event, so
        // there is nothing to wait for but the request to have gone out.
        std::thread::sleep(Duration::from_millis(100));
        Ok(Tasks {
            rt,
            client: TasksClient::new(channel),
            exits,
        })
    }

    /// Sends `signal` to the init process of task `id` of `namespace` and
    /// waits for its `/tasks/exit`. Fails if the kill fails, or no exit is
    /// published within 30 s.
    pub fn kill_and_wait(&self, namespace: &str, id: &str, signal: u32) -> Result<Exit> {
        let mut kill = Request::new(KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal,
            all: false,
        });
        kill.metadata_mut()
            .insert("containerd-namespace", namespace.parse()?);
        let mut client = self.client.clone();
        let (sent_at, sent) = (SystemTime::now(), Instant::now());
        let killed = self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, client.kill(kill)).await });
        match killed {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => bail!(
                "kill -{signal} of task {id}: {} ({:?})",
                status.message(),
                status.code()
            ),
            Err(_) => bail!("kill -{signal} of task {id} took over {CALL_TIMEOUT:?}"),
        }
        let published = loop {
            let left = CALL_TIMEOUT.saturating_sub(sent.elapsed());
            let event = self
                .exits
                .recv_timeout(left)
                .with_context(|| format!("no /tasks/exit of {id} within {CALL_TIMEOUT:?}"))?;
            if event.namespace == namespace && event.exit.container_id == id {
                break event;
            }
        };
        let exited_at = published
            .exit
            .exited_at
            .map(|t| SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
            .context("the /tasks/exit event has no exit time")?;
        Ok(Exit {
            status: published.exit.exit_status,
            exited_after: exited_at.duration_since(sent_at).unwrap_or_default(),
            published_after: published.arrived.duration_since(sent),
        })
    }
}

/// Reads `/tasks/exit` events of the containerd at `address` into `tx`
/// until either ends.
async fn forward_exits(address: PathBuf, tx: mpsc::Sender<Published>) {
    let channel = match containerd_client::connect(&address).await {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("wasishim-e2e: connecting to {}: {e}", address.display());
            return;
        }
    };
    let request = SubscribeRequest {
        filters: vec![r#"topic=="/tasks/exit""#.to_string()],
    };
    let reply = match EventsClient::new(channel).subscribe(request).await {
        Ok(reply) => reply,
        Err(status) => {
            eprintln!("wasishim-e2e: subscribing to /tasks/exit: {status}");
            return;
        }
    };
    let mut stream = reply.into_inner();
    while let Ok(Some(envelope)) = stream.message().await {
        let arrived = Instant::now();
        let Some(event) = envelope.event else {
            continue;
        };
        let Ok(exit) = TaskExit::decode(event.value.as_slice()) else {
            continue;
        };
        let published = Published {
            namespace: envelope.namespace,
            exit,
            arrived,
        };
        if tx.send(published).is_err() {
            return;
        }
    }
}
