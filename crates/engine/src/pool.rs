//! wasmtime's instance pool and how it is shared out between the containers
//! of a process: the pool's size, and the share of its slots one container
//! may hold at once ([`PoolShare`]).
use anyhow::{bail, Result};
use wasmtime::PoolingAllocationConfig;

use crate::compile::Code;
use crate::instance_state::MAX_INSTANCE_BYTES;

/// Default of [`WasmEngineBuilder::pool_capacity`](crate::WasmEngineBuilder::pool_capacity).
pub const DEFAULT_POOL_CAPACITY: u32 = 1_000;

/// Default of [`WasmEngineBuilder::pool_containers`](crate::WasmEngineBuilder::pool_containers):
/// a process hosts one container.
pub const DEFAULT_POOL_CONTAINERS: u32 = 1;

/// Tables and core instances per pool slot of a memory: a component
/// typically has several of each per memory, and their slots cost little
/// (8 MiB of address space per table, nothing reserved per instance).
const SLOTS_PER_MEMORY: u32 = 4;

/// Caps of one store whatever the pool's size: a typical component has a
/// few dozen core instances, tables and memories.
const MAX_INSTANCES: u32 = 1_000;
const MAX_TABLES: u32 = 1_000;
const MAX_MEMORIES: u32 = 100;
/// Elements of one table: a table slot of the pool is sized for it (8 MiB
/// at 8 bytes per element).
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// How many pool slots of each kind one container may hold at once: the
/// pool's slots divided by the containers it is sized for, capped by what a
/// store may have anyway. Enforced per store by the guest's limiter (an
/// instantiation beyond it fails) and checked at prepare time against what
/// the code declares ([`PoolShare::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolShare {
    pub(crate) memories: u32,
    pub(crate) tables: u32,
    pub(crate) instances: u32,
}

impl PoolShare {
    /// The share of one of `containers` in a pool of `capacity` memories.
    pub(crate) fn of(capacity: u32, containers: u32) -> PoolShare {
        let containers = containers.max(1);
        let slots = |total: u32, cap: u32| (total / containers).clamp(1, cap);
        PoolShare {
            memories: slots(capacity, MAX_MEMORIES),
            tables: slots(capacity.saturating_mul(SLOTS_PER_MEMORY), MAX_TABLES),
            instances: slots(capacity.saturating_mul(SLOTS_PER_MEMORY), MAX_INSTANCES),
        }
    }

    /// Refuses code that declares more memories or tables than one container
    /// may hold, so that it fails at creation, naming the limit, instead of
    /// at its start. A component that instantiates imported modules cannot
    /// be counted ahead; its limiter still stops it at instantiation.
    pub(crate) fn check(&self, code: &Code, shown: &str) -> Result<()> {
        let needs = match code {
            Code::Module(module) => Some(module.resources_required()),
            Code::Component(component) => component.resources_required(),
        };
        let Some(needs) = needs else { return Ok(()) };
        for (kind, declared, share) in [
            ("linear memories", needs.num_memories, self.memories),
            ("tables", needs.num_tables, self.tables),
        ] {
            if declared > share {
                bail!(
                    "entrypoint {shown} declares {declared} {kind}, more than the {share} one container may have in this shim's instance pool (its capacity divided by the containers it is shared by: {POOL_CAPACITY_ENV} / {POOL_CONTAINERS_ENV}): build the guest with fewer, or give the shim a larger pool"
                );
            }
        }
        Ok(())
    }
}

/// Environment variable: memories (and async stacks, component instances;
/// four times as many tables and core instances) the instance pool holds.
pub const POOL_CAPACITY_ENV: &str = "WASISHIM_POOL_CAPACITY";
/// Environment variable: how many containers the pool is shared between.
pub const POOL_CONTAINERS_ENV: &str = "WASISHIM_POOL_CONTAINERS";

/// The pooling allocator's limits: per process, `capacity` concurrent linear
/// memories, component instances and async stacks, and four times as many
/// tables and core instances; per memory up to 4 GiB (wasmtime's default
/// reservation and guard pages); per module as many memories and tables,
/// and table elements, as a store may have (see [`PoolShare`]), so a guest
/// that runs with on-demand allocation runs in the pool too. Reserves about
/// 4.3 TiB of address space per 1000 memories and 8 GiB per 1000 tables (no
/// memory) when the engine is created.
///
/// A freed slot is reset by zeroing only the pages its guest dirtied
/// (`PAGEMAP_SCAN`, Linux 6.7+; `madvise` on older kernels), keeping the
/// first 256 KiB of a memory and 64 KiB of a table resident for the next
/// instance. An HTTP server creates and frees an instance per request: with
/// `madvise` resets and the page faults that follow, bare wasmtime took 47 us
/// per hello request of the http fixture, with this 23 us
/// (`crates/engine/examples/http_floor.rs`); larger sizes gained nothing.
/// The cost: up to about 320 KiB stays resident per slot that was ever used.
pub(crate) fn config(capacity: u32) -> PoolingAllocationConfig {
    let many = capacity.saturating_mul(SLOTS_PER_MEMORY);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_memories(capacity)
        .total_tables(many)
        .total_core_instances(many)
        .total_component_instances(capacity)
        .total_stacks(capacity)
        .max_memory_size(4 << 30)
        .max_memories_per_module(MAX_MEMORIES)
        .max_tables_per_module(MAX_TABLES)
        .table_elements(MAX_TABLE_ELEMENTS)
        // Only checked, not reserved: room for about 130,000 function
        // references; instance_state.rs counts an instantiation it cannot
        // place at this.
        .max_core_instance_size(MAX_INSTANCE_BYTES as usize)
        .max_component_instance_size(MAX_INSTANCE_BYTES as usize)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(256 << 10)
        .table_keep_resident(64 << 10);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_pool_is_shared_out_between_110_pods() {
        let share = PoolShare::of(10_000, 110);
        assert_eq!(
            share,
            PoolShare {
                memories: 90,
                tables: 363,
                instances: 363
            }
        );
        assert!(110 * share.memories <= 10_000 && 110 * share.tables <= 40_000);
        // One container: what a store may have anyway.
        let whole = PoolShare::of(1_000, 1);
        assert_eq!(
            (whole.memories, whole.tables, whole.instances),
            (100, 1_000, 1_000)
        );
        // Never nothing, even for a tiny pool.
        assert_eq!(PoolShare::of(1, 0).memories, 1);
    }
}
