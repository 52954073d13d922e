//! A Spin application's manifest, `spin.toml` with `spin_manifest_version =
//! 2` (Spin 2 and 3), as far as wasishim runs it: variables, the HTTP
//! trigger's routes, and per component its source file, variables,
//! `allowed_outbound_hosts` and `key_value_stores`. Anything that would
//! change what a component does and that wasishim does not provide (other
//! triggers, `files`, SQLite databases, AI models, component dependencies)
//! is refused here, naming the key, so that the app fails at create and not
//! at its first request.
//!
//! The manifest comes from the image, so it is bounded: its size
//! ([`MAX_MANIFEST_BYTES`]) and its counts of components, triggers and
//! variables.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The largest manifest read: 1 MiB (Spin's own are a few KiB).
pub(crate) const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The most components an app may have.
pub(crate) const MAX_COMPONENTS: usize = 64;
/// The most HTTP routes an app may have.
pub(crate) const MAX_ROUTES: usize = 256;
/// The most variables an app, or one of its components, may have.
pub(crate) const MAX_VARIABLES: usize = 256;

/// A parsed and checked manifest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Manifest {
    pub(crate) name: String,
    /// Application variables: name -> definition.
    pub(crate) variables: BTreeMap<String, Variable>,
    /// HTTP routes in manifest order; private components have none.
    pub(crate) routes: Vec<(String, String)>,
    /// Components by id.
    pub(crate) components: BTreeMap<String, Component>,
}

/// An application variable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Variable {
    #[serde(default)]
    pub(crate) default: Option<String>,
    #[serde(default)]
    pub(crate) required: bool,
    #[serde(default)]
    pub(crate) secret: bool,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

/// Where a component's Wasm comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A file in the rootfs, relative to the manifest's directory
    /// (`spin.toml`).
    File(String),
    /// A wasm layer of Spin's OCI artifact, by its digest (a locked app).
    Layer(String),
}

/// A component of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Component {
    pub(crate) source: Source,
    /// Component variable name -> template (`"{{ app_var }}"`, text).
    pub(crate) variables: BTreeMap<String, String>,
    pub(crate) allowed_outbound_hosts: Vec<String>,
    pub(crate) key_value_stores: Vec<String>,
}

#[derive(Deserialize)]
struct Raw {
    spin_manifest_version: toml::Value,
    #[serde(default)]
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, Variable>,
    #[serde(default)]
    trigger: BTreeMap<String, Vec<RawTrigger>>,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize, Default)]
