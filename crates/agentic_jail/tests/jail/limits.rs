//! Limits that hold whether lion runs as root (cgroups) or as an
//! unprivileged user (rlimits, `RLIMIT_NPROC` counted in the jail's user
//! namespace): a fork bomb stops at the process limit, a memory bomb is
//! stopped and reported, a CPU spinner is killed and reported, a file stops
//! at the size limit. Each beside a control that stays under the limit.

use agentic_jail::ExitCause;

use crate::{jail_run_args, jail_run_as_nobody, python, run, scratch};

/// The process limit the fork-bomb cases use.
const PROCESSES: u64 = 16;
/// Forks the bomb attempts: far above [`PROCESSES`].
const BOMB_FORKS: u64 = 500;
/// The memory limit of the memory-bomb cases: 256 MiB.
const MEMORY: u64 = 256 * 1024 * 1024;

/// Forks until refused; children block on a pipe (they die with pid 1).
/// Prints `forks <n> errno <e>`; exits 3 when a fork was refused.
fn bomb() -> String {
    format!(
        "import os, sys\n\
         r, w = os.pipe()\n\
         n = 0\n\
         try:\n\
         \x20   for i in range({BOMB_FORKS}):\n\
         \x20       if os.fork() == 0:\n\
         \x20           os.close(w); os.read(r, 1); os._exit(0)\n\
         \x20       n += 1\n\
         except OSError as e:\n\
         \x20   print('forks', n, 'errno', e.errno); sys.exit(3)\n\
         print('forks', n, 'errno', 0)\n"
    )
}

/// Allocates and fills `mib` MiB in 16 MiB steps, then prints `allocated`.
fn allocate(mib: u64) -> String {
    format!(
        "chunks = []\n\
         for i in range({mib} // 16):\n\
         \x20   chunks.append(b'x' * (16 << 20))\n\
         print('allocated', flush=True)\n"
    )
}

fn forks_of(stdout: &str) -> (u64, i32) {
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words.len(), 4, "unexpected output {stdout:?}");
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

/// The bomb got a few forks (the control: forking works at all), then EAGAIN
/// before reaching anything near its target.
fn assert_contained(stdout: &str) {
    let (forks, errno) = forks_of(stdout);
    assert_eq!(errno, libc::EAGAIN, "{stdout}");
    assert!(
        (4..=PROCESSES).contains(&forks),
        "{forks} forks under a limit of {PROCESSES}"
    );
}

#[tokio::test]
async fn fork_bomb_is_contained_as_root() {
    let s = scratch();
    let mut spec = python(s.path(), &bomb());
    spec.limits.processes = PROCESSES;
    let r = run(&spec).await;
    assert_contained(&r.stdout);
    assert_eq!(r.report.code, Some(3));
    if running_as_root() {
        // As root the pids cgroup counted the refusals.
        assert!(r.report.process_limit_hit, "{r:?}");
        assert_eq!(r.report.cause, Some(ExitCause::ProcessLimit));
    }
}

