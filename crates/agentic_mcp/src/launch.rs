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
            address_space_bytes: (u64::from(limits.memory_mib) << 20)
                .saturating_mul(ADDRESS_SPACE_PER_MEMORY),
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

/// Where lion cannot make a memory cgroup (not root), a server's address
/// space is limited instead, to this many times its `memory_mib`: runtimes
/// reserve far more address space than they touch (Node 20 does not start
/// under 768 MiB of it, nor with a worker thread under 2 GiB), so the
/// default 1024 MiB gives 4 GiB.
const ADDRESS_SPACE_PER_MEMORY: u64 = 4;

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
    /// The granted variables, whose values are redacted from the stderr
    /// lion quotes.
    env: Vec<(String, String)>,
    /// Why lion stopped it while it served calls, if it did.
    stopped: Mutex<Option<String>>,
    /// How it ended, once reaped (for every call that asks).
    reaped: Mutex<Option<ExitReport>>,
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
            let _ = jailed.kill();
            let _ = jailed.wait().await;
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
                        &tail_text(&tail, &launch.env),
                    )));
                }
            },
            jailed: tokio::sync::Mutex::new(jailed),
            forwarding,
            stderr: tail,
            env: launch.env.clone(),
            stopped: Mutex::new(None),
            reaped: Mutex::new(None),
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

    /// The last bytes the server wrote to stderr, as one line of text,
    /// granted variables' values redacted.
    pub fn stderr_tail(&self) -> String {
        tail_text(&self.stderr, &self.env)
    }

    /// `text` the server sent (an error message lion records) with the
    /// granted variables' values redacted, as in its stderr tail.
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.env)
    }

    /// Kills the jail (everything in it), ends its forwards and says how
    /// it ended.
    pub async fn stop(&self) -> Option<ExitReport> {
        self.forwarding.stop();
        let mut jailed = self.jailed.lock().await;
        if let Some(report) = self.reaped() {
            return Some(report);
        }
        let _ = jailed.kill();
        self.keep(jailed.wait().await.ok())
    }

    /// How the server ended, once it has: waits for the jail to be reaped
    /// (its session is gone, so it is exiting or has exited).
    /// Every call it was serving asks; the first waits, the others get
    /// the same report (its cgroups, read once, are gone after).
    pub async fn ended(&self) -> Option<ExitReport> {
        let mut jailed = self.jailed.lock().await;
        if let Some(report) = self.reaped() {
            return Some(report);
        }
        let report = match tokio::time::timeout(REAP_GRACE, jailed.wait()).await {
            Ok(report) => report.ok(),
            Err(_) => {
                let _ = jailed.kill();
                jailed.wait().await.ok()
            }
        };
        self.keep(report)
    }

    /// How the jail ended, once it was reaped.
    fn reaped(&self) -> Option<ExitReport> {
        *self.reaped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `report` for the next to ask, and returns it.
    fn keep(&self, report: Option<ExitReport>) -> Option<ExitReport> {
        if report.is_some() {
            *self.reaped.lock().unwrap_or_else(PoisonError::into_inner) = report;
        }
        report
    }
}

/// How long a server whose session ended may take to exit before it is
/// killed: its stdout closed, so it is on its way out.
const REAP_GRACE: Duration = Duration::from_secs(2);

/// Why a server did not start, with how it ended and its stderr's tail.
fn failed_start(error: &str, report: Option<ExitReport>, stderr: &str) -> String {
    let mut message = format!("the server did not start: {error}");
    if let Some(report) = report {
        message.push_str(&format!("; it {report}"));
    }
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
/// name starting with `prefix`), deleted when dropped. Its path is
/// absolute: the jail takes no relative one, and a home given as a
/// relative path (the default `.lion`) makes `scratch` relative.
fn fresh_dir(scratch: &Path, prefix: &str) -> Result<tempfile::TempDir, SandboxError> {
    let io = |e: std::io::Error| SandboxError::Host(format!("{}: {e}", scratch.display()));
    let scratch = std::path::absolute(scratch).map_err(io)?;
    std::fs::create_dir_all(&scratch).map_err(io)?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&scratch)
        .map_err(io)
}

/// Reads `stderr` to its end, keeping its last [`STDERR_TAIL_BYTES`].
async fn keep_tail(mut stderr: agentic_jail::JailOutput, tail: Arc<Mutex<VecDeque<u8>>>) {
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

/// Granted values shorter than this are not redacted from a server's
/// stderr: they are flags and counts (`1`, `true`, `debug`), and redacting
/// them would garble the text without protecting anything.
pub const MIN_REDACTED_BYTES: usize = 6;

/// The kept stderr as one line of text, with each granted variable's value
/// (of at least [`MIN_REDACTED_BYTES`]) replaced by `[NAME redacted]`: the
/// tail is recorded in the log, and a server's traceback may show a secret
/// it was given. A full tail (its start was likely cut) begins at its first
/// whole line, so no value is quoted by its end alone (unless the tail is
/// one line).
fn tail_text(tail: &Mutex<VecDeque<u8>>, env: &[(String, String)]) -> String {
    let mut bytes: Vec<u8> = {
        let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.iter().copied().collect()
    };
    if bytes.len() >= STDERR_TAIL_BYTES
        && let Some(newline) = bytes.iter().position(|b| *b == b'\n')
        && newline + 1 < bytes.len()
    {
        bytes.drain(..=newline);
    }
    let text = redact(&String::from_utf8_lossy(&bytes), env);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` with each granted variable's value (of at least
/// [`MIN_REDACTED_BYTES`]) replaced by `[NAME redacted]`.
fn redact(text: &str, env: &[(String, String)]) -> String {
    let mut text = text.to_owned();
    for (name, value) in env {
        if value.len() >= MIN_REDACTED_BYTES {
            text = text.replace(value.as_str(), &format!("[{name} redacted]"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(bytes: &[u8]) -> Mutex<VecDeque<u8>> {
        Mutex::new(bytes.iter().copied().collect())
    }

    #[test]
    fn granted_values_are_redacted_from_the_quoted_stderr() {
        let env = vec![
            ("API_KEY".to_owned(), "sk-123456789".to_owned()),
            ("DEBUG".to_owned(), "1".to_owned()),
        ];
        let text = tail_text(&tail(b"Traceback:\n  key=sk-123456789 level 1\n"), &env);
        assert_eq!(text, "Traceback: key=[API_KEY redacted] level 1");
    }

    #[test]
    fn a_full_tail_starts_at_its_first_whole_line() {
        let env = vec![("API_KEY".to_owned(), "sk-123456789".to_owned())];
        let mut bytes = b"456789 cut secret\n".to_vec();
        bytes.resize(STDERR_TAIL_BYTES - 5, b'x');
        bytes.extend(b"\nend\n");
        let text = tail_text(&tail(&bytes), &env);
        assert!(!text.contains("456789"), "{text}");
        assert!(text.ends_with("xxx end"), "{text}");
        // One long line is kept whole.
        let mut one = vec![b'E'; STDERR_TAIL_BYTES - 6];
        one.extend(b" last\n");
        assert!(tail_text(&tail(&one), &env).ends_with("E last"));
    }
}
