//! npm installs: `npm install --ignore-scripts` into the folder as a prefix,
//! the lock recorded, the server's entry found from the package's `bin`.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use super::{InstallError, InstalledPackage, PackageSpec, ToolEnv, io_error};

/// Installs `name@version` with `tmp` as npm's prefix. The returned paths are
/// under `dest` (where `tmp` is renamed to on success); the tree hash is
/// filled in by the caller.
pub(super) async fn install(
    spec: &PackageSpec,
    name: &str,
    version: &str,
    tmp: &Path,
    dest: &Path,
    env: &ToolEnv,
) -> Result<InstalledPackage, InstallError> {
    let npm = env.which("npm").ok_or(InstallError::MissingRuntime {
        program: "npm",
        registry: "npm:",
        needs: "Node.js (node and npm)",
    })?;
    let node = env.which("node").ok_or(InstallError::MissingRuntime {
        program: "node",
        registry: "npm:",
        needs: "Node.js (node and npm)",
    })?;
    let node = std::fs::canonicalize(&node).map_err(io_error("resolving", &node))?;
    let wanted = format!("{name}@{version}");
    let mut args: Vec<&OsStr> = [
        "install",
        // No preinstall/install/postinstall/prepare script of any package runs.
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
        "--omit=dev",
        // package.json records the exact version, not ^version.
        "--save-exact",
        // A global or user .npmrc must not turn packages into links to folders.
        "--install-links=true",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    args.push(OsStr::new("--prefix"));
    args.push(tmp.as_os_str());
    let cache = env.cache("npm")?;
    if let Some(cache) = &cache {
        args.push(OsStr::new("--cache"));
        args.push(cache.as_os_str());
    }
    args.push(OsStr::new(&wanted));
    env.run("npm install", &npm, &args, tmp).await?;

    let lock_file = tmp.join("package-lock.json");
    if !lock_file.is_file() {
        return Err(package_error(spec, "npm wrote no package-lock.json"));
    }
    let pkg_dir = tmp.join("node_modules").join(name);
    let manifest_path = pkg_dir.join("package.json");
    let text = std::fs::read(&manifest_path).map_err(io_error("reading", &manifest_path))?;
    let manifest: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| package_error(spec, &format!("its package.json is not JSON: {e}")))?;
    if manifest.get("version").and_then(|v| v.as_str()) != Some(version) {
        return Err(package_error(
            spec,
            "npm installed another version than the one asked for",
        ));
    }
    let entry = bin_entry(spec, name, &manifest)?;
    if !pkg_dir.join(&entry).is_file() {
        return Err(package_error(
            spec,
            &format!("its bin {} is not a file in the package", entry.display()),
        ));
    }
    let dest_pkg = dest.join("node_modules").join(name);
    Ok(InstalledPackage {
        spec: spec.clone(),
        dir: dest.to_owned(),
        command: node.clone(),
        args: vec![dest_pkg.join(&entry).to_string_lossy().into_owned()],
        read_only_paths: vec![dest.to_owned(), node],
        lock_file: dest.join("package-lock.json"),
        tree_hash: String::new(),
    })
}

fn package_error(spec: &PackageSpec, why: &str) -> InstallError {
    InstallError::Package {
        spec: spec.to_string(),
        why: why.to_owned(),
    }
}

/// The server's entry script from `bin`: the only one, or the one named after
/// the package (without its scope). The path must stay inside the package.
fn bin_entry(
    spec: &PackageSpec,
    name: &str,
    manifest: &serde_json::Value,
) -> Result<PathBuf, InstallError> {
    let bare = name.rsplit('/').next().unwrap_or(name);
    let rel = match manifest.get("bin") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(bins)) => {
            let mut all: Vec<(&String, &str)> = bins
                .iter()
                .filter_map(|(k, v)| Some((k, v.as_str()?)))
                .collect();
            if all.len() == 1 {
                all.remove(0).1.to_owned()
            } else if let Some((_, v)) = all.iter().find(|(k, _)| k.as_str() == bare) {
                (*v).to_owned()
            } else {
                let names: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
                return Err(package_error(
                    spec,
                    &format!(
                        "its package.json has several bins ({}) and none is named {bare}",
                        names.join(", ")
                    ),
                ));
            }
        }
        _ => {
            return Err(package_error(
                spec,
                "its package.json declares no bin: not a runnable server",
            ));
        }
    };
    let path = PathBuf::from(&rel);
    let inside = path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if rel.is_empty() || !inside {
        return Err(package_error(
            spec,
            &format!("its bin {rel:?} points outside the package"),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> PackageSpec {
        PackageSpec::parse("npm:@s/srv@1.0.0").unwrap()
    }

    #[test]
    fn picks_the_bin() {
        let b = |v| bin_entry(&spec(), "@s/srv", &v);
        assert_eq!(
            b(json!({"bin": "dist/index.js"})).unwrap(),
            PathBuf::from("dist/index.js")
        );
        assert_eq!(
            b(json!({"bin": {"mcp-srv": "./a.js"}})).unwrap(),
            PathBuf::from("./a.js")
        );
        assert_eq!(
            b(json!({"bin": {"x": "x.js", "srv": "s.js"}})).unwrap(),
            PathBuf::from("s.js")
        );
        let e = b(json!({"bin": {"x": "x.js", "y": "y.js"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("several bins (x, y)"), "{e}");
        assert!(
            b(json!({"main": "x.js"}))
                .unwrap_err()
                .to_string()
                .contains("no bin")
        );
        assert!(
            b(json!({"bin": "../../evil.js"}))
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        assert!(
            b(json!({"bin": "/usr/bin/env"}))
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
    }
}