#[test]
fn fork_bomb_is_contained_as_nobody() {
    let s = scratch();
    let tmp = s.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut args = jail_run_args(&tmp);
    let processes = PROCESSES.to_string();
    let code = bomb();
    args.extend([
        "--processes".into(),
        processes,
        "--".into(),
        crate::PYTHON.into(),
    ]);
    args.extend(["-c".into(), code]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = jail_run_as_nobody(&args);
    assert_contained(&r.stdout);
    assert_eq!(r.report["code"], 3, "{}", r.stderr);
}

#[tokio::test]
async fn memory_bomb_is_stopped_and_reported_as_root() {
    let s = scratch();
    // Control: 64 MiB under a 256 MiB limit works.
    let mut control = python(s.path(), &allocate(64));
    control.limits.memory_bytes = MEMORY;
    let r = run(&control).await;
    assert_eq!(r.stdout, "allocated\n", "{r:?}");

    let mut spec = python(s.path(), &allocate(4096));
    spec.limits.memory_bytes = MEMORY;
    let r = run(&spec).await;
    assert_eq!(r.stdout, "", "{r:?}");
    if running_as_root() {
        // The memory cgroup's OOM killer ended it, and the report says so.
        assert_eq!(r.report.signal, Some(libc::SIGKILL), "{r:?}");
        assert_eq!(r.report.cause, Some(ExitCause::MemoryLimit));
        assert!(r.report.memory_limit_hit);
    } else {
        assert!(r.stderr.contains("MemoryError"), "{r:?}");
    }
}

#[test]
fn memory_bomb_is_stopped_as_nobody() {
    let s = scratch();
    let tmp = s.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let run_with = |mib: u64| {
        let mut args = jail_run_args(&tmp);
        // As nobody no memory cgroup can be made: the fallback limit is the
        // address space.
        args.extend([
            "--address-space".into(),
            MEMORY.to_string(),
            "--".into(),
            crate::PYTHON.into(),
            "-c".into(),
            allocate(mib),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        jail_run_as_nobody(&args)
    };
    let control = run_with(64);
    assert_eq!(control.stdout, "allocated\n", "{}", control.stderr);
    // Without a cgroup the limit is RLIMIT_AS: allocation fails inside.
    let r = run_with(4096);
    assert_eq!(r.stdout, "", "{}", r.stderr);
    assert!(r.stderr.contains("MemoryError"), "{}", r.stderr);
    assert_eq!(r.report["code"], 1);
}

#[tokio::test]
async fn cpu_spinner_is_killed_and_reported() {
    let s = scratch();
    let mut control = python(s.path(), "print(sum(range(1000)))");
    control.limits.cpu_seconds = 1;
    let r = run(&control).await;
    assert_eq!(r.stdout, "499500\n", "{r:?}");

    let mut spec = python(s.path(), "while True: pass");
    spec.limits.cpu_seconds = 1;
    let r = run(&spec).await;
    assert_eq!(r.report.signal, Some(libc::SIGXCPU), "{r:?}");
    assert_eq!(r.report.cause, Some(ExitCause::CpuLimit));
}

#[tokio::test]
async fn a_file_stops_at_the_size_limit() {
    let s = scratch();
    let code = "import os\n\
                f = open('/tmp/f', 'wb', buffering=0)\n\
                f.write(b'x' * 1000)\n\
                print('small ok', flush=True)\n\
                try:\n\
                \x20   while f.tell() < 1_000_000:\n\
                \x20       f.write(b'x' * 100_000)\n\
                \x20   print('big ok')\n\
                except OSError as e:\n\
                \x20   print('errno:%d at %d' % (e.errno, f.tell()))\n";
    let mut spec = python(s.path(), code);
    spec.limits.file_size_bytes = 64 * 1024;
    let r = run(&spec).await;
    // Python ignores SIGXFSZ, so the write past the limit fails with EFBIG
    // (after a short write up to the limit); the first, small write is the
    // control.
    assert_eq!(r.stdout, "small ok\nerrno:27 at 65536\n", "{r:?}");
}

/// Whether the tests run as root (then lion can make cgroups here).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[tokio::test]
async fn descriptors_stop_at_the_open_files_limit() {
    let code = "import os\n\
                fds = []\n\
                try:\n\
                \x20   for i in range(10000):\n\
                \x20       fds.append(os.open('/dev/null', os.O_RDONLY))\n\
                \x20   print('opened', len(fds))\n\
                except OSError as e:\n\
                \x20   print('errno:%d after %d' % (e.errno, len(fds)))\n";
    let s = scratch();
    let mut spec = python(s.path(), code);
    spec.limits.open_files = 64;
    let r = run(&spec).await;
    // EMFILE once descriptors 0..63 are used; the first opens (the control)
    // worked.
    let (errno, count) = r
        .stdout
        .trim()
        .strip_prefix("errno:")
        .and_then(|rest| rest.split_once(" after "))
        .unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(errno, "24");
    let count: u64 = count.parse().unwrap();
    assert!(
        (32..64).contains(&count),
        "{count} descriptors under a limit of 64"
    );
}
