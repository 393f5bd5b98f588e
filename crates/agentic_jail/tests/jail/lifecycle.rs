//! Everything the jailed program starts dies with it: a double-forked daemon
//! is gone after a kill, after pid 1 exits, and after lion itself dies. The
//! daemon keeps the jail's stdout open, so end-of-file on that pipe is the
//! proof that every holder is gone (no sleeps, no polling). Also: the
//! environment is only what was given, and no descriptor above 2 leaks in.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentic_jail::{ExitCause, spawn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::{JAIL_RUN, PYTHON, jail_run_args, python, run, scratch, spec};

/// Upper bound on waiting for end-of-file: not a timing assertion, only a
/// guard so a surviving daemon fails the test instead of hanging it.
const EOF_GUARD: Duration = Duration::from_secs(60);

/// Double-forks a daemon that keeps stdout open and sleeps, prints `ready`,
/// then (when `wait` is true) blocks forever.
fn daemon(wait: bool) -> String {
    format!(
        "import os, sys, time\n\
         if os.fork() == 0:\n\
         \x20   os.setsid()\n\
         \x20   if os.fork() == 0:\n\
         \x20       time.sleep(100000)\n\
         \x20   os._exit(0)\n\
         os.wait()\n\
         print('ready', flush=True)\n\
         if {wait}:\n\
         \x20   time.sleep(100000)\n",
        wait = if wait { "True" } else { "False" }
    )
}

#[tokio::test]
async fn a_double_forked_daemon_is_gone_after_kill() {
    let s = scratch();
    let mut jailed = spawn(&python(s.path(), &daemon(true))).await.unwrap();
    let mut out = tokio::io::BufReader::new(jailed.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).await.unwrap();
    assert_eq!(line, "ready\n");
    jailed.kill().unwrap();
    let mut rest = String::new();
    tokio::time::timeout(EOF_GUARD, out.read_to_string(&mut rest))
        .await
        .expect("stdout reached end-of-file: every process of the jail is gone")
        .unwrap();
    let report = jailed.wait().await.unwrap();
    assert_eq!(report.cause, Some(ExitCause::Killed));
}

#[tokio::test]
async fn a_double_forked_daemon_is_gone_when_pid_one_exits() {
    let s = scratch();
    let mut jailed = spawn(&python(s.path(), &daemon(false))).await.unwrap();
    let mut out = jailed.stdout.take().unwrap();
    let mut all = String::new();
    tokio::time::timeout(EOF_GUARD, out.read_to_string(&mut all))
        .await
        .expect("the daemon died with pid 1")
        .unwrap();
    assert_eq!(all, "ready\n");
    let report = jailed.wait().await.unwrap();
    assert_eq!(report.code, Some(0));
}

#[test]
fn the_jail_dies_when_lion_dies() {
    let s = scratch();
    let tmp = s.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut args = jail_run_args(&tmp);
    args.extend(["--".into(), PYTHON.into(), "-c".into(), daemon(true)]);
    // jail-run plays lion: the jailed program inherits its stdout.
    let mut lion = Command::new(JAIL_RUN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(lion.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    lion.kill().unwrap();
    lion.wait().unwrap();
    // End-of-file: pid 1 and the daemon both died.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = tx.send(out.read_to_end(&mut rest).map(|_| rest));
    });
    let rest = rx
        .recv_timeout(EOF_GUARD)
        .expect("the jail outlived lion")
        .unwrap();
    assert!(rest.is_empty());

    // The dead lion's cgroups (as root) are removed by the next lion's
    // first jail.
    let left = std::path::PathBuf::from(format!("/sys/fs/cgroup/pids/lion/{}-0", lion.id()));
    if left.exists() {
        let mut args = jail_run_args(&tmp);
        args.extend(["--".into(), "/bin/true".into()]);
        let status = Command::new(JAIL_RUN).args(&args).status().unwrap();
        assert!(status.success());
        assert!(!left.exists(), "{} was left behind", left.display());
    }
}

#[tokio::test]
async fn the_environment_is_only_what_was_given() {
    // Control: this test process has an environment of its own to leak.
    assert!(std::env::var_os("PATH").is_some());
    let s = scratch();
    let mut spec = spec(s.path(), "/usr/bin/env", &[]);
    spec.env = vec![
        ("ONLY".into(), "this".into()),
        ("AND".into(), "that".into()),
    ];
    let r = run(&spec).await;
    let mut lines: Vec<&str> = r.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["AND=that", "ONLY=this"], "{r:?}");
}

