//! Damage that must not go unnoticed (issue 14, part 2), through the real
//! `lion` binary:
//!
//! - a home that lost its log — `lion.db` truncated to nothing, or deleted
//!   beside the files an earlier lion left — is never taken for a new home;
//! - a log that `HEAD` says is missing committed events (a `-wal` deleted
//!   after a crash) or was rewritten, a `HEAD` that is not a head, and a
//!   stored hash that is not a hash are refused by every command that opens
//!   the home for writing, with exit code 3 and one line naming the file;
//! - `events verify` and `replay` change no file of the home, byte for byte,
//!   whatever state it is in: healthy, crashed with its WAL, damaged, or
//!   written by an older lion (no migration).
//!
//! Every refusal is checked to leave the home exactly as it was.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use support::*;

/// Commands that open the home for writing (or read through the writable
/// store), checked on every damaged home.
const WRITERS: &[&[&str]] = &[&["create-element"], &["list-elements"], &["events", "list"]];

/// Commands that check a home and must change none of its files.
const CHECKS: &[&[&str]] = &[&["events", "verify"], &["replay"]];

/// Every entry under `dir`, by path: a file's bytes, or what else it is
/// (a directory, a socket left by a kernel), so that nothing created,
/// removed or changed goes unseen.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read the home") {
        let path = entry.expect("directory entry").path();
        let kind = std::fs::symlink_metadata(&path).expect("stat").file_type();
        if kind.is_file() {
            out.insert(path.clone(), Some(std::fs::read(&path).expect("read")));
        } else {
            if kind.is_dir() {
                out.extend(tree(&path));
            }
            out.insert(path, None);
        }
    }
    out
}

/// Asserts the home holds exactly what it held (see [`tree`]).
#[track_caller]
fn assert_same(home: &Path, before: &BTreeMap<PathBuf, Option<Vec<u8>>>) {
    let after = tree(home);
    let names = |t: &BTreeMap<PathBuf, Option<Vec<u8>>>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&after), names(before), "the home's files changed");
    for (path, bytes) in before {
        assert!(after[path] == *bytes, "{} changed", path.display());
    }
}

/// Runs `args` on `home` and returns the one `error:` line, asserting exit
/// code `code` and that nothing in the home changed.
#[track_caller]
fn refused(home: &Path, args: &[&str], code: i32) -> String {
    let before = tree(home);
    let out = lion_run(home, args);
    let line = out.error_line(code).to_owned();
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_same(home, &before);
    line
}

/// A home with `n` elements, closed (no WAL left).
fn closed_home(dir: &Path, n: usize) -> PathBuf {
    let home = dir.join("home");
    fill(&home, n);
    assert!(
        !home.join("lion.db-wal").exists(),
        "the store must checkpoint and remove its WAL on close"
    );
    home
}

mod lost_log {
    use super::*;

    /// Known bug (fixed): an empty `lion.db` was taken for a new home; writes
    /// succeeded on an empty log, overwrote the old HEAD once the new log
    /// passed it, and `events verify` then said ok.
    #[test]
    fn a_lion_db_truncated_to_zero_bytes_is_refused_by_every_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = closed_home(dir.path(), 3);
        std::fs::File::options()
            .write(true)
            .open(db_path(&home))
            .expect("open lion.db")
            .set_len(0)
            .expect("truncate lion.db");

