//! A cgroup per jailed process (cgroup v1: `memory` and `pids` under
//! `/sys/fs/cgroup/<controller>/lion/<pid>-<n>`), made when lion may make it
//! (as root, typically). The child writes itself into each cgroup's `tasks`
//! through descriptors opened here, before its `exec`, so nothing it starts
//! is outside. `tasks` and not `cgroup.procs`: the child is one
//! thread then, so moving the thread moves the process, and the kernel
//! moves the writing thread itself without write-locking the global
//! `cgroup_threadgroup_rwsem` — a lock that waits for an RCU grace period
//! (measured here: up to 19 ms through `cgroup.procs` after an idle spell,
//! at most 0.11 ms through `tasks`). After exit the counters tell why it
//! died (OOM kills, refused forks) and the directories are removed.
//!
//! A lion killed outright leaves its cgroups behind; the next lion removes
//! those of dead pids at its first jail. A cgroup still busy when its jail
//! ended (the kernel releasing the last task) is retried at the next jail.
//!
//! Where no cgroup can be made the limits fall back to rlimits (see
//! [`crate::JailLimits`]); that is decided per controller.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Where cgroup v1 controllers are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// lion's own subtree under each controller.
const LION_DIR: &str = "lion";
/// How many times removal of an emptied cgroup is retried: the kernel may
/// still be tearing the last task down right after the reap.
const RMDIR_ATTEMPTS: usize = 100;

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Removes the cgroups a dead lion left behind (a lion killed with `SIGKILL`
/// cannot clean up): `<pid>-<n>` directories whose pid no longer runs. A
/// directory still holding tasks is not removable and stays. Runs once per
/// process, at its first jail.
fn sweep_dead(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// One controller's directory for one jailed process.
#[derive(Debug)]
pub(crate) struct Group {
    dir: PathBuf,
}

impl Group {
    /// Makes `/sys/fs/cgroup/<controller>/lion/<name>`; `None` when lion may
    /// not (not root, controller absent, read-only): the caller falls back.
    fn make(controller: &str, name: &str) -> Option<Self> {
        let base = Path::new(CGROUP_ROOT).join(controller);
        if !base.join("cgroup.procs").exists() {
            return None;
        }
        let parent = base.join(LION_DIR);
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        static SWEPT: OnceLock<()> = OnceLock::new();
        if controller == "pids" {
            SWEPT.get_or_init(|| {
                sweep_dead(&parent);
                sweep_dead(&Path::new(CGROUP_ROOT).join("memory").join(LION_DIR));
            });
        }
        let dir = parent.join(name);
        fs::create_dir(&dir).ok()?;
        Some(Self { dir })
    }

    fn set(&self, file: &str, value: u64) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).open(self.dir.join(file))?;
        f.write_all(value.to_string().as_bytes())
    }

    /// The `tasks` file, opened for the child to write itself into (see
    /// the module docs for why not `cgroup.procs`).
    fn tasks(&self) -> io::Result<File> {
        OpenOptions::new().write(true).open(self.dir.join("tasks"))
    }

    /// A `key value` line of a flat-keyed file, e.g. `oom_kill` in
    /// `memory.oom_control` or `max` in `pids.events`.
    fn keyed(&self, file: &str, key: &str) -> u64 {
        fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    fn single(&self, file: &str) -> u64 {
        fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn remove(&self) {
        if !remove_dir(&self.dir) {
            // Still busy (the kernel releasing the last task): retried at
            // the next jail this lion makes.
            if let Ok(mut pending) = PENDING.lock() {
                pending.push(self.dir.clone());
            }
        }
    }
}

/// Removes an emptied cgroup directory, retrying briefly; true when gone.
fn remove_dir(dir: &Path) -> bool {
    for _ in 0..RMDIR_ATTEMPTS {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) => std::thread::yield_now(),
        }
    }
    false
}

/// Cgroups of this lion that were still busy when their jail ended.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Retries the removal of [`PENDING`] cgroups; warns about any still busy.
fn retry_pending() {
    let Ok(mut pending) = PENDING.lock() else {
        return;
    };
    pending.retain(|dir| {
        let busy = !remove_dir(dir);
        if busy {
            tracing::warn!(dir = %dir.display(), "cgroup of an ended jail is still busy");
        }
        busy
    });
}

/// What the cgroups saw, read after the jailed process exited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Processes killed by the OOM killer inside the memory cgroup.
    pub oom_kills: u64,
    /// Times the memory limit was hit.
    pub memory_failcnt: u64,
    /// Forks refused because `pids.max` was reached.
    pub pids_max_hits: u64,
}

/// The cgroups of one jailed process (either may be absent).
#[derive(Debug, Default)]
pub(crate) struct Cgroups {
    pub memory: Option<Group>,
    pub pids: Option<Group>,
}

impl Cgroups {
    /// Makes and configures what lion may make; the rest is `None`.
    pub fn make(memory_bytes: u64, processes: u64) -> Self {
        retry_pending();
        let name = format!(
            "{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let memory = Group::make("memory", &name).and_then(|g| {
            // Swap counts too where the kernel accounts it (memsw >= limit).
            let ok = g.set("memory.limit_in_bytes", memory_bytes).is_ok();
            if g.dir.join("memory.memsw.limit_in_bytes").exists() {
                let _ = g.set("memory.memsw.limit_in_bytes", memory_bytes);
            }
            if ok {
                Some(g)
            } else {
                g.remove();
                None
            }
        });
        let pids = Group::make("pids", &name).and_then(|g| {
            if g.set("pids.max", processes).is_ok() {
                Some(g)
            } else {
                g.remove();
                None
            }
        });
        Self { memory, pids }
    }

    /// `tasks` of each cgroup made, for the child to join.
    pub fn tasks_files(&self) -> io::Result<Vec<File>> {
        [&self.memory, &self.pids]
            .into_iter()
            .flatten()
            .map(Group::tasks)
            .collect()
    }

    /// Reads the counters (call after the process exited).
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        if let Some(m) = &self.memory {
            c.oom_kills = m.keyed("memory.oom_control", "oom_kill");
            c.memory_failcnt = m.single("memory.failcnt");
        }
        if let Some(p) = &self.pids {
            c.pids_max_hits = p.keyed("pids.events", "max");
        }
        c
    }

    /// Removes the directories (after the process and its namespace exited).
    pub fn remove(&mut self) {
        for g in [self.memory.take(), self.pids.take()].into_iter().flatten() {
            g.remove();
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.remove();
    }
}
