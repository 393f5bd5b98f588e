//! Installing real MCP servers from the real registries (npm, PyPI), pinned
//! and hashed, and refusing what must be refused.
//!
//! Downloads are cached under the target dir (`registry-cache/`) so a second
//! run does not fetch them again; each test installs into its own temp dir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use agentic_mcp::registry::{
    self, Change, InstallError, InstallOptions, MANIFEST_FILE, PACKAGE_FILE, PackageSpec, TreeError,
};
use tokio::io::AsyncWriteExt;

const FILESYSTEM: &str = "npm:@modelcontextprotocol/server-filesystem@2026.8.31";
const TIME: &str = "pypi:mcp-server-time==2026.10.19";
/// One MCP `initialize` request: both servers answer it and exit at EOF.
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"lion-registry-test","version":"0"}}}"#;

fn cached() -> InstallOptions {
    InstallOptions {
        cache_dir: Some(PathBuf::from(concat!(
            env!("CARGO_TARGET_TMPDIR"),
            "/registry-cache"
        ))),
        ..InstallOptions::default()
    }
}

fn spec(s: &str) -> PackageSpec {
    PackageSpec::parse(s).unwrap()
}

/// Entries of `dir` other than `keep`: what an install left behind.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs the installed command with `extra` args, sends `initialize`, closes
/// stdin and returns stdout (the servers exit at EOF).
async fn initialize(pkg: &registry::InstalledPackage, extra: &[&str]) -> String {
    let mut child = tokio::process::Command::new(&pkg.command)
        .args(&pkg.args)
        .args(extra)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{INITIALIZE}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn changed(dest: &Path, hash: &str) -> (String, Change) {
    match registry::verify(dest, hash) {
        Err(InstallError::Tree(TreeError::Changed { path, change, .. })) => (path, change),
        other => panic!("expected a changed tree, got {other:?}"),
    }
}

#[tokio::test]
async fn npm_server_filesystem_installs_pinned_runs_and_is_verified() {
    let home = tempfile::tempdir().unwrap();
    let dest = home.path().join("server-filesystem");
    let started = Instant::now();
    let pkg = registry::install(&spec(FILESYSTEM), &dest, &cached())
        .await
        .unwrap();
    eprintln!("npm install of {FILESYSTEM}: {:?}", started.elapsed());

    // The command is the real node binary and the package's bin script.
    assert_eq!(
        pkg.command,
        std::fs::canonicalize("/usr/bin/node").unwrap_or(pkg.command.clone())
    );
    assert_eq!(
        std::fs::canonicalize(&pkg.command).unwrap(),
        pkg.command,
        "node's path is resolved"
    );
    let entry = PathBuf::from(&pkg.args[0]);
    assert!(
        entry.starts_with(dest.join("node_modules/@modelcontextprotocol/server-filesystem")),
        "{entry:?}"
    );
    assert!(entry.is_file());
    assert!(pkg.read_only_paths.contains(&dest) && pkg.read_only_paths.contains(&pkg.command));
    // The lock records the exact version with its integrity hash; package.json the exact version.
    assert_eq!(pkg.lock_file, dest.join("package-lock.json"));
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pkg.lock_file).unwrap()).unwrap();
    let locked = &lock["packages"]["node_modules/@modelcontextprotocol/server-filesystem"];
    assert_eq!(locked["version"], "2026.8.31");
    assert!(locked["integrity"].as_str().unwrap().starts_with("sha512-"));
    // Every package in the tree is locked by version and integrity hash.
    let packages = lock["packages"].as_object().unwrap();
    assert!(packages.len() > 10, "{}", packages.len());
    for (path, p) in packages.iter().filter(|(path, _)| !path.is_empty()) {
        assert!(
            p["version"].is_string()
                && p["integrity"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("sha")),
            "{path}: {p}"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("package.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["dependencies"]["@modelcontextprotocol/server-filesystem"],
        "2026.8.31"
    );
    // Nothing but the destination is left in the parent.
    assert_eq!(leftovers(home.path()), vec!["server-filesystem".to_owned()]);

    // The entry really is an MCP server.
    let allowed = tempfile::tempdir().unwrap();
    let out = initialize(&pkg, &[allowed.path().to_str().unwrap()]).await;
    assert!(out.contains("\"serverInfo\""), "{out}");

    // The tree hash is stable, and running the server changed nothing in it.
    assert_eq!(
        registry::tree_hash(&dest, &[MANIFEST_FILE]).unwrap(),
        pkg.tree_hash
    );
    assert_eq!(
        registry::tree_hash(&dest, &[MANIFEST_FILE]).unwrap(),
        pkg.tree_hash
    );
    let started = Instant::now();
    assert_eq!(registry::verify(&dest, &pkg.tree_hash).unwrap(), pkg);
    eprintln!("verify of {FILESYSTEM}: {:?}", started.elapsed());

    // One changed byte, an added file, a removed file, a changed symlink: each named.
    let index = "node_modules/@modelcontextprotocol/server-filesystem/dist/index.js";
    let original = std::fs::read(dest.join(index)).unwrap();
    let mut evil = original.clone();
    evil[0] ^= 1;
    std::fs::write(dest.join(index), &evil).unwrap();
    assert_eq!(
        changed(&dest, &pkg.tree_hash),
        (index.to_owned(), Change::Contents)
    );
    std::fs::write(dest.join(index), &original).unwrap();
    registry::verify(&dest, &pkg.tree_hash).unwrap();

    std::fs::write(dest.join("node_modules/zz-injected.js"), b"x").unwrap();
    assert_eq!(
        changed(&dest, &pkg.tree_hash),
        ("node_modules/zz-injected.js".to_owned(), Change::Added)
    );
    std::fs::remove_file(dest.join("node_modules/zz-injected.js")).unwrap();

    let bin = dest.join("node_modules/.bin/mcp-server-filesystem");
    let target = std::fs::read_link(&bin).unwrap();
    std::fs::remove_file(&bin).unwrap();
    assert_eq!(
        changed(&dest, &pkg.tree_hash),
        (
            "node_modules/.bin/mcp-server-filesystem".to_owned(),
            Change::Removed
        )
    );
    std::os::unix::fs::symlink("/bin/sh", &bin).unwrap();
    assert_eq!(
        changed(&dest, &pkg.tree_hash),
        (
            "node_modules/.bin/mcp-server-filesystem".to_owned(),
            Change::SymlinkTarget
        )
    );
    std::fs::remove_file(&bin).unwrap();
    std::os::unix::fs::symlink(target, &bin).unwrap();
    registry::verify(&dest, &pkg.tree_hash).unwrap();

    // A hash other than the one recorded at install is refused before any walk.
    let e = registry::verify(&dest, &"0".repeat(64)).unwrap_err();
    assert!(matches!(e, InstallError::Record { .. }), "{e}");
    // So is a manifest edited to match a tampered tree.
    let manifest = dest.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replacen("\"exec\":false", "\"exec\":true", 1),
    )
    .unwrap();
    let e = registry::verify(&dest, &pkg.tree_hash).unwrap_err();
    assert!(
        e.to_string().contains("not the one recorded at install"),
        "{e}"
    );
    std::fs::write(&manifest, text).unwrap();

    // How to run it is part of the tree: a changed command is caught.
    let package_file = dest.join(PACKAGE_FILE);
    let text = std::fs::read_to_string(&package_file).unwrap();
    let node = pkg.command.to_str().unwrap();
    std::fs::write(&package_file, text.replace(node, "/bin/sh")).unwrap();
    assert_eq!(
        changed(&dest, &pkg.tree_hash),
        (PACKAGE_FILE.to_owned(), Change::Contents)
    );
    std::fs::write(&package_file, text).unwrap();
    registry::verify(&dest, &pkg.tree_hash).unwrap();

    // A moved install is refused (its paths point at the old place).
    let moved = home.path().join("moved");
    std::fs::rename(&dest, &moved).unwrap();
    let e = registry::verify(&moved, &pkg.tree_hash).unwrap_err();
    assert!(e.to_string().contains("reinstall after moving"), "{e}");
}

