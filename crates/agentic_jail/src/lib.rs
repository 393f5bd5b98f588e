//! OS isolation for untrusted subprocesses (lion's second sandbox): a
//! program started in new user, mount, pid, ipc, uts and network
//! namespaces, with the filesystem denied by default (Landlock), a seccomp
//! allow-list kept as data, and limits that hold whether lion runs as root
//! or not. Where a needed feature is missing it refuses to start, naming it.
//!
//! # Map of the modules
//!
//! - [`spec`] — what to run and what it may touch: [`JailSpec`], [`JailLimits`].
//! - [`support`](mod@support) — the probe: [`support()`](fn@support) says what the kernel offers or,
//!   in one line, what is missing ([`Missing`]).
//! - `policy` — the seccomp policy (`policy/seccomp.json`, seccompiler's JSON
//!   format) compiled to BPF in the parent.
//! - `rules` — the Landlock ruleset, created in the parent with the granted
//!   paths opened there.
//! - `cgroup` — a cgroup (v1 `memory` and `pids`) per jailed process when one
//!   can be made; else the rlimits carry the limits.
//! - `child` — the only module with `unsafe`: the clone into the namespaces
//!   and what runs before `exec` (id maps, mounts, Landlock, seccomp).
//! - [`jailed`] — [`spawn()`](fn@spawn), the running [`Jailed`] process and its
//!   [`ExitReport`].
//!
//! # How a jailed process is laid out
//!
//! ```text
//! lion (its spawner thread) ── program = pid 1 of new user, mount, pid,
//!                                network, ipc and uts namespaces
//!                                  └── everything it starts
//! ```
//! The program is lion's own child, made in its namespaces by one
//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | …)` that borrows lion's
//! memory until `exec` (no copy of lion's page tables: see `child`). It
//! carries `PR_SET_PDEATHSIG(SIGKILL)`: lion dying kills pid 1, and pid 1
//! dying makes the kernel kill the whole namespace. [`Jailed::kill`]
//! signals pid 1 through its pidfd, and [`Jailed::wait`] reaps it there
//! (one translation: a `SIGKILL` that came when the CPU-time limit was used
//! up is reported as `SIGXCPU`, because pid 1 of a namespace ignores the
//! soft `SIGXCPU`).
//!
//! # What is enforced
//!
//! - Filesystem: a Landlock ruleset handling every filesystem right of the
//!   kernel's best ABI; read+execute beneath [`JailSpec::read_only`], all
//!   rights beneath [`JailSpec::read_write`] and the private `/tmp`. Reads
//!   outside are denied too. A kernel without Landlock is refused. Landlock
//!   does not govern chmod, chown, utimes or extended attributes, so every
//!   mount of the jail's mount namespace is read-only but the read-write
//!   grants and `/tmp` (`EROFS`). Grants must not lie under the host's
//!   `/tmp`, which the private one hides.
//! - Network: an empty network namespace (no interface up), Landlock's TCP
//!   bind/connect rights denied (ABI 4+), abstract unix sockets and signals
//!   scoped to the jail (ABI 6+).
//! - System calls: `policy/seccomp.json` — an allow-list, `ENOSYS` for what
//!   runtimes only probe, and the process killed for anything else.
//! - Limits: see [`JailLimits`]; cgroups when lion may make them, rlimits
//!   always. `RLIMIT_NPROC` is set inside the new user namespace, where it
//!   counts the jail's processes alone; it holds for an unprivileged lion but
//!   NOT for root (measured: root inside the jail is still uid 0 of the host,
//!   which the kernel exempts). So as root a pids cgroup is required: without
//!   one [`spawn()`](fn@spawn) refuses ([`JailError::NoProcessLimit`]).
//! - Environment: only [`JailSpec::env`]; descriptors: only 0, 1 and 2.
//! - Privilege: root inside the jail is lion's uid outside, with no
//!   capability (bounding and ambient sets emptied), `no_new_privs` (setuid
//!   bits and file capabilities do nothing), its own session and host name.
//!
//! # What it does not cover (known, on purpose or not yet)
//!
//! - Metadata: Landlock does not govern path lookup, so `stat` of a path
//!   outside the grants works (existence, size, times leak; contents do not).
//! - `/proc` is a read-only procfs of the jail's own pid namespace (lion's
//!   processes are not in it); it shows host-wide figures such as
//!   `/proc/cpuinfo` and `/proc/meminfo`. Where the kernel refuses that
//!   mount (a container masking the host's `/proc`) `/proc` stays the
//!   host's, denied. `/dev/shm` is not granted: POSIX semaphores (Python's
//!   `multiprocessing` locks) fail with `EACCES`.
//! - Grants under the host's `/tmp` are hidden by the private `/tmp`.
//! - Without a memory cgroup the limit is address space (`RLIMIT_AS`), not
//!   resident memory; CPU seconds are per process, not per jail.
//! - UDP and ICMP inside the jail's namespace are not filtered by Landlock;
//!   with no interface up (or only `lo` with lion's listeners) they reach
//!   nothing outside.
//! - A [`Jailed`] dropped without [`Jailed::wait`] leaves its cgroups until
//!   the next lion sweeps them.
//! - Forwarding a granted `host:PORT`: this crate gives the pieces (below);
//!   resolving, checking and copying bytes is the caller's.
//!
//! # Forwarding a `host:HOST:PORT` grant (design; the forwarding is the caller's)
//!
//! 1. Per grant, the caller picks a loopback address inside the jail
//!    (`127.0.0.2`, `127.0.0.3`…, one per granted host) and puts
//!    `addr:PORT` in [`JailSpec::listeners`]; it writes a hosts file mapping
//!    `HOST` to that address and an `nsswitch.conf` saying `hosts: files`,
//!    and mounts both over `/etc` via [`JailSpec::file_mounts`]. No resolver
//!    is reachable, so no other name resolves.
//! 2. The jail (before its `exec`, with the user namespace's capabilities)
//!    brings `lo` up, binds and listens on each address, and sends the
//!    sockets to lion over a socketpair (`SCM_RIGHTS`): lion holds listening
//!    sockets that live in the jail's network namespace
//!    ([`Jailed::listeners`]). Landlock allows TCP connect to those ports
//!    only (and no bind), so nothing else is reachable even inside.
//! 3. For each accepted connection lion resolves `HOST` itself, checks the
//!    answer against its policy (e.g. no private or loopback ranges unless
//!    granted), connects from its own namespace to the checked address (not
//!    the name again), copies both ways (`copy_bidirectional`), and records
//!    the connection, or the refusal, as an event. UDP and DNS are not
//!    forwarded.

mod cgroup;
mod child;
pub mod jailed;
mod policy;
mod rules;
pub mod spec;
pub mod support;

pub use jailed::{ExitCause, ExitReport, JailError, JailOutput, JailStdin, Jailed, spawn};
pub use spec::{JailLimits, JailSpec, JailStdio};
pub use support::{Missing, MissingFeature, Support, support, support_once};
