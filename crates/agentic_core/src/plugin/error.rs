//! [`PluginError`]: why a plugin operation failed.

use std::path::Path;

use super::manifest::ManifestError;
use super::record::CallFailure;
use super::sandbox::SandboxError;
use crate::store::StoreError;

/// Why a plugin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The manifest or the grant is not acceptable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component does not hash to what the manifest says.
    #[error("component {path} has sha256 {actual}, but the manifest says {expected}")]
    HashMismatch {
        /// The component file.
        path: String,
        /// The manifest's hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// The component could not be compiled or loaded.
    #[error("plugin {name}: {error}")]
    Sandbox {
        /// The plugin.
        name: String,
        /// What the sandbox said (in the message, so not also its source:
        /// a chain would print it twice).
        error: SandboxError,
    },
    /// A plugin with this name is installed already.
    #[error("plugin {0} is already installed (remove it first)")]
    AlreadyInstalled(String),
    /// No plugin with this name is installed.
    #[error("no plugin {0} is installed")]
    NotInstalled(String),
    /// The call failed; the failure is in the log.
    #[error("plugin {name}: {failure}")]
    Call {
        /// The plugin.
        name: String,
        /// Why the call failed.
        failure: CallFailure,
    },
    /// The plugin's grant cannot be used as recorded (a directory grant
    /// the operator never named, or a granted directory that moved).
    #[error("plugin {name}: {reason}")]
    GrantRefused {
        /// The plugin.
        name: String,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// An approval of a server plugin's tools cannot be made (not a server,
    /// nothing of that name awaits approval, the install changed).
    #[error("plugin {name}: {reason}")]
    ApprovalRefused {
        /// The plugin.
        name: String,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// The plugin runs as a server, and this process has no server sandbox
    /// (or the sandbox cannot run here: the reason names what is missing).
    #[error("plugin {name}: {reason}")]
    NoServerSandbox {
        /// The plugin.
        name: String,
        /// Why no server can be started.
        reason: String,
    },
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PluginError {
    /// A failure to read or write `path`.
    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}
