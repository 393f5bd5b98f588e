//! What runs between `clone` and `exec` — the only module of this crate
//! with `unsafe`. Everything the child needs (strings, descriptors, compiled
//! BPF) is prepared in the parent as a [`Plan`] and an [`Exec`]; after the
//! clone only raw system calls run, no allocation, no locks
//! (async-signal-safe).
//!
//! The child is made by one `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD |`
//! the namespaces`)`, as `posix_spawn` makes its children: it borrows lion's
//! memory (on a stack of its own) until its `exec`, and the spawner thread
//! waits meanwhile. A `fork` would copy lion's page tables first and `exec`
//! would tear them down again: with lion's address space (tens of MiB
//! resident, a terabyte reserved by wasmtime's pooling allocator, a thousand
//! mappings) a fork and exec took 7.5 ms here where this takes 0.7 ms. Made
//! with `CLONE_NEWPID`, the child is pid 1 of its namespace itself, and
//! lion's own child: lion waits for it through its pidfd.
//!
//! In the child, in this order:
//! 1. every signal back to its default action (lion's handlers live in
//!    lion's memory; the parent blocked every signal around the clone), the
//!    standard streams onto 0, 1 and 2;
//! 2. join the cgroups (descriptors opened by the parent), set the rlimits;
//!    write `setgroups`=deny, then the uid and gid maps (inside 0 → lion's
//!    euid); set `RLIMIT_NPROC` (counted per user namespace, so it counts
//!    the jail alone; it does not bind root, see the crate docs); the host
//!    name;
//! 3. make `/` private, bind-mount each read-write grant onto itself, the
//!    private tmp directory at `/tmp` and the granted files; make every
//!    mount read-only but the read-write grants and `/tmp` (Landlock does not
//!    govern chmod, chown, utimes or extended attributes: a read-only mount
//!    does, with `EROFS`); when lion asked for listeners, bring `lo` up,
//!    bind and listen on each address and send the sockets to lion
//!    (`SCM_RIGHTS`);
//! 4. die with lion's spawner thread (`PR_SET_PDEATHSIG`, checked against a
//!    race), start a session (no controlling terminal), mount a procfs of
//!    its own pid namespace at `/proc` granted read-only (best effort),
//!    `chdir`, mark every descriptor above 2 close-on-exec, empty its
//!    capability bounding and ambient sets (root inside the jail starts with
//!    no capability), set `PR_SET_NO_NEW_PRIVS`, `landlock_restrict_self`,
//!    install the three seccomp filters, unblock every signal — and `exec`.
//!
//! An error in any step before `exec` is left for the parent in the
//! arguments they share (the step and the errno), and the child exits.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use seccompiler::BpfProgram;

use crate::policy::Filters;
use crate::spec::{JailSpec, JailStdio};

/// Every namespace a jail gets.
const NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET;
/// `landlock_create_ruleset` flag asking for the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
/// `seccomp` operation: is this action available?
const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
/// `SECCOMP_RET_KILL_PROCESS` (Linux 4.14), the action the allow-list uses.
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `close_range` flag: mark close-on-exec instead of closing (Linux 5.11).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// Capability numbers tried when emptying the bounding set (the kernel's
/// capability sets are 64 bits wide; numbers past its last one are EINVAL).
const CAPABILITY_SLOTS: libc::c_ulong = 64;
/// Backlog of lion's listeners inside the jail.
const LISTEN_BACKLOG: libc::c_int = 64;
/// 8-byte words of control buffer for one `SCM_RIGHTS` descriptor
/// (`CMSG_SPACE(4)` is 24 on 64-bit Linux), aligned for `cmsghdr`.
const CMSG_WORDS: usize = 4;
/// Bytes of the child's stack (it runs a few frames of raw system calls;
/// `posix_spawn` gets by with far less), below a guard page.
const CHILD_STACK_BYTES: usize = 256 * 1024;
/// Exit code of a child whose setup failed (the parent reads why from
/// the arguments they share, not from this).
const SETUP_FAILED: libc::c_int = 127;
/// Signal numbers reset to their default action in the child.
const SIGNALS: std::ops::RangeInclusive<libc::c_int> = 1..=64;

