//! A Spin application's locked app (`spin.lock`, JSON), the form in which
//! `spin registry push` packs an app into Spin's OCI artifact: components
//! name their Wasm by layer digest (`"source": {"digest": "sha256:..."}`),
//! HTTP triggers carry their route and component in `trigger_config`, and a
//! component's `allowed_outbound_hosts` and `key_value_stores` are in its
//! `metadata`. It is turned into the same [`Manifest`] as a `spin.toml`, so
//! both forms share routing, variables, stores and the outbound filter; and
//! what wasishim does not provide is refused as for `spin.toml`, naming it.
//!
//! It comes from the image, so it is bounded: [`MAX_LOCKED_APP_BYTES`] and
//! the manifest's counts.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::manifest::{
    check_component_variables, check_variable_name, refuse_unsupported, Component, Manifest,
    Source, Variable, MAX_COMPONENTS, MAX_ROUTES, MAX_VARIABLES,
};

/// The largest locked app read: 4 MiB (small files may be inlined in it,
/// base64; an app's is a few KiB otherwise).
pub const MAX_LOCKED_APP_BYTES: u64 = 4 << 20;

/// A Spin app as Spin's OCI artifact carries it: its locked app, parsed and
/// checked. The caller reads the layers it names ([`Self::layer_digests`])
/// and hands them to
/// [`WasmEngine::prepare_spin_artifact`](crate::WasmEngine::prepare_spin_artifact).
#[derive(Debug, Clone)]
pub struct SpinLockedApp {
    pub(crate) manifest: Manifest,
    pub(crate) shown: String,
}

impl SpinLockedApp {
    /// Parses the locked app `json`; `shown` names it in messages (e.g.
    /// "locked app sha256:… of image example.com/app:v1"). Costs a JSON
    /// parse of at most [`MAX_LOCKED_APP_BYTES`].
    ///
    /// # Errors
    ///
    /// Malformed JSON, or an app wasishim cannot run, naming what: another
    /// trigger, static files, SQLite, component dependencies...
    ///
    /// ```
    /// let e = wasishim_engine::SpinLockedApp::parse(b"{}", "locked app x").unwrap_err();
    /// assert!(format!("{e:#}").contains("locked app x is not a valid locked app"));
    /// ```
    pub fn parse(json: &[u8], shown: &str) -> Result<SpinLockedApp> {
        Ok(SpinLockedApp {
            manifest: parse(json, shown)?,
            shown: shown.to_string(),
        })
    }

    /// The digests of the wasm layers its components need, each once.
    pub fn layer_digests(&self) -> Vec<String> {
        let mut digests: Vec<String> = self
            .manifest
            .components
            .values()
            .filter_map(|c| match &c.source {
                Source::Layer(digest) => Some(digest.clone()),
                Source::File(_) => None,
            })
            .collect();
        digests.sort();
        digests.dedup();
        digests
    }
}

#[derive(Deserialize)]
struct Raw {
    spin_lock_version: Value,
    #[serde(default)]
    must_understand: Vec<Value>,
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
    #[serde(default)]
    host_requirements: BTreeMap<String, Value>,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    triggers: Vec<RawTrigger>,
    components: Vec<RawComponent>,
}

