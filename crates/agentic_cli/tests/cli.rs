//! End-to-end tests of the `lion` binary: every test runs the real binary,
//! as separate processes, on a temporary home, and checks what it prints,
//! how it exits and what it leaves on disk.
//!
//! - [`elements`] — creating, listing and showing elements; choosing the home.
//! - [`events`] — listing, following and verifying the log; replay.
//! - [`tampering`] — a log or projection edited behind lion's back is caught.
//! - [`bad_input`] — refused input and damaged or busy stores: one `error:`
//!   line, a non-zero exit, and nothing changed.
//! - [`logging`] — diagnostic logs on stderr carry the correlation id.
//! - [`bench`] — `bench store --quick` smoke test.
//! - [`help`] — `--help` at every level.
//! - [`workflows`] — checking workflow definitions.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::*;

mod elements {
    use super::*;

    #[test]
    fn create_element_prints_a_uuid_that_a_later_list_elements_process_shows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");

        let created = run(lion_at(&home).args([
            "create-element",
            "--metadata",
            r#"{"name":"ada"}"#,
            "--content",
            "hi",
        ]))
        .success();
        let id = parse_id(&created);

        let listed = elements(&home);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["id"], json!(id.to_string()));
        assert_eq!(listed[0]["metadata"], json!({"name": "ada"}));
        assert_eq!(listed[0]["content"], json!("hi"));
        assert!(
            listed[0]["created_at"].as_str().is_some(),
            "created_at missing: {listed:?}"
        );
    }

    #[test]
    fn list_elements_keeps_creation_order_across_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let created = fill(&home, 5);

        let listed = elements(&home);
        let want: Vec<String> = created.iter().map(ToString::to_string).collect();
        assert_eq!(ids(&listed), want);
        for (i, e) in listed.iter().enumerate() {
            assert_eq!(e["metadata"], json!({"n": i + 1}));
            assert_eq!(e["content"], json!(format!("element {}", i + 1)));
        }
    }

    #[test]
    fn list_elements_prints_a_table_and_a_count_for_people() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let ids = fill(&home, 2);

        let table = lion_run(&home, &["list-elements"]).success();
        for id in &ids {
            assert!(table.stdout.contains(&id.to_string()), "{table:?}");
        }
        assert!(table.stdout.contains(r#"{"n":1}"#), "{table:?}");
        assert!(table.stdout.contains("2 element(s)"), "{table:?}");
    }

    #[test]
    fn create_element_with_json_prints_the_id_and_the_event_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill(&home, 1);

        let out = lion_run(&home, &["--json", "create-element"])
            .success()
            .json();
        assert_eq!(out["seq"], json!(2), "{out}");
        let id = out["id"].as_str().expect("id");
        assert_eq!(ids(&elements(&home))[1], id);
    }

    #[test]
    fn lists_page_with_limit_and_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let made: Vec<String> = fill(&home, 5).iter().map(uuid::Uuid::to_string).collect();

        // Following `next` from page to page gives every element once, in order.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut args = vec!["element", "list", "--limit", "2", "--json"];
            if let Some(cursor) = &after {
                args.extend(["--after", cursor.as_str()]);
            }
            let page = lion_run(&home, &args).success().json();
            let items = page["items"].as_array().expect("items");
            assert!(items.len() <= 2, "{page}");
            seen.extend(ids(items));
            match &page["next"] {
                Value::Null => break,
                next => after = Some(next.to_string()),
            }
        }
        assert_eq!(seen, made);

        let table = lion_run(&home, &["element", "list", "--limit", "3"]).success();
        assert!(table.stdout.contains("3 element(s)"), "{table:?}");
        assert!(
            table
                .stdout
                .contains("more: lion element list --limit 3 --after 3"),
            "{table:?}"
        );
        let last = lion_run(&home, &["task", "list", "--limit", "3", "--json"])
            .success()
            .json();
        assert_eq!(last, json!({"items": [], "next": null}));
        let refused = lion_run(&home, &["element", "list", "--limit", "0"]);
        assert_eq!(refused.code, Some(2), "{refused:?}");
    }

    #[test]
    fn element_create_list_and_show_are_the_grouped_forms_of_the_same_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");

        let first = parse_id(
            &lion_run(
                &home,
                &[
                    "element",
                    "create",
                    "--metadata",
                    r#"{"k":"v"}"#,
                    "--content",
                    "body",
                ],
            )
            .success(),
        );
        let second = create(&home, "{}", None);

        let grouped = lion_run(&home, &["element", "list", "--json"])
            .success()
            .json();
        let seed = lion_run(&home, &["list-elements", "--json"])
            .success()
            .json();
        assert_eq!(grouped, seed, "element list and list-elements differ");
        assert_eq!(
            ids(grouped.as_array().expect("array")),
            [first.to_string(), second.to_string()]
        );

        let shown = lion_run(&home, &["element", "show", &first.to_string(), "--json"])
            .success()
            .json();
        assert_eq!(shown, grouped[0]);
        assert_eq!(shown["metadata"], json!({"k": "v"}));
        assert_eq!(shown["content"], json!("body"));

        let text = lion_run(&home, &["element", "show", &first.to_string()]).success();
        assert!(
            text.stdout.contains(&format!("id:         {first}")),
            "{text:?}"
        );
        assert!(text.stdout.contains(r#""k": "v""#), "{text:?}");
        assert!(text.stdout.contains("content:    body"), "{text:?}");
    }

    #[test]
    fn lion_home_selects_the_home_when_no_home_flag_is_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("from-env");
        let elsewhere = tempfile::tempdir().expect("tempdir");

        let id = parse_id(
            &run(lion()
                .env("LION_HOME", &home)
                .current_dir(elsewhere.path())
                .args(["create-element", "--content", "via env"]))
            .success(),
        );

        assert!(db_path(&home).is_file(), "no lion.db in $LION_HOME");
        assert!(
            !elsewhere.path().join(".lion").exists(),
            "./.lion was used although LION_HOME was set"
        );
        // The same home, named with --home this time.
        assert_eq!(ids(&elements(&home)), [id.to_string()]);
        let via_env = run(lion()
            .env("LION_HOME", &home)
            .args(["list-elements", "--json"]))
        .success()
        .json();
        assert_eq!(via_env[0]["content"], json!("via env"));
    }

    #[test]
    fn the_home_flag_wins_over_lion_home() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag_home = dir.path().join("flag");
        let env_home = dir.path().join("env");

        run(lion_at(&flag_home)
            .env("LION_HOME", &env_home)
            .arg("create-element"))
        .success();

        assert!(db_path(&flag_home).is_file());
        assert!(!env_home.exists(), "LION_HOME was used despite --home");
    }

    #[test]
    fn without_home_flag_or_lion_home_the_home_is_dot_lion_in_the_working_directory() {
        let cwd = tempfile::tempdir().expect("tempdir");

        let id = parse_id(
            &run(lion().current_dir(cwd.path()).args([
                "create-element",
                "--metadata",
                r#"{"where":"cwd"}"#,
            ]))
            .success(),
        );

        assert!(cwd.path().join(".lion").join("lion.db").is_file());
        let listed = run(lion()
            .current_dir(cwd.path())
            .args(["list-elements", "--json"]))
        .success()
        .json();
        assert_eq!(ids(listed.as_array().expect("array")), [id.to_string()]);
        assert_eq!(
            elements(&cwd.path().join(".lion"))[0]["id"],
            listed[0]["id"]
        );
    }
}

