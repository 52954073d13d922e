//! Entrypoint bytes -> a compiled module or component, and the export to call.
//!
//! Every error here is about the user's image, so each one names the
//! entrypoint and says what was found instead of what was expected.
use std::borrow::Cow;
use std::fmt::Write as _;

use anyhow::{bail, Result};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex};
use wasmtime::{CodeBuilder, CodeHint, Engine, ExternType, Module};

/// A compiled guest. Cheap to clone (wasmtime shares the code).
#[derive(Clone)]
pub(crate) enum Code {
    Module(Module),
    Component(Component),
}

impl Code {
    /// The code as wasmtime's native artifact, for the compiled-code cache.
    pub(crate) fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Code::Module(module) => module.serialize(),
            Code::Component(component) => component.serialize(),
        }
    }
}

/// Whether a wasm binary is a core module or a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Module,
    Component,
}

/// Refuses, without parsing them, bytes that cannot be a guest: wasmtime's
/// precompiled native code (never loaded from an image: it cannot be
/// verified) and files that are neither wasm nor WAT, saying what they are.
/// Cheap: looks at the first bytes only.
///
/// # Errors
///
/// Names the entrypoint `shown` (its guest path) and what was found.
pub(crate) fn check_source(bytes: &[u8], shown: &str) -> Result<()> {
    if bytes.starts_with(b"\x7fELF") && Engine::detect_precompiled(bytes).is_some() {
        bail!("entrypoint {shown} is not a WebAssembly module or component (found wasmtime precompiled native code, which is never loaded from an image because it cannot be verified: ship the .wasm file instead)");
    }
    if !bytes.starts_with(b"\0asm") {
        if let Some(found) = not_wasm(bytes) {
            bail!("entrypoint {shown} is not a WebAssembly module or component (found {found})");
        }
    }
    Ok(())
}

/// Turns checked source bytes ([`check_source`]) into a wasm binary
/// (parsing WAT text) and tells module from component by the binary
/// header, never by the file name. Cheap for a binary (borrowed as is); WAT
/// costs a parse, which is why the compile worker does it.
///
/// # Errors
///
/// A phrase completing "entrypoint <path> ...": the text is not valid WAT.
pub(crate) fn parse_source<'a>(
    engine: &Engine,
    bytes: &'a [u8],
) -> std::result::Result<(Cow<'a, [u8]>, Kind), String> {
    let binary = match wat::parse_bytes(bytes) {
        Ok(binary) => binary,
        Err(e) => return Err(format!("is not valid WebAssembly text: {e:#}")),
    };
    let mut builder = CodeBuilder::new(engine);
    let hint = match builder.wasm_binary(&*binary, None) {
        Ok(builder) => builder.hint(),
        Err(_) => None,
    };
    let kind = match hint {
        Some(CodeHint::Component) => Kind::Component,
        // Unknown versions go to the module parser, whose error names them.
        Some(CodeHint::Module) | None => Kind::Module,
    };
    Ok((binary, kind))
}

/// Compiles checked source bytes in this process: [`parse_source`], then
/// [`compile`]. Blocking; costs a full Cranelift compilation.
///
/// # Errors
///
/// Names the entrypoint `shown` and says why the bytes are not valid.
pub(crate) fn compile_source(engine: &Engine, bytes: &[u8], shown: &str) -> Result<Code> {
    let (binary, kind) =
        parse_source(engine, bytes).map_err(|why| anyhow::anyhow!("entrypoint {shown} {why}"))?;
    compile(engine, &binary, kind, shown)
}

/// Compiles the wasm `binary` (a `kind`, from [`parse_source`]) to
/// wasmtime's native artifact, which this process never loads: the compile
/// worker's job.
///
/// # Errors
///
/// A phrase completing "entrypoint <path> ...", with wasmtime's reason.
pub(crate) fn precompile(
    engine: &Engine,
    binary: &[u8],
    kind: Kind,
) -> std::result::Result<Vec<u8>, String> {
    let mut builder = CodeBuilder::new(engine);
    if let Err(e) = builder.wasm_binary(binary, None) {
        return Err(format!("cannot be compiled: {e:#}"));
    }
    let compiled = match kind {
        Kind::Component => builder.compile_component_serialized(),
        Kind::Module => builder.compile_module_serialized(),
    };
    compiled.map_err(|e| format!("is not valid WebAssembly: {e:#}"))
}

