//! Which task a request names: its containerd namespace and id.
//!
//! One server may host containers of several namespaces with the same id, so
//! a task is keyed by both. containerd 2.x names the namespace in each
//! request's ttrpc metadata; 1.x sends none, so the namespace is resolved
//! from the bundle path at create, then from the connection the request came
//! on, then from the only task with that id (see [`Keys::key`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, ConnectionDataExt};

/// containerd's ttrpc metadata key carrying the request's namespace.
const NAMESPACE_METADATA: &str = "containerd-namespace-ttrpc";

/// Key under which [`ConnectionIds`] stores a connection's id.
const CONNECTION_ID: &str = "wasishim.connection-id";

/// A task: its containerd namespace and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    pub namespace: String,
    pub id: String,
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// Numbers every accepted connection, so that requests can be told apart by
/// the connection they came on.
#[derive(Debug, Default)]
pub struct ConnectionIds(AtomicU64);

impl ttrpc::AcceptHook for ConnectionIds {
    fn on_accept(&self, _fd: std::os::fd::RawFd) -> Result<ttrpc::HookOutput, ttrpc::HookError> {
        let id = self.0.fetch_add(1, Ordering::Relaxed);
        let mut data = ttrpc::ConnectionData::new();
        data.insert(CONNECTION_ID.to_string(), Box::new(id));
        Ok(ttrpc::HookOutput {
            data,
            payload_transform: None,
        })
    }
}

/// Who sent a request: the namespace it names, if any, and its connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub namespace: Option<String>,
    pub connection: Option<u64>,
}

impl Caller {
    pub fn of(ctx: &TtrpcContext) -> Caller {
        Caller {
            namespace: ctx
                .metadata
                .get(NAMESPACE_METADATA)
                .and_then(|values| values.first())
                .filter(|ns| !ns.is_empty())
                .cloned(),
            connection: ctx.connection_data.get_typed::<u64>(CONNECTION_ID).copied(),
        }
    }
}

/// Resolves requests to task keys, remembering each connection's namespace.
pub struct Keys {
    /// Namespace of requests that carry none (the `-namespace` the shim was started with).
    default_namespace: String,
    /// Namespace of the task each connection created (see [`Keys::create_key`]).
    connection_namespaces: Mutex<HashMap<u64, String>>,
}

impl Keys {
    pub fn new(default_namespace: &str) -> Keys {
        Keys {
            default_namespace: default_namespace.to_string(),
            connection_namespaces: Mutex::default(),
        }
    }

    /// The key of a task being created. Without metadata, the namespace is
    /// the bundle's parent directory (containerd lays bundles out as
    /// `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`), and it is
    /// remembered for the connection: containerd 1.x opens one connection per
    /// task, so later requests on it belong to the same namespace.
    pub fn create_key(&self, caller: &Caller, id: &str, bundle: &Path) -> TaskKey {
        let namespace = caller
            .namespace
            .clone()
            .or_else(|| {
                bundle
                    .parent()
                    .and_then(|dir| dir.file_name())
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| self.default_namespace.clone());
        if let Some(connection) = caller.connection {
            if let Ok(mut namespaces) = self.connection_namespaces.lock() {
                namespaces.insert(connection, namespace.clone());
            }
        }
        TaskKey {
            namespace,
            id: id.to_string(),
        }
    }

    /// The key of the task a request names: by metadata, else by the
    /// namespace its connection created a task in, else the only task with
    /// that id among `hosted`, else the shim's own namespace.
    pub fn key<'a>(
        &self,
        caller: &Caller,
        id: &str,
        hosted: impl IntoIterator<Item = &'a TaskKey>,
    ) -> TaskKey {
        let from_connection = || {
            let connection = caller.connection?;
            self.connection_namespaces
                .lock()
                .ok()?
                .get(&connection)
                .cloned()
        };
        let only_match = || {
            let mut matches = hosted.into_iter().filter(|k| k.id == id);
            match (matches.next(), matches.next()) {
                (Some(key), None) => Some(key.namespace.clone()),
                _ => None,
            }
        };
        let namespace = caller
            .namespace
            .clone()
            .or_else(from_connection)
            .or_else(only_match)
            .unwrap_or_else(|| self.default_namespace.clone());
        TaskKey {
            namespace,
            id: id.to_string(),
        }
    }

