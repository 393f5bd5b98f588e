//! Plugins: the manifest a plugin ships with and the operator's grant (deny
//! by default: a plugin gets only what its manifest asks for and the operator
//! granted), the records the log keeps of installed plugins, the [`Sandbox`]
//! and [`ServerSandbox`] ports that sandbox adapters implement (a
//! WebAssembly component, fresh per call; a warm server process), and the [`PluginManager`] that
//! installs, loads, calls, quarantines and removes plugins as events.

mod cache;
mod error;
mod files;
mod kv;
mod loaded;
mod manager;
mod manifest;
mod record;
mod recorder;
mod sandbox;
mod server;
mod task;

pub use cache::{check_component, keep_component, kept_component};
pub use error::PluginError;
pub use files::{MAX_COMPONENT_BYTES, MAX_MANIFEST_BYTES};
pub use manager::{Approval, CallOptions, DEFAULT_QUARANTINE_AFTER, PluginManager};
pub use manifest::{
    ComponentRef, DirAccess, DirPermission, FunctionSpec, Grant, HostInterface, LIMIT_CEILINGS,
    Limits, ManifestError, Permissions, PluginManifest,
};
pub use record::{Artifact, CallFailure, FailureKind, InstalledPlugin, PluginRecord, PluginStatus};
pub use sandbox::{
    CallContext, Compiled, LoadedPlugin, Sandbox, SandboxError, VerifiedArtifact, is_global,
    reachable_addresses,
};
pub use server::{
    Discovered, Discovery, MAX_SERVER_HOSTS, NoDenials, PROCESS_KIND, SERVER_LIMIT_CEILINGS,
    ServerDenials, ServerHost, ServerLaunch, ServerLimits, ServerProtocol, ServerSandbox,
    ServerSpec, Started, WASM_KIND,
};
pub use task::{PLUGIN_HANDLER, PluginTask};
