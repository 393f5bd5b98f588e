//! What to run in a jail and what it may touch: the program, its whole
//! environment, the paths granted read-only and read-write, the host
//! directory that becomes its private `/tmp`, and its limits.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddrV4;
use std::path::PathBuf;

/// Default memory (cgroup) limit: 1 GiB of resident memory, ample for a
/// Node or Python tool server.
pub const DEFAULT_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
/// Default address space when no memory cgroup can be made (`RLIMIT_AS`):
/// 4 GiB. Address space is not memory: Node 20 starts at 768 MiB but each
/// worker thread reserves another code range; measured, the Node test
/// program (one worker, child processes) dies at 1 GiB and runs at 2 GiB.
pub const DEFAULT_ADDRESS_SPACE_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default process (and thread) count: 128. Node starts ~11 threads and a
/// server may run a few helpers; a fork bomb stops here.
pub const DEFAULT_PROCESSES: u64 = 128;
/// Default CPU seconds for the jailed process's whole life: 600. A warm server
/// accumulates CPU time across calls, so this bounds runaway spinning, not a
/// single call (calls have their own wall-clock timeout in the caller).
pub const DEFAULT_CPU_SECONDS: u64 = 600;
/// Default open descriptors: 256, enough for a runtime with its pipes and a
/// few files, low enough that fd exhaustion stays inside the jail.
pub const DEFAULT_OPEN_FILES: u64 = 256;
/// Default largest file the process may write: 64 MiB, so one write cannot
/// fill a granted disk.
pub const DEFAULT_FILE_SIZE_BYTES: u64 = 64 * 1024 * 1024;

/// Limits of one jailed process and everything it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailLimits {
    /// Memory in bytes, as a memory cgroup's `memory.limit_in_bytes`
    /// (resident memory, OOM-killed above it). Only when lion may make the
    /// cgroup (as root here); else see `address_space_bytes`.
    pub memory_bytes: u64,
    /// Address space in bytes (`RLIMIT_AS`), set only when no memory cgroup
    /// could be made: the unprivileged fallback. Allocations past it fail
    /// with `ENOMEM` inside the program. Larger than `memory_bytes` because
    /// runtimes reserve far more address space than they use.
    pub address_space_bytes: u64,
    /// Processes and threads: cgroup `pids.max` when possible, and always
    /// `RLIMIT_NPROC` set inside the jail's user namespace.
    pub processes: u64,
    /// CPU seconds (`RLIMIT_CPU`), per process of the jail.
    pub cpu_seconds: u64,
    /// Open descriptors per process (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Largest file size in bytes a process may write (`RLIMIT_FSIZE`).
    pub file_size_bytes: u64,
}

impl Default for JailLimits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            address_space_bytes: DEFAULT_ADDRESS_SPACE_BYTES,
            processes: DEFAULT_PROCESSES,
            cpu_seconds: DEFAULT_CPU_SECONDS,
            open_files: DEFAULT_OPEN_FILES,
            file_size_bytes: DEFAULT_FILE_SIZE_BYTES,
        }
    }
}

/// Where the jailed program's standard streams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JailStdio {
    /// Pipes to lion ([`crate::Jailed`]'s `stdin`/`stdout`/`stderr`).
    #[default]
    Piped,
    /// The caller's own 0, 1 and 2 (for a command-line runner).
    Inherit,
}

/// Everything needed to start one jailed program. Paths are taken as given:
/// the caller resolves them (absolute, no surprises from `PATH`). Its
/// `Debug` output names the environment's variables but never shows their
/// values (granted secrets among them).
#[derive(Clone)]
pub struct JailSpec {
    /// Absolute path of the executable; it must lie beneath a granted path.
    pub program: PathBuf,
    /// Arguments after `argv[0]` (which is the program path).
    pub args: Vec<OsString>,
    /// The WHOLE environment: nothing of lion's environment is inherited.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; it must lie beneath a granted path (or be `/tmp`).
    pub cwd: PathBuf,
    /// Granted read and execute (the interpreter, system libraries, the
    /// plugin's own installed folder).
    pub read_only: Vec<PathBuf>,
    /// Granted every filesystem right (operator-granted directories).
    pub read_write: Vec<PathBuf>,
    /// A host directory lion made for this process; bind-mounted at `/tmp`
    /// inside the jail and granted read-write.
    pub private_tmp: PathBuf,
    /// Loopback TCP listeners made inside the jail's network namespace and
    /// handed to lion ([`crate::Jailed::listeners`], same order): the only
    /// TCP the program may connect to (Landlock allows connect to these ports
    /// only), so lion can forward a granted `host:PORT` after its own checks.
    /// Empty: the namespace has no interface up at all.
    pub listeners: Vec<SocketAddrV4>,
    /// Host files bind-mounted over existing paths inside the jail, and
    /// granted read-only (e.g. a hosts file lion wrote mapping a granted
    /// host name to a listener's address, over `/etc/hosts`).
    pub file_mounts: Vec<(PathBuf, PathBuf)>,
    /// Memory, processes, CPU, descriptors, file size.
    pub limits: JailLimits,
    /// Standard streams.
    pub stdio: JailStdio,
}

impl fmt::Debug for JailSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, _)| format!("{}=…", k.to_string_lossy()))
            .collect();
        f.debug_struct("JailSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &env)
            .field("cwd", &self.cwd)
            .field("read_only", &self.read_only)
            .field("read_write", &self.read_write)
            .field("private_tmp", &self.private_tmp)
            .field("listeners", &self.listeners)
            .field("file_mounts", &self.file_mounts)
            .field("limits", &self.limits)
            .field("stdio", &self.stdio)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_debugs_its_variables_names_never_their_values() {
        let spec = JailSpec {
            program: "/usr/bin/python3".into(),
            args: Vec::new(),
            env: vec![("API_TOKEN".into(), "s3cr3t-value".into())],
            cwd: "/tmp".into(),
            read_only: Vec::new(),
            read_write: Vec::new(),
            private_tmp: "/var/tmp/x".into(),
            listeners: Vec::new(),
            file_mounts: Vec::new(),
            limits: JailLimits::default(),
            stdio: JailStdio::Piped,
        };
        let shown = format!("{spec:?}");
        assert!(shown.contains("API_TOKEN"), "{shown}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
    }
}
