//! Multi-agent patterns on the [`AgentRunner`]: agents talk only by
//! messages, every one of them in the log.
//!
//! - [`forward`] — a direct message: one agent's answer becomes another's
//!   prompt.
//! - [`fan_out`] — a planner splits a task into one line per subtask; worker
//!   agents run them in parallel; the planner gets the results back and
//!   answers with them.
//! - [`round_robin`] — agents take turns on a conversation until one says
//!   the stop word or the turns run out.
//!
//! Each takes a cancellation token: cancelling it stops every agent the
//! pattern started (workers get child tokens).

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{AgentRunner, RunError, RunOutcome};

/// One agent and the model it answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// The agent's name.
    pub agent: String,
    /// The model it uses.
    pub model: String,
}

/// Sends `text` to `from`, then `from`'s answer to `to`; both answers.
pub async fn forward(
    runner: &AgentRunner,
    from: &Participant,
    to: &Participant,
    text: &str,
    cancel: CancellationToken,
) -> Result<(RunOutcome, RunOutcome), RunError> {
    let first = runner
        .send(&from.agent, text, &from.model, cancel.clone())
        .await?;
    let second = runner
        .send(&to.agent, &first.message.content, &to.model, cancel)
        .await?;
    Ok((first, second))
}

/// What a fan-out produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    /// The planner's plan: one subtask per non-empty line.
    pub subtasks: Vec<String>,
    /// Each subtask's worker answer, in subtask order.
    pub results: Vec<RunOutcome>,
    /// The planner's final answer, given the results.
    pub summary: RunOutcome,
}

/// The planner plans `task` (one subtask per line); subtask *i* goes to
/// worker *i mod n*, all in parallel; the planner then answers given every
/// result. A worker failing fails the fan-out and cancels the others.
pub async fn fan_out(
    runner: &AgentRunner,
    planner: &Participant,
    workers: &[Participant],
    task: &str,
    cancel: CancellationToken,
) -> Result<FanOut, RunError> {
    if workers.is_empty() {
        return Err(RunError::Invalid(
            "a fan-out needs at least one worker".into(),
        ));
    }
    let plan = runner
        .send(&planner.agent, task, &planner.model, cancel.clone())
        .await?;
    let subtasks: Vec<String> = plan
        .message
        .content
        .lines()
        .map(|l| {
            l.trim()
                .trim_start_matches(['-', '*', ' '])
                .trim()
                .to_owned()
        })
        .filter(|l| !l.is_empty())
        .collect();
    let children = cancel.child_token();
    let mut running = JoinSet::new();
    for (i, subtask) in subtasks.iter().enumerate() {
        let worker = workers[i % workers.len()].clone();
        let runner = runner.clone();
        let subtask = subtask.clone();
        let token = children.child_token();
        running.spawn(async move {
            let outcome = runner
                .send(&worker.agent, &subtask, &worker.model, token)
                .await;
            (i, outcome)
        });
    }
    let mut results: Vec<Option<RunOutcome>> = vec![None; subtasks.len()];
    let mut failed = None;
    // On the first failure the other workers are cancelled, and still
    // awaited, so each records how it stopped.
    while let Some(joined) = running.join_next().await {
        let outcome = joined
            .map_err(|e| RunError::Invalid(format!("a worker task failed: {e}")))
            .and_then(|(i, outcome)| outcome.map(|o| (i, o)));
        match outcome {
            Ok((i, outcome)) => results[i] = Some(outcome),
            Err(e) => {
                children.cancel();
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let results: Vec<RunOutcome> = results.into_iter().flatten().collect();
    let mut report = String::from("Results of the subtasks:\n");
    for (subtask, result) in subtasks.iter().zip(&results) {
        report.push_str(&format!("- {subtask}: {}\n", result.message.content));
    }
    let summary = runner
        .send(&planner.agent, &report, &planner.model, cancel)
        .await?;
    Ok(FanOut {
        subtasks,
        results,
        summary,
    })
}

/// The participants take turns, in order, each answering the previous
/// answer (the first answers `opening`), until an answer contains
/// `stop_word` or `max_turns` answers were given. Every answer, in order.
pub async fn round_robin(
    runner: &AgentRunner,
    participants: &[Participant],
    opening: &str,
    stop_word: &str,
    max_turns: usize,
    cancel: CancellationToken,
) -> Result<Vec<(String, RunOutcome)>, RunError> {
    let mut transcript = Vec::new();
    let mut message = opening.to_owned();
    for turn in 0..max_turns {
        let Some(p) = participants.get(turn % participants.len().max(1)) else {
            break;
        };
        let answer = runner
            .send(&p.agent, &message, &p.model, cancel.clone())
            .await?;
        message = answer.message.content.clone();
        let done = message.contains(stop_word);
        transcript.push((p.agent.clone(), answer));
        if done {
            break;
        }
    }
    Ok(transcript)
}
