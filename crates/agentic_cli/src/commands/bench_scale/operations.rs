//! The commands `bench scale` measures, and one run of one of them as a
//! fresh traced `lion` process: its output checked, `lion run` stopped at
//! its ready line, a watchdog killing one that runs too long.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::home::{BuiltHome, EMPTY};
use super::trace::{follow, signal, trace_me};
use super::{ANSWER, FUNCTION, GREETING, INPUT, MODEL, READY_LINE, Sample, lion};

/// The log filter that makes `lion run` log [`READY_LINE`] and nothing else.
const READY_LOG_FILTER: &str = "warn,agentic_core::kernel=info";

/// One command as a fresh `lion` process.
pub(super) struct Operation {
    pub(super) label: String,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    /// What its stdout must contain (it must also exit 0).
    expect: Option<String>,
    /// A kernel: timed to its ready line, then stopped with SIGTERM.
    kernel: bool,
}

/// The commands measured on a home, in table order.
pub(super) fn operations(home: &BuiltHome, turn_agent: &str, url: &str) -> Vec<Operation> {
    let plain = |label: &str, args: Vec<String>, expect: Option<String>| Operation {
        label: label.to_owned(),
        args,
        envs: Vec::new(),
        expect,
        kernel: false,
    };
    let strings = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let element = home.element.to_string();
    let task = home.task.to_string();
    vec![
        plain(
            "element show ID",
            strings(&["element", "show", &element]),
            Some(element.clone()),
        ),
        plain(
            "task show ID",
            strings(&["task", "show", &task]),
            Some(task.clone()),
        ),
        plain(
            &format!("plugin call NAME {FUNCTION} --input {INPUT}"),
            strings(&["plugin", "call", &home.plugin, FUNCTION, "--input", INPUT]),
            Some(GREETING.to_owned()),
        ),
        Operation {
            label: format!(
                "agent send: a turn of an agent with {} messages (scripted provider)",
                EMPTY.turns * 2
            ),
            args: strings(&["agent", "send", turn_agent, "What changed?"]),
            envs: vec![
                ("LION_LLM_BASE_URL", url.to_owned()),
                ("LION_LLM_MODEL", MODEL.to_owned()),
            ],
            expect: Some(ANSWER.concat()),
            kernel: false,
        },
        plain(
            "task submit --handler echo --wait, no kernel running",
            strings(&[
                "task",
                "submit",
                "--handler",
                "echo",
                "--input",
                r#"{"scale":"bench"}"#,
                "--wait",
            ]),
            Some("scale".to_owned()),
        ),
        Operation {
            label: format!("run: start until it logs {READY_LINE:?}, then SIGTERM"),
            args: strings(&["run"]),
            envs: vec![("RUST_LOG", READY_LOG_FILTER.to_owned())],
            expect: None,
            kernel: true,
        },
    ]
}

impl Operation {
    /// Runs it once on `home`: its wall time and peak RSS. Fails unless it
    /// did what it should (exit 0, the expected output, the ready line).
    pub(super) fn run(&self, exe: &Path, home: &Path) -> Result<Sample> {
        let mut cmd = lion(exe, home);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        trace_me(&mut cmd);
        // The thread that spawns the child is its tracer: it does all the
        // following below.
        let mut child = cmd.spawn().context(
            "cannot start lion traced (bench scale reads each process's peak memory at its exit)",
        )?;
        let pid = child.id();
        let mut stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        drop(child);
        let out = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let kernel = self.kernel;
        let err = std::thread::spawn(move || {
            let mut said = Vec::new();
            let mut ready = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if kernel && ready.is_none() && line.contains(READY_LINE) {
                    ready = Some(Instant::now());
                    // The kernel runs: stop it, as an operator would.
                    let _ = signal(pid, libc::SIGTERM);
                }
                said.push(line);
            }
            (said, ready)
        });
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let late = matches!(
                finished.recv_timeout(OPERATION_TIMEOUT),
                Err(RecvTimeoutError::Timeout)
            );
            if late {
                let _ = signal(pid, libc::SIGKILL);
            }
            late
        });
        let traced = follow(pid, move || drop(done));
        let late = watchdog.join().unwrap_or(false);
        let stdout = out.join().unwrap_or_default();
        let (said, ready) = err.join().unwrap_or_default();
        if late {
            bail!(
                "lion did not finish within {OPERATION_TIMEOUT:?} and was killed: {}",
                said.join(" / ")
            );
        }
        let traced = traced?;
        if !traced.status.success() {
            bail!("lion {}: {}", traced.status, said.join(" / "));
        }
        let ended = match (kernel, ready) {
            (false, _) => traced.exited,
            (true, Some(ready)) => ready,
            (true, None) => bail!(
                "lion run never printed {READY_LINE:?}: {}",
                said.join(" / ")
            ),
        };
        if let Some(expect) = &self.expect
            && !stdout.contains(expect.as_str())
        {
            bail!("lion printed {stdout:?}, without {expect:?}");
        }
        Ok(Sample {
            wall: ended.saturating_duration_since(traced.exec),
            rss_kib: traced.peak_rss_kib,
        })
    }
}

/// Longest one command may run before the bench kills it and fails:
/// generous, since a kernel that loads a whole 1M-event state is slow, and
/// this bench exists to show it.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);
