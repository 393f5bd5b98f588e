//! Installed plugins as the log describes them: what was installed and
//! granted, whether it is quarantined, its call counts and its compiled
//! artifacts; and how a failed call is named.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::manifest::{Grant, PluginManifest};

/// What `lion plugin install` recorded: the manifest, the operator's grant
/// and the component's hash (its file in the home is named by it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledPlugin {
    /// The manifest, with relative directory paths made absolute.
    pub manifest: PluginManifest,
    /// What the operator granted (a subset of what the manifest asks for).
    pub grant: Grant,
    /// The sandbox kind that runs it (`wasm` or `process`).
    pub sandbox: String,
    /// This install's id: a key-value write recorded for another install
    /// of the same name (a call that outlived a remove and reinstall)
    /// changes nothing. `None` for installs recorded before ids existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_id: Option<Uuid>,
    /// Whether the operator saw and named the host path of every granted
    /// directory (installs and grants recorded since lion checks this).
    /// Directory grants of a plugin installed before are refused at load
    /// until `lion plugin grant` names their host paths again.
    #[serde(default)]
    pub dirs_named: bool,
}

impl InstalledPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Its component's SHA-256, or for a server the tree hash of its files
    /// (empty if none was recorded).
    pub fn sha256(&self) -> &str {
        match (&self.manifest.component, &self.manifest.server) {
            (Some(component), _) => &component.sha256,
            (None, Some(server)) => server.tree_sha256.as_deref().unwrap_or(""),
            (None, None) => "",
        }
    }

    /// Whether it runs as a server (a warm subprocess), not a WebAssembly
    /// component.
    pub fn is_server(&self) -> bool {
        self.manifest.server.is_some()
    }

    /// Takes `grant` as the plugin's whole grant, its directories' host
    /// paths named by the operator (what a `plugin_granted` event does).
    pub fn regrant(&mut self, grant: Grant) {
        self.grant = grant;
        self.dirs_named = true;
    }
}

/// Whether a plugin may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginStatus {
    /// Calls run.
    Active,
    /// Refused after repeated failures, until it is removed and reinstalled.
    Quarantined,
}

/// A compiled artifact of a plugin, recorded when it was compiled so a
/// cached copy can be checked before it is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The sandbox's compatibility key (engine version and settings).
    pub key: String,
    /// SHA-256 of the compiled bytes.
    pub sha256: String,
}

/// An installed plugin and what its calls did, folded from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// What was installed.
    pub installed: InstalledPlugin,
    /// Whether it may be called.
    pub status: PluginStatus,
    /// Calls started.
    pub calls: u64,
    /// Calls that returned an output.
    pub succeeded: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Failures counted towards quarantine since the last success.
    pub consecutive_failures: u32,
    /// The latest compiled artifact for each sandbox key.
    pub artifacts: BTreeMap<String, String>,
}

impl PluginRecord {
    /// A freshly installed plugin.
    pub fn installed(installed: InstalledPlugin) -> Self {
        Self {
            installed,
            status: PluginStatus::Active,
            calls: 0,
            succeeded: 0,
            failed: 0,
            consecutive_failures: 0,
            artifacts: BTreeMap::new(),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        self.installed.name()
    }
}

/// What kind of failure ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The input is not valid JSON, breaks the function's input schema, is
    /// too large, or names no function of the plugin.
    InvalidInput,
    /// The plugin answered with its own error.
    Refused,
    /// The output breaks the function's output schema or is not JSON.
    InvalidOutput,
    /// The output, the log or stdout/stderr went past the output limit.
    OutputLimit,
    /// Linear memory or a table would have grown past the limit.
    MemoryLimit,
    /// The call emitted an event larger than the limit, or more events or
    /// bytes in all than one call may.
    EmitLimit,
    /// A key-value write would take the plugin's store past its total size
    /// or key count, or a key, a value or the call's writes past their caps.
    KvLimit,
    /// The call held more handles (files, sockets, streams) open at once
    /// than its limit.
    HandleLimit,
    /// The call wrote more bytes into its granted directories than its
    /// limit.
    WriteLimit,
    /// The call ran past its wall-clock limit.
    Timeout,
    /// The call used up its fuel.
    FuelExhausted,
    /// The plugin trapped (stack overflow, `unreachable`, panic...) or
    /// exited (code `exit`).
    Trap,
    /// The plugin used something it was not granted.
    PermissionDenied,
    /// The plugin is quarantined.
    Quarantined,
    /// The component could not be loaded or instantiated.
    LoadFailed,
    /// The host failed around the call.
    Host,
    /// The call was dropped before it ended (its task was cancelled, or
    /// its caller interrupted).
    Cancelled,
}

impl FailureKind {
    /// The name used in events and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Refused => "refused",
            Self::InvalidOutput => "invalid_output",
            Self::OutputLimit => "output_limit",
            Self::MemoryLimit => "memory_limit",
            Self::EmitLimit => "emit_limit",
            Self::KvLimit => "kv_limit",
            Self::HandleLimit => "handle_limit",
            Self::WriteLimit => "write_limit",
            Self::Timeout => "timeout",
            Self::FuelExhausted => "fuel_exhausted",
            Self::Trap => "trap",
            Self::PermissionDenied => "permission_denied",
            Self::Quarantined => "quarantined",
            Self::LoadFailed => "load_failed",
            Self::Host => "host",
            Self::Cancelled => "cancelled",
        }
    }

    /// True for failures that say the plugin misbehaved, which count
    /// towards quarantine. A caller's bad input and the plugin's own typed
    /// error do not.
    pub fn counts_towards_quarantine(self) -> bool {
        !matches!(
            self,
            Self::InvalidInput | Self::Refused | Self::Quarantined | Self::Host | Self::Cancelled
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call failed: its kind, the trap code when it trapped, and a
/// message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallFailure {
    /// The kind of failure.
    pub kind: FailureKind,
    /// For a trap: the trap code (`stack_overflow`,
    /// `unreachable_code_reached`, `memory_out_of_bounds`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trap: Option<String>,
    /// What happened, in one line.
    pub message: String,
}

impl CallFailure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            trap: None,
            message: message.into(),
        }
    }

    /// A trap with its code.
    pub fn trap(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Trap,
            trap: Some(code.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.trap {
            Some(code) => write!(f, "{} ({code}): {}", self.kind, self.message),
            None => write!(f, "{}: {}", self.kind, self.message),
        }
    }
}

impl std::error::Error for CallFailure {}

impl PluginRecord {
    /// Applies an event about this (installed) plugin that changes its
    /// record: loads, call outcomes, quarantine and a new grant. Installing,
    /// removing and key-value writes are kept by the state around the
    /// record.
    pub fn apply(&mut self, event: &crate::event::SystemEvent) {
        use crate::event::SystemEvent as E;
        match event {
            E::PluginLoaded { artifact, .. } => {
                self.artifacts
                    .insert(artifact.key.clone(), artifact.sha256.clone());
            }
            E::PluginInvoked { .. } => self.calls += 1,
            E::PluginSucceeded { .. } => {
                self.succeeded += 1;
                self.consecutive_failures = 0;
            }
            E::PluginFailed { failure, .. } => {
                self.failed += 1;
                if failure.kind.counts_towards_quarantine() {
                    self.consecutive_failures += 1;
                }
            }
            E::PluginQuarantined { .. } => self.status = PluginStatus::Quarantined,
            E::PluginGranted { grant, .. } => self.installed.regrant(grant.clone()),
            E::PluginApproved { functions, .. } => {
                self.installed.manifest.functions = functions.clone();
            }
            _ => {}
        }
    }
}
