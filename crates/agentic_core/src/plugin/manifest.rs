//! The plugin manifest (TOML): identity, the component and its hash, the
//! permissions asked for, limits, and each function's JSON Schemas; and the
//! operator's [`Grant`], which may only narrow what the manifest asks for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::server::ServerSpec;

/// A plugin's manifest, as written by its author.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginManifest {
    /// Unique name: lowercase letters, digits, `-` and `_`, at most 64.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// What it does, in a sentence.
    pub description: String,
    /// The WebAssembly component (a WebAssembly plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentRef>,
    /// The server to start (a server plugin: a subprocess under OS
    /// isolation). A manifest has a component or a server, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSpec>,
    /// What it asks to be allowed.
    #[serde(default)]
    pub permissions: Permissions,
    /// Resource limits of one call.
    #[serde(default)]
    pub limits: Limits,
    /// Its functions, by name. A server's are discovered at install, not
    /// declared.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionSpec>,
    /// The folder the manifest was read from, with symbolic links resolved
    /// (set by `PluginManager::read_manifest`; not part of the file and not
    /// recorded). A directory the manifest asks for inside it may be granted
    /// as `dir:GUEST`; one outside needs the operator to name its host path.
    #[serde(skip)]
    pub folder: Option<PathBuf>,
}

/// Where the component is and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentRef {
    /// Path of the `.wasm` component, relative to the manifest.
    pub path: PathBuf,
    /// Its SHA-256, 64 lowercase hex digits.
    pub sha256: String,
}

/// Permissions a manifest asks for (or a grant gives).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Host directories, each mounted at a guest path.
    #[serde(default)]
    pub dirs: Vec<DirPermission>,
    /// Hosts it may reach over HTTP (exact names, optionally `:port`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Environment variables it may read.
    #[serde(default)]
    pub env: Vec<String>,
    /// Host interfaces it may import.
    #[serde(default)]
    pub interfaces: Vec<HostInterface>,
}

/// One directory a plugin may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirPermission {
    /// The directory on the host.
    pub path: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
    /// Read-only or read-write.
    pub mode: DirAccess,
}

/// Access to a granted directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirAccess {
    /// Read files and list directories.
    ReadOnly,
    /// Also create, write and delete.
    ReadWrite,
}

/// Host interfaces a plugin may import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostInterface {
    /// Structured logging.
    Log,
    /// A key-value store of its own, persisted through the event log.
    Kv,
    /// Emitting custom events.
    Events,
    /// Outbound HTTP to the granted hosts.
    Http,
}

impl HostInterface {
    /// Every host interface.
    pub const ALL: [HostInterface; 4] = [Self::Log, Self::Kv, Self::Events, Self::Http];

    /// The name used in manifests and grants (`log`, `kv`, `events`, `http`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Kv => "kv",
            Self::Events => "events",
            Self::Http => "http",
        }
    }

    /// The interface named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == name)
    }
}