mod events {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn events_list_json_prints_one_object_per_event_numbered_from_one_with_the_payload_decoded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let ids = fill(&home, 3);

        let events = events(&home);
        assert_eq!(events.len(), 3, "{events:?}");
        for (i, (e, id)) in events.iter().zip(&ids).enumerate() {
            assert_eq!(e["seq"], json!(i + 1), "{e}");
            assert_eq!(e["stream"], json!(format!("element:{id}")), "{e}");
            assert_eq!(e["stream_version"], json!(1), "{e}");
            let element = &e["event"]["element_created"]["element"];
            assert_eq!(element["id"], json!(id.to_string()), "{e}");
            assert_eq!(element["metadata"], json!({"n": i + 1}), "{e}");
            assert_eq!(
                element["content"],
                json!(format!("element {}", i + 1)),
                "{e}"
            );
        }
        // The chain links each record to the one before.
        assert_eq!(events[0]["prev_hash"], json!("0".repeat(64)));
        for pair in events.windows(2) {
            assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
        }
    }

    #[test]
    fn events_list_from_starts_at_that_seq_and_limit_caps_the_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill(&home, 4);

        let seqs = |run: Run| -> Vec<u64> {
            run.success()
                .json_lines()
                .iter()
                .map(|e| e["seq"].as_u64().expect("seq"))
                .collect()
        };
        assert_eq!(
            seqs(lion_run(
                &home,
                &["events", "list", "--from", "2", "--json"]
            )),
            [2, 3, 4]
        );
        assert_eq!(
            seqs(lion_run(
                &home,
                &["events", "list", "--from", "2", "--limit", "2", "--json"]
            )),
            [2, 3]
        );
        assert_eq!(
            seqs(lion_run(
                &home,
                &["events", "list", "--from", "5", "--json"]
            )),
            [] as [u64; 0]
        );

        let table = lion_run(&home, &["events", "list", "--from", "2"]).success();
        assert!(table.stdout.contains("element_created"), "{table:?}");
        assert!(table.stdout.contains("3 event(s)"), "{table:?}");
    }

    #[test]
    fn events_verify_succeeds_on_an_intact_log_and_counts_its_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill(&home, 3);

        let out = lion_run(&home, &["events", "verify"]).success();
        assert!(
            out.stdout.contains("ok: 3 event(s), hash chain intact"),
            "{out:?}"
        );
        assert!(out.stdout.contains("HEAD records seq 3"), "{out:?}");
        assert!(out.stderr.is_empty(), "{out:?}");
    }

    #[test]
    fn events_verify_json_reports_ok_and_the_head() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill(&home, 3);
        let last_hash = events(&home)[2]["hash"].clone();

        let out = lion_run(&home, &["events", "verify", "--json"])
            .success()
            .json();
        assert_eq!(out["ok"], json!(true), "{out}");
        assert_eq!(out["events"], json!(3), "{out}");
        assert_eq!(out["head"]["seq"], json!(3), "{out}");
        assert_eq!(out["head"]["hash"], last_hash, "{out}");
        assert_eq!(out["recorded_head"], out["head"], "{out}");
    }

    #[test]
    fn replay_succeeds_when_the_projections_match_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill(&home, 3);

        let out = lion_run(&home, &["replay"]).success();
        assert!(out.stdout.contains("replayed 3 event(s)"), "{out:?}");
        assert!(
            out.stdout.contains("ok: the projections match the log"),
            "{out:?}"
        );

        let json = lion_run(&home, &["replay", "--json"]).success().json();
        assert_eq!(json["ok"], json!(true), "{json}");
        assert_eq!(json["events"], json!(3), "{json}");
        assert_eq!(json["elements"], json!(3), "{json}");
        assert_eq!(json["projected_elements"], json!(3), "{json}");
        assert_eq!(json["differences"], json!([]), "{json}");
    }

    /// Kills the child if the test fails before it exits.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(None)) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    /// How long the test waits for the tail before declaring it hung: a
    /// guard against a hanging test run, not a performance threshold.
    const HANG_GUARD: Duration = Duration::from_secs(120);

    #[test]
    fn events_tail_prints_events_other_processes_commit_and_stops_after_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        // One event first, so the tail can start from an explicit seq and
        // cannot miss events committed before it is ready.
        create(&home, "{}", None);

        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lion"))
            .arg("--home")
            .arg(&home)
            .args(["--json", "events", "tail", "--from", "2", "--count", "2"])
            .env_remove("RUST_LOG")
            .env_remove("LION_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lion events tail");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut tail = KillOnDrop(child);
        let (tx, rx) = mpsc::channel::<Option<String>>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None); // end of output: the tail has exited
        });

        let second = create(&home, r#"{"i":2}"#, None);
        let third = create(&home, r#"{"i":3}"#, None);

        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(HANG_GUARD) {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => break,
                Err(e) => panic!("events tail neither printed nor exited ({e}); got {lines:?}"),
            }
        }
        let status = tail.0.wait().expect("wait for the tail");
        assert!(status.success(), "events tail exited with {status}");

        let events: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("tail --json prints JSON lines"))
            .collect();
        assert_eq!(events.len(), 2, "{lines:?}");
        assert_eq!(events[0]["seq"], json!(2));
        assert_eq!(events[1]["seq"], json!(3));
        assert_eq!(
            events[0]["event"]["element_created"]["element"]["id"],
            json!(second.to_string())
        );
        assert_eq!(
            events[1]["event"]["element_created"]["element"]["id"],
            json!(third.to_string())
        );
    }
}

mod tampering {
    use super::*;

    /// Elements created in each tampering test's home.
    const ELEMENTS: usize = 10;

    /// A home with [`ELEMENTS`] elements, event seq i creating element i.
    fn home_with_elements(dir: &Path) -> std::path::PathBuf {
        let home = dir.join("home");
        fill(&home, ELEMENTS);
        home
    }

    /// Runs `events verify` (expecting the integrity exit code 3) and
    /// `events verify --json`; returns the error line and the JSON report.
    #[track_caller]
    fn failed_verify(home: &Path) -> (String, Value) {
        let human = lion_run(home, &["events", "verify"]);
        let line = human.error_line(3).to_owned();
        let machine = lion_run(home, &["events", "verify", "--json"]);
        machine.error_line(3);
        let report = machine.json();
        assert_eq!(report["ok"], json!(false), "{report}");
        (line, report)
    }

    #[test]
    fn the_event_log_refuses_update_and_delete_until_its_triggers_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill(&home, 2);
        let conn = open_db(&home);

