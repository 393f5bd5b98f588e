//! `lion plugin install npm:NAME@VERSION|pypi:NAME==VERSION`: a server
//! plugin installed from a registry, pinned, into the home (no package
//! scripts run; wheels only, with hashes), then started once in its
//! sandbox to list its tools — all under the grant the operator gives on
//! the command line, which is also all the plugin asks for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentic_core::plugin::{
    DirAccess, DirPermission, Grant, Limits, PluginManifest, ServerHost, ServerLimits,
    ServerProtocol, ServerSpec,
};
use agentic_core::{Durability, EventStore};
use agentic_mcp::registry::{self, InstallOptions, PackageSpec};
use anyhow::{Context, Result, anyhow, bail};

use super::Ctx;
use super::plugin::{manager, plugins_dir, print_installed};

/// Where server packages are installed in a home.
pub fn packages_dir(home: &Path) -> PathBuf {
    plugins_dir(home).join("packages")
}

/// Whether `source` names a registry package rather than a manifest file.
pub fn is_package(source: &str) -> bool {
    source.starts_with("npm:") || source.starts_with("pypi:")
}

/// Installs package `source` as plugin `name` (default: the package's name
/// without its scope), its server started with `args`, granted `flags`.
pub async fn install(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    source: &str,
    name: Option<&str>,
    flags: &[String],
    args: &[String],
) -> Result<()> {
    let spec = PackageSpec::parse(source)?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => default_name(&spec),
    };
    // The name becomes a folder of the home: checked before any file is touched.
    PluginManifest::check_name(&name)?;
    let grant = grant_from(flags)?;
    if store.plugin(&name).await?.is_some() {
        bail!("plugin {name} is already installed (remove it first, or pick --name)");
    }
    let packages = packages_dir(home);
    std::fs::create_dir_all(&packages)
        .with_context(|| format!("cannot create {}", packages.display()))?;
    let dest = packages.join(&name);
    if dest.exists() {
        // Left by an install that was interrupted after the package landed
        // but before the plugin was recorded: no plugin uses it.
        std::fs::remove_dir_all(&dest)
            .with_context(|| format!("cannot clear {}", dest.display()))?;
    }
    errln!("installing {spec} into {} …", dest.display());
    let package = registry::install(&spec, &dest, &InstallOptions::default()).await?;
    let mut server_args = package.args.clone();
    server_args.extend(args.iter().cloned());
    let manifest = PluginManifest {
        name: name.clone(),
        version: spec.version().to_owned(),
        description: format!("MCP server {spec}"),
        component: None,
        server: Some(ServerSpec {
            command: package.command.clone(),
            args: server_args,
            protocol: ServerProtocol::McpStdio,
            root: package.dir.clone(),
            read_only: package.read_only_paths.clone(),
            limits: ServerLimits::default(),
            tree_sha256: None,
            package: Some(spec.to_string()),
        }),
        permissions: grant.clone(),
        limits: Limits::default(),
        functions: Default::default(),
        folder: None,
    };
    let manager = manager(home, store, ctx, Durability::Durable)?;
    let record = match manager.install(manifest, grant).await {
        Ok(record) => record,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e.into());
        }
    };
    print_installed(ctx, &record)
}

/// The plugin name a package gets: its name without an npm scope, in
/// lowercase, with anything but letters, digits, `-` and `_` made `-`.
fn default_name(spec: &PackageSpec) -> String {
    let name = spec.name().rsplit('/').next().unwrap_or(spec.name());
    let mut out: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '_') => c,
            _ => '-',
        })
        .take(64)
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert(0, 'p');
        out.truncate(64);
    }
    out
}

/// The grant of a package's server from `--grant` flags: `dir:PATH[:ro]`
/// (seen by the server at that path, symbolic links resolved), `env:NAME`,
/// `host:HOST:PORT`. A package has no manifest asking for anything, so
/// what the operator grants is what it asks for.
fn grant_from(flags: &[String]) -> Result<Grant> {
    let mut grant = Grant::default();
    for flag in flags {
        let Some((kind, value)) = flag.split_once(':') else {
            bail!("invalid grant {flag:?}: use dir:PATH[:ro], env:NAME or host:HOST:PORT");
        };
        match kind {
            "dir" => {
                let (path, mode) = match value.strip_suffix(":ro") {
                    Some(path) => (path, DirAccess::ReadOnly),
                    None => (value, DirAccess::ReadWrite),
                };
                let path = Path::new(path)
                    .canonicalize()
                    .with_context(|| format!("invalid grant {flag:?}: {path}"))?;
                grant.dirs.push(DirPermission {
                    guest: path.display().to_string(),
                    path,
                    mode,
                });
            }
            "env" if !value.is_empty() => grant.env.push(value.to_owned()),
            // A server's host grant (a port required; a name, or a loopback
            // address), checked before anything is downloaded.
            "host" => {
                ServerHost::parse(value).map_err(|e| anyhow!("invalid grant {flag:?}: {e}"))?;
                grant.hosts.push(value.to_owned());
            }
            _ => bail!("invalid grant {flag:?}: use dir:PATH[:ro], env:NAME or host:HOST:PORT"),
        }
    }
    Ok(grant)
}
