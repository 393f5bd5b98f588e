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

use std::path::{Path, PathBuf};
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

/// Where component `sha` is kept under the plugin directory `dir`.
fn component_path(dir: &Path, sha: &str) -> PathBuf {
    dir.join("components").join(format!("{sha}.wasm"))
}

/// The component with hash `sha` kept under the plugin directory `dir`
/// (by an install or a fetch), checked against `sha`; `None` if it is not
/// there.
pub fn kept_component(dir: &Path, sha: &str) -> Result<Option<Vec<u8>>, PluginError> {
    let path = component_path(dir, sha);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_regular(&path, MAX_COMPONENT_BYTES)?;
    check_component(&path.display().to_string(), sha, &bytes)?;
    Ok(Some(bytes))
}

/// Keeps component `bytes` under the plugin directory `dir` by their hash
/// `sha`, which they must have (as an install keeps them).
pub fn keep_component(dir: &Path, sha: &str, bytes: &[u8]) -> Result<(), PluginError> {
    check_component("the component to keep", sha, bytes)?;
    write_atomic(&component_path(dir, sha), bytes)
}

/// Refuses component `bytes` (from `what`) unless their SHA-256 is `sha`.
pub fn check_component(what: &str, sha: &str, bytes: &[u8]) -> Result<(), PluginError> {
    let actual = sha256_hex(bytes);
    if actual != sha {
        return Err(PluginError::HashMismatch {
            path: what.to_owned(),
            expected: sha.to_owned(),
            actual,
        });
    }
    Ok(())
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
        component_path(&self.dir, sha)
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
    /// store), checked against `sha` before it is kept; or into the store
    /// when only the home has it (installed before the store kept
    /// components). A component in neither place is left for
    /// [`PluginFiles::load`] to report.
    pub async fn fetch(&self, sha: &str, blobs: &dyn BlobStore) -> Result<(), PluginError> {
        let path = self.component_path(sha);
        if path.exists() {
            // Best effort: the home has what the load needs.
            if let Err(e) = self.backfill(sha, blobs).await {
                tracing::warn!(component = sha, error = %e, "the store could not be given a component");
            }
            return Ok(());
        }
        let Some(bytes) = blobs.blob(sha, MAX_COMPONENT_BYTES).await? else {
            return Ok(());
        };
        check_component(&format!("the store's copy of component {sha}"), sha, &bytes)?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StoreError::Backend(format!("write task failed: {e}")))?
    }

    /// Keeps the home's component `sha` in the store's `blobs` if they lack it.
    async fn backfill(&self, sha: &str, blobs: &dyn BlobStore) -> Result<(), PluginError> {
        if blobs.has_blob(sha).await? {
            return Ok(());
        }
        let dir = self.dir.clone();
        let sha_owned = sha.to_owned();
        let kept = tokio::task::spawn_blocking(move || kept_component(&dir, &sha_owned))
            .await
            .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))??;
        if let Some(bytes) = kept {
            blobs.put_blob(sha, &bytes).await?;
        }
        Ok(())
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
