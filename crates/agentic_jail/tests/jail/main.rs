//! The jail's abuse tests: each case runs a small `sh`/`python3` program in a
//! jail and asserts what it observed (the errno it got) or the exit report,
//! with a positive control beside it (the same action inside a grant, or
//! outside the jail, succeeds). Cases that must hold for an unprivileged
//! lion run the crate's `jail-run` binary under `setpriv` as `nobody`.

mod errors;
mod fail_closed;
mod filesystem;
mod lifecycle;
mod limits;
mod network;
mod syscalls;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use agentic_jail::{ExitReport, JailLimits, JailSpec, JailStdio, spawn};
use tokio::io::AsyncReadExt;

/// The Python interpreter the tests jail (Debian's, not a pyenv shim).
pub const PYTHON: &str = "/usr/bin/python3";
/// `jail-run`, built by cargo for these tests.
pub const JAIL_RUN: &str = env!("CARGO_BIN_EXE_jail-run");
/// Prefix of `jail-run`'s report line.
pub const REPORT_PREFIX: &str = "jail-run report: ";

/// Runtime paths granted read-only: the interpreters and system libraries,
/// and OpenSSL's configuration (Node reads it at start).
pub fn runtime_paths() -> Vec<PathBuf> {
    ["/usr", "/lib", "/lib64", "/bin", "/etc/ssl"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

/// A directory outside the host's `/tmp` (which the jail replaces), open to
/// every user so `nobody` can use it too.
pub fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("jail-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// A spec running `program args` with the runtime granted read-only and a
/// fresh private tmp inside `scratch`.
pub fn spec(scratch: &Path, program: &str, args: &[&str]) -> JailSpec {
    let private_tmp = scratch.join("private-tmp");
    std::fs::create_dir_all(&private_tmp).unwrap();
    std::fs::set_permissions(&private_tmp, std::fs::Permissions::from_mode(0o777)).unwrap();
    JailSpec {
        program: program.into(),
        args: args.iter().map(OsString::from).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/tmp".into(),
        read_only: runtime_paths(),
        read_write: Vec::new(),
        private_tmp,
        listeners: Vec::new(),
        file_mounts: Vec::new(),
        limits: JailLimits::default(),
        stdio: JailStdio::Piped,
    }
}

/// A spec running `python3 -c code`.
pub fn python(scratch: &Path, code: &str) -> JailSpec {
    spec(scratch, PYTHON, &["-c", code])
}

/// What a jailed run produced.
#[derive(Debug)]
pub struct Run {
    /// How it ended.
    pub report: ExitReport,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `spec` jailed to the end, collecting its output.
pub async fn run(spec: &JailSpec) -> Run {
    let mut jailed = spawn(spec).await.expect("jailed program starts");
    drop(jailed.stdin.take());
    let mut out = jailed.stdout.take().unwrap();
    let mut err = jailed.stderr.take().unwrap();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let (a, b) = tokio::join!(
        out.read_to_string(&mut stdout),
        err.read_to_string(&mut stderr)
    );
    a.unwrap();
    b.unwrap();
    let report = jailed.wait().await.unwrap();
    Run {
        report,
        stdout,
        stderr,
    }
}

/// Runs `python3 -c code` outside any jail (the positive controls).
pub fn plain_python(code: &str) -> String {
    let out = std::process::Command::new(PYTHON)
        .args(["-c", code])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "control failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What `jail-run` produced, run as `nobody` (uid/gid 65534).
#[derive(Debug)]
pub struct NobodyRun {
    /// The report, parsed from the last line of standard error.
    pub report: serde_json::Value,
    /// The program's standard output.
    pub stdout: String,
    /// Everything on standard error.
    pub stderr: String,
}

/// Runs `jail-run ARGS` as `nobody` through `setpriv`.
pub fn jail_run_as_nobody(args: &[&str]) -> NobodyRun {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            JAIL_RUN,
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(REPORT_PREFIX))
        .unwrap_or_else(|| panic!("no report from jail-run: {stderr}"));
    NobodyRun {
        report: serde_json::from_str(line).unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

/// `jail-run` arguments granting the runtime read-only and `tmp` as /tmp.
pub fn jail_run_args(tmp: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for p in runtime_paths() {
        args.push("--ro".to_owned());
        args.push(p.display().to_string());
    }
    args.push("--tmp".to_owned());
    args.push(tmp.display().to_string());
    args
}

/// Python that prints the errno of a raw system call (0 on success):
/// `nr` is the x86_64 syscall number, `args` its integer arguments.
pub fn syscall_code(nr: i64, args: &str) -> String {
    format!(
        "import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.syscall.restype = ctypes.c_long\n\
         rc = libc.syscall({nr}, {args})\n\
         print(ctypes.get_errno() if rc == -1 else 0, flush=True)\n"
    )
}
