//! Helpers shared by the CLI tests: running the real `lion` binary on a
//! temporary home, reading what it printed, and reaching into the home's
//! files the way a tamperer (or a broken disk) would.

// Each test binary uses its own share of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Output;

pub mod provider;
pub mod python;
pub mod serve;

use assert_cmd::Command;
use assert_cmd::cargo::cargo_bin_cmd;
use serde_json::Value;
use uuid::Uuid;

/// Environment variables `lion` reads; removed from every run so the
/// developer's own environment cannot leak into a test.
const LION_ENV: &[&str] = &[
    "LION_HOME",
    "LION_STORE",
    "LION_BUSY_TIMEOUT_MS",
    "LION_LLM_BASE_URL",
    "LION_LLM_MODEL",
    "LION_LLM_API_KEY",
    "RUST_LOG",
    "NO_COLOR",
    // scripts/bench-slow-flush's shim and what it tells the benches.
    "LD_PRELOAD",
    "LION_SLOW_FLUSH_US",
    "LION_BENCH_FLUSH_EMULATION",
];

/// Removes the variables `lion` reads from a command's environment.
pub trait ClearLion {
    /// This command, without them.
    fn env_clear_lion(&mut self) -> &mut Self;
}

impl ClearLion for std::process::Command {
    fn env_clear_lion(&mut self) -> &mut Self {
        for var in LION_ENV {
            self.env_remove(var);
        }
        self
    }
}

/// `lion` with a clean environment and no home chosen.
pub fn lion() -> Command {
    let mut cmd = cargo_bin_cmd!("lion");
    for var in LION_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// `lion --home <home>` with a clean environment.
pub fn lion_at(home: &Path) -> Command {
    let mut cmd = lion();
    cmd.arg("--home").arg(home);
    cmd
}

/// What one run of `lion` did.
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.signal
                .map(|s| format!(" (killed by signal {s})"))
                .unwrap_or_default(),
            self.stdout,
            self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self {
            code: o.status.code(),
            signal: o.status.signal(),
            stdout: String::from_utf8(o.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(o.stderr).expect("stderr is UTF-8"),
        }
    }
}

impl Run {
    /// Asserts the run succeeded; returns it for further checks.
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(self.code, Some(0), "expected success, got {self:?}");
        self
    }

    /// Asserts the run failed with exit code `code` and printed exactly one
    /// line on stderr, starting with `error: `; returns that line.
    #[track_caller]
    pub fn error_line(&self, code: i32) -> &str {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}, got {self:?}"
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one line on stderr, got {self:?}"
        );
        assert!(
            lines[0].starts_with("error: "),
            "stderr must start with `error: `, got {self:?}"
        );
        lines[0]
    }

    /// Stdout parsed as one JSON value per line.
    #[track_caller]
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect()
    }

    /// Stdout parsed as a single JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        let mut lines = self.json_lines();
        assert_eq!(lines.len(), 1, "expected one JSON line, got {self:?}");
        lines.remove(0)
    }
}

/// Runs `cmd` to completion and captures what it did.
#[track_caller]
pub fn run(cmd: &mut Command) -> Run {
    cmd.output().expect("run lion").into()
}

/// `lion --home <home> <args…>`, run to completion.
#[track_caller]
pub fn lion_run(home: &Path, args: &[&str]) -> Run {
    run(lion_at(home).args(args))
}

/// Parses the one line `create-element` prints: the new element's id.
#[track_caller]
pub fn parse_id(run: &Run) -> Uuid {
    let line = run.stdout.trim_end();
    assert_eq!(line.lines().count(), 1, "expected one line, got {run:?}");
    line.parse()
        .unwrap_or_else(|e| panic!("not a UUID ({e}): {run:?}"))
}

/// Creates an element with `create-element` in its own process; returns its id.
#[track_caller]
pub fn create(home: &Path, metadata: &str, content: Option<&str>) -> Uuid {
    let mut cmd = lion_at(home);
    cmd.args(["create-element", "--metadata", metadata]);
    if let Some(c) = content {
        cmd.args(["--content", c]);
    }
    parse_id(&run(&mut cmd).success())
}