/// Limits of one call; a field left out takes its default. Each is at
/// most its [`LIMIT_CEILINGS`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory, in MiB.
    pub memory_mib: u32,
    /// Wall-clock time, in milliseconds.
    pub timeout_ms: u64,
    /// A deterministic instruction budget, if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Largest output (JSON bytes); also caps what the plugin logs and
    /// writes to stdout/stderr in one call.
    pub max_output_bytes: u64,
    /// Largest input (JSON bytes), refused before the plugin runs.
    pub max_input_bytes: u64,
    /// Calls that may run at once.
    pub max_concurrency: u32,
    /// Largest data of one emitted event (JSON bytes): every event is
    /// stored in the log and read back by every process.
    pub max_emit_bytes: u64,
    /// Most bytes (kinds and data) one call may emit in all.
    pub max_emit_total_bytes: u64,
    /// Largest total size of the plugin's key-value store (keys plus
    /// values), across calls: the store is held in memory by every process
    /// that loads the plugin and replayed from the log.
    pub max_kv_total_bytes: u64,
    /// Most keys the plugin's key-value store may hold, across calls.
    pub max_kv_keys: u64,
    /// Most handles (files and directories, sockets, streams) a call may
    /// hold open at once: each file or socket is a descriptor of the host
    /// process, which every plugin and the log share.
    pub max_open_handles: u32,
    /// Most bytes one call may write into its read-write directories (each
    /// file or directory it creates counts as one 4 KiB block).
    pub max_write_bytes: u64,
    /// Most bytes each read-write directory may hold, across calls: what
    /// it held when the plugin was first called in the process (measured)
    /// plus what calls wrote since (each created entry counts 4 KiB).
    pub max_dir_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: 64,
            timeout_ms: 5_000,
            fuel: None,
            max_output_bytes: 1 << 20,
            max_input_bytes: 1 << 20,
            max_concurrency: 8,
            // An event as large as a big output; 16 of them per call at most.
            max_emit_bytes: 64 << 10,
            max_emit_total_bytes: 1 << 20,
            // Held in memory by each process and copied on each write.
            max_kv_total_bytes: 8 << 20,
            max_kv_keys: 10_000,
            // One plugin at its default concurrency then holds at most 512
            // descriptors, half the 1024 a process gets by default.
            max_open_handles: 64,
            max_write_bytes: 16 << 20,
            // Sixteen calls' worth of writes at the default quota.
            max_dir_bytes: 256 << 20,
        }
    }
}

/// The most a manifest may set each limit to. A manifest is its author's:
/// without these, a hostile one could ask for the whole host (events of a
/// terabyte, a key-value store the size of memory) and the defaults would
/// protect nothing. A manifest above any of them is refused when it is
/// read ([`PluginManifest::parse`]); a plugin recorded with a larger value
/// before the ceilings existed runs at the ceiling ([`Limits::capped`]).
/// `fuel` has none: the timeout bounds a call whatever its fuel.
pub const LIMIT_CEILINGS: Limits = Limits {
    // Every slot of the sandbox's memory pool reserves this much address
    // space (agentic_wasm's MAX_MEMORY_BYTES is this).
    memory_mib: 256,
    // Ten minutes: a running call holds a pooled instance, a concurrency
    // permit, its share of the descriptor budget and, for a kv plugin, the
    // plugin's turn; longer work belongs in several calls.
    timeout_ms: 600_000,
    fuel: None,
    // The output is stored in the log, which every process reads back;
    // stdout and stderr are each held in memory up to this, and so is an
    // HTTP response body.
    max_output_bytes: 16 << 20,
    // The input is parsed and schema-checked in memory and stored in the
    // log with the call.
    max_input_bytes: 16 << 20,
    // A quarter of the 256 component instances the process's pool holds
    // for every plugin together.
    max_concurrency: 64,
    // One event is one row of the log, read back by every process (the
    // attack this stops: 100 events of 20 MB in one call).
    max_emit_bytes: 1 << 20,
    // A call's events are held in memory until they are committed, in one
    // transaction, with its result.
    max_emit_total_bytes: 16 << 20,
    // The store is held in memory by every process that loads the plugin
    // and rebuilt from the log at each start.
    max_kv_total_bytes: 64 << 20,
    // Each key is an entry of that in-memory map (and at most 256 bytes).
    max_kv_keys: 100_000,
    // A call reserves this many of the process's plugin descriptors before
    // it runs; a process gets 1024 by default on many systems.
    max_open_handles: 256,
    // Bytes that reach the disk the log lives on, in one call.
    max_write_bytes: 1 << 30,
    // What one granted directory may hold; a plugin that must keep more
    // needs a filesystem of its own (and this constant raised).
    max_dir_bytes: 16 << 30,
};

