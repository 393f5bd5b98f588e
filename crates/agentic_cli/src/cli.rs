//! The command line: every command, flag and alias `lion` accepts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// lion — an event-sourced microkernel for multi-agent AI work.
///
/// Every change is an event in a durable, hash-chained log kept in a home
/// directory; replaying the log rebuilds the state exactly.
#[derive(Debug, Parser)]
#[command(name = "lion", version, propagate_version = true)]
pub struct Cli {
    /// Home directory holding the store [default: $LION_HOME, else ./.lion].
    #[arg(long, global = true, value_name = "DIR", env = "LION_HOME")]
    pub home: Option<PathBuf>,

    /// Where the log is: a postgres:// URL puts it in a PostgreSQL database
    /// that kernels on several machines share [default: $LION_STORE, else
    /// `url` under [store] in the home's config.toml, else the home's own
    /// SQLite store].
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "LION_STORE",
        hide_env_values = true
    )]
    pub store: Option<String>,

    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// Format of the diagnostic log on stderr (filter it with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Format of the diagnostic log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list and show elements.
    #[command(subcommand)]
    Element(ElementCommand),

    /// Create an element and print its id (same as `element create`).
    #[command(name = "create-element")]
    CreateElement(CreateElement),

    /// List every element of this home (same as `element list`).
    #[command(name = "list-elements")]
    ListElements,

    /// Submit, list, show and cancel tasks.
    #[command(subcommand)]
    Task(TaskCommand),

    /// The kernels sharing a store, their leases and their claims.
    #[command(subcommand)]
    Kernel(KernelCommand),

    /// Move a log between stores: a home's SQLite and PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),

    /// Submit a task (same as `task submit`).
    #[command(name = "submit-task")]
    SubmitTask(SubmitTask),

    /// A multi-agent scenario on the configured model: two agents streaming
    /// at once, a plugin tool, a token budget, then the log and a replay check.
    Demo {
        /// The calculator plugin's manifest, if it is not installed
        /// [default: plugins/dist/calculator/plugin.toml].
        #[arg(long, value_name = "MANIFEST")]
        calculator: Option<PathBuf>,
    },

    /// Spawn, list, message and stop LLM agents.
    #[command(subcommand)]
    Agent(AgentCommand),

    /// Get and list embedded local models (GGUF files run in-process).
    #[command(subcommand)]
    Model(ModelCommand),

    /// Install, list, inspect, call and remove WebAssembly plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),

    /// Read, follow and verify the event log.
    #[command(subcommand)]
    Events(EventsCommand),

    /// Check workflow definitions (running them is not built yet).
    #[command(subcommand)]
    Workflow(WorkflowCommand),

    /// Fold the whole log afresh and compare the result with the stored projections.
    Replay,

    /// Run the kernel in the foreground: recover unfinished tasks, then run
    /// what other `lion` invocations submit, until SIGINT/SIGTERM.
    Run {
        /// Attempts that may run at the same time.
        #[arg(long, default_value_t = 64, value_name = "N")]
        concurrency: usize,
        /// With a shared store: how long this kernel stays alive without
        /// renewing its lease; past it, other kernels take over its
        /// attempts (and it stops if it wakes up).
        #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        lease_secs: u64,
    },

    /// Run the kernel (as `lion run`) behind an HTTP API: REST, the log as
    /// Server-Sent Events, and a browser sign-in page. Every API request
    /// carries the home's token (`--print-token`).
    Serve(ServeArgs),

    /// Offer plugin functions to IDEs and other agents as MCP tools.
    #[command(subcommand)]
    Mcp(McpCommand),

    /// Measure lion's performance against same-run baselines.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `lion mcp …`.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Serve the exposed plugin functions as MCP tools over stdin and
    /// stdout, for an IDE or an agent that starts lion itself. Each call
    /// runs in lion's sandbox under the plugin's grant and is recorded.
    Serve(McpExpose),
}

/// Which plugin functions are offered as MCP tools (none unless named).
#[derive(Debug, Args)]
pub struct McpExpose {
    /// A plugin (all its functions) or one function to offer as MCP tools;
    /// repeat for more. Nothing is offered unless named.
    #[arg(long = "expose", value_name = "PLUGIN[.FUNCTION]")]
    pub expose: Vec<String>,

    /// Name MCP tools by their function's name alone rather than
    /// PLUGIN.FUNCTION (a name two exposed functions share is offered by
    /// neither).
    #[arg(long)]
    pub bare_names: bool,
}

