//! From a plugin's recorded server to a running, jailed MCP session: the
//! [`JailSpec`] lion builds from a [`ServerLaunch`] (what the server may
//! read, write, use and reach), and [`Running`], the jailed process with its
//! session, lion's forwarding of its granted hosts and the tail of its
//! stderr.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentic_core::plugin::{DirAccess, SandboxError, ServerLaunch};
use agentic_jail::{ExitReport, JailLimits, JailSpec, JailStdio, Jailed};
use tokio::io::AsyncReadExt;

use crate::forward::{CallIds, Forwarding, NetworkPlan};
use crate::session::{McpSession, SessionConfig};

/// Bytes of a server's stderr kept (its last ones) to quote when it fails:
/// enough for a stack trace, not a flood.
pub const STDERR_TAIL_BYTES: usize = 8 << 10;

/// System paths every server may read and execute: the dynamic loader's
/// libraries and cache, and the time zone data interpreters read. Nothing
/// here holds a user's data; everything else of the filesystem is invisible
/// unless the plugin's manifest or the operator's grant names it.
const SYSTEM_READ_ONLY: &[&str] = &[
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/usr/share/zoneinfo",
    // Certificate stores: Node reads them at start.
    "/etc/ssl",
];

/// The environment every server gets besides its granted variables: where
/// its home and temporary files are (its private `/tmp`), and a `PATH` of
/// the system's binary folders (which it can only run if granted).
const BASE_ENV: &[(&str, &str)] = &[
    ("HOME", "/tmp"),
    ("TMPDIR", "/tmp"),
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("LANG", "C.UTF-8"),
];

/// The jail a server plugin runs in: its command and arguments, its root
/// folder and runtime paths read-only, the granted directories (read-only
/// or read-write as granted), a private `/tmp` in `launch.scratch`, an
/// environment of [`BASE_ENV`] and the granted variables, and its limits.
/// Its network is off: [`NetworkPlan::apply`] adds the granted hosts.
pub fn jail_spec(launch: &ServerLaunch, tmp: &Path) -> JailSpec {
    let spec = &launch.spec;
    let mut read_only: Vec<PathBuf> = vec![spec.root.clone(), spec.command.clone()];
    read_only.extend(spec.read_only.iter().cloned());
    read_only.extend(
        SYSTEM_READ_ONLY
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists()),
    );
    let mut read_write = Vec::new();
    for dir in &launch.grant.dirs {
        match dir.mode {
            DirAccess::ReadOnly => read_only.push(dir.path.clone()),
            DirAccess::ReadWrite => read_write.push(dir.path.clone()),
        }
    }
    let mut env: Vec<(OsString, OsString)> = BASE_ENV
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    for (k, v) in &launch.env {
        env.retain(|(name, _)| name != k.as_str());
        env.push((k.into(), v.into()));
    }
    let limits = spec.limits;
    JailSpec {
        program: spec.command.clone(),
        args: spec.args.iter().map(OsString::from).collect(),
        env,
        cwd: spec.root.clone(),
        read_only,
        read_write,
        private_tmp: tmp.to_owned(),
        limits: JailLimits {
            memory_bytes: u64::from(limits.memory_mib) << 20,
            address_space_bytes: agentic_jail::spec::DEFAULT_ADDRESS_SPACE_BYTES,
            processes: u64::from(limits.processes),
            cpu_seconds: u64::from(limits.cpu_seconds),
            open_files: u64::from(limits.open_files),
            file_size_bytes: u64::from(limits.file_size_mib) << 20,
        },
        stdio: JailStdio::Piped,
        listeners: Vec::new(),
        file_mounts: Vec::new(),
    }
}

/// A jailed server with its MCP session.
pub struct Running {
    /// The session over the server's stdin and stdout.
    pub session: McpSession,
    /// The jailed process (dropping it kills the jail).
    jailed: tokio::sync::Mutex<Jailed>,
    /// lion's side of the server's granted hosts (dropping it ends every
    /// forward).
    forwarding: Forwarding,
    /// The last [`STDERR_TAIL_BYTES`] of its stderr.
    stderr: Arc<Mutex<VecDeque<u8>>>,
    /// Why lion stopped it while it served calls, if it did.
    stopped: Mutex<Option<String>>,
    /// Its private `/tmp`, deleted with it (declared after the jail:
    /// dropped after the jail is killed).
    _tmp: tempfile::TempDir,
    /// This start's hosts file and `nsswitch.conf` (when hosts are
    /// granted), deleted with it, after the jail too.
    _net: Option<tempfile::TempDir>,
}

