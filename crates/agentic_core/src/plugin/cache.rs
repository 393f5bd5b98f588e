//! [`PluginFiles`]: a home's plugin files — each installed component, named
//! by its hash, and the compiled artifacts cached beside it — and loading a
//! plugin from them: the cached artifact when its hash matches the one the
//! log recorded, else a fresh compile of the (re-checked) component.
//!
//! On a store several kernels share, components are also kept in the
//! store by their hash ([`BlobStore`]): a home that lacks one fetches it.
//!
//! Layout, under the manager's directory: `components/<sha256>.wasm` (so
//! editing the original after install changes nothing) and
//! `compiled/<artifact key>/<sha256>.bin` (native code: its hash is in the
//! log's `plugin_loaded` event and is checked before every load).

use std::path::PathBuf;
use std::sync::Arc;

use super::error::PluginError;
use super::files::{MAX_COMPONENT_BYTES, read_regular, write_atomic};
use super::sandbox::{Compiled, LoadedPlugin, Sandbox, SandboxError, VerifiedArtifact, sha256_hex};
use crate::store::StoreError;
use crate::store::blobs::BlobStore;

/// A loaded plugin and where its code came from.
pub(super) struct Loaded {
    /// Ready for calls.
    pub plugin: Arc<dyn LoadedPlugin>,
    /// SHA-256 of the compiled artifact that was loaded.
    pub artifact_sha256: String,
    /// True when the artifact came from the cache, not the compiler.
    pub cached: bool,
}

/// A home's plugin files and the sandbox that compiles and loads them.
#[derive(Clone)]
pub(super) struct PluginFiles {
    dir: PathBuf,
    sandbox: Arc<dyn Sandbox>,
}

impl PluginFiles {
    /// The files under `dir`, for `sandbox`.
    pub fn new(dir: PathBuf, sandbox: Arc<dyn Sandbox>) -> Self {
        Self { dir, sandbox }
    }

    /// The directory the files are under.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.sandbox
    }

    /// Where the installed component with hash `sha` is kept.
    pub fn component_path(&self, sha: &str) -> PathBuf {
        self.dir.join("components").join(format!("{sha}.wasm"))
    }

    /// Where the compiled artifact of component `sha` is cached.
    pub fn artifact_path(&self, sha: &str) -> PathBuf {
        self.dir
            .join("compiled")
            .join(self.sandbox.artifact_key())
            .join(format!("{sha}.bin"))
    }

    /// Compiles `bytes` (blocking and CPU-heavy: call it on a blocking
    /// thread).
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, SandboxError> {
        self.sandbox.compile(bytes)
    }

    /// Keeps an installed component and its compiled artifact under the
    /// component's hash `sha`; the artifact, checked.
    pub fn keep(
        &self,
        sha: &str,
        component: &[u8],
        artifact: Vec<u8>,
    ) -> Result<VerifiedArtifact, PluginError> {
        write_atomic(&self.component_path(sha), component)?;
        let artifact = VerifiedArtifact::compiled(artifact);
        write_atomic(&self.artifact_path(sha), artifact.bytes())?;
        Ok(artifact)
    }

    /// Brings component `sha` into the home from the store's `blobs` when
    /// the home lacks it (it was installed on another machine sharing the
    /// store), checked against `sha` before it is kept. A component in
    /// neither place is left for [`PluginFiles::load`] to report.
    pub async fn fetch(&self, sha: &str, blobs: &dyn BlobStore) -> Result<(), PluginError> {
        let path = self.component_path(sha);
        if path.exists() {
            return Ok(());
        }
        let Some(bytes) = blobs.blob(sha).await? else {
            return Ok(());
        };
        let actual = sha256_hex(&bytes);
        if actual != sha {
            return Err(PluginError::HashMismatch {
                path: format!("the store's copy of component {sha}"),
                expected: sha.to_owned(),
                actual,
            });
        }
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StoreError::Backend(format!("write task failed: {e}")))?
    }

    /// Deletes the files of component `sha` (content-addressed: a failure
    /// leaves only garbage).
    pub fn forget(&self, sha: &str) {
        let _ = std::fs::remove_file(self.component_path(sha));
        let _ = std::fs::remove_file(self.artifact_path(sha));
    }

    /// Loads component `sha`: its cached artifact if that hashes to
    /// `expected` (the hash the log recorded), otherwise a compile of the
    /// installed component, itself checked against `sha`, whose artifact is
    /// cached. Blocking: call it on a blocking thread.
    pub fn load(&self, sha: &str, expected: Option<&str>) -> Result<Loaded, SandboxError> {
        let artifact_path = self.artifact_path(sha);
        if let Some(expected) = expected
            && let Ok(bytes) = read_regular(&artifact_path, MAX_COMPONENT_BYTES)
        {
            match VerifiedArtifact::check(bytes, expected) {
                Some(artifact) => {
                    return Ok(Loaded {
                        plugin: self.sandbox.load(&artifact)?,
                        artifact_sha256: artifact.sha256().to_owned(),
                        cached: true,
                    });
                }
                None => tracing::warn!(
                    path = %artifact_path.display(),
                    "cached compiled plugin does not match its recorded hash; recompiling"
                ),
            }
        }
        let component_path = self.component_path(sha);
        let bytes = read_regular(&component_path, MAX_COMPONENT_BYTES)
            .map_err(|e| SandboxError::Host(e.to_string()))?;
        if sha256_hex(&bytes) != sha {
            return Err(SandboxError::InvalidComponent(format!(
                "{} no longer has sha256 {sha}",
                component_path.display()
            )));
        }
        let compiled = self.sandbox.compile(&bytes)?;
        let artifact = VerifiedArtifact::compiled(compiled.artifact);
        write_atomic(&artifact_path, artifact.bytes())
            .map_err(|e| SandboxError::Host(e.to_string()))?;
        Ok(Loaded {
            plugin: self.sandbox.load(&artifact)?,
            artifact_sha256: artifact.sha256().to_owned(),
            cached: false,
        })
    }
}
