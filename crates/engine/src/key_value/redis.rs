//! A key-value store in a Redis server: a Spin store of type `redis` in
//! runtime config (keys as the component writes them, as Spin's), or
//! `wasi:keyvalue` with `WASI_KEYVALUE_REDIS_URL` (keys under a prefix,
//! see cloud.rs).
//!
//! Connections are pooled per process by URL: every store of every
//! container given the same URL shares one multiplexed connection (so the
//! per-node shim holds one per Redis server, not one per container). It is
//! driven by one thread of its own ([`runtime`]), made at the first open,
//! which runs at a container's create on the shim's own thread: so Redis is
//! reached from the shim's network namespace (the node's), not the pod's,
//! and that thread has no guest's confinement. The connection is opened at
//! the first command and again after one fails; each command waits at most
//! [`COMMAND_TIMEOUT`], so that a Redis that is down fails the request (the
//! component gets the error) instead of holding it. The pool's entry goes
//! with the last store using it.
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use anyhow::{anyhow, Result};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use tokio::runtime::{Handle, Runtime};

use super::{too_many_keys, Backend, MAX_KEYS};

/// How long one Redis command (with connecting) may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A store in a Redis server, on the process's shared connection to it.
pub(crate) struct RedisStore {
    server: Arc<Server>,
}

/// One Redis server (URL) of the pool.
struct Server {
    client: redis::Client,
    /// The URL without a password, for the log.
    shown: String,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

/// The process's connections, by URL; an entry lives while a store uses it.
static POOL: Mutex<Option<HashMap<String, Weak<Server>>>> = Mutex::new(None);

/// The thread that drives the pooled connections, made at the first open.
fn runtime() -> Result<Handle> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    let made = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match made {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(anyhow!("cannot start the Redis client's thread: {e}")),
    }
}

impl RedisStore {
    /// The store at `url` (`redis://host:port[/db]`), on the pooled
    /// connection to it; connects at first use.
    ///
    /// # Errors
    ///
    /// A URL the redis crate does not accept (the caller says where it came
    /// from), or no thread for the client.
    pub(crate) fn open(url: &str) -> Result<RedisStore> {
        runtime()?;
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pool.get_or_insert_with(HashMap::new);
        pool.retain(|_, server| server.strong_count() > 0);
        if let Some(server) = pool.get(url).and_then(Weak::upgrade) {
            return Ok(RedisStore { server });
        }
        let client = redis::Client::open(url).map_err(|e| anyhow!("{e}"))?;
        let info = client.get_connection_info();
        let shown = format!("{}", info.addr);
        let server = Arc::new(Server {
            client,
            shown,
            connection: tokio::sync::Mutex::new(None),
        });
        pool.insert(url.to_string(), Arc::downgrade(&server));
        Ok(RedisStore { server })
    }

    /// How many servers the process holds connections to (for tests).
    #[cfg(test)]
    fn pooled() -> usize {
        let pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        pool.as_ref()
            .map_or(0, |p| p.values().filter(|s| s.strong_count() > 0).count())
    }

    /// Runs `command` on the connection (opened if needed) on the client's
    /// thread, within the timeout; a failed command drops the connection
    /// for the next one.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(MultiplexedConnection) -> Fut + Send + 'static,
        Fut: Future<Output = redis::RedisResult<T>> + Send,
    {
        let handle = runtime().map_err(|e| e.to_string())?;
        let server = self.server.clone();
        let work = async move {
            let connection = {
                let mut slot = server.connection.lock().await;
                match slot.as_ref() {
                    Some(c) => c.clone(),
                    None => {
                        let c = server
                            .client
                            .get_multiplexed_async_connection()
                            .await
                            .map_err(|e| {
                                format!("cannot connect to Redis at {}: {e}", server.shown)
                            })?;
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            command(connection).await.map_err(|e| format!("Redis: {e}"))
        };
        let task = handle.spawn(async move {
            match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "Redis did not answer within {} s",
                    COMMAND_TIMEOUT.as_secs()
                )),
            }
        });
        let abort = task.abort_handle();
        // Dropped with the request: the command is not left running.
        let _abort = AbortOnDrop(abort);
        let result = match task.await {
            Ok(result) => result,
            Err(e) => Err(format!("the Redis command did not finish: {e}")),
        };
        if let Err(e) = &result {
            log::warn!("Redis at {}: {e}", self.server.shown);
            *self.server.connection.lock().await = None;
        }
        result
    }
}

