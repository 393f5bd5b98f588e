//! Filesystem denied by default: reads and writes outside the grants fail
//! with `EACCES` (Landlock), `..` and symlinks do not escape, `/tmp` is the
//! private directory; the same actions inside a grant succeed.

use std::os::unix::fs::PermissionsExt;

use crate::{plain_python, python, run, scratch};

/// Python printing, for each path, `ok:<content>` or `errno:<n>`.
fn read_each(paths: &[&std::path::Path]) -> String {
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!(
        "for p in [{}]:\n\
         \x20   try:\n\
         \x20       print('ok:' + open(p).read().strip())\n\
         \x20   except OSError as e:\n\
         \x20       print('errno:%d' % e.errno)\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn reading_a_world_readable_file_outside_the_grant_fails_inside_works() {
    let s = scratch();
    let granted = s.path().join("granted");
    let outside = s.path().join("outside");
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(granted.join("in.txt"), "inside").unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::fs::set_permissions(
        outside.join("secret.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let code = read_each(&[&granted.join("in.txt"), &outside.join("secret.txt")]);

    // Control: outside a jail both files are readable.
    assert_eq!(plain_python(&code), "ok:inside\nok:secret\n");

    let mut spec = python(s.path(), &code);
    spec.read_write.push(granted.clone());
    let r = run(&spec).await;
    assert_eq!(r.stdout, "ok:inside\nerrno:13\n", "{}", r.stderr);
    assert_eq!(r.report.code, Some(0));
}

#[tokio::test]
async fn read_only_grants_allow_reading_not_writing_and_writes_outside_fail() {
    let s = scratch();
    let ro = s.path().join("ro");
    let rw = s.path().join("rw");
    let outside = s.path().join("outside");
    for d in [&ro, &rw, &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(ro.join("r.txt"), "readable").unwrap();
    let code = format!(
        "print(open({ro:?}).read())\n\
         for p in [{rw:?}, {ro_w:?}, {out:?}]:\n\
         \x20   try:\n\
         \x20       open(p, 'w').write('x'); print('wrote')\n\
         \x20   except OSError as e:\n\
         \x20       print('errno:%d' % e.errno)\n",
        ro = ro.join("r.txt").display().to_string(),
        rw = rw.join("w.txt").display().to_string(),
        ro_w = ro.join("w.txt").display().to_string(),
        out = outside.join("w.txt").display().to_string(),
    );
    let mut spec = python(s.path(), &code);
    spec.read_only.push(ro.clone());
    spec.read_write.push(rw.clone());
    let r = run(&spec).await;
    // EROFS: outside the read-write grants every mount is read-only, which
    // answers before Landlock's write rules would (EACCES).
    assert_eq!(
        r.stdout, "readable\nwrote\nerrno:30\nerrno:30\n",
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(rw.join("w.txt")).unwrap(), "x");
    assert!(!ro.join("w.txt").exists() && !outside.join("w.txt").exists());
}

#[tokio::test]
async fn dotdot_and_symlink_escapes_fail_while_a_symlink_within_the_grant_works() {
    let s = scratch();
    let granted = s.path().join("granted");
    let outside = s.path().join("outside");
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::fs::write(granted.join("mine.txt"), "mine").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), granted.join("escape")).unwrap();
    std::os::unix::fs::symlink(granted.join("mine.txt"), granted.join("inner")).unwrap();
    let dotdot = granted.join("../outside/secret.txt");
    let code = read_each(&[&granted.join("inner"), &dotdot, &granted.join("escape")]);

    assert_eq!(plain_python(&code), "ok:mine\nok:secret\nok:secret\n");

    let mut spec = python(s.path(), &code);
    spec.read_write.push(granted.clone());
    let r = run(&spec).await;
    assert_eq!(r.stdout, "ok:mine\nerrno:13\nerrno:13\n", "{}", r.stderr);
}

#[tokio::test]
async fn tmp_is_the_private_directory_not_the_hosts() {
    let s = scratch();
    // A file in the host's real /tmp, which the jail must not see.
    let host_tmp_file = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let name = host_tmp_file
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let code = format!(
        "import os\n\
         print(os.path.exists('/tmp/{name}'))\n\
         open('/tmp/made-inside', 'w').write('hello')\n\
         print(sorted(os.listdir('/tmp')))\n"
    );
    // Control: outside the jail the host file is there.
    assert!(plain_python(&code).starts_with("True\n"));
    std::fs::remove_file("/tmp/made-inside").ok();

    let spec = python(s.path(), &code);
    let r = run(&spec).await;
    assert_eq!(r.stdout, "False\n['made-inside']\n", "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(spec.private_tmp.join("made-inside")).unwrap(),
        "hello"
    );
}

/// `/proc` inside is a procfs of the jail's own pid namespace, read-only:
/// lion's entries do not exist there, the program's own do (`/proc/self`
/// works, Node's `process.memoryUsage()` needs it), writes fail.
#[tokio::test]
async fn proc_shows_the_jail_only() {
    let environ = format!("/proc/{}/environ", std::process::id());
    let code = format!(
        "import os\n\
         try:\n\
         \x20   open({environ:?}, 'rb').read(); print('read')\n\
         except OSError as e:\n\
         \x20   print('errno:%d' % e.errno)\n\
         print(open('/proc/self/stat').read().split()[0])\n\
         print(all(int(p) < 100 for p in os.listdir('/proc') if p.isdigit()))\n\
         try:\n\
         \x20   open('/proc/self/comm', 'w').write('x'); print('wrote')\n\
         except OSError as e:\n\
         \x20   print('errno:%d' % e.errno)\n"
    );
    // Control: outside the jail lion's environ is readable.
    assert!(plain_python(&code).starts_with("read\n"));
    let s = scratch();
    let r = run(&python(s.path(), &code)).await;
    // ENOENT: lion's pid does not exist in the jail's pid namespace; pid 1
    // is the program; every pid is the jail's; /proc is read-only.
    assert_eq!(r.stdout, "errno:2\n1\nTrue\nerrno:30\n", "{r:?}");
}

/// Landlock does not govern chmod, chown, utimes or extended attributes; the
/// jail's read-only mounts do. Outside the read-write grants (and in a
/// read-only grant) each fails with `EROFS`; inside a read-write grant each
/// works (the control).
#[tokio::test]
async fn metadata_changes_outside_the_read_write_grants_fail() {
    let s = scratch();
    let rw = s.path().join("rw");
    let ro = s.path().join("ro");
    let outside = s.path().join("outside");
    for d in [&rw, &ro, &outside] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("f"), "x").unwrap();
        std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let code = format!(
        "import os\n\
         for d in [{rw:?}, {ro:?}, {out:?}]:\n\
         \x20   f = d + '/f'\n\
         \x20   res = []\n\
         \x20   for op in (lambda: os.chmod(f, 0o666), lambda: os.utime(f, (0, 0)),\n\
         \x20              lambda: os.chown(f, 0, 0), lambda: os.setxattr(f, 'user.k', b'v')):\n\
         \x20       try:\n\
         \x20           op(); res.append('ok')\n\
         \x20       except OSError as e:\n\
         \x20           res.append(str(e.errno))\n\
         \x20   print(' '.join(res))\n",
        rw = rw.display().to_string(),
        ro = ro.display().to_string(),
        out = outside.display().to_string(),
    );
    let mut spec = python(s.path(), &code);
    spec.read_write.push(rw.clone());
    spec.read_only.push(ro.clone());
    let r = run(&spec).await;
    assert_eq!(r.stdout, "ok ok ok ok\n30 30 30 30\n30 30 30 30\n", "{r:?}");
    let mode =
        |d: &std::path::Path| std::fs::metadata(d.join("f")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&rw), 0o666);
    assert_eq!(mode(&ro), 0o600);
    assert_eq!(mode(&outside), 0o600);
}
