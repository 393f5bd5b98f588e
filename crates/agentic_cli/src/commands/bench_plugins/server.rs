//! What `bench plugins` measures of a server plugin (an MCP server run as
//! a jailed subprocess), on the echo example server (`echo` with
//! `{"text":"Ada"}`), installed into a scratch home as `lion plugin install`
//! does: through the plugin manager with [`ProcessSandbox`].
//!
//! Each figure has a baseline measured in the same run on the same
//! command, arguments and working directory, the same tool and the same
//! input:
//!
//! - **cold start to the first tool result**: the server started
//!   unsandboxed (a plain spawn, an MCP session, the call) against the
//!   same server started by the sandbox ([`ProcessSandbox`] through the
//!   kernel's `ServerSandbox` port: its files checked against their install
//!   hash, the jail — namespaces, mounts, Landlock, seccomp, cgroups — the
//!   session, `tools/list` to compare with what was approved; then the
//!   call), and against a start through the manager (what a call after an
//!   unload pays: the sandbox's start, the `plugin_loaded` event committed,
//!   the call recorded). The three are interleaved, one of each per round
//!   and each round beginning with the next, so drift hits all alike;
//! - **warm calls**, sequential: the bare MCP call on the unsandboxed
//!   session, the sandbox's call on its warm jailed server (the jail's and
//!   the adapter's share: input parsed, output converted), and the call
//!   through the manager with asynchronous recording (schemas, limits,
//!   events); the three servers run at once and the paths take turns of
//!   [`WARM_TURN`] calls, so drift hits all alike, each turn ending with
//!   the manager's appends flushed untimed, so they do not land on another
//!   path's turn;
//! - the manager's call with **durable** recording, as `lion plugin call`
//!   makes it (beside the same-run `fdatasync`, in the table).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentic_core::Durability;
use agentic_core::plugin::{
    CallContext, CallOptions, LoadedPlugin, NoDenials, PluginManager, PluginManifest, ServerLaunch,
    ServerSandbox, ServerSpec,
};
use agentic_mcp::{McpSession, ProcessSandbox, SessionConfig};
use agentic_store::{SqliteOptions, SqliteStore};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::process::{Child, Command};
use uuid::Uuid;

use super::measure::{Latency, Plan};
use super::{SERVER_FUNCTION, SERVER_INPUT, SERVER_TEXT};
use crate::commands::Ctx;
use crate::commands::plugin::manager;

/// How long one call (or one start) may take before the bench gives up:
/// far above anything measured, it only ends a stuck run.
const DEADLINE: Duration = Duration::from_secs(20);

/// Warm calls made on one path before the next path's turn.
const WARM_TURN: usize = 50;

/// The unsandboxed server's environment: the variables the jail gives
/// every server besides its granted ones (`HOME` and `TMPDIR` are the
/// host's `/tmp` here), and nothing else.
const PLAIN_ENV: &[(&str, &str)] = &[
    ("HOME", "/tmp"),
    ("TMPDIR", "/tmp"),
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("LANG", "C.UTF-8"),
];

/// Everything measured of the server.
pub(super) struct ServerReport {
    /// The plugin's name.
    pub(super) plugin: String,
    /// The executable started (resolved at install).
    pub(super) command: PathBuf,
    /// Cold start to the first tool result, unsandboxed.
    pub(super) cold_plain: Latency,
    /// The same, started by the sandbox (in its jail).
    pub(super) cold_sandboxed: Latency,
    /// The same, through the manager (load after an unload, then the call).
    pub(super) cold_manager: Latency,
    /// Warm bare MCP calls on the unsandboxed session.
    pub(super) warm_plain: Latency,
    /// Warm calls of the sandbox's warm (jailed) server, without the
    /// manager.
    pub(super) warm_sandboxed: Latency,
    /// Warm calls through the manager, asynchronous recording.
    pub(super) warm_manager: Latency,
    /// Warm calls through the manager, durable recording.
    pub(super) warm_durable: Latency,
}

/// An unsandboxed server: the process and its session.
struct Plain {
    child: Child,
    session: McpSession,
}

impl Plain {
    /// Starts `spec`'s command as a plain child (same program, arguments
    /// and working directory as in its jail, the environment of
    /// [`PLAIN_ENV`]; stdin and stdout piped) and runs the MCP handshake.
    async fn start(spec: &ServerSpec) -> Result<Self> {
        let mut child = Command::new(&spec.command)
            .args(&spec.args)
            .env_clear()
            .envs(PLAIN_ENV.iter().copied())
            .current_dir(&spec.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} unsandboxed", spec.command.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the unsandboxed server has no pipes");
        };
        let session = McpSession::connect(stdout, stdin, SessionConfig::default())
            .await
            .context("the unsandboxed server did not start")?;
        Ok(Self { child, session })
    }

    /// Ends the session and kills the process (and reaps it).
    async fn stop(mut self) {
        self.session.close().await;
        let _ = self.child.kill().await;
    }
}

