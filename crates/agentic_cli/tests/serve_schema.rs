//! schemathesis (PyPI) against `lion serve`'s `/openapi.json`: a fixed
//! number of generated requests per operation (fixed seed), every check it
//! has — no server error, no response that breaks the document, no
//! undocumented status or content type, no valid request refused and no
//! invalid one accepted — with agents on a scripted provider, under a time
//! cap. The event stream is left out: it never ends by design (its own
//! tests are in serve.rs).

mod support;

use std::process::Command;

use serde_json::json;
use support::provider::{scripted, text_body};
use support::python::python;
use support::serve::Server;

/// Generated requests per operation.
const EXAMPLES: &str = "20";

/// The whole run's time cap, in seconds.
const CAP_SECS: &str = "900";

#[tokio::test]
async fn schemathesis_finds_nothing_wrong_with_the_api() {
    let (url, _) = scripted(vec![text_body(&["Fine", " thanks."])]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let envs = [("LION_LLM_BASE_URL", url.as_str()), ("LION_LLM_MODEL", "m")];
    let server = Server::start(dir.path(), &envs, &[]);
    // Something to find: an agent, an element, a finished task.
    let api = server.api();
    assert_eq!(
        api.post("/agents", &json!({"name": "ada"})).await.status,
        201
    );
    assert_eq!(
        api.post("/elements", &json!({"content": "x"})).await.status,
        201
    );
    api.post(
        "/tasks",
        &json!({"handler": "echo", "input": 1, "wait": true}),
    )
    .await;
    let schemathesis = python().with_file_name("schemathesis");
    let report = dir.path().join("report");
    // A workflow definition is TOML text inside the JSON body: whether it
    // reads as a workflow is more than JSON Schema can say, so a body the
    // schema allows may still be refused as unprocessable (422).
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[[operations]]\ninclude-path = \"/workflows\"\ninclude-method = \"POST\"\n\
         checks.positive_data_acceptance.expected-statuses = \
         [\"2xx\", 401, 403, 404, 409, 422, 429]\n",
    )
    .expect("schemathesis config");
    let (url, token) = (server.url.clone(), server.token.clone());
    let scratch = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            // Its cache goes to the scratch directory, not the checkout.
            .current_dir(&scratch)
            .arg(CAP_SECS)
            .arg(schemathesis)
            .arg("--config-file")
            .arg(&config)
            .args(["run", &format!("{url}/openapi.json")])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-n", EXAMPLES, "--seed", "1", "--checks", "all"])
            .args(["--exclude-path", "/events/stream"])
            .args(["--request-timeout", "40", "--max-response-time", "35"])
            .arg("--report-dir")
            .arg(&report)
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed ({:?}):\n{text}\n{}\nlion's stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    assert!(text.contains(" passed"), "{text}");
}
