//! Bad input and failed setup give one-line errors naming the problem, and
//! nothing runs; the jail has its own host name.

use agentic_jail::{JailError, spawn};

use crate::{python, run, scratch, spec};

#[tokio::test]
async fn a_missing_program_is_named() {
    let s = scratch();
    let err = spawn(&spec(s.path(), "/usr/bin/no-such-program", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, JailError::Exec { .. }), "{err:?}");
    let msg = err.to_string();
    assert_eq!(
        msg,
        "cannot execute /usr/bin/no-such-program: No such file or directory (os error 2)"
    );
}

#[tokio::test]
async fn a_failed_setup_step_is_named() {
    let s = scratch();
    let mut spec = spec(s.path(), "/bin/true", &[]);
    spec.cwd = "/usr/no-such-dir".into();
    let err = spawn(&spec).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "jail setup failed while changing to the working directory: \
         No such file or directory (os error 2)"
    );
    // Control: an existing working directory works.
    spec.cwd = "/usr".into();
    assert_eq!(run(&spec).await.report.code, Some(0));
}

#[tokio::test]
async fn specs_outside_the_grants_are_refused_before_anything_starts() {
    let s = scratch();
    let mut outside_cwd = spec(s.path(), "/bin/true", &[]);
    outside_cwd.cwd = s.path().to_owned();
    let err = spawn(&outside_cwd).await.unwrap_err();
    assert!(
        err.to_string().contains("is not beneath a granted path"),
        "{err}"
    );

    let mut relative = spec(s.path(), "/bin/true", &[]);
    relative.read_only.push("usr".into());
    let err = spawn(&relative).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid jail spec: granted path usr is not absolute"
    );
}

#[tokio::test]
async fn the_jail_has_its_own_host_name() {
    let code = "import os; print(os.uname().nodename)";
    assert_ne!(crate::plain_python(code), "lion-jail\n");
    let s = scratch();
    let r = run(&python(s.path(), code)).await;
    assert_eq!(r.stdout, "lion-jail\n", "{r:?}");
}