/// `lion serve`'s flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (the ready line on
    /// stdout names it).
    #[arg(long, default_value = "127.0.0.1:4710", value_name = "IP:PORT")]
    pub addr: std::net::SocketAddr,

    /// Attempts that may run at the same time.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrency: usize,

    /// Another `Host` name (with its port) the server answers to, e.g. a
    /// name in /etc/hosts; any other is refused (DNS rebinding).
    #[arg(long = "allow-host", value_name = "HOST:PORT")]
    pub allow_hosts: Vec<String>,

    /// The TLS certificate chain (PEM), with --tls-key: the server then
    /// speaks HTTPS only. Needed for an address other than loopback.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The TLS certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Listen on a non-loopback address without TLS: the token and every
    /// answer then cross the network in clear text.
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure_no_tls: bool,

    /// Print the home's API token (creating it on first use) and exit.
    #[arg(long, conflicts_with = "rotate_token")]
    pub print_token: bool,

    /// Replace the home's API token with a new one, print it and exit; a
    /// running server refuses the old token and its sessions from then on.
    #[arg(long)]
    pub rotate_token: bool,

    /// A directory of plugin manifests the API may install from (`POST
    /// /plugins`); without it, installing over HTTP is off.
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,

    /// The plugin functions `/mcp` offers.
    #[command(flatten)]
    pub mcp: McpExpose,
}

/// `lion element …`
#[derive(Debug, Subcommand)]
pub enum ElementCommand {
    /// Create an element and print its id.
    Create(CreateElement),
    /// List every element of this home, in creation order.
    List(Paging),
    /// Show one element.
    Show {
        /// The element's id.
        id: String,
    },
}

/// Which part of a list to show: everything by default, or one page.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct Paging {
    /// Start after this position (the `more:` line of a previous page, or
    /// the `next` of its JSON, gives it).
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<u64>,
    /// Show one page of at most N items, and where the next one starts.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

/// Arguments of `element create`.
#[derive(Debug, Args)]
pub struct CreateElement {
    /// Metadata, a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub metadata: String,
    /// Optional text content.
    #[arg(long, value_name = "TEXT")]
    pub content: Option<String>,
}

/// `lion kernel …`
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// List the kernels that joined the store: alive, expired or stopped,
    /// with their machine, claims and last heartbeat.
    List,
}

/// `lion store …`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy this store's log (the home's, or `--store`'s) into an empty
    /// store, record for record, verifying the chain as it goes: a
    /// `postgres://` URL, or the directory of a home whose SQLite store
    /// takes it. A copy that stopped part-way is continued.
    Copy {
        /// Where the log goes: `postgres://…` or a home directory.
        #[arg(long, value_name = "URL|HOME")]
        to: String,
    },
}

/// `lion task …`
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Submit a task.
    Submit(SubmitTask),
    /// List every task of this home, in submission order.
    List(Paging),
    /// Show one task.
    Show {
        /// The task's id.
        id: String,
    },
    /// Cancel a task (a running kernel stops it; tasks it started are cancelled too).
    Cancel {
        /// The task's id.
        id: String,
    },
}

/// `lion agent …`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Spawn an LLM agent (its memory lives in the log).
    Spawn {
        /// The agent's name.
        name: String,
        /// Where the model runs: `local` (in this process, --model names a
        /// catalog model or a GGUF file) or `openai` (an OpenAI-compatible
        /// server) [default: a server if one is configured, else local].
        #[arg(long, value_name = "P", value_parser = ["local", "openai"])]
        provider: Option<String>,
        /// The provider's base URL [default: $LION_LLM_BASE_URL, else the
        /// home's config.toml].
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
        /// The model: a server's model name, or `local:NAME` /
        /// `local:/path/file.gguf` for an embedded local model [default:
        /// $LION_LLM_MODEL, else the home's config.toml, else
        /// local:smollm2-135m when no server is configured].
        #[arg(long, value_name = "M")]
        model: Option<String>,
        /// The system prompt.
        #[arg(long, value_name = "TEXT", default_value = "")]
        system: String,
        /// A plugin function the agent may call (PLUGIN.FUNCTION).
        #[arg(long, value_name = "PLUGIN.FUNCTION")]
        tool: Vec<String>,
        /// Most tokens one message may make the model generate, tool rounds
        /// included [default: 4096, DEFAULT_BUDGET_TOKENS].
        #[arg(long, value_name = "N")]
        budget_tokens: Option<u64>,
        /// Most bytes of text and tool-call arguments one answer may stream
        /// [default: 1048576 (1 MiB), DEFAULT_ANSWER_BYTES; at most 64 MiB].
        #[arg(long, value_name = "BYTES")]
        max_answer_bytes: Option<u64>,
    },
    /// List agents (each with the size of its conversation).
    List(Paging),
    /// Show an agent and a page of its conversation.
    Show {
        /// The agent's name.
        name: String,
        /// Start after this many messages (the `more:` line of a previous
        /// page gives it).
        #[arg(long, value_name = "N", default_value_t = 0)]
        after: u64,
        /// Most messages to show (at least 1).
        #[arg(long, value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Send an agent a message; its answer streams to the terminal as it
    /// arrives.
    Send {
        /// The agent's name.
        name: String,
        /// The message.
        text: String,
    },
    /// Stop an agent: it takes no more messages.
    Stop {
        /// The agent's name.
        name: String,
    },
}

