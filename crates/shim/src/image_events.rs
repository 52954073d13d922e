//! The per-node server precompiles images as containerd records them: it
//! subscribes to containerd's `/images/create` and `/images/update` events
//! (every namespace) and hands each image to `precompile.rs`, in the
//! background, so that the first pod of a pulled or imported Wasm image
//! starts from the cache.
//!
//! Bounded and never in a request's way: images wait in a queue of
//! [`QUEUE_CAP`] (further ones are dropped with a log line: their first
//! container compiles them), one is precompiled at a time, and its
//! compilation takes a compile slot in the turn of the image's namespace
//! (the tenant of that namespace's containers without a pod): the images
//! one namespace imports count as its own compiles, so another tenant's
//! container still gets the next free slot. Failures are logged, never fatal. An image containerd 1.x records
//! before unpacking it is retried until it is unpacked, for a while.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::SubscribeRequest;
use prost::Message;
use tokio::sync::mpsc;
use wasishim_engine::{Precompiled, WasmEngine};

use crate::precompile::{precompile_image, ImageRef, PrecompileError};

/// Images waiting to be precompiled, at most.
pub const QUEUE_CAP: usize = 64;
/// How long an image not yet unpacked is waited for, and how often it is
/// looked at meanwhile.
const UNPACK_WAIT: Duration = Duration::from_secs(60);
const UNPACK_POLL: Duration = Duration::from_millis(500);
/// Pause before subscribing again after the stream ended (containerd
/// restarted) or could not be opened.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

const TOPICS: [&str; 2] = ["/images/create", "/images/update"];

/// containerd's `ImageCreate` and `ImageUpdate` events (`api/events/image.proto`),
/// which containerd-client does not generate: both hold the image's name as
/// field 1 (their labels, field 2, are skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct ImageEvent {
    #[prost(string, tag = "1")]
    name: String,
}

/// Starts the subscription and the precompiling task on the current tokio
/// runtime, for containerd at `address` (its gRPC socket). They end with
/// the runtime.
pub fn start(engine: WasmEngine, address: String) {
    if address.is_empty() {
        log::info!("no containerd address: pulled images are not precompiled");
        return;
    }
    let (sender, receiver) = mpsc::channel(QUEUE_CAP);
    let queued = Arc::new(Mutex::new(HashSet::new()));
    tokio::spawn(subscribe(address.clone(), sender, queued.clone()));
    tokio::spawn(precompile_queued(engine, address, receiver, queued));
}

type Queued = Arc<Mutex<HashSet<(String, String)>>>;

fn lock(queued: &Queued) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
    queued.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn subscribe(address: String, sender: mpsc::Sender<(String, String)>, queued: Queued) {
    let path = address
        .strip_prefix("unix://")
        .unwrap_or(&address)
        .to_string();
    loop {
        match listen(&path, &sender, &queued).await {
            Ok(()) => log::info!("containerd's event stream ended: subscribing again"),
            Err(e) => log::warn!(
                "cannot follow containerd's image events ({e:#}): pulled images are not precompiled until it is back"
            ),
        }
        if sender.is_closed() {
            return;
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

/// Follows the event stream until it ends.
async fn listen(
    path: &str,
    sender: &mpsc::Sender<(String, String)>,
    queued: &Queued,
) -> anyhow::Result<()> {
    let channel = containerd_client::connect(path).await?;
    let filters = TOPICS.iter().map(|t| format!("topic=={t:?}")).collect();
    let mut stream = EventsClient::new(channel)
        .subscribe(SubscribeRequest { filters })
        .await
        .map_err(|s| anyhow::anyhow!("{} ({:?})", s.message(), s.code()))?
        .into_inner();
    log::info!(
        "precompiling images as containerd records them ({})",
        TOPICS.join(", ")
    );
    loop {
        let envelope = match stream.message().await {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Ok(()),
            Err(s) => anyhow::bail!("{} ({:?})", s.message(), s.code()),
        };
        let Some(name) = envelope
            .event
            .as_ref()
            .and_then(|any| image_name(&envelope.topic, &any.value))
        else {
            continue;
        };
        let key = (envelope.namespace.clone(), name);
        if !lock(queued).insert(key.clone()) {
            continue; // already waiting
        }
        if let Err(e) = sender.try_send(key.clone()) {
            lock(queued).remove(&key);
            match e {
                mpsc::error::TrySendError::Full(_) => log::warn!(
                    "image {} ({}): not precompiled, {QUEUE_CAP} images wait already; its first container compiles it",
                    key.1,
                    key.0
                ),
                mpsc::error::TrySendError::Closed(_) => return Ok(()),
            }
        }
    }
}

/// The image an event of `topic` names.
fn image_name(topic: &str, value: &[u8]) -> Option<String> {
    if !TOPICS.contains(&topic) {
        return None;
    }
    Some(ImageEvent::decode(value).ok()?.name).filter(|n| !n.is_empty())
}

async fn precompile_queued(
    engine: WasmEngine,
    address: String,
    mut receiver: mpsc::Receiver<(String, String)>,
    queued: Queued,
) {
    while let Some((namespace, name)) = receiver.recv().await {
        lock(&queued).remove(&(namespace.clone(), name.clone()));
        let image = ImageRef {
            address: address.clone(),
            namespace,
            name,
        };
        precompile_one(&engine, &image).await;
    }
}

async fn precompile_one(engine: &WasmEngine, image: &ImageRef) {
    let started = tokio::time::Instant::now();
    let shown = format!("image {} (namespace {})", image.name, image.namespace);
    loop {
        match precompile_image(engine, image, &image.namespace).await {
            Ok(report) => {
                for (code, done) in report.code {
                    match done {
                        Precompiled::Compiled => {
                            log::info!("precompiled {code} in {} ms", started.elapsed().as_millis())
                        }
                        Precompiled::AlreadyCached => {
                            log::info!("{code}: already compiled")
                        }
                    }
                }
                return;
            }
            Err(PrecompileError::NotUnpacked(why)) if started.elapsed() < UNPACK_WAIT => {
                log::debug!("{shown}: {why}; waiting");
                tokio::time::sleep(UNPACK_POLL).await;
            }
            Err(PrecompileError::NotWasm(why)) => {
                log::info!("{shown}: not precompiled: {why}");
                return;
            }
            Err(e) => {
                log::warn!("{shown}: not precompiled: {e}; its first container compiles it");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_events() {
        let create = ImageEvent {
            name: "docker.io/library/hello:latest".to_string(),
        }
        .encode_to_vec();
        assert_eq!(
            image_name("/images/create", &create).as_deref(),
            Some("docker.io/library/hello:latest")
        );
        assert_eq!(
            image_name("/images/update", &create).as_deref(),
            Some("docker.io/library/hello:latest")
        );
        assert_eq!(image_name("/images/delete", &create), None);
        assert_eq!(image_name("/images/create", b"\xff\xff"), None);
    }
}
