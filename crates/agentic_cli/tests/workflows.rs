//! Workflow runs through the real `lion` binary and a real kernel: each
//! step kind, approvals decided from another process and by their deadline,
//! cancellation of a run with running and waiting steps, a definition file
//! changed under a run, forks that reuse outputs, and bad input that starts
//! nothing. Plugin steps call `kv_counter.increment` with the step's
//! idempotency key, so the plugin's counters say how often each step's side
//! effect ran.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{Kernel, LogFollower, lion_run, plugin_dist};

/// A home with `kv_counter` installed (every permission it asks for).
fn home_with_counter(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    let manifest = plugin_dist().join("kv_counter").join("plugin.toml");
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            manifest.to_str().expect("UTF-8"),
            "--grant-all",
        ],
    )
    .success();
    home
}

/// Writes `files` (name, text) into `dir`; the first one's path.
fn write(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write a definition");
    }
    dir.join(files[0].0)
}

/// Starts a run of `file` with `input`; its id.
#[track_caller]
fn start(home: &Path, file: &Path, input: &str) -> String {
    let out = lion_run(
        home,
        &[
            "workflow",
            "run",
            file.to_str().expect("UTF-8"),
            "--input",
            input,
            "--json",
        ],
    )
    .success()
    .json();
    out["run"].as_str().expect("run id").to_owned()
}

/// `lion workflow status RUN --json`.
#[track_caller]
fn status(home: &Path, run: &str) -> Value {
    lion_run(home, &["workflow", "status", run, "--json"])
        .success()
        .json()
}

/// How often the side effect under `key` ran (null: never).
#[track_caller]
fn counter(home: &Path, key: &str) -> Value {
    let input = json!({ "key": key }).to_string();
    lion_run(
        home,
        &["plugin", "call", "kv_counter", "get", "--input", &input],
    )
    .success()
    .json()["value"]
        .clone()
}

/// The log verifies as one chain, and its projections match a fold of it.
#[track_caller]
fn log_verifies(home: &Path) {
    lion_run(home, &["events", "verify"]).success();
    lion_run(home, &["replay"]).success();
}

const KINDS: &str = r#"
name = "kinds"
input = { type = "object", required = ["names"], properties = { names = { type = "array", items = { type = "string" } } } }

[output]
value = { counted = "{{ steps.count.output.value }}", each = "{{ steps.each.output }}", sub = "{{ steps.sub.output }}", chose = "{{ steps.route.output.chose }}", note = "{{ steps.ask.output.input.note }}" }

[steps.count]
kind = "plugin"
plugin = "kv_counter"
function = "increment"
input = { key = "{{ key }}" }

[steps.each]
kind = "map"
over = "{{ input.names }}"
concurrency = 2
each = { kind = "plugin", plugin = "kv_counter", function = "increment", input = { key = "{{ key }}" } }

[steps.ask]
kind = "approval"
prompt = "Counted {{ steps.count.output.value }}; go on?"
timeout = "1h"

[steps.route]
kind = "condition"
branches = [{ when = "{{ steps.ask.output.approved }}", then = "sub" }]
otherwise = "shelve"

[steps.sub]
kind = "workflow"
workflow = "sub.toml"
input = { n = "{{ steps.count.output.value }}" }

[steps.shelve]
kind = "timer"
duration = "1h"
"#;

const SUB: &str = r#"
name = "sub"
input = { type = "object", required = ["n"] }

[output]
value = "{{ steps.count.output }}"

[steps.pause]
kind = "timer"
duration = "200ms"

[steps.count]
kind = "plugin"
plugin = "kv_counter"
function = "increment"
input = { key = "{{ key }}" }
after = ["pause"]
"#;

