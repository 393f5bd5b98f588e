//! lion's WebAssembly sandbox: plugins are components of the
//! `lion:plugin/plugin` world (`wit/plugin.wit`), run under wasmtime with WASI
//! preview 2 and nothing granted by default.
//!
//! A plugin is compiled once ([`WasmSandbox::load`]) into a pre-instantiated
//! component; every call gets a fresh store (no state leaks between calls)
//! with a memory limit and an epoch deadline for its timeout, on the pooling
//! allocator. See `docs/wasmtime-48-notes.md` for the API facts this rests on.
//!
//! This is the first slice of the plugin system: manifests, grants (preopens,
//! network, environment), the output cap, compiled-code caching and the
//! plugin manager come with the rest of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Trap,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../../wit",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bindings::{Plugin, PluginPre};

/// How often the epoch advances: the granularity of call timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Why a call or a load failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The bytes are not a valid component of the plugin world.
    #[error("invalid plugin component: {0}")]
    InvalidComponent(String),
    /// The call ran past its time limit.
    #[error("the call ran past its {0:?} limit")]
    Timeout(Duration),
    /// The plugin trapped (panic, stack overflow, out-of-bounds access…).
    #[error("the plugin trapped: {0}")]
    Trap(String),
    /// The plugin answered with an error.
    #[error("the plugin refused: {0}")]
    Refused(String),
    /// The host failed around the call.
    #[error("sandbox error: {0}")]
    Host(String),
}

/// Limits of one call.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Linear memory, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time.
    pub timeout: Duration,
}

/// What a store holds for one call.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    logs: Vec<(u8, String)>,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Log lines a call may write before it is stopped.
const MAX_LOG_LINES: usize = 1000;

impl bindings::lion::plugin::host_log::Host for CallState {
    async fn log(&mut self, level: u8, message: String) -> wasmtime::Result<()> {
        if self.logs.len() >= MAX_LOG_LINES {
            wasmtime::bail!("the plugin logged more than {MAX_LOG_LINES} lines");
        }
        self.logs.push((level, message));
        Ok(())
    }
}

/// The engine and the epoch ticker shared by every plugin.
pub struct WasmSandbox {
    engine: Engine,
    linker: Linker<CallState>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for WasmSandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl WasmSandbox {
    /// An engine with epoch interruption and the pooling allocator, and a
    /// linker offering WASI p2 (nothing granted) and the host interfaces.
    pub fn new() -> Result<Self, SandboxError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(256)
            .total_core_instances(1024)
            .total_memories(512)
            .total_tables(512)
            .total_stacks(256)
            .max_memory_size(256 << 20);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .max_wasm_stack(512 * 1024)
            .memory_reservation(1 << 30)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(host)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(host)?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(host)?;
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
            stop_ticker,
        })
    }

    /// Compiles a component and pre-instantiates it against the linker.
    pub fn load(&self, component: &[u8]) -> Result<LoadedPlugin, SandboxError> {
        let compiled = Component::new(&self.engine, component)
            .map_err(|e| SandboxError::InvalidComponent(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&compiled)
            .and_then(PluginPre::new)
            .map_err(|e| SandboxError::InvalidComponent(format!("{e:#}")))?;
        Ok(LoadedPlugin {
            engine: self.engine.clone(),
            pre,
        })
    }
}

/// A compiled plugin, ready to be called.
pub struct LoadedPlugin {
    engine: Engine,
    pre: PluginPre<CallState>,
}

/// What a call returned, with what the plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutput {
    /// The plugin's JSON output.
    pub output: String,
    /// Lines it logged, with their levels.
    pub logs: Vec<(u8, String)>,
}

impl LoadedPlugin {
    /// Calls `function` with JSON `input` in a fresh store under `limits`.
    pub async fn invoke(
        &self,
        function: &str,
        input: &str,
        limits: CallLimits,
    ) -> Result<CallOutput, SandboxError> {
        let state = CallState {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .build(),
            logs: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks =
            u64::try_from(limits.timeout.as_millis() / EPOCH_TICK.as_millis()).unwrap_or(u64::MAX);
        store.set_epoch_deadline(ticks.max(1));
        let result = async {
            let plugin = self.pre.instantiate_async(&mut store).await?;
            plugin.call_invoke(&mut store, function, input).await
        }
        .await;
        match result {
            Ok(Ok(output)) => Ok(CallOutput {
                output,
                logs: std::mem::take(&mut store.data_mut().logs),
            }),
            Ok(Err(refusal)) => Err(SandboxError::Refused(refusal)),
            Err(e) => Err(classify(&e, limits.timeout)),
        }
    }
}

/// Names a failed call: a timeout, a trap, or a host error.
fn classify(e: &wasmtime::Error, timeout: Duration) -> SandboxError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => SandboxError::Timeout(timeout),
        Some(trap) => SandboxError::Trap(trap.to_string()),
        None => SandboxError::Host(format!("{e:#}")),
    }
}

fn host(e: wasmtime::Error) -> SandboxError {
    SandboxError::Host(format!("{e:#}"))
}
