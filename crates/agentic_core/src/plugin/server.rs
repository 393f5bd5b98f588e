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
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

/// What a server sandbox needs to start a server plugin. Its `Debug`
/// output names the granted variables but never shows their values.
#[derive(Clone)]
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
    /// Where the sandbox reports what it refused the server outside a
    /// call's own checks (a connection it would not forward): the manager
    /// records each as `plugin_permission_denied`.
    pub denials: Arc<dyn ServerDenials>,
}

impl fmt::Debug for ServerLaunch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: Vec<String> = self.env.iter().map(|(k, _)| format!("{k}=…")).collect();
        f.debug_struct("ServerLaunch")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .field("grant", &self.grant)
            .field("env", &env)
            .field("call_limits", &self.call_limits)
            .field("approved", &self.approved)
            .field("scratch", &self.scratch)
            .field("denials", &self.denials)
            .finish()
    }
}

/// Where a server sandbox reports a refusal lion made on its own, apart
/// from any call's pipeline (today: a connection to a granted host that
/// lion would not forward, or could not). The manager records each as a
/// `plugin_permission_denied` event.
pub trait ServerDenials: fmt::Debug + Send + Sync + 'static {
    /// Records that the server was refused `asked` (`tcp connect
    /// example.com:443 (93.184.215.14)`) for `reason`; `call_id` is the
    /// call it happened during when that is known (exactly one call was
    /// under way), else `None`.
    fn denied(&self, call_id: Option<Uuid>, asked: String, reason: String);
}

/// A [`ServerDenials`] that records nothing (a server started outside a
/// manager, e.g. in a test of the sandbox alone).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDenials;

impl ServerDenials for NoDenials {
    fn denied(&self, _call_id: Option<Uuid>, _asked: String, _reason: String) {}
}

/// The most hosts a server plugin may be granted: each is a listener lion
/// holds and serves for as long as the server runs.
pub const MAX_SERVER_HOSTS: usize = 64;

/// A host a server plugin may reach, from a `host:HOST:PORT` grant: a
/// name (resolved by lion at each connection, its addresses checked) or a
/// loopback IPv4 address, and always a port. The server reaches it through
/// a listener lion holds inside the server's network namespace; nothing
/// else is reachable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServerHost {
    /// A host name (lowercase), mapped inside the jail to a loopback
    /// address of its own.
    Name {
        /// The name.
        name: String,
        /// The port.
        port: u16,
    },
    /// A loopback IPv4 address, seen inside the jail at that same address.
    Loopback {
        /// The address (in `127.0.0.0/8`).
        ip: Ipv4Addr,
        /// The port.
        port: u16,
    },
}

impl ServerHost {
    /// Reads a host grant of a server plugin (`NAME:PORT` or
    /// `127.x.y.z:PORT`), or says in one line why it cannot be one: a
    /// port is required; an IPv6 address, or an IPv4 address outside
    /// loopback, cannot be forwarded (the jail's namespace has only
    /// loopback addresses); a name must be a plain DNS name.
    pub fn parse(grant: &str) -> Result<Self, String> {
        if grant.starts_with('[') || grant.matches(':').count() > 1 {
            return Err(format!(
                "host {grant}: IPv6 hosts cannot be granted to a server plugin (its network \
                 namespace has IPv4 loopback only); grant a name, host:NAME:PORT"
            ));
        }
        let Some((host, port)) = grant.rsplit_once(':') else {
            return Err(format!(
                "host {grant}: a server plugin's host grant needs a port, host:{grant}:PORT \
                 (lion forwards exactly that port)"
            ));
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(format!(
                    "host {grant}: the port must be a number from 1 to 65535"
                ));
            }
        };
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            if !ip.is_loopback() {
                return Err(format!(
                    "host {grant}: a server plugin may be granted an IP address on loopback \
                     (127.0.0.0/8) only, which it reaches at that address; grant a name \
                     instead, which lion resolves and checks at each connection"
                ));
            }
            return Ok(Self::Loopback { ip, port });
        }
        if !is_dns_name(host) {
            return Err(format!(
                "host {grant}: {host:?} is not a host name (letters, digits, '-' and '_' in \
                 dot-separated labels) nor an IPv4 address"
            ));
        }
        Ok(Self::Name {
            name: host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
            port,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Name { port, .. } | Self::Loopback { port, .. } => *port,
        }
    }

    /// The host: the name, or the address as text.
    pub fn host(&self) -> String {
        match self {
            Self::Name { name, .. } => name.clone(),
            Self::Loopback { ip, .. } => ip.to_string(),
        }
    }
}

impl fmt::Display for ServerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host(), self.port())
    }
}

/// True for a plain DNS name: at most 253 bytes of dot-separated labels of
/// 1 to 63 letters, digits, `-` or `_`, not starting or ending with `-`,
/// and not all digits (`127.1` or `2130706433` would be read as addresses
/// by some resolvers). Nothing that could break a line of a hosts file.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_host_grant_is_a_name_or_a_loopback_address_with_a_port() {
        assert_eq!(
            ServerHost::parse("API.Example.com.:443"),
            Ok(ServerHost::Name {
                name: "api.example.com".into(),
                port: 443
            })
        );
        assert_eq!(
            ServerHost::parse("127.0.0.1:8080"),
            Ok(ServerHost::Loopback {
                ip: Ipv4Addr::LOCALHOST,
                port: 8080
            })
        );
        assert_eq!(
            ServerHost::parse("localhost:1").map(|h| h.to_string()),
            Ok("localhost:1".into())
        );
        for (grant, says) in [
            ("example.com", "needs a port"),
            ("example.com:0", "port"),
            ("example.com:70000", "port"),
            ("example.com:http", "port"),
            ("[::1]:80", "IPv6"),
            ("::1:80", "IPv6"),
            ("10.0.0.5:5432", "loopback"),
            ("169.254.169.254:80", "loopback"),
            ("0.0.0.0:80", "loopback"),
            ("127.1:80", "not a host name"),
            ("2130706433:80", "not a host name"),
            ("a b:80", "not a host name"),
            ("evil.com\n1.2.3.4 bank.com:80", "not a host name"),
            ("-x.com:80", "not a host name"),
            ("a..b:80", "not a host name"),
            (":80", "not a host name"),
        ] {
            let error = ServerHost::parse(grant).unwrap_err();
            assert!(error.contains(says), "{grant}: {error}");
        }
    }

    #[test]
    fn a_launch_debugs_its_variables_names_never_their_values() {
        let launch = ServerLaunch {
            name: "notes".into(),
            spec: ServerSpec {
                command: "/usr/bin/python3".into(),
                args: Vec::new(),
                protocol: ServerProtocol::default(),
                root: here(),
                read_only: Vec::new(),
                limits: ServerLimits::default(),
                tree_sha256: None,
                package: None,
            },
            grant: Grant::default(),
            env: vec![("API_TOKEN".into(), "s3cr3t-value".into())],
            call_limits: Limits::default(),
            approved: BTreeMap::new(),
            scratch: "/home/scratch".into(),
            denials: Arc::new(NoDenials),
        };
        let shown = format!("{launch:?}");
        assert!(shown.contains("API_TOKEN"), "{shown}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
    }
}
