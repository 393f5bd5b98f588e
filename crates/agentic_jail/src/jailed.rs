//! Starting a jailed program ([`spawn`]), the running process ([`Jailed`])
//! and how it ended ([`ExitReport`]).
//!
//! The clone happens on one long-lived thread of this crate ("spawner"):
//! `PR_SET_PDEATHSIG` fires when the *thread* that made the child exits, so
//! cloning from a short-lived thread (e.g. tokio's blocking pool) would kill
//! the jail when that thread retires. The spawner lives as long as lion.

use std::fmt;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::cgroup::{Cgroups, Counters};
use crate::child::{self, Limit, Plan, Step};
use crate::policy::{self, Filters};
use crate::rules::{self, RulesError};
use crate::spec::JailSpec;
use crate::support::{Missing, support_once};

/// Why a jailed program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The OS lacks something a jail needs; nothing was started.
    #[error("{0}")]
    Unsupported(#[from] Missing),
    /// The spec is not usable (one line naming the problem).
    #[error("invalid jail spec: {0}")]
    InvalidSpec(String),
    /// The Landlock ruleset could not be built.
    #[error(transparent)]
    Landlock(#[from] RulesError),
    /// The seccomp policy does not compile.
    #[error("seccomp policy: {0}")]
    Policy(String),
    /// lion runs as root and no pids cgroup could be made: `RLIMIT_NPROC`
    /// does not bind root (measured: not even inside the jail's user
    /// namespace, where root stays uid 0 of the host), so a fork bomb could
    /// not be contained. Nothing was started.
    #[error(
        "refusing to run the program: lion runs as root and no pids cgroup could be made under \
         /sys/fs/cgroup/pids/lion, and RLIMIT_NPROC does not limit root"
    )]
    NoProcessLimit,
    /// A step of the jail's setup failed in the child; nothing ran.
    #[error("jail setup failed while {step}: {source}")]
    Setup {
        /// What the failed step was doing.
        step: &'static str,
        /// The errno it got.
        source: std::io::Error,
    },
    /// The program could not be executed (missing, not executable, or not
    /// beneath a read-only grant).
    #[error("cannot execute {program}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// The errno `execve` got.
        source: std::io::Error,
    },
    /// Preparing the process in lion failed.
    #[error("starting the jailed program failed: {0}")]
    Start(#[from] std::io::Error),
}

/// Why the jailed program died, when it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitCause {
    /// lion killed it ([`Jailed::kill`], a timeout, an unload, a drop).
    Killed,
    /// Seccomp killed it for a forbidden system call (`SIGSYS`).
    Seccomp,
    /// The memory cgroup's OOM killer killed it.
    MemoryLimit,
    /// It used up its CPU seconds (`SIGXCPU`, or the hard limit's `SIGKILL`).
    CpuLimit,
    /// It wrote past its file size limit (`SIGXFSZ`).
    FileSizeLimit,
    /// It failed after forks were refused at its process limit.
    ProcessLimit,
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Killed => "killed by lion",
            Self::Seccomp => "killed by seccomp for a forbidden system call",
            Self::MemoryLimit => "killed at its memory limit",
            Self::CpuLimit => "killed at its CPU time limit",
            Self::FileSizeLimit => "killed at its file size limit",
            Self::ProcessLimit => "failed at its process limit",
        })
    }
}

/// How a jailed program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitReport {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Why, when known.
    pub cause: Option<ExitCause>,
    /// The memory cgroup's limit was hit at least once (allocations failed
    /// or reclaim ran), even if the program survived. Always false without
    /// a memory cgroup (then the limit is `RLIMIT_AS`: allocations fail with
    /// `ENOMEM` and the program decides what to do).
    pub memory_limit_hit: bool,
    /// Forks were refused at `pids.max`. Always false without a pids cgroup
    /// (`RLIMIT_NPROC` refusals are not counted anywhere lion can read).
    pub process_limit_hit: bool,
}

impl ExitReport {
    fn new(status: std::process::ExitStatus, killed: bool, c: Counters) -> Self {
        let code = status.code();
        let signal = status.signal();
        let cause = if killed && signal == Some(libc::SIGKILL) {
            Some(ExitCause::Killed)
        } else {
            match signal {
                Some(libc::SIGSYS) => Some(ExitCause::Seccomp),
                Some(libc::SIGXCPU) => Some(ExitCause::CpuLimit),
                Some(libc::SIGXFSZ) => Some(ExitCause::FileSizeLimit),
                Some(libc::SIGKILL) if c.oom_kills > 0 => Some(ExitCause::MemoryLimit),
                _ if code != Some(0) && c.pids_max_hits > 0 => Some(ExitCause::ProcessLimit),
                _ => None,
            }
        };
        Self {
            code,
            signal,
            cause,
            memory_limit_hit: c.memory_failcnt > 0 || c.oom_kills > 0,
            process_limit_hit: c.pids_max_hits > 0,
        }
    }
}

