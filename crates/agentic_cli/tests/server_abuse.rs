//! The abuse suite of the subprocess sandbox, through the real `lion`
//! binary: lion's misbehaving test server (`abuse_server.py` of
//! agentic_mcp's tests) installed as a manifest-form server plugin, told to
//! misbehave one way per case. Each case asserts what the server observed
//! (the errno the OS answered inside the jail) or what lion recorded (a
//! `plugin_failed` event with its failure kind, trap and message), with a
//! positive control beside it: the same action inside the grant succeeds,
//! a raised limit lets it through, the host itself reaches the listener the
//! server could not, a good call after a kill starts the server again.
//!
//! The fork-bomb and memory cases run twice: as the test's own user (root
//! here: cgroups) and as an unprivileged one (uid 65534 through `setpriv`:
//! no cgroup can be made, so rlimits must hold). Fail closed is shown by
//! running `lion` under a seccomp filter of the test's own that makes a
//! needed system call fail.
//!
//! Homes live under the target directory, not `/tmp`: a server's private
//! `/tmp` hides the host's. Independent cases share one home (each kill
//! case has its own plugin, so its events are its own).

// The fail-closed cases apply a seccomp filter in `pre_exec`.
#![allow(unsafe_code)]

mod support;

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{ClearLion, Kernel, Run};

/// The misbehaving test server.
const SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../agentic_mcp/tests/servers/abuse_server.py"
);
/// The real `lion` binary.
const LION: &str = env!("CARGO_BIN_EXE_lion");
/// The unprivileged user the second run of some cases is made as.
const NOBODY: u32 = 65534;
/// A variable in lion's environment granted to one plugin.
const SECRET_VAR: &str = "LION_ABUSE_SECRET";
/// Its value: it must never be found in the log.
const SECRET: &str = "sentinel-7f3a9c2e-never-in-the-log";
/// How long a wait for a condition may take before the test fails (a
/// bound, not a sleep: the condition is looked at until it holds).
const WAIT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------- the lab

/// A Python interpreter: the real executable and its install prefix.
struct Python {
    exe: String,
    prefix: String,
}

/// The real interpreter as the lab's user finds it (python3 on PATH may be
/// a shim needing its own environment; the server runs with a cleared
/// one). An unprivileged user may not reach root's (pyenv under `/root`):
/// it looks on the system's PATH.
fn python(unprivileged: bool) -> Python {
    let script = "import os, sys; print(os.path.realpath(sys.executable)); print(sys.base_prefix)";
    let out = if unprivileged && is_root() {
        Command::new("setpriv")
            .args(setpriv_args())
            .args(["python3", "-c", script])
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .output()
            .expect("setpriv python3")
    } else {
        Command::new("python3")
            .args(["-c", script])
            .output()
            .expect("python3 is on PATH")
    };
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let mut lines = text.lines();
    Python {
        exe: lines.next().expect("executable").to_owned(),
        prefix: lines.next().expect("prefix").to_owned(),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn setpriv_args() -> [String; 3] {
    [
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
    ]
}

/// One home with its granted and outside directories, and the user lion
/// runs as there.
struct Lab {
    dir: PathBuf,
    home: PathBuf,
    granted: PathBuf,
    outside: PathBuf,
    python: Python,
    /// Run lion as uid 65534 (through `setpriv`).
    as_nobody: bool,
}

/// A plugin's manifest beyond the shared parts.
#[derive(Default)]
struct Plugin<'a> {
    /// `[server.limits]` lines.
    server_limits: &'a str,
    /// `[limits]` lines (the call's).
    call_limits: &'a str,
    /// More arguments for the server.
    args: &'a [&'a str],
    /// Grant the secret variable.
    secret: bool,
}

impl Lab {
    /// A fresh lab named `name` under the target directory; run as an
    /// unprivileged user when `unprivileged` (uid 65534 when the test runs
    /// as root, else the test's own user, which already is one).
    fn new(name: &str, unprivileged: bool) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("server-abuse")
            .join(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => panic!("{}: {e}", dir.display()),
            _ => {}
        }
        let granted = dir.join("granted");
        let outside = dir.join("outside");
        for d in [&granted, &outside, &dir.join("plugins")] {
            std::fs::create_dir_all(d).expect("lab dirs");
        }
        std::fs::write(granted.join("inside.txt"), "inside, granted").expect("write");
        let secret = outside.join("secret.txt");
        std::fs::write(&secret, "outside the grant").expect("write");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        // Parents must be traversable by the unprivileged user.
        for d in [dir.parent().unwrap(), &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let lab = Self {
            home: dir.join("home"),
            dir,
            granted: granted.canonicalize().expect("resolve"),
            outside: outside.canonicalize().expect("resolve"),
            python: python(unprivileged),
            as_nobody: unprivileged && is_root(),
        };
        std::fs::create_dir_all(&lab.home).expect("home");
        lab.give_away(&lab.dir);
        lab
    }

    /// Makes `path` (recursively) the lab user's.
    fn give_away(&self, path: &Path) {
        if self.as_nobody {
            let ok = Command::new("chown")
                .arg("-R")
                .arg(format!("{NOBODY}:{NOBODY}"))
                .arg(path)
                .status()
                .expect("chown");
            assert!(ok.success());
        }
    }

    /// `lion --home HOME` as the lab's user, with the secret in its
    /// environment.
    fn command(&self) -> Command {
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(setpriv_args()).arg(LION);
            c
        } else {
            Command::new(LION)
        };
        cmd.arg("--home")
            .arg(&self.home)
            .env_clear_lion()
            .env(SECRET_VAR, SECRET)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `lion ARGS` to completion.
    fn lion(&self, args: &[&str]) -> Run {
        self.command().args(args).output().expect("run lion").into()
    }

