//! The tests' Python: a virtual environment with the real client packages
//! of `tests/python/requirements.txt` (the `openai` and `mcp` SDKs,
//! schemathesis), made once per target directory and remade when the
//! requirements change. A test that needs it fails — never skips — when
//! it cannot be made.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pinned packages.
const REQUIREMENTS: &str = include_str!("../python/requirements.txt");

/// The environment's `python`, made first if need be.
pub fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-clients");
    let venv = root.join("venv");
    let python = venv.join("bin/python");
    fs::create_dir_all(&root).expect("python dir");
    // One test binary at a time makes it; the others wait.
    let lock = File::create(root.join("lock")).expect("lock file");
    lock.lock().expect("lock");
    let stamp = root.join("installed.txt");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == REQUIREMENTS) && python.exists() {
        return python;
    }
    let _ = fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 (the tests need Python 3.10 or newer)");
    assert!(made.success(), "python3 -m venv failed");
    let requirements = root.join("requirements.txt");
    fs::write(&requirements, REQUIREMENTS).expect("requirements");
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .output()
        .expect("pip");
    assert!(
        installed.status.success(),
        "pip install failed: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    fs::write(&stamp, REQUIREMENTS).expect("stamp");
    python
}

/// A script of `tests/python`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Runs `tests/python/<script> ARGS…` with `envs`; its exit status,
/// stdout and stderr.
pub fn run_script(name: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(python())
        .arg(script(name))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run python");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
