//! One plugin call: a fresh store from the pre-instantiated component, WASI
//! with only what was granted, memory/table/fuel limits, an epoch deadline
//! plus a tokio timeout (for a guest blocked in a host call), capped
//! stdout/stderr, and the failure named precisely.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentic_core::plugin::{CallContext, CallFailure, DirAccess, FailureKind, LoadedPlugin};
use async_trait::async_trait;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::MAX_MEMORY_BYTES;
use crate::bindings::PluginPre;
use crate::bounds::{CappedPipe, DirQuota, handle_limit, is_table_full};
use crate::descriptors::{DescriptorBudget, HOST_CALL_DESCRIPTORS};
use crate::disk::{DirLedgers, Writing};

/// How much later than the deadline the tokio timeout ends a call blocked in
/// a host call (wasm code is interrupted at the deadline itself).
const HOST_CALL_GRACE: Duration = Duration::from_millis(5);

/// Table elements a plugin may have in any one table.
const MAX_TABLE_ELEMENTS: usize = 10_000;

/// What a store holds for one call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    /// Every handle the guest holds (files, sockets, streams...), at most
    /// `max_open_handles` at once.
    pub(crate) table: ResourceTable,
    limiter: Limiter,
    /// The call's view of the host: grant checks, key-value, events.
    pub(crate) ctx: Arc<CallContext>,
    /// Each granted directory, in the grant's (and the preopens') order:
    /// its quota when read-write, `None` when read-only.
    pub(crate) dirs: Vec<Option<DirQuota>>,
    /// The granted directory (an index into `dirs`) of every descriptor
    /// the guest was handed, by its handle.
    pub(crate) descriptors: HashMap<u32, usize>,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Memory and table limits that record which limit a call hit, so the
/// failure says "memory limit" rather than the trap the guest died of.
struct Limiter {
    memory_bytes: usize,
    ctx: Arc<CallContext>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.ctx.hit_limit(CallFailure::new(
                FailureKind::MemoryLimit,
                format!(
                    "linear memory would grow to {desired} bytes, over the {} byte limit",
                    self.memory_bytes
                ),
            ));
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.ctx.hit_limit(CallFailure::new(
                FailureKind::MemoryLimit,
                format!(
                    "a table would grow to {desired} elements, over the {MAX_TABLE_ELEMENTS} limit"
                ),
            ));
            return Ok(false);
        }
        Ok(true)
    }
}

/// A compiled plugin, pre-instantiated, ready for calls.
pub(crate) struct WasmPlugin {
    engine: Engine,
    pre: PluginPre<CallState>,
    /// What each read-write directory holds, shared by every plugin of the
    /// sandbox.
    ledgers: Arc<DirLedgers>,
}

impl WasmPlugin {
    pub(crate) fn new(engine: Engine, pre: PluginPre<CallState>, ledgers: Arc<DirLedgers>) -> Self {
        Self {
            engine,
            pre,
            ledgers,
        }
    }

    /// The quota of each granted directory, and the call's right to write
    /// into each read-write one (measuring it when its ledger asks).
    async fn dir_quotas(&self, ctx: &CallContext) -> (Vec<Option<DirQuota>>, Vec<Writing>) {
        let mut dirs = Vec::with_capacity(ctx.grant().dirs.len());
        let mut writing = Vec::new();
        for dir in &ctx.grant().dirs {
            dirs.push(match dir.mode {
                DirAccess::ReadOnly => None,
                DirAccess::ReadWrite => {
                    // Two grants naming one directory differently share it.
                    let path =
                        std::fs::canonicalize(&dir.path).unwrap_or_else(|_| dir.path.clone());
                    let ledger = self.ledgers.get(&path);
                    writing.push(ledger.start_writing(ctx.limits().max_dir_bytes).await);
                    Some(DirQuota {
                        guest: dir.guest.as_str().into(),
                        ledger,
                    })
                }
            });
        }
        (dirs, writing)
    }