impl fmt::Display for ExitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}")?,
            (None, Some(sig)) => write!(f, "ended by signal {sig}")?,
            (None, None) => f.write_str("ended")?,
        }
        if let Some(cause) = self.cause {
            write!(f, " ({cause})")?;
        }
        Ok(())
    }
}

/// The program's standard input, as lion writes it.
pub type JailStdin = pipe::Sender;
/// The program's standard output or error, as lion reads it.
pub type JailOutput = pipe::Receiver;

/// A running jailed program. Dropping it kills the jail, but only
/// [`Jailed::wait`] removes its cgroups (they need the processes gone): a
/// jail dropped unwaited leaves them until this lion exits and the next
/// lion's first jail sweeps them. Kill, then wait.
#[derive(Debug)]
pub struct Jailed {
    /// The program's standard input (with [`crate::JailStdio::Piped`]).
    pub stdin: Option<JailStdin>,
    /// The program's standard output (with [`crate::JailStdio::Piped`]).
    pub stdout: Option<JailOutput>,
    /// The program's standard error (with [`crate::JailStdio::Piped`]).
    pub stderr: Option<JailOutput>,
    /// lion's listeners inside the jail's network namespace, in the order of
    /// [`JailSpec::listeners`]: accept on them to forward a granted
    /// `host:PORT` (they are blocking; `set_nonblocking` for async use).
    pub listeners: Vec<std::net::TcpListener>,
    pid: u32,
    /// Pid 1's pidfd, until it is reaped.
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// How it ended, once reaped.
    ended: Option<child::Exited>,
    /// Its CPU limit: a `SIGKILL` after this much CPU is the hard limit's.
    cpu_seconds: u64,
    cgroups: Cgroups,
    killed: bool,
}

impl Jailed {
    /// The host pid of the program (pid 1 of its own namespace). `None`
    /// once it has been reaped.
    pub fn id(&self) -> Option<u32> {
        self.pidfd.as_ref().map(|_| self.pid)
    }

    /// Kills the jail: pid 1 gets `SIGKILL`, and the kernel kills everything
    /// else in its pid namespace.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.killed = true;
        match &self.pidfd {
            Some(fd) => child::signal(fd.get_ref(), libc::SIGKILL),
            None => Ok(()),
        }
    }

    /// Waits for the jail to end, reads why, and removes its cgroups.
    pub async fn wait(&mut self) -> Result<ExitReport, JailError> {
        if let Some(fd) = &self.pidfd {
            let exited = reap(fd).await?;
            self.pidfd = None;
            self.ended = Some(exited);
        }
        let Some(exited) = &self.ended else {
            return Err(JailError::Start(std::io::Error::other(
                "the jail ended unobserved",
            )));
        };
        let mut status = exited.status;
        if libc::WIFSIGNALED(status)
            && libc::WTERMSIG(status) == libc::SIGKILL
            && exited.cpu_seconds >= self.cpu_seconds
        {
            // The hard RLIMIT_CPU kill (pid 1 ignores the soft SIGXCPU).
            status = libc::SIGXCPU;
        }
        let counters = self.cgroups.counters();
        self.cgroups.remove();
        Ok(ExitReport::new(
            std::process::ExitStatus::from_raw(status),
            self.killed,
            counters,
        ))
    }
}

impl Drop for Jailed {
    /// Kills a jail still running and reaps it (on a task of the runtime
    /// when there is one, else here: it dies at once).
    fn drop(&mut self) {
        let Some(fd) = self.pidfd.take() else {
            return;
        };
        let _ = child::signal(fd.get_ref(), libc::SIGKILL);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = reap(&fd).await;
                });
            }
            Err(_) => {
                let _ = child::wait_exited(fd.get_ref(), 0);
            }
        }
    }
}

