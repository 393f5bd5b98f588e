//! lion's WebAssembly sandbox: the wasmtime adapter of the kernel's
//! [`Sandbox`] port. Plugins are components of the `lion:plugin/plugin`
//! world (`wit/plugin.wit`), run under wasmtime 48 with WASI preview 2 and
//! nothing granted by default.
//!
//! - [`WasmSandbox`] owns the engine (epoch interruption, fuel, the pooling
//!   allocator) and the epoch ticker; it compiles components and loads
//!   compiled artifacts the plugin manager has checked.
//! - `call` runs one call: a fresh store from the pre-instantiated
//!   component, WASI with only the granted directories, environment and
//!   socket addresses, memory and table limits, an epoch deadline and a
//!   tokio timeout, capped stdout/stderr, a cap on open handles.
//! - `bounds` adds what WASI does not bound by itself: stdout/stderr past
//!   the cap end the call, writes into granted directories are charged to
//!   a quota, a full handle table is an error for the guest.
//! - [`descriptors`] is the process's budget of descriptors for plugins
//!   (the soft `RLIMIT_NOFILE` raised to the hard limit, half of it for
//!   plugins); `disk` keeps what each read-write directory holds across
//!   calls (`max_dir_bytes`).
//! - `host` implements the host interfaces (logging, key-value, events,
//!   HTTP), each checked against the grant through the call's context.
//!
//! See `docs/wasmtime-48-notes.md` for the API facts this rests on.

pub mod baseline;
mod bounds;
mod call;
pub mod descriptors;
mod disk;
mod host;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentic_core::plugin::{
    Compiled, HostInterface, LoadedPlugin, Sandbox, SandboxError, VerifiedArtifact,
};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use call::{CallState, WasmPlugin};
use descriptors::DescriptorBudget;
use disk::DirLedgers;

mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../../wit",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// How often the epoch advances: the granularity of call timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The largest linear memory any plugin may have, whatever its manifest
/// says (each pooled memory slot reserves this much address space).
pub const MAX_MEMORY_BYTES: usize = 256 << 20;

/// How much of a pooled memory or table is reset in place (memset) when an
/// instance is returned, rather than decommitted.
const KEEP_RESIDENT_BYTES: usize = 64 << 10;

/// The prefix of lion's own host interfaces in a component's imports.
const LION_IMPORT_PREFIX: &str = "lion:plugin/";

/// The wasmtime engine and epoch ticker shared by every plugin.
pub struct WasmSandbox {
    engine: Engine,
    linker: Linker<CallState>,
    artifact_key: String,
    stop_ticker: Arc<AtomicBool>,
    /// What each read-write directory granted to a plugin holds.
    ledgers: Arc<DirLedgers>,
}

impl Drop for WasmSandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl WasmSandbox {
    /// An engine with epoch interruption, fuel and the pooling allocator,
    /// and a linker offering WASI p2 (nothing granted) and lion's host
    /// interfaces.
    pub fn new() -> Result<Self, SandboxError> {
        // Raise the descriptor limit now, before the process opens much.
        DescriptorBudget::process();
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(256)
            .total_core_instances(1024)
            .total_memories(512)
            .total_tables(512)
            .total_stacks(256)
            .table_elements(20_000)
            .max_memory_size(MAX_MEMORY_BYTES)
            // Reset a returning instance's memory and tables in place (only
            // the pages it dirtied, found with PAGEMAP_SCAN on Linux 6.7+)
            // rather than with madvise: no page faults on the next call, and
            // no TLB-shootdown IPIs to the other cores. Each call still gets
            // memory exactly as freshly instantiated.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .consume_fuel(true)
            .max_wasm_stack(512 * 1024)
            .memory_reservation(1 << 30)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(host)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(host)?;
        bounds::add_write_quota(&mut linker).map_err(host)?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(host)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let artifact_key = format!("wasmtime-48-{:016x}", hasher.finish());
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let stop = stop_ticker.clone();
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("lion-wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| SandboxError::Host(e.to_string()))?;
        Ok(Self {
            engine,
            linker,
            artifact_key,
            stop_ticker,
            ledgers: Arc::default(),
        })
    }

    /// Pre-instantiates a compiled component against the linker.
    fn prepare(&self, component: &Component) -> Result<Arc<dyn LoadedPlugin>, SandboxError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .and_then(bindings::PluginPre::new)
            .map_err(|e| SandboxError::InvalidComponent(format!("{e:#}")))?;
        Ok(Arc::new(WasmPlugin::new(
            self.engine.clone(),
            pre,
            self.ledgers.clone(),
        )))
    }
}

impl Sandbox for WasmSandbox {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn artifact_key(&self) -> &str {
        &self.artifact_key
    }

    fn compile(&self, component: &[u8]) -> Result<Compiled, SandboxError> {
        let compiled = Component::new(&self.engine, component)
            .map_err(|e| SandboxError::InvalidComponent(one_line(&e)))?;
        // Refuse anything that is not a component of the plugin world now,
        // rather than at its first call.
        self.prepare(&compiled)?;
        let mut imports = Vec::new();
        for (name, _) in compiled.component_type().imports(&self.engine) {
            let Some(rest) = name.strip_prefix(LION_IMPORT_PREFIX) else {
                continue;
            };
            let interface = rest.split('@').next().unwrap_or_default();
            let interface = match interface {
                "logging" => HostInterface::Log,
                other => HostInterface::from_name(other).ok_or_else(|| {
                    SandboxError::InvalidComponent(format!("unknown lion interface {name}"))
                })?,
            };
            imports.push(interface);
        }
        let artifact = compiled.serialize().map_err(host)?;
        Ok(Compiled { artifact, imports })
    }

    fn load(&self, artifact: &VerifiedArtifact) -> Result<Arc<dyn LoadedPlugin>, SandboxError> {
        // SAFETY: deserializing runs native code compiled from the bytes.
        // `VerifiedArtifact` only holds bytes this sandbox's `compile` just
        // produced, or bytes whose SHA-256 matched the hash recorded in the
        // tamper-evident log when `compile` produced them; wasmtime also
        // checks that they were compiled by this engine version and config.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, artifact.bytes()) }
            .map_err(|e| SandboxError::InvalidComponent(one_line(&e)))?;
        self.prepare(&component)
    }
}

/// A wasmtime error in one line.
fn one_line(e: &wasmtime::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn host(e: wasmtime::Error) -> SandboxError {
    SandboxError::Host(one_line(&e))
}