        let update = conn.execute("UPDATE events SET stream = 'x' WHERE seq = 1", []);
        let delete = conn.execute("DELETE FROM events WHERE seq = 2", []);
        for (what, result) in [("UPDATE", update), ("DELETE", delete)] {
            let err = result.expect_err(what).to_string();
            assert!(err.contains("append-only"), "{what}: {err}");
        }
        drop(conn);
        lion_run(&home, &["events", "verify"]).success();
    }

    #[test]
    fn verify_names_the_seq_of_a_modified_payload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        let conn = tamper(&home);
        let payload: Vec<u8> = conn
            .query_row("SELECT payload FROM events WHERE seq = 5", [], |r| r.get(0))
            .expect("read payload");
        let mut event: Value = serde_json::from_slice(&payload).expect("payload is JSON");
        event["element_created"]["element"]["metadata"] = json!({"n": 500});
        let forged = serde_json::to_vec(&event).expect("encode");
        conn.execute(
            "UPDATE events SET payload = ?1 WHERE seq = 5",
            rusqlite::params![forged],
        )
        .expect("forge payload");
        drop(conn);

        let (line, report) = failed_verify(&home);
        assert!(line.contains("seq 5"), "{line}");
        assert!(line.contains("modified"), "{line}");
        assert_eq!(report["first_bad_seq"], json!(5), "{report}");
    }

    #[test]
    fn verify_names_the_seq_of_a_deleted_middle_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        let conn = tamper(&home);
        conn.execute("DELETE FROM events WHERE seq = 5", [])
            .expect("delete");
        drop(conn);

        let (line, report) = failed_verify(&home);
        assert!(line.contains("seq 5"), "{line}");
        assert_eq!(report["first_bad_seq"], json!(5), "{report}");
    }

    #[test]
    fn verify_reports_the_newest_records_cut_off_against_head() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        let conn = tamper(&home);
        conn.execute("DELETE FROM events WHERE seq > 8", [])
            .expect("delete the last two");
        drop(conn);

        let (line, report) = failed_verify(&home);
        assert!(line.contains("truncated"), "{line}");
        assert!(line.contains("ends at seq 8"), "{line}");
        assert!(line.contains("HEAD records seq 10"), "{line}");
        assert_eq!(report["first_bad_seq"], json!(9), "{report}");
    }

    #[test]
    fn verify_names_the_lower_seq_of_two_swapped_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        let conn = tamper(&home);
        conn.execute_batch(
            "UPDATE events SET seq = -1 WHERE seq = 3;
             UPDATE events SET seq = 3 WHERE seq = 4;
             UPDATE events SET seq = 4 WHERE seq = -1;",
        )
        .expect("swap seq 3 and 4");
        drop(conn);

        let (line, report) = failed_verify(&home);
        assert!(line.contains("at seq 3"), "{line}");
        assert!(!line.contains("at seq 4"), "{line}");
        assert_eq!(report["first_bad_seq"], json!(3), "{report}");
    }

    #[test]
    fn replay_reports_an_edited_projection_while_verify_still_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        let edited = ids(&elements(&home))[3].clone();
        let conn = open_db(&home);
        let changed = conn
            .execute(
                r#"UPDATE elements SET metadata = '{"n":"forged"}' WHERE seq = 4"#,
                [],
            )
            .expect("edit the projection");
        assert_eq!(changed, 1);
        drop(conn);

        let replay = lion_run(&home, &["replay"]);
        let line = replay.error_line(3);
        assert!(line.contains("differs"), "{line}");
        assert!(line.contains("1 place(s)"), "{line}");
        assert!(
            replay
                .stdout
                .contains(&format!("difference: element {edited} differs")),
            "{replay:?}"
        );

        let json = lion_run(&home, &["replay", "--json"]);
        json.error_line(3);
        let report = json.json();
        assert_eq!(report["ok"], json!(false), "{report}");
        assert_eq!(
            report["differences"],
            json!([format!("element {edited} differs")]),
            "{report}"
        );

        // The log itself is intact.
        lion_run(&home, &["events", "verify"]).success();
    }

    /// Known bug (fails today): `replay` on a broken chain prints
    /// "log verification failed: X: X". `StoreError::Chain` in
    /// `agentic_core/src/store.rs` both formats its `ChainError` (`{0}`) and
    /// exposes it as its source (`#[from]`), and `main` prints the error with
    /// its sources (`{:#}`).
    #[test]
    fn replay_on_a_modified_log_fails_and_states_the_chain_error_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        let conn = tamper(&home);
        conn.execute("DELETE FROM events WHERE seq = 5", [])
            .expect("delete");
        drop(conn);

        let replay = lion_run(&home, &["replay"]);
        let line = replay.error_line(3);
        assert_eq!(
            line.matches("sequence gap at seq 5").count(),
            1,
            "the cause is repeated: {line}"
        );
    }
}

mod bad_input {
    use super::*;

    /// A home holding three elements.
    fn home_with_elements(dir: &Path) -> std::path::PathBuf {
        let home = dir.join("home");
        fill(&home, 3);
        home
    }

    #[track_caller]
    fn refused_create(home: &Path, metadata: &str) -> String {
        let before = snapshot(home);
        let listed = elements(home);
        let out = lion_run(home, &["create-element", "--metadata", metadata]);
        let line = out.error_line(1).to_owned();
        assert!(out.stdout.is_empty(), "{out:?}");
        assert_unchanged(home, &before);
        assert_eq!(elements(home), listed);
        line
    }

