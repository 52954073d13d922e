//! Spin's OCI artifact of an app, as `spin registry push` writes it (Spin
//! 3): each component's Wasm in a layer, a locked app (`spin.lock` JSON)
//! naming them by digest, in a layer of its own, and an OCI config labelled
//! with its digest. Written from the app's `spin.toml` and the directory of
//! its components, for the HTTP trigger, variables, outbound hosts and
//! key-value stores (what the test app uses).
//!
//! ```no_run
//! let toml = std::fs::read_to_string("test/fixtures/spin/spin.toml")?;
//! let artifact = wasishim_image::spin_artifact(
//!     "127.0.0.1:5000/spin-app:v1",
//!     &toml,
//!     std::path::Path::new("test/fixtures/out/spin"),
//! )?;
//! # Ok::<(), anyhow::Error>(())
//! ```
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::artifact::{Artifact, ArtifactForm, MEDIA_SPIN_LOCKED_APP};
use crate::digest;

/// The Spin artifact named `name` of the app whose manifest is
/// `manifest` (spin.toml text), each component's `source` read from `dir`.
///
/// Fails for a manifest that is not TOML, a component source that is not a
/// file, or a file that cannot be read.
pub fn spin_artifact(name: &str, manifest: &str, dir: &Path) -> Result<Artifact> {
    let toml: toml::Table = toml::from_str(manifest).context("spin.toml is not TOML")?;
    let mut artifact = Artifact::new(name, ArtifactForm::Spin);
    let mut pushed = Vec::new();
    let mut components = Vec::new();
    let empty = toml::Table::new();
    let table = |key: &str| toml.get(key).and_then(|v| v.as_table()).unwrap_or(&empty);
    for (id, c) in table("component") {
        let Some(source) = c.get("source").and_then(|s| s.as_str()) else {
            bail!("component {id}: source is not a file path");
        };
        let path = dir.join(source.trim_start_matches("./"));
        let wasm = std::fs::read(&path)
            .with_context(|| format!("component {id}: reading {}", path.display()))?;
        let d = digest(&wasm);
        if !pushed.contains(&d) {
            pushed.push(d.clone());
            artifact = artifact.layer(ArtifactForm::Spin.wasm_media_type(), wasm, None);
        }
        let strings = |key: &str| -> Vec<Value> {
            c.get(key)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str())
                        .map(Value::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let config: BTreeMap<String, Value> = c
            .get("variables")
            .and_then(|v| v.as_table())
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| Some((k.clone(), Value::from(v.as_str()?))))
                    .collect()
            })
            .unwrap_or_default();
        components.push(json!({
            "id": id,
            "metadata": {
                "allowed_outbound_hosts": strings("allowed_outbound_hosts"),
                "key_value_stores": strings("key_value_stores"),
                "databases": strings("sqlite_databases"),
                "ai_models": strings("ai_models"),
            },
            "source": { "content_type": "application/wasm", "digest": d },
            "config": config,
        }));
    }
    let mut triggers = Vec::new();
    for (kind, list) in table("trigger") {
        for (i, t) in list.as_array().into_iter().flatten().enumerate() {
            let config: Value = serde_json::to_value(t).context("trigger to JSON")?;
            let component = config["component"].as_str().unwrap_or("none").to_string();
            triggers.push(json!({
                "id": format!("{kind}-{component}-{i}"),
                "trigger_type": kind,
                "trigger_config": config,
            }));
        }
    }
    let mut variables = Map::new();
    for (name, v) in table("variables") {
        let mut locked = Map::new();
        if let Some(default) = v.get("default").and_then(|d| d.as_str()) {
            locked.insert("default".into(), default.into());
        }
        if v.get("secret").and_then(|s| s.as_bool()) == Some(true) {
            locked.insert("secret".into(), true.into());
        }
        variables.insert(name.clone(), Value::Object(locked));
    }
    let app = toml.get("application").and_then(|a| a.as_table());
    let text = |key: &str| app.and_then(|a| a.get(key)).and_then(|v| v.as_str());
    let locked = json!({
        "spin_lock_version": 0,
        "metadata": {
            "name": text("name").unwrap_or_default(),
            "version": text("version").unwrap_or_default(),
            "trigger": { "type": "http" },
        },
        "variables": variables,
        "triggers": triggers,
        "components": components,
    });
    let locked = serde_json::to_vec_pretty(&locked)?;
    Ok(artifact.layer(MEDIA_SPIN_LOCKED_APP, locked, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_app_locks_its_components_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm one").unwrap();
        let manifest = "spin_manifest_version = 2\n[application]\nname = \"x\"\n\
            [variables]\ng = { default = \"hi\" }\n\
            [[trigger.http]]\nroute = \"/a/...\"\ncomponent = \"a\"\n\
            [[trigger.http]]\nroute = { private = true }\ncomponent = \"b\"\n\
            [component.a]\nsource = \"a.wasm\"\nkey_value_stores = [\"default\"]\n\
            [component.a.variables]\nm = \"{{ g }}\"\n\
            [component.b]\nsource = \"a.wasm\"\n";
        let blobs = spin_artifact("r/x:v1", manifest, dir.path())
            .unwrap()
            .blobs()
            .unwrap();
        // One wasm layer for both components, then the locked app.
        assert_eq!(blobs.layers.len(), 2);
        let (kind, locked, locked_digest) = &blobs.layers[1];
        assert_eq!(kind, MEDIA_SPIN_LOCKED_APP);
        let locked: Value = serde_json::from_slice(locked).unwrap();
        assert_eq!(
            locked["components"][0]["source"]["digest"],
            blobs.layers[0].2
        );
        assert_eq!(locked["components"][0]["config"]["m"], "{{ g }}");
        assert_eq!(
            locked["triggers"][1]["trigger_config"]["route"]["private"],
            true
        );
        assert_eq!(locked["variables"]["g"]["default"], "hi");
        let config: Value = serde_json::from_slice(&blobs.config).unwrap();
        assert_eq!(
            config["config"]["Labels"][crate::SPIN_LOCKED_APP_LABEL],
            *locked_digest
        );
    }
}