/// One bare MCP call of the echo tool on `session`; fails unless it
/// echoes.
async fn bare_call(session: &McpSession, arguments: &Value) -> Result<()> {
    let result = session
        .call_tool(SERVER_FUNCTION, arguments.clone(), DEADLINE)
        .await?;
    let text = result
        .structured_content
        .as_ref()
        .and_then(|s| s.get("text"))
        .and_then(Value::as_str);
    if text != Some(SERVER_TEXT) {
        bail!("{SERVER_FUNCTION} {SERVER_INPUT} answered {result:?}, not {SERVER_TEXT:?}");
    }
    Ok(())
}

/// One call of the echo function on `plugin` as the sandbox runs it (a
/// fresh call context, as the manager makes for each call); fails unless
/// it echoes.
async fn sandbox_call(plugin: &dyn LoadedPlugin, launch: &ServerLaunch) -> Result<()> {
    let ctx = CallContext::new(
        &launch.name,
        Uuid::now_v7(),
        Arc::new(launch.grant.clone()),
        launch.call_limits,
        Arc::default(),
    );
    let output = plugin
        .call(SERVER_FUNCTION, SERVER_INPUT, Arc::new(ctx))
        .await
        .map_err(|failure| anyhow!("{}.{SERVER_FUNCTION}: {failure}", launch.name))?;
    let output: Value = serde_json::from_str(&output)?;
    if output.get("text").and_then(Value::as_str) != Some(SERVER_TEXT) {
        bail!("{SERVER_FUNCTION} {SERVER_INPUT} answered {output}, not {SERVER_TEXT:?}");
    }
    Ok(())
}

/// One call of the echo function through `manager`; fails unless it
/// echoes.
async fn managed_call(manager: &PluginManager, name: &str) -> Result<()> {
    let output = manager
        .call(name, SERVER_FUNCTION, SERVER_INPUT, CallOptions::default())
        .await?;
    if output.get("text").and_then(Value::as_str) != Some(SERVER_TEXT) {
        bail!("{name}.{SERVER_FUNCTION} {SERVER_INPUT} answered {output}, not {SERVER_TEXT:?}");
    }
    Ok(())
}

/// `warmup` untimed calls of `call`, then `calls` timed ones.
async fn warm<F, Fut>(warmup: usize, calls: usize, mut call: F) -> Result<Latency>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for _ in 0..warmup {
        call().await?;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await?;
        samples.push(started.elapsed());
    }
    Ok(Latency::of(samples))
}

/// `warmup` untimed calls of each of three paths (`call(path)`), then
/// `calls` timed ones of each, in turns of [`WARM_TURN`] sequential calls
/// per path, each round of turns beginning with the next path: drift in the
/// machine's speed hits all three alike. Within a turn each path's calls
/// follow their own (the manager's background appends overlap its next
/// calls, as they would in a run of calls); after each turn `settle(path)`
/// runs untimed (the manager's flush), so no path's leftover work lands on
/// the next path's turn.
async fn in_turns<F, Fut, S, SFut>(
    warmup: usize,
    calls: usize,
    mut call: F,
    mut settle: S,
) -> Result<[Latency; 3]>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<()>>,
    S: FnMut(usize) -> SFut,
    SFut: Future<Output = Result<()>>,
{
    for path in 0..3 {
        for _ in 0..warmup {
            call(path).await?;
        }
        settle(path).await?;
    }
    let mut samples = [const { Vec::new() }; 3];
    for round in 0..calls.div_ceil(WARM_TURN) {
        let turn = WARM_TURN.min(calls - round * WARM_TURN);
        for path in (0..3).map(|i| (round + i) % 3) {
            for _ in 0..turn {
                let started = Instant::now();
                call(path).await?;
                samples[path].push(started.elapsed());
            }
            settle(path).await?;
        }
    }
    Ok(samples.map(Latency::of))
}