impl Limits {
    /// Every limit but `fuel`, by its manifest name, with its value.
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("memory_mib", u64::from(self.memory_mib)),
            ("timeout_ms", self.timeout_ms),
            ("max_output_bytes", self.max_output_bytes),
            ("max_input_bytes", self.max_input_bytes),
            ("max_concurrency", u64::from(self.max_concurrency)),
            ("max_emit_bytes", self.max_emit_bytes),
            ("max_emit_total_bytes", self.max_emit_total_bytes),
            ("max_kv_total_bytes", self.max_kv_total_bytes),
            ("max_kv_keys", self.max_kv_keys),
            ("max_open_handles", u64::from(self.max_open_handles)),
            ("max_write_bytes", self.max_write_bytes),
            ("max_dir_bytes", self.max_dir_bytes),
        ]
    }

    /// The first limit above its ceiling: its name, value and ceiling.
    pub fn above_ceiling(&self) -> Option<(&'static str, u64, u64)> {
        self.fields()
            .into_iter()
            .zip(LIMIT_CEILINGS.fields())
            .find(|((_, value), (_, ceiling))| value > ceiling)
            .map(|((name, value), (_, ceiling))| (name, value, ceiling))
    }

    /// These limits with each one lowered to its ceiling: what a call runs
    /// under, whatever was recorded.
    pub fn capped(self) -> Self {
        let c = LIMIT_CEILINGS;
        Self {
            memory_mib: self.memory_mib.min(c.memory_mib),
            timeout_ms: self.timeout_ms.min(c.timeout_ms),
            fuel: self.fuel,
            max_output_bytes: self.max_output_bytes.min(c.max_output_bytes),
            max_input_bytes: self.max_input_bytes.min(c.max_input_bytes),
            max_concurrency: self.max_concurrency.min(c.max_concurrency),
            max_emit_bytes: self.max_emit_bytes.min(c.max_emit_bytes),
            max_emit_total_bytes: self.max_emit_total_bytes.min(c.max_emit_total_bytes),
            max_kv_total_bytes: self.max_kv_total_bytes.min(c.max_kv_total_bytes),
            max_kv_keys: self.max_kv_keys.min(c.max_kv_keys),
            max_open_handles: self.max_open_handles.min(c.max_open_handles),
            max_write_bytes: self.max_write_bytes.min(c.max_write_bytes),
            max_dir_bytes: self.max_dir_bytes.min(c.max_dir_bytes),
        }
    }
}

/// One function: its JSON Schemas, checked on every call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: Value,
    /// JSON Schema of its output.
    pub output_schema: Value,
    /// A server's own name for the function (an MCP tool name), where it
    /// differs from lion's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
}

/// What the operator granted a plugin at install: a subset of what its
/// manifest asks for.
pub type Grant = Permissions;

/// Why a manifest or a grant is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not valid TOML, or not a manifest (missing or unknown field…).
    #[error("invalid manifest: {0}")]
    Parse(String),
    /// A field's value is not acceptable.
    #[error("invalid manifest: {field}: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--grant` flag could not be read.
    #[error("invalid grant {0}")]
    BadGrant(String),
    /// The grant gives something the manifest did not ask for.
    #[error("the grant gives {0}, which the manifest does not ask for")]
    NotRequested(String),
    /// A directory is granted without the operator naming its host path,
    /// and the path is not inside the manifest's folder.
    #[error(
        "directory {guest} is {host} on this machine, outside the manifest's folder: \
         grant it by naming that path, --grant dir:{guest}={host}{ro}",
        host = .host.display(),
        ro = if *.read_only { ":ro" } else { "" }
    )]
    HostPathNotNamed {
        /// Where the plugin sees the directory.
        guest: String,
        /// The host path the manifest names, symbolic links resolved.
        host: PathBuf,
        /// Whether the grant asked for read-only access.
        read_only: bool,
    },
}

impl PluginManifest {
    /// Parses and checks a manifest.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let manifest: Self = toml::from_str(text)
            .map_err(|e| ManifestError::Parse(crate::toml_error::one_line(&e, text)))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Checks a plugin name: 1 to 64 lowercase letters, digits, `-` or `_`,
    /// starting with a letter (so it is also a safe file name).
    pub fn check_name(name: &str) -> Result<(), ManifestError> {
        let name_ok = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if name_ok {
            return Ok(());
        }
        Err(ManifestError::Invalid {
            field: "name".to_owned(),
            reason: "use 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter"
                .to_owned(),
        })
    }

