//! `lion plugin install|grant|list|info|call|remove`: plugins in the home
//! (WebAssembly components under wasmtime, MCP servers under OS
//! isolation), through the kernel's plugin manager.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentic_core::plugin::PLUGIN_HANDLER;
use agentic_core::plugin::{
    CallOptions, DirAccess, Grant, PluginError, PluginManager, PluginManifest, PluginRecord,
    PluginStatus,
};
use agentic_core::{Durability, EventStore, TaskOutcome, TaskSpec};
use agentic_mcp::{NetworkPlan, ProcessSandbox};
use agentic_wasm::WasmSandbox;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::Ctx;
use crate::cli::Paging;
use crate::{lease, output};

/// Where a home keeps its plugins' files.
pub fn plugins_dir(home: &Path) -> PathBuf {
    home.join("plugins")
}

/// A plugin manager over `store`, with the wasmtime sandbox for
/// WebAssembly plugins and the subprocess sandbox for server plugins.
pub fn manager(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    durability: Durability,
) -> Result<PluginManager> {
    let sandbox = WasmSandbox::new().context("cannot start the WebAssembly sandbox")?;
    let store: Arc<dyn EventStore> = store;
    let manager = PluginManager::new(
        store,
        Arc::new(sandbox),
        plugins_dir(home),
        ctx.correlation_id,
        durability,
    );
    manager.run_servers_with(Arc::new(ProcessSandbox::new()));
    Ok(manager)
}

/// `lion plugin install MANIFEST [--grant KIND:VALUE ...] [--grant-all]`.
pub async fn install(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    manifest: &Path,
    grants: &[String],
    grant_all: bool,
) -> Result<()> {
    let manifest = PluginManager::read_manifest(manifest)?;
    let grant = if grant_all {
        let grant = manifest.grant_everything()?;
        errln!(
            "warning: --grant-all gives {} everything its manifest asks for: {}",
            manifest.name,
            describe_permissions(&grant)
        );
        grant
    } else {
        manifest.grant_from(grants)?
    };
    let manager = manager(home, store, ctx, Durability::Durable)?;
    let record = manager.install(manifest, grant).await?;
    print_installed(ctx, &record)
}

/// What `install` prints: the record as JSON, or what was installed,
/// asked for, granted and refused, and its limits.
pub fn print_installed(ctx: Ctx, record: &PluginRecord) -> Result<()> {
    if ctx.json {
        return output::json(record);
    }
    let m = &record.installed.manifest;
    outln!(
        "installed {} {} ({})",
        m.name,
        m.version,
        short_hash(record.installed.sha256())
    );
    outln!("  asked:   {}", describe_permissions(&m.permissions));
    outln!(
        "  granted: {}",
        describe_permissions(&record.installed.grant)
    );
    let refused = refused(&m.permissions, &record.installed.grant);
    if !refused.is_empty() {
        outln!("  not granted (calls that need it are denied): {refused}");
    }
    outln!("  limits:  {}", describe_limits(m));
    if let Some(server) = &m.server {
        outln!(
            "  server:  {} {} (a warm process: it keeps state between calls)",
            server.command.display(),
            server.args.join(" ")
        );
        outln!("  network: {}", describe_network(&record.installed.grant));
        let names: Vec<&str> = m.functions.keys().map(String::as_str).collect();
        outln!("  tools:   {}", names.join(", "));
    }
    Ok(())
}

/// Every limit a plugin's calls run under, by its manifest name (the
/// operator sees what a plugin may use); a value recorded above lion's
/// ceiling (before there were ceilings) says the ceiling it runs at.
/// A server's process is limited by its own limits, and its calls only by
/// the call limits lion itself enforces (the others are WebAssembly's).
fn describe_limits(manifest: &PluginManifest) -> String {
    let limits = &manifest.limits;
    let capped = limits.capped();
    let server = manifest.server.as_ref();
    let applies = |name: &str| server.is_none() || SERVER_CALL_LIMITS.contains(&name);
    let mut parts: Vec<String> = limits
        .fields()
        .into_iter()
        .zip(capped.fields())
        .filter(|((name, _), _)| applies(name))
        .map(|((name, value), (_, runs_at))| {
            if value == runs_at {
                format!("{name}={value}")
            } else {
                format!("{name}={value} (runs at the ceiling {runs_at})")
            }
        })
        .collect();
    match server {
        Some(server) => parts.extend(
            server
                .limits
                .fields()
                .into_iter()
                .map(|(name, value)| format!("{name}={value}")),
        ),
        None => parts.push(match limits.fuel {
            Some(fuel) => format!("fuel={fuel}"),
            None => "fuel=unlimited".to_owned(),
        }),
    }
    parts.join(" ")
}