/// Installs the server of `manifest` into a scratch home in `home` and
/// measures it.
pub(super) async fn measure_server(
    plan: &Plan,
    home: &Path,
    manifest: PluginManifest,
    ctx: Ctx,
) -> Result<ServerReport> {
    errln!(
        "bench: installing the {} server into a scratch home…",
        manifest.name
    );
    std::fs::create_dir_all(home)
        .with_context(|| format!("cannot create the scratch home {}", home.display()))?;
    let sqlite = Arc::new(SqliteStore::open(home, SqliteOptions::default())?);
    let managed = manager(home, sqlite.clone(), ctx, Durability::Async)?;
    let durable = manager(home, sqlite.clone(), ctx, Durability::Durable)?;
    let grant = manifest.permissions.clone();
    let plugin = manifest.name.clone();
    let result = async {
        let record = managed.install(manifest, grant).await?;
        let installed = &record.installed;
        let name = installed.name().to_owned();
        let spec = installed
            .manifest
            .server
            .clone()
            .ok_or_else(|| anyhow!("{name} is not a server plugin"))?;
        if !installed.manifest.functions.contains_key(SERVER_FUNCTION) {
            bail!("the {name} server lists no tool {SERVER_FUNCTION}: bench plugins measures echo");
        }
        // What the manager gives the sandbox for this plugin (no granted
        // variables: echo asks for none), with a scratch folder of its own.
        let launch = ServerLaunch {
            name: name.clone(),
            spec: spec.clone(),
            grant: installed.grant.clone(),
            env: Vec::new(),
            call_limits: installed.manifest.limits,
            approved: installed.manifest.functions.clone(),
            scratch: home.join("bench-scratch"),
            // echo is granted no host: nothing is forwarded, nothing denied.
            denials: Arc::new(NoDenials),
        };
        let sandbox = ProcessSandbox::new();
        let arguments: Value = serde_json::from_str(SERVER_INPUT)?;

        // Every path answers before anything is timed.
        managed_call(&managed, &name).await?;
        managed_call(&durable, &name).await?;

        errln!(
            "bench: {} cold starts of {name} on each path (unsandboxed, sandboxed, through \
             the manager)…",
            plan.cold_starts
        );
        let mut cold = [const { Vec::new() }; 3];
        for round in 0..plan.cold_starts {
            // Each round starts with another path, so that none always
            // follows the same one.
            for path in (0..3).map(|i| (round + i) % 3) {
                let elapsed = match path {
                    0 => {
                        let started = Instant::now();
                        let plain = Plain::start(&spec).await?;
                        bare_call(&plain.session, &arguments).await?;
                        let elapsed = started.elapsed();
                        plain.stop().await;
                        elapsed
                    }
                    1 => {
                        let started = Instant::now();
                        let server = sandbox.start(&launch).await?;
                        sandbox_call(server.plugin.as_ref(), &launch).await?;
                        let elapsed = started.elapsed();
                        // Dropping the warm server kills its jail.
                        drop(server);
                        elapsed
                    }
                    _ => {
                        // The warm server is dropped (its jail killed)
                        // before the clock starts; the call loads it again.
                        managed.unload(&name).await;
                        let started = Instant::now();
                        managed_call(&managed, &name).await?;
                        started.elapsed()
                    }
                };
                cold[path].push(elapsed);
            }
        }
        let [cold_plain, cold_sandboxed, cold_manager] = cold.map(Latency::of);

        errln!(
            "bench: {} warm calls of {name} on each path, in turns of {WARM_TURN}…",
            plan.server_calls
        );
        let plain = Plain::start(&spec).await?;
        let warm_calls = async {
            let server = sandbox.start(&launch).await?;
            let calls = |path: usize| {
                let plain = &plain;
                let server = &server;
                let (arguments, launch, managed, name) = (&arguments, &launch, &managed, &name);
                async move {
                    match path {
                        0 => bare_call(&plain.session, arguments).await,
                        1 => sandbox_call(server.plugin.as_ref(), launch).await,
                        _ => managed_call(managed, name).await,
                    }
                }
            };
            let settle = |path: usize| {
                let managed = &managed;
                async move {
                    if path == 2 {
                        managed.flush().await?;
                    }
                    Ok(())
                }
            };
            let warm = in_turns(plan.warmup, plan.server_calls, calls, settle).await;
            // Dropping the warm server kills its jail.
            drop(server);
            warm
        }
        .await;
        plain.stop().await;
        let [warm_plain, warm_sandboxed, warm_manager] = warm_calls?;
        managed.flush().await?;
        errln!(
            "bench: {} warm calls of {name} with durable recording…",
            plan.server_durable_calls
        );
        let warm_durable = warm(
            plan.warmup.min(plan.server_durable_calls),
            plan.server_durable_calls,
            || managed_call(&durable, &name),
        )
        .await?;
        Ok(ServerReport {
            plugin: name,
            command: spec.command,
            cold_plain,
            cold_sandboxed,
            cold_manager,
            warm_plain,
            warm_sandboxed,
            warm_manager,
            warm_durable,
        })
    }
    .await;
    // Stop the warm servers and close the scratch store before its home is
    // deleted: each manager's background appender holds it until closed.
    for m in [&managed, &durable] {
        m.unload(&plugin).await;
    }
    managed.close().await;
    durable.close().await;
    drop(sqlite);
    result
}

/// The server plugin's directory holds a manifest naming a server: read it
/// (paths resolved as `lion plugin install` does).
pub(super) fn read_server_manifest(dir: &Path) -> Result<PluginManifest> {
    let path = dir.join("plugin.toml");
    if !path.is_file() {
        bail!(
            "no server plugin in {} (no plugin.toml): run from the repository root (the echo \
             server is plugins/servers/echo), or give --server DIR",
            dir.display()
        );
    }
    let manifest = PluginManager::read_manifest(&path)?;
    if manifest.server.is_none() {
        bail!("plugin {} is not a server plugin", manifest.name);
    }
    Ok(manifest)
}