    /// Checks the values serde cannot.
    fn check(&self) -> Result<(), ManifestError> {
        let invalid = |field: &str, reason: &str| ManifestError::Invalid {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        Self::check_name(&self.name)?;
        if self.version.trim().is_empty() {
            return Err(invalid("version", "must not be empty"));
        }
        match (&self.component, &self.server) {
            (Some(component), None) => {
                if !is_sha256_hex(&component.sha256) {
                    return Err(invalid(
                        "component.sha256",
                        "must be 64 lowercase hex digits",
                    ));
                }
                if self.functions.is_empty() {
                    return Err(invalid("functions", "a plugin needs at least one function"));
                }
            }
            (None, Some(server)) => {
                if !self.functions.is_empty() {
                    return Err(invalid(
                        "functions",
                        "a server's functions are the tools it lists at install: leave them out",
                    ));
                }
                if server.command.as_os_str().is_empty() {
                    return Err(invalid("server.command", "must not be empty"));
                }
                if let Some((name, value, ceiling)) = server.limits.out_of_range() {
                    return Err(invalid(
                        &format!("server.limits.{name}"),
                        &format!("{value} is not within 1 to {ceiling} (SERVER_LIMIT_CEILINGS)"),
                    ));
                }
                if server.tree_sha256.is_some() || server.package.is_some() {
                    return Err(invalid(
                        "server",
                        "tree_sha256 and package are recorded by lion, not written in a manifest",
                    ));
                }
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "component",
                    "a plugin has a [component] or a [server], not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "component",
                    "a plugin needs a [component] (WebAssembly) or a [server] (a program to run)",
                ));
            }
        }
        for (name, f) in &self.functions {
            for (which, schema) in [
                ("input_schema", &f.input_schema),
                ("output_schema", &f.output_schema),
            ] {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(invalid(
                        &format!("functions.{name}.{which}"),
                        "must be a JSON Schema (a table or a boolean)",
                    ));
                }
                if let Err(e) = jsonschema::validator_for(schema) {
                    return Err(invalid(
                        &format!("functions.{name}.{which}"),
                        &format!("not a valid JSON Schema: {e}"),
                    ));
                }
            }
        }
        if self.limits.memory_mib == 0
            || self.limits.timeout_ms == 0
            || self.limits.max_concurrency == 0
        {
            return Err(invalid(
                "limits",
                "memory_mib, timeout_ms and max_concurrency must be above 0",
            ));
        }
        if let Some((name, value, ceiling)) = self.limits.above_ceiling() {
            return Err(invalid(
                &format!("limits.{name}"),
                &format!("{value} is above lion's ceiling of {ceiling} (LIMIT_CEILINGS)"),
            ));
        }
        for d in &self.permissions.dirs {
            if !d.guest.starts_with('/') {
                return Err(invalid(
                    "permissions.dirs.guest",
                    "must be an absolute guest path",
                ));
            }
        }
        Ok(())
    }

    /// Checks that `grant` gives nothing the manifest does not ask for
    /// (read-write where only read-only was asked is more, too).
    pub fn check_grant(&self, grant: &Grant) -> Result<(), ManifestError> {
        let asked = &self.permissions;
        for d in &grant.dirs {
            // The host path is the operator's to choose; the guest path and
            // the access must be asked for.
            let covered = asked
                .dirs
                .iter()
                .any(|a| a.guest == d.guest && d.mode <= a.mode);
            if !covered || !d.path.is_absolute() {
                return Err(ManifestError::NotRequested(format!(
                    "directory {} as {} ({:?})",
                    d.path.display(),
                    d.guest,
                    d.mode
                )));
            }
        }
        if let Some(h) = grant.hosts.iter().find(|h| !asked.hosts.contains(h)) {
            return Err(ManifestError::NotRequested(format!("host {h}")));
        }
        if let Some(v) = grant.env.iter().find(|v| !asked.env.contains(v)) {
            return Err(ManifestError::NotRequested(format!(
                "environment variable {v}"
            )));
        }
        if let Some(i) = grant
            .interfaces
            .iter()
            .find(|i| !asked.interfaces.contains(i))
        {
            return Err(ManifestError::NotRequested(format!(
                "host interface {}",
                i.as_str()
            )));
        }
        Ok(())
    }
}

