//! A key-value store in Redis (`[key_value_store.<label>] type = "redis"`
//! in runtime config), as Spin's: keys as the component writes them, no
//! prefix, so every container given the same `url` shares them. One
//! multiplexed connection per store of a container, opened at the first
//! use and again after it fails; each command waits at most
//! [`COMMAND_TIMEOUT`], so that a Redis that is down fails the request
//! (the component gets the error) instead of holding it.
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use tokio::sync::Mutex;

use super::key_value::{check_key, Backend};

/// How long one Redis command (with connecting) may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The most keys `get-keys` returns.
const MAX_KEYS: usize = 100_000;

/// A store in a Redis server.
pub(crate) struct RedisStore {
    client: redis::Client,
    label: String,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl RedisStore {
    /// The store at `url` (`redis://host:port[/db]`); connects at first use.
    ///
    /// # Errors
    ///
    /// A URL the redis crate does not accept.
    pub(crate) fn open(url: &str, label: &str) -> Result<Arc<dyn Backend>> {
        let client = redis::Client::open(url).with_context(|| {
            format!("Spin runtime config: [key_value_store.{label}] has url '{url}', which is not a Redis URL such as redis://127.0.0.1:6379")
        })?;
        Ok(Arc::new(RedisStore {
            client,
            label: label.to_string(),
            connection: Mutex::new(None),
        }))
    }

    /// Runs `command` on the connection (opened if needed) within the
    /// timeout; a failed command drops the connection for the next one.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let connection = {
                let mut slot = self.connection.lock().await;
                match slot.as_ref() {
                    Some(c) => c.clone(),
                    None => {
                        let c = self
                            .client
                            .get_multiplexed_async_connection()
                            .await
                            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            command(connection).await.map_err(|e| format!("Redis: {e}"))
        };
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "Redis did not answer within {} s",
                COMMAND_TIMEOUT.as_secs()
            )),
        };
        if let Err(e) = &result {
            log::warn!("key-value store '{}': {e}", self.label);
            *self.connection.lock().await = None;
        }
        result
    }
}

#[async_trait]
impl Backend for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.run(|mut c| async move { c.get(key).await }).await
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        check_key(key)?;
        self.run(|mut c| async move { c.set(key, value).await })
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        self.run(|mut c| async move { c.del(key).await }).await
    }

    async fn exists(&self, key: &str) -> Result<bool, String> {
        self.run(|mut c| async move { c.exists(key).await }).await
    }

    async fn keys(&self) -> Result<Vec<String>, String> {
        let keys: Vec<String> = self
            .run(|mut c| async move {
                let mut keys = Vec::new();
                let mut iter: redis::AsyncIter<'_, String> = c.scan().await?;
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
            return Err(format!(
                "the store has more than {MAX_KEYS} keys, more than get-keys returns"
            ));
        }
        Ok(keys)
    }
}