#[test]
fn every_step_kind_runs_and_an_approval_from_another_process_lets_the_run_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = home_with_counter(dir.path());
    let file = write(dir.path(), &[("kinds.toml", KINDS), ("sub.toml", SUB)]);
    let _kernel = Kernel::start(&home, &[]);
    let mut log = LogFollower::new(&home);
    let run = start(&home, &file, r#"{"names": ["a", "b", "c"]}"#);
    let asked = log.until(&run, "approval_requested", Some("ask"));
    assert_eq!(asked["prompt"], "Counted 1; go on?");
    let waiting = status(&home, &run);
    assert_eq!(waiting["status"], "running");
    assert_eq!(waiting["steps"]["ask"]["state"], "waiting for approval");
    lion_run(
        &home,
        &[
            "workflow",
            "approve",
            &run,
            "ask",
            "--input",
            r#"{"note": "fine"}"#,
        ],
    )
    .success();
    let done = log.until(&run, "completed", None);
    let output = &done["output"];
    assert_eq!(output["counted"], 1);
    assert_eq!(output["chose"], "sub");
    assert_eq!(output["note"], "fine");
    let each: Vec<&Value> = output["each"]
        .as_array()
        .expect("the map's outputs")
        .iter()
        .map(|o| &o["value"])
        .collect();
    assert_eq!(each, [&json!(1), &json!(1), &json!(1)]);
    assert_eq!(output["sub"]["value"], 1);
    let finished = status(&home, &run);
    assert_eq!(finished["status"], "completed");
    assert_eq!(finished["steps"]["shelve"]["state"], "skipped");
    assert_eq!(
        finished["steps"]["ask"]["output"]["by"]
            .as_str()
            .map(str::is_empty),
        Some(false)
    );
    // Each side effect ran once, under the step's own key.
    assert_eq!(counter(&home, &format!("workflow:{run}:count")), 1);
    for i in 0..3 {
        assert_eq!(counter(&home, &format!("workflow:{run}:each:{i}")), 1);
    }
    let runs = lion_run(&home, &["workflow", "list", "--json"])
        .success()
        .json();
    let sub = runs
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["origin"]["type"] == "parent")
        .expect("the sub-workflow's run");
    assert_eq!(sub["origin"]["run"], run.as_str());
    assert_eq!(sub["status"], "completed");
    let sub_id = sub["id"].as_str().expect("id");
    assert_eq!(counter(&home, &format!("workflow:{sub_id}:count")), 1);
    a_step_is_one_commit(&home, &run, "count");
    log_verifies(&home);
}

/// The task of run `run`'s work step `step` was claimed in the move that
/// scheduled it (one `task_started`, right after its submission), and its
/// end was recorded in the move that recorded the step's output (right
/// after the run's own events): one commit a step.
fn a_step_is_one_commit(home: &Path, run: &str, step: &str) {
    let events = lion_run(home, &["events", "list", "--json"])
        .success()
        .json_lines();
    let kind = |e: &Value| {
        e["event"]
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default()
    };
    let run_stream = format!("workflow:{run}");
    let at =
        |want: &dyn Fn(&Value) -> bool| events.iter().position(want).expect("the event in the log");
    let run_event = |e: &Value, kind: &str| {
        let event = &e["event"]["workflow_recorded"]["event"];
        e["stream"] == run_stream.as_str() && event["type"] == kind && event["step"] == step
    };
    let scheduled = at(&|e| run_event(e, "step_scheduled"));
    let task = events[scheduled]["event"]["workflow_recorded"]["event"]["task"]
        .as_str()
        .expect("the step's task")
        .to_owned();
    let task_stream = format!("task:{task}");
    let life: Vec<(usize, String)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["stream"] == task_stream.as_str())
        .map(|(i, e)| (i, kind(e)))
        .collect();
    let kinds: Vec<&str> = life.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["task_submitted", "task_started", "task_completed"],
        "{life:?}"
    );
    assert_eq!(life[1].0, life[0].0 + 1, "claimed in the scheduling move");
    let completed = at(&|e| run_event(e, "step_completed"));
    assert!(
        life[2].0 > completed
            && events[completed + 1..life[2].0]
                .iter()
                .all(|e| e["stream"] == run_stream.as_str()),
        "the task's end at {} does not ride the move recording the step's output at {completed}",
        life[2].0
    );
}