/// `lion model …`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Fetch a catalog model into the per-user cache (checked by sha256).
    Pull {
        /// The model's catalog name.
        #[arg(default_value = agentic_llm::local::DEFAULT_MODEL)]
        name: String,
    },
    /// List the catalog's models and whether each is in the cache.
    List,
}

/// `lion workflow …`
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Read a workflow definition (TOML) and the sub-workflows it names,
    /// check them, and print the steps in an order they can run.
    Check {
        /// The definition file.
        file: PathBuf,
    },
    /// Start a run of a workflow (the kernel serving this home runs it; the
    /// run keeps the definition as it is now, whatever happens to the file).
    Run {
        /// The definition file.
        file: PathBuf,
        /// The run's input, JSON [default: {}].
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
        /// Follow the run to its end and print its output.
        #[arg(long)]
        wait: bool,
    },
    /// List the runs, in the order they started.
    List(Paging),
    /// Show a run: each step's state, timing and output.
    Status {
        /// The run's id.
        run: String,
    },
    /// Show every event of a run, in order.
    History {
        /// The run's id.
        run: String,
    },
    /// Approve an approval step that waits (recorded with the OS user).
    Approve {
        /// The run's id.
        run: String,
        /// The approval step.
        step: String,
        /// What to add to the decision, JSON (the step's output carries it).
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
    },
    /// Reject an approval step that waits (recorded with the OS user).
    Reject {
        /// The run's id.
        run: String,
        /// The approval step.
        step: String,
        /// What to add to the decision, JSON (the step's output carries it).
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
    },
    /// Cancel a run, the step tasks it runs and its sub-workflow runs.
    Cancel {
        /// The run's id.
        run: String,
    },
    /// Start a new run from a step of an old one: every step that is
    /// neither STEP nor downstream of it keeps its recorded output (it does
    /// not run again); the rest runs.
    Fork {
        /// The old run's id.
        run: String,
        /// The step to run again, with everything downstream of it.
        #[arg(long, value_name = "STEP")]
        from: String,
        /// The new run's input, JSON [default: the old run's].
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
        /// Follow the new run to its end and print its output.
        #[arg(long)]
        wait: bool,
    },
}