/// Creates `n` elements with metadata `{"n": i}` (i from 1), one process
/// each; returns their ids in creation order. Element i is event seq i on a
/// fresh home.
#[track_caller]
pub fn fill(home: &Path, n: usize) -> Vec<Uuid> {
    (1..=n)
        .map(|i| {
            create(
                home,
                &format!(r#"{{"n":{i}}}"#),
                Some(&format!("element {i}")),
            )
        })
        .collect()
}

/// Creates `n` elements with a few hundred bytes of metadata each, so the
/// database spans many pages.
#[track_caller]
pub fn fill_big(home: &Path, n: usize) {
    let pad = "x".repeat(200);
    for i in 1..=n {
        create(home, &format!(r#"{{"n":{i},"pad":"{pad}"}}"#), None);
    }
}

/// The elements `list-elements --json` prints.
#[track_caller]
pub fn elements(home: &Path) -> Vec<Value> {
    let run = lion_run(home, &["list-elements", "--json"]).success();
    match run.json() {
        Value::Array(all) => all,
        other => panic!("list-elements --json printed {other}, not an array"),
    }
}

/// The events `events list --json` prints, one per line.
#[track_caller]
pub fn events(home: &Path) -> Vec<Value> {
    lion_run(home, &["events", "list", "--json"])
        .success()
        .json_lines()
}

/// The ids of a list of elements, as strings.
pub fn ids(elements: &[Value]) -> Vec<String> {
    elements
        .iter()
        .map(|e| e["id"].as_str().expect("element id").to_owned())
        .collect()
}

/// Path of a home's database.
pub fn db_path(home: &Path) -> PathBuf {
    home.join("lion.db")
}

/// Opens a home's database directly, as another program would.
#[track_caller]
pub fn open_db(home: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(db_path(home)).expect("open lion.db with rusqlite")
}

/// Opens a home's database and drops the triggers that keep `events`
/// append-only, as a tamperer with write access to the file would.
#[track_caller]
pub fn tamper(home: &Path) -> rusqlite::Connection {
    let conn = open_db(home);
    conn.execute_batch(
        "DROP TRIGGER events_are_append_only_update;
         DROP TRIGGER events_are_append_only_delete;",
    )
    .expect("drop the append-only triggers");
    conn
}

/// Every file of a directory, by name, with its bytes.
#[track_caller]
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read home directory")
        .map(|entry| {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).expect("read file");
            (name, bytes)
        })
        .collect()
}

/// Asserts a directory holds exactly the files (names and bytes) of `before`.
#[track_caller]
pub fn assert_unchanged(dir: &Path, before: &BTreeMap<String, Vec<u8>>) {
    let after = snapshot(dir);
    let names = |s: &BTreeMap<String, Vec<u8>>| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&after), names(before), "the home's files changed");
    for (name, bytes) in before {
        assert!(
            after[name] == *bytes,
            "{name} changed ({} bytes before, {} after)",
            bytes.len(),
            after[name].len()
        );
    }
}

/// Builds the example plugins once per test binary (`scripts/build-plugins`);
/// returns `plugins/dist`, where each is staged with its manifest.
pub fn plugin_dist() -> &'static Path {
    static DIST: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIST.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = std::process::Command::new(repo.join("scripts/build-plugins"))
            .status()
            .expect("run scripts/build-plugins");
        assert!(status.success(), "building the plugins failed");
        repo.join("plugins/dist")
    })
}

/// The kinds of the events in a home's log, in order.
#[track_caller]
pub fn event_kinds(home: &Path) -> Vec<String> {
    events(home)
        .iter()
        .map(|e| {
            e["event"]
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .expect("event kind")
        })
        .collect()
}

/// A `lion run` kernel in the background, killed on drop; what it logs is
/// kept.
pub struct Kernel {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Kernel {
    /// Kills the kernel; when the test is failing, first says whether the
    /// kernel was still running and what it wrote, so a failure that comes
    /// from the kernel (it exited, it lost its lease) shows why.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let status = match self.child.try_wait() {
                Ok(Some(status)) => format!("had exited ({status})"),
                Ok(None) => "was still running".to_owned(),
                Err(e) => format!("could not be asked ({e})"),
            };
            eprintln!(
                "kernel pid {} {status}; its stderr:\n{}",
                self.child.id(),
                self.stderr()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kernel {
    /// Starts `lion run` with `envs` set and waits until it says it is
    /// running.
    pub fn start(home: &Path, envs: &[(&str, &str)]) -> Self {
        Self::start_with(home, envs, &[])
    }

    /// Starts `lion run ARGS...` with `envs` set and waits until it says it
    /// is running.
    pub fn start_with(home: &Path, envs: &[(&str, &str)], args: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lion"))
            .arg("--home")
            .arg(home)
            .arg("run")
            .args(args)
            .env_clear_lion()
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start lion run");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        loop {
            let line = lines
                .next()
                .expect("the kernel stopped before saying it runs")
                .expect("read stderr");
            stderr.lock().unwrap().push_str(&format!("{line}\n"));
            if line.contains("lion kernel running") {
                break;
            }
        }
        // Keep draining stderr so the kernel never blocks on a full pipe.
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self { child, stderr }
    }

    /// The kernel's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the kernel to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for the kernel")
    }

