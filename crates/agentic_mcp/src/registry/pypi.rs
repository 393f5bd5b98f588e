//! PyPI installs: a venv of the package's own, wheels only, every
//! distribution pinned by hash.
//!
//! 1. `python3 -m venv DEST/venv` (pip comes from the interpreter's bundled
//!    `ensurepip` wheel: no network, no pip upgrade).
//! 2. `pip install --dry-run --ignore-installed --only-binary=:all: --report`
//!    resolves the spec for that venv's interpreter without installing; every
//!    distribution of the report must be a wheel from an index with a SHA-256.
//! 3. `requirements.lock` gets one `name==version --hash=sha256:…` line per
//!    distribution; `pip install --require-hashes --no-deps --only-binary=:all:
//!    -r requirements.lock` installs exactly that (pip refuses any file whose
//!    hash differs).
//! 4. The server's console-script entry point (`mod:func` in the dist's
//!    `entry_points.txt`) becomes `DEST/venv/bin/python -I -B -c "import sys;
//!    from mod import func; sys.exit(func())"`: the venv's interpreter (so its
//!    site-packages are used) in isolated mode (no `PYTHON*` variables, no
//!    user site, no script dir on `sys.path`), writing no bytecode into the
//!    hashed tree.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{InstallError, InstalledPackage, PackageSpec, ToolEnv, io_error};

/// The lock file's name in the installed folder.
pub(super) const LOCK_FILE: &str = "requirements.lock";
/// pip's resolution report, kept beside the lock (it says for which
/// interpreter and platform the lock was resolved).
const REPORT_FILE: &str = "pip-report.json";
/// Prints, as JSON, what the server needs from the base interpreter.
const RUNTIME_QUERY: &str = "import json, os, sys, sysconfig\n\
p = sysconfig.get_paths()\n\
lib = sysconfig.get_config_var('LIBDIR') or ''\n\
so = sysconfig.get_config_var('LDLIBRARY') or ''\n\
shared = sysconfig.get_config_var('Py_ENABLE_SHARED')\n\
print(json.dumps({'exe': os.path.realpath(sys.executable), 'stdlib': p['stdlib'], \
'platstdlib': p['platstdlib'], 'purelib': p['purelib'], 'platlib': p['platlib'], \
'libpython': os.path.realpath(os.path.join(lib, so)) if shared and lib and so else None}))";

#[derive(serde::Deserialize)]
struct RuntimeInfo {
    exe: PathBuf,
    stdlib: PathBuf,
    platstdlib: PathBuf,
    purelib: PathBuf,
    platlib: PathBuf,
    libpython: Option<PathBuf>,
}