/// The jail's host name (its own uts namespace): the host's name does not leak.
pub(crate) const HOSTNAME: &str = "lion-jail";

/// A step of the child's setup. A failed step's number travels with the
/// errno to `spawn` (bits 16 and up of the error code the child leaves in
/// the arguments it shares with the parent), so the error names the step;
/// a plain errno is `exec`'s own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Step {
    /// Joining the cgroups.
    Cgroup = 1,
    /// Setting an rlimit.
    Rlimit,
    /// Creating the namespaces (the clone itself).
    Unshare,
    /// Writing `setgroups` and the uid/gid maps.
    IdMaps,
    /// Setting the host name.
    Hostname,
    /// Making `/` a private mount.
    MountPrivate,
    /// Bind-mounting the private tmp at `/tmp`.
    MountTmp,
    /// Bind-mounting a granted file.
    MountFile,
    /// Making the mounts read-only but for the read-write grants.
    ReadOnly,
    /// Bringing `lo` up and making lion's listeners.
    Listeners,
    /// Putting the standard streams on 0, 1 and 2.
    Stdio,
    /// Tying the jail's life to lion's.
    DeathSignal,
    /// Starting a session without a controlling terminal.
    Session,
    /// Granting the jail's own `/proc` read-only.
    Proc,
    /// Changing to the working directory.
    Chdir,
    /// Marking inherited descriptors close-on-exec.
    CloseDescriptors,
    /// Dropping the capability bounding and ambient sets.
    Capabilities,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// `landlock_restrict_self`.
    Landlock,
    /// Installing the seccomp filters.
    Seccomp,
}

/// Bit offset of the step number in an error code.
const STEP_SHIFT: i32 = 16;

impl Step {
    const ALL: [Step; 20] = [
        Step::Cgroup,
        Step::Rlimit,
        Step::Unshare,
        Step::IdMaps,
        Step::Hostname,
        Step::MountPrivate,
        Step::MountTmp,
        Step::MountFile,
        Step::ReadOnly,
        Step::Listeners,
        Step::Stdio,
        Step::DeathSignal,
        Step::Session,
        Step::Proc,
        Step::Chdir,
        Step::CloseDescriptors,
        Step::Capabilities,
        Step::NoNewPrivs,
        Step::Landlock,
        Step::Seccomp,
    ];

    /// What the step does, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Cgroup => "joining the jail's cgroups",
            Step::Rlimit => "setting a resource limit",
            Step::Unshare => "creating the namespaces",
            Step::IdMaps => "writing the uid/gid maps",
            Step::Hostname => "setting the jail's host name",
            Step::MountPrivate => "making the mounts private",
            Step::MountTmp => "mounting the private /tmp",
            Step::MountFile => "bind-mounting a granted file",
            Step::ReadOnly => "making the mounts read-only but for the read-write grants",
            Step::Listeners => "making lion's listeners in the jail's network",
            Step::Stdio => "connecting the standard streams",
            Step::DeathSignal => "tying the jail to lion",
            Step::Session => "starting a session of its own",
            Step::Proc => "granting the jail's own /proc",
            Step::Chdir => "changing to the working directory",
            Step::CloseDescriptors => "closing inherited descriptors",
            Step::Capabilities => "dropping capabilities",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Landlock => "applying the Landlock ruleset",
            Step::Seccomp => "installing the seccomp filters",
        }
    }

    /// Splits an error code from the child into its step and errno.
    pub fn split(code: i32) -> (Option<Step>, i32) {
        let step = code >> STEP_SHIFT;
        let found = Step::ALL.into_iter().find(|s| *s as i32 == step);
        match found {
            Some(s) => (Some(s), code & ((1 << STEP_SHIFT) - 1)),
            None => (None, code),
        }
    }
}