    /// Forgets the caller's connection once its task is deleted.
    pub fn forget(&self, caller: &Caller) {
        if let Some(connection) = caller.connection {
            if let Ok(mut namespaces) = self.connection_namespaces.lock() {
                namespaces.remove(&connection);
            }
        }
    }
}

/// A request context as containerd's would arrive: with the namespace
/// metadata (2.x) or without (1.x), on a numbered connection.
#[cfg(test)]
pub fn request_context(namespace: Option<&str>, connection: Option<u64>) -> TtrpcContext {
    let mut ctx = TtrpcContext::default();
    if let Some(namespace) = namespace {
        ctx.metadata
            .insert(NAMESPACE_METADATA.to_string(), vec![namespace.to_string()]);
    }
    if let Some(connection) = connection {
        let mut data = ttrpc::ConnectionData::new();
        data.insert(CONNECTION_ID.to_string(), Box::new(connection));
        ctx.connection_data = std::sync::Arc::new(data);
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(namespace: &str, id: &str) -> TaskKey {
        TaskKey {
            namespace: namespace.into(),
            id: id.into(),
        }
    }

    fn caller(namespace: Option<&str>, connection: Option<u64>) -> Caller {
        Caller {
            namespace: namespace.map(str::to_string),
            connection,
        }
    }

    const BUNDLE: &str = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1";

    #[test]
    fn caller_is_read_from_the_request() {
        let ctx = request_context(Some("ns1"), Some(3));
        assert_eq!(Caller::of(&ctx), caller(Some("ns1"), Some(3)));
        assert_eq!(Caller::of(&request_context(None, None)), Caller::default());
    }

    #[test]
    fn metadata_names_the_namespace() {
        let keys = Keys::new("default");
        let created = keys.create_key(&caller(Some("ns1"), None), "c1", Path::new(BUNDLE));
        assert_eq!(created, key("ns1", "c1"));
        let hosted = [key("other", "c1")];
        assert_eq!(
            keys.key(&caller(Some("ns1"), None), "c1", &hosted),
            key("ns1", "c1")
        );
    }

    #[test]
    fn without_metadata_create_takes_the_bundle_directory() {
        let keys = Keys::new("default");
        let created = keys.create_key(&caller(None, Some(7)), "c1", Path::new(BUNDLE));
        assert_eq!(created, key("k8s.io", "c1"));
        // Later requests on the same connection resolve to it, even with
        // another task of that id hosted in another namespace.
        let hosted = [key("k8s.io", "c1"), key("default", "c1")];
        assert_eq!(
            keys.key(&caller(None, Some(7)), "c1", &hosted),
            key("k8s.io", "c1")
        );
    }

    #[test]
    fn without_metadata_or_connection_the_only_match_wins() {
        let keys = Keys::new("default");
        let hosted = [key("k8s.io", "c1"), key("k8s.io", "c2")];
        assert_eq!(
            keys.key(&caller(None, Some(9)), "c1", &hosted),
            key("k8s.io", "c1")
        );
        // Two tasks of that id: ambiguous, so the shim's own namespace.
        let hosted = [key("k8s.io", "c1"), key("moby", "c1")];
        assert_eq!(
            keys.key(&caller(None, None), "c1", &hosted),
            key("default", "c1")
        );
    }

    #[test]
    fn a_forgotten_connection_falls_back_to_the_only_match() {
        let keys = Keys::new("default");
        keys.create_key(&caller(None, Some(1)), "c1", Path::new(BUNDLE));
        keys.forget(&caller(None, Some(1)));
        let hosted = [key("moby", "c1")];
        assert_eq!(
            keys.key(&caller(None, Some(1)), "c1", &hosted),
            key("moby", "c1")
        );
    }
}