/// Installs `name==version` into `tmp/venv`. The returned paths are under
/// `dest` (where `tmp` is renamed to on success); the tree hash is filled in
/// by the caller.
pub(super) async fn install(
    spec: &PackageSpec,
    name: &str,
    version: &str,
    tmp: &Path,
    dest: &Path,
    env: &ToolEnv,
) -> Result<InstalledPackage, InstallError> {
    let python3 = env.which("python3").ok_or(InstallError::MissingRuntime {
        program: "python3",
        registry: "pypi:",
        needs: "Python 3 with its venv module",
    })?;
    let venv = tmp.join("venv");
    env.run(
        "python3 -m venv",
        &python3,
        &[OsStr::new("-m"), OsStr::new("venv"), venv.as_os_str()],
        tmp,
    )
    .await?;
    let py = venv.join("bin").join("python");
    let cache = env.cache("pip")?;
    let mut common: Vec<&OsStr> = [
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
        "--only-binary=:all:",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    if let Some(cache) = &cache {
        common.push(OsStr::new("--cache-dir"));
        common.push(cache.as_os_str());
    }

    // Resolve without installing.
    let report_path = tmp.join(REPORT_FILE);
    let wanted = format!("{name}=={version}");
    let mut args = common.clone();
    args.extend(["--dry-run", "--ignore-installed", "--quiet", "--report"].map(OsStr::new));
    args.push(report_path.as_os_str());
    args.push(OsStr::new(&wanted));
    env.run("pip resolve (--dry-run --report)", &py, &args, tmp)
        .await?;
    let report = std::fs::read(&report_path).map_err(io_error("reading", &report_path))?;
    let lock = lock_from_report(spec, name, version, &report)?;
    let lock_path = tmp.join(LOCK_FILE);
    std::fs::write(&lock_path, &lock).map_err(io_error("writing", &lock_path))?;

    // Install exactly the lock.
    let mut args = common;
    args.extend(["--require-hashes", "--no-deps", "--quiet", "-r"].map(OsStr::new));
    args.push(lock_path.as_os_str());
    env.run("pip install --require-hashes", &py, &args, tmp)
        .await?;

    let out = env
        .run(
            "python runtime query",
            &py,
            &[
                OsStr::new("-I"),
                OsStr::new("-c"),
                OsStr::new(RUNTIME_QUERY),
            ],
            tmp,
        )
        .await?;
    let info: RuntimeInfo = serde_json::from_slice(&out).map_err(|e| {
        package_error(
            spec,
            &format!("the venv's interpreter answered no runtime paths: {e}"),
        )
    })?;
    let (script, target) = console_script(spec, name, &info)?;
    let code = entry_code(spec, &script, &target)?;

    let dest_py = dest.join("venv").join("bin").join("python");
    let mut read_only = vec![dest.to_owned(), info.exe, info.stdlib.clone()];
    if info.platstdlib != info.stdlib {
        read_only.push(info.platstdlib);
    }
    read_only.extend(info.libpython);
    // The interpreter answered from the temporary folder: its paths inside
    // it are the destination's once the folder is renamed there.
    let read_only = read_only
        .into_iter()
        .map(|p| match p.strip_prefix(tmp) {
            Ok(rest) => dest.join(rest),
            Err(_) => p,
        })
        .collect();
    Ok(InstalledPackage {
        spec: spec.clone(),
        dir: dest.to_owned(),
        command: dest_py,
        args: vec!["-I".into(), "-B".into(), "-c".into(), code],
        read_only_paths: read_only,
        lock_file: dest.join(LOCK_FILE),
        tree_hash: String::new(),
    })
}

fn package_error(spec: &PackageSpec, why: &str) -> InstallError {
    InstallError::Package {
        spec: spec.to_string(),
        why: why.to_owned(),
    }
}

/// PEP 503 normalisation: lowercase, runs of `-_.` become one `-`.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The requirements lock from pip's `--report`: one hashed line per
/// distribution, sorted by name. Refuses anything that is not a wheel from an
/// index with a SHA-256, and a resolution that did not pick the asked version.
fn lock_from_report(
    spec: &PackageSpec,
    name: &str,
    version: &str,
    report: &[u8],
) -> Result<String, InstallError> {
    let report: serde_json::Value = serde_json::from_slice(report)
        .map_err(|e| package_error(spec, &format!("pip's report is not JSON: {e}")))?;
    let Some(items) = report.get("install").and_then(|v| v.as_array()) else {
        return Err(package_error(spec, "pip's report lists nothing to install"));
    };
    let mut lines = Vec::with_capacity(items.len());
    let mut found = false;
    for item in items {
        let meta = item.get("metadata");
        let dist = meta
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let ver = meta
            .and_then(|m| m.get("version"))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if dist.is_empty()
            || ver.is_empty()
            || !dist
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(package_error(
                spec,
                "pip's report has a distribution without a usable name or version",
            ));
        }
        if ver.contains(|c: char| c.is_whitespace() || c == '#' || c == ';') {
            return Err(package_error(
                spec,
                &format!("pip's report gives {dist} an unusable version {ver:?}"),
            ));
        }
        if item.get("is_direct").and_then(|v| v.as_bool()) == Some(true) {
            return Err(package_error(
                spec,
                &format!("{dist} comes from a direct URL, not the index"),
            ));
        }
        let info = item.get("download_info");
        let url = info
            .and_then(|d| d.get("url"))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if !url.ends_with(".whl") {
            return Err(package_error(
                spec,
                &format!("{dist} {ver} is not a wheel ({url})"),
            ));
        }
        let sha = info
            .and_then(|d| d.get("archive_info"))
            .and_then(|a| a.get("hashes"))
            .and_then(|h| h.get("sha256"))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(package_error(
                spec,
                &format!("the index gave no SHA-256 for {dist} {ver}"),
            ));
        }
        if normalize(dist) == normalize(name) {
            if ver != version {
                return Err(package_error(
                    spec,
                    &format!("pip resolved version {ver}, not {version}"),
                ));
            }
            found = true;
        }
        lines.push((
            normalize(dist),
            format!("{dist}=={ver} --hash=sha256:{}\n", sha.to_ascii_lowercase()),
        ));
    }
    if !found {
        return Err(package_error(
            spec,
            "pip's resolution does not include the package itself",
        ));
    }
    lines.sort();
    let mut lock =
        format!("# {spec}: resolved by pip --report, installed with --require-hashes --no-deps\n");
    for (_, line) in lines {
        lock.push_str(&line);
    }
    Ok(lock)
}

