//! `jail-run`: runs one program in a jail from the command line, with the
//! standard streams inherited, and prints the exit report as the last line of
//! standard error (`jail-run report: {json}`). Used by the tests to jail a
//! program as another user (`setpriv … jail-run …`), under a seccomp filter a
//! test applies (fail-closed), or to kill "lion" while a jail runs.
//!
//! ```text
//! jail-run --support
//! jail-run [--ro PATH]... [--rw PATH]... --tmp DIR [--cwd DIR] [--env K=V]...
//!          [--memory BYTES] [--address-space BYTES] [--processes N] [--cpu SECONDS]
//!          -- PROGRAM [ARG]...
//! ```
//! Exit status: the program's code, 128+signal when a signal ended it, 2 for
//! bad usage or a refusal (one line on standard error).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use agentic_jail::{JailLimits, JailSpec, JailStdio, spawn, support};

/// Prefix of the report line on standard error.
const REPORT_PREFIX: &str = "jail-run report: ";

fn usage(msg: &str) -> ExitCode {
    eprintln!("jail-run: {msg}");
    ExitCode::from(2)
}

fn number(value: Option<OsString>, flag: &str) -> Result<u64, String> {
    value
        .and_then(|v| v.into_string().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<JailSpec, String> {
    let mut spec = JailSpec {
        program: PathBuf::new(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: PathBuf::from("/tmp"),
        read_only: Vec::new(),
        read_write: Vec::new(),
        private_tmp: PathBuf::new(),
        listeners: Vec::new(),
        file_mounts: Vec::new(),
        limits: JailLimits::default(),
        stdio: JailStdio::Inherit,
    };
    let path = |v: Option<OsString>, flag: &str| {
        v.map(PathBuf::from)
            .ok_or_else(|| format!("{flag} needs a path"))
    };
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--ro") => spec.read_only.push(path(args.next(), "--ro")?),
            Some("--rw") => spec.read_write.push(path(args.next(), "--rw")?),
            Some("--tmp") => spec.private_tmp = path(args.next(), "--tmp")?,
            Some("--cwd") => spec.cwd = path(args.next(), "--cwd")?,
            Some("--env") => {
                let kv = args
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or("--env needs K=V")?;
                let (k, v) = kv.split_once('=').ok_or("--env needs K=V")?;
                spec.env.push((k.into(), v.into()));
            }
            Some("--memory") => spec.limits.memory_bytes = number(args.next(), "--memory")?,
            Some("--address-space") => {
                spec.limits.address_space_bytes = number(args.next(), "--address-space")?
            }
            Some("--processes") => spec.limits.processes = number(args.next(), "--processes")?,
            Some("--cpu") => spec.limits.cpu_seconds = number(args.next(), "--cpu")?,
            Some("--") => {
                spec.program = path(args.next(), "--")?;
                spec.args = args.collect();
                return Ok(spec);
            }
            _ => return Err(format!("unknown argument {}", arg.to_string_lossy())),
        }
    }
    Err("missing -- PROGRAM".into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().and_then(|a| a.to_str()) == Some("--support") {
        return match support() {
            Ok(s) => {
                println!("supported: Landlock ABI {}", s.landlock_abi);
                ExitCode::SUCCESS
            }
            Err(missing) => usage(&missing.to_string()),
        };
    }
    let spec = match parse(args) {
        Ok(spec) => spec,
        Err(e) => return usage(&e),
    };
    let mut jailed = match spawn(&spec).await {
        Ok(j) => j,
        Err(e) => return usage(&e.to_string()),
    };
    let report = match jailed.wait().await {
        Ok(r) => r,
        Err(e) => return usage(&e.to_string()),
    };
    eprintln!(
        "{REPORT_PREFIX}{}",
        serde_json::to_string(&report).unwrap_or_default()
    );
    match (report.code, report.signal) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig) as u8),
        _ => ExitCode::FAILURE,
    }
}