    /// The WASI context of one call: the granted directories and
    /// environment variables, sockets only to granted IP hosts (each
    /// refusal recorded), no name lookups, capped stdout and stderr.
    fn wasi(
        ctx: &Arc<CallContext>,
        stdout: &CappedPipe,
        stderr: &CappedPipe,
    ) -> Result<WasiCtx, CallFailure> {
        let mut builder = WasiCtxBuilder::new();
        builder.stdout(stdout.clone()).stderr(stderr.clone());
        for dir in &ctx.grant().dirs {
            let perms = match dir.mode {
                DirAccess::ReadOnly => FsPerms::ReadOnly,
                DirAccess::ReadWrite => FsPerms::ReadWrite,
            };
            let opened = open_granted_dir(ctx, &dir.path)?;
            builder
                .preopened_dir(
                    format!("/proc/self/fd/{}", opened.as_raw_fd()),
                    &dir.guest,
                    perms,
                )
                .map_err(|e| {
                    CallFailure::new(
                        FailureKind::Host,
                        format!(
                            "cannot open granted directory {}: {e:#}",
                            dir.path.display()
                        ),
                    )
                })?;
        }
        for name in &ctx.grant().env {
            if let Ok(value) = std::env::var(name) {
                builder.env(name, value);
            }
        }
        // TCP and UDP are on, but every address goes through the check below;
        // name lookups stay off (a host name reaches the network through the
        // `http` interface, where the host resolves it).
        let check = ctx.clone();
        builder
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(false)
            .socket_addr_check(move |addr: SocketAddr, usage: SocketAddrUse| {
                let allowed = match usage {
                    // Binding a local wildcard address reaches no one (and
                    // connect and send bind implicitly).
                    SocketAddrUse::TcpBind | SocketAddrUse::UdpBind
                        if addr.ip().is_unspecified() =>
                    {
                        true
                    }
                    SocketAddrUse::TcpConnect => check.socket_allowed(addr, "tcp connect"),
                    SocketAddrUse::UdpSend => check.socket_allowed(addr, "udp send"),
                    SocketAddrUse::UdpReceive => check.socket_allowed(addr, "udp receive"),
                    // A plugin is not a server.
                    other => {
                        check.deny(format!("{other:?} {addr}"), "plugins may not listen");
                        false
                    }
                };
                Box::pin(async move { allowed })
            });
        Ok(builder.build())
    }

    /// Runs the call in `store` (instantiation included: a start function
    /// runs under the same deadline).
    async fn run(
        &self,
        store: &mut Store<CallState>,
        function: &str,
        input: &str,
    ) -> wasmtime::Result<Result<String, String>> {
        let plugin = self.pre.instantiate_async(&mut *store).await?;
        plugin.call_invoke(&mut *store, function, input).await
    }
}

#[async_trait]
impl LoadedPlugin for WasmPlugin {
    async fn call(
        &self,
        function: &str,
        input: &str,
        ctx: Arc<CallContext>,
    ) -> Result<String, CallFailure> {
        let limits = *ctx.limits();
        let timeout = Duration::from_millis(limits.timeout_ms);
        // One wall clock for all of the call: waiting for descriptors,
        // measuring its directories and running.
        let deadline = Instant::now() + timeout;
        // Every descriptor the call may hold, reserved before it runs (and
        // given back after its store is dropped, at the end of this
        // function: `store` is declared after it).
        let dir_count = u32::try_from(ctx.grant().dirs.len()).unwrap_or(u32::MAX);
        let _descriptors = DescriptorBudget::process()
            .reserve(
                ctx.plugin(),
                limits
                    .max_open_handles
                    .saturating_add(dir_count)
                    .saturating_add(HOST_CALL_DESCRIPTORS),
                "its max_open_handles, one per granted directory and two for a connection",
                timeout,
            )
            .await?;
        let (dirs, _writing) = tokio::time::timeout_at(deadline.into(), self.dir_quotas(&ctx))
            .await
            .map_err(|_| {
                CallFailure::new(
                    FailureKind::Timeout,
                    format!(
                        "the call's {} ms limit passed before it ran (waiting for descriptors \
                         and measuring its directories)",
                        timeout.as_millis()
                    ),
                )
            })?;
        let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
        let stdout = CappedPipe::new(cap, ctx.clone(), "stdout");
        let stderr = CappedPipe::new(cap, ctx.clone(), "stderr");
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_open_handles as usize);
        let state = CallState {
            wasi: Self::wasi(&ctx, &stdout, &stderr)?,
            table,
            limiter: Limiter {
                memory_bytes: (limits.memory_mib as usize)
                    .saturating_mul(1 << 20)
                    .min(MAX_MEMORY_BYTES),
                ctx: ctx.clone(),
            },
            ctx: ctx.clone(),
            dirs,
            descriptors: HashMap::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let fuel = limits.fuel.unwrap_or(u64::MAX);
        store
            .set_fuel(fuel)
            .map_err(|e| CallFailure::new(FailureKind::Host, format!("{e:#}")))?;
        // Running wasm yields to the async runtime at every epoch tick (so a
        // spinning plugin does not hold a worker thread) and is interrupted
        // at the deadline. A guest blocked in a host call is not running
        // wasm: the tokio timeout, a little later, ends that.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        let result = tokio::time::timeout_at(
            (deadline + HOST_CALL_GRACE).into(),
            self.run(&mut store, function, input),
        )
        .await;
        match result {
            Ok(Ok(Ok(output))) => match ctx.limit_hit() {
                Some(failure) => Err(failure),
                None => Ok(output),
            },
            Ok(Ok(Err(refusal))) => Err(ctx
                .limit_hit()
                .unwrap_or_else(|| CallFailure::new(FailureKind::Refused, refusal))),
            Ok(Err(e)) => Err(ctx.limit_hit().unwrap_or_else(|| {
                if is_table_full(&e) {
                    handle_limit(limits.max_open_handles)
                } else {
                    classify(&e, timeout, &stderr)
                }
            })),
            Err(_elapsed) => Err(ctx.limit_hit().unwrap_or_else(|| {
                CallFailure::new(
                    FailureKind::Timeout,
                    format!(
                        "the call ran past its {} ms limit (in a host call)",
                        limits.timeout_ms
                    ),
                )
            })),
        }
    }
}

