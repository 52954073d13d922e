//! containerd's config.toml: declaring wasishim's runtimes for the CRI
//! plugin, and taking them out again, without touching the rest of the file.
//!
//! Pure text in, text out: reading and writing the file is the caller's
//! (see [`crate::install`]). `toml_edit` keeps comments, order and layout of
//! everything the edit does not touch; new tables go at the end of the file,
//! each under a comment saying who added it.
//!
//! Where the runtimes go depends on the config's `version`:
//! - 2 (containerd 1.x; 2.x migrates it):
//!   `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.NAME]`.
//!   containerd 1.x replaces its default `runtimes` map with the file's, and
//!   then fails to load the CRI plugin when `default_runtime_name` (`runc`
//!   by default) is not in it ("no corresponding runtime configured in
//!   `containerd.runtimes`", seen with 1.7.24); so `runc` is declared too
//!   when it is missing. 2.x keeps its default runc (the e2e test checks).
//! - 3 (containerd 2.x): `[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.NAME]`.
//! - none: the version 1 format of containerd 1.x, which names plugins by
//!   their short ID (`[plugins.cri]`) and ignores the long names wasishim
//!   writes (containerd's CRI config guide: "Config file is parsed as
//!   version 1 by default"). Refused, with what to do.

use std::path::Path;

use anyhow::{bail, Context, Result};
use toml_edit::{DocumentMut, Item, Table, TableLike};

/// One runtime entry: the CRI handler name and containerd's `runtime_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeDecl {
    /// The handler a RuntimeClass names.
    pub name: &'static str,
    /// What containerd turns into the shim binary's name.
    pub runtime_type: &'static str,
}

/// The runtimes `wasishim install` declares: per-pod and per-node shim.
pub const RUNTIMES: [RuntimeDecl; 2] = [
    RuntimeDecl {
        name: "wasmtime",
        runtime_type: "io.containerd.wasmtime.v1",
    },
    RuntimeDecl {
        name: "wasmtimed",
        runtime_type: "io.containerd.wasmtimed.v1",
    },
];

/// runc as containerd's default config declares it.
pub const RUNC: RuntimeDecl = RuntimeDecl {
    name: "runc",
    runtime_type: "io.containerd.runc.v2",
};

/// Largest config file wasishim edits; containerd configs are a few KiB.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// The comment above each table wasishim adds.
const MARKER: &str = "# Added by `wasishim install`; `wasishim uninstall` removes it.";

/// The config layouts wasishim knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// `version = 2`: containerd 1.x.
    V2,
    /// `version = 3`: containerd 2.x.
    V3,
}

impl Schema {
    /// The plugin whose `containerd.runtimes` table holds the runtimes.
    pub fn cri_plugin(self) -> &'static str {
        match self {
            Schema::V2 => "io.containerd.grpc.v1.cri",
            Schema::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    /// The config's `version` number.
    pub fn number(self) -> i64 {
        match self {
            Schema::V2 => 2,
            Schema::V3 => 3,
        }
    }

    fn runtimes_path(self) -> [&'static str; 4] {
        ["plugins", self.cri_plugin(), "containerd", "runtimes"]
    }

    /// The header of runtime `name`'s table, as the user would write it.
    pub fn table_header(self, name: &str) -> String {
        format!(
            "[plugins.\"{}\".containerd.runtimes.{name}]",
            self.cri_plugin()
        )
    }
}

/// The result of [`add_runtimes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The new file; byte-identical to the input when nothing was added.
    pub text: String,
    /// Names of the runtimes added, in the order added (`runc` last).
    pub added: Vec<String>,
    /// The layout the file uses.
    pub schema: Schema,
}

/// The result of [`remove_runtimes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The new file.
    pub text: String,
    /// Runtimes left in place, each with the reason.
    pub kept: Vec<String>,
}

