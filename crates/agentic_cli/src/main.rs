//! `lion`: the command-line interface of the lion kernel, and the one place
//! that picks adapters (the SQLite store of a home directory, or a shared
//! PostgreSQL store).
//!
//! - [`cli`] — commands, flags and aliases (clap).
//! - [`home`] — which home to use, where its log is, and opening it.
//! - [`lease`] — the kernel's lease on a home (`lion run`).
//! - [`live`] — live events from a running kernel, over a socket in the home.
//! - [`commands`] — one module per command group.
//! - [`output`] — tables for people, JSON for programs.
//! - [`platform`] — the CPU check (before any Rust code runs) and how a
//!   closed stdout ends the process.
//! - [`providers`] — which LLM provider an agent runs on.

/// `outln!` for command output: a closed stdout (`lion events list |
/// head`) ends the process as it ends `cat`, never a panic
/// ([`output::write_stdout`]).
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that never panics: a closed or broken stderr (`lion run
/// 2>&1 | tee log`, the `tee` gone) loses the message, never the process —
/// a kernel's note must not turn into a panic mid-shutdown.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `print!` for command output, flushed; see [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

mod cli;
mod commands;
mod home;
mod lease;
mod live;
mod output;
mod platform;
mod providers;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use agentic_core::{Cursor, EventStore, StoreError};
use anyhow::Result;
use clap::Parser;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

use cli::{
    AgentCommand, BenchCommand, Cli, Command, ElementCommand, EventsCommand, KernelCommand,
    LogFormat, McpCommand, ModelCommand, Paging, PluginCommand, StoreCommand, TaskCommand,
    WorkflowCommand,
};
use commands::Ctx;

/// Exit code of a failed command.
const EXIT_ERROR: u8 = 1;
/// Exit code when the log or its projections fail an integrity check.
const EXIT_INTEGRITY: u8 = 3;

/// An integrity check (verify, replay) found the store inconsistent.
#[derive(Debug)]
pub struct IntegrityFailure(pub String);

impl std::fmt::Display for IntegrityFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IntegrityFailure {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined.
            let message = format!("{e:#}").replace('\n', " ");
            errln!("error: {message}");
            let integrity = e.downcast_ref::<IntegrityFailure>().is_some()
                || matches!(
                    e.downcast_ref::<StoreError>(),
                    Some(StoreError::Chain(_) | StoreError::Corrupt { .. })
                );
            ExitCode::from(if integrity {
                EXIT_INTEGRITY
            } else {
                EXIT_ERROR
            })
        }
    }
}