    #[test]
    fn invalid_json_metadata_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        let line = refused_create(&home, "{nope");
        assert!(line.contains("--metadata is not valid JSON"), "{line}");
    }

    #[test]
    fn metadata_that_is_not_a_json_object_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        for (metadata, kind) in [
            ("[1,2]", "an array"),
            ("42", "a number"),
            (r#""text""#, "a string"),
            ("null", "null"),
        ] {
            let line = refused_create(&home, metadata);
            assert!(line.contains("must be a JSON object"), "{line}");
            assert!(line.contains(kind), "{metadata}: {line}");
        }
    }

    #[test]
    fn an_unknown_command_is_a_usage_error_with_exit_code_2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let out = lion_run(&home, &["frobnicate"]);
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(!out.stderr.trim().is_empty(), "{out:?}");
        assert!(out.stderr.contains("frobnicate"), "{out:?}");
        assert!(!home.exists(), "a usage error created the home");
    }

    #[test]
    fn a_non_empty_directory_without_lion_db_is_not_a_lion_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("notes");
        std::fs::create_dir(&home).expect("mkdir");
        std::fs::write(home.join("notes.txt"), "my notes\n").expect("write");
        let before = snapshot(&home);

        for args in [
            &["create-element"][..],
            &["list-elements"],
            &["events", "verify"],
        ] {
            let out = lion_run(&home, args);
            let line = out.error_line(1);
            assert!(line.contains("is not a lion store"), "{args:?}: {line}");
            assert!(line.contains("notes.txt"), "{args:?}: {line}");
            assert_unchanged(&home, &before);
        }
    }

    #[test]
    fn a_lion_db_that_is_not_an_sqlite_file_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("mkdir");
        let garbage = "this is not a database, just some text someone saved here.\n".repeat(40);
        std::fs::write(db_path(&home), garbage).expect("write garbage");
        let before = snapshot(&home);

        for args in [
            &["create-element"][..],
            &["list-elements"],
            &["events", "verify"],
        ] {
            let out = lion_run(&home, args);
            let line = out.error_line(1);
            assert!(line.contains("is not a lion store"), "{args:?}: {line}");
            assert!(line.contains("not an SQLite database"), "{args:?}: {line}");
            assert_unchanged(&home, &before);
        }
    }

    #[test]
    fn a_truncated_lion_db_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill_big(&home, 200);
        assert!(
            !home.join("lion.db-wal").exists(),
            "the store must checkpoint and remove its WAL on close"
        );
        let len = std::fs::metadata(db_path(&home)).expect("stat").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(db_path(&home))
            .expect("open")
            .set_len(len / 2)
            .expect("truncate");
        let before = snapshot(&home);

        for args in [
            &["list-elements"][..],
            &["create-element"],
            &["events", "verify"],
            &["replay"],
        ] {
            let out = lion_run(&home, args);
            let line = out.error_line(3);
            assert!(line.contains("truncated"), "{args:?}: {line}");
            assert!(
                line.contains(&format!("holds {} bytes", len / 2)),
                "{args:?}: {line}"
            );
            assert_unchanged(&home, &before);
        }
    }

    #[test]
    fn a_corrupt_lion_db_fails_verification_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill_big(&home, 200);
        assert!(!home.join("lion.db-wal").exists());
        let mut bytes = std::fs::read(db_path(&home)).expect("read");
        let middle = bytes.len() / 2;
        // 8 KiB of garbage: covers at least one whole page, header included.
        for (i, b) in bytes[middle - 4096..middle + 4096].iter_mut().enumerate() {
            *b = [0xDE, 0xAD, 0xBE, 0xEF][i % 4];
        }
        std::fs::write(db_path(&home), &bytes).expect("write");
        let before = snapshot(&home);

        let out = lion_run(&home, &["events", "verify"]);
        let line = out.error_line(3);
        assert!(line.contains("damaged"), "{line}");
        assert_unchanged(&home, &before);
    }

    #[test]
    fn a_store_locked_by_another_process_fails_after_the_busy_timeout_then_works_once_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill(&home, 2);
        let listed = elements(&home);

        let conn = open_db(&home);
        conn.execute_batch("BEGIN EXCLUSIVE")
            .expect("take the write lock");
        let out = run(lion_at(&home)
            .env("LION_BUSY_TIMEOUT_MS", "300")
            .arg("create-element"));
        let line = out.error_line(1);
        assert!(line.contains("locked"), "{line}");
        assert!(line.contains("300 ms"), "{line}");
        // Readers are not blocked by a writer (WAL).
        assert_eq!(elements(&home), listed);
        conn.execute_batch("ROLLBACK").expect("release the lock");
        drop(conn);

        let id = parse_id(
            &run(lion_at(&home)
                .env("LION_BUSY_TIMEOUT_MS", "300")
                .arg("create-element"))
            .success(),
        );
        assert_eq!(ids(&elements(&home))[2], id.to_string());
        lion_run(&home, &["events", "verify"]).success();
    }

    #[test]
    fn a_busy_timeout_that_is_not_a_number_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let out = run(lion_at(&home)
            .env("LION_BUSY_TIMEOUT_MS", "soon")
            .arg("create-element"));
        let line = out.error_line(1);
        assert!(line.contains("LION_BUSY_TIMEOUT_MS"), "{line}");
        assert!(line.contains("soon"), "{line}");
    }

    #[test]
    fn element_show_refuses_a_malformed_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        let out = lion_run(&home, &["element", "show", "not-a-uuid"]);
        let line = out.error_line(1);
        assert!(
            line.contains(r#""not-a-uuid" is not an element id"#),
            "{line}"
        );
        assert!(out.stdout.is_empty(), "{out:?}");
    }

    #[test]
    fn element_show_reports_an_unknown_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = home_with_elements(dir.path());
        let unknown = uuid::Uuid::now_v7().to_string();
        let out = lion_run(&home, &["element", "show", &unknown]);
        let line = out.error_line(1);
        assert!(line.contains(&format!("no element {unknown}")), "{line}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

mod logging {
    use super::*;

    /// The correlation id recorded on the newest event of `home`.
    fn last_correlation_id(home: &Path) -> String {
        let events = events(home);
        let last = events.last().expect("an event");
        last["correlation_id"]
            .as_str()
            .expect("correlation_id")
            .to_owned()
    }

    #[test]
    fn without_rust_log_a_successful_command_is_silent_on_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let out = lion_run(&home, &["create-element"]).success();
        assert!(out.stderr.is_empty(), "{out:?}");
    }

    #[test]
    fn json_logs_on_stderr_carry_the_correlation_id_of_the_events_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let out = run(lion_at(&home).env("RUST_LOG", "info").args([
            "--log-format",
            "json",
            "create-element",
        ]))
        .success();
        let correlation_id = last_correlation_id(&home);

        let lines: Vec<Value> = out
            .stderr
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("log line not JSON ({e}): {l}"))
            })
            .collect();
        let created = lines
            .iter()
            .find(|l| l["fields"]["message"] == json!("element created"))
            .unwrap_or_else(|| panic!("no `element created` log line: {out:?}"));
        assert_eq!(
            created["span"]["correlation_id"],
            json!(correlation_id),
            "{created}"
        );
        assert_eq!(created["level"], json!("INFO"), "{created}");
    }

    #[test]
    fn text_logs_on_stderr_carry_the_correlation_id_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let out = run(lion_at(&home).env("RUST_LOG", "info").arg("create-element")).success();
        let correlation_id = last_correlation_id(&home);
        assert!(out.stderr.contains("correlation_id"), "{out:?}");
        assert!(out.stderr.contains(&correlation_id), "{out:?}");
        assert!(out.stderr.contains("element created"), "{out:?}");
    }

    /// Known bug (fails today): `init_tracing` in `src/main.rs` never calls
    /// `with_ansi`, so text logs carry colour codes even when stderr is a
    /// pipe or a file.
    #[test]
    fn text_logs_written_to_a_pipe_carry_no_terminal_colour_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let out = run(lion_at(&home).env("RUST_LOG", "info").arg("create-element")).success();
        assert!(!out.stderr.is_empty(), "{out:?}");
        assert!(
            !out.stderr.contains('\u{1b}'),
            "ANSI escape codes in a piped log: {:?}",
            out.stderr
        );
    }
}

mod bench {
    use super::*;