/// Parses `text` (the config at `origin`, named in errors) and tells its
/// layout. Fails on invalid TOML, a missing `version` (version 1 format) or
/// an unknown one.
pub fn parse(text: &str, origin: &Path) -> Result<(DocumentMut, Schema)> {
    if text.len() > MAX_CONFIG_BYTES {
        bail!(
            "{} is {} bytes; containerd configs are a few KiB and wasishim edits none over {} \
             bytes: check that --config names containerd's config.toml",
            origin.display(),
            text.len(),
            MAX_CONFIG_BYTES
        );
    }
    let doc: DocumentMut = text.parse().with_context(|| {
        format!(
            "{} is not valid TOML; fix it (containerd would refuse it too) and run again",
            origin.display()
        )
    })?;
    let schema = match doc.get("version").map(|v| v.as_integer()) {
        Some(Some(2)) => Schema::V2,
        Some(Some(3)) => Schema::V3,
        None => bail!(
            "{} has no `version` line, so containerd 1.x reads it in the old version 1 format, \
             where the CRI plugin is `[plugins.cri]` and the names wasishim writes are ignored. \
             Convert it to version 2: add `version = 2` at the top and rename `plugins.cri` to \
             `plugins.\"io.containerd.grpc.v1.cri\"` (or start from `containerd config default`), \
             then run `wasishim install` again",
            origin.display()
        ),
        Some(other) => bail!(
            "{} declares `version = {}`; wasishim knows config versions 2 (containerd 1.x) and \
             3 (containerd 2.x). Check the file, or declare the runtimes by hand (see README, \
             \"Install on a node\")",
            origin.display(),
            other.map_or_else(|| "(not a number)".to_string(), |n| n.to_string())
        ),
    };
    Ok((doc, schema))
}

/// Declares each of [`RUNTIMES`] that `text` lacks, and [`RUNC`] when a
/// version 2 file lacks it while its default runtime is runc. A runtime
/// already declared with the same `runtime_type` counts as present.
///
/// Fails, changing nothing, if the file cannot be parsed (see [`parse`]) or
/// declares one of the names with another `runtime_type`.
pub fn add_runtimes(text: &str, origin: &Path) -> Result<Added> {
    let (mut doc, schema) = parse(text, origin)?;
    let path = schema.runtimes_path();
    let mut wanted: Vec<RuntimeDecl> = Vec::new();
    {
        let existing = lookup(doc.as_table(), &path);
        for decl in RUNTIMES {
            match existing.and_then(|t| t.get(decl.name)) {
                None => wanted.push(decl),
                Some(item) => {
                    let declared = runtime_type_of(item);
                    if declared != Some(decl.runtime_type) {
                        bail!(
                            "{} already declares runtime `{}` with runtime_type {}; wasishim \
                             would declare it as {:?}. Remove or rename that table ({}) and run \
                             `wasishim install` again",
                            origin.display(),
                            decl.name,
                            declared.map_or_else(|| "unset".to_string(), |t| format!("{t:?}")),
                            decl.runtime_type,
                            schema.table_header(decl.name)
                        );
                    }
                }
            }
        }
        if schema == Schema::V2
            && !wanted.is_empty()
            && existing.and_then(|t| t.get(RUNC.name)).is_none()
            && default_runtime(doc.as_table(), schema).is_none_or(|d| d == RUNC.name)
        {
            wanted.push(RUNC);
        }
    }
    if wanted.is_empty() {
        return Ok(Added {
            text: text.to_string(),
            added: Vec::new(),
            schema,
        });
    }
    let mut position = max_position(doc.as_table()).unwrap_or(0);
    let runtimes = ensure_tables(doc.as_table_mut(), &path, origin)?;
    let dotted = runtimes.is_dotted();
    for decl in &wanted {
        let mut table = Table::new();
        table.insert("runtime_type", toml_edit::value(decl.runtime_type));
        if dotted {
            table.set_dotted(true);
        } else {
            position += 1;
            table.set_position(Some(position));
            table.decor_mut().set_prefix(format!("\n{MARKER}\n"));
        }
        runtimes.insert(decl.name, Item::Table(table));
    }
    let mut out = doc.to_string();
    // toml_edit writes no newline after the last table when the original
    // ended without one; keep the file a proper text file.
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(Added {
        text: out,
        added: wanted.iter().map(|d| d.name.to_string()).collect(),
        schema,
    })
}

