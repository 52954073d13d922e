//! Spin runtime config, `/runtime-config.toml` in the image's rootfs (where
//! containerd-shim-spin reads it): the key-value stores behind labels,
//! `[key_value_store.<label>]`. Bounded like the manifest.
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::key_value::RedisStore;

/// Where runtime config is read from, in the rootfs.
pub(crate) const PATH: &str = "/runtime-config.toml";
/// The largest runtime config read.
const MAX_BYTES: u64 = 256 << 10;

/// The runtime config of an app (empty if the image has none).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RuntimeConfig {
    #[serde(default)]
    key_value_store: std::collections::BTreeMap<String, StoreConfig>,
}

#[derive(Debug, Deserialize)]
struct StoreConfig {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    url: Option<String>,
}

/// Reads [`PATH`] from `rootfs`, if there.
pub(crate) fn load(rootfs: &Path) -> Result<RuntimeConfig> {
    let Ok(host) = crate::rootfs::resolve(rootfs, PATH) else {
        return Ok(RuntimeConfig::default());
    };
    if !host.exists() {
        return Ok(RuntimeConfig::default());
    }
    let (file, _) = crate::rootfs::open_entrypoint_file(&host, PATH)?;
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read Spin runtime config {PATH}"))?;
    if text.len() as u64 > MAX_BYTES {
        bail!(
            "Spin runtime config {PATH} is larger than {} KiB",
            MAX_BYTES >> 10
        );
    }
    parse(&text)
}

fn parse(text: &str) -> Result<RuntimeConfig> {
    toml::from_str(text).with_context(|| format!("Spin runtime config {PATH} is not valid"))
}

/// A store runtime config defines.
pub(crate) enum Configured {
    /// `type = "memory"`: the container's own, as the default store.
    Memory,
    Redis(Arc<RedisStore>),
}

impl RuntimeConfig {
    /// The store of `label`, if runtime config defines it.
    pub(crate) fn store(&self, label: &str) -> Result<Option<Configured>> {
        let Some(config) = self.key_value_store.get(label) else {
            return Ok(None);
        };
        match config.kind.as_str() {
            "memory" => Ok(Some(Configured::Memory)),
            "redis" => {
                let Some(url) = &config.url else {
                    bail!("Spin runtime config {PATH}: [key_value_store.{label}] of type redis needs url = \"redis://host:port\"");
                };
                let store = RedisStore::open(url).with_context(|| {
                    format!("Spin runtime config {PATH}: [key_value_store.{label}] has url '{url}', which is not a Redis URL such as redis://127.0.0.1:6379")
                })?;
                Ok(Some(Configured::Redis(Arc::new(store))))
            }
            other => bail!(
                "Spin runtime config {PATH}: [key_value_store.{label}] has type '{other}'; wasishim provides redis and memory"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_read_by_label() {
        let Ok(c) = parse(
            "[key_value_store.default]\ntype = \"memory\"\n[key_value_store.x]\ntype = \"spin\"\n",
        ) else {
            panic!("parse")
        };
        assert!(matches!(c.store("default"), Ok(Some(_))));
        assert!(matches!(c.store("other"), Ok(None)));
        let e = c
            .store("x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("type 'spin'"), "{e}");
    }
}