/// Names a failed call: a timeout, fuel, a trap with its code, an exit
/// (a trap with code `exit`: the plugin gave up its call), or a failure
/// around the call. A trap's message carries the last line the plugin wrote
/// to stderr (a Rust panic's message).
fn classify(e: &wasmtime::Error, timeout: Duration, stderr: &CappedPipe) -> CallFailure {
    if let Some(I32Exit(status)) = e.downcast_ref::<I32Exit>() {
        return CallFailure::trap(
            "exit",
            format!("the plugin called exit with status {status} instead of returning"),
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallFailure::new(
            FailureKind::Timeout,
            format!("the call ran past its {} ms limit", timeout.as_millis()),
        ),
        Some(Trap::OutOfFuel) => {
            CallFailure::new(FailureKind::FuelExhausted, "the call used up its fuel")
        }
        Some(trap) => {
            // What the plugin wrote to stderr before dying (a Rust panic's
            // "panicked at …" and its message), without rustc's hint.
            let said = String::from_utf8_lossy(&stderr.contents()).to_string();
            let said: Vec<&str> = said
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("note: run with"))
                .collect();
            let said = said.join(" ");
            let message = if said.is_empty() {
                trap.to_string()
            } else {
                let said: String = said.chars().take(500).collect();
                format!("{trap}; the plugin said: {said}")
            };
            CallFailure::trap(trap_code(trap), message)
        }
        None => CallFailure::new(FailureKind::Host, format!("{e:#}").replace('\n', " ")),
    }
}

/// A trap's code in snake case (`StackOverflow` → `stack_overflow`).
fn trap_code(trap: &Trap) -> String {
    let mut code = String::new();
    for (i, c) in format!("{trap:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                code.push('_');
            }
            code.push(c.to_ascii_lowercase());
        } else {
            code.push(c);
        }
    }
    code
}

/// Opens a granted directory by its recorded (canonical) host path without
/// following a symbolic link anywhere in it. The grant was checked by that
/// path (outside the home, what the operator named), but a plugin with a
/// read-write grant holding another granted path could swap that path for
/// a link between the check and this open; then the link is refused here,
/// recorded as a denial, and the directory is preopened through the very
/// descriptor opened (`/proc/self/fd/N`), so what was checked is what the
/// plugin gets.
fn open_granted_dir(ctx: &CallContext, path: &std::path::Path) -> Result<OwnedFd, CallFailure> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        let asked = format!("directory {}", path.display());
        let reason = if e == rustix::io::Errno::LOOP {
            "its path now holds a symbolic link (changed since it was granted)".to_owned()
        } else {
            format!("it cannot be opened: {e}")
        };
        let failure = CallFailure::new(
            FailureKind::PermissionDenied,
            format!("the granted {asked}: {reason}; check it and re-grant it"),
        );
        ctx.deny(asked, reason);
        ctx.hit_limit(failure.clone());
        failure
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_codes_are_snake_case() {
        assert_eq!(trap_code(&Trap::StackOverflow), "stack_overflow");
        assert_eq!(
            trap_code(&Trap::UnreachableCodeReached),
            "unreachable_code_reached"
        );
        assert_eq!(trap_code(&Trap::MemoryOutOfBounds), "memory_out_of_bounds");
    }
}