/// Waits for the process of `pidfd` to exit (its pidfd turns readable) and
/// reaps it.
async fn reap(pidfd: &AsyncFd<OwnedFd>) -> std::io::Result<child::Exited> {
    loop {
        let mut ready = pidfd.readable().await?;
        match child::wait_exited(pidfd.get_ref(), libc::WNOHANG)? {
            Some(exited) => return Ok(exited),
            None => ready.clear_ready(),
        }
    }
}

/// How far below the soft CPU limit the hard one is: the soft limit sends
/// `SIGXCPU` (which a program may catch, and which pid 1 of a namespace
/// ignores), the hard one `SIGKILL` one second later.
const CPU_HARD_MARGIN_SECONDS: u64 = 1;

type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread's queue (see the module docs).
fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("lion-jail-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("the jail spawner thread starts");
        Mutex::new(tx)
    })
}

fn cached_filters() -> Result<Filters, JailError> {
    static FILTERS: OnceLock<Result<Filters, String>> = OnceLock::new();
    FILTERS
        .get_or_init(policy::compile)
        .clone()
        .map_err(JailError::Policy)
}

fn beneath_any(path: &Path, roots: &[&Path]) -> bool {
    roots.iter().any(|r| path.starts_with(r))
}

fn validate(spec: &JailSpec) -> Result<(), JailError> {
    let bad = |m: String| Err(JailError::InvalidSpec(m));
    if !spec.program.is_absolute() {
        return bad(format!(
            "program {} is not an absolute path",
            spec.program.display()
        ));
    }
    if !spec.cwd.is_absolute() {
        return bad(format!(
            "cwd {} is not an absolute path",
            spec.cwd.display()
        ));
    }
    for p in spec.read_only.iter().chain(&spec.read_write) {
        if !p.is_absolute() {
            return bad(format!("granted path {} is not absolute", p.display()));
        }
    }
    for (source, target) in &spec.file_mounts {
        if !source.is_absolute() || !source.is_file() {
            return bad(format!(
                "mounted file {} is not an absolute path to a file",
                source.display()
            ));
        }
        if !target.is_absolute() || !target.is_file() {
            return bad(format!(
                "mount target {} is not an absolute path to an existing file",
                target.display()
            ));
        }
    }
    for addr in &spec.listeners {
        if !addr.ip().is_loopback() || addr.port() == 0 {
            return bad(format!(
                "listener {addr} is not a loopback address with a port"
            ));
        }
    }
    if !spec.private_tmp.is_absolute() || !spec.private_tmp.is_dir() {
        return bad(format!(
            "private tmp {} is not an absolute path to a directory",
            spec.private_tmp.display()
        ));
    }
    let mut granted: Vec<&Path> = spec.read_only.iter().map(|p| p.as_path()).collect();
    granted.extend(spec.read_write.iter().map(|p| p.as_path()));
    granted.push(Path::new("/tmp"));
    if !beneath_any(&spec.cwd, &granted) {
        return bad(format!(
            "cwd {} is not beneath a granted path",
            spec.cwd.display()
        ));
    }
    if !beneath_any(&spec.program, &granted) {
        return bad(format!(
            "program {} is not beneath a granted path",
            spec.program.display()
        ));
    }
    let l = &spec.limits;
    if l.memory_bytes == 0
        || l.address_space_bytes == 0
        || l.processes == 0
        || l.cpu_seconds == 0
        || l.open_files == 0
        || l.file_size_bytes == 0
    {
        return bad("every limit must be above zero".into());
    }
    Ok(())
}

