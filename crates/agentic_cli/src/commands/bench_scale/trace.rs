//! Following a child `lion` as its tracer: when it has executed `lion`,
//! when it has ended, and its peak resident set (`VmHWM`) read at its exit
//! stop. Every `unsafe` of `bench scale` is here.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

/// What following a traced child saw.
pub(super) struct Traced {
    /// When it had just executed `lion` (its first stop).
    pub(super) exec: Instant,
    /// When it had ended (reaped).
    pub(super) exited: Instant,
    /// Its peak resident set, in KiB, read as it exited.
    pub(super) peak_rss_kib: u64,
    /// How it ended.
    pub(super) status: ExitStatus,
}

// Why a tracer. The peak RSS of a child in `wait4`'s rusage is no use here:
// `ru_maxrss` keeps the largest resident set the process had under any
// image, and a child spawned with vfork (std's posix_spawn) or fork starts
// as this bench's image, which has built a million-event home — every child
// would report the bench's own peak. The child's `VmHWM` in
// `/proc/PID/status` is the peak of its `lion` image alone; it is read when
// the child stops at its exit (PTRACE_O_TRACEEXIT), before its memory is
// released. Tracing costs two stops per process (its exec and its exit).

/// Makes the child ask to be traced by its parent, so it stops right after
/// it executes `lion`.
#[allow(unsafe_code)]
pub(super) fn trace_me(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before `exec` and makes
    // one system call (async-signal-safe), touching no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            let traced = libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            );
            if traced == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Follows the traced child `pid` to its end, from the thread that spawned
/// it (its tracer): notes when it has executed `lion`, reads its peak RSS at
/// its exit stop (then calls `at_exit`), passes every signal on, and reaps it.
pub(super) fn follow(pid: u32, at_exit: impl FnOnce()) -> Result<Traced> {
    let pid = libc::pid_t::try_from(pid)?;
    let mut reaped = false;
    let traced = follow_stops(pid, at_exit, &mut reaped);
    if traced.is_err() && !reaped {
        // A child left stopped (or, before its options were set, running
        // untraced) must not outlive its measurement: a `lion run` would
        // keep holding the home's lease.
        let _ = signal(pid as u32, libc::SIGKILL);
        while let Ok(status) = wait_pid(pid) {
            if !libc::WIFSTOPPED(status) {
                break;
            }
            let _ = ptrace(libc::PTRACE_CONT, pid, 0);
        }
    }
    traced
}

/// [`follow`]'s loop; `reaped` says whether the child was reaped.
fn follow_stops(pid: libc::pid_t, at_exit: impl FnOnce(), reaped: &mut bool) -> Result<Traced> {
    let mut exec = None;
    let mut peak = None;
    let mut at_exit = Some(at_exit);
    loop {
        let status = wait_pid(pid)?;
        let now = Instant::now();
        if !libc::WIFSTOPPED(status) {
            *reaped = true;
            if let Some(f) = at_exit.take() {
                f();
            }
            let exec = exec.ok_or_else(|| anyhow!("lion ended before it ran"))?;
            let peak_rss_kib =
                peak.ok_or_else(|| anyhow!("lion ended without stopping at its exit"))?;
            return Ok(Traced {
                exec,
                exited: now,
                peak_rss_kib,
                status: ExitStatus::from_raw(status),
            });
        }
        let signal = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        let pass_on = if exec.is_none() && signal == libc::SIGTRAP {
            // The stop right after `exec`.
            exec = Some(now);
            ptrace(
                libc::PTRACE_SETOPTIONS,
                pid,
                libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL,
            )?;
            0
        } else if signal == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
            peak = Some(vm_hwm_kib(pid)?);
            if let Some(f) = at_exit.take() {
                f();
            }
            0
        } else {
            signal
        };
        ptrace(libc::PTRACE_CONT, pid, pass_on)?;
    }
}

/// `waitpid(pid)` for any state change, retried when interrupted.
#[allow(unsafe_code)]
fn wait_pid(pid: libc::pid_t) -> Result<libc::c_int> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is valid for writes for the whole call; `pid` is
        // this process's unreaped child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid {
            return Ok(status);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("cannot wait for lion");
        }
    }
}

/// One ptrace request with an integer `data` (options, a signal).
#[allow(unsafe_code)]
fn ptrace(request: libc::c_uint, pid: libc::pid_t, data: libc::c_int) -> Result<()> {
    // SAFETY: `pid` is this thread's stopped tracee; the requests used take
    // no pointer (`addr` is unused, `data` an integer passed by value).
    let r = unsafe {
        libc::ptrace(
            request,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            data as libc::c_long as *mut libc::c_void,
        )
    };
    if r == -1 {
        return Err(std::io::Error::last_os_error()).context("ptrace on lion failed");
    }
    Ok(())
}

/// The peak resident set (`VmHWM`, KiB) of process `pid`.
fn vm_hwm_kib(pid: libc::pid_t) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// Sends `signal` to the child `pid`.
#[allow(unsafe_code)]
pub(super) fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: `kill` only sends a signal. `pid` is a child of this process
    // that its tracer has not reaped yet (the callers stop sending once it
    // has exited), so the id names no other process.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot signal lion");
    }
    Ok(())
}