/// Tags an error with the step that failed (no allocation).
fn at(step: Step) -> impl Fn(io::Error) -> io::Error {
    move |e| {
        let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
        io::Error::from_raw_os_error(((step as i32) << STEP_SHIFT) | errno)
    }
}

/// One resource limit to set in the child.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    resource: libc::__rlimit_resource_t,
    value: libc::rlimit,
}

impl Limit {
    /// `soft`/`hard`, each capped at the current hard limit (an unprivileged
    /// process can only lower it).
    pub fn new(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Self {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: getrlimit writes into the valid `current` it is given.
        if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
            current.rlim_max = libc::RLIM_INFINITY;
        }
        let cap = |v: u64| v.min(current.rlim_max);
        Self {
            resource,
            value: libc::rlimit {
                rlim_cur: cap(soft),
                rlim_max: cap(hard),
            },
        }
    }
}

/// Everything the child needs, prepared before the clone.
pub(crate) struct Plan {
    /// `tasks` of each cgroup made for this process.
    pub cgroup_tasks: Vec<OwnedFd>,
    /// Limits set first in the child (lowered only: allowed inside its
    /// user namespace).
    pub limits: Vec<Limit>,
    /// `RLIMIT_NPROC`, set inside the new user namespace.
    pub nproc: Limit,
    /// `0 <euid> 1`.
    pub uid_map: Vec<u8>,
    /// `0 <egid> 1`.
    pub gid_map: Vec<u8>,
    /// Host path of the private tmp directory.
    pub private_tmp: CString,
    /// Working directory inside the jail.
    pub cwd: CString,
    /// The Landlock ruleset.
    pub landlock: OwnedFd,
    /// The compiled seccomp filters.
    pub filters: Filters,
    /// Held by lion until the child's `exec`; the child sees it hang up if
    /// lion died before the child could ask to die with it.
    pub alive_read: OwnedFd,
    /// See `alive_read`.
    pub alive_write: OwnedFd,
    /// `(host file, path inside)` to bind-mount.
    pub file_mounts: Vec<(CString, CString)>,
    /// Read-write grants: bind-mounted onto themselves so they stay writable
    /// when every other mount is made read-only.
    pub writable: Vec<CString>,
    /// Loopback addresses to listen on inside the namespace.
    pub listeners: Vec<libc::sockaddr_in>,
    /// The child's end of the socketpair the listeners travel over.
    pub listener_channel: Option<OwnedFd>,
}

/// Path as a C string (a path with a NUL byte cannot be passed to the kernel).
pub(crate) fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path contains a NUL byte: {}", path.display()),
        )
    })
}

/// A close-on-exec pipe `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    })
}

/// lion's effective uid and gid (to map root inside the jail to them).
pub(crate) fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid cannot fail and touch no memory.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// What the child execs, and where its standard streams go.
pub(crate) struct Exec {
    /// The program's absolute path.
    pub program: CString,
    /// `argv[1..]`.
    pub args: Vec<CString>,
    /// The whole environment, `NAME=value`.
    pub env: Vec<CString>,
    /// Pipes to lion, or lion's own streams.
    pub stdio: JailStdio,
}

impl Exec {
    /// The program, arguments and environment of `spec` as C strings (a
    /// NUL byte inside one cannot be passed to the kernel).
    pub fn of(spec: &JailSpec) -> io::Result<Self> {
        let c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an argument or environment variable contains a NUL byte",
                )
            })
        };
        Ok(Self {
            program: c_path(&spec.program)?,
            args: spec
                .args
                .iter()
                .map(|a| c(a.as_bytes()))
                .collect::<io::Result<_>>()?,
            // A name given twice keeps its last value (as the standard
            // library's commands do): programs disagree on which of two
            // copies they read.
            env: spec
                .env
                .iter()
                .enumerate()
                .filter(|(i, (k, _))| !spec.env[i + 1..].iter().any(|(later, _)| later == k))
                .map(|(_, (k, v))| {
                    let mut kv = k.as_bytes().to_vec();
                    kv.push(b'=');
                    kv.extend_from_slice(v.as_bytes());
                    c(&kv)
                })
                .collect::<io::Result<_>>()?,
            stdio: spec.stdio,
        })
    }
}