/// Takes the runtimes named in `names` out of `text` again (the ones
/// [`add_runtimes`] reported), with parent tables that only existed to hold
/// them. A runtime whose `runtime_type` is no longer wasishim's, and a
/// `runc` that has gained settings since, are kept and listed in
/// [`Removed::kept`].
pub fn remove_runtimes(text: &str, names: &[String], origin: &Path) -> Result<Removed> {
    let (mut doc, schema) = parse(text, origin)?;
    let path = schema.runtimes_path();
    let mut kept = Vec::new();
    let Some(runtimes) = lookup_mut(doc.as_table_mut(), &path) else {
        return Ok(Removed {
            text: text.to_string(),
            kept,
        });
    };
    let mut changed = false;
    for name in names {
        let Some(decl) = RUNTIMES
            .iter()
            .chain(std::iter::once(&RUNC))
            .find(|d| d.name == name)
        else {
            kept.push(format!("{name}: not a runtime wasishim declares"));
            continue;
        };
        let Some(item) = runtimes.get(name) else {
            continue;
        };
        if runtime_type_of(item) != Some(decl.runtime_type) {
            kept.push(format!(
                "{name}: its runtime_type was changed since the install"
            ));
            continue;
        }
        let only_type = item.as_table_like().is_some_and(|t| t.len() == 1);
        if decl.name == RUNC.name && !only_type {
            kept.push(format!("{name}: it has settings added since the install"));
            continue;
        }
        runtimes.remove(name);
        changed = true;
    }
    if !changed {
        return Ok(Removed {
            text: text.to_string(),
            kept,
        });
    }
    prune_implicit(doc.as_table_mut(), &path);
    Ok(Removed {
        text: doc.to_string(),
        kept,
    })
}

/// The runtimes `text` declares for CRI, as (name, runtime_type).
pub fn declared_runtimes(text: &str, origin: &Path) -> Result<(Schema, Vec<(String, String)>)> {
    let (doc, schema) = parse(text, origin)?;
    let list = lookup(doc.as_table(), &schema.runtimes_path())
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.to_string(), runtime_type_of(v).unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok((schema, list))
}

fn runtime_type_of(item: &Item) -> Option<&str> {
    item.as_table_like()?.get("runtime_type")?.as_str()
}

/// `default_runtime_name` of the CRI plugin's `containerd` table, if set.
fn default_runtime(root: &Table, schema: Schema) -> Option<&str> {
    lookup(root, &["plugins", schema.cri_plugin(), "containerd"])?
        .get("default_runtime_name")?
        .as_str()
}

fn lookup<'a>(root: &'a Table, path: &[&str]) -> Option<&'a dyn TableLike> {
    let mut table: &dyn TableLike = root;
    for key in path {
        table = table.get(key)?.as_table_like()?;
    }
    Some(table)
}

fn lookup_mut<'a>(root: &'a mut Table, path: &[&str]) -> Option<&'a mut dyn TableLike> {
    let mut table: &mut dyn TableLike = root;
    for key in path {
        table = table.get_mut(key)?.as_table_like_mut()?;
    }
    Some(table)
}

/// Walks `path`, creating missing tables as implicit ones (they print no
/// header of their own, so the file gains only the runtime tables).
fn ensure_tables<'a>(
    root: &'a mut Table,
    path: &[&str],
    origin: &Path,
) -> Result<&'a mut dyn TableLike> {
    let mut table: &mut dyn TableLike = root;
    let mut walked = Vec::new();
    for key in path {
        walked.push(*key);
        if table.get(key).is_none() {
            let mut new = Table::new();
            new.set_implicit(true);
            table.insert(key, Item::Table(new));
        }
        let item = table.get_mut(key).context("table just inserted")?;
        let is_table = item.is_table_like();
        if !is_table {
            bail!(
                "{}: `{}` is not a table; fix the file (containerd expects a table there) and \
                 run again",
                origin.display(),
                walked.join(".")
            );
        }
        table = item.as_table_like_mut().context("checked table")?;
    }
    Ok(table)
}

/// Removes the tables along `path`, deepest first, that are implicit and
/// now empty: the ones [`ensure_tables`] created.
fn prune_implicit(root: &mut Table, path: &[&str]) {
    for depth in (1..=path.len()).rev() {
        let (parent_path, key) = (&path[..depth - 1], path[depth - 1]);
        let Some(parent) = lookup_mut(root, parent_path) else {
            continue;
        };
        let empty_implicit = parent
            .get(key)
            .and_then(Item::as_table)
            .is_some_and(|t| t.is_implicit() && t.is_empty());
        if empty_implicit {
            parent.remove(key);
        }
    }
}

