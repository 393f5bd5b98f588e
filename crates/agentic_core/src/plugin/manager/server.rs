//! Server plugins in the manager: installing one (the server is started
//! once in its sandbox to list the functions it offers, which are recorded
//! with it) and starting it warm for calls (functions it offers that the
//! operator did not approve are refused, each refusal an event).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Instant;

use uuid::Uuid;

use super::{CallOptions, PluginManager, elapsed_micros};
use crate::event::SystemEvent;
use crate::plugin::PluginError;
use crate::plugin::manifest::{FunctionSpec, Grant, PluginManifest};
use crate::plugin::record::{Artifact, InstalledPlugin, PluginRecord};
use crate::plugin::sandbox::{LoadedPlugin, SandboxError};
use crate::plugin::server::{
    MAX_SERVER_HOSTS, PROCESS_KIND, ServerDenials, ServerHost, ServerLaunch, ServerSandbox,
};
use crate::state::ApplyError;
use crate::store::StoreError;

impl PluginManager {
    /// The server sandbox, or why server plugin `name` cannot run.
    fn servers(&self, name: &str) -> Result<&Arc<dyn ServerSandbox>, PluginError> {
        self.inner
            .servers
            .get()
            .ok_or_else(|| PluginError::NoServerSandbox {
                name: name.to_owned(),
                reason: "it runs as a server, and this process has no server sandbox".into(),
            })
    }

    /// Where server plugin `name` keeps its scratch files (its private
    /// `/tmp`), under the manager's directory.
    fn scratch(&self, name: &str) -> PathBuf {
        self.inner.files.dir().join("scratch").join(name)
    }

    /// Deletes server plugin `name`'s scratch files (its private `/tmp`):
    /// nothing of a removed server is left for the next install of the name.
    pub(super) fn forget_scratch(&self, name: &str) {
        let scratch = self.scratch(name);
        match std::fs::remove_dir_all(&scratch) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(plugin = name, error = %e, "cannot delete {}", scratch.display());
            }
            _ => {}
        }
    }

    /// Deletes server plugin `name`'s scratch folder if it is empty: after
    /// a failed install, whose start's private `/tmp` deleted itself (a
    /// recursive delete could take another process's live one).
    fn forget_empty_scratch(&self, name: &str) {
        let _ = std::fs::remove_dir(self.scratch(name));
    }

    /// What a server sandbox needs to start `installed`, with lion's values
    /// of the granted environment variables.
    fn launch(&self, installed: &InstalledPlugin) -> Result<ServerLaunch, PluginError> {
        let manifest = &installed.manifest;
        let spec = manifest
            .server
            .clone()
            .ok_or_else(|| PluginError::NoServerSandbox {
                name: manifest.name.clone(),
                reason: "its record has no server to start".into(),
            })?;
        let env = installed
            .grant
            .env
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| (name.clone(), v)))
            .collect();
        Ok(ServerLaunch {
            name: manifest.name.clone(),
            spec,
            grant: installed.grant.clone(),
            env,
            call_limits: manifest.limits,
            approved: manifest.functions.clone(),
            scratch: self.scratch(&manifest.name),
            denials: Arc::new(RecordDenials {
                manager: Arc::downgrade(&self.inner),
                name: manifest.name.clone(),
                install_id: installed.install_id,
            }),
        })
    }

    /// Installs server plugin `manifest` with `grant`: starts it once in
    /// its sandbox under that grant, records the functions it offers (and
    /// its files' tree hash) with `plugin_installed`.
    pub(super) async fn install_server(
        &self,
        mut manifest: PluginManifest,
        grant: Grant,
    ) -> Result<PluginRecord, PluginError> {
        let name = manifest.name.clone();
        let servers = self.servers(&name)?.clone();
        check_server_grant(&name, &grant)?;
        if let Some(server) = &manifest.server {
            self.check_server_paths(&name, server, &grant)?;
        }
        if self.inner.store.plugin(&name).await?.is_some() {
            return Err(PluginError::AlreadyInstalled(name));
        }
        let mut installed = InstalledPlugin {
            manifest: manifest.clone(),
            grant,
            sandbox: servers.kind().to_owned(),
            install_id: Some(Uuid::now_v7()),
            dirs_named: true,
        };
        let launch = self.launch(&installed)?;
        // A server that is not installed keeps no scratch files (its
        // private /tmp of the discovery start).
        let discovery = match servers.discover(&launch).await {
            Ok(discovery) => discovery,
            Err(source) => {
                self.forget_empty_scratch(&name);
                return Err(PluginError::Sandbox {
                    name: name.clone(),
                    error: source,
                });
            }
        };
        if discovery.functions.is_empty() {
            self.forget_empty_scratch(&name);
            return Err(PluginError::NoServerSandbox {
                name,
                reason: "the server lists no tools".into(),
            });
        }
        for found in discovery.functions {
            manifest.functions.insert(found.function, found.spec);
        }
        if let Some(server) = &mut manifest.server {
            server.tree_sha256 = Some(discovery.tree_sha256);
        }
        installed.manifest = manifest;
        let event = SystemEvent::PluginInstalled {
            plugin: Box::new(installed.clone()),
        };
        match self.append_now(vec![event]).await {
            Err(StoreError::Rejected(ApplyError::DuplicatePlugin(n))) => {
                Err(PluginError::AlreadyInstalled(n))
            }
            other => other
                .map(|()| PluginRecord::installed(installed))
                .map_err(Into::into),
        }
    }

    /// Starts server plugin `installed` warm for calls: records
    /// `plugin_loaded` (the artifact is its files' tree hash) and a denial
    /// for each function it offers that the operator did not approve.
    pub(super) async fn start_server(
        &self,
        installed: &InstalledPlugin,
    ) -> Result<Arc<dyn LoadedPlugin>, PluginError> {
        let name = installed.name().to_owned();
        let servers = self.servers(&name)?.clone();
        let launch = self.launch(installed)?;
        check_server_grant(&name, &installed.grant)?;
        self.check_server_paths(&name, &launch.spec, &installed.grant)?;
        let started_at = Instant::now();
        let started = servers
            .start(&launch)
            .await
            .map_err(|source| PluginError::Sandbox {
                name: name.clone(),
                error: source,
            })?;
        let mut events = vec![SystemEvent::PluginLoaded {
            name: name.clone(),
            artifact: Artifact {
                key: PROCESS_KIND.to_owned(),
                sha256: installed.sha256().to_owned(),
            },
            cached: false,
            micros: elapsed_micros(started_at),
            install_id: installed.install_id,
        }];
        for (function, why) in started.unapproved {
            events.push(SystemEvent::PluginPermissionDenied {
                name: name.clone(),
                call_id: None,
                asked: format!("tool {function}"),
                reason: format!("{why}; not callable until the operator approves it"),
                install_id: installed.install_id,
            });
        }
        self.record(events, CallOptions::default()).await?;
        Ok(started.plugin)
    }
}