#[test]
fn an_approval_nobody_decides_takes_its_timeout_path_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let file = write(
        dir.path(),
        &[(
            "late.toml",
            r#"
name = "late"
[steps.ask]
kind = "approval"
prompt = "Anyone?"
timeout = "300ms"
on_timeout = "approve"
"#,
        )],
    );
    let _kernel = Kernel::start(&home, &[]);
    let mut log = LogFollower::new(&home);
    let run = start(&home, &file, "{}");
    let decided = log.until(&run, "approval_decided", Some("ask"));
    assert_eq!(decided["approved"], true);
    assert_eq!(decided["by"], "timeout");
    log.until(&run, "completed", None);
    // Too late for a person now.
    let late = lion_run(&home, &["workflow", "reject", &run, "ask"]);
    assert!(late.error_line(1).contains("has ended"), "{late:?}");
}

#[test]
fn cancelling_a_run_stops_its_running_task_its_waiting_approval_and_its_sub_run() {
    // Outside /tmp: the server's jail hides the system's /tmp.
    let dir = tempfile::Builder::new()
        .prefix("workflows-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let home = dir.path().join("home");
    let manifest = support::abuse_manifest(
        dir.path(),
        "slow",
        &["--armed".into()],
        &[],
        "\n[limits]\ntimeout_ms = 600000\n",
    );
    lion_run(&home, &["plugin", "install", &manifest]).success();
    let file = write(
        dir.path(),
        &[
            (
                "long.toml",
                r#"
name = "long"
[steps.work]
kind = "plugin"
plugin = "slow"
function = "abuse"
input = { case = "sleep", seconds = 600 }

[steps.ask]
kind = "approval"
prompt = "Wait for me"
timeout = "1d"

[steps.sub]
kind = "workflow"
workflow = "nap.toml"
"#,
            ),
            (
                "nap.toml",
                "name = \"nap\"\n[steps.nap]\nkind = \"timer\"\nduration = \"1d\"\n",
            ),
        ],
    );
    let _kernel = Kernel::start(&home, &[]);
    let mut log = LogFollower::new(&home);
    let run = start(&home, &file, "{}");
    let scheduled = log.until(&run, "step_scheduled", Some("work"));
    let task = scheduled["task"].as_str().expect("task").to_owned();
    log.until(&run, "approval_requested", Some("ask"));
    let sub = log.until(&run, "step_scheduled", Some("sub"))["task"]
        .as_str()
        .expect("sub-run id")
        .to_owned();
    log.until(&sub, "timer_set", Some("nap"));
    let out = lion_run(&home, &["workflow", "cancel", &run, "--json"])
        .success()
        .json();
    assert_eq!(out["status"], "cancelled");
    log.until(&run, "cancelled", None);
    log.until(&sub, "cancelled", None);
    // The task was cancelled with the run (the kernel stops its call).
    let shown = lion_run(&home, &["task", "show", &task, "--json"])
        .success()
        .json();
    assert_eq!(shown["status"], "cancelled", "{shown}");
    assert_eq!(status(&home, &run)["status"], "cancelled");
    assert_eq!(status(&home, &sub)["status"], "cancelled");
    let again = lion_run(&home, &["workflow", "cancel", &run]);
    assert!(
        again.error_line(1).contains("has already ended"),
        "{again:?}"
    );
    log_verifies(&home);
}

#[test]
fn a_run_keeps_the_definition_it_started_with_when_the_file_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let first = "name = \"v\"\n[output]\nvalue = \"one\"\n[steps.ask]\nkind = \"approval\"\nprompt = \"ok?\"\ntimeout = \"1h\"\n";
    let file = write(dir.path(), &[("v.toml", first)]);
    let _kernel = Kernel::start(&home, &[]);
    let mut log = LogFollower::new(&home);
    let run = start(&home, &file, "{}");
    log.until(&run, "approval_requested", Some("ask"));
    std::fs::write(&file, "name = \"v\"\n[output]\nvalue = \"two\"\n[steps.other]\nkind = \"timer\"\nduration = \"1s\"\n")
        .expect("change the file");
    lion_run(&home, &["workflow", "approve", &run, "ask"]).success();
    assert_eq!(log.until(&run, "completed", None)["output"], "one");
}

