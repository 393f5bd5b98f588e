//! Fail closed, without a backdoor in the product: the test runs `jail-run`
//! under a seccomp filter of its own that makes one needed system call fail
//! (as a container or an AppArmor restriction would), and asserts the
//! one-line refusal naming what is missing and that the program never ran.
//! The control: without the filter the same command is supported and runs.

// The test applies its filter in `pre_exec`, which is unsafe by signature.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

use crate::{JAIL_RUN, jail_run_args, scratch};

#[cfg(target_arch = "x86_64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::aarch64;

/// A filter failing `syscall` with `errno`, allowing everything else.
fn failing(syscall: libc::c_long, errno: i32) -> BpfProgram {
    let rules = [(syscall, vec![])].into_iter().collect();
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        ARCH,
    )
    .unwrap()
    .try_into()
    .unwrap()
}

/// Runs `jail-run args`, under `filter` when one is given.
fn jail_run(filter: Option<BpfProgram>, args: &[String]) -> Output {
    let mut cmd = Command::new(JAIL_RUN);
    cmd.args(args).stdin(Stdio::null());
    if let Some(prog) = filter {
        // SAFETY: apply_filter only makes prctl and seccomp system calls on
        // the program prepared before the fork (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || {
                seccompiler::apply_filter(&prog)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
            });
        }
    }
    cmd.output().unwrap()
}

/// `jail-run` arguments for a program that would create `marker`.
fn touching(marker: &std::path::Path, tmp: &std::path::Path) -> Vec<String> {
    let mut args = jail_run_args(tmp);
    let dir = marker.parent().unwrap().display().to_string();
    args.extend(["--rw".into(), dir]);
    args.extend([
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        format!("echo ran > {}", marker.display()),
    ]);
    args
}

fn assert_refused(out: &Output, names: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("refusing") && stderr.contains(names),
        "names {names}: {stderr}"
    );
}

#[test]
fn supported_without_a_filter_and_the_program_runs() {
    let s = scratch();
    let out = jail_run(None, &["--support".into()]);
    assert!(out.status.success(), "{out:?}");
    let marker = s.path().join("rw/marker");
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::create_dir_all(s.path().join("tmp")).unwrap();
    let out = jail_run(None, &touching(&marker, &s.path().join("tmp")));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
}

#[test]
fn refused_when_user_namespaces_are_denied() {
    check_refusal(failing(libc::SYS_unshare, libc::EPERM), "user namespaces");
}

#[test]
fn refused_when_landlock_is_missing() {
    check_refusal(
        failing(libc::SYS_landlock_create_ruleset, libc::ENOSYS),
        "Landlock",
    );
}

#[test]
fn refused_when_seccomp_is_denied() {
    check_refusal(failing(libc::SYS_seccomp, libc::EPERM), "seccomp");
}

fn check_refusal(filter: BpfProgram, names: &str) {
    let out = jail_run(Some(filter.clone()), &["--support".into()]);
    assert_refused(&out, names);

    let s = scratch();
    let marker = s.path().join("rw/marker");
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::create_dir_all(s.path().join("tmp")).unwrap();
    let out = jail_run(Some(filter), &touching(&marker, &s.path().join("tmp")));
    assert_refused(&out, names);
    assert!(
        !marker.exists(),
        "the program ran although the jail was refused"
    );
}

/// As root, the process limit needs a pids cgroup (`RLIMIT_NPROC` does not
/// bind root): when none can be made (here `mkdir` fails under the test's
/// filter, as on a read-only cgroup mount) the jail is refused.
#[test]
fn refused_as_root_when_no_pids_cgroup_can_be_made() {
    if !std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
    {
        return; // Only root takes this path; as nobody RLIMIT_NPROC holds.
    }
    let rules = [libc::SYS_mkdir, libc::SYS_mkdirat]
        .into_iter()
        .map(|s| (s, vec![]))
        .collect();
    let filter: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        ARCH,
    )
    .unwrap()
    .try_into()
    .unwrap();
    let s = scratch();
    let marker = s.path().join("rw/marker");
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::create_dir_all(s.path().join("tmp")).unwrap();
    let out = jail_run(Some(filter), &touching(&marker, &s.path().join("tmp")));
    assert_refused(&out, "no pids cgroup");
    assert!(!marker.exists(), "the program ran without a process limit");
}
