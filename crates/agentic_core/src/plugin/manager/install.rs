//! Installing, granting and removing plugins: reading a manifest, checking
//! and keeping a component (compiled once, its artifact cached), and the
//! events that record each step.

use std::path::Path;
use std::time::Instant;

use uuid::Uuid;

use super::{PluginManager, elapsed_micros};
use crate::event::SystemEvent;
use crate::plugin::PluginError;
use crate::plugin::files::{MAX_COMPONENT_BYTES, MAX_MANIFEST_BYTES, read_regular};
use crate::plugin::manifest::{Grant, ManifestError, PluginManifest};
use crate::plugin::record::{Artifact, InstalledPlugin, PluginRecord};
use crate::plugin::sandbox::{SandboxError, sha256_hex};
use crate::plugin::server::ServerSpec;
use crate::state::ApplyError;
use crate::store::{Cursor, StoreError};

/// Installed plugins read per page when looking through all of them.
const PLUGIN_PAGE: usize = 256;

impl PluginManager {
    /// Reads a manifest file (a regular file of at most
    /// [`MAX_MANIFEST_BYTES`]): the component path and directory paths are
    /// made absolute against the manifest's folder, directories with their
    /// symbolic links resolved where they exist, and the folder is kept for
    /// the grant ([`PluginManifest::grant_from`]).
    pub fn read_manifest(path: &Path) -> Result<PluginManifest, PluginError> {
        let bytes = read_regular(path, MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| PluginError::io(path, "not UTF-8"))?;
        let mut manifest = PluginManifest::parse(&text).map_err(|e| match e {
            ManifestError::Parse(m) => ManifestError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        if let Some(component) = &mut manifest.component {
            component.path = base.join(&component.path);
        }
        if let Some(server) = &mut manifest.server {
            resolve_server_paths(server, base, path)?;
        }
        for dir in &mut manifest.permissions.dirs {
            let joined = base.join(&dir.path);
            dir.path = joined.canonicalize().unwrap_or(joined);
        }
        manifest.folder = Some(base.canonicalize().map_err(|e| PluginError::io(base, e))?);
        Ok(manifest)
    }

    /// Installs the plugin `manifest` describes with `grant`: checks the
    /// component's hash and that it compiles and imports nothing the
    /// manifest does not ask for, copies it into the home under its hash,
    /// and records `plugin_installed` and `plugin_loaded`.
    pub async fn install(
        &self,
        manifest: PluginManifest,
        grant: Grant,
    ) -> Result<PluginRecord, PluginError> {
        manifest.check_grant(&grant)?;
        self.check_dirs_keep_out_of_home(&manifest.name, &grant)?;
        let Some(component) = manifest.component.clone() else {
            return self.install_server(manifest, grant).await;
        };
        let path = component.path.clone();
        let bytes = read_regular(&path, MAX_COMPONENT_BYTES)?;
        let actual = sha256_hex(&bytes);
        if actual != component.sha256 {
            return Err(PluginError::HashMismatch {
                path: path.display().to_string(),
                expected: component.sha256.clone(),
                actual,
            });
        }
        if self.inner.store.plugin(&manifest.name).await?.is_some() {
            return Err(PluginError::AlreadyInstalled(manifest.name));
        }
        let name = manifest.name.clone();
        let started = Instant::now();
        let files = self.inner.files.clone();
        let compiled =
            tokio::task::spawn_blocking(move || files.compile(&bytes).map(|c| (c, bytes)))
                .await
                .map_err(|e| StoreError::Backend(format!("compile task failed: {e}")))?
                .map_err(|source| PluginError::Sandbox {
                    name: name.clone(),
                    error: source,
                })?;
        let (compiled, bytes) = compiled;
        if let Some(i) = compiled
            .imports
            .iter()
            .find(|i| !manifest.permissions.interfaces.contains(i))
        {
            return Err(PluginError::Sandbox {
                name,
                error: SandboxError::InvalidComponent(format!(
                    "it imports the {} interface, which its manifest does not ask for",
                    i.as_str()
                )),
            });
        }
        let micros = elapsed_micros(started);
        let sha = component.sha256;
        let artifact = self.inner.files.keep(&sha, &bytes, compiled.artifact)?;
        // Before the install is recorded: a kernel that sees it finds the code.
        if let Some(blobs) = self.inner.store.blobs() {
            blobs.put_blob(&sha, &bytes).await?;
        }
        let sandbox = self.inner.files.sandbox();
        let installed = InstalledPlugin {
            manifest,
            grant,
            sandbox: sandbox.kind().to_owned(),
            install_id: Some(Uuid::now_v7()),
            dirs_named: true,
        };
        let events = vec![
            SystemEvent::PluginInstalled {
                plugin: Box::new(installed.clone()),
            },
            SystemEvent::PluginLoaded {
                name: name.clone(),
                artifact: Artifact {
                    key: sandbox.artifact_key().to_owned(),
                    sha256: artifact.sha256().to_owned(),
                },
                cached: false,
                micros,
                install_id: installed.install_id,
            },
        ];
        let mut record = PluginRecord::installed(installed);
        for event in &events[1..] {
            record.apply(event);
        }
        match self.append_now(events).await {
            Err(StoreError::Rejected(ApplyError::DuplicatePlugin(n))) => {
                Err(PluginError::AlreadyInstalled(n))
            }
            other => other.map(|()| record).map_err(Into::into),
        }
    }

    /// Replaces what plugin `name` is granted with `grant` (checked against
    /// its recorded manifest; directories' host paths named by the
    /// operator) and records `plugin_granted`; the next call loads the
    /// plugin with it.
    pub async fn grant(&self, name: &str, grant: Grant) -> Result<PluginRecord, PluginError> {
        let snapshot = self.recorded(name).await?;
        snapshot.record.installed.manifest.check_grant(&grant)?;
        self.check_dirs_keep_out_of_home(name, &grant)?;
        if snapshot.record.installed.is_server() {
            super::server::check_server_grant(name, &grant)?;
        }
        let event = SystemEvent::PluginGranted {
            name: name.to_owned(),
            grant,
            install_id: snapshot.record.installed.install_id,
        };
        let mut record = snapshot.record;
        record.apply(&event);
        match self.append_now(vec![event]).await {
            Err(StoreError::Rejected(ApplyError::UnknownPlugin(n))) => {
                return Err(PluginError::NotInstalled(n));
            }
            Err(StoreError::Rejected(e @ ApplyError::StaleGrant(_))) => {
                return Err(PluginError::GrantRefused {
                    name: name.to_owned(),
                    reason: e.to_string(),
                });
            }
            other => other?,
        }
        self.unload(name).await;
        Ok(record)
    }

    /// Removes a plugin (and its key-value data) and deletes its files when
    /// no other installed plugin shares them.
    pub async fn remove(&self, name: &str) -> Result<(), PluginError> {
        self.flush().await?;
        let record = self.recorded(name).await?.record;
        let sha = record.installed.sha256().to_owned();
        let shared = self.shares_files(name, &sha).await?;
        let event = SystemEvent::PluginRemoved {
            name: name.to_owned(),
        };
        match self.append_now(vec![event]).await {
            Err(StoreError::Rejected(ApplyError::UnknownPlugin(n))) => {
                return Err(PluginError::NotInstalled(n));
            }
            other => other?,
        }
        self.unload(name).await;
        if record.installed.is_server() {
            self.forget_scratch(name);
        } else if !shared {
            self.inner.files.forget(&sha);
        }
        Ok(())
    }

    /// Whether an installed plugin other than `name` uses the files of
    /// component `sha` (installs are few: they are read a page at a time).
    async fn shares_files(&self, name: &str, sha: &str) -> Result<bool, StoreError> {
        let mut after = Cursor::START;
        loop {
            let page = self.inner.store.plugins(after, PLUGIN_PAGE).await?;
            if page
                .items
                .iter()
                .any(|p| p.name() != name && p.installed.sha256() == sha)
            {
                return Ok(true);
            }
            match page.next {
                Some(next) => after = next,
                None => return Ok(false),
            }
        }
    }
}

/// Makes a server's paths absolute against the manifest's folder `base`:
/// its root and read-only paths (symbolic links resolved), and its command
/// (a bare name is looked up on `PATH`; the real file is recorded, so a
/// shim or a link later changed is not what runs).
fn resolve_server_paths(
    server: &mut ServerSpec,
    base: &Path,
    manifest: &Path,
) -> Result<(), PluginError> {
    let resolve = |path: &Path| {
        let joined = base.join(path);
        joined
            .canonicalize()
            .map_err(|e| PluginError::io(&joined, e))
    };
    server.root = resolve(&server.root)?;
    server.read_only = server
        .read_only
        .iter()
        .map(|p| resolve(p))
        .collect::<Result<_, _>>()?;
    let command = server.command.clone();
    let found = if command.components().count() > 1 || command.is_absolute() {
        Some(base.join(&command))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(&command))
                .find(|candidate| candidate.is_file())
        })
    };
    let found = found.ok_or_else(|| {
        PluginError::io(
            manifest,
            format!(
                "server.command {} is not an executable on PATH (is its runtime installed?)",
                command.display()
            ),
        )
    })?;
    server.command = found.canonicalize().map_err(|e| {
        PluginError::io(manifest, format!("server.command {}: {e}", found.display()))
    })?;
    Ok(())
}