#[tokio::test]
async fn a_variable_given_twice_keeps_its_last_value_once() {
    let s = scratch();
    let mut spec = spec(s.path(), "/usr/bin/env", &[]);
    spec.env = vec![
        ("TWICE".into(), "first".into()),
        ("OTHER".into(), "x".into()),
        ("TWICE".into(), "last".into()),
    ];
    let r = run(&spec).await;
    let mut lines: Vec<&str> = r.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["OTHER=x", "TWICE=last"], "{r:?}");
}

/// Python listing its open descriptors from 3 up.
const OPEN_FDS: &str = "import os\n\
    fds = []\n\
    for fd in range(3, 1024):\n\
    \x20   try:\n\
    \x20       os.fstat(fd); fds.append(fd)\n\
    \x20   except OSError:\n\
    \x20       pass\n\
    print(fds)\n";

#[test]
fn no_descriptor_above_two_is_inherited() {
    let s = scratch();
    let tmp = s.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // A shell opens fds 7 and 8 without close-on-exec, then runs `cmd`.
    let with_leaks = |cmd: Vec<String>| {
        let out = Command::new("sh")
            .arg("-c")
            .arg("exec 7</dev/null 8>/dev/null; exec \"$@\"")
            .arg("sh")
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    // Control: a plain program sees them (and whatever else the test
    // harness leaves open, e.g. a jobserver's descriptors).
    let plain = with_leaks(vec![PYTHON.into(), "-c".into(), OPEN_FDS.into()]);
    assert!(plain.starts_with("[7, 8"), "{plain}");

    let mut cmd = vec![JAIL_RUN.to_owned()];
    cmd.extend(jail_run_args(&tmp));
    cmd.extend(["--".into(), PYTHON.into(), "-c".into(), OPEN_FDS.into()]);
    assert_eq!(with_leaks(cmd), "[]\n");
}

#[tokio::test]
async fn signals_do_not_leave_the_jail() {
    // A process outside the jail that must survive.
    let mut outsider = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = outsider.id();
    let code = format!(
        "import os, signal\n\
         for target in ({pid}, -1):\n\
         \x20   try:\n\
         \x20       os.kill(target, signal.SIGKILL); print('sent')\n\
         \x20   except OSError as e:\n\
         \x20       print('errno:%d' % e.errno)\n"
    );
    let s = scratch();
    let r = run(&python(s.path(), &code)).await;
    // The outsider's pid does not exist in the jail's pid namespace (ESRCH);
    // kill(-1) finds nothing but pid 1 itself, which it skips (ESRCH).
    assert_eq!(r.stdout, "errno:3\nerrno:3\n", "{r:?}");
    assert!(
        outsider.try_wait().unwrap().is_none(),
        "the outsider was killed"
    );
    // Control: the same signal from outside the jail does kill it.
    assert_eq!(crate::plain_python(&code.replace(", -1", ",")), "sent\n");
    assert!(outsider.wait().unwrap().signal() == Some(libc::SIGKILL));
}

#[tokio::test]
async fn the_program_leads_its_own_session_without_a_terminal() {
    let code = "import os; print(os.getsid(0) == os.getpid(), os.getpid())";
    let s = scratch();
    let r = run(&python(s.path(), code)).await;
    // pid 1 of its namespace, leader of its own session.
    assert_eq!(r.stdout, "True 1\n", "{r:?}");
}

/// Jails started at the same time each get their own namespaces, cgroups
/// and private /tmp, and all finish (the spawner thread serialises only the
/// forks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jails_are_independent() {
    const JAILS: usize = 8;
    let s = scratch();
    let mut tasks = Vec::new();
    for i in 0..JAILS {
        let dir = s.path().join(format!("j{i}"));
        std::fs::create_dir(&dir).unwrap();
        tasks.push(tokio::spawn(async move {
            let code = format!(
                "import os\n\
                 open('/tmp/mine', 'w').write('{i}')\n\
                 print(os.getpid(), os.listdir('/tmp'), open('/tmp/mine').read())\n"
            );
            run(&python(&dir, &code)).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let r = task.await.unwrap();
        assert_eq!(r.stdout, format!("1 ['mine'] {i}\n"), "{r:?}");
    }
}