/// The package's console script: `(script name, "module:attr")`. The only
/// one, or the one named after the package.
fn console_script(
    spec: &PackageSpec,
    name: &str,
    info: &RuntimeInfo,
) -> Result<(String, String), InstallError> {
    let want = normalize(name).replace('-', "_");
    let mut dist_info = None;
    for dir in [&info.purelib, &info.platlib] {
        let entries = std::fs::read_dir(dir).map_err(io_error("reading", dir))?;
        for e in entries.flatten() {
            let file_name = e.file_name();
            let file_name = file_name.to_string_lossy();
            if let Some(stem) = file_name.strip_suffix(".dist-info")
                && let Some((dist, _)) = stem.rsplit_once('-')
                && normalize(dist).replace('-', "_") == want
            {
                dist_info = Some(e.path());
            }
        }
    }
    let Some(dist_info) = dist_info else {
        return Err(package_error(
            spec,
            "its .dist-info is not in the venv after install",
        ));
    };
    let ep_path = dist_info.join("entry_points.txt");
    let text = match std::fs::read_to_string(&ep_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_error("reading", &ep_path)(e)),
    };
    let scripts = parse_console_scripts(&text);
    match scripts.len() {
        0 => Err(package_error(
            spec,
            "it declares no console script: not a runnable server",
        )),
        1 => Ok(scripts.into_iter().next().unwrap_or_default()),
        _ => {
            let target = normalize(name);
            if let Some(s) = scripts.iter().find(|(k, _)| normalize(k) == target) {
                return Ok(s.clone());
            }
            let names: Vec<&str> = scripts.iter().map(|(k, _)| k.as_str()).collect();
            Err(package_error(
                spec,
                &format!(
                    "it has several console scripts ({}) and none is named {name}",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// `(name, value)` pairs of the `[console_scripts]` section.
fn parse_console_scripts(text: &str) -> Vec<(String, String)> {
    let mut in_section = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_section = line == "[console_scripts]";
            continue;
        }
        if in_section && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `-c` program for an entry point `module.sub:attr.sub`. Every part must
/// be a plain identifier: the value comes from the package and is pasted
/// into code, so anything else is refused rather than quoted.
fn entry_code(spec: &PackageSpec, script: &str, target: &str) -> Result<String, InstallError> {
    let bad = |why: &str| {
        package_error(
            spec,
            &format!("console script {script} = {target:?}: {why}"),
        )
    };
    if target.contains('[') {
        return Err(bad("entry points with extras are not supported"));
    }
    let Some((module, attr)) = target.split_once(':') else {
        return Err(bad("no :function part"));
    };
    let (module, attr) = (module.trim(), attr.trim());
    if !module.split('.').all(is_identifier) || !attr.split('.').all(is_identifier) {
        return Err(bad("not a plain module:function reference"));
    }
    let (first, rest) = attr.split_once('.').map_or((attr, ""), |(f, r)| (f, r));
    let mut code = format!("import sys; from {module} import {first}; sys.exit({first}");
    if !rest.is_empty() {
        let _ = write!(code, ".{rest}");
    }
    code.push_str("())");
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PackageSpec {
        PackageSpec::parse("pypi:mcp-server-time==2026.10.19").unwrap()
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("MCP_Server..Time"), "mcp-server-time");
        assert_eq!(normalize("mcp-server-time"), "mcp-server-time");
    }

    #[test]
    fn entry_code_imports_the_function() {
        assert_eq!(
            entry_code(&spec(), "s", "mcp_server_time:main").unwrap(),
            "import sys; from mcp_server_time import main; sys.exit(main())"
        );
        assert_eq!(
            entry_code(&spec(), "s", "a.b:C.run").unwrap(),
            "import sys; from a.b import C; sys.exit(C.run())"
        );
        for bad in [
            "os:system('x')",
            "a;b:c",
            "a:b [extra]",
            "nomodule",
            "a:__import__('os').x",
            "1a:b",
        ] {
            assert!(entry_code(&spec(), "s", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_console_scripts_only() {
        let t =
            "[console_scripts]\nmcp-server-time = mcp_server_time:main\n\n[gui_scripts]\ng = a:b\n";
        assert_eq!(
            parse_console_scripts(t),
            vec![(
                "mcp-server-time".to_owned(),
                "mcp_server_time:main".to_owned()
            )]
        );
    }

    fn item(name: &str, ver: &str, url: &str, sha: &str) -> serde_json::Value {
        serde_json::json!({"metadata": {"name": name, "version": ver}, "is_direct": false,
            "download_info": {"url": url, "archive_info": {"hashes": {"sha256": sha}}}})
    }

    #[test]
    fn lock_pins_every_distribution_by_hash() {
        let h = "a".repeat(64);
        let r = serde_json::json!({"install": [
            item("mcp-server-time", "2026.10.19", "https://x/mcp_server_time-2026.10.19-py3-none-any.whl", &h),
            item("anyio", "4.0.0", "https://x/anyio-4.0.0-py3-none-any.whl", &h),
        ]});
        let lock = lock_from_report(
            &spec(),
            "mcp-server-time",
            "2026.10.19",
            r.to_string().as_bytes(),
        )
        .unwrap();
        let lines: Vec<&str> = lock.lines().skip(1).collect();
        assert_eq!(
            lines,
            vec![
                format!("anyio==4.0.0 --hash=sha256:{h}"),
                format!("mcp-server-time==2026.10.19 --hash=sha256:{h}")
            ]
        );
    }

    #[test]
    fn lock_refuses_sdists_missing_hashes_and_other_versions() {
        let h = "b".repeat(64);
        let cases = [
            (
                item("mcp-server-time", "2026.10.19", "https://x/m.tar.gz", &h),
                "not a wheel",
            ),
            (
                item("mcp-server-time", "2026.10.19", "https://x/m.whl", ""),
                "no SHA-256",
            ),
            (
                item("mcp-server-time", "2026.10.20", "https://x/m.whl", &h),
                "resolved version",
            ),
            (
                item("other", "1.0", "https://x/o.whl", &h),
                "does not include",
            ),
        ];
        for (it, needle) in cases {
            let r = serde_json::json!({"install": [it]});
            let e = lock_from_report(
                &spec(),
                "mcp-server-time",
                "2026.10.19",
                r.to_string().as_bytes(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