impl PluginManifest {
    /// The grant that `flags` describe, each `KIND:VALUE`:
    /// `interface:NAME`, `host:HOST[:PORT]`, `env:NAME`, or
    /// `dir:GUEST[=HOST][:ro]` — the directory the manifest asks to see at
    /// `GUEST`, backed by the host directory `HOST` (which the operator must
    /// name unless the manifest's own path for it lies inside the manifest's
    /// folder), read-only with `:ro` even where read-write was asked.
    /// Refuses anything the manifest does not ask for.
    pub fn grant_from(&self, flags: &[String]) -> Result<Grant, ManifestError> {
        let mut grant = Grant::default();
        for flag in flags {
            let bad = || {
                ManifestError::BadGrant(format!(
                    "{flag:?}: use interface:NAME, host:HOST[:PORT], env:NAME or \
                     dir:GUEST[=HOST][:ro]"
                ))
            };
            let (kind, value) = flag.split_once(':').ok_or_else(bad)?;
            match kind {
                "interface" => {
                    let interface = HostInterface::from_name(value).ok_or_else(|| {
                        ManifestError::BadGrant(format!(
                            "{flag:?}: no host interface {value:?} (log, kv, events or http)"
                        ))
                    })?;
                    if !grant.interfaces.contains(&interface) {
                        grant.interfaces.push(interface);
                    }
                }
                "host" if !value.is_empty() => grant.hosts.push(value.to_owned()),
                "env" if !value.is_empty() => grant.env.push(value.to_owned()),
                "dir" => {
                    let (value, read_only) = match value.strip_suffix(":ro") {
                        Some(rest) => (rest, true),
                        None => (value, false),
                    };
                    let (guest, host) = match value.split_once('=') {
                        Some((guest, host)) if !host.is_empty() => (guest, Some(host)),
                        Some(_) => return Err(bad()),
                        // A server sees a directory at its own path: the
                        // operator's `dir:/PATH` names the host path.
                        None if self.server.is_some() && value.starts_with('/') => {
                            (value, Some(value))
                        }
                        None => (value, None),
                    };
                    grant
                        .dirs
                        .push(self.dir_grant(guest, host.map(Path::new), read_only)?);
                }
                _ => return Err(bad()),
            }
        }
        self.check_grant(&grant)?;
        Ok(grant)
    }

    /// Everything the manifest asks for (`--grant-all`), except that a
    /// directory outside the manifest's folder is still refused until the
    /// operator names its host path.
    pub fn grant_everything(&self) -> Result<Grant, ManifestError> {
        let mut grant = self.permissions.clone();
        grant.dirs = self
            .permissions
            .dirs
            .iter()
            .map(|d| self.dir_grant(&d.guest, None, d.mode == DirAccess::ReadOnly))
            .collect::<Result<_, _>>()?;
        Ok(grant)
    }

    /// The grant of the directory asked for at `guest`: backed by `host`
    /// when the operator named it, else by the manifest's path if that lies
    /// inside the manifest's folder. Paths are compared with symbolic links
    /// resolved, so neither `..` nor a link leaves the folder unnoticed.
    fn dir_grant(
        &self,
        guest: &str,
        host: Option<&Path>,
        read_only: bool,
    ) -> Result<DirPermission, ManifestError> {
        let asked = self
            .permissions
            .dirs
            .iter()
            .find(|d| d.guest == guest)
            .ok_or_else(|| ManifestError::NotRequested(format!("directory {guest}")))?;
        let path = match host {
            Some(host) => {
                let resolved = host.canonicalize().map_err(|e| {
                    ManifestError::BadGrant(format!("dir:{guest}={}: {e}", host.display()))
                })?;
                if !resolved.is_dir() {
                    return Err(ManifestError::BadGrant(format!(
                        "dir:{guest}={}: not a directory",
                        host.display()
                    )));
                }
                resolved
            }
            None => {
                let resolved = asked.path.canonicalize().ok().filter(|p| p.is_dir());
                let folder = self.folder.as_deref().and_then(|f| f.canonicalize().ok());
                match (resolved, folder) {
                    (Some(path), Some(folder)) if path.starts_with(&folder) => path,
                    (resolved, _) => {
                        return Err(ManifestError::HostPathNotNamed {
                            guest: guest.to_owned(),
                            host: resolved.unwrap_or_else(|| asked.path.clone()),
                            read_only,
                        });
                    }
                }
            }
        };
        Ok(DirPermission {
            path,
            guest: guest.to_owned(),
            mode: if read_only {
                DirAccess::ReadOnly
            } else {
                asked.mode
            },
        })
    }
}