/// A started jail: pid 1 of its namespaces, lion's child.
pub(crate) struct Started {
    /// Its host pid.
    pub pid: libc::pid_t,
    /// Its pidfd (to wait for it and signal it without pid reuse races).
    pub pidfd: OwnedFd,
    /// lion's ends of the standard streams' pipes (when piped): the
    /// program's stdin, stdout and stderr.
    pub stdio: Option<[OwnedFd; 3]>,
}

/// What the parent shares with the child (`CLONE_VM`): the child reads
/// its work from it and leaves its error code in it.
struct Shared<'a> {
    plan: &'a Plan,
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// The child's ends of the pipes, for 0, 1 and 2.
    stdio: Option<[RawFd; 3]>,
    /// 0, or the failed step and errno (see [`Step::split`]), or a bare
    /// errno from `execve`.
    error: std::sync::atomic::AtomicI32,
}

/// A stack for the child: an anonymous mapping with a guard page below.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new(bytes: usize) -> io::Result<Self> {
        let page = 4096;
        let len = bytes + page;
        // SAFETY: a fresh anonymous private mapping; no existing memory is
        // touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the lowest page of the mapping just made.
        check(unsafe { libc::mprotect(base, page, libc::PROT_NONE) } as libc::c_long)?;
        Ok(stack)
    }

    /// The stack's top (it grows down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is page-aligned.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the child that
        // ran on it has exec'd or exited (`CLONE_VFORK`).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Starts the jail of `plan` running `exec`: clones the child into its
/// namespaces (see the module docs) and returns once it exec'd. An error of
/// the child's setup carries its step (see [`Step::split`]); a bare errno is
/// `execve`'s. Call on a thread that outlives the jail: the child dies with
/// it (`PR_SET_PDEATHSIG`).
pub(crate) fn start(plan: &Plan, exec: &Exec) -> io::Result<Started> {
    let (child_ends, ours) = match exec.stdio {
        JailStdio::Piped => {
            let (in_read, in_write) = pipe()?;
            let (out_read, out_write) = pipe()?;
            let (err_read, err_write) = pipe()?;
            (
                Some([in_read, out_write, err_write]),
                Some([in_write, out_read, err_read]),
            )
        }
        JailStdio::Inherit => (None, None),
    };
    let mut argv: Vec<*const libc::c_char> = Vec::with_capacity(exec.args.len() + 2);
    argv.push(exec.program.as_ptr());
    argv.extend(exec.args.iter().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = exec.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let shared = Shared {
        plan,
        program: exec.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdio: child_ends
            .as_ref()
            .map(|fds| [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()]),
        error: std::sync::atomic::AtomicI32::new(0),
    };
    let stack = Stack::new(CHILD_STACK_BYTES)?;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: every signal is blocked around the clone so that none runs one
    // of lion's handlers on the child's borrowed memory (the child resets
    // them before it unblocks); `child_main` gets a pointer to `shared`,
    // alive until the clone returns, which with CLONE_VFORK is after the
    // child's exec or exit; the stack is a fresh mapping alive as long.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | NAMESPACES | libc::SIGCHLD,
            (&shared as *const Shared<'_>).cast_mut().cast(),
            &mut pidfd as *mut libc::c_int,
        );
        let cloned = if pid < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(pid)
        };
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        cloned.map_err(at(Step::Unshare))?
    };
    // SAFETY: the kernel wrote the new process's pidfd, owned by nobody else.
    let pidfd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(pidfd) };
    drop(stack);
    let error = shared.error.load(std::sync::atomic::Ordering::Acquire);
    if error != 0 {
        // The child exited after its error: reap it.
        let _ = wait_exited(&pidfd, 0);
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(Started {
        pid,
        pidfd,
        stdio: ours,
    })
}