const CHAIN: &str = r#"
name = "chain"
[steps.a]
kind = "plugin"
plugin = "kv_counter"
function = "increment"
input = { key = "{{ key }}" }

[steps.b]
kind = "plugin"
plugin = "kv_counter"
function = "increment"
input = { key = "{{ key }}" }
after = ["a"]

[steps.c]
kind = "plugin"
plugin = "kv_counter"
function = "increment"
input = { key = "{{ key }}" }
after = ["b"]
"#;

#[test]
fn a_fork_reuses_the_outputs_upstream_of_its_step_without_running_them_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = home_with_counter(dir.path());
    let file = write(dir.path(), &[("chain.toml", CHAIN)]);
    let _kernel = Kernel::start(&home, &[]);
    let mut log = LogFollower::new(&home);
    let run = start(&home, &file, "{}");
    log.until(&run, "completed", None);
    let forked = lion_run(
        &home,
        &["workflow", "fork", &run, "--from", "b", "--wait", "--json"],
    )
    .success()
    .json();
    assert_eq!(forked["status"], "completed");
    let new = forked["run"].as_str().expect("the fork's id").to_owned();
    let shown = status(&home, &new);
    assert_eq!(
        shown["origin"],
        json!({"type": "fork", "run": run, "from": "b"})
    );
    // `a` was reused: its output is the old run's, and it never ran here.
    assert_eq!(
        shown["steps"]["a"]["output"]["key"],
        format!("workflow:{run}:a")
    );
    assert_eq!(counter(&home, &format!("workflow:{new}:a")), Value::Null);
    assert_eq!(counter(&home, &format!("workflow:{run}:a")), 1);
    // `b` and `c` ran again, under the fork's own keys.
    assert_eq!(counter(&home, &format!("workflow:{new}:b")), 1);
    assert_eq!(counter(&home, &format!("workflow:{new}:c")), 1);
    let unknown = lion_run(&home, &["workflow", "fork", &run, "--from", "nope"]);
    assert!(
        unknown.error_line(1).contains("no step `nope`"),
        "{unknown:?}"
    );
    log_verifies(&home);
}

#[test]
fn bad_definitions_and_inputs_are_one_line_errors_and_start_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let cases: [(&str, &str, &str); 4] = [
        (
            "cycle.toml",
            "name = \"c\"\n[steps.a]\nkind = \"timer\"\nduration = \"1s\"\nafter = [\"b\"]\n[steps.b]\nkind = \"timer\"\nduration = \"1s\"\nafter = [\"a\"]\n",
            "cycle",
        ),
        (
            "missing.toml",
            "name = \"m\"\n[steps.a]\nkind = \"timer\"\nduration = \"1s\"\nafter = [\"ghost\"]\n",
            "ghost",
        ),
        (
            "template.toml",
            "name = \"t\"\n[steps.a]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\ninput = { x = \"{{ inptu.x }}\" }\n",
            "inptu",
        ),
        (
            "schema.toml",
            "name = \"s\"\ninput = { type = \"object\", required = [\"topic\"] }\n[steps.a]\nkind = \"timer\"\nduration = \"1s\"\n",
            "topic",
        ),
    ];
    for (name, text, says) in cases {
        let file = write(dir.path(), &[(name, text)]);
        let out = lion_run(
            &home,
            &[
                "workflow",
                "run",
                file.to_str().expect("UTF-8"),
                "--input",
                "{}",
            ],
        );
        let line = out.error_line(1);
        assert!(line.contains(says), "{name}: {line}");
    }
    let not_json = lion_run(
        &home,
        &["workflow", "run", "cycle.toml", "--input", "{nope"],
    );
    assert_eq!(not_json.code, Some(1), "{not_json:?}");
    assert_eq!(support::events(&home), Vec::<Value>::new());
    let none = lion_run(
        &home,
        &[
            "workflow",
            "approve",
            "01234567-0123-7123-8123-0123456789ab",
            "ask",
        ],
    );
    assert!(none.error_line(1).contains("no workflow run"), "{none:?}");
}