    /// A few seconds at most: runs in the normal test run.
    #[test]
    fn bench_store_quick_prints_baselines_group_commit_and_replay_rows() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let cwd = tempfile::tempdir().expect("tempdir");
        let out = run(lion()
            .current_dir(cwd.path())
            .args(["bench", "store", "--quick", "--dir"])
            .arg(scratch.path()))
        .success();
        for row in [
            "raw fdatasync",
            "raw rusqlite, batches of 100 rows",
            "row(s) per commit (lion's mean group below)",
            "group commit",
            "replay",
        ] {
            assert!(out.stdout.contains(row), "no {row:?} row: {out:?}");
        }
        assert!(out.stdout.contains("measurement"), "{out:?}");
        assert!(
            !cwd.path().join(".lion").exists(),
            "bench opened a home it does not need"
        );
    }

    /// Each group-commit level has a raw baseline committing as many rows
    /// per transaction as its groups did, and the own-core level really ran
    /// with the writer pinned (the benchmark pins it from outside the store).
    #[test]
    fn bench_store_quick_matches_each_level_with_raw_inserts_of_its_group_size() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let out = run(lion()
            .args(["--json", "bench", "store", "--quick", "--dir"])
            .arg(scratch.path()))
        .success();
        let report = out.json();
        let appends = report["appends"].as_array().expect("appends");
        assert!(!appends.is_empty(), "{report}");
        for a in appends {
            let group = a["events_per_commit"].as_f64().expect("events/commit");
            let raw = &a["raw_same_batch"];
            assert_eq!(
                raw["rows_per_commit"].as_u64(),
                Some((group.round() as u64).max(1)),
                "{a}"
            );
            assert!(raw["events_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{a}");
        }
        assert_eq!(report["raw_sqlite_rows_per_commit"], 100, "{report}");
        let pinned = appends.iter().any(|a| {
            a["placement"]
                .as_str()
                .unwrap_or("")
                .contains("writer pinned to CPU")
        });
        match report["own_core_skipped"].as_str() {
            None => assert!(pinned, "no own-core row: {report}"),
            Some(why) => assert!(why.contains("only one CPU"), "skipped: {why}"),
        }
    }

    #[test]
    fn bench_runtime_quick_prints_baselines_and_task_rows() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let out = run(lion()
            .args(["bench", "runtime", "--quick", "--dir"])
            .arg(scratch.path().join("store")))
        .success();
        for row in [
            "raw tokio mpsc",
            "raw oneshot",
            "tasks, ephemeral",
            "tasks, durable",
            "agent send",
            "agent ask",
            "idle agents",
        ] {
            assert!(out.stdout.contains(row), "no {row:?} row: {out:?}");
        }
    }

    #[test]
    fn bench_workflow_quick_measures_steps_and_shared_commits() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let out = run(lion()
            .args(["--json", "bench", "workflow", "--quick", "--dir"])
            .arg(scratch.path().join("wf")))
        .success();
        let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        for key in [
            "fdatasync_p50_ms",
            "fdatasync_overwrite_p50_ms",
            "step_p50_in_overwrite_fdatasyncs",
            "step_commit_p50_ms",
            "step_p50_ms",
            "single_run_steps_per_sec",
            "concurrent_rounds",
            "concurrent_steps_per_sec",
            "store_concurrent_steps_per_sec",
            "concurrent_of_store",
        ] {
            assert!(
                report[key].as_f64().is_some_and(|v| v > 0.0),
                "{key}: {report}"
            );
        }
        // 100 runs at once share commits.
        let single = report["single_run_events_per_commit"]
            .as_f64()
            .expect("single");
        let shared = report["concurrent_events_per_commit"]
            .as_f64()
            .expect("shared");
        assert!(single >= 1.0, "{report}");
        assert!(shared > single, "{report}");
        // The run says which flush regime it measured, and is not emulated.
        let regime = report["flush_regime"].as_str().expect("regime");
        assert!(["slow", "fast", "changed"].contains(&regime), "{report}");
        assert_eq!(report["slow_flush"], json!(regime == "slow"), "{report}");
        let probes = [
            "fdatasync_overwrite_p50_ms",
            "fdatasync_overwrite_after_p50_ms",
        ]
        .map(|k| report[k].as_f64().expect(k));
        if probes.iter().all(|p| *p < 1.0) {
            assert_eq!(regime, "fast", "{report}");
        }
        assert_eq!(report["flush_emulation"], Value::Null, "{report}");
    }

    /// Under `scripts/bench-slow-flush`'s shim every flush takes at least
    /// 4 ms: the workflow bench finds itself in the slow-flush regime and
    /// says the flush is emulated.
    #[test]
    fn bench_workflow_under_the_slow_flush_shim_reports_the_slow_regime() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let shim = scratch.path().join("slow_flush.so");
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slow-flush/slow_flush.c");
        let built = std::process::Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", "-o"])
            .arg(&shim)
            .arg(&source)
            .arg("-ldl")
            .status()
            .expect("cc");
        assert!(built.success(), "cc {}", source.display());
        let out = run(lion()
            .env("LD_PRELOAD", &shim)
            .env("LION_SLOW_FLUSH_US", "4000")
            .env("LION_BENCH_FLUSH_EMULATION", "4 ms floor (test)")
            .args(["--json", "bench", "workflow", "--quick", "--dir"])
            .arg(scratch.path().join("wf")))
        .success();
        let report: Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert!(
            report["fdatasync_overwrite_p50_ms"].as_f64().expect("p50") >= 4.0,
            "{report}"
        );
        assert_eq!(report["flush_regime"], json!("slow"), "{report}");
        assert_eq!(report["slow_flush"], json!(true), "{report}");
        assert_eq!(report["flush_emulation"], json!("4 ms floor (test)"));
        let text = run(lion()
            .env("LD_PRELOAD", &shim)
            .env("LION_BENCH_FLUSH_EMULATION", "4 ms floor (test)")
            .args(["bench", "workflow", "--quick", "--dir"])
            .arg(scratch.path().join("wf2")))
        .success()
        .stdout;
        assert!(text.contains("SLOW flush regime"), "{text}");
        assert!(text.contains("EMULATED"), "{text}");
        // Its verdicts count: none says the run is no evidence.
        assert!(!text.contains("fast-flush run"), "{text}");
        assert!(!text.contains("no evidence"), "{text}");
        assert!(!text.contains("changed state"), "{text}");
    }
}

mod help {
    use super::*;

    #[track_caller]
    fn help(args: &[&str]) -> String {
        let cwd = tempfile::tempdir().expect("tempdir");
        let out = run(lion().current_dir(cwd.path()).args(args)).success();
        assert!(
            !cwd.path().join(".lion").exists(),
            "{args:?} created a home"
        );
        out.stdout
    }

    #[test]
    fn top_level_help_lists_every_command_and_the_global_flags() {
        let text = help(&["--help"]);
        for word in [
            "Usage: lion",
            "element",
            "create-element",
            "list-elements",
            "events",
            "replay",
            "bench",
            "--home",
            "LION_HOME",
            "--json",
            "--log-format",
        ] {
            assert!(text.contains(word), "no {word:?} in:\n{text}");
        }
    }

    #[test]
    fn element_help_lists_create_list_and_show() {
        let text = help(&["element", "--help"]);
        for word in ["create", "list", "show"] {
            assert!(text.contains(word), "no {word:?} in:\n{text}");
        }
    }

    #[test]
    fn events_help_lists_list_tail_and_verify() {
        let text = help(&["events", "--help"]);
        for word in ["list", "tail", "verify"] {
            assert!(text.contains(word), "no {word:?} in:\n{text}");
        }
    }

    #[test]
    fn bench_store_help_lists_its_options() {
        let text = help(&["bench", "store", "--help"]);
        for word in [
            "--quick",
            "--dir",
            "--replay-events",
            "--seconds",
            "--appenders",
        ] {
            assert!(text.contains(word), "no {word:?} in:\n{text}");
        }
    }

    #[test]
    fn version_prints_the_crate_version() {
        let text = help(&["--version"]);
        assert!(
            text.contains(env!("CARGO_PKG_VERSION")),
            "no version in {text:?}"
        );
    }
}

/// `lion task …`: tasks run in the invoking process with `--wait`.
mod tasks {
    use super::*;

    fn submit(home: &Path, args: &[&str]) -> Run {
        let mut all = vec!["task", "submit", "--json", "--wait"];
        all.extend_from_slice(args);
        lion_run(home, &all)
    }