/// How a process ended: its wait status (as `waitpid` gives it) and the CPU
/// seconds it used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exited {
    /// The status, for `ExitStatus::from_raw`.
    pub status: libc::c_int,
    /// User and system CPU seconds.
    pub cpu_seconds: u64,
}

/// Reaps the process of `pidfd` if it has exited (`WNOHANG` in `flags`) or
/// once it does; `None` when it has not exited yet.
pub(crate) fn wait_exited(pidfd: &OwnedFd, flags: libc::c_int) -> io::Result<Option<Exited>> {
    // SAFETY: waitid writes into the valid siginfo and rusage given.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let mut usage: libc::rusage = std::mem::zeroed();
        loop {
            let rc = libc::syscall(
                libc::SYS_waitid,
                libc::P_PIDFD,
                pidfd.as_raw_fd(),
                &mut info as *mut libc::siginfo_t,
                libc::WEXITED | flags,
                &mut usage as *mut libc::rusage,
            );
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if info.si_pid() == 0 {
            return Ok(None);
        }
        let code = info.si_status();
        let status = match info.si_code {
            libc::CLD_EXITED => (code & 0xff) << 8,
            libc::CLD_DUMPED => code | 0x80,
            _ => code,
        };
        let cpu_seconds = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as u64;
        Ok(Some(Exited {
            status,
            cpu_seconds,
        }))
    }
}

/// `pidfd` registered with the runtime, to await the process's exit (a
/// pidfd turns readable then); on failure the pidfd comes back with why.
pub(crate) fn watch(
    pidfd: OwnedFd,
) -> Result<tokio::io::unix::AsyncFd<OwnedFd>, (OwnedFd, io::Error)> {
    // SAFETY: an OwnedFd stays open, and the same file, for as long as the
    // AsyncFd owns it.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts())
}

/// Kills the process of `pidfd` and reaps it, waiting (a jail started for
/// nobody: its starter went, or could not take it).
pub(crate) fn abandon(pidfd: &OwnedFd) {
    let _ = signal(pidfd, libc::SIGKILL);
    let _ = wait_exited(pidfd, 0);
}

/// Sends `signal` to the process of `pidfd`.
pub(crate) fn signal(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a pidfd, a signal number, no siginfo, no flags.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
}

/// The child: sets itself up, `exec`s, and only returns (exits) when
/// something failed, leaving why in the shared arguments.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Shared` that `start` passed, alive until the
    // clone returns there, which is after this child's exec or exit.
    let shared = unsafe { &*arg.cast::<Shared<'_>>() };
    let error = match in_child(shared) {
        Ok(()) => libc::EINVAL,
        Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
    };
    shared
        .error
        .store(error, std::sync::atomic::Ordering::Release);
    // SAFETY: ends this process only, without running anything of lion's.
    unsafe { libc::_exit(SETUP_FAILED) }
}

/// `Err(last errno)` when `rc` is negative.
fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `data` to the file at `path` (open, one write, close).
///
/// SAFETY (for callers): `path` is a valid C string; only raw syscalls.
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    check(fd as libc::c_long)?;
    write_fd(fd, data).inspect_err(|_| {
        // SAFETY: `fd` was opened above and is closed once.
        unsafe { libc::close(fd) };
    })?;
    // SAFETY: as above.
    unsafe { libc::close(fd) };
    Ok(())
}