/// The manager's [`ServerDenials`]: each refusal a server sandbox reports
/// is recorded as `plugin_permission_denied` of that plugin's install, in a
/// task of its own (the sandbox reports from its own tasks and does not
/// wait), which [`PluginManager::close`] waits for. It holds the manager
/// weakly: a loaded server must not keep its manager alive.
#[derive(Debug)]
struct RecordDenials {
    manager: Weak<super::Inner>,
    name: String,
    install_id: Option<Uuid>,
}

impl ServerDenials for RecordDenials {
    fn denied(&self, call_id: Option<Uuid>, asked: String, reason: String) {
        let Some(inner) = self.manager.upgrade() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(plugin = %self.name, %asked, %reason, "a denial outside a runtime was not recorded");
            return;
        };
        let manager = PluginManager { inner };
        let event = SystemEvent::PluginPermissionDenied {
            name: self.name.clone(),
            call_id,
            asked,
            reason,
            install_id: self.install_id,
        };
        let tracker = manager.inner.recording.clone();
        tracker.spawn_on(
            async move {
                if let Err(e) = manager.record(vec![event], CallOptions::default()).await {
                    tracing::error!(error = %e, "recording a server's denial failed");
                }
            },
            &runtime,
        );
    }
}

/// What `approve` found and did: the functions that became callable (new
/// tools, and tools whose description or schemas changed), and those the
/// server no longer offers (dropped from the record when all was approved).
#[derive(Debug, Clone)]
pub struct Approval {
    /// The plugin's record after the approval.
    pub record: PluginRecord,
    /// New functions approved, by lion's name.
    pub added: Vec<String>,
    /// Changed functions approved.
    pub changed: Vec<String>,
    /// Functions the server stopped offering.
    pub removed: Vec<String>,
}

