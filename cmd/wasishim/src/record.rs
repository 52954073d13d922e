//! The install record: what `wasishim install` changed on the node, so that
//! `wasishim uninstall` undoes exactly that. A small JSON file, by default
//! `/var/lib/wasishim/install.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::files;

/// Where the record lives unless `--state` says otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/wasishim/install.json";

/// What one install changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The file edited (as this process saw it).
    pub config: PathBuf,
    /// Whether the install created that file (k3s/RKE2 `config.toml.tmpl`).
    pub created_config: bool,
    /// The file's text before the first install (empty if created).
    pub before: String,
    /// SHA-256 of the file as the last install left it.
    pub after_sha256: String,
    /// Runtimes the installs added to it.
    pub added: Vec<String>,
    /// Shims copied, each with whether a file was there before.
    pub binaries: Vec<Binary>,
}

/// One copied shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binary {
    /// Where it was put.
    pub path: PathBuf,
    /// Whether a file was at `path` before the first install (uninstall
    /// then leaves it, since the old file cannot be brought back).
    pub replaced: bool,
}

/// Reads the record at `path`; `None` if there is none.
pub fn load(path: &Path) -> Result<Option<Record>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = files::read_text(path)?;
    let record = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a wasishim install record; move it away (or pass another --state) and \
             run again",
            path.display()
        )
    })?;
    Ok(Some(record))
}

/// Writes `record` to `path`, creating its directory.
pub fn save(path: &Path, record: &Record) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| files::explain(e, "creating", dir))?;
    }
    let json = serde_json::to_string_pretty(record).context("encoding the install record")?;
    files::write_atomic(path, format!("{json}\n").as_bytes(), Some(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/install.json");
        assert_eq!(load(&path).unwrap(), None);
        let r = Record {
            config: "/etc/containerd/config.toml".into(),
            created_config: false,
            before: "version = 2\n# comment\n".into(),
            after_sha256: "ab".into(),
            added: vec!["wasmtime".into()],
            binaries: vec![Binary {
                path: "/usr/local/bin/containerd-shim-wasmtime-v1".into(),
                replaced: false,
            }],
        };
        save(&path, &r).unwrap();
        assert_eq!(load(&path).unwrap(), Some(r));
        std::fs::write(&path, "{").unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("not a wasishim install record"));
    }
}