/// Compiles the wasm `binary` (from [`parse_source`]) of the entrypoint `shown`.
///
/// Blocking; costs a full Cranelift compilation.
///
/// # Errors
///
/// Fails if the binary is not valid WebAssembly, with wasmtime's reason.
pub(crate) fn compile(engine: &Engine, binary: &[u8], kind: Kind, shown: &str) -> Result<Code> {
    let mut builder = CodeBuilder::new(engine);
    if let Err(e) = builder.wasm_binary(binary, None) {
        bail!("entrypoint {shown} cannot be compiled: {e:#}");
    }
    let compiled = match kind {
        Kind::Component => builder.compile_component().map(Code::Component),
        Kind::Module => builder.compile_module().map(Code::Module),
    };
    compiled.map_err(|e| anyhow::anyhow!("entrypoint {shown} is not valid WebAssembly: {e:#}"))
}

/// Describes what `bytes` (which do not start with the wasm magic number)
/// are if they are not WAT either; `None` if they look like WAT.
pub(crate) fn not_wasm(bytes: &[u8]) -> Option<&'static str> {
    if bytes.is_empty() {
        return Some("an empty file");
    }
    if bytes.starts_with(b"\x7fELF") {
        return Some("an ELF executable");
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Some("binary data that is neither WebAssembly nor ELF");
    };
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with("#!") {
        return Some("a script starting with #!");
    }
    // WAT starts with an s-expression, possibly after comments.
    if text.starts_with('(') || text.starts_with(";;") {
        return None;
    }
    Some("text")
}

/// Which function of a module to call.
pub(crate) struct ModuleEntry {
    pub(crate) export: String,
    /// Call the WASI reactor initializer `_initialize` first: the module
    /// exports it and a specific function was named.
    pub(crate) initialize: bool,
}

/// Checks that the module exports the function to call: `export` or
/// `_start`, taking no parameters.
pub(crate) fn module_entry(
    module: &Module,
    shown: &str,
    export: Option<&str>,
) -> Result<ModuleEntry> {
    let name = export.unwrap_or("_start");
    match module.get_export(name) {
        Some(ExternType::Func(ty)) => {
            if ty.params().len() != 0 {
                bail!(
                    "entrypoint {shown}: export '{name}' takes {} parameter(s); only a function without parameters can be run",
                    ty.params().len()
                );
            }
        }
        _ => {
            let funcs: Vec<&str> = module
                .exports()
                .filter(|e| matches!(e.ty(), ExternType::Func(_)))
                .map(|e| e.name())
                .collect();
            let mut msg = format!(
                "entrypoint {shown} has no export named '{name}' (exports: {})",
                list(&funcs)
            );
            if export.is_none() {
                let _ = write!(
                    msg,
                    ": it is not a WASI command; name the function to call as {shown}#<export>"
                );
            }
            bail!(msg);
        }
    }
    // WASI preview 1 passes every buffer through the export `memory`, so
    // wasmtime fails each WASI call of a module without it.
    let uses_wasi = module
        .imports()
        .any(|i| i.module() == "wasi_snapshot_preview1" || i.module() == "wasi_unstable");
    if uses_wasi && !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        bail!("entrypoint {shown} imports WASI functions but exports no memory named 'memory', which WASI needs: export the module's memory as \"memory\"");
    }
    let initialize = export.is_some()
        && name != "_initialize"
        && matches!(module.get_export("_initialize"), Some(ExternType::Func(_)));
    Ok(ModuleEntry {
        export: name.to_string(),
        initialize,
    })
}

/// The interface a component exports to serve HTTP (version 0.2.x).
pub(crate) const HTTP_HANDLER: &str = "wasi:http/incoming-handler";

/// How a component guest runs.
pub(crate) enum ComponentEntry {
    /// Call this function once: `run` of `wasi:cli/run`, or a named export.
    Call(ComponentExportIndex),
    /// Serve HTTP: `handle` of `wasi:http/incoming-handler@0.2.x` is called
    /// once per request (see http.rs).
    Http,
}

/// Whether the export `name` is `interface`, unversioned or at any version.
fn is_interface(name: &str, interface: &str) -> bool {
    name.strip_prefix(interface)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('@'))
}

/// Whether the export `name` is `wasi:http/incoming-handler` of WASI 0.2
/// (any 0.2.x version; unversioned counts too).
fn is_http_handler_0_2(name: &str) -> bool {
    match name.strip_prefix(HTTP_HANDLER) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix("@0.2")
            .is_some_and(|v| v.is_empty() || v.starts_with('.')),
        None => false,
    }
}