impl Approval {
    /// Whether anything was approved.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl PluginManager {
    /// Approves what server plugin `name` offers now: starts it once in its
    /// sandbox (its files must be those installed), lists its tools, and
    /// records `plugin_approved` with the new function set, so the next
    /// start serves them. `only` limits the approval to those functions
    /// (new or changed); empty approves every difference, and drops the
    /// functions it no longer offers. Nothing differing records nothing;
    /// with `dry_run`, nothing is recorded either: the approval says what
    /// would be.
    pub async fn approve(
        &self,
        name: &str,
        only: &[String],
        dry_run: bool,
    ) -> Result<Approval, PluginError> {
        let snapshot = self.recorded(name).await?;
        let installed = &snapshot.record.installed;
        if !installed.is_server() {
            return Err(PluginError::ApprovalRefused {
                name: name.to_owned(),
                reason: "only a server plugin's tools are approved; a WebAssembly plugin's \
                         functions are fixed by its component"
                    .into(),
            });
        }
        let servers = self.servers(name)?.clone();
        // Discovery checks the recorded tree hash before it starts anything.
        let launch = self.launch(installed)?;
        let discovery = servers
            .discover(&launch)
            .await
            .map_err(|error| PluginError::Sandbox {
                name: name.to_owned(),
                error,
            })?;
        if discovery.tree_sha256 != installed.sha256() {
            return Err(PluginError::Sandbox {
                name: name.to_owned(),
                error: SandboxError::Server(format!(
                    "the server's files changed since install (tree sha256 {}, recorded {}): \
                     reinstall it instead",
                    discovery.tree_sha256,
                    installed.sha256()
                )),
            });
        }
        let current = &installed.manifest.functions;
        let tool_of = |function: &str, spec: &FunctionSpec| {
            spec.tool.clone().unwrap_or_else(|| function.to_owned())
        };
        let by_tool: BTreeMap<String, &String> = current
            .iter()
            .map(|(function, spec)| (tool_of(function, spec), function))
            .collect();
        let mut approved = current.clone();
        let (mut added, mut changed) = (Vec::new(), Vec::new());
        let mut offered = Vec::new();
        for found in discovery.functions {
            let tool = tool_of(&found.function, &found.spec);
            let function = by_tool
                .get(&tool)
                .map_or(found.function.clone(), |f| (*f).clone());
            offered.push(function.clone());
            if !by_tool.contains_key(&tool)
                && let Some(taken) = current.get(&function)
            {
                return Err(PluginError::ApprovalRefused {
                    name: name.to_owned(),
                    reason: format!(
                        "the server's new tool {tool:?} would take the name {function}, which is \
                         approved for its tool {:?}; not approved (reinstall the plugin to name \
                         its tools afresh)",
                        tool_of(&function, taken)
                    ),
                });
            }
            let mut spec = found.spec;
            spec.tool = (tool != function).then_some(tool);
            if approved.get(&function) == Some(&spec)
                || (!only.is_empty() && !only.contains(&function))
            {
                continue;
            }
            match approved.insert(function.clone(), spec) {
                Some(_) => changed.push(function),
                None => added.push(function),
            }
        }
        if let Some(unknown) = only
            .iter()
            .find(|f| !added.contains(f) && !changed.contains(f))
        {
            return Err(PluginError::ApprovalRefused {
                name: name.to_owned(),
                reason: format!(
                    "{unknown} awaits no approval: the server offers it unchanged, or not at all"
                ),
            });
        }
        let mut removed = Vec::new();
        if only.is_empty() {
            approved.retain(|function, _| {
                let keep = offered.contains(function);
                if !keep {
                    removed.push(function.clone());
                }
                keep
            });
        }
        let mut approval = Approval {
            record: snapshot.record.clone(),
            added,
            changed,
            removed,
        };
        if approval.is_empty() {
            return Ok(approval);
        }
        let event = SystemEvent::PluginApproved {
            name: name.to_owned(),
            functions: approved,
            install_id: installed.install_id,
        };
        approval.record.apply(&event);
        if dry_run {
            return Ok(approval);
        }
        match self.append_now(vec![event]).await {
            Err(StoreError::Rejected(ApplyError::UnknownPlugin(n))) => {
                return Err(PluginError::NotInstalled(n));
            }
            Err(StoreError::Rejected(ApplyError::StaleApproval(_))) => {
                return Err(PluginError::ApprovalRefused {
                    name: name.to_owned(),
                    reason: "it was removed or installed again meanwhile; approve its tools again"
                        .into(),
                });
            }
            other => other?,
        }
        self.unload(name).await;
        Ok(approval)
    }