    #[test]
    fn a_task_runs_with_wait_and_its_result_is_printed_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let out = submit(&home, &["--handler", "echo", "--input", r#"{"x":1}"#])
            .success()
            .json();
        assert_eq!(out["status"], "completed");
        assert_eq!(out["output"], json!({"x": 1}));
        let id = out["task_id"].as_str().expect("id").to_owned();

        let shown = lion_run(&home, &["task", "show", &id, "--json"])
            .success()
            .json();
        assert_eq!(shown["status"], "completed");
        assert_eq!(shown["attempts"], 1);
        let listed = lion_run(&home, &["task", "list", "--json"])
            .success()
            .json();
        assert_eq!(listed.as_array().map(Vec::len), Some(1));
        lion_run(&home, &["events", "verify"]).success();
        lion_run(&home, &["replay"]).success();
    }

    #[test]
    fn the_seed_alias_fanout_and_retries_work_and_failures_exit_non_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let out = lion_run(
            &home,
            &[
                "submit-task",
                "--json",
                "--wait",
                "--handler",
                "fanout",
                "--input",
                r#"{"n":3,"handler":"echo","input":"hi"}"#,
            ],
        )
        .success()
        .json();
        assert_eq!(out["output"], json!(["hi", "hi", "hi"]));

        let retried = submit(
            &home,
            &[
                "--handler",
                "fail",
                "--input",
                r#"{"times":1}"#,
                "--retries",
                "2",
            ],
        )
        .success()
        .json();
        assert_eq!(retried["status"], "completed");

        let failed = submit(&home, &["--handler", "fail"]);
        let line = failed.error_line(1);
        assert!(line.contains("failed on purpose"), "{line}");
        assert_eq!(failed.json()["status"], "failed");

        let timed_out = submit(
            &home,
            &[
                "--handler",
                "sleep",
                "--input",
                r#"{"ms":60000}"#,
                "--timeout",
                "50",
            ],
        );
        assert!(timed_out.error_line(1).contains("timed out"));

        // 1 fanout + 3 children + 1 retried + 1 failed + 1 timed out.
        let listed = lion_run(&home, &["task", "list", "--json"])
            .success()
            .json();
        assert_eq!(listed.as_array().map(Vec::len), Some(7));
        lion_run(&home, &["replay"]).success();
    }

    #[test]
    fn the_same_idempotency_key_runs_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let args = [
            "--handler",
            "echo",
            "--input",
            "1",
            "--idempotency-key",
            "k",
        ];
        let first = submit(&home, &args).success().json();
        assert_eq!(first["status"], "completed");
        // A second process with the same key gets the same task and result.
        let second = submit(&home, &args).success().json();
        assert_eq!(second["task_id"], first["task_id"]);
        assert_eq!(second["output"], json!(1));
        let listed = lion_run(&home, &["task", "list", "--json"])
            .success()
            .json();
        assert_eq!(listed.as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn bad_task_input_is_refused_with_one_line_and_nothing_logged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        fill(&home, 1);
        let before = snapshot(&home);
        for (args, expected) in [
            (
                &["task", "submit", "--wait", "--handler", "nope"][..],
                "unknown handler",
            ),
            (
                &[
                    "task",
                    "submit",
                    "--wait",
                    "--handler",
                    "echo",
                    "--input",
                    "{bad",
                ],
                "--input is not valid JSON",
            ),
            (
                &[
                    "task",
                    "submit",
                    "--handler",
                    "echo",
                    "--durability",
                    "ephemeral",
                ],
                "ephemeral task is never logged",
            ),
            (
                &["task", "cancel", "01a21224-9e21-75ec-a96f-3a8f035192cb"],
                "no task",
            ),
            (&["task", "show", "not-a-uuid"], "is not a task id"),
        ] {
            let out = lion_run(&home, args);
            let line = out.error_line(1);
            assert!(line.contains(expected), "{args:?}: {line}");
            assert_unchanged(&home, &before);
        }
    }
}

/// `lion run`: the kernel in the background, work from other processes,
/// its lease, clean shutdown, and recovery after `kill -9`.
mod kernel {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Only a guard against a hanging run, not a performance threshold.
    const HANG_GUARD: Duration = Duration::from_secs(120);

    /// A background `lion` process whose stderr (or stdout) lines arrive on a channel.
    struct Background {
        child: Child,
        lines: mpsc::Receiver<String>,
    }

    impl Drop for Background {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Background {
        fn start(home: &Path, args: &[&str], read_stdout: bool) -> Self {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lion"));
            cmd.arg("--home")
                .arg(home)
                .args(args)
                .env_remove("RUST_LOG")
                .env_remove("LION_HOME")
                .stdin(Stdio::null());
            if read_stdout {
                cmd.stdout(Stdio::piped()).stderr(Stdio::null());
            } else {
                cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            }
            let mut child = cmd.spawn().expect("start lion");
            let (tx, lines) = mpsc::channel();
            let pipe: Box<dyn std::io::Read + Send> = if read_stdout {
                Box::new(child.stdout.take().expect("stdout"))
            } else {
                Box::new(child.stderr.take().expect("stderr"))
            };
            forward(pipe, tx);
            Self { child, lines }
        }

        /// Both streams on one channel (to see a progress line on stderr
        /// before the events on stdout).
        fn start_both(home: &Path, args: &[&str]) -> Self {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lion"))
                .arg("--home")
                .arg(home)
                .args(args)
                .env_remove("RUST_LOG")
                .env_remove("LION_HOME")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start lion");
            let (tx, lines) = mpsc::channel();
            forward(Box::new(child.stdout.take().expect("stdout")), tx.clone());
            forward(Box::new(child.stderr.take().expect("stderr")), tx);
            Self { child, lines }
        }

        /// Waits for a line containing `text`; returns every line read.
        fn wait_for(&self, text: &str) -> Vec<String> {
            let mut seen = Vec::new();
            loop {
                match self.lines.recv_timeout(HANG_GUARD) {
                    Ok(line) => {
                        let found = line.contains(text);
                        seen.push(line);
                        if found {
                            return seen;
                        }
                    }
                    Err(e) => panic!("no line with {text:?} ({e}); got {seen:?}"),
                }
            }
        }
    }

    fn forward(pipe: Box<dyn std::io::Read + Send>, tx: mpsc::Sender<String>) {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }

    #[test]
    fn the_live_stream_shows_events_before_they_are_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let no_kernel = lion_run(&home, &["events", "tail", "--live"]);
        assert!(no_kernel.error_line(1).contains("no kernel is running"));
        let kernel = start_kernel(&home);
        let live = Background::start_both(&home, &["--json", "events", "tail", "--live"]);
        live.wait_for("following the live events");
        lion_run(
            &home,
            &[
                "task",
                "submit",
                "--wait",
                "--handler",
                "sleep",
                "--input",
                r#"{"ms":20}"#,
            ],
        )
        .success();
        let lines = live.wait_for("task_completed");
        let progress = lines
            .iter()
            .find(|l| l.contains("task_progress"))
            .expect("progress was streamed");
        let progress: Value = serde_json::from_str(progress).expect("json line");
        assert_eq!(
            progress["seq"],
            Value::Null,
            "progress streams before its commit"
        );
        assert!(stop(kernel, "-TERM").success());
        assert!(
            !home.join("kernel.sock").exists(),
            "the socket outlived the kernel"
        );
    }

