//! The dashboard in a real browser: `lion serve` on a fresh home, and
//! `web/tests/dashboard.mjs` driving Debian's headless Chromium through
//! playwright-core against it (sign-in, the live timeline, an event's
//! JSON, the chain's verification, a task tree cancelled from the page, an
//! approval granted there, a plugin's denial, an agent's answer growing
//! while a scripted model streams it, themes and a narrow screen, the
//! server gone). The
//! screenshots go to `target/screenshots/`. `scripts/check` builds the page
//! and installs Chromium first.

mod support;

#[path = "../../agentic_store/tests/postgres_cluster/mod.rs"]
mod postgres_cluster;

use std::path::Path;

use support::provider::{GATED_TOOL_PROMPT, gated};
use support::serve::Server;
use support::{Kernel, lion_at, plugin_dist, run};

/// The screenshots the main browser test writes to `target/screenshots/`.
const SHOTS: [&str; 14] = [
    "sign-in",
    "timeline",
    "tasks",
    "workflows",
    "plugins",
    "timeline-filtered",
    "agents-streaming",
    "agents",
    "overview",
    "kernels",
    "timeline-dark",
    "timeline-narrow",
    "workflows-narrow",
    "unreachable",
];

/// Runs `web/tests/SCRIPT` in node against `server` (`LION_URL`,
/// `LION_TOKEN`, `SCREENSHOTS` = `target/screenshots`, and `envs`),
/// failing the test with what it printed if it fails.
async fn browser(script: &str, server: &Server, envs: &[(&str, &str)]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = tokio::process::Command::new("node")
        .arg(root.join("web/tests").join(script))
        .current_dir(root.join("web"))
        .env("LION_URL", &server.url)
        .env("LION_TOKEN", &server.token)
        .env("SCREENSHOTS", root.join("target/screenshots"))
        .envs(envs.iter().copied())
        .output()
        .await
        .expect("run node");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script} failed:\n{said}");
}

/// One browser at a time: the tests' waits need the machine's cores.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_and_shows_the_log_live_in_a_browser() {
    let _browser = BROWSER.lock().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("web/dist/index.html").is_file(),
        "the dashboard is not built: run scripts/build-web (scripts/check does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "Chromium is not installed: run scripts/test-deps (scripts/check does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let dist = plugin_dist().to_str().expect("a UTF-8 path");
    // The agents' model: streams its answer a chunk at a time, each next
    // chunk when the page's test says so.
    let (llm, control) = gated(&["Hello", " there", ", Ada."]).await;
    let envs = [
        ("LION_LLM_BASE_URL", llm.as_str()),
        ("LION_LLM_MODEL", "test-model"),
    ];
    let server = Server::start(dir.path(), &envs, &["--plugin-dir", dist]);
    let shots = root.join("target/screenshots");
    // Only this run's screenshots count.
    for shot in SHOTS {
        let _ = std::fs::remove_file(shots.join(format!("{shot}.png")));
    }
    let control = control.as_str();
    let home = dir.path().to_str().expect("a UTF-8 path");
    let pid = server.id().to_string();
    browser(
        "dashboard.mjs",
        &server,
        &[
            ("PROVIDER_CONTROL", control),
            ("TOOL_PROMPT", GATED_TOOL_PROMPT),
            ("LION_BIN", env!("CARGO_BIN_EXE_lion")),
            ("LION_HOME", home),
            ("LION_SERVER_PID", &pid),
        ],
    )
    .await;
    for shot in SHOTS {
        assert!(shots.join(format!("{shot}.png")).is_file(), "no {shot}.png");
    }
}

/// `lion bench dashboard --quick` runs end to end from the checkout (its
/// small homes, the browser bench) and prints its figures; the rows a
/// scrolled-back reader sees stay put while events stream in (here on a
/// home of ~20,000 events, whose scroll area is not scaled; the scaled
/// path is measured by the full bench's million-event home).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_bench_runs_end_to_end() {
    let _browser = BROWSER.lock().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_lion"))
        .current_dir(&root)
        .args(["--json", "bench", "dashboard", "--quick", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .expect("run lion bench dashboard");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for home in ["empty", "big"] {
        assert!(
            result["first_render_ms"][home].as_f64().unwrap_or(0.0) > 0.0,
            "{result}"
        );
        assert!(
            result["frame_ms"][home]["p50"].as_f64().unwrap_or(0.0) > 0.0,
            "{result}"
        );
    }
    assert!(
        result["events"]["big"].as_u64().unwrap_or(0) > 10_000,
        "{result}"
    );
    assert_eq!(result["rows_moved_while_streaming"], 0, "{result}");
    assert_eq!(result["bottom_is_newest"], true, "{result}");
}

/// The Kernels view on a shared store: `lion serve` and a `lion run` kernel
/// on one PostgreSQL database, an attempt running on one of them; the page
/// lists both kernels, alive, their heartbeats renewed live and the one
/// claim (`web/tests/kernels.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernels_view_lists_the_kernels_of_a_shared_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let url = postgres_cluster::cluster()
        .database("dashboard_kernels")
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = [("LION_STORE", url.as_str())];
    let kernel = Kernel::start_with(&dir.path().join("kernel"), &store, &[]);
    let server = Server::start(&dir.path().join("served"), &store, &[]);
    // One attempt running, claimed by one of the two.
    let mut submit = lion_at(&dir.path().join("client"));
    submit.env("LION_STORE", &url).args([
        "task",
        "submit",
        "--handler",
        "sleep",
        "--input",
        r#"{"ms":600000}"#,
    ]);
    tokio::task::spawn_blocking(move || run(&mut submit).success())
        .await
        .expect("join");
    let _browser = BROWSER.lock().await;
    let shot = root.join("target/screenshots/kernels-shared.png");
    let _ = std::fs::remove_file(&shot);
    let pids = format!("{},{}", kernel.id(), server.id());
    browser("kernels.mjs", &server, &[("KERNEL_PIDS", &pids)]).await;
    assert!(shot.is_file(), "no kernels-shared.png");
}