#[derive(Deserialize)]
struct RawVariable {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct RawTrigger {
    #[serde(default)]
    id: String,
    trigger_type: String,
    #[serde(default)]
    trigger_config: Value,
    #[serde(default)]
    trigger_dependencies: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawComponent {
    id: String,
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
    source: RawSource,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<Value>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    dependencies: BTreeMap<String, Value>,
    #[serde(default)]
    host_requirements: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawSource {
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// Parses and checks the locked app `json`, `shown` (e.g. "locked app
/// sha256:… of image …") in messages.
///
/// # Errors
///
/// Not JSON of a locked app (with serde's line and column), larger than
/// [`MAX_LOCKED_APP_BYTES`], a trigger other than `http`, a component
/// without a layer digest, anything wasishim does not provide (files,
/// environment, dependencies, SQLite, AI models, host requirements such as
/// service chaining), or more than the manifest's limits.
pub(crate) fn parse(json: &[u8], shown: &str) -> Result<Manifest> {
    if json.len() as u64 > MAX_LOCKED_APP_BYTES {
        bail!(
            "Spin {shown} is {} bytes, more than the {MAX_LOCKED_APP_BYTES} bytes of a locked app wasishim reads",
            json.len()
        );
    }
    let raw: Raw = serde_json::from_slice(json).with_context(|| {
        format!("Spin {shown} is not a valid locked app (spin.lock JSON, as `spin registry push` writes)")
    })?;
    match raw.spin_lock_version.as_u64() {
        Some(0 | 1) => {}
        _ => bail!(
            "Spin {shown} has spin_lock_version {}: wasishim reads versions 0 and 1 (Spin 2 and 3)",
            raw.spin_lock_version
        ),
    }
    let required = |map: &BTreeMap<String, Value>| -> Vec<String> {
        map.iter()
            .filter(|(_, v)| v.as_str() != Some("optional"))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let needs = required(&raw.host_requirements);
    if !needs.is_empty() {
        bail!(
            "Spin {shown} requires host features wasishim does not provide: {}; run this app with Spin itself",
            needs.join(", ")
        );
    }
    for item in &raw.must_understand {
        // Only the host requirements, refused above when any is set.
        if !matches!(
            item.as_str(),
            Some("host_requirements" | "component_host_requirements")
        ) {
            bail!("Spin {shown} must be understood for {item}, which wasishim does not know");
        }
    }
    if raw.components.len() > MAX_COMPONENTS {
        bail!(
            "Spin {shown} has {} components, more than the {MAX_COMPONENTS} wasishim runs in one app",
            raw.components.len()
        );
    }
    if raw.variables.len() > MAX_VARIABLES {
        bail!(
            "Spin {shown} has {} variables, more than {MAX_VARIABLES}",
            raw.variables.len()
        );
    }
    if raw.triggers.len() > MAX_ROUTES {
        bail!(
            "Spin {shown} has {} triggers, more than {MAX_ROUTES}",
            raw.triggers.len()
        );
    }
    let mut variables = BTreeMap::new();
    for (name, v) in raw.variables {
        check_variable_name(&name).with_context(|| format!("Spin {shown}"))?;
        variables.insert(
            name,
            Variable {
                // A locked variable without a default is required.
                required: v.default.is_none(),
                default: v.default,
                secret: v.secret,
                description: v.description,
            },
        );
    }
    let mut components = BTreeMap::new();
    for c in raw.components {
        let what = format!("Spin {shown}: component '{}'", c.id);
        if components.contains_key(&c.id) {
            bail!("{what} is listed twice");
        }
        let digest = match (c.source.digest, c.source.source) {
            (Some(digest), _) => digest,
            (None, Some(url)) => bail!(
                "{what} names its Wasm by source {url}, not by a layer digest: push the app with `spin registry push`, which puts each component in a layer"
            ),
            (None, None) => bail!("{what} has no source digest"),
        };
        check_digest(&digest).with_context(|| what.clone())?;
        let list = |key: &str| -> Result<Vec<String>> {
            match c.metadata.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(v) => serde_json::from_value(v.clone())
                    .with_context(|| format!("{what}: metadata {key} is not a list of strings")),
            }
        };
        let allowed_outbound_hosts = list("allowed_outbound_hosts")?;
        let key_value_stores = list("key_value_stores")?;
        refuse_unsupported(
            &what,
            &[
                ("files", !c.files.is_empty()),
                (
                    "databases (sqlite_databases)",
                    !list("databases")?.is_empty(),
                ),
                ("ai_models", !list("ai_models")?.is_empty()),
                ("env (environment)", !c.env.is_empty()),
                ("dependencies", !c.dependencies.is_empty()),
                (
                    "host_requirements",
                    !required(&c.host_requirements).is_empty(),
                ),
            ],
        )?;
        check_component_variables(&what, &c.config)?;
        components.insert(
            c.id,
            Component {
                source: Source::Layer(digest),
                variables: c.config,
                allowed_outbound_hosts,
                key_value_stores,
            },
        );
    }
    let mut routes = Vec::new();
    for t in raw.triggers {
        if t.trigger_type != "http" {
            bail!(
                "Spin {shown} has a {} trigger ('{}'): wasishim runs the HTTP trigger only; run this app with Spin itself (e.g. containerd-shim-spin)",
                t.trigger_type,
                t.id
            );
        }
        if !t.trigger_dependencies.is_empty() {
            bail!("Spin {shown}: HTTP trigger '{}' has trigger dependencies (middleware), which wasishim does not provide", t.id);
        }
        let config = &t.trigger_config;
        let Some(component) = config.get("component").and_then(Value::as_str) else {
            if config.get("static_response").is_some() {
                bail!("Spin {shown}: HTTP trigger '{}' has a static_response, which wasishim does not serve; use a component", t.id);
            }
            bail!("Spin {shown}: HTTP trigger '{}' names no component", t.id);
        };
        if !components.contains_key(component) {
            bail!(
                "Spin {shown}: HTTP trigger '{}' names component '{component}', which the locked app does not list",
                t.id
            );
        }
        if let Some(executor) = config.get("executor") {
            if executor.get("type").and_then(Value::as_str) != Some("spin") {
                bail!(
                    "Spin {shown}: component '{component}' has executor {executor}; wasishim runs components exporting wasi:http/incoming-handler only (no Wagi)"
                );
            }
        }
        match config.get("route") {
            Some(Value::String(route)) => routes.push((route.clone(), component.to_string())),
            Some(route) if route.get("private").and_then(Value::as_bool) == Some(true) => {}
            Some(route) => bail!(
                "Spin {shown}: component '{component}' has route {route}; give a route such as \"/path/...\" or {{\"private\": true}}"
            ),
            None => bail!(
                "Spin {shown}: the HTTP trigger of component '{component}' has no route"
            ),
        }
    }
    let name = raw
        .metadata
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(Manifest {
        name,
        variables,
        routes,
        components,
    })
}

/// Checks that `digest` is `sha256:` and 64 hex digits.
fn check_digest(digest: &str) -> Result<()> {
    let ok = digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        bail!("source digest {digest:?} is not a sha256 digest (sha256:<64 hex digits>)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// The fixture app as `spin registry push` locks it.
    fn fixture() -> Value {
        json!({
            "spin_lock_version": 1,
            "metadata": {"name": "wasishim-spin-fixture", "trigger": {"type": "http"}},
            "variables": {"greeting": {"default": "hello"}, "colour": {"default": "blue"}, "token": {"secret": true}},
            "triggers": [
                {"id": "trigger-hello", "trigger_type": "http", "trigger_config": {"component": "hello", "route": "/hello/..."}},
                {"id": "trigger-kv", "trigger_type": "http", "trigger_config": {"component": "kv", "route": "/kv/..."}},
                {"id": "trigger-internal", "trigger_type": "http", "trigger_config": {"component": "internal", "route": {"private": true}}},
            ],
            "components": [
                {"id": "hello", "source": {"content_type": "application/wasm", "digest": D1},
                 "metadata": {"allowed_outbound_hosts": ["http://127.0.0.1:*"], "key_value_stores": [], "databases": [], "ai_models": []},
                 "config": {"message": "{{ greeting }}, in {{ colour }}"}},
                {"id": "kv", "source": {"content_type": "application/wasm", "digest": D2},
                 "metadata": {"key_value_stores": ["default"]}},
                {"id": "internal", "source": {"content_type": "application/wasm", "digest": D1}},
            ],
        })
    }

    fn parsed(v: &Value) -> Result<Manifest> {
        parse(&serde_json::to_vec(v).unwrap(), "locked app x")
    }

    fn error(v: &Value) -> String {
        match parsed(v) {
            Ok(_) => panic!("accepted: {v}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_fixture_maps_onto_the_manifest_model() {
        let m = match parsed(&fixture()) {
            Ok(m) => m,
            Err(e) => panic!("{e:#}"),
        };
        assert_eq!(m.name, "wasishim-spin-fixture");
        assert_eq!(
            m.routes,
            vec![
                ("/hello/...".to_string(), "hello".to_string()),
                ("/kv/...".to_string(), "kv".to_string()),
            ]
        );
        assert_eq!(m.components["hello"].source, Source::Layer(D1.to_string()));
        assert_eq!(
            m.components["hello"].allowed_outbound_hosts,
            vec!["http://127.0.0.1:*"]
        );
        assert_eq!(m.components["kv"].key_value_stores, vec!["default"]);
        assert_eq!(
            m.components["hello"].variables["message"],
            "{{ greeting }}, in {{ colour }}"
        );
        assert!(m.variables["token"].required && m.variables["token"].secret);
        assert!(!m.variables["greeting"].required);
    }

    #[test]
    fn what_wasishim_does_not_run_is_refused_by_name() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = fixture();
            f(&mut v);
            error(&v)
        };
        assert!(with(&|v| v["triggers"][0]["trigger_type"] = json!("redis"))
            .contains("has a redis trigger ('trigger-hello')"));
        assert!(
            with(&|v| v["components"][0]["files"] = json!([{"digest": D1, "path": "a"}]))
                .contains("component 'hello' sets files")
        );
        assert!(
            with(&|v| v["components"][1]["metadata"]["databases"] = json!(["default"]))
                .contains("sets databases")
        );
        assert!(
            with(&|v| v["host_requirements"] = json!({"local_service_chaining": "required"}))
                .contains("local_service_chaining")
        );
        assert!(
            with(&|v| v["components"][0]["source"] = json!({"source": "file:///x.wasm"}))
                .contains("not by a layer digest")
        );
        assert!(
            with(&|v| v["components"][0]["source"]["digest"] = json!("sha256:12"))
                .contains("is not a sha256 digest")
        );
        assert!(
            with(&|v| v["triggers"][0]["trigger_config"]["component"] = json!("nope"))
                .contains("names component 'nope'")
        );
        assert!(with(&|v| v["spin_lock_version"] = json!(7)).contains("spin_lock_version 7"));
        assert!(error(&json!({"components": []})).contains("is not a valid locked app"));
        let e = format!(
            "{:#}",
            parse(b"{not json", "locked app y")
                .err()
                .map_or(String::new(), |e| format!("{e:#}"))
        );
        assert!(e.contains("locked app y is not a valid locked app"), "{e}");
    }

    #[test]
    fn size_and_counts_are_bounded() {
        let big = vec![b' '; MAX_LOCKED_APP_BYTES as usize + 1];
        assert!(parse(&big, "x").is_err());
        let mut v = fixture();
        let many: Vec<Value> = (0..=MAX_COMPONENTS)
            .map(|i| json!({"id": format!("c{i}"), "source": {"digest": D1}}))
            .collect();
        v["components"] = json!(many);
        assert!(error(&v).contains("more than the 64"));
    }
}
