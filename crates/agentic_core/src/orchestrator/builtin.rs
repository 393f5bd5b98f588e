//! The built-in handlers that tests and demos need: `echo`, `sleep`, `fail`
//! and `fanout`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{TaskContext, TaskError, TaskHandler, TaskOutcome};
use crate::task::TaskSpec;

/// Every built-in handler, by name.
pub fn builtin_handlers() -> HashMap<String, Arc<dyn TaskHandler>> {
    let mut handlers: HashMap<String, Arc<dyn TaskHandler>> = HashMap::new();
    handlers.insert("echo".into(), Arc::new(Echo));
    handlers.insert("sleep".into(), Arc::new(Sleep));
    handlers.insert("fail".into(), Arc::new(Fail));
    handlers.insert("fanout".into(), Arc::new(Fanout));
    handlers
}

/// Returns its input.
struct Echo;

#[async_trait]
impl TaskHandler for Echo {
    async fn run(&self, _ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        Ok(input)
    }
}

/// `{"ms": N}`: waits N milliseconds (reporting progress halfway), then
/// returns `{"slept_ms": N}`.
struct Sleep;

#[async_trait]
impl TaskHandler for Sleep {
    async fn run(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        let ms = input
            .get("ms")
            .and_then(Value::as_u64)
            .ok_or_else(|| TaskError::new("sleep needs {\"ms\": <milliseconds>}"))?;
        tokio::time::sleep(Duration::from_millis(ms / 2)).await;
        ctx.progress(json!({"slept_ms": ms / 2}))
            .await
            .map_err(|e| TaskError::new(e.to_string()))?;
        tokio::time::sleep(Duration::from_millis(ms - ms / 2)).await;
        Ok(json!({"slept_ms": ms}))
    }
}

/// `{"message": M, "times": K}`: fails with M on the first K attempts (all
/// of them when K is absent), then returns its input.
struct Fail;

#[async_trait]
impl TaskHandler for Fail {
    async fn run(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        let message = input
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("failed on purpose");
        match input.get("times").and_then(Value::as_u64) {
            Some(times) if u64::from(ctx.attempt) > times => Ok(input),
            _ => Err(TaskError::new(message)),
        }
    }
}

/// `{"n": N, "handler": H, "input": I}`: starts N child tasks running H with
/// I, waits for all, and returns their outputs in order; fails if any does.
struct Fanout;

#[async_trait]
impl TaskHandler for Fanout {
    async fn run(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        let n = input
            .get("n")
            .and_then(Value::as_u64)
            .ok_or_else(|| TaskError::new("fanout needs {\"n\": <children>, ...}"))?;
        let handler = input
            .get("handler")
            .and_then(Value::as_str)
            .unwrap_or("echo");
        let child_input = input.get("input").cloned().unwrap_or(Value::Null);
        let mut children = Vec::new();
        for _ in 0..n {
            let spec = TaskSpec::new(handler, child_input.clone());
            let child = ctx
                .spawn_child(spec)
                .await
                .map_err(|e| TaskError::new(e.to_string()))?;
            children.push(child);
        }
        let outcomes = ctx
            .join(children)
            .await
            .map_err(|e| TaskError::new(e.to_string()))?;
        let mut outputs = Vec::with_capacity(outcomes.len());
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                TaskOutcome::Completed(v) => outputs.push(v),
                other => return Err(TaskError::new(format!("child {i} ended {other:?}"))),
            }
        }
        Ok(Value::Array(outputs))
    }
}