    /// Checks the paths a server may read besides its grant (its root and
    /// runtime paths, chosen by its manifest's author): none may be or hold
    /// `/` or the lion home, none may lie inside the home but the server's
    /// own package folder, and no read-write grant may overlap its root (a
    /// server must not rewrite the code the next start runs).
    fn check_server_paths(
        &self,
        name: &str,
        server: &crate::plugin::server::ServerSpec,
        grant: &Grant,
    ) -> Result<(), PluginError> {
        let refuse = |reason: String| PluginError::GrantRefused {
            name: name.to_owned(),
            reason,
        };
        let home = self
            .home()
            .and_then(|h| h.canonicalize().ok())
            .ok_or_else(|| refuse("the lion home cannot be resolved".into()))?;
        let own = self
            .inner
            .files
            .dir()
            .join("packages")
            .join(name)
            .canonicalize()
            .ok();
        for path in std::iter::once(&server.root).chain(&server.read_only) {
            let path = path.canonicalize().unwrap_or_else(|_| path.clone());
            let inside_own = own.as_ref().is_some_and(|own| path.starts_with(own));
            if home.starts_with(&path) || (path.starts_with(&home) && !inside_own) {
                return Err(refuse(format!(
                    "its manifest asks to read {}, which is or holds the lion home {} (or /): a \
                     server may not see the log it is recorded in",
                    path.display(),
                    home.display()
                )));
            }
        }
        for d in &grant.dirs {
            let overlaps = d.path.starts_with(&server.root) || server.root.starts_with(&d.path);
            if d.mode == crate::plugin::manifest::DirAccess::ReadWrite && overlaps {
                return Err(refuse(format!(
                    "directory {} is granted read-write and overlaps the server's own files in {}: \
                     a server may not rewrite the code it is started from",
                    d.path.display(),
                    server.root.display()
                )));
            }
        }
        Ok(())
    }
}

/// Checks what a server's grant may hold: directories seen at their own
/// paths, environment variables, and hosts each with a port (a name, or a
/// loopback IPv4 address: see [`ServerHost::parse`]), at most
/// [`MAX_SERVER_HOSTS`]; not host interfaces (a server does not import
/// lion's).
pub(super) fn check_server_grant(name: &str, grant: &Grant) -> Result<(), PluginError> {
    let refuse = |reason: String| PluginError::GrantRefused {
        name: name.to_owned(),
        reason,
    };
    for host in &grant.hosts {
        ServerHost::parse(host).map_err(refuse)?;
    }
    if grant.hosts.len() > MAX_SERVER_HOSTS {
        return Err(refuse(format!(
            "{} hosts granted: a server plugin may be granted at most {MAX_SERVER_HOSTS}",
            grant.hosts.len()
        )));
    }
    if !grant.interfaces.is_empty() {
        return Err(refuse(
            "a server plugin imports no lion host interface: grant directories, hosts and env \
             only"
                .to_owned(),
        ));
    }
    check_dirs_seen_in_place(name, grant)
}

/// Checks that each granted directory is seen by the server at its own
/// path: a server runs on the host's filesystem (what it may reach is cut
/// down by the OS, not remapped), so `dir:GUEST=HOST` must have GUEST and
/// HOST the same.
fn check_dirs_seen_in_place(name: &str, grant: &Grant) -> Result<(), PluginError> {
    for d in &grant.dirs {
        if d.path != std::path::Path::new(&d.guest) {
            return Err(PluginError::GrantRefused {
                name: name.to_owned(),
                reason: format!(
                    "a server sees a granted directory at its own path: directory {} is {} on \
                     this machine; ask for it as {1} in the manifest",
                    d.guest,
                    d.path.display()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::manifest::{DirAccess, DirPermission, HostInterface};

    fn hosts(hosts: &[&str]) -> Grant {
        Grant {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            ..Grant::default()
        }
    }

    fn refused(grant: &Grant) -> String {
        match check_server_grant("s", grant) {
            Err(PluginError::GrantRefused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_server_may_be_granted_names_and_loopback_addresses_with_ports() {
        check_server_grant("s", &hosts(&["api.example.com:443", "127.0.0.1:8080"])).unwrap();
        check_server_grant("s", &Grant::default()).unwrap();
    }

    #[test]
    fn a_server_host_grant_without_a_port_or_off_loopback_is_refused() {
        assert!(refused(&hosts(&["example.com"])).contains("needs a port"));
        assert!(refused(&hosts(&["[::1]:80"])).contains("IPv6"));
        assert!(refused(&hosts(&["10.1.2.3:5432"])).contains("loopback"));
        let many: Vec<String> = (0..=MAX_SERVER_HOSTS)
            .map(|i| format!("h{i}.test:1"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(refused(&hosts(&many)).contains("at most"));
    }

    #[test]
    fn a_server_imports_no_interface_and_sees_directories_in_place() {
        let grant = Grant {
            interfaces: vec![HostInterface::Http],
            ..Grant::default()
        };
        assert!(refused(&grant).contains("interface"));
        let grant = Grant {
            dirs: vec![DirPermission {
                path: "/data/x".into(),
                guest: "/x".into(),
                mode: DirAccess::ReadOnly,
            }],
            ..Grant::default()
        };
        assert!(refused(&grant).contains("own path"));
    }
}