/// `lion plugin …`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Install a plugin from its manifest, or an MCP server from a registry
    /// (npm:NAME@VERSION, pypi:NAME==VERSION, exact versions), granting
    /// some or all of what it asks for (deny by default: nothing is
    /// granted without a flag).
    Install {
        /// The plugin's manifest (TOML), or npm:NAME@VERSION or
        /// pypi:NAME==VERSION.
        source: String,
        /// The plugin's name (a registry package only; default: the
        /// package's name without its scope).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Grant one permission the manifest asks for: interface:NAME
        /// (log, kv, events, http), host:HOST[:PORT] (a server plugin:
        /// host:NAME:PORT or host:127.0.0.1:PORT, the port required),
        /// env:NAME, or dir:GUEST[=HOST][:ro] (the host directory that
        /// backs the guest path: it must be named unless the manifest's own
        /// path for it is inside the manifest's folder; :ro narrows to
        /// read-only). Repeat for more.
        #[arg(long, value_name = "KIND:VALUE")]
        grant: Vec<String>,
        /// Grant everything the manifest asks for (with a warning), except
        /// directories outside the manifest's folder, which must be named.
        #[arg(long, conflicts_with = "grant")]
        grant_all: bool,
        /// Arguments for a registry package's server, after `--` (e.g. the
        /// directories server-filesystem serves).
        #[arg(last = true, value_name = "ARG")]
        args: Vec<String>,
    },
    /// Replace what an installed plugin is granted (the whole grant, as
    /// install's --grant flags; directories' host paths named:
    /// dir:GUEST=HOST[:ro]). Its key-value data stays.
    Grant {
        /// The plugin's name.
        name: String,
        /// One permission its manifest asks for, as at install. None
        /// grants nothing.
        #[arg(long, value_name = "KIND:VALUE")]
        grant: Vec<String>,
    },
    /// Approve what a server plugin offers now: tools added, or whose
    /// description or schemas changed, since install or the last approval
    /// (refused until approved). Starts the server once to list them;
    /// --dry-run shows what would be approved.
    Approve {
        /// The plugin's name.
        name: String,
        /// Only these functions (lion's names); none approves every
        /// difference and forgets tools the server no longer offers.
        functions: Vec<String>,
        /// Show what would be approved (with the new schemas), record
        /// nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List installed plugins.
    List(Paging),
    /// Show a plugin: its functions, permissions asked and granted, limits
    /// and call counts.
    Info {
        /// The plugin's name.
        name: String,
    },
    /// Call a plugin function and print its JSON output.
    Call {
        /// The plugin's name.
        name: String,
        /// The function.
        function: String,
        /// Its input, as JSON.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        input: String,
    },
    /// Remove a plugin and its key-value data.
    Remove {
        /// The plugin's name.
        name: String,
    },
}

/// How a task's events are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Delivered after each event is committed.
    Durable,
    /// Delivered at once, committed by the next group commit.
    Async,
    /// Delivered at once, never logged.
    Ephemeral,
}

/// Arguments of `task submit`.
#[derive(Debug, Args)]
pub struct SubmitTask {
    /// The handler that runs the task (built in: echo, sleep, fail, fanout).
    #[arg(long, value_name = "NAME", required_unless_present = "plugin")]
    pub handler: Option<String>,
    /// Run a plugin function instead of a handler (with --function).
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "handler",
        requires = "function"
    )]
    pub plugin: Option<String>,
    /// The plugin function to run.
    #[arg(long, value_name = "F", requires = "plugin")]
    pub function: Option<String>,
    /// Input handed to the handler, as JSON.
    #[arg(long, value_name = "JSON", default_value = "null")]
    pub input: String,
    /// Time limit of one attempt, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub timeout: Option<u64>,
    /// Attempts after the first when one fails or times out.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Submitting the same key again yields the same task.
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
    /// How the task's events are delivered.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Durable)]
    pub durability: DurabilityArg,
    /// Wait for the task to end, print its progress and result, and exit
    /// with its success (it runs in this process when no kernel is running).
    #[arg(long)]
    pub wait: bool,
}

/// `lion events …`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List stored events.
    List {
        /// First sequence number to show.
        #[arg(long, default_value_t = 1, value_name = "SEQ")]
        from: u64,
        /// Most events to show.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Follow new events as they are committed, until interrupted.
    Tail {
        /// Start at this sequence number instead of after the newest event.
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Follow the running kernel's live stream instead of the log: every
        /// event as it happens, uncommitted ones (progress, async, ephemeral)
        /// included, with `seq` null until committed.
        #[arg(long, conflicts_with = "from")]
        live: bool,
    },
    /// Recompute the hash chain and check it against HEAD; exit non-zero on
    /// the first bad record.
    Verify,
}