    #[test]
    fn a_waiting_submitter_is_told_when_the_kernel_goes_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let kernel = start_kernel(&home);
        let mut waiting = Background::start_both(
            &home,
            &[
                "task",
                "submit",
                "--wait",
                "--handler",
                "sleep",
                "--input",
                r#"{"ms":60000}"#,
            ],
        );
        wait_for_started(&home, 1);
        assert!(!stop(kernel, "-KILL").success());
        waiting.wait_for("the kernel stopped before task");
        let status = waiting.child.wait().expect("wait for the submitter");
        assert_eq!(status.code(), Some(1));
    }

    fn start_kernel(home: &Path) -> Background {
        let kernel = Background::start(home, &["run"], false);
        kernel.wait_for("lion kernel running");
        kernel
    }

    /// Waits until the log holds `n` `task_started` events.
    fn wait_for_started(home: &Path, n: usize) {
        let tail = Background::start(home, &["--json", "events", "tail", "--from", "1"], true);
        for _ in 0..n {
            tail.wait_for("task_started");
        }
    }

    fn stop(mut kernel: Background, signal: &str) -> std::process::ExitStatus {
        let pid = kernel.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        kernel.child.wait().expect("wait for the kernel")
    }

    #[test]
    fn a_kernel_runs_work_from_other_processes_holds_its_lease_and_stops_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let kernel = start_kernel(&home);

        let second = lion_run(&home, &["run"]);
        let line = second.error_line(1);
        assert!(line.contains("another lion kernel"), "{line}");

        let done = lion_run(
            &home,
            &[
                "task",
                "submit",
                "--json",
                "--wait",
                "--handler",
                "echo",
                "--input",
                "7",
            ],
        )
        .success()
        .json();
        assert_eq!(done["output"], json!(7));
        let fanout = lion_run(
            &home,
            &[
                "submit-task",
                "--json",
                "--wait",
                "--handler",
                "fanout",
                "--input",
                r#"{"n":3,"handler":"echo","input":"x"}"#,
            ],
        )
        .success()
        .json();
        assert_eq!(fanout["output"], json!(["x", "x", "x"]));
        let queued = lion_run(
            &home,
            &[
                "task",
                "submit",
                "--handler",
                "sleep",
                "--input",
                r#"{"ms":60000}"#,
            ],
        )
        .success();
        let id = queued.stdout.trim().to_owned();
        wait_for_started(&home, 6); // echo, fanout and its 3 children, sleep
        lion_run(&home, &["task", "cancel", &id]).success();

        let status = stop(kernel, "-TERM");
        assert!(status.success(), "kernel exited with {status}");
        let shown = lion_run(&home, &["task", "show", &id, "--json"])
            .success()
            .json();
        assert_eq!(shown["status"], "cancelled");
        lion_run(&home, &["events", "verify"]).success();
        lion_run(&home, &["replay"]).success();
        // The lease is free again.
        let kernel = start_kernel(&home);
        assert!(stop(kernel, "-INT").success());
    }

    #[test]
    fn after_kill_9_the_next_kernel_retries_or_fails_every_interrupted_task() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let kernel = start_kernel(&home);
        let submit = |args: &[&str]| {
            let mut all = vec![
                "task",
                "submit",
                "--handler",
                "sleep",
                "--input",
                r#"{"ms":60000}"#,
            ];
            all.extend_from_slice(args);
            lion_run(&home, &all).success().stdout.trim().to_owned()
        };
        let retried = submit(&["--retries", "1", "--timeout", "1500"]);
        let failed = submit(&[]);
        wait_for_started(&home, 2);
        let status = stop(kernel, "-KILL");
        assert!(!status.success());
        for id in [&retried, &failed] {
            let shown = lion_run(&home, &["task", "show", id, "--json"])
                .success()
                .json();
            assert_eq!(shown["status"], "running", "{id} before recovery");
        }

        let kernel = start_kernel(&home);
        // The retried task's new attempt times out (1.5 s) and it ends.
        let wait = Background::start(&home, &["--json", "events", "tail", "--from", "1"], true);
        let lines = wait.wait_for("task_timed_out");
        drop(wait);
        assert!(!lines.is_empty());
        assert!(stop(kernel, "-TERM").success());

        let retried = lion_run(&home, &["task", "show", &retried, "--json"])
            .success()
            .json();
        assert_eq!(retried["attempts"], 2, "{retried}");
        assert_eq!(retried["interrupted"], 1, "{retried}");
        assert_eq!(retried["status"], "timed_out", "{retried}");
        let failed = lion_run(&home, &["task", "show", &failed, "--json"])
            .success()
            .json();
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_eq!(failed["attempts"], 1);
        assert_eq!(failed["interrupted"], 1, "{failed}");
        assert!(
            failed["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("interrupted")),
            "{failed}"
        );
        let listed = lion_run(&home, &["task", "list"]).success().stdout;
        assert!(listed.contains("2 (1 interrupted)"), "{listed}");
        lion_run(&home, &["events", "verify"]).success();
        lion_run(&home, &["replay"]).success();
    }

    /// Regression (issue 14 review): after a second signal `lion run`
    /// returned while its tasks still ran; the runtime dropped them, the
    /// cancelled plugin call's outcome was never recorded (its guard
    /// spawned onto a runtime shutting down) and the task stayed `running`.
    /// A forced stop now interrupts every running task, records that as
    /// the orchestrator does after a crash (the attempt failed
    /// "interrupted", retried by the next kernel if its policy allows),
    /// and closes the plugin manager, so every `plugin_invoked` has its
    /// outcome.
    #[test]
    fn a_forced_stop_records_every_call_and_task_it_interrupts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let manifest = long_spinning_abuse(dir.path());
        lion_run(
            &home,
            &["plugin", "install", &manifest, "--grant", "interface:log"],
        )
        .success();
        let mut kernel = start_kernel(&home);
        let submit = |args: &[&str]| {
            let mut all = vec![
                "task",
                "submit",
                "--plugin",
                "abuse",
                "--function",
                "spin",
                "--input",
                "{}",
            ];
            all.extend_from_slice(args);
            lion_run(&home, &all).success().stdout.trim().to_owned()
        };
        let failed = submit(&[]);
        let retried = submit(&["--retries", "1"]);
        // Both calls are under way: their plugin_invoked are in the log.
        let tail = Background::start(&home, &["--json", "events", "tail", "--from", "1"], true);
        tail.wait_for("plugin_invoked");
        tail.wait_for("plugin_invoked");
        drop(tail);

        signal(&kernel, "-INT");
        kernel.wait_for("send the signal again");
        signal(&kernel, "-INT");
        let status = kernel.child.wait().expect("wait for the kernel");
        assert!(status.success(), "kernel exited with {status}");

        let events = events(&home);
        let of = |kind: &str| -> Vec<&Value> {
            events.iter().filter_map(|e| e["event"].get(kind)).collect()
        };
        let invoked = of("plugin_invoked");
        assert_eq!(invoked.len(), 2, "{events:?}");
        for call in invoked {
            let outcome = of("plugin_failed")
                .into_iter()
                .chain(of("plugin_succeeded"))
                .find(|o| o["call_id"] == call["call_id"]);
            let outcome = outcome.unwrap_or_else(|| panic!("no outcome for {call}"));
            assert_eq!(outcome["failure"]["kind"], "cancelled", "{outcome}");
        }
        // No retry left: failed for good. A retry left: the next kernel's.
        for (id, status) in [(&failed, "failed"), (&retried, "pending")] {
            let shown = lion_run(&home, &["task", "show", id, "--json"])
                .success()
                .json();
            assert_eq!(shown["status"], status, "{shown}");
            assert_eq!(shown["attempts"], 1, "{shown}");
            assert!(
                shown["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("interrupted")),
                "{shown}"
            );
        }
        lion_run(&home, &["events", "verify"]).success();
        lion_run(&home, &["replay"]).success();
    }

    /// Sends `signal` to a background process.
    fn signal(process: &Background, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &process.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
    }

    /// A copy of the abuse plugin in `dir` whose calls may run ten minutes
    /// (its `spin` runs until interrupted); returns its manifest's path.
    fn long_spinning_abuse(dir: &Path) -> String {
        let folder = dir.join("abuse");
        std::fs::create_dir_all(&folder).expect("mkdir");
        for entry in std::fs::read_dir(plugin_dist().join("abuse")).expect("dist") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), folder.join(entry.file_name())).expect("copy");
        }
        let manifest = folder.join("plugin.toml");
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        let text: Vec<String> = text
            .lines()
            .map(|line| {
                if line.starts_with("timeout_ms ") {
                    "timeout_ms = 600000".to_owned()
                } else {
                    line.to_owned()
                }
            })
            .collect();
        std::fs::write(&manifest, text.join("\n")).expect("write manifest");
        manifest.to_str().expect("UTF-8 path").to_owned()
    }
}