/// The call limits a server plugin's calls run under; its process has its
/// own (memory, processes, CPU...).
const SERVER_CALL_LIMITS: &[&str] = &[
    "timeout_ms",
    "max_input_bytes",
    "max_output_bytes",
    "max_concurrency",
];

/// `lion plugin grant NAME [--grant KIND:VALUE ...]`: the plugin's whole
/// new grant, checked against its recorded manifest.
pub async fn grant(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    name: &str,
    flags: &[String],
) -> Result<()> {
    let Some(snapshot) = store.plugin(name).await? else {
        bail!(PluginError::NotInstalled(name.to_owned()));
    };
    // The recorded manifest has no folder: every directory must be named.
    let grant = snapshot.record.installed.manifest.grant_from(flags)?;
    let manager = manager(home, store, ctx, Durability::Durable)?;
    let record = manager.grant(name, grant).await?;
    if ctx.json {
        return output::json(&record);
    }
    outln!(
        "granted {name}: {}",
        describe_permissions(&record.installed.grant)
    );
    let refused = refused(
        &record.installed.manifest.permissions,
        &record.installed.grant,
    );
    if !refused.is_empty() {
        outln!("  not granted (calls that need it are denied): {refused}");
    }
    Ok(())
}

/// `lion plugin list`.
pub async fn list(store: &dyn EventStore, ctx: Ctx, paging: Paging) -> Result<()> {
    let listed = output::listed(paging, |after, limit| store.plugins(after, limit)).await?;
    if ctx.json {
        return listed.json();
    }
    let plugins = &listed.items;
    if plugins.is_empty() && !listed.paged {
        outln!("no plugins installed (lion plugin install MANIFEST)");
        return Ok(());
    }
    let mut table = output::table([
        "name", "version", "sandbox", "status", "calls", "failed", "granted",
    ]);
    for p in plugins {
        let m = &p.installed.manifest;
        table.add_row(vec![
            m.name.clone(),
            m.version.clone(),
            p.installed.sandbox.clone(),
            status_name(p.status).to_owned(),
            p.calls.to_string(),
            p.failed.to_string(),
            output::clip(&describe_permissions(&p.installed.grant), 60),
        ]);
    }
    outln!("{table}");
    listed.more("lion plugin list");
    Ok(())
}

/// `lion plugin info NAME`.
pub async fn info(store: &dyn EventStore, ctx: Ctx, name: &str) -> Result<()> {
    let Some(snapshot) = store.plugin(name).await? else {
        bail!(PluginError::NotInstalled(name.to_owned()));
    };
    let (p, kv_keys) = (&snapshot.record, snapshot.kv.len());
    if ctx.json {
        return output::json(&json!({ "plugin": p, "kv_keys": kv_keys }));
    }
    let m = &p.installed.manifest;
    outln!("{} {} — {}", m.name, m.version, m.description);
    outln!("status:     {}", status_name(p.status));
    match &m.server {
        Some(server) => {
            outln!(
                "server:     {} {} ({} sandbox; a warm process that keeps state between calls)",
                server.command.display(),
                server.args.join(" "),
                p.installed.sandbox
            );
            if let Some(package) = &server.package {
                outln!("package:    {package}");
            }
            outln!("network:    {}", describe_network(&p.installed.grant));
            outln!("tree:       sha256 {}", p.installed.sha256());
        }
        None => outln!(
            "component:  sha256 {} ({} sandbox)",
            p.installed.sha256(),
            p.installed.sandbox
        ),
    }
    outln!("asked:      {}", describe_permissions(&m.permissions));
    outln!("granted:    {}", describe_permissions(&p.installed.grant));
    outln!("limits:     {}", describe_limits(m));
    outln!(
        "calls:      {} ({} succeeded, {} failed, {} failures in a row)",
        p.calls,
        p.succeeded,
        p.failed,
        p.consecutive_failures
    );
    outln!("kv keys:    {kv_keys}");
    outln!("functions:");
    for (name, f) in &m.functions {
        outln!("  {name}: {}", f.description);
        outln!("    input:  {}", f.input_schema);
        outln!("    output: {}", f.output_schema);
    }
    Ok(())
}

