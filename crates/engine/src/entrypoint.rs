//! `process.args[0]` -> the wasm file in the rootfs and the export to call.
use anyhow::{bail, Result};

/// Where the guest code is and what to call in it.
///
/// Built from `process.args[0]`, whose syntax is `path[#export]`, for example
/// `/app.wasm` (call `_start` or `wasi:cli/run`) or `/lib.wasm#handler` (call
/// the exported function `handler`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    /// Absolute path inside the guest's rootfs, e.g. `/app.wasm`.
    ///
    /// Not normalized: `..` components are kept so that resolving the path
    /// can refuse ones that leave the rootfs instead of silently clamping them.
    pub path: String,
    /// `#name` suffix of `process.args[0]`; `None` means `_start` / `wasi:cli/run`.
    pub export: Option<String>,
}

impl Entrypoint {
    /// Parses `process.args[0]`. A relative path is taken relative to `cwd`
    /// (the spec's `process.cwd`), the way a shell would find `./app.wasm`.
    ///
    /// Pure string work, no file system access: whether the file exists is
    /// checked by [`WasmEngine::prepare`](crate::WasmEngine::prepare).
    ///
    /// # Errors
    ///
    /// Fails if `arg0` is empty, or has an empty path or an empty export name
    /// around its `#`.
    ///
    /// # Example
    ///
    /// ```
    /// # use wasishim_engine::Entrypoint;
    /// let e = Entrypoint::parse("/app.wasm#my_func", "/")?;
    /// assert_eq!(e.path, "/app.wasm");
    /// assert_eq!(e.export.as_deref(), Some("my_func"));
    /// # anyhow::Ok(())
    /// ```
    pub fn parse(arg0: &str, cwd: &str) -> Result<Entrypoint> {
        if arg0.is_empty() {
            bail!("process.args[0] is empty: set it to the path of a .wasm file in the image, e.g. /app.wasm");
        }
        let (file, export) = split_export(arg0);
        if file.is_empty() {
            bail!("entrypoint '{arg0}' has no file before '#': write it as /app.wasm#name");
        }
        if export == Some("") {
            bail!("entrypoint '{arg0}' has an empty export name after '#': write /app.wasm#name, or drop the '#' to run _start / wasi:cli/run");
        }
        let path = if file.starts_with('/') {
            file.to_string()
        } else {
            let cwd = cwd.trim_matches('/');
            let file = file.strip_prefix("./").unwrap_or(file);
            if cwd.is_empty() {
                format!("/{file}")
            } else {
                format!("/{cwd}/{file}")
            }
        };
        Ok(Entrypoint {
            path,
            export: export.map(str::to_string),
        })
    }
}

/// Splits `path#export` at the last `#`, so a path may itself contain `#` as
/// long as an export is named too.
pub(crate) fn split_export(arg0: &str) -> (&str, Option<&str>) {
    match arg0.rsplit_once('#') {
        Some((file, export)) => (file, Some(export)),
        None => (arg0, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arg0: &str, cwd: &str) -> Entrypoint {
        match Entrypoint::parse(arg0, cwd) {
            Ok(e) => e,
            Err(e) => panic!("parse({arg0:?}, {cwd:?}) failed: {e}"),
        }
    }

    #[test]
    fn absolute_path_without_export() {
        let e = parse("/app.wasm", "/");
        assert_eq!(e.path, "/app.wasm");
        assert_eq!(e.export, None);
    }

    #[test]
    fn export_after_hash() {
        let e = parse("/app.wasm#my_func", "/work");
        assert_eq!(e.path, "/app.wasm");
        assert_eq!(e.export.as_deref(), Some("my_func"));
    }

    #[test]
    fn relative_paths_are_relative_to_cwd() {
        assert_eq!(parse("app.wasm", "/").path, "/app.wasm");
        assert_eq!(parse("app.wasm", "/srv").path, "/srv/app.wasm");
        assert_eq!(parse("./bin/app.wasm", "/srv/").path, "/srv/bin/app.wasm");
        assert_eq!(parse("app.wasm#f", "srv").path, "/srv/app.wasm");
    }

    #[test]
    fn dot_dot_is_kept_for_the_resolver_to_refuse() {
        assert_eq!(parse("../../etc/passwd", "/").path, "/../../etc/passwd");
    }

    #[test]
    fn last_hash_separates_the_export() {
        let e = parse("/a#b.wasm#run", "/");
        assert_eq!(e.path, "/a#b.wasm");
        assert_eq!(e.export.as_deref(), Some("run"));
    }

    #[test]
    fn empty_parts_are_errors() {
        for bad in ["", "#f", "/app.wasm#"] {
            assert!(Entrypoint::parse(bad, "/").is_err(), "{bad:?} was accepted");
        }
        let err = Entrypoint::parse("/app.wasm#", "/")
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("empty export name"), "{err}");
    }
}