fn write_fd(fd: RawFd, data: &[u8]) -> io::Result<()> {
    // SAFETY: `data` is a valid buffer of `data.len()` bytes.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    check(n as libc::c_long)?;
    if n as usize != data.len() {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

fn set_limit(l: &Limit) -> io::Result<()> {
    // SAFETY: `l.value` is a valid rlimit.
    check(unsafe { libc::setrlimit(l.resource, &l.value) } as libc::c_long)
}

fn install_filter(prog: &BpfProgram) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program from the valid `fprog`, whose
    // filter points at `prog`, alive for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    })
}

/// The child's setup, then `exec` (see the module docs for the steps);
/// returns only with what failed.
fn in_child(shared: &Shared<'_>) -> io::Result<()> {
    let p = shared.plan;
    for sig in SIGNALS {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: sets a default action; EINVAL for the numbers the C
            // library keeps for itself, which is fine.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    if let Some(fds) = shared.stdio {
        for (target, fd) in fds.into_iter().enumerate() {
            let target = target as RawFd;
            // SAFETY: raw descriptor calls on the child's own table.
            let rc = unsafe {
                if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, target)
                }
            };
            check(rc as libc::c_long).map_err(at(Step::Stdio))?;
        }
    }
    for fd in &p.cgroup_tasks {
        // "0" = the writing thread, the child's only one: the process
        // moves, and the kernel skips its global threadgroup lock.
        write_fd(fd.as_raw_fd(), b"0").map_err(at(Step::Cgroup))?;
    }
    for l in &p.limits {
        set_limit(l).map_err(at(Step::Rlimit))?;
    }
    write_file(c"/proc/self/setgroups", b"deny").map_err(at(Step::IdMaps))?;
    write_file(c"/proc/self/uid_map", &p.uid_map).map_err(at(Step::IdMaps))?;
    write_file(c"/proc/self/gid_map", &p.gid_map).map_err(at(Step::IdMaps))?;
    set_limit(&p.nproc).map_err(at(Step::Rlimit))?;
    // SAFETY: a valid buffer and its length.
    check(unsafe { libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) } as libc::c_long)
        .map_err(at(Step::Hostname))?;
    // SAFETY: valid C strings or nulls, as mount(2) takes them.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    } as libc::c_long)
    .map_err(at(Step::MountPrivate))?;
    for path in &p.writable {
        // SAFETY: as above.
        check(unsafe {
            libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        } as libc::c_long)
        .map_err(at(Step::ReadOnly))?;
    }
    // SAFETY: as above.
    check(unsafe {
        libc::mount(
            p.private_tmp.as_ptr(),
            c"/tmp".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    } as libc::c_long)
    .map_err(at(Step::MountTmp))?;
    for (source, target) in &p.file_mounts {
        // SAFETY: valid C strings or nulls, as mount(2) takes them.
        check(unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        } as libc::c_long)
        .map_err(at(Step::MountFile))?;
    }
    // Landlock does not govern chmod, chown, utimes or xattrs: make every
    // mount read-only, then the read-write grants and /tmp writable again.
    set_read_only(c"/", true, libc::AT_RECURSIVE).map_err(at(Step::ReadOnly))?;
    for path in &p.writable {
        set_read_only(path, false, 0).map_err(at(Step::ReadOnly))?;
    }
    set_read_only(c"/tmp", false, 0).map_err(at(Step::ReadOnly))?;
    if let Some(channel) = &p.listener_channel {
        make_listeners(&p.listeners, channel.as_raw_fd()).map_err(at(Step::Listeners))?;
    }
    restrict(p)?;
    // SAFETY: an empty signal set, then the exec of valid NUL-terminated
    // strings and arrays; execve returns only on failure.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(shared.program, shared.argv, shared.envp);
    }
    Err(io::Error::last_os_error())
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `struct landlock_path_beneath_attr` (packed, as the kernel has it).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `LANDLOCK_RULE_PATH_BENEATH`.
const LANDLOCK_RULE_PATH_BENEATH: libc::c_uint = 1;
/// `LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR`.
const LANDLOCK_READ_FILE_AND_DIR: u64 = (1 << 2) | (1 << 3);