fn init_tracing(format: LogFormat) {
    // rmcp logs, as errors, the broken sessions of MCP servers that lion
    // itself reports (the call's one-line error and its recorded failure):
    // quiet by default, so an error stays one line.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,rmcp=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        json: cli.json,
        correlation_id: Uuid::now_v7(),
    };
    let span = tracing::info_span!("lion", correlation_id = %ctx.correlation_id);
    async move {
        let home = home::resolve(cli.home.as_deref());
        let store_flag = cli.store.as_deref();
        let at = || home::store_at(&home, store_flag);
        // A kernel acts on what it reads through appends; a command shows it.
        let kernel = matches!(cli.command, Command::Run { .. } | Command::Serve(_));
        let open = async || -> Result<Arc<dyn EventStore>> {
            let at = at()?;
            let store = home::open(&home, &at, kernel).await?;
            tracing::debug!(home = %home.display(), store = ?at, "store open");
            Ok(store)
        };
        match cli.command {
            Command::Element(ElementCommand::Create(args)) | Command::CreateElement(args) => {
                commands::element::create(open, ctx, &args).await
            }
            Command::Element(ElementCommand::List(paging)) => {
                commands::element::list(&*open().await?, ctx, paging).await
            }
            Command::ListElements => {
                commands::element::list(&*open().await?, ctx, Paging::default()).await
            }
            Command::Element(ElementCommand::Show { id }) => {
                commands::element::show(&*open().await?, ctx, &id).await
            }
            Command::Events(EventsCommand::List { from, limit }) => {
                commands::events::list(&*open().await?, ctx, from, limit).await
            }
            Command::Events(EventsCommand::Tail {
                live: true, count, ..
            }) => commands::events::tail_live(&home, ctx, count).await,
            Command::Events(EventsCommand::Tail { from, count, .. }) => {
                commands::events::tail(open().await?, ctx, from, count).await
            }
            Command::Events(EventsCommand::Verify) => {
                commands::events::verify(&home::Checked::open(&home, &at()?).await?, ctx).await
            }
            Command::Agent(AgentCommand::Spawn {
                name,
                provider,
                base_url,
                model,
                system,
                tool,
                budget_tokens,
                max_answer_bytes,
            }) => {
                let model = commands::agent::model_for(provider.as_deref(), model, &base_url)?;
                let spec = agentic_core::llm::AgentSpec {
                    model,
                    base_url,
                    system,
                    budget_tokens,
                    max_answer_bytes,
                    tools: tool,
                };
                commands::agent::spawn(&home, &*open().await?, ctx, &name, spec).await
            }
            Command::Demo { calculator } => {
                commands::demo::run(&home, open().await?, ctx, calculator).await
            }
            Command::Agent(AgentCommand::List(paging)) => {
                commands::agent::list(&*open().await?, ctx, paging).await
            }
            Command::Agent(AgentCommand::Show { name, after, limit }) => {
                commands::agent::show(&*open().await?, ctx, &name, Cursor(after), limit as usize).await
            }
            Command::Agent(AgentCommand::Send { name, text }) => {
                commands::agent::send(&home, open().await?, ctx, &name, &text).await
            }
            Command::Agent(AgentCommand::Stop { name }) => {
                commands::agent::stop(&*open().await?, ctx, &name).await
            }
            Command::Model(ModelCommand::Pull { name }) => commands::model::pull(ctx, &name),
            Command::Model(ModelCommand::List) => commands::model::list(ctx),
            Command::Workflow(WorkflowCommand::Check { file }) => {
                commands::workflow::check(ctx, &file)
            }
            Command::Workflow(WorkflowCommand::Run { file, input, wait }) => {
                commands::workflow::runs::start(&home, open().await?, ctx, &file, input.as_deref(), wait)
                    .await
            }
            Command::Workflow(WorkflowCommand::List(paging)) => {
                commands::workflow::runs::list(&*open().await?, ctx, paging).await
            }
            Command::Workflow(WorkflowCommand::Status { run }) => {
                commands::workflow::runs::status(&*open().await?, ctx, &run).await
            }
            Command::Workflow(WorkflowCommand::History { run }) => {
                commands::workflow::runs::history(&*open().await?, ctx, &run).await
            }
            Command::Workflow(WorkflowCommand::Approve { run, step, input }) => {
                commands::workflow::runs::decide(&*open().await?, ctx, &run, &step, true, input.as_deref())
                    .await
            }
            Command::Workflow(WorkflowCommand::Reject { run, step, input }) => {
                commands::workflow::runs::decide(&*open().await?, ctx, &run, &step, false, input.as_deref())
                    .await
            }
            Command::Workflow(WorkflowCommand::Cancel { run }) => {
                commands::workflow::runs::cancel(&*open().await?, ctx, &run).await
            }
            Command::Workflow(WorkflowCommand::Fork {
                run,
                from,
                input,
                wait,
            }) => {
                commands::workflow::runs::fork(&home, open().await?, ctx, &run, &from, input.as_deref(), wait)
                    .await
            }
            Command::Plugin(PluginCommand::Install {
                source,
                name,
                grant,
                grant_all,
                args,
            }) => {
                if commands::plugin_package::is_package(&source) {
                    if grant_all {
                        anyhow::bail!(
                            "--grant-all needs a manifest: a package asks for nothing, grant with --grant"
                        );
                    }
                    commands::plugin_package::install(
                        &home,
                        open().await?,
                        ctx,
                        &source,
                        name.as_deref(),
                        &grant,
                        &args,
                    )
                    .await
                } else {
                    if name.is_some() || !args.is_empty() {
                        anyhow::bail!(
                            "--name and server arguments are for registry packages; a manifest names its plugin and its arguments"
                        );
                    }
                    let manifest = std::path::Path::new(&source);
                    commands::plugin::install(&home, open().await?, ctx, manifest, &grant, grant_all)
                        .await
                }
            }
            Command::Plugin(PluginCommand::Grant { name, grant }) => {
                commands::plugin::grant(&home, open().await?, ctx, &name, &grant).await
            }
            Command::Plugin(PluginCommand::Approve {
                name,
                functions,
                dry_run,
            }) => {
                commands::plugin::approve(&home, open().await?, ctx, &name, &functions, dry_run).await
            }
            Command::Plugin(PluginCommand::List(paging)) => {
                commands::plugin::list(&*open().await?, ctx, paging).await
            }
            Command::Plugin(PluginCommand::Info { name }) => {
                commands::plugin::info(&*open().await?, ctx, &name).await
            }
            Command::Plugin(PluginCommand::Call {
                name,
                function,
                input,
            }) => commands::plugin::call(&home, open().await?, ctx, &name, &function, &input).await,
            Command::Plugin(PluginCommand::Remove { name }) => {
                commands::plugin::remove(&home, open().await?, ctx, &name).await
            }
            Command::Replay => commands::replay::run(&home::Checked::open(&home, &at()?).await?, ctx).await,
            Command::Task(TaskCommand::Submit(args)) | Command::SubmitTask(args) => {
                commands::task::submit(&home, open, ctx, &args).await
            }
            Command::Run {
                concurrency,
                lease_secs,
            } => {
                let lease = std::time::Duration::from_secs(lease_secs);
                commands::run::run(&home, open, ctx, concurrency, lease).await
            }
            Command::Serve(args) => commands::serve::serve(&home, open, ctx, &args).await,
            Command::Mcp(McpCommand::Serve(args)) => {
                commands::mcp::serve(&home, open, ctx, &args).await
            }
            Command::Store(StoreCommand::Copy { to }) => {
                commands::store::copy(&home, &at()?, &to, ctx).await
            }
            Command::Kernel(KernelCommand::List) => {
                commands::kernel::list(&home, &*open().await?, ctx).await
            }
            Command::Task(TaskCommand::List(paging)) => {
                commands::task::list(&*open().await?, ctx, paging).await
            }
            Command::Task(TaskCommand::Show { id }) => {
                commands::task::show(&*open().await?, ctx, &id).await
            }
            Command::Task(TaskCommand::Cancel { id }) => {
                commands::task::cancel(&*open().await?, ctx, &id).await
            }
            Command::Bench(BenchCommand::Store {
                quick,
                seconds,
                appenders,
                ..
            }) if store_flag.is_some() => {
                let url = home::shared_url(store_flag.unwrap_or_default())?;
                commands::bench_shared::store(ctx, &url, quick, seconds, appenders).await
            }
            Command::Bench(BenchCommand::Store {
                quick,
                dir,
                replay_events,
                seconds,
                appenders,
            }) => {
                let opts = commands::bench::StoreBench {
                    quick,
                    dir,
                    replay_events,
                    seconds,
                    appenders,
                };
                commands::bench::store(ctx, opts).await
            }
            Command::Bench(BenchCommand::Claims { quick, tasks }) => {
                let url = home::shared_url(store_flag.ok_or_else(|| {
                    anyhow::anyhow!("bench claims measures a shared store: give --store postgres://…")
                })?)?;
                let tasks = tasks.unwrap_or(if quick { 500 } else { 10_000 });
                commands::bench_shared::claims(ctx, &url, tasks).await
            }
            Command::Bench(BenchCommand::Model {
                quick,
                model,
                tokens,
            }) => commands::bench_model::run(ctx, quick, &model, tokens).await,
            Command::Bench(BenchCommand::Llm { quick, dir }) => {
                commands::bench_llm::run(ctx, quick, dir).await
            }
            Command::Bench(BenchCommand::Serve { quick, dir }) => {
                commands::bench_serve::run(ctx, commands::bench_serve::ServeBench { quick, dir }).await
            }
            Command::Bench(BenchCommand::Runtime { quick, dir }) => {
                commands::bench_runtime::run(ctx, quick, dir).await
            }
            Command::Bench(BenchCommand::Workflow { quick, dir }) => {
                commands::bench_workflow::run(ctx, quick, dir).await
            }
            Command::Bench(BenchCommand::Plugins {
                quick,
                dir,
                plugin,
                server,
            }) => commands::bench_plugins::run(ctx, quick, dir, plugin, server).await,
            Command::Bench(BenchCommand::Dashboard { quick, dir, keep }) => {
                let opts = commands::bench_dashboard::DashboardBench { quick, dir, keep };
                commands::bench_dashboard::run(ctx, opts).await
            }
            Command::Bench(BenchCommand::Scale {
                quick,
                dir,
                keep,
                runs,
                plugin,
            }) => {
                let opts = commands::bench_scale::ScaleBench {
                    quick,
                    dir,
                    keep,
                    runs: runs.map(|n| n as usize),
                    plugin,
                };
                commands::bench_scale::run(ctx, opts).await
            }
        }
    }
    .instrument(span)
    .await
}