/// The largest document position of any table under `table`.
fn max_position(table: &Table) -> Option<isize> {
    let mut max = table.position();
    for (_, item) in table.iter() {
        let nested = match item {
            Item::Table(t) => max_position(t),
            Item::ArrayOfTables(a) => a.iter().filter_map(max_position).max(),
            _ => None,
        };
        max = max.max(nested);
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static Path {
        Path::new("/etc/containerd/config.toml")
    }

    const V2: &str = r#"# containerd 1.7 on node-7, managed by hand.
version = 2
root = "/var/lib/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"   # the default

# CRI, for kubelet.
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
    # GPU nodes
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
      runtime_type = "io.containerd.runc.v2"

[metrics]
  address = "127.0.0.1:1338"
"#;

    const V3: &str = r#"version = 3

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'

  # The runtime plugin, with crun next to runc.
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
          runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.crun]
          runtime_type = 'io.containerd.runc.v2'

[timeouts]
  'io.containerd.timeout.shim.cleanup' = '5s'
"#;

    fn runtimes_of(text: &str) -> Vec<(String, String)> {
        declared_runtimes(text, origin()).unwrap().1
    }

    fn pair(name: &str, ty: &str) -> (String, String) {
        (name.to_string(), ty.to_string())
    }

    /// The install leaves every line of `before` in place, in order.
    fn assert_keeps_lines(before: &str, after: &str) {
        let mut rest = after.lines();
        for line in before.lines() {
            assert!(
                rest.any(|l| l == line),
                "line {line:?} lost or moved:\n{after}"
            );
        }
    }

    #[test]
    fn v2_with_comments_and_other_runtimes() {
        let added = add_runtimes(V2, origin()).unwrap();
        assert_eq!(added.schema, Schema::V2);
        assert_eq!(added.added, ["wasmtime", "wasmtimed"]);
        assert!(
            added.text.starts_with(V2),
            "appended, rest untouched:\n{}",
            added.text
        );
        assert_keeps_lines(V2, &added.text);
        assert!(added.text.contains(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n\
             runtime_type = \"io.containerd.wasmtime.v1\"\n"
        ));
        assert!(added.text.contains(MARKER));
        assert_eq!(
            runtimes_of(&added.text),
            [
                pair("runc", "io.containerd.runc.v2"),
                pair("nvidia", "io.containerd.runc.v2"),
                pair("wasmtime", "io.containerd.wasmtime.v1"),
                pair("wasmtimed", "io.containerd.wasmtimed.v1"),
            ]
        );
    }

    #[test]
    fn v3_with_comments_and_other_runtimes() {
        let added = add_runtimes(V3, origin()).unwrap();
        assert_eq!(added.schema, Schema::V3);
        assert_eq!(added.added, ["wasmtime", "wasmtimed"]);
        assert!(added.text.starts_with(V3), "{}", added.text);
        assert!(added.text.contains(
            // The file's own quoting of the plugin name is kept.
            "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtimed]\n\
             runtime_type = \"io.containerd.wasmtimed.v1\"\n"
        ));
        assert_eq!(
            runtimes_of(&added.text),
            [
                pair("runc", "io.containerd.runc.v2"),
                pair("crun", "io.containerd.runc.v2"),
                pair("wasmtime", "io.containerd.wasmtime.v1"),
                pair("wasmtimed", "io.containerd.wasmtimed.v1"),
            ]
        );
    }

    #[test]
    fn second_install_changes_nothing() {
        for config in [V2, V3] {
            let first = add_runtimes(config, origin()).unwrap();
            let second = add_runtimes(&first.text, origin()).unwrap();
            assert!(second.added.is_empty());
            assert_eq!(second.text, first.text);
        }
    }

    #[test]
    fn uninstall_is_byte_identical() {
        let minimal_v2 = "version = 2\n";
        let minimal_v3 = "version = 3\nroot = '/x'\n# trailing comment\n";
        let no_newline = "version = 2\n[debug]\n  level = \"info\"";
        let explicit_parent = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n";
        for config in [V2, V3, minimal_v2, minimal_v3, no_newline, explicit_parent] {
            let added = add_runtimes(config, origin()).unwrap();
            assert!(!added.added.is_empty());
            let removed = remove_runtimes(&added.text, &added.added, origin()).unwrap();
            assert!(removed.kept.is_empty(), "{:?}", removed.kept);
            let expected = if config == no_newline {
                // The only byte the install adds for good (the file ends in a
                // newline); the install record restores the original exactly.
                format!("{config}\n")
            } else {
                config.to_string()
            };
            assert_eq!(removed.text, expected, "round trip of:\n{config}");
        }
    }

    #[test]
    fn runc_declared_only_when_missing_and_removed_only_if_added() {
        let bare = "version = 2\n";
        let added = add_runtimes(bare, origin()).unwrap();
        assert_eq!(added.added, ["wasmtime", "wasmtimed", "runc"]);
        assert!(runtimes_of(&added.text).contains(&pair("runc", "io.containerd.runc.v2")));
        let removed = remove_runtimes(&added.text, &added.added, origin()).unwrap();
        assert_eq!(removed.text, bare);

        // Present already: not added, so not removed.
        let with_runc = add_runtimes(V2, origin()).unwrap();
        assert!(!with_runc.added.contains(&"runc".to_string()));
        let removed = remove_runtimes(&with_runc.text, &with_runc.added, origin()).unwrap();
        assert!(runtimes_of(&removed.text).contains(&pair("runc", "io.containerd.runc.v2")));
        assert_eq!(removed.text, V2);

        // Another default runtime: the user declared what it needs.
        let crun = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"crun\"\n";
        assert_eq!(
            add_runtimes(crun, origin()).unwrap().added,
            ["wasmtime", "wasmtimed"]
        );

        // Version 3 (containerd 2.x) keeps its default runtimes.
        assert_eq!(
            add_runtimes("version = 3\n", origin()).unwrap().added,
            ["wasmtime", "wasmtimed"]
        );
    }

    #[test]
    fn runc_given_settings_after_install_is_kept() {
        let added = add_runtimes("version = 2\n", origin()).unwrap();
        let edited = format!(
            "{}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n",
            added.text
        );
        let removed = remove_runtimes(&edited, &added.added, origin()).unwrap();
        assert_eq!(removed.kept.len(), 1, "{:?}", removed.kept);
        assert!(removed.kept[0].starts_with("runc"));
        assert_eq!(
            runtimes_of(&removed.text),
            [pair("runc", "io.containerd.runc.v2")]
        );
    }

    #[test]
    fn partial_install_adds_the_rest() {
        let one = "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime]\n  runtime_type = \"io.containerd.wasmtime.v1\"\n";
        let added = add_runtimes(one, origin()).unwrap();
        assert_eq!(added.added, ["wasmtimed"]);
        let removed = remove_runtimes(&added.text, &added.added, origin()).unwrap();
        assert_eq!(removed.text, one);
    }

    #[test]
    fn dotted_runtimes_stay_dotted() {
        let dotted = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  containerd.runtimes.runc.runtime_type = \"io.containerd.runc.v2\"\n";
        let added = add_runtimes(dotted, origin()).unwrap();
        assert_eq!(added.added, ["wasmtime", "wasmtimed"]);
        assert!(
            added
                .text
                .contains("containerd.runtimes.wasmtime.runtime_type"),
            "{}",
            added.text
        );
        assert_eq!(runtimes_of(&added.text).len(), 3);
        let removed = remove_runtimes(&added.text, &added.added, origin()).unwrap();
        assert_eq!(runtimes_of(&removed.text).len(), 1);
    }

    #[test]
    fn refuses_what_it_cannot_edit() {
        let e = add_runtimes("[plugins.cri]\n", origin())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no `version` line") && e.contains("version = 2"),
            "{e}"
        );
        let e = add_runtimes("version = 4\n", origin())
            .unwrap_err()
            .to_string();
        assert!(e.contains("version = 4"), "{e}");
        let e = add_runtimes("version = 2\n[grpc\n", origin())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let other = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n  runtime_type = \"io.containerd.spin.v2\"\n";
        let e = add_runtimes(other, origin()).unwrap_err().to_string();
        assert!(
            e.contains("io.containerd.spin.v2") && e.contains("Remove or rename"),
            "{e}"
        );
        let e = add_runtimes("version = 2\nplugins = 1\n", origin())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`plugins` is not a table"), "{e}");
    }

    #[test]
    fn changed_runtime_type_is_kept_on_uninstall() {
        let added = add_runtimes(V3, origin()).unwrap();
        let edited = added
            .text
            .replace("io.containerd.wasmtimed.v1", "io.containerd.other.v1");
        let removed = remove_runtimes(&edited, &added.added, origin()).unwrap();
        assert_eq!(removed.kept.len(), 1);
        assert!(removed.text.contains("io.containerd.other.v1"));
        assert!(!removed.text.contains("io.containerd.wasmtime.v1"));
    }
}