/// Mounts a procfs of the jail's own pid namespace at `/proc` (read-only, no
/// exec/suid/dev) and adds a read rule for it to the Landlock ruleset, so
/// `/proc/self` works and only the jail's processes are visible. Best
/// effort: where the kernel refuses the mount (a container that masks parts
/// of the host's `/proc`), `/proc` stays the host's and stays denied.
fn mount_proc(ruleset: RawFd) -> io::Result<()> {
    // SAFETY: valid C strings; a packed attribute struct of the kernel's
    // layout; the O_PATH descriptor is closed here.
    unsafe {
        let mounted = libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
            std::ptr::null(),
        );
        if mounted != 0 {
            return Ok(());
        }
        let fd = libc::open(
            c"/proc".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        check(fd as libc::c_long)?;
        let attr = PathBeneathAttr {
            allowed_access: LANDLOCK_READ_FILE_AND_DIR,
            parent_fd: fd,
        };
        let added = libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0,
        );
        libc::close(fd);
        check(added)
    }
}

/// `MOUNT_ATTR_RDONLY`.
const MOUNT_ATTR_RDONLY: u64 = 1;

/// Sets (or clears) read-only on the mount at `path` (`flags` may hold
/// `AT_RECURSIVE`). Linux 5.12.
fn set_read_only(path: &std::ffi::CStr, read_only: bool, flags: libc::c_int) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if read_only { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid C string and a valid mount_attr of the size passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
}

/// Brings `lo` up in the new network namespace, then for each address binds
/// and listens on a TCP socket and sends it to lion over `channel`
/// (`SCM_RIGHTS`). Runs before `exec` and before Landlock, holding the
/// jail's user namespace capabilities; only raw system calls on the stack.
fn make_listeners(addrs: &[libc::sockaddr_in], channel: RawFd) -> io::Result<()> {
    // SAFETY: raw system calls on stack structures sized for them; every
    // descriptor opened here is closed here.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check(s as libc::c_long)?;
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let up = libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
        libc::close(s);
        check(up as libc::c_long)?;
        for addr in addrs {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            check(fd as libc::c_long)?;
            let sent = listen_and_send(fd, addr, channel);
            libc::close(fd);
            sent?;
        }
    }
    Ok(())
}

/// Binds `fd` to `addr`, listens, and sends it over `channel`.
///
/// SAFETY (for callers): `fd` and `channel` are open descriptors.
unsafe fn listen_and_send(fd: RawFd, addr: &libc::sockaddr_in, channel: RawFd) -> io::Result<()> {
    // SAFETY: `addr` is a valid sockaddr_in of the given length; the
    // message structures live on this stack frame for the sendmsg call.
    unsafe {
        check(libc::bind(
            fd,
            (addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) as libc::c_long)?;
        check(libc::listen(fd, LISTEN_BACKLOG) as libc::c_long)?;
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut space = [0u64; CMSG_WORDS];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        check(libc::sendmsg(channel, &msg, 0) as libc::c_long)?;
    }
    Ok(())
}

/// Receives `count` listeners the child sent over `channel` (they were all
/// sent before `exec`, so before `spawn` returned: no waiting).
pub(crate) fn receive_listeners(
    channel: &OwnedFd,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut space = [0u64; CMSG_WORDS];
        // SAFETY: the message structures live on this stack frame for the
        // recvmsg call; the received descriptor is checked to be one before
        // it is owned.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = space.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&space);
            let n = libc::recvmsg(
                channel.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            );
            check(n as libc::c_long)?;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null()
                || (*cmsg).cmsg_level != libc::SOL_SOCKET
                || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            {
                return Err(io::Error::other("the jail sent no listener"));
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
            out.push(std::os::fd::FromRawFd::from_raw_fd(fd));
        }
    }
    Ok(out)
}

/// A `SOCK_SEQPACKET` unix socketpair `(lion's end, child's end)`.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the valid array.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } as libc::c_long)?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    })
}