        for args in WRITERS.iter().chain(CHECKS) {
            let line = refused(&home, args, 3);
            assert!(
                line.contains(&db_path(&home).display().to_string()),
                "{args:?}: {line}"
            );
            assert!(line.contains("empty (0 bytes)"), "{args:?}: {line}");
            assert!(line.contains("records 3 events"), "{args:?}: {line}");
        }
        // Nothing was written, however many times writes were tried.
        assert_eq!(std::fs::metadata(db_path(&home)).expect("stat").len(), 0);
    }

    #[test]
    fn a_deleted_lion_db_beside_the_files_of_an_earlier_kernel_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = closed_home(dir.path(), 2);
        drop(Kernel::start(&home, &[])); // killed: leaves its lease and socket
        for file in ["lion.db", "lion.db-wal", "lion.db-shm", "HEAD"] {
            let path = home.join(file);
            if path.exists() {
                std::fs::remove_file(path).expect("remove");
            }
        }
        assert!(
            home.join("kernel.lock").exists(),
            "the kernel left no lease"
        );

        for args in WRITERS.iter().chain(CHECKS) {
            let line = refused(&home, args, 3);
            assert!(line.contains("is missing"), "{args:?}: {line}");
            assert!(line.contains("left by an earlier lion"), "{args:?}: {line}");
            assert!(
                line.contains(&home.join("kernel.").display().to_string()),
                "{line}"
            );
        }
    }

    #[test]
    fn a_lion_db_replaced_by_an_empty_sqlite_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = closed_home(dir.path(), 2);
        std::fs::remove_file(db_path(&home)).expect("remove lion.db");
        // An SQLite file with a header and no tables, as `sqlite3 lion.db
        // 'PRAGMA user_version = 0'` or a restore tool could leave.
        let conn = open_db(&home);
        conn.execute_batch("CREATE TABLE t (x); DROP TABLE t; VACUUM;")
            .expect("write an empty database");
        drop(conn);
        assert!(std::fs::metadata(db_path(&home)).expect("stat").len() > 0);

        for args in WRITERS.iter().chain(CHECKS) {
            let line = refused(&home, args, 3);
            assert!(line.contains("holds no log"), "{args:?}: {line}");
            assert!(line.contains("records 2 events"), "{args:?}: {line}");
        }
    }

    #[test]
    fn a_new_home_holding_only_an_operators_config_file_starts_a_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("mkdir");
        std::fs::write(home.join("config.toml"), "[llm]\n").expect("write config");
        fill(&home, 2);
        lion_run(&home, &["events", "verify"]).success();
    }
}

mod lost_wal {
    use super::*;

    /// Kills the child if the test fails before it is killed on purpose.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Guard against a hung test run, not a performance threshold.
    const HANG_GUARD: Duration = Duration::from_secs(120);

    /// A home whose newest committed events are only in its WAL, as a crash
    /// leaves it: 3 events in `lion.db`, then 2 more committed by other
    /// processes while a `lion events tail` held the database open (so no
    /// one copied the WAL back), then the tail is SIGKILLed.
    fn crashed_home(dir: &Path) -> PathBuf {
        let home = closed_home(dir, 3);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_lion"))
            .arg("--home")
            .arg(&home)
            .args(["events", "tail", "--from", "1"])
            .env_remove("RUST_LOG")
            .env_remove("LION_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lion events tail");
        let mut tail = KillOnDrop(child);
        let stdout = tail.0.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let wait_for_lines = |n: usize| {
            for _ in 0..n {
                rx.recv_timeout(HANG_GUARD)
                    .expect("events tail printed nothing");
            }
        };
        // Three lines printed: the tail has the store open.
        wait_for_lines(3);
        fill_more(&home, 2);
        wait_for_lines(2);
        drop(tail); // SIGKILL
        let wal = std::fs::metadata(home.join("lion.db-wal")).map_or(0, |m| m.len());
        assert!(
            wal > 0,
            "the crash left no WAL: the scenario did not happen"
        );
        home
    }

    /// Creates `n` more elements, one process each.
    fn fill_more(home: &Path, n: usize) {
        for i in 0..n {
            create(home, &format!(r#"{{"more":{i}}}"#), None);
        }
    }

    #[test]
    fn verify_and_replay_read_a_crashed_homes_wal_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = crashed_home(dir.path());
        let before = tree(&home);
        let out = lion_run(&home, &["events", "verify", "--json"]).success();
        assert_eq!(out.json()["events"], json!(5), "{out:?}");
        assert_same(&home, &before);
        let out = lion_run(&home, &["replay", "--json"]).success();
        assert_eq!(out.json()["events"], json!(5), "{out:?}");
        assert_same(&home, &before);
    }

    /// Known bug (fixed): with the WAL of a crashed home deleted, `verify`
    /// reported the lost events but writes went ahead without a word.
    #[test]
    fn a_wal_deleted_after_a_crash_is_refused_by_writes_as_by_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = crashed_home(dir.path());
        std::fs::remove_file(home.join("lion.db-wal")).expect("delete the WAL");

        for args in WRITERS {
            let line = refused(&home, args, 3);
            assert!(
                line.contains(&db_path(&home).display().to_string()),
                "{args:?}: {line}"
            );
            assert!(line.contains("ends at seq 3"), "{args:?}: {line}");
            assert!(line.contains("records seq 5"), "{args:?}: {line}");
            assert!(
                line.contains("committed events are missing"),
                "{args:?}: {line}"
            );
        }
        for args in CHECKS {
            let line = refused(&home, args, 3);
            assert!(line.contains("truncated"), "{args:?}: {line}");
            assert!(line.contains("HEAD records seq 5"), "{args:?}: {line}");
        }
    }
}

