//! Spin variables: the app's from the manifest's defaults, overridden by
//! `SPIN_VARIABLE_<NAME>` in the container's environment (Spin's environment
//! provider), itself overridden by `<NAME>` (as containerd-shim-spin copies
//! a container variable named like an app variable over it), and each
//! component's from its templates over them (`"{{ greeting }}, world"`).
//! All are resolved at create: the environment does not change, and a
//! required variable without a value fails the container then.
use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::manifest::{Manifest, MAX_VARIABLES};

/// The prefix of the environment variables that set Spin variables.
pub(crate) const VARIABLE_ENV_PREFIX: &str = "SPIN_VARIABLE_";

/// The largest value a variable may have after its template is filled in.
const MAX_VALUE_BYTES: usize = 64 << 10;

/// The variables of every component of an app: component id -> name -> value.
pub(crate) fn resolve(
    manifest: &Manifest,
    env: &[(String, String)],
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut app = BTreeMap::new();
    for (name, variable) in &manifest.variables {
        let plain = name.to_ascii_uppercase();
        let key = format!("{VARIABLE_ENV_PREFIX}{plain}");
        let lookup = |wanted: &str| env.iter().rev().find(|(k, _)| k == wanted).map(|(_, v)| v);
        match lookup(&plain).or(lookup(&key)).or(variable.default.as_ref()) {
            Some(value) => {
                app.insert(name.as_str(), value.as_str());
            }
            None if variable.required => bail!(
                "Spin variable '{name}' is required and has no value: set {key} in the container's environment"
            ),
            None => {}
        }
    }
    let mut components = BTreeMap::new();
    for (id, component) in &manifest.components {
        let mut values = BTreeMap::new();
        for (name, template) in &component.variables {
            let value = fill(template, &app).map_err(|e| {
                anyhow::anyhow!("variable '{name}' of component '{id}' = \"{template}\": {e}")
            })?;
            values.insert(name.clone(), value);
        }
        debug_assert!(values.len() <= MAX_VARIABLES);
        components.insert(id.clone(), values);
    }
    Ok(components)
}

/// Fills in the `{{ name }}` of `template` from `app`.
fn fill(template: &str, app: &BTreeMap<&str, &str>) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            bail!("a '{{{{' is not closed by '}}}}'");
        };
        let name = after[..end].trim();
        match app.get(name) {
            Some(value) => out.push_str(value),
            None => bail!(
                "it uses '{name}', which is not an application variable with a value: add it to [variables] with a default, or set {VARIABLE_ENV_PREFIX}{}",
                name.to_ascii_uppercase()
            ),
        }
        rest = &after[end + 2..];
        if out.len() > MAX_VALUE_BYTES {
            bail!("its value is longer than {MAX_VALUE_BYTES} bytes");
        }
    }
    out.push_str(rest);
    if out.len() > MAX_VALUE_BYTES {
        bail!("its value is longer than {MAX_VALUE_BYTES} bytes");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spin::manifest::parse;

    const FIXTURE: &str = include_str!("../../../../test/fixtures/spin/spin.toml");

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_then_the_environment() {
        let Ok(m) = parse(FIXTURE, "/spin.toml") else {
            panic!("fixture")
        };
        let Ok(v) = resolve(&m, &env(&[])) else {
            panic!("defaults")
        };
        assert_eq!(v["hello"]["greeting"], "hello from the manifest");
        assert_eq!(v["hello"]["message"], "hello from the manifest, in blue");
        assert!(v["kv"].is_empty());
        let Ok(v) = resolve(&m, &env(&[("SPIN_VARIABLE_COLOUR", "red")])) else {
            panic!("override")
        };
        assert_eq!(v["hello"]["message"], "hello from the manifest, in red");
        let both = env(&[("COLOUR", "green"), ("SPIN_VARIABLE_COLOUR", "red")]);
        let Ok(v) = resolve(&m, &both) else {
            panic!("override")
        };
        assert_eq!(v["hello"]["message"], "hello from the manifest, in green");
    }

    #[test]
    fn a_required_variable_needs_a_value() {
        let text = "spin_manifest_version = 2\n[variables]\ntoken = { required = true }\n";
        let Ok(m) = parse(text, "/spin.toml") else {
            panic!("parse")
        };
        let e = resolve(&m, &env(&[]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("set SPIN_VARIABLE_TOKEN"), "{e}");
        assert!(resolve(&m, &env(&[("SPIN_VARIABLE_TOKEN", "t")])).is_ok());
    }

    #[test]
    fn templates_name_app_variables() {
        let app = BTreeMap::from([("a", "1")]);
        assert_eq!(fill("x{{a}}y{{ a }}", &app).ok().as_deref(), Some("x1y1"));
        assert!(fill("{{ b }}", &app).is_err());
        assert!(fill("{{ a", &app).is_err());
    }
}