#[tokio::test]
async fn pypi_mcp_server_time_installs_hashed_wheels_into_its_own_venv() {
    let home = tempfile::tempdir().unwrap();
    let dest = home.path().join("time");
    let started = Instant::now();
    let pkg = registry::install(&spec(TIME), &dest, &cached())
        .await
        .unwrap();
    eprintln!("pip install of {TIME}: {:?}", started.elapsed());

    // The venv's interpreter (a symlink whose target is the real python), not a shim.
    assert_eq!(pkg.command, dest.join("venv/bin/python"));
    let real = std::fs::canonicalize(&pkg.command).unwrap();
    assert!(
        !real.starts_with(&dest),
        "the venv's python resolves outside it: {real:?}"
    );
    assert!(
        pkg.read_only_paths.contains(&real),
        "{:?}",
        pkg.read_only_paths
    );
    assert!(pkg.read_only_paths.contains(&dest));
    assert!(
        pkg.read_only_paths
            .iter()
            .any(|p| p.join("os.py").is_file()),
        "the stdlib dir: {:?}",
        pkg.read_only_paths
    );
    assert_eq!(
        pkg.args,
        [
            "-I",
            "-B",
            "-c",
            "import sys; from mcp_server_time import main; sys.exit(main())"
        ]
        .map(String::from)
    );

    // Every locked distribution is pinned by version and SHA-256, the server among them.
    assert_eq!(pkg.lock_file, dest.join("requirements.lock"));
    let lock = std::fs::read_to_string(&pkg.lock_file).unwrap();
    let lines: Vec<&str> = lock.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(lines.len() > 5, "{lock}");
    for l in &lines {
        let (req, hash) = l
            .split_once(" --hash=sha256:")
            .unwrap_or_else(|| panic!("unhashed: {l}"));
        assert!(req.contains("=="), "{l}");
        assert_eq!(hash.len(), 64, "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("mcp-server-time==2026.10.19 ")),
        "{lock}"
    );
    assert_eq!(leftovers(home.path()), vec!["time".to_owned()]);

    // The entry point runs: `--help` (argparse) and an MCP initialize.
    let help = tokio::process::Command::new(&pkg.command)
        .args(&pkg.args)
        .arg("--help")
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(help.status.success(), "{help:?}");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--local-timezone"),
        "{help:?}"
    );
    let out = initialize(&pkg, &[]).await;
    assert!(out.contains("\"mcp-time\""), "{out}");

    // Stable hash; running it wrote nothing into the tree (-B: no bytecode).
    assert_eq!(
        registry::tree_hash(&dest, &[MANIFEST_FILE]).unwrap(),
        pkg.tree_hash
    );
    let started = Instant::now();
    assert_eq!(registry::verify(&dest, &pkg.tree_hash).unwrap(), pkg);
    eprintln!("verify of {TIME}: {:?}", started.elapsed());

    // Tampering with the server's code is caught and named.
    let site = std::fs::read_dir(dest.join("venv/lib"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("site-packages");
    let server = site.join("mcp_server_time/server.py");
    let rel = server
        .strip_prefix(&dest)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&server)
        .unwrap();
    std::io::Write::write_all(&mut f, b"\nimport os\n").unwrap();
    assert_eq!(changed(&dest, &pkg.tree_hash), (rel, Change::Contents));
}

#[tokio::test]
async fn a_missing_runtime_is_named_and_nothing_is_written() {
    let home = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let opts = |path: &Path| InstallOptions {
        path: Some(path.as_os_str().to_owned()),
        ..cached()
    };

    let e = registry::install(
        &spec(FILESYSTEM),
        &home.path().join("fs"),
        &opts(bin.path()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, InstallError::MissingRuntime { program: "npm", .. }),
        "{e}"
    );
    assert!(e.to_string().starts_with("`npm` is not on PATH"), "{e}");
    let e = registry::install(&spec(TIME), &home.path().join("time"), &opts(bin.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            InstallError::MissingRuntime {
                program: "python3",
                ..
            }
        ),
        "{e}"
    );

    // npm present but node missing: node is named.
    let npm = which("npm");
    std::os::unix::fs::symlink(&npm, bin.path().join("npm")).unwrap();
    let e = registry::install(
        &spec(FILESYSTEM),
        &home.path().join("fs"),
        &opts(bin.path()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            InstallError::MissingRuntime {
                program: "node",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        leftovers(home.path()).is_empty(),
        "{:?}",
        leftovers(home.path())
    );
}

fn which(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on this machine's PATH"))
}

#[tokio::test]
async fn a_failing_npm_install_reports_npm_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let dest = home.path().join("fs");
    let e = registry::install(
        &spec("npm:@modelcontextprotocol/server-filesystem@0.0.0"),
        &dest,
        &cached(),
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            InstallError::Tool {
                step: "npm install",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("ETARGET") || msg.contains("No matching version"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        leftovers(home.path()).is_empty(),
        "{:?}",
        leftovers(home.path())
    );
}

#[tokio::test]
async fn a_failing_pip_resolution_reports_pip_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let dest = home.path().join("time");
    let e = registry::install(&spec("pypi:mcp-server-time==0.0.0"), &dest, &cached())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            InstallError::Tool {
                step: "pip resolve (--dry-run --report)",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("No matching distribution"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        leftovers(home.path()).is_empty(),
        "{:?}",
        leftovers(home.path())
    );
}

#[tokio::test]
async fn an_existing_destination_is_never_overwritten() {
    let home = tempfile::tempdir().unwrap();
    let dest = home.path().join("fs");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep.txt"), b"mine").unwrap();
    let e = registry::install(&spec(FILESYSTEM), &dest, &cached())
        .await
        .unwrap_err();
    assert!(matches!(e, InstallError::DestExists(_)), "{e}");
    assert_eq!(std::fs::read(dest.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(leftovers(&dest), vec!["keep.txt".to_owned()]);
    assert_eq!(leftovers(home.path()), vec!["fs".to_owned()]);
}