/// Starts `spec`'s program in a jail. Refuses (naming what is missing) when
/// the OS cannot jail it; never starts it unsandboxed. Returns once the
/// program was exec'd (or failed to be). Does about a millisecond of
/// blocking work on the calling task (the first call also probes
/// [`support()`](fn@crate::support)), and the clone itself on the spawner thread.
pub async fn spawn(spec: &JailSpec) -> Result<Jailed, JailError> {
    let support = support_once()?;
    validate(spec)?;
    let filters = cached_filters()?;
    let limits = spec.limits;
    let cgroups = Cgroups::make(limits.memory_bytes, limits.processes);
    let (euid, egid) = child::effective_ids();
    if euid == 0 && cgroups.pids.is_none() {
        return Err(JailError::NoProcessLimit);
    }

    let mut rw: Vec<&Path> = spec.read_write.iter().map(|p| p.as_path()).collect();
    rw.push(&spec.private_tmp);
    let mut read_only = spec.read_only.clone();
    read_only.extend(spec.file_mounts.iter().map(|(source, _)| source.clone()));
    let ports: Vec<u16> = spec.listeners.iter().map(|a| a.port()).collect();
    let landlock = rules::build(support.landlock_abi, &read_only, &rw, &ports)?;
    let channel = if spec.listeners.is_empty() {
        None
    } else {
        Some(child::socketpair()?)
    };

    let mut rlimits = vec![
        Limit::new(libc::RLIMIT_CORE, 0, 0),
        Limit::new(
            libc::RLIMIT_CPU,
            limits.cpu_seconds,
            limits.cpu_seconds + CPU_HARD_MARGIN_SECONDS,
        ),
        Limit::new(libc::RLIMIT_NOFILE, limits.open_files, limits.open_files),
        Limit::new(
            libc::RLIMIT_FSIZE,
            limits.file_size_bytes,
            limits.file_size_bytes,
        ),
    ];
    if cgroups.memory.is_none() {
        rlimits.push(Limit::new(
            libc::RLIMIT_AS,
            limits.address_space_bytes,
            limits.address_space_bytes,
        ));
    }
    let nproc = Limit::new(libc::RLIMIT_NPROC, limits.processes, limits.processes);
    let (alive_read, alive_write) = child::pipe()?;
    let plan = Plan {
        cgroup_tasks: cgroups.tasks_files()?.into_iter().map(Into::into).collect(),
        limits: rlimits,
        nproc,
        uid_map: format!("0 {euid} 1").into_bytes(),
        gid_map: format!("0 {egid} 1").into_bytes(),
        private_tmp: child::c_path(&spec.private_tmp)?,
        cwd: child::c_path(&spec.cwd)?,
        landlock,
        filters,
        alive_read,
        alive_write,
        file_mounts: spec
            .file_mounts
            .iter()
            .map(|(source, target)| Ok((child::c_path(source)?, child::c_path(target)?)))
            .collect::<std::io::Result<_>>()?,
        writable: spec
            .read_write
            .iter()
            .map(|p| child::c_path(p))
            .collect::<std::io::Result<_>>()?,
        listeners: spec
            .listeners
            .iter()
            .copied()
            .map(child::sockaddr)
            .collect(),
        listener_channel: channel
            .as_ref()
            .map(|(_, theirs)| theirs.try_clone())
            .transpose()?,
    };
    // The child's end lives in the plan only: it closes with the plan.
    let channel = channel.map(|(ours, _)| ours);
    let exec = child::Exec::of(spec)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let started = child::start(&plan, &exec);
        // The plan's descriptors (ruleset, pipe ends, cgroup files) close here.
        drop(plan);
        if let Err(Ok(unwanted)) = tx.send(started) {
            // `spawn` was dropped meanwhile: nobody will wait for this jail.
            child::abandon(&unwanted.pidfd);
        }
    });
    let spawner_died = || JailError::Start(std::io::Error::other("the jail spawner thread died"));
    spawner()
        .lock()
        .map_err(|_| spawner_died())?
        .send(job)
        .map_err(|_| spawner_died())?;
    let started = rx.await.map_err(|_| spawner_died())?.map_err(|e| {
        match e.raw_os_error().map(Step::split) {
            Some((Some(step), errno)) => JailError::Setup {
                step: step.describe(),
                source: std::io::Error::from_raw_os_error(errno),
            },
            Some((None, _)) => JailError::Exec {
                program: spec.program.display().to_string(),
                source: e,
            },
            None => JailError::Start(e),
        }
    })?;
    let pidfd = child::watch(started.pidfd).map_err(|(pidfd, e)| {
        child::abandon(&pidfd);
        JailError::Start(e)
    })?;
    // From here a failure drops `jailed`, which kills and reaps the jail.
    let mut jailed = Jailed {
        listeners: Vec::new(),
        stdin: None,
        stdout: None,
        stderr: None,
        pid: started.pid as u32,
        pidfd: Some(pidfd),
        ended: None,
        cpu_seconds: limits.cpu_seconds,
        cgroups,
        killed: false,
    };
    if let Some([stdin, stdout, stderr]) = started.stdio {
        jailed.stdin = Some(pipe::Sender::from_owned_fd(stdin)?);
        jailed.stdout = Some(pipe::Receiver::from_owned_fd(stdout)?);
        jailed.stderr = Some(pipe::Receiver::from_owned_fd(stderr)?);
    }
    if let Some(ours) = &channel {
        jailed.listeners = child::receive_listeners(ours, spec.listeners.len())?;
    }
    Ok(jailed)
}