    /// Writes plugin `name`'s manifest and its copy of the server in a
    /// folder of its own; returns the `lion` arguments installing it with
    /// the granted directory (and the secret, if asked).
    fn write_plugin(&self, name: &str, p: &Plugin<'_>) -> Vec<String> {
        let folder = self.dir.join("plugins").join(name);
        std::fs::create_dir_all(&folder).expect("plugin folder");
        let server = folder.join("abuse_server.py");
        std::fs::copy(SERVER, &server).expect("copy the server");
        let mut args = vec![
            format!("{:?}", server.display().to_string()),
            "\"--armed\"".to_owned(),
        ];
        args.extend(p.args.iter().map(|a| format!("{a:?}")));
        let g = self.granted.display();
        let manifest = format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"lion's abuse test server\"\n\n\
             [server]\ncommand = \"{exe}\"\nargs = [{args}]\nread_only = [\"{prefix}\"]\n\n\
             [server.limits]\n{server_limits}\n\n[limits]\n{call_limits}\n\n\
             [permissions]\ndirs = [{{ path = \"{g}\", guest = \"{g}\", mode = \"read-write\" }}]\n\
             env = [\"{SECRET_VAR}\"]\n",
            exe = self.python.exe,
            args = args.join(", "),
            prefix = self.python.prefix,
            server_limits = p.server_limits,
            call_limits = p.call_limits,
        );
        let toml = folder.join("plugin.toml");
        std::fs::write(&toml, manifest).expect("manifest");
        self.give_away(&folder);
        let mut install = vec![
            "plugin".to_owned(),
            "install".to_owned(),
            toml.display().to_string(),
            "--grant".to_owned(),
            format!("dir:{g}={g}"),
        ];
        if p.secret {
            install.extend(["--grant".to_owned(), format!("env:{SECRET_VAR}")]);
        }
        install
    }

    /// Writes and installs plugin `name` (see [`Lab::write_plugin`]).
    fn try_install(&self, name: &str, p: &Plugin<'_>) -> Run {
        let args = self.write_plugin(name, p);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lion(&args)
    }

    /// Installs plugin `name` (see [`Lab::try_install`]), asserting it
    /// installs.
    fn install(&self, name: &str, p: &Plugin<'_>) {
        self.try_install(name, p).success();
    }

    /// `lion plugin call PLUGIN FUNCTION --input INPUT`.
    fn call(&self, plugin: &str, function: &str, input: &Value) -> Run {
        self.lion(&[
            "plugin",
            "call",
            plugin,
            function,
            "--input",
            &input.to_string(),
        ])
    }

    /// Calls `abuse` with `input`; returns what the server reported.
    #[track_caller]
    fn abuse(&self, plugin: &str, input: Value) -> Value {
        let run = self.call(plugin, "abuse", &input).success();
        let out = run.json();
        let report = out["structuredContent"].clone();
        assert!(report.is_object(), "no report: {run:?}");
        report
    }

    /// Calls `abuse` with `input`, which must fail; returns the error line.
    #[track_caller]
    fn abuse_fails(&self, plugin: &str, input: Value) -> String {
        let run = self.call(plugin, "abuse", &input);
        run.error_line(1).to_owned()
    }

    /// A well-behaved call, which must answer.
    #[track_caller]
    fn good(&self, plugin: &str) {
        let run = self
            .call(plugin, "good", &json!({"text": "still here"}))
            .success();
        assert_eq!(
            run.json()["structuredContent"],
            json!({"ok": true, "echo": "still here"}),
            "{run:?}"
        );
    }

    /// The events of the home, one JSON value each.
    fn events(&self) -> Vec<Value> {
        self.lion(&["events", "list", "--json"])
            .success()
            .json_lines()
    }

    /// The failures (`plugin_failed`) recorded for `plugin`, in order.
    fn failures(&self, plugin: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter_map(|e| {
                let f = &e["event"]["plugin_failed"];
                (f["name"] == plugin).then(|| f["failure"].clone())
            })
            .collect()
    }

    /// The one failure recorded for `plugin`.
    #[track_caller]
    fn only_failure(&self, plugin: &str) -> Value {
        let mut failures = self.failures(plugin);
        assert_eq!(failures.len(), 1, "{failures:#?}");
        failures.remove(0)
    }

    fn path(&self, p: &Path) -> String {
        p.display().to_string()
    }
}

/// The lab the cases share, as the test's own user, with the plugin
/// `abuse` (default limits) installed.
fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let lab = Lab::new("shared", false);
        lab.install("abuse", &Plugin::default());
        lab
    })
}

/// The lab of the unprivileged runs. Its user cannot make a cgroup (the
/// cgroup folders are not writable to it), so only rlimits can hold there.
fn nobody_lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let lab = Lab::new("nobody", true);
        for controller in ["pids", "memory"] {
            let dir = format!("/sys/fs/cgroup/{controller}");
            let mut test = if lab.as_nobody {
                let mut c = Command::new("setpriv");
                c.args(setpriv_args()).arg("test");
                c
            } else {
                Command::new("test")
            };
            let writable = test.args(["-w", &dir]).status().expect("test -w");
            assert!(!writable.success(), "{dir} is writable to the lab's user");
        }
        lab
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Asserts a report is an OS refusal with one of `errnos`.
#[track_caller]
fn refused(report: &Value, errnos: &[&str]) {
    assert_eq!(report["ok"], false, "{report}");
    let errno = report["errno"].as_str().unwrap_or_default();
    assert!(
        errnos.contains(&errno),
        "errno {errno} not in {errnos:?}: {report}"
    );
}