/// Whether `hash` is 64 lowercase hex digits.
fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::server::{ServerLimits, ServerProtocol};

    const HELLO: &str = r#"
name = "hello_world"
version = "0.1.0"
description = "Greets people"

[component]
path = "hello_world.wasm"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[permissions]
interfaces = ["log"]
hosts = ["api.example.com:443"]
dirs = [{ path = "./data", guest = "/data", mode = "read-only" }]

[limits]
memory_mib = 16
timeout_ms = 1000
max_output_bytes = 65536
max_concurrency = 4

[functions.greet]
description = "Says hello"
input_schema = { type = "object", required = ["name"], properties = { name = { type = "string" } } }
output_schema = { type = "object" }
"#;

    const SERVER: &str = r#"
name = "time"
version = "1"
description = "Tells the time"

[server]
command = "python3"
args = ["-m", "mcp_server_time"]
read_only = ["/usr/lib/python3"]

[server.limits]
memory_mib = 512
"#;

    #[test]
    fn a_server_manifest_parses_without_functions() {
        let m = PluginManifest::parse(SERVER).expect("parse");
        let server = m.server.expect("a server");
        assert!(m.component.is_none() && m.functions.is_empty());
        assert_eq!(server.protocol, ServerProtocol::McpStdio);
        assert_eq!(server.root, PathBuf::from("."));
        assert_eq!(server.limits.memory_mib, 512);
        assert_eq!(server.limits.processes, ServerLimits::default().processes);
    }

    #[test]
    fn a_manifest_has_a_component_or_a_server_and_a_server_declares_no_functions() {
        let component =
            "[component]\npath = \"x.wasm\"\nsha256 = \"".to_owned() + &"0".repeat(64) + "\"\n";
        let both = SERVER.replace("[server]\n", &(component + "[server]\n"));
        let neither = HELLO.replace("[component]", "[other]");
        let functions =
            SERVER.to_owned() + "[functions.f]\ninput_schema = {}\noutput_schema = {}\n";
        let recorded = SERVER.replace("[server.limits]", "tree_sha256 = \"ab\"\n[server.limits]");
        let zero = SERVER.replace("memory_mib = 512", "processes = 0");
        let huge = SERVER.replace("memory_mib = 512", "memory_mib = 99999999");
        for (text, says) in [
            (both.as_str(), "not both"),
            (neither.as_str(), "unknown field"),
            (functions.as_str(), "tools it lists at install"),
            (recorded.as_str(), "recorded by lion"),
            (
                zero.as_str(),
                "server.limits.processes: 0 is not within 1 to 1024",
            ),
            (huge.as_str(), "server.limits.memory_mib"),
        ] {
            let e = PluginManifest::parse(text).expect_err(says).to_string();
            assert!(e.contains(says), "{e:?} should say {says:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
        let none = HELLO.split("[component]").next().expect("head").to_owned()
            + "[functions.f]\ninput_schema = {}\noutput_schema = {}\n";
        let e = PluginManifest::parse(&none)
            .expect_err("neither")
            .to_string();
        assert!(e.contains("needs a [component]"), "{e}");
    }

    #[test]
    fn a_complete_manifest_parses() {
        let m = PluginManifest::parse(HELLO).expect("parse");
        assert_eq!(m.name, "hello_world");
        assert_eq!(m.permissions.interfaces, vec![HostInterface::Log]);
        assert_eq!(m.permissions.dirs[0].mode, DirAccess::ReadOnly);
        assert_eq!(m.limits.memory_mib, 16);
        assert!(m.functions["greet"].input_schema["required"].is_array());
    }

    #[test]
    fn missing_and_unknown_fields_are_one_line_errors_naming_the_place() {
        let missing = HELLO.replace("version = \"0.1.0\"\n", "");
        let err = PluginManifest::parse(&missing).unwrap_err().to_string();
        assert!(err.contains("missing field `version`"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");

        let unknown = HELLO.replace("[limits]", "[limits]\ncpu_cores = 4");
        let err = PluginManifest::parse(&unknown).unwrap_err().to_string();
        assert!(err.contains("unknown field `cpu_cores`"), "{err}");
        assert!(err.contains("line "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");

        let not_toml = PluginManifest::parse("name = ").unwrap_err().to_string();
        assert!(
            not_toml.starts_with("invalid manifest: line 1"),
            "{not_toml}"
        );
    }

    #[test]
    fn values_serde_cannot_check_are_checked() {
        for (from, to, field) in [
            ("name = \"hello_world\"", "name = \"Hello World\"", "name"),
            ("name = \"hello_world\"", "name = \"--help\"", "name"),
            ("name = \"hello_world\"", "name = \"1st\"", "name"),
            ("name = \"hello_world\"", "name = \"\"", "name"),
            ("sha256 = \"0000", "sha256 = \"zz00", "component.sha256"),
            ("memory_mib = 16", "memory_mib = 0", "limits"),
            (
                "guest = \"/data\"",
                "guest = \"data\"",
                "permissions.dirs.guest",
            ),
            (
                "output_schema = { type = \"object\" }",
                "output_schema = 3",
                "functions.greet.output_schema",
            ),
        ] {
            let text = HELLO.replace(from, to);
            let err = PluginManifest::parse(&text).unwrap_err();
            assert!(
                matches!(&err, ManifestError::Invalid { field: f, .. } if f == field),
                "{from} -> {to}: {err}"
            );
        }
    }

    #[test]
    fn every_limit_above_its_ceiling_is_refused_naming_field_value_and_ceiling() {
        assert_eq!(
            Limits::default().above_ceiling(),
            None,
            "the defaults are within the ceilings"
        );
        for (name, ceiling) in LIMIT_CEILINGS.fields() {
            // At the ceiling: accepted.
            let at = HELLO.replace("[limits]", &format!("[limits]\n{name} = {ceiling}"));
            let at = remove_duplicate_limit(&at, name);
            let m = PluginManifest::parse(&at).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(m.limits.fields().contains(&(name, ceiling)), "{name}");
            // One above: refused, in one line naming all three.
            let above = at.replace(
                &format!("{name} = {ceiling}"),
                &format!("{name} = {}", ceiling + 1),
            );
            let err = PluginManifest::parse(&above).unwrap_err();
            assert!(
                matches!(&err, ManifestError::Invalid { field, .. } if *field == format!("limits.{name}")),
                "{name}: {err}"
            );
            let message = err.to_string();
            assert_eq!(message.lines().count(), 1, "{message}");
            assert!(
                message.contains(&(ceiling + 1).to_string())
                    && message.contains(&format!("ceiling of {ceiling}")),
                "{message}"
            );
        }
        // The attack the ceilings stop: a terabyte per event.
        let err = PluginManifest::parse(
            &HELLO.replace("[limits]", "[limits]\nmax_emit_bytes = 1000000000000"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "invalid manifest: limits.max_emit_bytes: 1000000000000 is above lion's ceiling \
             of 1048576 (LIMIT_CEILINGS)"
        );
    }

    /// `text` with only the first `name = ...` line of its `[limits]`.
    fn remove_duplicate_limit(text: &str, name: &str) -> String {
        let mut seen = false;
        text.lines()
            .filter(|line| {
                if !line.starts_with(&format!("{name} = ")) {
                    return true;
                }
                let keep = !seen;
                seen = true;
                keep
            })
            .map(|line| format!("{line}\n"))
            .collect()
    }

    #[test]
    fn capped_limits_run_at_the_ceiling() {
        let huge = Limits {
            max_emit_bytes: 1 << 40,
            memory_mib: 4096,
            ..Limits::default()
        };
        let capped = huge.capped();
        assert_eq!(capped.max_emit_bytes, LIMIT_CEILINGS.max_emit_bytes);
        assert_eq!(capped.memory_mib, LIMIT_CEILINGS.memory_mib);
        assert_eq!(capped.above_ceiling(), None);
        assert_eq!(Limits::default().capped(), Limits::default());
    }

    #[test]
    fn a_grant_may_narrow_but_never_widen_the_request() {
        let mut m = PluginManifest::parse(HELLO).expect("parse");
        m.permissions.dirs[0].path = PathBuf::from("/srv/data");
        m.check_grant(&Grant::default())
            .expect("granting nothing is fine");
        m.check_grant(&m.permissions)
            .expect("granting everything asked is fine");
        let mut relative = m.permissions.clone();
        relative.dirs[0].path = PathBuf::from("data");
        assert!(m.check_grant(&relative).is_err(), "a host path is absolute");

        let mut wider = m.permissions.clone();
        wider.dirs[0].mode = DirAccess::ReadWrite;
        assert!(
            matches!(m.check_grant(&wider), Err(ManifestError::NotRequested(w)) if w.contains("directory"))
        );

        let mut host = Grant::default();
        host.hosts.push("evil.example.com".into());
        assert_eq!(
            m.check_grant(&host),
            Err(ManifestError::NotRequested("host evil.example.com".into()))
        );

        let mut iface = Grant::default();
        iface.interfaces.push(HostInterface::Http);
        assert!(m.check_grant(&iface).is_err());

        let mut env = Grant::default();
        env.env.push("HOME".into());
        assert!(m.check_grant(&env).is_err());
    }

    /// A folder holding a manifest asking for `/data` at `path` (relative
    /// to the folder), with `inside/` a real directory in it, `outside/` a
    /// directory beside it and `link` a symbolic link to `/`.
    fn manifest_asking_for(path: &str) -> (tempfile::TempDir, PluginManifest) {
        let root = tempfile::tempdir().expect("tempdir");
        let folder = root.path().join("plugin");
        std::fs::create_dir_all(folder.join("inside")).expect("mkdir");
        std::fs::create_dir_all(root.path().join("outside")).expect("mkdir");
        std::os::unix::fs::symlink("/", folder.join("link")).expect("symlink");
        let mut m = PluginManifest::parse(HELLO).expect("parse");
        m.folder = Some(folder.canonicalize().expect("folder"));
        let joined = folder.join(path);
        m.permissions.dirs[0].path = joined.canonicalize().unwrap_or(joined);
        (root, m)
    }

    #[test]
    fn a_directory_outside_the_manifests_folder_needs_its_host_path_named() {
        let (_root, m) = manifest_asking_for("inside");
        let grant = m
            .grant_from(&["dir:/data".into()])
            .expect("inside the folder");
        assert!(grant.dirs[0].path.ends_with("plugin/inside"), "{grant:?}");
        assert_eq!(grant.dirs[0].mode, DirAccess::ReadOnly);
        m.grant_everything().expect("--grant-all covers it");

        for escape in ["link", "..", "../outside", "/", "../../.."] {
            let (root, m) = manifest_asking_for(escape);
            let err = m.grant_from(&["dir:/data".into()]).unwrap_err();
            assert!(
                matches!(&err, ManifestError::HostPathNotNamed { guest, .. } if guest == "/data"),
                "{escape}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains("--grant dir:/data="), "{message}");
            assert!(m.grant_everything().is_err(), "{escape}: --grant-all");

            // Named, it is granted: that path, resolved.
            let outside = root.path().join("outside");
            let flag = format!("dir:/data={}:ro", outside.display());
            let grant = m.grant_from(&[flag]).expect("named");
            assert_eq!(grant.dirs[0].path, outside.canonicalize().expect("outside"));
            assert_eq!(grant.dirs[0].mode, DirAccess::ReadOnly);
        }

        // Naming a path that is not a directory is refused.
        let (root, m) = manifest_asking_for("inside");
        let missing = format!("dir:/data={}", root.path().join("nope").display());
        assert!(matches!(
            m.grant_from(&[missing]),
            Err(ManifestError::BadGrant(_))
        ));
        assert!(matches!(
            m.grant_from(&["dir:/other=/tmp".into()]),
            Err(ManifestError::NotRequested(_))
        ));
        assert!(matches!(
            m.grant_from(&["dir:/data=".into()]),
            Err(ManifestError::BadGrant(_))
        ));
    }
}