    /// What the kernel has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// The abuse test server of the MCP adapter's tests: harmless unless armed.
pub const ABUSE_SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../agentic_mcp/tests/servers/abuse_server.py"
);

/// Python's real interpreter and the prefix its standard library is under.
pub fn python() -> (String, String) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable)); print(sys.base_prefix)",
        ])
        .output()
        .expect("python3 is on PATH");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut lines = text.lines().map(str::to_owned);
    (lines.next().expect("path"), lines.next().expect("prefix"))
}

/// Writes a manifest for the abuse server (named `name`, with `args` after
/// the script) in `dir/name`, asking for `dirs` read-only, with `extra`
/// TOML at its end; its path.
pub fn abuse_manifest(
    dir: &Path,
    name: &str,
    args: &[String],
    dirs: &[&Path],
    extra: &str,
) -> String {
    let (python, prefix) = python();
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("plugin folder");
    // A copy of the server is the plugin's own folder (its tree).
    let server = folder.join("abuse_server.py");
    std::fs::copy(ABUSE_SERVER, &server).expect("copy the abuse server");
    let mut all_args = vec![server.display().to_string()];
    all_args.extend(args.iter().cloned());
    let mut toml = format!(
        "name = {name:?}\nversion = \"1\"\ndescription = \"the abuse test server\"\n\n\
         [server]\ncommand = {python:?}\nargs = {all_args:?}\nread_only = [{prefix:?}]\n",
    );
    for d in dirs {
        let d = d.display().to_string();
        toml.push_str(&format!(
            "\n[[permissions.dirs]]\npath = {d:?}\nguest = {d:?}\nmode = \"read-only\"\n"
        ));
    }
    toml.push_str(extra);
    let manifest = folder.join("plugin.toml");
    std::fs::write(&manifest, toml).expect("manifest");
    manifest.display().to_string()
}

/// The log as `lion events tail --from 1 --json` follows it, stopped on drop.
pub struct LogFollower {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl LogFollower {
    /// Follows the log of `home` from its first event.
    pub fn new(home: &Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lion"))
            .env_clear_lion()
            .arg("--home")
            .arg(home)
            .args(["events", "tail", "--from", "1", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start events tail");
        let stdout = child.stdout.take().expect("stdout");
        Self {
            child,
            lines: std::io::BufReader::new(stdout).lines(),
        }
    }

    /// The next event: its kind (a workflow event's own `type`), its body
    /// (a workflow event's `{run, event}`), and its whole record.
    #[track_caller]
    pub fn next(&mut self) -> (String, Value, Value) {
        let line = self
            .lines
            .next()
            .expect("the log goes on")
            .expect("read the log");
        let record: Value = serde_json::from_str(&line).expect("JSON");
        let (kind, body) = record["event"]
            .as_object()
            .and_then(|o| o.iter().next())
            .map(|(k, v)| (k.clone(), v.clone()))
            .expect("an event");
        match kind.as_str() {
            "workflow_recorded" => (
                body["event"]["type"].as_str().expect("type").to_owned(),
                body,
                record,
            ),
            _ => (kind, body, record),
        }
    }

    /// Reads on until run `run` records an event of type `kind` (about
    /// step `step`, if given); that event.
    #[track_caller]
    pub fn until(&mut self, run: &str, kind: &str, step: Option<&str>) -> Value {
        loop {
            let (k, body, _) = self.next();
            if k == kind && body["run"] == run && step.is_none_or(|s| body["event"]["step"] == s) {
                return body["event"].clone();
            }
        }
    }
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
