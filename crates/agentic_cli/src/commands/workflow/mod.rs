//! `lion workflow …`: `check FILE` reads a workflow definition and its
//! sub-workflows, checks them, and prints the steps in the order they can
//! run; the commands on runs (start, list, status, history, approve,
//! reject, cancel, fork) are in [`runs`].

pub mod runs;

use std::path::Path;
use std::time::Duration;

use agentic_core::workflow::definition::{Call, Definition, OnTimeout, Step, StepKind};
use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::output;

/// `lion workflow check FILE`: the definition's steps, or the first
/// problem in one line (exit 1).
pub fn check(ctx: Ctx, file: &Path) -> Result<()> {
    let definition = Definition::load(file)?;
    if ctx.json {
        let steps: Vec<_> = definition
            .order
            .iter()
            .map(|id| {
                let step = &definition.steps[id];
                json!({
                    "id": id,
                    "kind": step.kind.name(),
                    "does": does(step),
                    "after": step.after,
                })
            })
            .collect();
        return output::json(&json!({
            "name": definition.name,
            "hash": definition.sources.hash(),
            "files": definition.sources.files.keys().collect::<Vec<_>>(),
            "steps": steps,
        }));
    }
    outln!(
        "workflow {}: {} step(s), valid (sources {})",
        definition.name,
        definition.steps.len(),
        &definition.sources.hash()[..16]
    );
    let mut table = output::table(["step", "kind", "does", "after"]);
    for id in &definition.order {
        let step = &definition.steps[id];
        let after: Vec<&str> = step.after.iter().map(String::as_str).collect();
        table.add_row(vec![
            id.clone(),
            step.kind.name().to_owned(),
            does(step),
            after.join(", "),
        ]);
    }
    outln!("{table}");
    Ok(())
}

/// What a step does, in a few words.
pub(crate) fn does(step: &Step) -> String {
    match &step.kind {
        StepKind::Work(work) => call(&work.call),
        StepKind::Approval {
            timeout,
            on_timeout,
            ..
        } => {
            let then = match on_timeout {
                OnTimeout::Reject => "rejected",
                OnTimeout::Approve => "approved",
                OnTimeout::Fail => "the run fails",
            };
            format!("waits up to {}, then {then}", span(*timeout))
        }
        StepKind::Timer { duration } => format!("waits {}", span(*duration)),
        StepKind::Map {
            concurrency, each, ..
        } => format!("{} for each item, {concurrency} at once", call(&each.call)),
        StepKind::Condition {
            branches,
            otherwise,
        } => {
            let mut picks: Vec<&str> = branches.iter().map(|b| b.then.as_str()).collect();
            picks.extend(otherwise.as_deref());
            format!("picks one of {}", picks.join(", "))
        }
    }
}

fn call(call: &Call) -> String {
    match call {
        Call::Plugin {
            plugin, function, ..
        } => format!("calls {plugin}.{function}"),
        Call::Agent { agent, .. } => format!("asks agent {agent}"),
        Call::Workflow { path, .. } => format!("runs {path}"),
    }
}

/// A duration in the largest whole units that say it exactly.
pub(crate) fn span(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}