/// `lion bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The embedded local model: tokens/s, first token, memory, against a
    /// bare candle loop on the same weights.
    Model {
        /// A short run that only checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// The model (`local:NAME` or `local:/path/file.gguf`).
        #[arg(long, value_name = "M", default_value = "local:smollm2-135m")]
        model: String,
        /// Tokens per generation [default: 128, 16 with --quick].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=2048))]
        tokens: Option<u32>,
    },
    /// Durable append throughput and latency, replay speed, with raw
    /// baselines. With --store postgres://…: events/s through one kernel and
    /// through three on scratch databases of that server (the role needs
    /// CREATEDB), beside raw batched inserts of the same group sizes.
    Store {
        /// A short run that only checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// Scratch directory on the disk to measure [default: a new temp dir].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Events in the log replay is measured on.
        #[arg(long, value_name = "N")]
        replay_events: Option<u64>,
        /// Seconds each appender level runs.
        #[arg(long, value_name = "SECS")]
        seconds: Option<f64>,
        /// Concurrency levels to measure [default: 1,16,256].
        #[arg(long, value_name = "N,N,…", value_delimiter = ',')]
        appenders: Vec<usize>,
    },
    /// Work claiming on a shared store (needs --store postgres://…): tasks/s
    /// completed by three kernels, beside a bare SKIP LOCKED queue table on
    /// the same server (scratch databases; the role needs CREATEDB).
    Claims {
        /// A short run that only checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// Tasks each side runs [default: 10000; 500 with --quick].
        #[arg(long, value_name = "N")]
        tasks: Option<usize>,
    },
    /// `lion serve` under load: GET an element and POST a task against
    /// bare axum and in-process baselines, and the log streamed to 100 SSE
    /// subscribers against a bare axum SSE endpoint.
    Serve {
        /// A short run that only checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// Where to create the scratch home, on the disk to measure (it is
        /// removed afterwards) [default: the system temp dir].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Task throughput through the orchestrator (ephemeral and durable),
    /// beside raw tokio channel baselines.
    Runtime {
        /// A short run that only checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// Scratch directory for the durable store [default: a new temp dir].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Workflow steps: what a no-op step of a 10-step chain costs beside the
    /// same-run fdatasync, and steps/s of 100 runs at once beside one run's.
    Workflow {
        /// A short run that only checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// Scratch directory, on the disk to measure [default: a new temp dir].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Streamed LLM chunks: what the kernel adds per chunk (provider to live
    /// subscriber) and chunks/s with 10 agents, beside the raw provider.
    Llm {
        /// A short run that only checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// Directory in which a scratch store is made [default: the temp dir].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Plugins: a WebAssembly plugin's compile time, cached load, and
    /// per-call latency and calls/s of hello_world through the plugin
    /// manager, beside the raw wasmtime call; a server plugin's (the echo
    /// MCP server's) cold start and warm calls in its jail, beside the same
    /// server run unsandboxed.
    Plugins {
        /// A short run that only checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// Where to create the scratch home, on the disk to measure (it is
        /// removed afterwards) [default: the system temp dir].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The built hello_world plugin: its plugin.toml and component
        /// [default: plugins/dist/hello_world, made by scripts/build-plugins].
        #[arg(long, value_name = "DIR")]
        plugin: Option<PathBuf>,
        /// The echo example server plugin: its plugin.toml and echo.py
        /// [default: plugins/servers/echo].
        #[arg(long, value_name = "DIR")]
        server: Option<PathBuf>,
    },
    /// The dashboard's timeline in headless Chromium on a home of about a
    /// million events beside an almost empty one: time to its first
    /// rendered row, and frame times while it scrolls (run from the
    /// checkout, after scripts/build-web; exits 1 if a full run misses the
    /// target).
    Dashboard {
        /// Homes of about 20k events: checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// Where to build the homes, removed afterwards [default: the system temp dir].
        #[arg(long, value_name = "DIR", conflicts_with = "keep")]
        dir: Option<PathBuf>,
        /// Build the homes in DIR and keep them; a later run (of this bench or
        /// of lion bench scale) with the same --keep reuses the big one.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Commands on a home of about a million events beside the same
    /// commands on an almost empty home, each a fresh `lion` process: time
    /// and peak RSS, against targets (exits 1 if a full run misses one).
    Scale {
        /// Homes of about 20k events: checks every path works (figures mean little).
        #[arg(long)]
        quick: bool,
        /// Where to build the homes, removed afterwards [default: the system temp dir].
        #[arg(long, value_name = "DIR", conflicts_with = "keep")]
        dir: Option<PathBuf>,
        /// Build the homes in DIR and keep them; a later run with the same
        /// --keep reuses them (building the big one takes minutes).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Runs of each command on each home; the median counts [default: 5, 2 with --quick].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        runs: Option<u32>,
        /// The built hello_world plugin: its plugin.toml and component
        /// [default: plugins/dist/hello_world, made by scripts/build-plugins].
        #[arg(long, value_name = "DIR")]
        plugin: Option<PathBuf>,
    },
}