/// `sockaddr_in` for an IPv4 socket address.
pub(crate) fn sockaddr(addr: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Ties the child to lion and restricts it for good, last before `exec`.
fn restrict(p: &Plan) -> io::Result<()> {
    // SAFETY: raw system calls on descriptors and strings owned by `p`.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as libc::c_long)
            .map_err(at(Step::DeathSignal))?;
        // If lion died before the line above, its end of the pipe is
        // closed: the read end reports a hang-up. Exact: the spawner thread
        // exiting hands this child to another of lion's threads (and the
        // death signal set now fires when that one exits); it goes outside
        // lion only once lion's last thread is past releasing its
        // descriptors, this pipe's write end among them.
        libc::close(p.alive_write.as_raw_fd());
        let mut pfd = libc::pollfd {
            fd: p.alive_read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        check(libc::poll(&mut pfd, 1, 0) as libc::c_long).map_err(at(Step::DeathSignal))?;
        if pfd.revents & libc::POLLHUP != 0 {
            return Err(at(Step::DeathSignal)(io::Error::from_raw_os_error(
                libc::ESRCH,
            )));
        }
        // A session of its own: no controlling terminal of lion's to push
        // input into (TIOCSTI) when the streams are inherited.
        check(libc::setsid() as libc::c_long).map_err(at(Step::Session))?;
        mount_proc(p.landlock.as_raw_fd()).map_err(at(Step::Proc))?;
        check(libc::chdir(p.cwd.as_ptr()) as libc::c_long).map_err(at(Step::Chdir))?;
        check(libc::syscall(
            libc::SYS_close_range,
            3,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ))
        .map_err(at(Step::CloseDescriptors))?;
        // Root inside the jail's user namespace would get every capability
        // over the jail's namespaces at exec (raw sockets, ioctls on its
        // interfaces…): empty the bounding and ambient sets so the program
        // starts with none. EINVAL past the kernel's last capability.
        for cap in 0..CAPABILITY_SLOTS {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return Err(at(Step::Capabilities)(io::Error::last_os_error()));
            }
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) as libc::c_long)
        .map_err(at(Step::Capabilities))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)
            .map_err(at(Step::NoNewPrivs))?;
        check(libc::syscall(
            libc::SYS_landlock_restrict_self,
            p.landlock.as_raw_fd(),
            0,
        ))
        .map_err(at(Step::Landlock))?;
    }
    install_filter(&p.filters.probe_enosys).map_err(at(Step::Seccomp))?;
    install_filter(&p.filters.socket_families).map_err(at(Step::Seccomp))?;
    install_filter(&p.filters.allowlist).map_err(at(Step::Seccomp))
}

/// The kernel's Landlock ABI version.
pub(crate) fn landlock_abi() -> io::Result<i32> {
    // SAFETY: with a null attribute and size 0 the call only reports the ABI.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    check(rc)?;
    Ok(rc as i32)
}

/// Can this process install a seccomp filter that kills the process?
pub(crate) fn probe_seccomp() -> io::Result<()> {
    let action = SECCOMP_RET_KILL_PROCESS;
    // SAFETY: the kernel reads one u32 from the valid `action`.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    })
}

/// In a throwaway child: unshare every namespace a jail uses and write the
/// id maps, as `spawn` will. `Err` carries the errno the child got.
pub(crate) fn probe_namespaces() -> io::Result<()> {
    let (euid, egid) = effective_ids();
    let uid_map = format!("0 {euid} 1");
    let gid_map = format!("0 {egid} 1");
    // SAFETY: the child only makes raw system calls on data prepared above
    // and ends in _exit; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        check(pid as libc::c_long)?;
        if pid == 0 {
            let step = || -> io::Result<()> {
                check(libc::unshare(NAMESPACES) as libc::c_long)?;
                write_file(c"/proc/self/setgroups", b"deny")?;
                write_file(c"/proc/self/uid_map", uid_map.as_bytes())?;
                write_file(c"/proc/self/gid_map", gid_map.as_bytes())
            };
            let code = match step() {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL) & 0xff,
            };
            libc::_exit(code);
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if *libc::__errno_location() != libc::EINTR {
                return Err(io::Error::last_os_error());
            }
        }
        match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
            (true, 0) => Ok(()),
            (true, errno) => Err(io::Error::from_raw_os_error(errno)),
            _ => Err(io::Error::other(format!(
                "probe child killed by signal {}",
                libc::WTERMSIG(status)
            ))),
        }
    }
}