/// Aborts the command's task if the request goes first.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `prefix` as a SCAN MATCH pattern of the keys starting with it.
fn pattern(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('*');
    p
}

#[async_trait]
impl Backend for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let key = key.to_string();
        self.run(|mut c| async move { c.get(key).await }).await
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        let key = key.to_string();
        self.run(|mut c| async move { c.set(key, value).await })
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let key = key.to_string();
        self.run(|mut c| async move { c.del(key).await }).await
    }

    async fn exists(&self, key: &str) -> Result<bool, String> {
        let key = key.to_string();
        self.run(|mut c| async move { c.exists(key).await }).await
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let pattern = pattern(prefix);
        let keys: Vec<String> = self
            .run(|mut c| async move {
                let mut keys = Vec::new();
                let mut iter: redis::AsyncIter<'_, String> = c.scan_match(pattern).await?;
                while let Some(key) = iter.next_item().await {
                    keys.push(key?);
                    if keys.len() > MAX_KEYS {
                        break;
                    }
                }
                Ok(keys)
            })
            .await?;
        if keys.len() > MAX_KEYS {
            return Err(too_many_keys());
        }
        Ok(keys)
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        let key = key.to_string();
        self.run(move |mut c| async move { c.incr(key, delta).await })
            .await
    }

    async fn swap_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
    ) -> Result<Option<Option<Vec<u8>>>, String> {
        let key = key.to_string();
        let expected = expected.map(<[u8]>::to_vec);
        // One script, so that the compare and the set are one step for
        // Redis: {1} when set, {0, value found} (nil if absent) when not.
        let (swapped, found): (i64, Option<Vec<u8>>) = self
            .run(move |mut c| async move {
                let mut eval = redis::cmd("EVAL");
                eval.arg(SWAP_IF).arg(1).arg(key);
                match expected {
                    Some(expected) => eval.arg(1).arg(expected),
                    None => eval.arg(0).arg(""),
                };
                eval.arg(value);
                let reply: Vec<redis::Value> = eval.query_async(&mut c).await?;
                let swapped = match reply.first() {
                    Some(redis::Value::Int(n)) => *n,
                    _ => 0,
                };
                let found = match reply.get(1) {
                    Some(value) => redis::from_redis_value(value)?,
                    None => None,
                };
                Ok((swapped, found))
            })
            .await?;
        Ok((swapped != 1).then_some(found))
    }
}

/// The compare-and-swap script: KEYS[1] the key, ARGV[1] 1 if a value is
/// expected (ARGV[2]) or 0 if absence is, ARGV[3] the new value.
const SWAP_IF: &str = r#"
local found = redis.call('GET', KEYS[1])
local expected = false
if ARGV[1] == '1' then expected = ARGV[2] end
if found ~= expected then return {0, found} end
redis.call('SET', KEYS[1], ARGV[3])
return {1}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_the_prefix_only() {
        assert_eq!(pattern("a/b"), "a/b*");
        assert_eq!(pattern("a*[?]\\"), "a\\*\\[\\?\\]\\\\*");
    }

    #[test]
    fn one_connection_per_url_while_used() {
        let before = RedisStore::pooled();
        let a = RedisStore::open("redis://127.0.0.1:1/").ok();
        let b = RedisStore::open("redis://127.0.0.1:1/").ok();
        assert!(a.is_some() && b.is_some());
        assert_eq!(RedisStore::pooled(), before + 1);
        drop((a, b));
        assert_eq!(RedisStore::pooled(), before);
        assert!(RedisStore::open("http://x").is_err());
    }
}
