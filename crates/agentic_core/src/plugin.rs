//! Plugins as data: the manifest a plugin ships with, and the grant an
//! operator gives it. Deny by default: a plugin gets only what its manifest
//! asks for and the operator granted — never more than it asked for.
//!
//! (The wasmtime sandbox, the plugin manager and `lion plugin` build on
//! these; see `docs/wasmtime-48-notes.md`.)

mod manifest;

pub use manifest::{
    ComponentRef, DirAccess, DirPermission, FunctionSpec, Grant, HostInterface, Limits,
    ManifestError, Permissions, PluginManifest,
};