/// Regression (issue 14): `lion events list --json | head` panicked on the
/// closed pipe.
#[test]
fn a_reader_that_leaves_early_ends_the_output_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    // Far more than a pipe holds: 200 child tasks, three events each.
    lion_run(
        &home,
        &[
            "task",
            "submit",
            "--handler",
            "fanout",
            "--input",
            r#"{"n":200}"#,
            "--wait",
        ],
    )
    .success();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lion"))
        .arg("--home")
        .arg(&home)
        .args(["events", "list", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read one line, then close the pipe as `head -1` does.
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("first line");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc_sigpipe()),
        "{:?}",
        out.status
    );
}

/// SIGPIPE's number on Linux.
fn libc_sigpipe() -> i32 {
    13
}

/// Regression: `lion` set SIGPIPE to its default action for the whole
/// process (so that `| head` ended it quietly), and a kernel whose write
/// found a peer gone — a killed MCP server's stdin, a client's socket —
/// died of it without a word. Only stdout ends the process that way now: a
/// running kernel ignores SIGPIPE.
#[test]
fn a_kernel_ignores_sigpipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let kernel = support::Kernel::start(&home, &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", kernel.id()))
        .expect("the kernel's /proc status");
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|mask| u64::from_str_radix(mask.trim(), 16).expect("a hex mask"))
        .expect("a SigIgn line");
    assert_ne!(
        ignored & (1 << (libc_sigpipe() - 1)),
        0,
        "SIGPIPE is not ignored: SigIgn {ignored:#x}"
    );
}

/// Regression (issue 14): `--home` naming a file said `File exists (os
/// error 17)`.
#[test]
fn a_home_that_is_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-home");
    std::fs::write(&file, "x").expect("write");
    let run = lion_run(&file, &["element", "list"]);
    assert_eq!(
        run.error_line(1),
        format!("error: the home {} is not a directory", file.display())
    );
    assert_eq!(std::fs::read(&file).expect("read"), b"x");
}

/// `LION_STORE=` (set, empty) clears the store as unset would: the home's
/// own store, not an error about a URL.
#[test]
fn an_empty_lion_store_means_the_homes_own_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let created = run(lion_at(&home)
        .env("LION_STORE", "")
        .args(["element", "create"]));
    let id = parse_id(&created);
    let listed = lion_run(&home, &["element", "list"]);
    assert!(listed.stdout.contains(&id.to_string()), "{listed:?}");
}

/// Regression (issue 14): the build targets x86-64-v3, and on a CPU without
/// AVX2 or FMA lion died of SIGILL. Run under QEMU's user-mode emulation of
/// such a CPU (scripts/check installs `qemu-user`), it must say so in one
/// line and exit 1; the same binary on an emulated CPU that has them runs.
#[test]
fn a_cpu_without_the_builds_features_is_named_in_one_line() {
    let qemu = "qemu-x86_64";
    let found = std::process::Command::new(qemu).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{qemu} is missing: install Debian's qemu-user (scripts/check does)"
    );
    let lion = env!("CARGO_BIN_EXE_lion");
    let old = std::process::Command::new(qemu)
        .args(["-cpu", "Nehalem", lion, "--version"])
        .output()
        .expect("run under qemu");
    let stderr = String::from_utf8_lossy(&old.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(old.status.code(), Some(1), "{stderr}");
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("x86-64-v3"), "{stderr}");
    assert!(old.stdout.is_empty());

    let new = std::process::Command::new(qemu)
        .args(["-cpu", "max", lion, "--version"])
        .output()
        .expect("run under qemu");
    assert!(new.status.success(), "{new:?}");
    assert!(String::from_utf8_lossy(&new.stdout).starts_with("lion "));
}

mod workflows {
    use super::*;

    /// The repository's example definitions.
    fn example(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../workflows")
            .join(name)
    }

    #[test]
    fn the_example_checks_and_lists_its_steps_in_an_order_they_can_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let file = example("research.toml");
        let out = lion_run(
            &home,
            &["--json", "workflow", "check", file.to_str().unwrap()],
        );
        let checked: Value = serde_json::from_str(&out.success().stdout).expect("json");
        let order: Vec<&str> = checked["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "search", "read", "draft", "approve", "route", "publish", "shelve"
            ]
        );
        assert_eq!(checked["files"], json!(["publish.toml", "research.toml"]));
        assert_eq!(checked["steps"][5]["after"], json!(["draft", "route"]));
        assert_eq!(checked["hash"].as_str().unwrap().len(), 64);
        assert!(!home.exists(), "checking a file touched the home");

        let table = lion_run(&home, &["workflow", "check", file.to_str().unwrap()]);
        let text = table.success().stdout;
        assert!(
            text.starts_with("workflow research: 7 step(s), valid"),
            "{text}"
        );
        assert!(text.contains("waits up to 2d, then rejected"), "{text}");
    }

    #[test]
    fn a_bad_definition_is_one_error_line_naming_the_step_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let folder = dir.path().join("flows");
        std::fs::create_dir(&folder).unwrap();
        std::fs::copy(example("publish.toml"), folder.join("publish.toml")).unwrap();
        let original = std::fs::read_to_string(example("research.toml")).unwrap();
        let cases = [
            (
                original.replace("then = \"publish\"", "then = \"pubish\""),
                "workflow bad.toml: step `route`: field `branches`: there is no step `pubish`",
            ),
            (
                original.replace("duration = \"1m\"", "duration = \"soon\""),
                "workflow bad.toml: step `shelve`: field `duration`: `soon` is not a duration",
            ),
            (
                original.replace("{{ item.url }}", "{{ item.url }"),
                "workflow bad.toml: step `read`: field `each.prompt`: `Summarise {{ item.url } in three sentences.` is not a valid template",
            ),
            (
                original.replace("after = []", "")
                    + "[steps.loop]\nkind = \"timer\"\nduration = \"1s\"\nafter = [\"loop\"]\n",
                "workflow bad.toml: step `loop`: runs after itself",
            ),
            (
                original.replace("workflow = \"publish.toml\"", "workflow = \"gone.toml\""),
                "workflow gone.toml: cannot read",
            ),
        ];
        for (text, expected) in cases {
            std::fs::write(folder.join("bad.toml"), &text).unwrap();
            let path = folder.join("bad.toml");
            let out = lion_run(&home, &["workflow", "check", path.to_str().unwrap()]);
            let line = out.error_line(1).to_owned();
            assert!(
                line.starts_with(&format!("error: {expected}")),
                "{line}\nwanted: {expected}"
            );
            assert!(out.stdout.is_empty(), "{out:?}");
        }
    }
}