mod bad_head {
    use super::*;

    /// Known bug (fixed): a garbage `HEAD` was silently rewritten by the
    /// next write.
    #[test]
    fn a_garbage_head_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = closed_home(dir.path(), 2);
        std::fs::write(home.join("HEAD"), "garbage\n").expect("write HEAD");

        for args in WRITERS.iter().chain(CHECKS) {
            let line = refused(&home, args, 3);
            assert!(
                line.contains(&home.join("HEAD").display().to_string()),
                "{line}"
            );
            assert!(line.contains("HEAD is not"), "{args:?}: {line}");
        }
        assert_eq!(
            std::fs::read_to_string(home.join("HEAD")).expect("read HEAD"),
            "garbage\n"
        );
    }

    #[test]
    fn a_head_recording_another_record_is_refused_as_a_rewritten_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = closed_home(dir.path(), 3);
        let forged = format!("2 {}\n", "ab".repeat(32));
        std::fs::write(home.join("HEAD"), &forged).expect("write HEAD");

        for args in WRITERS {
            let line = refused(&home, args, 3);
            assert!(line.contains("record at seq 2"), "{args:?}: {line}");
            assert!(line.contains("rewritten"), "{args:?}: {line}");
        }
        let line = refused(&home, &["events", "verify"], 3);
        assert!(line.contains("HEAD mismatch at seq 2"), "{line}");
    }

    /// Known bug (fixed): the newest record's hash, if malformed, was read
    /// as zeros, and the next append chained onto that.
    #[test]
    fn a_malformed_stored_hash_is_refused_naming_the_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = closed_home(dir.path(), 3);
        let conn = tamper(&home);
        conn.execute("UPDATE events SET hash = x'0102' WHERE seq = 3", [])
            .expect("break the newest hash");
        drop(conn);

        for args in WRITERS {
            let line = refused(&home, args, 3);
            assert!(
                line.contains(&db_path(&home).display().to_string()),
                "{line}"
            );
            assert!(
                line.contains("hash of the newest record (seq 3) is 2 bytes"),
                "{args:?}: {line}"
            );
        }
        let line = refused(&home, &["events", "verify"], 3);
        assert!(line.contains("seq 3"), "{line}");
    }
}

mod checks_change_nothing {
    use super::*;

    #[test]
    fn verify_and_replay_of_a_healthy_home_create_no_wal_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = closed_home(dir.path(), 3);
        let before = tree(&home);
        for args in CHECKS {
            lion_run(&home, args).success();
            assert_same(&home, &before);
        }
        assert!(!home.join("lion.db-wal").exists());
        assert!(!home.join("lion.db-shm").exists());
    }

    #[test]
    fn verify_and_replay_of_a_missing_home_report_an_empty_log_and_create_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let out = lion_run(&home, &["events", "verify", "--json"]).success();
        assert_eq!(out.json()["events"], json!(0), "{out:?}");
        lion_run(&home, &["replay"]).success();
        assert!(!home.exists(), "a check created the home");
    }

    /// Known bug (fixed): `verify` opened the home for writing, so it
    /// migrated a home written by an older lion.
    #[test]
    fn verify_and_replay_of_a_home_of_the_first_release_migrate_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("mkdir");
        let golden =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../agentic_store/tests/fixtures/golden_v1");
        for file in ["lion.db", "HEAD"] {
            std::fs::copy(golden.join(file), home.join(file)).expect("copy the golden home");
        }
        let before = tree(&home);
        let out = lion_run(&home, &["events", "verify", "--json"]).success();
        assert_eq!(out.json()["events"], json!(4), "{out:?}");
        assert_same(&home, &before);
        let out = lion_run(&home, &["replay", "--json"]).success();
        assert_eq!(out.json()["ok"], json!(true), "{out:?}");
        assert_same(&home, &before);
    }
}
