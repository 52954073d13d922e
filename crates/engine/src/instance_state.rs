//! The host memory a guest's instances hold besides its linear memories and
//! tables: each core instance's `VMContext` (imports, globals, table and
//! memory definitions, a function reference per function) and each
//! component instance's state. wasmtime allocates it per instantiation and
//! does not say how large it is, so it is estimated from the code's sections
//! (an upper bound) and counted against the container's memory limit once
//! per store, with the stack, before anything runs.
//!
//! The estimate reads section headers and counts only, the way a validator
//! starts, never function bodies or WAT text (the compile worker parses
//! those).
use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind, ComponentTypeRef, Encoding,
    Imports, Instance, Parser, Payload,
};

/// Host bytes counted per item an instance keeps a slot for (an import, a
/// function's reference, a global, a table or memory definition, a type
/// id): wasmtime 48's largest such slot is a 32-byte function reference,
/// so 64 is twice the largest.
const ITEM_BYTES: u64 = 64;

/// Counted per instance for its fixed part (wasmtime's `Instance` and
/// `VMContext` headers, a few hundred bytes) and per-instance bookkeeping.
const FIXED_BYTES: u64 = 4 << 10;

/// The most wasmtime's instance pool lets one instance hold
/// (`max_core_instance_size` in pool.rs): what an instantiation of a module
/// not found in the component is counted at.
pub(crate) const MAX_INSTANCE_BYTES: u64 = 4 << 20;

/// Core instances a component in WAT text may make (the limiter allows no
/// more): its instantiations are not counted, as the text is not parsed here.
const TEXT_COMPONENT_INSTANCES: u32 = 4;

/// The shortest WAT text that declares one item: `(func)`.
const TEXT_BYTES_PER_ITEM: u64 = 6;

/// The instances one store of a guest makes, and the host memory they hold
/// at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InstanceState {
    /// Core instantiations the code declares (one for a module). The
    /// store's limiter allows no more, so the estimate stays a bound.
    pub(crate) core_instances: u32,
    /// Bytes counted against the memory limit per store.
    pub(crate) bytes: u64,
}

impl InstanceState {
    /// Estimates the instance state of a wasm binary (module or component).
    /// WAT text, which only the compile worker parses, is bounded by its
    /// length instead: no item is declared in fewer than
    /// [`TEXT_BYTES_PER_ITEM`] bytes. A binary wasmparser cannot read (which
    /// the compiler refuses anyway) is bounded the same way.
    pub(crate) fn of(bytes: &[u8], component: bool) -> InstanceState {
        if bytes.starts_with(b"\0asm") {
            if let Ok(state) = estimate(bytes) {
                return state;
            }
        }
        let items = bytes.len() as u64 / TEXT_BYTES_PER_ITEM;
        let one = FIXED_BYTES.saturating_add(items.saturating_mul(ITEM_BYTES));
        match component {
            false => InstanceState {
                core_instances: 1,
                bytes: one,
            },
            true => InstanceState {
                core_instances: TEXT_COMPONENT_INSTANCES,
                bytes: one.saturating_mul(u64::from(TEXT_COMPONENT_INSTANCES) + 1),
            },
        }
    }
}

/// A module or component being read, innermost last.
enum Level {
    Module {
        items: u64,
    },
    Component {
        items: u64,
        /// The state of each core module this component defines, in index
        /// order.
        modules: Vec<u64>,
        /// False once something other than a definition (an import or an
        /// alias of a core module) took a place in the core module index
        /// space: instantiations are then counted at the largest module.
        exact: bool,
    },
}

