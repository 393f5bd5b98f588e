//! Plugins that run as servers: the `[server]` section of a manifest (an
//! executable and its arguments, the runtime paths it may read, the
//! process's limits), and the [`ServerSandbox`] port its adapter implements
//! (today: MCP tool servers over stdio, run under OS isolation).
//!
//! Unlike a WebAssembly plugin, which runs every call in a fresh instance,
//! a server is **warm**: one process per plugin serves call after call and
//! keeps whatever state it builds between them, until it is stopped (idle,
//! unloaded, regranted, removed) or dies. Its functions are not declared in
//! its manifest: they are the tools the server lists when lion starts it at
//! install, recorded then; a tool that appears later or changes is not
//! callable until the operator approves it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::manifest::{FunctionSpec, Grant, Limits};
use super::sandbox::{LoadedPlugin, SandboxError};

/// The sandbox kind of a WebAssembly plugin.
pub const WASM_KIND: &str = "wasm";
/// The sandbox kind of a server plugin (a subprocess under OS isolation).
pub const PROCESS_KIND: &str = "process";

/// The protocol lion speaks with a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerProtocol {
    /// The Model Context Protocol over the server's stdin and stdout.
    #[default]
    McpStdio,
}

/// A server plugin: what lion starts, and under which limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// The executable: an absolute path, or a name looked up on `PATH` when
    /// the manifest is read (recorded resolved, symbolic links included,
    /// so the interpreter is the real one, not a shim).
    pub command: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The protocol it speaks.
    #[serde(default)]
    pub protocol: ServerProtocol,
    /// The folder holding the server's own files, relative to the manifest
    /// (default: the manifest's folder). The server may read it, and its
    /// tree hash is recorded at install and checked before every start.
    #[serde(default = "here")]
    pub root: PathBuf,
    /// Other paths the server may read and execute: its interpreter's
    /// libraries, system libraries. Nothing else of the filesystem is
    /// visible to it but the directories the operator granted.
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    /// The process's limits.
    #[serde(default)]
    pub limits: ServerLimits,
    /// The tree hash of `root` at install (set by lion, not by the author).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_sha256: Option<String>,
    /// The registry package it was installed from (`npm:NAME@VERSION`,
    /// `pypi:NAME==VERSION`), if any (set by lion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

fn here() -> PathBuf {
    PathBuf::from(".")
}

/// Limits of a server's process (its calls are bounded by the manifest's
/// `[limits]` too: timeout, input and output bytes, concurrency). Each is
/// at most its [`SERVER_LIMIT_CEILINGS`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Memory of the whole server (every process it starts), in MiB.
    pub memory_mib: u32,
    /// Processes and threads it may have at once.
    pub processes: u32,
    /// CPU seconds one server process may use before it is killed (it is
    /// started again on the next call).
    pub cpu_seconds: u32,
    /// Descriptors each of its processes may hold open.
    pub open_files: u32,
    /// Largest file it may write, in MiB.
    pub file_size_mib: u32,
    /// Stopped after this many seconds without a call.
    pub idle_stop_secs: u32,
    /// Time to start and answer `initialize`, in milliseconds.
    pub start_timeout_ms: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            // Node 20 reserves address space up front: it does not start
            // under 768 MiB of it (measured here).
            memory_mib: 1024,
            // An interpreter and a few helpers; a fork bomb stops here.
            processes: 64,
            cpu_seconds: 600,
            open_files: 256,
            file_size_mib: 64,
            idle_stop_secs: 300,
            // Node loading a package tree from a cold disk.
            start_timeout_ms: 20_000,
        }
    }
}

/// The most a manifest may set each server limit to: a manifest is its
/// author's, and the defaults would protect nothing without these.
pub const SERVER_LIMIT_CEILINGS: ServerLimits = ServerLimits {
    memory_mib: 16 << 10,
    processes: 1024,
    cpu_seconds: 24 * 3600,
    open_files: 4096,
    file_size_mib: 16 << 10,
    idle_stop_secs: 24 * 3600,
    start_timeout_ms: 120_000,
};

impl ServerLimits {
    /// Every limit, by its manifest name, with its value.
    pub fn fields(&self) -> [(&'static str, u64); 7] {
        [
            ("memory_mib", u64::from(self.memory_mib)),
            ("processes", u64::from(self.processes)),
            ("cpu_seconds", u64::from(self.cpu_seconds)),
            ("open_files", u64::from(self.open_files)),
            ("file_size_mib", u64::from(self.file_size_mib)),
            ("idle_stop_secs", u64::from(self.idle_stop_secs)),
            ("start_timeout_ms", u64::from(self.start_timeout_ms)),
        ]
    }

    /// The first limit above its ceiling, or at 0: its name and value.
    pub fn out_of_range(&self) -> Option<(&'static str, u64, u64)> {
        self.fields()
            .into_iter()
            .zip(SERVER_LIMIT_CEILINGS.fields())
            .find(|((_, value), (_, ceiling))| value > ceiling || *value == 0)
            .map(|((name, value), (_, ceiling))| (name, value, ceiling))
    }
}

/// What a server sandbox needs to start a server plugin.
#[derive(Debug, Clone)]
pub struct ServerLaunch {
    /// The plugin's name.
    pub name: String,
    /// What to start.
    pub spec: ServerSpec,
    /// What the operator granted: directories (seen at their own paths),
    /// hosts, environment variable names.
    pub grant: Grant,
    /// The values of the granted environment variables, from lion's own
    /// environment (the server's environment holds nothing else).
    pub env: Vec<(String, String)>,
    /// The call limits of the manifest (timeout, output bytes).
    pub call_limits: Limits,
    /// The functions the operator approved, by lion's name for them (each
    /// with the server's own tool name); empty at discovery.
    pub approved: BTreeMap<String, FunctionSpec>,
    /// A directory of the home for this plugin's scratch files (its
    /// private `/tmp`), created by the manager.
    pub scratch: PathBuf,
}

/// A function a server offers, as discovered: lion's name for it and its
/// spec (description, schemas, the server's own tool name).
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// lion's name for the function.
    pub function: String,
    /// Its description, schemas and tool name.
    pub spec: FunctionSpec,
}

/// What discovery found: the functions a server offers and the tree hash
/// of its files.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// The functions, by lion's name for them.
    pub functions: Vec<Discovered>,
    /// The tree hash of the server's root folder, to check before each
    /// start.
    pub tree_sha256: String,
}

/// A warm server started for calls, and what it offers that the operator
/// has not approved (new tools, or tools whose description or schemas
/// changed): those are refused until approved.
pub struct Started {
    /// Ready for calls (of approved functions only).
    pub plugin: Arc<dyn LoadedPlugin>,
    /// Functions offered but not approved, each with why.
    pub unapproved: Vec<(String, String)>,
}

/// A sandbox that runs plugins as servers: a process per plugin, started
/// by lion under OS isolation, serving calls until stopped.
#[async_trait]
pub trait ServerSandbox: Send + Sync + 'static {
    /// The sandbox kind recorded with each plugin it runs (`process`).
    fn kind(&self) -> &'static str;

    /// Starts the server once under its grant, lists the functions it
    /// offers, and stops it (install).
    async fn discover(&self, launch: &ServerLaunch) -> Result<Discovery, SandboxError>;

    /// Starts a warm server for calls. Its files are checked against the
    /// recorded tree hash first; it is stopped when the returned plugin is
    /// dropped.
    async fn start(&self, launch: &ServerLaunch) -> Result<Started, SandboxError>;
}