struct RawApplication {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct RawTrigger {
    #[serde(default)]
    route: Option<RawRoute>,
    #[serde(default)]
    component: Option<toml::Value>,
    #[serde(default)]
    executor: Option<toml::Value>,
    #[serde(default)]
    static_response: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private { private: bool },
}

#[derive(Deserialize)]
struct RawComponent {
    source: toml::Value,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    allowed_http_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    files: Vec<toml::Value>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    dependencies: BTreeMap<String, toml::Value>,
}

/// Parses and checks `text`, the manifest `shown` (its path, for messages).
///
/// # Errors
///
/// A syntax error (with toml's line and column), another manifest version,
/// a trigger other than `http`, a route naming no component, a component
/// using what wasishim does not provide, or more than the limits allow.
pub(crate) fn parse(text: &str, shown: &str) -> Result<Manifest> {
    let raw: Raw = toml::from_str(text)
        .with_context(|| format!("Spin manifest {shown} is not a valid spin.toml"))?;
    match &raw.spin_manifest_version {
        toml::Value::Integer(2) => {}
        toml::Value::String(v) if v == "2" => {}
        other => bail!(
            "Spin manifest {shown} has spin_manifest_version = {other}: wasishim runs version 2 (Spin 2 and later); run `spin doctor` to upgrade it"
        ),
    }
    if raw.component.len() > MAX_COMPONENTS {
        bail!(
            "Spin manifest {shown} has {} components, more than the {MAX_COMPONENTS} wasishim runs in one app",
            raw.component.len()
        );
    }
    if raw.variables.len() > MAX_VARIABLES {
        bail!(
            "Spin manifest {shown} has {} variables, more than {MAX_VARIABLES}",
            raw.variables.len()
        );
    }
    for name in raw.variables.keys() {
        check_variable_name(name).with_context(|| format!("Spin manifest {shown}"))?;
    }
    let mut routes = Vec::new();
    for (kind, triggers) in &raw.trigger {
        if kind != "http" {
            bail!(
                "Spin manifest {shown} has a [[trigger.{kind}]]: wasishim runs the HTTP trigger only; run this app with Spin itself (e.g. containerd-shim-spin)"
            );
        }
        if triggers.len() > MAX_ROUTES {
            bail!(
                "Spin manifest {shown} has {} HTTP triggers, more than {MAX_ROUTES}",
                triggers.len()
            );
        }
        for trigger in triggers {
            let component = match &trigger.component {
                Some(toml::Value::String(id)) => id.clone(),
                Some(_) => bail!(
                    "Spin manifest {shown}: an HTTP trigger defines its component inline; wasishim needs component = \"<id>\" naming a [component.<id>]"
                ),
                None if trigger.static_response.is_some() => bail!(
                    "Spin manifest {shown}: an HTTP trigger has a static_response, which wasishim does not serve; use a component"
                ),
                None => bail!("Spin manifest {shown}: an HTTP trigger names no component"),
            };
            if !raw.component.contains_key(&component) {
                bail!(
                    "Spin manifest {shown}: an HTTP trigger names component '{component}', which has no [component.{component}]"
                );
            }
            if let Some(executor) = &trigger.executor {
                if executor.get("type").and_then(|t| t.as_str()) != Some("spin") {
                    bail!(
                        "Spin manifest {shown}: component '{component}' has executor {executor}; wasishim runs components exporting wasi:http/incoming-handler only (no Wagi)"
                    );
                }
            }
            match &trigger.route {
                Some(RawRoute::Path(route)) => routes.push((route.clone(), component)),
                Some(RawRoute::Private { private: true }) => {}
                Some(RawRoute::Private { private: false }) => bail!(
                    "Spin manifest {shown}: component '{component}' has route = {{ private = false }}; give a route such as \"/path/...\" or {{ private = true }}"
                ),
                None => bail!(
                    "Spin manifest {shown}: the HTTP trigger of component '{component}' has no route"
                ),
            }
        }
    }
    let mut components = BTreeMap::new();
    for (id, c) in raw.component {
        let what = format!("Spin manifest {shown}: component '{id}'");
        let source = match c.source {
            toml::Value::String(path) => path,
            _ => bail!(
                "{what} has a source that is not a file path (a URL or registry package); wasishim runs components whose .wasm is in the image: download it into the image and give its path"
            ),
        };
        refuse_unsupported(
            &what,
            &[
                ("files", !c.files.is_empty()),
                ("sqlite_databases", !c.sqlite_databases.is_empty()),
                ("ai_models", !c.ai_models.is_empty()),
                ("environment", !c.environment.is_empty()),
                ("dependencies", !c.dependencies.is_empty()),
            ],
        )?;
        if !c.allowed_http_hosts.is_empty() {
            bail!("{what} sets allowed_http_hosts, which Spin 2 replaced: write allowed_outbound_hosts = [\"https://host\", ...]");
        }
        check_component_variables(&what, &c.variables)?;
        components.insert(
            id,
            Component {
                source: Source::File(source),
                variables: c.variables,
                allowed_outbound_hosts: c.allowed_outbound_hosts,
                key_value_stores: c.key_value_stores,
            },
        );
    }
    Ok(Manifest {
        name: raw.application.name,
        variables: raw.variables,
        routes,
        components,
    })
}

/// Spin's rule for variable names: lowercase ASCII letters, digits and
/// underscores, starting with a letter (so that `SPIN_VARIABLE_<NAME>` is an
/// environment variable name).
/// Fails naming the first `(key, used)` a component sets that wasishim
/// does not provide, so the app fails at create, not at its first call.
pub(crate) fn refuse_unsupported(what: &str, keys: &[(&str, bool)]) -> Result<()> {
    for (key, used) in keys {
        if *used {
            bail!("{what} sets {key}, which wasishim does not provide yet: remove it, or run this app with Spin itself");
        }
    }
    Ok(())
}

/// A component's variables: at most [`MAX_VARIABLES`], each name valid.
pub(crate) fn check_component_variables(
    what: &str,
    variables: &BTreeMap<String, String>,
) -> Result<()> {
    if variables.len() > MAX_VARIABLES {
        bail!(
            "{what} has {} variables, more than {MAX_VARIABLES}",
            variables.len()
        );
    }
    for name in variables.keys() {
        check_variable_name(name).with_context(|| what.to_string())?;
    }
    Ok(())
}

pub(crate) fn check_variable_name(name: &str) -> Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 128;
    if !ok {
        bail!("variable name '{name}' is not valid: use lowercase letters, digits and underscores, starting with a letter");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../../../test/fixtures/spin/spin.toml");

    fn error(text: &str) -> String {
        match parse(text, "/spin.toml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_fixture_parses() {
        let m = match parse(FIXTURE, "/spin.toml") {
            Ok(m) => m,
            Err(e) => panic!("{e:#}"),
        };
        assert_eq!(m.name, "wasishim-spin-fixture");
        assert_eq!(
            m.routes,
            vec![
                ("/hello/...".to_string(), "hello".to_string()),
                ("/exact".to_string(), "hello".to_string()),
                ("/kv/...".to_string(), "kv".to_string()),
            ]
        );
        assert_eq!(m.components.len(), 3);
        assert_eq!(m.components["kv"].key_value_stores, vec!["default"]);
        assert_eq!(
            m.variables["greeting"].default.as_deref(),
            Some("hello from the manifest")
        );
    }

    #[test]
    fn what_wasishim_does_not_run_is_refused_by_name() {
        let base = "spin_manifest_version = 2\n[application]\nname = \"a\"\n";
        assert!(error("spin_manifest_version = \"1\"\n").contains("spin_manifest_version = \"1\""));
        assert!(error(&format!(
            "{base}[[trigger.redis]]\ncomponent = \"c\"\nchannel = \"x\"\n[component.c]\nsource = \"c.wasm\"\n"
        ))
        .contains("[[trigger.redis]]"));
        assert!(error(&format!(
            "{base}[[trigger.http]]\nroute = \"/\"\ncomponent = \"nope\"\n"
        ))
        .contains("component 'nope', which has no [component.nope]"));
        assert!(error(&format!(
            "{base}[component.c]\nsource = \"c.wasm\"\nsqlite_databases = [\"default\"]\n"
        ))
        .contains("sets sqlite_databases"));
        assert!(error(&format!(
            "{base}[component.c]\nsource = {{ url = \"https://x/c.wasm\", digest = \"sha256:00\" }}\n"
        ))
        .contains("not a file path"));
        assert!(
            error(&format!("{base}[variables]\nBad = {{ default = \"x\" }}\n"))
                .contains("variable name 'Bad' is not valid")
        );
        assert!(error("this is = not toml").contains("is not a valid spin.toml"));
    }

    #[test]
    fn counts_are_bounded() {
        let mut text = "spin_manifest_version = 2\n".to_string();
        for i in 0..=MAX_COMPONENTS {
            text.push_str(&format!("[component.c{i}]\nsource = \"c.wasm\"\n"));
        }
        assert!(error(&text).contains("more than the 64"));
    }
}
