//! `lion` on the embedded local model, through the real binary, with the
//! real SmolLM2-135M file (pulled once into the per-user cache; these tests
//! fail, never skip, when it cannot be had): `lion model`, agents that run
//! on it with no server configured, the demo, and bad model specs.
//!
//! The model tests run one at a time: each `lion` process uses every core
//! for inference, and two at once would fight for them.

mod support;

use std::sync::Mutex;

use support::*;

/// Held by each test that runs the model.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn model_pull_keeps_the_checked_file_and_list_shows_it() {
    let _one = serial();
    let pulled = run(lion().args(["model", "pull", "smollm2-135m", "--json"])).success();
    let path = pulled.json()["path"].as_str().expect("path").to_owned();
    assert!(
        path.ends_with("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53.gguf")
    );
    assert!(pulled.stderr.contains("sha256"), "{pulled:?}");
    let listed = run(lion().args(["model", "list", "--json"]))
        .success()
        .json();
    assert_eq!(listed[0]["name"], "smollm2-135m");
    assert_eq!(listed[0]["path"], path);
    let table = run(lion().args(["model", "list"])).success();
    assert!(table.stdout.contains("smollm2-135m"), "{table:?}");

    let run = run(lion().args(["model", "pull", "gpt-5"]));
    assert!(
        run.error_line(1)
            .contains("no model \"gpt-5\" in the catalog"),
        "{run:?}"
    );
}

#[test]
fn with_no_server_configured_agents_run_on_the_local_model() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    // The budget leaves room for the whole answer: which tokens a seed draws
    // depends on the CPU's float kernels (64 tokens ended it on one machine
    // and cut it short on another).
    let spawned = lion_run(&home, &["agent", "spawn", "ada", "--budget-tokens", "256"]).success();
    assert!(
        spawned
            .stdout
            .contains("the embedded local model local:smollm2-135m"),
        "{spawned:?}"
    );
    // A seed makes the sampled answer repeatable (the agentic_llm tests pin
    // greedy decoding's exact tokens against llama.cpp).
    let ask = |agent: &str, seed: &str| {
        run(lion_at(&home).env("LION_LLM_SEED", seed).args([
            "agent",
            "send",
            agent,
            "Name three primary colors.",
        ]))
    };
    let sent = ask("ada", "7").success();
    let answer = sent.stdout.to_lowercase();
    assert!(
        answer.contains("red") && answer.contains("blue"),
        "{sent:?}"
    );
    // Same seed, same prompt, same answer (a fresh agent: ada's memory grew).
    lion_run(&home, &["agent", "spawn", "twin", "--budget-tokens", "256"]).success();
    assert_eq!(ask("twin", "7").success().stdout, sent.stdout);
    let bad = ask("twin", "seven");
    assert!(
        bad.error_line(1)
            .contains("LION_LLM_SEED must be a whole number"),
        "{bad:?}"
    );
    let kinds = event_kinds(&home);
    assert!(kinds.contains(&"llm_delta".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"llm_finished".to_owned()), "{kinds:?}");
    let listed = lion_run(&home, &["agent", "list", "--json"])
        .success()
        .json();
    assert!(
        listed[0]["usage"]["completion_tokens"].as_u64() > Some(5),
        "{listed}"
    );
    assert!(
        listed[0]["usage"]["prompt_tokens"].as_u64() > Some(10),
        "{listed}"
    );
    lion_run(&home, &["replay"]).success();
}

#[test]
fn the_demo_runs_on_the_local_model() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let calculator = plugin_dist().join("calculator/plugin.toml");
    let demo = run(lion_at(&home).env("LION_LLM_SEED", "3").args([
        "demo",
        "--calculator",
        &calculator.display().to_string(),
    ]))
    .success();
    for expected in [
        "with model local:smollm2-135m",
        "== two agents streaming at once",
        "== a plugin tool",
        "== a token budget",
        "rambler was stopped",
        "the projections match",
    ] {
        assert!(demo.stdout.contains(expected), "{expected}: {demo:?}");
    }
}

