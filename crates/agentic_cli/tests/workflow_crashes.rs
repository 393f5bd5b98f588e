//! A 20-step workflow (a chain, a map, an approval granted from another
//! process while no kernel runs, a timer, a condition) whose plugin steps
//! make their side effect through `kv_counter.once` under the step's
//! idempotency key, and two slow steps call a server plugin that sleeps.
//! One run goes through uninterrupted; then runs go on
//! while their kernel is killed with SIGKILL at least 50 times, each time
//! right after an event of a chosen kind appears in the log (each kind of
//! workflow event, a step's task started or its plugin called but not
//! answered, an approval waiting). Every run must end with the uninterrupted
//! run's output, each side effect made once, no step's task running after
//! its step completed, and the log must verify.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use support::{Kernel, LogFollower, lion_run, plugin_dist};

/// Kills wanted in all.
const KILLS: usize = 50;

/// The kinds of event a kill follows, in turn: every kind of workflow
/// event, and the moments between a step's start and its output.
const TRIGGERS: [&str; 14] = [
    "started",
    "step_scheduled",
    "task_started",
    "plugin_invoked",
    "task_completed",
    "step_completed",
    "map_expanded",
    "approval_requested",
    "timer_set",
    "timer_fired",
    "step_skipped",
    "plugin_succeeded",
    "approval_decided",
    "task_submitted",
];

fn flow() -> String {
    let once = |id: &str, after: &str| {
        format!(
            "[steps.{id}]\nkind = \"plugin\"\nplugin = \"kv_counter\"\nfunction = \"once\"\n\
             input = {{ key = \"{{{{ key }}}}\" }}\nafter = [{after}]\n\n"
        )
    };
    let mut text = String::from(
        "name = \"crashes\"\ninput = { type = \"object\", required = [\"items\"] }\n\n[output]\n\
         value = { chain = \"{{ steps.s01.output.effects }}{{ steps.s02.output.effects }}\
         {{ steps.s03.output.effects }}{{ steps.s04.output.effects }}{{ steps.s05.output.effects }}\
         {{ steps.s06.output.effects }}{{ steps.s07.output.effects }}{{ steps.s08.output.effects }}\", \
         fan = \"{% for o in steps.fan.output %}{{ o.effects }}{% endfor %}\", \
         go = \"{{ steps.go.output.effects }}\", approved = \"{{ steps.ask.output.approved }}\", \
         tail = \"{{ steps.s09.output.effects }}{{ steps.s10.output.effects }}{{ steps.s11.output.effects }}\
         {{ steps.s12.output.effects }}\", slow = \"{{ steps.slow2.output }}\" }\n\n",
    );
    text.push_str(&once("s01", ""));
    for i in 2..=8 {
        text.push_str(&once(&format!("s{i:02}"), &format!("\"s{:02}\"", i - 1)));
    }
    text.push_str(
        "[steps.fan]\nkind = \"map\"\nover = \"{{ input.items }}\"\nconcurrency = 2\nafter = [\"s08\"]\n\
         each = { kind = \"plugin\", plugin = \"kv_counter\", function = \"once\", input = { key = \"{{ key }}\" } }\n\n\
         [steps.ask]\nkind = \"approval\"\nprompt = \"Go on?\"\ntimeout = \"1h\"\nafter = [\"fan\"]\n\n\
         [steps.nap]\nkind = \"timer\"\nduration = \"200ms\"\nafter = [\"ask\"]\n\n\
         [steps.route]\nkind = \"condition\"\nafter = [\"nap\"]\n\
         branches = [{ when = \"{{ steps.ask.output.approved }}\", then = \"go\" }]\notherwise = \"stop\"\n\n\
         [steps.stop]\nkind = \"timer\"\nduration = \"1s\"\n\n",
    );
    text.push_str(&once("go", ""));
    text.push_str(&once("s09", "\"go\""));
    for i in 10..=12 {
        text.push_str(&once(&format!("s{i}"), &format!("\"s{:02}\"", i - 1)));
    }
    // Two steps slow enough that a kill lands while their call runs.
    for (id, after) in [("slow1", "s12"), ("slow2", "slow1")] {
        text.push_str(&format!(
            "[steps.{id}]\nkind = \"plugin\"\nplugin = \"slow\"\nfunction = \"abuse\"\n\
             input = {{ case = \"sleep\", seconds = 0.3 }}\nafter = [\"{after}\"]\n\n"
        ));
    }
    text
}

/// Starts a run; its id. With no kernel running, it waits for one.
fn start(home: &Path, file: &Path) -> String {
    let out = lion_run(
        home,
        &[
            "workflow",
            "run",
            file.to_str().expect("UTF-8"),
            "--input",
            r#"{"items": ["a", "b", "c", "d"]}"#,
            "--json",
        ],
    )
    .success()
    .json();
    out["run"].as_str().expect("run id").to_owned()
}

fn approve(home: &Path, run: &str) {
    lion_run(home, &["workflow", "approve", run, "ask"]).success();
}

