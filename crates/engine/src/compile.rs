//! Entrypoint bytes -> a compiled module or component, and the export to call.
//!
//! Every error here is about the user's image, so each one names the
//! entrypoint and says what was found instead of what was expected.
use std::fmt::Write as _;

use anyhow::{bail, Result};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex};
use wasmtime::{CodeBuilder, CodeHint, Engine, ExternType, Module};

/// A compiled guest.
pub(crate) enum Code {
    Module(Module),
    Component(Component),
}

/// Compiles `bytes` (wasm binary or WAT text) read from the entrypoint
/// `shown` (its guest path, for messages). Module or component is decided by
/// the binary header, never by the file name.
///
/// Blocking; costs a full Cranelift compilation.
pub(crate) fn compile(engine: &Engine, bytes: &[u8], shown: &str) -> Result<Code> {
    let is_binary = bytes.starts_with(b"\0asm");
    if !is_binary {
        if let Some(found) = not_wasm(bytes) {
            bail!("entrypoint {shown} is not a WebAssembly module or component (found {found})");
        }
    }
    let mut builder = CodeBuilder::new(engine);
    if let Err(e) = builder.wasm_binary_or_text(bytes, None) {
        bail!("entrypoint {shown} is not valid WebAssembly text: {e:#}");
    }
    let compiled = match builder.hint() {
        Some(CodeHint::Component) => builder.compile_component().map(Code::Component),
        // Unknown versions go to the module parser, whose error names them.
        Some(CodeHint::Module) | None => builder.compile_module().map(Code::Module),
    };
    compiled.map_err(|e| anyhow::anyhow!("entrypoint {shown} is not valid WebAssembly: {e:#}"))
}

/// Describes what `bytes` (which do not start with the wasm magic number)
/// are if they are not WAT either; `None` if they look like WAT.
fn not_wasm(bytes: &[u8]) -> Option<&'static str> {
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

/// Finds the function to call in a component: `export` (a top-level
/// function export), or `run` of the exported `wasi:cli/run` interface of
/// any version. It must take no parameters.
pub(crate) fn component_entry(
    engine: &Engine,
    component: &Component,
    shown: &str,
    export: Option<&str>,
) -> Result<ComponentExportIndex> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let found = match export {
        Some(name) => component.get_export(None, name),
        None => names
            .iter()
            .find(|n| **n == "wasi:cli/run" || n.starts_with("wasi:cli/run@"))
            .and_then(|run| component.get_export_index(None, *run))
            .and_then(|run| component.get_export(Some(&run), "run")),
    };
    let name = export.unwrap_or("wasi:cli/run");
    match found {
        Some((ComponentItem::ComponentFunc(func), index)) => {
            if func.params().len() != 0 {
                bail!(
                    "entrypoint {shown}: export '{name}' takes {} parameter(s); only a function without parameters can be run",
                    func.params().len()
                );
            }
            Ok(index)
        }
        _ => {
            let mut msg = format!(
                "entrypoint {shown} has no export named '{name}' (exports: {})",
                list(&names)
            );
            if export.is_none() {
                let _ = write!(
                    msg,
                    ": it is not a WASI command component; name the function to call as {shown}#<export>"
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
}
