//! The seccomp policy against real programs: Node 20 and Python 3.11 start
//! and do real work; dangerous calls kill the process (the report says
//! seccomp); probed calls answer `ENOSYS`; an allowed call made the same way
//! works (the control).

use agentic_jail::ExitCause;

use crate::{plain_python, python, run, scratch, spec, syscall_code};

/// The test programs that do real work in Node and Python.
fn progs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jail/progs")
}

fn which(name: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(!path.is_empty(), "{name} is not installed");
    std::fs::canonicalize(path).unwrap().display().to_string()
}

#[tokio::test]
async fn node_starts_and_does_real_work_in_the_jail() {
    let s = scratch();
    let node = which("node");
    let script = progs().join("work.js").display().to_string();
    let mut spec = spec(s.path(), &node, &[&script]);
    spec.read_only.push(progs());
    let r = run(&spec).await;
    assert_eq!(r.stdout, "node ok\n", "{r:?}");
    assert_eq!(r.report.code, Some(0));
}

#[tokio::test]
async fn python_starts_and_does_real_work_in_the_jail() {
    let s = scratch();
    let script = progs().join("work.py").display().to_string();
    let mut spec = spec(s.path(), crate::PYTHON, &[&script]);
    spec.read_only.push(progs());
    let r = run(&spec).await;
    assert_eq!(r.stdout, "python ok\n", "{r:?}");
    assert_eq!(r.report.code, Some(0));
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn dangerous_syscalls_kill_the_process_and_the_report_says_seccomp() {
    // (name, x86_64 number, arguments)
    let cases = [
        ("ptrace", 101, "0, 0, 0, 0"), // PTRACE_TRACEME
        ("bpf", 321, "0, 0, 0"),
        ("keyctl", 250, "0, 0"),
        ("unshare", 272, "0x10000000"), // CLONE_NEWUSER
        ("mount", 165, "0, 0, 0, 0, 0"),
        ("setns", 308, "0, 0"),
        ("kexec_load", 246, "0, 0, 0, 0"),
        ("process_vm_readv", 310, "1, 0, 0, 0, 0, 0"),
        // clone with a namespace flag (CLONE_NEWNET | SIGCHLD).
        ("clone(CLONE_NEWNET)", 56, "0x40000011, 0, 0, 0, 0"),
    ];
    let s = scratch();
    for (name, nr, args) in cases {
        let r = run(&python(s.path(), &syscall_code(nr, args))).await;
        assert_eq!(r.report.signal, Some(libc::SIGSYS), "{name}: {r:?}");
        assert_eq!(r.report.cause, Some(ExitCause::Seccomp), "{name}");
        assert_eq!(r.stdout, "", "{name} returned instead of killing");
    }
    // Control: an allowed call made the same way (getpid) returns.
    let r = run(&python(s.path(), &syscall_code(39, ""))).await;
    assert_eq!(r.stdout, "0\n", "{r:?}");
    assert_eq!(r.report.cause, None);
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn probed_syscalls_answer_enosys() {
    let s = scratch();
    // io_uring_setup(1, NULL), clone3(NULL, 0), pidfd_open(1, 0)
    for (name, nr, args) in [
        ("io_uring_setup", 425, "1, 0"),
        ("clone3", 435, "0, 0"),
        ("pidfd_open", 434, "1, 0"),
    ] {
        let r = run(&python(s.path(), &syscall_code(nr, args))).await;
        assert_eq!(r.stdout, "38\n", "{name}: {r:?}");
        assert_eq!(r.report.code, Some(0));
        // Control: outside the jail the kernel has the call (another answer).
        assert_ne!(plain_python(&syscall_code(nr, args)), "38\n", "{name}");
    }
}

/// As an unprivileged lion no cgroup can be made: Node and Python must still
/// start and work under the fallback limits' defaults (address space).
#[test]
fn node_and_python_work_as_nobody_with_default_limits() {
    let s = scratch();
    let tmp = s.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let node = which("node");
    for (program, script, expect) in [
        (node.as_str(), "work.js", "node ok\n"),
        (crate::PYTHON, "work.py", "python ok\n"),
    ] {
        let mut args = crate::jail_run_args(&tmp);
        let progs = progs().display().to_string();
        let script = progs.clone() + "/" + script;
        args.extend(["--ro".into(), progs, "--".into(), program.into(), script]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = crate::jail_run_as_nobody(&args);
        assert_eq!(r.stdout, expect, "{}", r.stderr);
        assert_eq!(r.report["code"], 0);
    }
}

/// Root inside the jail holds no capability: a raw socket (CAP_NET_RAW,
/// allowed by seccomp) is refused. Control: lion's own user (root in these
/// tests) opens one outside the jail.
#[tokio::test]
async fn root_inside_the_jail_has_no_capabilities() {
    let code = "import socket\n\
                try:\n\
                \x20   socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw')\n\
                except OSError as e:\n\
                \x20   print('errno:%d' % e.errno)\n";
    let s = scratch();
    let r = run(&python(s.path(), code)).await;
    assert_eq!(r.stdout, "errno:1\n", "{r:?}");
    if plain_python("import os; print(os.geteuid())") == "0\n" {
        assert_eq!(plain_python(code), "raw\n");
    }
}