/// Walks every module and component nested in `bytes`: each core
/// instantiation is counted at the state of the module it names, each
/// component at its own items.
fn estimate(bytes: &[u8]) -> wasmparser::Result<InstanceState> {
    let mut open: Vec<Level> = Vec::new();
    let mut core_instances = 0u64;
    let mut total = 0u64;
    let mut top_module = None;
    let state = |items: u64| FIXED_BYTES.saturating_add(items.saturating_mul(ITEM_BYTES));
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload?;
        let counted = match payload {
            Payload::Version { encoding, .. } => {
                open.push(match encoding {
                    Encoding::Module => Level::Module { items: 0 },
                    Encoding::Component => Level::Component {
                        items: 0,
                        modules: Vec::new(),
                        exact: true,
                    },
                });
                continue;
            }
            Payload::End(_) => {
                match open.pop() {
                    Some(Level::Module { items }) => match open.last_mut() {
                        Some(Level::Component { modules, .. }) => modules.push(state(items)),
                        _ => top_module = Some(state(items)),
                    },
                    Some(Level::Component { items, .. }) => {
                        total = total.saturating_add(state(items));
                    }
                    None => {}
                }
                continue;
            }
            Payload::InstanceSection(reader) => {
                let Some(Level::Component { modules, exact, .. }) = open.last() else {
                    continue;
                };
                let largest = modules.iter().copied().max().unwrap_or(MAX_INSTANCE_BYTES);
                for instance in reader {
                    // A bundle of exports is no instance of its own.
                    if let Instance::Instantiate { module_index, .. } = instance? {
                        let module = match exact {
                            true => usize::try_from(module_index)
                                .ok()
                                .and_then(|i| modules.get(i).copied())
                                .unwrap_or(largest),
                            false => largest,
                        };
                        core_instances += 1;
                        total = total.saturating_add(module);
                    }
                }
                0
            }
            Payload::ComponentAliasSection(reader) => {
                let count = u64::from(reader.count());
                for alias in reader {
                    let module = matches!(
                        alias?,
                        ComponentAlias::Outer {
                            kind: ComponentOuterAliasKind::CoreModule,
                            ..
                        } | ComponentAlias::InstanceExport {
                            kind: ComponentExternalKind::Module,
                            ..
                        }
                    );
                    if let (true, Some(Level::Component { exact, .. })) = (module, open.last_mut())
                    {
                        *exact = false;
                    }
                }
                count
            }
            Payload::ComponentImportSection(reader) => {
                let count = u64::from(reader.count());
                for import in reader {
                    let module = matches!(import?.ty, ComponentTypeRef::Module(_));
                    if let (true, Some(Level::Component { exact, .. })) = (module, open.last_mut())
                    {
                        *exact = false;
                    }
                }
                count
            }
            Payload::ImportSection(reader) => {
                let mut imports = 0u64;
                for group in reader {
                    imports += match group? {
                        Imports::Single(..) => 1,
                        Imports::Compact1 { items, .. } => u64::from(items.count()),
                        Imports::Compact2 { names, .. } => u64::from(names.count()),
                    };
                }
                imports
            }
            Payload::TypeSection(r) => u64::from(r.count()),
            Payload::FunctionSection(r) => u64::from(r.count()),
            Payload::TableSection(r) => u64::from(r.count()),
            Payload::MemorySection(r) => u64::from(r.count()),
            Payload::GlobalSection(r) => u64::from(r.count()),
            Payload::TagSection(r) => u64::from(r.count()),
            Payload::ComponentInstanceSection(r) => u64::from(r.count()),
            Payload::ComponentExportSection(r) => u64::from(r.count()),
            Payload::ComponentCanonicalSection(r) => u64::from(r.count()),
            Payload::ComponentTypeSection(r) => u64::from(r.count()),
            Payload::CoreTypeSection(r) => u64::from(r.count()),
            _ => 0,
        };
        match open.last_mut() {
            Some(Level::Module { items } | Level::Component { items, .. }) => {
                *items = items.saturating_add(counted);
            }
            None => {}
        }
    }
    if let Some(module) = top_module {
        return Ok(InstanceState {
            core_instances: 1,
            bytes: module,
        });
    }
    Ok(InstanceState {
        core_instances: u32::try_from(core_instances.max(1)).unwrap_or(u32::MAX),
        bytes: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("test WAT parses")
    }

    #[test]
    fn a_module_counts_its_items() {
        let small = InstanceState::of(&wat("(module (func))"), false);
        assert_eq!(small.core_instances, 1);
        assert_eq!(small.bytes, FIXED_BYTES + 2 * ITEM_BYTES);
        let globals: String = (0..1000).map(|_| "(global i32 (i32.const 0))").collect();
        let big = InstanceState::of(&wat(&format!("(module {globals})")), false);
        assert_eq!(big.bytes, FIXED_BYTES + 1000 * ITEM_BYTES);
    }

    #[test]
    fn a_component_counts_each_core_instantiation_at_its_module() {
        let component = wat(r#"(component
                (core module $a (func (export "f")) (func) (func))
                (core module $b)
                (core instance $i (instantiate $a))
                (core instance (instantiate $a))
                (core instance (instantiate $b))
                (core instance (export "f" (func $i "f"))))"#);
        let state = InstanceState::of(&component, true);
        // The bundle of exports is no instantiation.
        assert_eq!(state.core_instances, 3);
        let (module_a, module_b) = (FIXED_BYTES + 4 * ITEM_BYTES, FIXED_BYTES);
        let modules = 2 * module_a + module_b;
        assert!(state.bytes > modules, "{state:?}");
        assert!(state.bytes < modules + 2 * FIXED_BYTES, "{state:?}");
    }

    #[test]
    fn text_and_garbage_are_bounded_by_their_length() {
        let text = "(module (func) (func))";
        assert_eq!(
            InstanceState::of(text.as_bytes(), false),
            InstanceState {
                core_instances: 1,
                bytes: FIXED_BYTES + 3 * ITEM_BYTES
            }
        );
        let garbage = b"\0asm\x01\0\0\0\x05\xff";
        assert_eq!(
            InstanceState::of(garbage, false).bytes,
            FIXED_BYTES + ITEM_BYTES
        );
        let component = InstanceState::of(b"(component)", true);
        assert_eq!(component.core_instances, TEXT_COMPONENT_INSTANCES);
    }

    #[test]
    #[ignore = "prints the estimate of WASISHIM_ESTIMATE_FILE"]
    fn print_estimate() {
        let path = std::env::var("WASISHIM_ESTIMATE_FILE").unwrap_or_default();
        let bytes = std::fs::read(&path).unwrap_or_default();
        let component = bytes.get(4..8) != Some(&[1, 0, 0, 0][..]);
        eprintln!("{path}: {:?}", InstanceState::of(&bytes, component));
    }
}