/// `lion plugin call NAME FUNCTION --input JSON`: prints the output JSON.
/// A server plugin is called through the kernel when one runs on the home
/// (its one warm server: a server keeps state, so two processes must not
/// each run a copy); anything else is called here.
pub async fn call(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    name: &str,
    function: &str,
    input: &str,
) -> Result<()> {
    let is_server = store
        .plugin(name)
        .await?
        .is_some_and(|s| s.record.installed.is_server());
    if is_server && lease::held(home) {
        return call_through_kernel(home, &store, ctx, name, function, input).await;
    }
    let manager = manager(home, store, ctx, Durability::Durable)?;
    let output = tokio::select! {
        output = manager.call(name, function, input, CallOptions::default()) => Some(output),
        _ = tokio::signal::ctrl_c() => None,
    };
    let Some(output) = output else {
        // Dropping the call records it as cancelled; wait for that (and for
        // any refusal its server's forwarding recorded).
        manager.flush().await?;
        manager.close().await;
        bail!("interrupted: the call of {name}.{function} was cancelled and recorded as such");
    };
    // What a server's sandbox refused during the call (a connection lion
    // would not forward) is recorded in tasks of the manager's own: wait
    // for them before this process ends.
    manager.close().await;
    let output: Value = output?;
    outln!("{output}");
    Ok(())
}

/// Has the kernel running on `home` make the call, as a `plugin` task:
/// prints its output, or fails with the call's error.
async fn call_through_kernel(
    home: &Path,
    store: &Arc<dyn EventStore>,
    ctx: Ctx,
    name: &str,
    function: &str,
    input: &str,
) -> Result<()> {
    let input: Value = serde_json::from_str(input).context("--input is not valid JSON")?;
    let spec = TaskSpec::new(
        PLUGIN_HANDLER,
        json!({"plugin": name, "function": function, "input": input}),
    );
    tracing::info!(
        plugin = name,
        function,
        "calling through the running kernel"
    );
    let (id, outcome) = super::task::run_by_kernel(home, store, ctx, spec, false).await?;
    match outcome {
        TaskOutcome::Completed(output) => {
            outln!("{output}");
            Ok(())
        }
        TaskOutcome::Failed(error) => bail!("{error}"),
        TaskOutcome::TimedOut => bail!("the call of {name}.{function} timed out (task {id})"),
        TaskOutcome::Cancelled(reason) => {
            bail!("the call of {name}.{function} was cancelled: {reason}")
        }
    }
}

/// `lion plugin approve NAME [FUNCTION...] [--dry-run]`: prints what
/// became callable (or would, with the new schemas).
pub async fn approve(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    name: &str,
    functions: &[String],
    dry_run: bool,
) -> Result<()> {
    let manager = manager(home, store, ctx, Durability::Durable)?;
    let approval = manager.approve(name, functions, dry_run).await?;
    if ctx.json {
        return output::json(&json!({
            "plugin": name,
            "dry_run": dry_run,
            "added": approval.added,
            "changed": approval.changed,
            "removed": approval.removed,
        }));
    }
    if approval.is_empty() {
        outln!("{name}: nothing to approve (the server offers what was approved)");
        return Ok(());
    }
    let verb = if dry_run { "would approve" } else { "approved" };
    let functions = &approval.record.installed.manifest.functions;
    for (what, names) in [("new", &approval.added), ("changed", &approval.changed)] {
        for f in names {
            let description = functions.get(f).map_or("", |s| s.description.as_str());
            outln!("{verb} {what} {name}.{f}: {description}");
            if dry_run && let Some(spec) = functions.get(f) {
                outln!("    input:  {}", spec.input_schema);
                outln!("    output: {}", spec.output_schema);
            }
        }
    }
    let verb = if dry_run { "would forget" } else { "forgot" };
    for f in &approval.removed {
        outln!("{verb} {name}.{f}: the server no longer offers it");
    }
    Ok(())
}