/// Runs one run to its end under a kernel killed after each event of the
/// next trigger kind; its output, and the kills it took.
fn run_with_kills(home: &Path, file: &Path, log: &mut LogFollower, kills: &mut usize) -> Value {
    let run = start(home, file);
    let mut kernel = Some(Kernel::start(home, &[]));
    let mut slow_tasks = BTreeSet::new();
    loop {
        let target = TRIGGERS[*kills % TRIGGERS.len()];
        let (kind, body, record) = log.next();
        let ours = body.get("run").is_none_or(|r| r == run.as_str());
        if ours && kind == "completed" {
            return body["event"]["output"].clone();
        }
        if ours && kind == "failed" {
            panic!("the run failed: {body}");
        }
        if ours && kind == "approval_requested" {
            // The approval waits: kill the kernel, approve from another
            // process with no kernel running, start one again.
            drop(kernel.take());
            *kills += 1;
            approve(home, &run);
            kernel = Some(Kernel::start(home, &[]));
            continue;
        }
        if kind == "plugin_invoked"
            && body["name"] == "slow"
            && slow_tasks.insert(record["causation_id"].to_string())
        {
            // Between a slow step's start and its output (once per step:
            // its next attempt runs through).
            drop(kernel.take());
            *kills += 1;
            kernel = Some(Kernel::start(home, &[]));
            continue;
        }
        if ours && kind == target && *kills < KILLS {
            drop(kernel.take()); // SIGKILL
            *kills += 1;
            kernel = Some(Kernel::start(home, &[]));
        }
    }
}

#[test]
fn a_run_killed_fifty_times_ends_as_an_uninterrupted_run_and_makes_each_effect_once() {
    // Outside /tmp: the slow server's jail hides the system's /tmp.
    let dir = tempfile::Builder::new()
        .prefix("workflow-crashes-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let home = dir.path().join("home");
    let slow = support::abuse_manifest(
        dir.path(),
        "slow",
        &["--armed".into()],
        &[],
        "\n[limits]\ntimeout_ms = 60000\n",
    );
    lion_run(&home, &["plugin", "install", &slow]).success();
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
    let file = dir.path().join("crashes.toml");
    std::fs::write(&file, flow()).expect("write the definition");
    lion_run(&home, &["workflow", "check", file.to_str().expect("UTF-8")]).success();
    let mut log = LogFollower::new(&home);

    // Uninterrupted, approved while the kernel runs.
    let reference = {
        let _kernel = Kernel::start(&home, &[]);
        let run = start(&home, &file);
        loop {
            let (kind, body, _) = log.next();
            match kind.as_str() {
                "approval_requested" if body["run"] == run.as_str() => approve(&home, &run),
                "completed" if body["run"] == run.as_str() => {
                    break body["event"]["output"].clone();
                }
                "failed" => panic!("the run failed: {body}"),
                _ => {}
            }
        }
    };
    assert_eq!(reference["chain"], "11111111");
    assert_eq!(reference["fan"], "1111");
    assert_eq!(reference["tail"], "1111");

    let mut kills = 0;
    let mut runs = 0;
    while kills < KILLS {
        let output = run_with_kills(&home, &file, &mut log, &mut kills);
        assert_eq!(output, reference, "run {runs} after {kills} kills");
        runs += 1;
    }
    assert!(kills >= KILLS);
    eprintln!("{kills} kills over {runs} runs, each ended as the uninterrupted one");

    // Each side effect was made once: one `effect_made` per key.
    let events = support::events(&home);
    let mut effects: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        if let Some(emitted) = e["event"].get("plugin_emitted")
            && emitted["kind"] == "effect_made"
        {
            *effects
                .entry(emitted["data"]["key"].as_str().expect("key").to_owned())
                .or_default() += 1;
        }
    }
    // 12 chained steps and `go`, and 4 map items, per run.
    assert_eq!(effects.len(), (runs + 1) * 17, "{effects:?}");
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");

    // No step's task ran after its step completed.
    let mut completed_at: BTreeMap<String, u64> = BTreeMap::new();
    let mut step_tasks: BTreeSet<String> = BTreeSet::new();
    for e in &events {
        if let Some(recorded) = e["event"].get("workflow_recorded")
            && recorded["event"]["type"] == "step_scheduled"
        {
            step_tasks.insert(recorded["event"]["task"].as_str().expect("task").to_owned());
        }
        if let Some(done) = e["event"].get("task_completed") {
            let task = done["task_id"].as_str().expect("task").to_owned();
            let seq = e["seq"].as_u64().expect("seq");
            assert!(
                completed_at.insert(task.clone(), seq).is_none(),
                "task {task} completed twice"
            );
        }
    }
    for e in &events {
        let started = e["event"]
            .get("task_started")
            .or_else(|| e["event"].get("plugin_invoked"));
        let task = match started {
            Some(s) if s.get("task_id").is_some() => s["task_id"].as_str(),
            Some(_) => e["causation_id"].as_str(),
            None => None,
        };
        if let Some(task) = task
            && step_tasks.contains(task)
            && let Some(done) = completed_at.get(task)
        {
            assert!(
                e["seq"].as_u64().expect("seq") < *done,
                "task {task} ran after it completed: {e}"
            );
        }
    }
    let interrupted = events
        .iter()
        .filter(|e| {
            e["event"]["task_failed"]["error"]
                .as_str()
                .is_some_and(|m| m.starts_with("interrupted"))
        })
        .count();
    eprintln!("{interrupted} step attempts were interrupted and run again");
    // Each slow step's first call was killed under it.
    assert!(
        interrupted >= 2 * (runs),
        "{interrupted} interrupted attempts"
    );
    lion_run(&home, &["events", "verify"]).success();
    lion_run(&home, &["replay"]).success();
}