#[test]
fn bad_local_models_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let run = lion_run(&home, &["agent", "spawn", "x", "--model", "local:nope"]);
    assert!(run.error_line(1).contains("nope"), "{run:?}");
    let missing = dir.path().join("missing.gguf");
    let spec = format!("local:{}", missing.display());
    let run = lion_run(&home, &["agent", "spawn", "x", "--model", &spec]);
    assert!(run.error_line(1).contains("no model file"), "{run:?}");

    let spawned = lion_run(
        &home,
        &[
            "agent",
            "spawn",
            "p",
            "--provider",
            "local",
            "--model",
            "smollm2-135m",
        ],
    )
    .success();
    assert!(spawned.stdout.contains("local:smollm2-135m"), "{spawned:?}");
    let run = lion_run(
        &home,
        &[
            "agent",
            "spawn",
            "q",
            "--provider",
            "openai",
            "--model",
            "local:smollm2-135m",
        ],
    );
    assert!(run.error_line(1).contains("is a local model"), "{run:?}");
    let run = lion_run(
        &home,
        &[
            "agent",
            "spawn",
            "q",
            "--provider",
            "local",
            "--base-url",
            "http://x/v1",
        ],
    );
    assert!(run.error_line(1).contains("takes no --base-url"), "{run:?}");

    // Not a GGUF file: spawned (the file exists), refused when it loads.
    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"this is not a model").expect("write");
    let spec = format!("local:{}", fake.display());
    lion_run(&home, &["agent", "spawn", "x", "--model", &spec]).success();
    let before = events(&home).len();
    let run = lion_run(&home, &["agent", "send", "x", "hi"]);
    let line = run.error_line(1);
    assert!(line.contains("GGUF"), "{run:?}");
    assert_eq!(events(&home).len(), before, "nothing recorded");
}

#[test]
fn bench_model_quick_runs_every_path() {
    let _one = serial();
    let run = run(lion().args(["bench", "model", "--quick", "--json"])).success();
    let report = run.json();
    assert_eq!(report["tokens"], 16);
    assert!(
        report["provider"]["tokens_per_s"].as_f64() > Some(0.0),
        "{report}"
    );
    assert!(
        report["raw_candle"]["tokens_per_s"].as_f64() > Some(0.0),
        "{report}"
    );
    assert_eq!(report["verdict"]["tokens_per_s"], "no evidence (quick run)");
}

/// The OpenAI-compatible server the provider tests need is `lion serve`
/// itself: an agent on the embedded model, reached by lion's own
/// OpenAI-compatible client and by the real `openai` Python package,
/// streaming and not.
#[test]
fn lion_serve_answers_openai_clients_from_an_agent_on_the_local_model() {
    use agentic_core::llm::{ChatChunk, ChatMessage, ChatRequest, LlmProvider, Role};
    use agentic_llm::{ApiKey, OpenAiConfig, OpenAiProvider};
    use support::python::run_script;
    use support::serve::Server;

    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[("LION_LLM_SEED", "7")], &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let spawned = server
            .api()
            .post(
                "/agents",
                &serde_json::json!({"name": "tiny", "budget_tokens": 4096}),
            )
            .await;
        assert_eq!(spawned.status, 201, "{spawned:?}");
        let provider = OpenAiProvider::new(OpenAiConfig {
            api_key: Some(ApiKey::new(server.token.clone())),
            max_retries: 0,
            ..OpenAiConfig::new(format!("{}/v1", server.url))
        })
        .expect("provider");
        let request = ChatRequest {
            model: "agent:tiny".into(),
            messages: vec![ChatMessage::new(Role::User, "Say hello in three words.")],
            tools: Vec::new(),
            temperature: Some(0.0),
            max_tokens: Some(24),
        };
        let mut stream = provider.stream(request).await.expect("stream");
        let (mut text, mut chunks, mut finished) = (String::new(), 0, false);
        while let Some(chunk) = stream.next().await {
            match chunk.expect("chunk") {
                ChatChunk::Text(t) => {
                    chunks += 1;
                    text.push_str(&t);
                }
                ChatChunk::Finished(_) => finished = true,
                _ => {}
            }
        }
        assert!(finished, "the stream must say it finished");
        assert!(
            chunks > 1,
            "a model streams several chunks, got {chunks}: {text:?}"
        );
        assert!(!text.trim().is_empty());
    });
    let envs = [
        ("LION_URL", server.url.as_str()),
        ("LION_TOKEN", server.token.as_str()),
        ("LION_MODEL", "agent:tiny"),
    ];
    let (ok, stdout, stderr) = run_script("openai_client.py", &["stream", "Name a color."], &envs);
    assert!(ok, "{stderr}");
    let streamed: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(
        streamed["chunks"].as_array().unwrap().len() > 1,
        "{streamed}"
    );
    assert_eq!(streamed["finish_reason"], "stop");
    let (ok, stdout, stderr) =
        run_script("openai_client.py", &["complete", "Name a fruit."], &envs);
    assert!(ok, "{stderr}");
    let complete: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(
        !complete["content"].as_str().unwrap().trim().is_empty(),
        "{complete}"
    );
    let tiny = runtime.block_on(server.api().get("/agents/tiny")).json();
    assert_eq!(tiny["message_count"], 6, "{tiny}");
}