/// Decides how to run a component: `export` (a top-level function export,
/// or `wasi:http/incoming-handler` to serve HTTP), else `run` of the exported
/// `wasi:cli/run` interface of any version, else HTTP if the component exports
/// `wasi:http/incoming-handler@0.2.x`. A function must take no parameters.
pub(crate) fn component_entry(
    engine: &Engine,
    component: &Component,
    shown: &str,
    export: Option<&str>,
) -> Result<ComponentEntry> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let serves_http = names.iter().any(|n| is_http_handler_0_2(n));
    if let Some(name) = export.filter(|e| is_interface(e, HTTP_HANDLER)) {
        if !is_http_handler_0_2(name) {
            bail!("entrypoint {shown}: {name} is not served; wasishim serves {HTTP_HANDLER} of WASI 0.2 (0.2.x) only");
        }
        if serves_http {
            return Ok(ComponentEntry::Http);
        }
        let http: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| is_interface(n, HTTP_HANDLER))
            .collect();
        if !http.is_empty() {
            bail!(
                "entrypoint {shown} exports {}, but wasishim serves {HTTP_HANDLER} of WASI 0.2 (0.2.x) only: build the component for WASI 0.2",
                http.join(", ")
            );
        }
        bail!(
            "entrypoint {shown} has no export named '{HTTP_HANDLER}@0.2.x' (exports: {}): it is not an HTTP server component",
            list(&names)
        );
    }
    let found = match export {
        Some(name) => component.get_export(None, name),
        None => names
            .iter()
            .find(|n| is_interface(n, "wasi:cli/run"))
            .and_then(|run| component.get_export_index(None, run))
            .and_then(|run| component.get_export(Some(&run), "run")),
    };
    if found.is_none() && export.is_none() && serves_http {
        return Ok(ComponentEntry::Http);
    }
    let name = export.unwrap_or("wasi:cli/run");
    match found {
        Some((ComponentItem::ComponentFunc(func), index)) => {
            if func.params().len() != 0 {
                bail!(
                    "entrypoint {shown}: export '{name}' takes {} parameter(s); only a function without parameters can be run",
                    func.params().len()
                );
            }
            Ok(ComponentEntry::Call(index))
        }
        _ => {
            let mut msg = format!(
                "entrypoint {shown} has no export named '{name}' (exports: {})",
                list(&names)
            );
            if export.is_none() {
                let _ = write!(
                    msg,
                    ": it is not a WASI command component nor an HTTP server ({HTTP_HANDLER}@0.2.x); name the function to call as {shown}#<export>"
                );
            }
            bail!(msg)
        }
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_what_is_not_wasm() {
        assert_eq!(not_wasm(b""), Some("an empty file"));
        assert_eq!(not_wasm(b"\x7fELF\x02\x01\x01"), Some("an ELF executable"));
        assert_eq!(
            not_wasm(b"#!/bin/sh\necho hi\n"),
            Some("a script starting with #!")
        );
        assert_eq!(not_wasm(b"hello world\n"), Some("text"));
        assert_eq!(
            not_wasm(b"\xff\xfe\x00\x01"),
            Some("binary data that is neither WebAssembly nor ELF")
        );
        assert_eq!(not_wasm(b"  (module)"), None);
        assert_eq!(not_wasm(b";; comment\n(module)"), None);
    }

    #[test]
    fn recognizes_the_http_handler_interface() {
        assert!(is_http_handler_0_2("wasi:http/incoming-handler"));
        assert!(is_http_handler_0_2("wasi:http/incoming-handler@0.2.0"));
        assert!(is_http_handler_0_2("wasi:http/incoming-handler@0.2.12"));
        assert!(is_http_handler_0_2("wasi:http/incoming-handler@0.2"));
        assert!(!is_http_handler_0_2(
            "wasi:http/incoming-handler@0.3.0-rc-2025-09-16"
        ));
        assert!(!is_http_handler_0_2("wasi:http/incoming-handler@0.20.0"));
        assert!(!is_http_handler_0_2("wasi:http/incoming-handlers"));
        assert!(is_interface("wasi:cli/run@0.2.3", "wasi:cli/run"));
        assert!(!is_interface("wasi:cli/runner", "wasi:cli/run"));
    }
}