/// Asserts `failure` has `kind` and `trap` and its message says each of
/// `says`.
#[track_caller]
fn failed(failure: &Value, kind: &str, trap: Option<&str>, says: &[&str]) {
    assert_eq!(failure["kind"], kind, "{failure}");
    assert_eq!(failure["trap"].as_str(), trap, "{failure}");
    let message = failure["message"].as_str().unwrap_or_default();
    for s in says {
        assert!(message.contains(s), "{s:?} not in {message:?}");
    }
}

/// Waits until `done` holds, looking again every few milliseconds; fails
/// past [`WAIT`].
#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Host processes whose command line holds `tag`.
fn processes_tagged(tag: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && cmdline.split(|b| *b == 0).any(|arg| arg == tag.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// A host process to aim at: `sleep`, killed on drop.
struct Target(Child);

impl Target {
    fn start() -> Self {
        Self(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    #[track_caller]
    fn assert_alive_and_untraced(&mut self) {
        assert!(
            self.0.try_wait().expect("try_wait").is_none(),
            "the target died"
        );
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        assert!(status.contains("TracerPid:\t0\n"), "{status}");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------- limits

fn fork_bomb_stops_at_the_process_limit(lab: &Lab) {
    lab.install(
        "forkbomb",
        &Plugin {
            server_limits: "processes = 24",
            ..Plugin::default()
        },
    );
    // Control: a few forks under the limit work.
    let r = lab.abuse(
        "forkbomb",
        json!({"case": "fork_bomb", "max": 4, "hold": 30}),
    );
    assert_eq!((&r["ok"], &r["forked"]), (&json!(true), &json!(4)), "{r}");
    let r = lab.abuse("forkbomb", json!({"case": "fork_bomb", "hold": 30}));
    refused(&r, &["EAGAIN"]);
    let forked = r["forked"].as_u64().unwrap();
    assert!(forked > 4 && forked < 24, "{r}");
}

#[test]
fn a_fork_bomb_stops_at_the_process_limit_as_root() {
    fork_bomb_stops_at_the_process_limit(lab());
}

#[test]
fn a_fork_bomb_stops_at_the_process_limit_as_an_unprivileged_user() {
    fork_bomb_stops_at_the_process_limit(nobody_lab());
}

#[test]
fn a_memory_bomb_is_killed_at_the_memory_cgroup_limit_as_root() {
    let lab = lab();
    if !is_root() {
        return; // No cgroup without root: the unprivileged case covers it.
    }
    lab.install(
        "memory",
        &Plugin {
            server_limits: "memory_mib = 128",
            ..Plugin::default()
        },
    );
    let r = lab.abuse(
        "memory",
        json!({"case": "memory_bomb", "chunk_mb": 8, "max_mb": 32}),
    );
    assert_eq!(
        (&r["ok"], &r["allocated_mb"]),
        (&json!(true), &json!(32)),
        "{r}"
    );
    let line = lab.abuse_fails("memory", json!({"case": "memory_bomb", "chunk_mb": 8}));
    assert!(line.contains("memory limit"), "{line}");
    failed(
        &lab.only_failure("memory"),
        "memory_limit",
        None,
        &["killed at its memory limit"],
    );
    lab.good("memory");
}

#[test]
fn a_memory_bomb_is_stopped_by_the_address_space_limit_as_an_unprivileged_user() {
    let lab = nobody_lab();
    // Without a cgroup the address space is 4 x memory_mib: 1 GiB here.
    lab.install(
        "memory",
        &Plugin {
            server_limits: "memory_mib = 256",
            call_limits: "timeout_ms = 60000",
            ..Plugin::default()
        },
    );
    let r = lab.abuse(
        "memory",
        json!({"case": "memory_bomb", "chunk_mb": 8, "max_mb": 32}),
    );
    assert_eq!(
        (&r["ok"], &r["allocated_mb"]),
        (&json!(true), &json!(32)),
        "{r}"
    );
    // No cgroup can be made: RLIMIT_AS (1 GiB) makes allocations fail.
    let r = lab.abuse("memory", json!({"case": "memory_bomb", "chunk_mb": 64}));
    assert_eq!(
        (&r["ok"], &r["error"]),
        (&json!(false), &json!("MemoryError")),
        "{r}"
    );
    let got = r["allocated_mb"].as_u64().unwrap();
    assert!(got > 32 && got < 1024, "{r}");
    assert!(lab.failures("memory").is_empty());
}

#[test]
fn a_cpu_spin_runs_into_the_call_timeout_while_another_plugins_call_answers() {
    let lab = lab();
    lab.install(
        "spin",
        &Plugin {
            call_limits: "timeout_ms = 15000",
            ..Plugin::default()
        },
    );
    let r = lab.abuse("spin", json!({"case": "cpu_spin", "seconds": 0.1}));
    assert_eq!(r["ok"], true, "{r}");
    let mut bad = lab
        .command()
        .args(["plugin", "call", "spin", "abuse", "--input"])
        .arg(json!({"case": "cpu_spin"}).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the spinning call");
    // Its call is under way (the second one of spin)...
    wait_until("the spinning call is invoked", || {
        lab.events()
            .iter()
            .filter(|e| e["event"]["plugin_invoked"]["name"] == "spin")
            .count()
            == 2
    });
    // ...when the good call of another plugin, from another lion, runs.
    lab.good("abuse");
    assert!(
        bad.try_wait().expect("try_wait").is_none(),
        "the spinning call was still running during the good one"
    );
    let bad: Run = bad.wait_with_output().expect("wait").into();
    let line = bad.error_line(1);
    assert!(line.contains("15000 ms"), "{line}");
    failed(
        &lab.only_failure("spin"),
        "timeout",
        None,
        &["did not answer within 15000 ms", "stopped"],
    );
    lab.good("spin");
}

#[test]
fn a_cpu_spin_is_killed_at_the_cpu_time_limit() {
    let lab = lab();
    // The call's own timeout is far away: the CPU limit acts first.
    lab.install(
        "cpu",
        &Plugin {
            server_limits: "cpu_seconds = 1",
            call_limits: "timeout_ms = 120000",
            ..Plugin::default()
        },
    );
    let r = lab.abuse("cpu", json!({"case": "cpu_spin", "seconds": 0.1}));
    assert_eq!(r["ok"], true, "{r}");
    lab.abuse_fails("cpu", json!({"case": "cpu_spin"}));
    failed(
        &lab.only_failure("cpu"),
        "timeout",
        Some("cpu_limit"),
        &["CPU time limit"],
    );
    lab.good("cpu");
}

#[test]
fn filling_a_granted_disk_stops_at_the_file_size_limit() {
    let lab = lab();
    lab.install(
        "disk",
        &Plugin {
            server_limits: "file_size_mib = 4",
            ..Plugin::default()
        },
    );
    let dir = lab.path(&lab.granted);
    let r = lab.abuse(
        "disk",
        json!({"case": "fill_disk", "path": dir, "max_mb": 2}),
    );
    assert_eq!(
        (&r["ok"], &r["written_bytes"]),
        (&json!(true), &json!(2 << 20)),
        "{r}"
    );
    // Python ignores SIGXFSZ: the write past the limit fails with EFBIG.
    let r = lab.abuse("disk", json!({"case": "fill_disk", "path": dir}));
    refused(&r, &["EFBIG"]);
    assert_eq!(r["written_bytes"], 4 << 20, "{r}");
    assert!(!lab.granted.join("abuse-fill.bin").exists());
}

#[test]
fn descriptor_exhaustion_stops_at_the_open_files_limit() {
    let lab = lab();
    let r = lab.abuse("abuse", json!({"case": "open_files", "max": 20}));
    assert_eq!((&r["ok"], &r["opened"]), (&json!(true), &json!(20)), "{r}");
    let r = lab.abuse("abuse", json!({"case": "open_files"}));
    refused(&r, &["EMFILE"]);
    // The default limit is 256 descriptors; a few are the server's own.
    let opened = r["opened"].as_u64().unwrap();
    assert!(opened > 200 && opened <= 256, "{r}");
}

// --------------------------------------------------------- filesystem

#[test]
fn a_world_readable_file_outside_the_grant_is_not_readable() {
    let lab = lab();
    let secret = lab.outside.join("secret.txt");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    let r = lab.abuse("abuse", json!({"case": "read", "path": lab.path(&secret)}));
    refused(&r, &["EACCES"]);
    // Control: the file in the grant is read, whole.
    let inside = lab.granted.join("inside.txt");
    let r = lab.abuse("abuse", json!({"case": "read", "path": lab.path(&inside)}));
    assert_eq!(r["sha256"], sha256_hex(b"inside, granted"), "{r}");
}

#[test]
fn the_lion_home_database_is_not_readable() {
    let lab = lab();
    let db = lab.home.join("lion.db");
    let header = std::fs::read(&db).expect("the test reads lion.db");
    assert!(header.starts_with(b"SQLite format 3\0"));
    let r = lab.abuse("abuse", json!({"case": "read", "path": lab.path(&db)}));
    refused(&r, &["EACCES"]);
    let r = lab.abuse(
        "abuse",
        json!({"case": "list_dir", "path": lab.path(&lab.home)}),
    );
    refused(&r, &["EACCES"]);
}

#[test]
fn another_lions_environment_in_proc_is_not_readable() {
    let lab = lab();
    // A kernel of another home, with a sentinel in its environment.
    let other = Lab::new("proc-kernel", false);
    let sentinel = "LION_ABUSE_PROC_SENTINEL=in-the-kernels-environ";
    let (k, v) = sentinel.split_once('=').unwrap();
    let kernel = Kernel::start(&other.home, &[(k, v)]);
    let environ = format!("/proc/{}/environ", kernel.id());
    let seen = std::fs::read(&environ).expect("the host reads it");
    assert!(
        seen.split(|b| *b == 0).any(|kv| kv == sentinel.as_bytes()),
        "control: the sentinel is in the kernel's environ"
    );
    let r = lab.abuse("abuse", json!({"case": "read", "path": environ}));
    refused(&r, &["ENOENT", "EACCES"]);
    // Its /proc is its own pid namespace's: pid 1 is the server itself,
    // not the host's init.
    let me = lab.abuse("abuse", json!({"case": "identity"}));
    assert_eq!(me["pid"], 1, "{me}");
    let r = lab.abuse("abuse", json!({"case": "read", "path": "/proc/1/environ"}));
    if r["ok"] == true {
        // What it read is not the host init's environment (where the host
        // lets the test read that).
        if let Ok(host_init) = std::fs::read("/proc/1/environ") {
            assert_ne!(r["sha256"], sha256_hex(&host_init), "{r}");
        }
    }
    drop(kernel);
}

#[test]
fn a_write_outside_the_grant_is_refused() {
    let lab = lab();
    let target = lab.outside.join("written-by-server.txt");
    let r = lab.abuse("abuse", json!({"case": "write", "path": lab.path(&target)}));
    refused(&r, &["EACCES", "EROFS"]);
    assert!(!target.exists());
    // An existing file anyone may write (0666) is not overwritten either.
    let open = lab.outside.join("world-writable.txt");
    std::fs::write(&open, "unchanged").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = lab.abuse("abuse", json!({"case": "write", "path": lab.path(&open)}));
    refused(&r, &["EACCES", "EROFS"]);
    assert_eq!(std::fs::read_to_string(&open).unwrap(), "unchanged");
    // Control: in the grant it writes.
    let inside = lab.granted.join("written-by-server.txt");
    let r = lab.abuse(
        "abuse",
        json!({"case": "write", "path": lab.path(&inside), "data": "granted"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(std::fs::read_to_string(&inside).unwrap(), "granted");
}

#[test]
fn a_directory_outside_the_grant_cannot_be_listed() {
    let lab = lab();
    let r = lab.abuse(
        "abuse",
        json!({"case": "list_dir", "path": lab.path(&lab.outside)}),
    );
    refused(&r, &["EACCES"]);
    let r = lab.abuse(
        "abuse",
        json!({"case": "list_dir", "path": lab.path(&lab.granted)}),
    );
    assert!(
        r["names"]
            .as_array()
            .unwrap()
            .contains(&json!("inside.txt")),
        "{r}"
    );
}

#[test]
fn a_dotdot_walk_out_of_the_grant_is_refused() {
    let lab = lab();
    let dir = lab.path(&lab.granted);
    let r = lab.abuse(
        "abuse",
        json!({"case": "dotdot_escape", "dir": dir, "rel": "../outside/secret.txt"}),
    );
    refused(&r, &["EACCES"]);
    // Control: a `..` that comes back into the grant reads.
    let r = lab.abuse(
        "abuse",
        json!({"case": "dotdot_escape", "dir": dir, "rel": "../granted/inside.txt"}),
    );
    assert_eq!(r["sha256"], sha256_hex(b"inside, granted"), "{r}");
}

#[test]
fn a_symlink_the_server_makes_in_the_grant_does_not_lead_out() {
    let lab = lab();
    let dir = lab.path(&lab.granted);
    let r = lab.abuse(
        "abuse",
        json!({"case": "symlink_escape", "dir": dir,
               "target": lab.path(&lab.outside.join("secret.txt"))}),
    );
    assert_eq!(r["symlink_created"], true, "{r}");
    refused(&r, &["EACCES"]);
    // Control: a link to a file in the grant reads.
    let r = lab.abuse(
        "abuse",
        json!({"case": "symlink_escape", "dir": dir,
               "target": lab.path(&lab.granted.join("inside.txt"))}),
    );
    assert_eq!(r["sha256"], sha256_hex(b"inside, granted"), "{r}");
}

#[test]
fn a_symlink_placed_in_the_grant_from_outside_does_not_lead_out() {
    let lab = lab();
    let link = lab.granted.join("placed-link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lab.outside.join("secret.txt"), &link).unwrap();
    // Control: on the host the link leads to the file.
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "outside the grant");
    let r = lab.abuse("abuse", json!({"case": "read", "path": lab.path(&link)}));
    refused(&r, &["EACCES"]);
}

// ------------------------------------------------------------ network

#[test]
fn tcp_to_a_loopback_listener_reaches_nothing() {
    let lab = lab();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = lab.abuse(
        "abuse",
        json!({"case": "tcp_connect", "host": "127.0.0.1", "port": port, "data": "x", "timeout": 5}),
    );
    // Landlock denies TCP connect (the namespace has no interface up).
    refused(&r, &["EACCES"]);
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "the listener accepted a connection from the server"
    );
    // Control: the host reaches it, and the listener sees that.
    let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    wait_until("the control connection", || listener.accept().is_ok());
}

#[test]
fn udp_to_a_loopback_socket_reaches_nothing() {
    let lab = lab();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let port = socket.local_addr().unwrap().port();
    let r = lab.abuse(
        "abuse",
        json!({"case": "udp_send", "host": "127.0.0.1", "port": port, "data": "from the jail"}),
    );
    refused(&r, &["ENETUNREACH"]);
    let mut buf = [0u8; 64];
    assert_eq!(
        socket.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "a datagram from the server arrived"
    );
    // Control: a datagram from the host arrives.
    let host = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    host.send_to(b"from the host", ("127.0.0.1", port)).unwrap();
    let mut got = 0;
    wait_until("the control datagram", || match socket.recv(&mut buf) {
        Ok(n) => {
            got = n;
            true
        }
        Err(_) => false,
    });
    assert_eq!(&buf[..got], b"from the host");
}

#[test]
fn no_name_resolves() {
    let lab = lab();
    // Control: the host resolves localhost.
    use std::net::ToSocketAddrs;
    assert!(
        ("localhost", 80)
            .to_socket_addrs()
            .unwrap()
            .next()
            .is_some()
    );
    for name in ["localhost", "example.com"] {
        let r = lab.abuse("abuse", json!({"case": "dns", "name": name}));
        assert_eq!(r["ok"], false, "{name}: {r}");
        assert!(
            r["gai_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("EAI_")),
            "{r}"
        );
    }
}

#[test]
fn an_abstract_unix_socket_opened_outside_is_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    let lab = lab();
    let name = format!("lion-abuse-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let r = lab.abuse(
        "abuse",
        json!({"case": "abstract_unix", "name": name, "data": "x"}),
    );
    // AF_UNIX sockets are refused by the seccomp policy.
    refused(&r, &["EAFNOSUPPORT"]);
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "the socket accepted a connection from the server"
    );
    // Control: the host connects.
    let _c = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    wait_until("the control connection", || listener.accept().is_ok());
}

// -------------------------------------------------------- system calls

/// A case the seccomp policy kills the server for: the call fails, lion
/// records `permission_denied` (trap `seccomp`), and the next call starts
/// the server again.
fn killed_by_seccomp(plugin: &str, input: Value) {
    let lab = lab();
    lab.install(plugin, &Plugin::default());
    let line = lab.abuse_fails(plugin, input);
    assert!(line.contains("seccomp"), "{line}");
    failed(
        &lab.only_failure(plugin),
        "permission_denied",
        Some("seccomp"),
        &["killed by seccomp for a forbidden system call"],
    );
    lab.good(plugin);
}

#[test]
fn ptrace_kills_the_server_and_the_target_stays_untraced() {
    let mut target = Target::start();
    killed_by_seccomp("ptrace", json!({"case": "ptrace", "pid": target.pid()}));
    target.assert_alive_and_untraced();
}

#[test]
fn bpf_kills_the_server() {
    killed_by_seccomp("bpf", json!({"case": "bpf"}));
}

#[test]
fn keyctl_kills_the_server() {
    killed_by_seccomp("keyctl", json!({"case": "keyctl"}));
}

#[test]
fn unshare_kills_the_server() {
    killed_by_seccomp("unshare", json!({"case": "unshare"}));
}

#[test]
fn mount_kills_the_server() {
    killed_by_seccomp("mount", json!({"case": "mount"}));
}

#[test]
fn io_uring_answers_enosys() {
    // Control: the host kernel has io_uring (so ENOSYS is the sandbox's).
    let mut params = [0u8; 120]; // struct io_uring_params
    // SAFETY: io_uring_setup(1, params) reads and writes only `params`,
    // which outlives the call; the descriptor it returns is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `fd` is the descriptor just returned, closed once.
    unsafe { libc::close(fd as libc::c_int) };
    let r = lab().abuse("abuse", json!({"case": "io_uring"}));
    assert_eq!(r["syscall"], "io_uring_setup", "{r}");
    refused(&r, &["ENOSYS"]);
}

#[test]
fn kill_minus_one_reaches_only_the_jail() {
    let lab = lab();
    let mut target = Target::start();
    let r = lab.abuse("abuse", json!({"case": "kill_all"}));
    // Pid 1 of its namespace signals every process it can but itself:
    // there is none.
    refused(&r, &["ESRCH"]);
    target.assert_alive_and_untraced();
}

#[test]
fn a_setuid_binary_gives_no_privilege() {
    let lab = nobody_lab();
    if !lab.as_nobody {
        return; // The test needs root to make a setuid-root binary.
    }
    lab.install("setuid", &Plugin::default());
    // A setuid-root copy of `id` in the granted directory, deleted when the
    // test ends however it ends.
    struct Removed(PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let id = Removed(lab.granted.join("setuid-id"));
    let id = &id.0;
    std::fs::copy("/usr/bin/id", id).unwrap();
    std::fs::set_permissions(id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // Control: outside the jail, the unprivileged user gains euid 0.
    let out = Command::new("setpriv")
        .args(setpriv_args())
        .arg(id)
        .output()
        .unwrap();
    let outside = String::from_utf8_lossy(&out.stdout);
    assert!(outside.contains("euid=0"), "{outside}");
    let r = lab.abuse(
        "setuid",
        json!({"case": "setuid_exec", "path": lab.path(id), "args": []}),
    );
    assert_eq!(r["setuid_bit"], true, "{r}");
    assert_eq!(r["returncode"], 0, "{r}");
    let stdout = r["stdout"].as_str().unwrap();
    assert!(
        stdout.starts_with("uid=") && !stdout.contains("euid="),
        "{r}"
    );
}

// ---------------------------------------------------------- processes

#[test]
fn a_daemon_dies_with_its_server_and_the_server_with_its_lion() {
    let lab = lab();
    let tag = format!("--tag=lion-abuse-{}", uuid::Uuid::new_v4());
    lab.install(
        "daemon",
        &Plugin {
            args: &[tag.as_str()],
            call_limits: "timeout_ms = 600000",
            ..Plugin::default()
        },
    );
    // Control: a server in the middle of a call is seen on the host by its
    // tag; lion killed, it is gone.
    let mut waiting = lab
        .command()
        .args(["plugin", "call", "daemon", "abuse", "--input"])
        .arg(json!({"case": "sleep", "seconds": 600}).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the server runs", || !processes_tagged(&tag).is_empty());
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    wait_until("the server dies with its lion", || {
        processes_tagged(&tag).is_empty()
    });

    let heartbeat = lab.granted.join("heartbeat");
    let r = lab.abuse(
        "daemon",
        json!({"case": "daemon", "heartbeat": lab.path(&heartbeat), "interval": 0.05}),
    );
    assert!(r["daemon_pid"].as_u64().unwrap() > 1, "{r}");
    // The call ended and its lion exited: nothing of the jail is left.
    wait_until("the daemon is gone", || processes_tagged(&tag).is_empty());
}

#[test]
fn through_one_kernel_good_calls_answer_while_a_bad_one_spins() {
    let lab = Lab::new("kernel", false);
    lab.install(
        "spinner",
        &Plugin {
            call_limits: "timeout_ms = 20000",
            ..Plugin::default()
        },
    );
    lab.install("other", &Plugin::default());
    let sentinel = "LION_ABUSE_KERNEL_SENTINEL=in-the-kernels-environ";
    let (k, v) = sentinel.split_once('=').unwrap();
    let kernel = Kernel::start(&lab.home, &[(k, v)]);
    // The kernel runs the server: its own lion's environment, which the
    // host reads, is not in the server's /proc.
    let environ = format!("/proc/{}/environ", kernel.id());
    let seen = std::fs::read(&environ).expect("the host reads it");
    assert!(seen.split(|b| *b == 0).any(|kv| kv == sentinel.as_bytes()));
    let r = lab.abuse("other", json!({"case": "read", "path": environ}));
    refused(&r, &["ENOENT", "EACCES"]);
    let server = || {
        lab.abuse("spinner", json!({"case": "identity"}))["instance"]
            .as_str()
            .expect("the server's instance token")
            .to_owned()
    };
    let first = server();
    let mut bad = lab
        .command()
        .args(["plugin", "call", "spinner", "abuse", "--input"])
        .arg(json!({"case": "cpu_spin"}).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the spinning call");
    // Its call is under way (the spinner's second)...
    wait_until("the spinning call is invoked", || {
        lab.events()
            .iter()
            .filter(|e| e["event"]["plugin_invoked"]["name"] == "spinner")
            .count()
            == 2
    });
    // ...while the same warm server answers a good call, and so does
    // another plugin's.
    lab.good("spinner");
    assert_eq!(server(), first, "the kernel's one warm server");
    lab.good("other");
    assert!(
        bad.try_wait().expect("try_wait").is_none(),
        "the spinning call was still running during the good ones"
    );
    let bad: Run = bad.wait_with_output().expect("wait").into();
    assert!(bad.error_line(1).contains("20000 ms"), "{bad:?}");
    failed(
        &lab.only_failure("spinner"),
        "timeout",
        None,
        &["did not answer within 20000 ms"],
    );
    // The timeout stopped that server; the next call has a new one.
    assert_ne!(server(), first);
    let tasks = lab.lion(&["task", "list", "--json"]).success().json();
    let handlers: Vec<&Value> = tasks
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| &t["spec"]["handler"])
        .collect();
    // Seven calls: the read, three identities, two good calls, the spin.
    assert_eq!(
        handlers,
        vec!["plugin"; 7],
        "the calls were the kernel's tasks; kernel: {}",
        kernel.stderr()
    );
}

// ------------------------------------------------------------ protocol

/// A call that breaks the protocol: it fails, its failure is recorded with
/// `kind` and a message saying each of `says`, and the next call works.
fn breaks_the_session(plugin: &str, input: Value, kind: &str, says: &[&str]) {
    let lab = lab();
    lab.install(
        plugin,
        &Plugin {
            call_limits: "timeout_ms = 10000",
            ..Plugin::default()
        },
    );
    lab.abuse_fails(plugin, input);
    failed(&lab.only_failure(plugin), kind, None, says);
    lab.good(plugin);
}

#[test]
fn a_stdout_flood_ends_the_session() {
    breaks_the_session(
        "flood",
        json!({"case": "stdout_flood", "bytes": 10_000_000}),
        "invalid_output",
        &[
            "a line that is not a JSON object",
            "lion stopped the server",
        ],
    );
}

#[test]
fn a_100_mb_json_rpc_line_is_refused_at_the_line_cap() {
    breaks_the_session(
        "hugeline",
        json!({"case": "huge_line", "mb": 100}),
        "output_limit",
        &["a message over 16777216 bytes", "lion stopped the server"],
    );
}

#[test]
fn truncated_json_rpc_ends_the_session() {
    breaks_the_session(
        "truncated",
        json!({"case": "malformed", "kind": "truncated"}),
        "invalid_output",
        &["invalid JSON", "lion stopped the server"],
    );
}

#[test]
fn a_line_of_invalid_utf8_ends_the_session() {
    breaks_the_session(
        "binary",
        json!({"case": "malformed", "kind": "binary"}),
        "invalid_output",
        &["malformed message", "lion stopped the server"],
    );
}

#[test]
fn a_line_of_text_ends_the_session() {
    breaks_the_session(
        "notjson",
        json!({"case": "malformed", "kind": "not_json"}),
        "invalid_output",
        &[
            "a line that is not a JSON object",
            "lion stopped the server",
        ],
    );
}

#[test]
fn a_wrong_json_rpc_version_ends_the_session() {
    breaks_the_session(
        "version",
        json!({"case": "malformed", "kind": "wrong_version"}),
        "invalid_output",
        &["without \"jsonrpc\": \"2.0\"", "lion stopped the server"],
    );
}

#[test]
fn an_answer_to_a_request_never_asked_is_not_taken_as_the_result() {
    breaks_the_session(
        "wrongid",
        json!({"case": "malformed", "kind": "wrong_id"}),
        "timeout",
        &["did not answer within 10000 ms"],
    );
}

#[test]
fn a_server_that_never_answers_initialize_is_not_installed() {
    let lab = lab();
    let run = lab.try_install(
        "mute",
        &Plugin {
            args: &["--never-initialize"],
            server_limits: "start_timeout_ms = 2000",
            ..Plugin::default()
        },
    );
    let line = run.error_line(1);
    assert!(
        line.contains("did not answer initialize") && line.contains("2s"),
        "{line}"
    );
    let info = lab.lion(&["plugin", "info", "mute"]);
    assert_eq!(info.code, Some(1), "{info:?}");
    let scratch = lab.home.join("plugins/scratch/mute");
    assert!(!scratch.exists(), "its private /tmp is left behind");
    // Control: the same server, answering, installed (the shared `abuse`).
    lab.good("abuse");
}

#[test]
fn a_server_exiting_mid_call_is_recorded_with_its_last_words() {
    let lab = lab();
    lab.install("exit", &Plugin::default());
    let line = lab.abuse_fails(
        "exit",
        json!({"case": "exit", "code": 7, "message": "dying now"}),
    );
    assert!(line.contains("exited with code 7"), "{line}");
    failed(
        &lab.only_failure("exit"),
        "trap",
        Some("server_exited"),
        &["exited with code 7", "its stderr ends: dying now"],
    );
    lab.good("exit");
}

#[test]
fn a_stderr_flood_is_kept_as_a_capped_tail() {
    let lab = lab();
    lab.install("stderr", &Plugin::default());
    let r = lab.abuse(
        "stderr",
        json!({"case": "stderr_flood", "bytes": 1_000_000}),
    );
    assert_eq!(r["stderr_bytes"], 1_000_000, "{r}");
    // The last words of a dying server are kept, the flood before is cut.
    let message = "E".repeat(20_000) + " last words";
    lab.abuse_fails(
        "stderr",
        json!({"case": "exit", "code": 1, "message": message}),
    );
    let failure = lab.only_failure("stderr");
    let text = failure["message"].as_str().unwrap();
    assert!(text.ends_with("last words"), "{text}");
    assert!(text.len() < 10_000, "{} bytes", text.len());
}

// -------------------------------------------------------------- secrets

#[test]
fn a_granted_secret_reaches_the_server_but_not_the_log() {
    let lab = lab();
    lab.install(
        "secret",
        &Plugin {
            secret: true,
            ..Plugin::default()
        },
    );
    let r = lab.abuse("secret", json!({"case": "env", "sha256_of": SECRET_VAR}));
    let hash = sha256_hex(SECRET.as_bytes());
    assert_eq!(r["sha256"], hash, "the server got the secret: {r}");
    // Only what was granted: the base environment and the secret.
    let names = r["names"].as_array().unwrap();
    assert!(names.contains(&json!(SECRET_VAR)), "{r}");
    // A server not granted it does not see it.
    let r = lab.abuse("abuse", json!({"case": "env", "sha256_of": SECRET_VAR}));
    assert_eq!(r["sha256"], Value::Null, "{r}");

    // A server showing it on stderr as it dies: lion quotes the stderr in
    // the failure it records, with the granted value redacted.
    lab.abuse_fails(
        "secret",
        json!({"case": "exit", "code": 1, "env_to_stderr": SECRET_VAR}),
    );
    failed(
        &lab.only_failure("secret"),
        "trap",
        Some("server_exited"),
        &[&format!(
            "its stderr ends: the value is [{SECRET_VAR} redacted] here"
        )],
    );

    let events = lab.lion(&["events", "list", "--json"]).success().stdout;
    // Control: the output holding the hash is in the log.
    assert!(events.contains(&hash), "the output is recorded");
    assert!(!events.contains(SECRET), "the secret is in the events");
    for entry in std::fs::read_dir(&lab.home).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("lion.db") {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "the secret is in {name}"
            );
        }
    }
}

// --------------------------------------------------------- fail closed

#[cfg(target_arch = "x86_64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::aarch64;

/// A filter failing `syscall` with `errno`, allowing everything else.
fn failing(syscall: libc::c_long, errno: i32) -> seccompiler::BpfProgram {
    let rules = [(syscall, vec![])].into_iter().collect();
    seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(errno as u32),
        ARCH,
    )
    .unwrap()
    .try_into()
    .unwrap()
}

/// `lion ARGS` in `lab` under `filter`.
fn lion_filtered(lab: &Lab, filter: &seccompiler::BpfProgram, args: &[&str]) -> Run {
    let mut cmd = lab.command();
    cmd.args(args);
    let prog = filter.clone();
    // SAFETY: apply_filter only makes prctl and seccomp system calls on the
    // program prepared before the fork (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&prog)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
        });
    }
    cmd.output().expect("run lion").into()
}

fn fails_closed(plugin: &str, filter: seccompiler::BpfProgram, names: &str) {
    let lab = lab();
    lab.install(plugin, &Plugin::default());
    let marker = lab.granted.join(format!("{plugin}-ran"));
    let input = json!({"case": "write", "path": lab.path(&marker)}).to_string();
    let run = lion_filtered(
        lab,
        &filter,
        &["plugin", "call", plugin, "abuse", "--input", &input],
    );
    let line = run.error_line(1);
    assert!(line.contains(names), "{line}");
    assert!(!marker.exists(), "the server ran");
    // Install is refused alike, and nothing is installed.
    let again = format!("{plugin}-again");
    let args = lab.write_plugin(&again, &Plugin::default());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = lion_filtered(lab, &filter, &args);
    let line = run.error_line(1);
    assert!(line.contains(names), "{line}");
    assert_eq!(lab.lion(&["plugin", "info", &again]).code, Some(1));
    // Control: without the filter the call runs.
    let r = lab.abuse(plugin, json!({"case": "write", "path": lab.path(&marker)}));
    assert_eq!(r["ok"], true, "{r}");
    assert!(marker.exists());
}

#[test]
fn without_user_namespaces_lion_refuses_to_run_the_server() {
    fails_closed(
        "no-userns",
        failing(libc::SYS_unshare, libc::EPERM),
        "user namespaces",
    );
}

#[test]
fn without_landlock_lion_refuses_to_run_the_server() {
    fails_closed(
        "no-landlock",
        failing(libc::SYS_landlock_create_ruleset, libc::ENOSYS),
        "Landlock",
    );
}

// ---------------------------------------------------------------- homes

#[test]
fn a_home_given_as_a_relative_path_runs_servers() {
    let lab = lab();
    let run: Run = Command::new(LION)
        .current_dir(&lab.dir)
        .args([
            "--home", "home", "plugin", "call", "abuse", "good", "--input",
        ])
        .arg(json!({"text": "relative"}).to_string())
        .env_clear_lion()
        .output()
        .expect("run lion")
        .into();
    let run = run.success();
    assert_eq!(
        run.json()["structuredContent"]["echo"],
        "relative",
        "{run:?}"
    );
}