impl Running {
    /// Starts `launch`'s server in its jail (a fresh private `/tmp` under
    /// `launch.scratch`), forwarding its granted hosts for as long as it
    /// runs, and connects, offering the granted directories as its roots.
    /// A refused forward is reported with the id of the one call in
    /// `calls`, if exactly one is under way.
    pub async fn start(launch: &ServerLaunch, calls: CallIds) -> Result<Self, SandboxError> {
        let tmp = fresh_tmp(&launch.scratch)?;
        let network = NetworkPlan::of(&launch.grant)?;
        let mut spec = jail_spec(launch, tmp.path());
        // The hosts file and nsswitch.conf of this start, in a directory of
        // its own (not the server's writable /tmp), deleted with it.
        let net = if network.is_empty() {
            None
        } else {
            let dir = fresh_dir(&launch.scratch, "net-")?;
            network.apply(&mut spec, dir.path())?;
            Some(dir)
        };
        let mut jailed = agentic_jail::spawn(&spec)
            .await
            .map_err(|e| SandboxError::Host(e.to_string()))?;
        let listeners = std::mem::take(&mut jailed.listeners);
        let forwarding = match Forwarding::start(
            &launch.grant,
            launch.denials.clone(),
            &network,
            listeners,
            calls,
        ) {
            Ok(forwarding) => forwarding,
            Err(e) => {
                let _ = jailed.kill();
                let _ = jailed.wait().await;
                return Err(e);
            }
        };
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            jailed.stdin.take(),
            jailed.stdout.take(),
            jailed.stderr.take(),
        ) else {
            return Err(SandboxError::Host("the jailed server has no pipes".into()));
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        tokio::spawn(keep_tail(stderr, tail.clone()));
        let config = SessionConfig {
            roots: launch.grant.dirs.iter().map(|d| d.path.clone()).collect(),
            initialize_deadline: Duration::from_millis(u64::from(
                launch.spec.limits.start_timeout_ms,
            )),
            ..SessionConfig::default()
        };
        let running = Self {
            session: match McpSession::connect(stdout, stdin, config).await {
                Ok(session) => session,
                Err(e) => {
                    let _ = jailed.kill();
                    let report = jailed.wait().await.ok();
                    return Err(SandboxError::Server(failed_start(
                        &e.to_string(),
                        report,
                        &tail,
                    )));
                }
            },
            jailed: tokio::sync::Mutex::new(jailed),
            forwarding,
            stderr: tail,
            stopped: Mutex::new(None),
            _tmp: tmp,
            _net: net,
        };
        Ok(running)
    }

    /// Notes why lion is about to stop the server (the first reason
    /// stays), for the other calls it serves.
    pub fn stopping_because(&self, why: &str) {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| why.to_owned());
    }

    /// Why lion stopped the server, if it did.
    pub fn stopped_because(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last bytes the server wrote to stderr, as text.
    pub fn stderr_tail(&self) -> String {
        tail_text(&self.stderr)
    }

    /// Kills the jail (everything in it), ends its forwards and says how
    /// it ended.
    pub async fn stop(&self) -> Option<ExitReport> {
        self.forwarding.stop();
        let mut jailed = self.jailed.lock().await;
        let _ = jailed.kill();
        jailed.wait().await.ok()
    }

    /// How the server ended, once it has: waits for the jail to be reaped
    /// (its session is gone, so it is exiting or has exited).
    pub async fn ended(&self) -> Option<ExitReport> {
        let mut jailed = self.jailed.lock().await;
        match tokio::time::timeout(REAP_GRACE, jailed.wait()).await {
            Ok(report) => report.ok(),
            Err(_) => {
                let _ = jailed.kill();
                jailed.wait().await.ok()
            }
        }
    }
}

/// How long a server whose session ended may take to exit before it is
/// killed: its stdout closed, so it is on its way out.
const REAP_GRACE: Duration = Duration::from_secs(2);

/// Why a server did not start, with how it ended and its stderr's tail.
fn failed_start(error: &str, report: Option<ExitReport>, tail: &Mutex<VecDeque<u8>>) -> String {
    let mut message = format!("the server did not start: {error}");
    if let Some(report) = report {
        message.push_str(&format!("; it {report}"));
    }
    let stderr = tail_text(tail);
    if !stderr.is_empty() {
        message.push_str(&format!("; its stderr ends: {stderr}"));
    }
    message
}

/// A new, empty private `/tmp` for one start of a server, under `scratch`:
/// its own directory, so a second start (another process's, or a restart
/// while the old one is still being stopped) never shares or wipes it. It
/// is deleted when the start's [`Running`] is dropped.
fn fresh_tmp(scratch: &Path) -> Result<tempfile::TempDir, SandboxError> {
    fresh_dir(scratch, "tmp-")
}

/// A new, empty directory under `scratch` for one start of a server (its
/// name starting with `prefix`), deleted when dropped.
fn fresh_dir(scratch: &Path, prefix: &str) -> Result<tempfile::TempDir, SandboxError> {
    let io = |e: std::io::Error| SandboxError::Host(format!("{}: {e}", scratch.display()));
    std::fs::create_dir_all(scratch).map_err(io)?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch)
        .map_err(io)
}

/// Reads `stderr` to its end, keeping its last [`STDERR_TAIL_BYTES`].
async fn keep_tail(mut stderr: tokio::process::ChildStderr, tail: Arc<Mutex<VecDeque<u8>>>) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.extend(&buf[..n]);
        let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
        tail.drain(..excess);
    }
}

/// The kept stderr as one line of text.
fn tail_text(tail: &Mutex<VecDeque<u8>>) -> String {
    let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
    let bytes: Vec<u8> = tail.iter().copied().collect();
    String::from_utf8_lossy(&bytes)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