/// `lion plugin remove NAME`.
pub async fn remove(home: &Path, store: Arc<dyn EventStore>, ctx: Ctx, name: &str) -> Result<()> {
    let package = store
        .plugin(name)
        .await?
        .and_then(|s| s.record.installed.manifest.server)
        .filter(|server| server.package.is_some())
        .map(|server| server.root);
    let manager = manager(home, store, ctx, Durability::Durable)?;
    manager.remove(name).await?;
    // A package's files are the home's own (installed for this plugin).
    if let Some(root) = package
        && root.starts_with(super::plugin_package::packages_dir(home))
        && let Err(e) = std::fs::remove_dir_all(&root)
    {
        errln!("warning: cannot delete {}: {e}", root.display());
    }
    if ctx.json {
        return output::json(&json!({ "removed": name }));
    }
    outln!("removed {name}");
    Ok(())
}

/// The first 12 digits of a hash (all of a shorter one).
fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn status_name(status: PluginStatus) -> &'static str {
    match status {
        PluginStatus::Active => "active",
        PluginStatus::Quarantined => "quarantined",
    }
}

/// Permissions in one line: `interfaces log, kv; hosts a.com; dirs /data (ro)`.
fn describe_permissions(p: &Grant) -> String {
    let mut parts = Vec::new();
    if !p.interfaces.is_empty() {
        let names: Vec<&str> = p.interfaces.iter().map(|i| i.as_str()).collect();
        parts.push(format!("interfaces {}", names.join(", ")));
    }
    if !p.hosts.is_empty() {
        parts.push(format!("hosts {}", p.hosts.join(", ")));
    }
    if !p.env.is_empty() {
        parts.push(format!("env {}", p.env.join(", ")));
    }
    if !p.dirs.is_empty() {
        let dirs: Vec<String> = p
            .dirs
            .iter()
            .map(|d| {
                let mode = match d.mode {
                    DirAccess::ReadOnly => "ro",
                    DirAccess::ReadWrite => "rw",
                };
                // A server sees a directory at its own path: said once.
                if d.path == Path::new(&d.guest) {
                    format!("{} ({mode})", d.guest)
                } else {
                    format!("{} = {} ({mode})", d.guest, d.path.display())
                }
            })
            .collect();
        parts.push(format!("dirs {}", dirs.join(", ")));
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join("; ")
    }
}

/// What a server plugin's network is, in one line: off, or each granted
/// host with the address the server reaches it at inside its jail.
fn describe_network(grant: &Grant) -> String {
    match NetworkPlan::of(grant) {
        Ok(plan) if plan.is_empty() => "off (no host granted)".to_owned(),
        Ok(plan) => {
            let hosts: Vec<String> = plan
                .forwards()
                .iter()
                .map(|f| format!("{} (at {} inside)", f.host, f.inside))
                .collect();
            format!(
                "{}; each connection forwarded by lion after it checks the addresses, nothing \
                 else reachable",
                hosts.join(", ")
            )
        }
        Err(e) => format!("refused: {e}"),
    }
}

/// What the manifest asks for that the grant does not give, as `--grant`
/// values.
fn refused(asked: &Grant, granted: &Grant) -> String {
    let mut out = Vec::new();
    for i in &asked.interfaces {
        if !granted.interfaces.contains(i) {
            out.push(format!("interface:{}", i.as_str()));
        }
    }
    for h in &asked.hosts {
        if !granted.hosts.contains(h) {
            out.push(format!("host:{h}"));
        }
    }
    for e in &asked.env {
        if !granted.env.contains(e) {
            out.push(format!("env:{e}"));
        }
    }
    for d in &asked.dirs {
        if !granted.dirs.iter().any(|g| g.guest == d.guest) {
            out.push(format!("dir:{}", d.guest));
        }
    }
    out.join(" ")
}
