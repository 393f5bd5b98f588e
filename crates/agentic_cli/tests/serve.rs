//! `lion serve` through the real binary and a real HTTP client: the ready
//! line, the token and who may use it (bearer, session cookie and CSRF,
//! Host and Origin), the REST API with the CLI's semantics, problems for
//! bad input, the log as Server-Sent Events with resumption, idle
//! connections, and a graceful stop.

mod support;

use std::os::unix::fs::PermissionsExt;

use reqwest::Method;
use serde_json::{Value, json};
use support::serve::{Api, Server};
use support::*;

fn home() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[tokio::test]
async fn serve_prints_a_ready_line_and_keeps_its_token_owner_only() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    let mode = std::fs::metadata(dir.path().join("serve.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let printed = run(lion_at(dir.path()).args(["serve", "--print-token"])).success();
    assert_eq!(printed.stdout.trim(), server.token);
    let health = server.api().get("/health").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["status"], "ok");
    // The kernel's lease is held: a second kernel on the home refuses.
    let second = run(lion_at(dir.path()).args(["serve", "--addr", "127.0.0.1:0"]));
    let line = second.error_line(1);
    assert!(line.contains("another lion kernel"), "{line}");
    let run_too = run(lion_at(dir.path()).arg("run"));
    assert!(run_too.error_line(1).contains("another lion kernel"));
}

#[test]
fn a_public_address_without_tls_is_refused_unless_opted_out() {
    let dir = home();
    let refused = run(lion_at(dir.path()).args(["serve", "--addr", "0.0.0.0:0"]));
    let line = refused.error_line(1);
    assert!(
        line.contains("not a loopback address") && line.contains("--insecure-no-tls"),
        "{line}"
    );
    // Nothing was created: no store, no token.
    assert!(!dir.path().join("serve.token").exists());
}

#[tokio::test]
async fn every_api_request_needs_the_token() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let anonymous = Api {
        token: None,
        ..server.api()
    };
    let detail = anonymous.get("/elements").await.problem(401);
    assert!(detail.contains("Bearer"), "{detail}");
    let wrong = Api {
        token: Some("lion_not-the-token".into()),
        ..server.api()
    };
    wrong.get("/tasks").await.problem(401);
    let malformed = anonymous
        .send(
            anonymous
                .request(Method::GET, "/tasks")
                .header("authorization", "Basic Zm9vOmJhcg=="),
        )
        .await;
    malformed.problem(401);
    assert_eq!(malformed.headers["www-authenticate"], "Bearer");
    // The public pages need none.
    for path in ["/", "/assets/sign-in.js", "/health", "/openapi.json"] {
        let reply = anonymous.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
    }
    // The dashboard (it signs in before it shows anything), or in a lion
    // built without it, the sign-in page saying how to build it.
    let index = anonymous.get("/").await.text;
    assert!(
        index.contains(r#"<div id="app">"#) || index.contains("scripts/build-web"),
        "{index}"
    );
    // And nothing refused reached the log.
    let events = server.api().get("/events").await.json();
    assert_eq!(events["items"].as_array().unwrap().len(), 0, "{events}");
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &["--allow-host", "lion.internal:1"]);
    let api = server.api();
    // DNS rebinding: a name that resolves here, but is not this server.
    let rebound = api
        .send(
            api.request(Method::GET, "/health")
                .header("host", "evil.example:80"),
        )
        .await;
    assert!(rebound.problem(403).contains("evil.example"));
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let localhost = api
        .send(
            api.request(Method::GET, "/health")
                .header("host", format!("localhost:{port}")),
        )
        .await;
    assert_eq!(localhost.status, 200, "{localhost:?}");
    let allowed = api
        .send(
            api.request(Method::GET, "/health")
                .header("host", "lion.internal:1"),
        )
        .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    // A page of another site, even with the token.
    let cross = api
        .send(
            api.request(Method::POST, "/elements")
                .header("origin", "https://evil.example")
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert!(cross.problem(403).contains("Origin"));
    let same = api
        .send(
            api.request(Method::POST, "/elements")
                .header("origin", &server.url)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(same.status, 201, "{same:?}");
}

#[tokio::test]
async fn a_browser_session_needs_its_csrf_token_and_dies_with_rotation() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let browser = Api {
        token: None,
        ..server.api()
    };
    browser
        .post("/auth/session", &json!({"token": "lion_wrong"}))
        .await
        .problem(401);
    let signed_in = browser
        .post("/auth/session", &json!({"token": server.token}))
        .await;
    assert_eq!(signed_in.status, 201, "{signed_in:?}");
    let cookie = signed_in.headers["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let csrf = signed_in.json()["csrf_token"].as_str().unwrap().to_owned();
    // Reading needs only the cookie.
    let read = browser
        .send(
            browser
                .request(Method::GET, "/elements")
                .header("cookie", &session),
        )
        .await;
    assert_eq!(read.status, 200, "{read:?}");
    // Changing state needs the CSRF token too.
    let forged = browser
        .send(
            browser
                .request(Method::POST, "/elements")
                .header("cookie", &session)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert!(forged.problem(403).contains("CSRF"));
    let created = browser
        .send(
            browser
                .request(Method::POST, "/elements")
                .header("cookie", &session)
                .header("x-csrf-token", &csrf)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    // Rotation: the old token and its sessions stop working at once.
    let rotated = run(lion_at(dir.path()).args(["serve", "--rotate-token"])).success();
    let new_token = rotated.stdout.trim().to_owned();
    assert_ne!(new_token, server.token);
    server.api().get("/elements").await.problem(401);
    browser
        .send(
            browser
                .request(Method::GET, "/elements")
                .header("cookie", &session),
        )
        .await
        .problem(401);
    let fresh = Api {
        token: Some(new_token),
        ..server.api()
    };
    assert_eq!(fresh.get("/elements").await.status, 200);
}

#[tokio::test]
async fn elements_are_created_read_and_paged() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let api = server.api();
    let mut ids = Vec::new();
    for i in 0..3 {
        let created = api
            .post("/elements", &json!({"metadata": {"n": i}, "content": "hi"}))
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        ids.push(created.json()["id"].as_str().unwrap().to_owned());
    }
    let one = api.get(&format!("/elements/{}", ids[1])).await.json();
    assert_eq!(one["metadata"]["n"], 1);
    assert_eq!(one["content"], "hi");
    let first = api.get("/elements?limit=2").await.json();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let next = first["next"].as_u64().expect("a next page");
    let second = api
        .get(&format!("/elements?limit=2&after={next}"))
        .await
        .json();
    assert_eq!(second["items"][0]["id"], ids[2].as_str());
    assert!(second.get("next").is_none(), "{second}");
    // The CLI sees what the API wrote.
    let listed = run(lion_at(dir.path()).args(["element", "list", "--json"])).success();
    assert_eq!(listed.json().as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn bad_requests_get_clear_problems_and_change_nothing() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let api = server.api();
    let head = || async { api.get("/health").await.json()["head_seq"].clone() };
    let before = head().await;
    let malformed = api
        .send(
            api.request(Method::POST, "/elements")
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert!(malformed.problem(400).to_lowercase().contains("json"));
    let wrong_type = api.post("/elements", &json!({"metadata": [1, 2]})).await;
    wrong_type.problem(422);
    let unknown_field = api.post("/elements", &json!({"colour": "red"})).await;
    assert!(unknown_field.problem(422).contains("colour"));
    let no_type = api
        .send(api.request(Method::POST, "/elements").body("{}"))
        .await;
    no_type.problem(415);
    let huge = "x".repeat(2 * 1024 * 1024);
    let oversized = api.post("/elements", &json!({"content": huge})).await;
    oversized.problem(413);
    api.get("/elements/not-a-uuid").await.problem(400);
    let missing = api
        .get("/elements/01900000-0000-7000-8000-000000000000")
        .await
        .problem(404);
    assert!(missing.contains("no element"));
    api.get("/elements?limit=0").await.problem(400);
    api.get("/elements?limit=x").await.problem(400);
    api.get("/no/such/route").await.problem(404);
    api.get("/tasks/01900000-0000-7000-8000-000000000000")
        .await
        .problem(404);
    assert!(
        api.post("/tasks", &json!({"handler": "no-such-handler"}))
            .await
            .problem(404)
            .contains("echo")
    );
    api.post(
        "/tasks",
        &json!({"handler": "plugin", "input": {"plugin": "nope", "function": "f"}}),
    )
    .await
    .problem(404);
    api.post("/tasks", &json!({"input": 1})).await.problem(422);
    assert_eq!(head().await, before, "a refused request changed the log");
    assert_eq!(api.get("/health").await.status, 200);
}

#[tokio::test]
async fn tasks_run_on_the_kernel_with_idempotency_cancel_and_wait() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let api = server.api();
    let done = api
        .post(
            "/tasks",
            &json!({"handler": "echo", "input": {"x": 1}, "wait": true}),
        )
        .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.json()["status"], "completed");
    assert_eq!(done.json()["output"], json!({"x": 1}));
    // One key, one task.
    let submit = json!({"handler": "echo", "input": {"y": 2}, "idempotency_key": "k-1"});
    let first = api.post("/tasks", &submit).await;
    assert_eq!(first.status, 202, "{first:?}");
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let again = api.post("/tasks", &submit).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["id"], id.as_str());
    let other = api
        .post(
            "/tasks",
            &json!({"handler": "echo", "input": {"y": 3}, "idempotency_key": "k-1"}),
        )
        .await;
    assert!(other.problem(409).contains(&id));
    // Racing submissions of one key with different requests: never two
    // answers claiming the task for different inputs.
    for n in 0..10 {
        let key = format!("race-{n}");
        let a = json!({"handler": "echo", "input": "a", "idempotency_key": key});
        let b = json!({"handler": "echo", "input": "b", "idempotency_key": key});
        let (ra, rb) = tokio::join!(api.post("/tasks", &a), api.post("/tasks", &b));
        let accepted = [&ra, &rb].iter().filter(|r| r.status < 300).count();
        assert_eq!(accepted, 1, "{ra:?} {rb:?}");
        assert!([&ra, &rb].iter().any(|r| r.status == 409), "{ra:?} {rb:?}");
    }
    let waited = api
        .get(&format!("/tasks/{id}/wait?timeout_ms=10000"))
        .await
        .json();
    assert_eq!(waited["status"], "completed", "{waited}");
    // A long task, cancelled.
    let sleeping = api
        .post(
            "/tasks",
            &json!({"handler": "sleep", "input": {"ms": 60000}}),
        )
        .await;
    assert_eq!(sleeping.status, 202, "{sleeping:?}");
    let sleeper = sleeping.json()["id"].as_str().unwrap().to_owned();
    let cancelled = api
        .post(&format!("/tasks/{sleeper}/cancel"), &json!({}))
        .await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    let ended = api
        .get(&format!("/tasks/{sleeper}/wait?timeout_ms=10000"))
        .await
        .json();
    assert_eq!(ended["status"], "cancelled", "{ended}");
    api.post(&format!("/tasks/{sleeper}/cancel"), &json!({}))
        .await
        .problem(409);
    let unfinished = api.get("/tasks?status=unfinished").await.json();
    assert_eq!(unfinished["items"], json!([]), "{unfinished}");
    let all = api.get("/tasks").await.json();
    assert_eq!(all["items"].as_array().unwrap().len(), 13, "{all}");
    // Over HTTP a task is always logged: no ephemeral tasks.
    api.post(
        "/tasks",
        &json!({"handler": "echo", "durability": "ephemeral"}),
    )
    .await
    .problem(422);
    // An async task can be read as soon as its submission is answered.
    let quick = api
        .post(
            "/tasks",
            &json!({"handler": "echo", "input": 5, "durability": "async"}),
        )
        .await
        .json();
    let read = api
        .get(&format!("/tasks/{}", quick["id"].as_str().unwrap()))
        .await;
    assert_eq!(read.status, 200, "{read:?}");
}

#[tokio::test]
async fn events_are_listed_with_filters_and_verified() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let api = server.api();
    let element = api.post("/elements", &json!({})).await.json();
    let task = api
        .post(
            "/tasks",
            &json!({"handler": "echo", "input": 1, "wait": true}),
        )
        .await
        .json();
    let all = api.get("/events").await.json();
    let items = all["items"].as_array().unwrap();
    assert!(items.len() >= 4, "{all}");
    assert_eq!(items[0]["seq"], 1);
    assert_eq!(items[0]["type"], "element_created");
    let completed = api.get("/events?type=task_completed").await.json();
    assert_eq!(completed["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        completed["items"][0]["event"]["task_completed"]["task_id"],
        task["id"]
    );
    let stream = format!("element:{}", element["id"].as_str().unwrap());
    let by_stream = api.get(&format!("/events?stream={stream}")).await.json();
    assert_eq!(by_stream["items"].as_array().unwrap().len(), 1);
    let correlation = items[0]["correlation_id"].as_str().unwrap();
    let by_request = api
        .get(&format!("/events?correlation_id={correlation}"))
        .await
        .json();
    assert_eq!(by_request["items"].as_array().unwrap().len(), 1);
    let future = api.get("/events?since=2999-01-01T00:00:00Z").await.json();
    assert_eq!(future["items"], json!([]));
    let paged = api.get("/events?limit=1&from=2").await.json();
    assert_eq!(paged["items"][0]["seq"], 2);
    assert_eq!(paged["next"], 3);
    api.get("/events?since=yesterday").await.problem(400);
    let verified = api.get("/events/verify").await.json();
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["events"], verified["head_seq"]);
    // One stream through its index: whole, paged, and its newest.
    let task_stream = format!("/streams/task:{}/events", task["id"].as_str().unwrap());
    let kinds = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    let whole = api.get(&task_stream).await.json();
    assert_eq!(
        kinds(&whole),
        ["task_submitted", "task_started", "task_completed"]
    );
    assert_eq!(whole["next"], Value::Null);
    let first = api.get(&format!("{task_stream}?limit=2")).await.json();
    assert_eq!(kinds(&first), ["task_submitted", "task_started"]);
    assert_eq!(first["next"], 3);
    for (limit, newest) in [
        (1, vec!["task_completed"]),
        (2, vec!["task_started", "task_completed"]),
    ] {
        let last = api
            .get(&format!("{task_stream}?last=true&limit={limit}"))
            .await
            .json();
        assert_eq!(kinds(&last), newest);
    }
    // The timeline's read model: filters, newest first, paged by `before`
    // (it follows the log a little behind: read until it has caught up).
    let head = api.get("/health").await.json()["head_seq"]
        .as_u64()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let timeline = loop {
        let page = api.get("/timeline?type=task_started").await.json();
        if page["indexed"].as_u64().unwrap() >= head {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the read model never caught up"
        );
        // Polled: the read model says how far it got, not when it gets there.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(kinds(&timeline), ["task_started"]);
    let everything = api.get("/timeline?limit=2").await.json();
    let seqs: Vec<u64> = everything["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [head, head - 1], "newest first");
    let older = api
        .get(&format!("/timeline?limit=2&before={}", everything["next"]))
        .await
        .json();
    assert_eq!(older["items"][0]["seq"], head - 2);
    let by_stream = api.get("/timeline?stream=element:").await.json();
    assert_eq!(kinds(&by_stream), ["element_created"]);
    api.get("/timeline?limit=0").await.problem(400);
    // An event's causes and effects: a task's events name the task.
    let started = timeline["items"][0]["seq"].as_u64().unwrap();
    let related = api.get(&format!("/events/{started}/related")).await.json();
    assert_eq!(related["event"]["seq"], started);
    assert_eq!(
        kinds(&json!({"items": related["causes"]})),
        ["task_submitted"]
    );
    let submitted = related["causes"][0]["seq"].as_u64().unwrap();
    let effects = api
        .get(&format!("/events/{submitted}/related"))
        .await
        .json();
    assert!(
        kinds(&json!({"items": effects["effects"]})).contains(&"task_completed".to_owned()),
        "{effects}"
    );
    api.get("/events/999999/related").await.problem(404);
    let none = api
        .get("/streams/task:nobody/events?last=true")
        .await
        .json();
    assert_eq!(none["items"], json!([]));
    api.get(&format!("{task_stream}?limit=0"))
        .await
        .problem(400);
}

/// Reads Server-Sent Events from a response, one at a time.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

/// One event: its fields.
#[derive(Debug, Default)]
struct Sse {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl SseReader {
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        sse.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        sse.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        sse.data.push_str(v.trim_start());
                    }
                }
                if sse.data.is_empty() && sse.id.is_none() {
                    continue; // a keep-alive comment
                }
                return sse;
            }
            let chunk = self
                .response
                .chunk()
                .await
                .expect("read the stream")
                .expect("the stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn committed(&mut self) -> (u64, Value) {
        loop {
            let sse = self.next().await;
            if sse.event.is_none() {
                let id: u64 = sse.id.expect("an id").parse().unwrap();
                return (id, serde_json::from_str(&sse.data).unwrap());
            }
        }
    }
}

async fn subscribe(api: &Api, path: &str, last_event_id: Option<u64>) -> SseReader {
    let mut request = api.request(Method::GET, path);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.expect("subscribe");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{response:?}"
    );
    SseReader {
        response,
        buffer: String::new(),
    }
}

#[tokio::test]
async fn the_event_stream_replays_then_follows_and_resumes_without_a_gap() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let api = server.api();
    for _ in 0..3 {
        api.post("/elements", &json!({})).await;
    }
    let mut stream = subscribe(&api, "/events/stream?from=2", None).await;
    assert_eq!(stream.committed().await.0, 2);
    assert_eq!(stream.committed().await.0, 3);
    // Now live: what is committed next arrives.
    let created = api
        .post("/elements", &json!({"content": "live"}))
        .await
        .json();
    let (seq, event) = stream.committed().await;
    assert_eq!(seq, 4);
    assert_eq!(
        event["event"]["element_created"]["element"]["id"],
        created["id"]
    );
    drop(stream);
    // Committed while nobody watched; a client resuming after 4 gets 5 on.
    api.post("/elements", &json!({})).await;
    api.post("/elements", &json!({})).await;
    let mut resumed = subscribe(&api, "/events/stream?from=1", Some(4)).await;
    assert_eq!(resumed.committed().await.0, 5);
    assert_eq!(resumed.committed().await.0, 6);
    // Filters apply to the stream too.
    let mut tasks = subscribe(&api, "/events/stream?type=task_completed", None).await;
    api.post(
        "/tasks",
        &json!({"handler": "echo", "input": 7, "wait": true}),
    )
    .await;
    let (_, event) = tasks.committed().await;
    assert_eq!(event["type"], "task_completed");
    assert_eq!(event["event"]["task_completed"]["output"], 7);
}

#[tokio::test]
async fn a_thousand_idle_connections_do_not_stop_it_answering() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(
            tokio::net::TcpStream::connect(server.authority())
                .await
                .expect("connect"),
        );
    }
    let api = server.api();
    let created = api
        .post("/elements", &json!({"content": "still here"}))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(api.get("/health").await.status, 200);
    drop(idle);
    assert_eq!(api.get("/health").await.status, 200);
}

#[tokio::test]
async fn sigterm_stops_it_cleanly() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let api = server.api();
    // A stream is open: it must not hold the stop.
    let _stream = subscribe(&api, "/events/stream", None).await;
    api.post("/elements", &json!({})).await;
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("lion kernel stopped"), "{stderr}");
    // The home is intact and free for the next kernel.
    let verified = run(lion_at(dir.path()).args(["events", "verify"])).success();
    assert!(verified.stdout.starts_with("ok: 1 event"), "{verified:?}");
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let doc = server.api().get("/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/elements",
        "/tasks/{id}/cancel",
        "/events/stream",
        "/agents/{name}/messages",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // The handlers are this server's; problems are problem+json.
    let handlers = &doc["components"]["schemas"]["NewTask"]["properties"]["handler"]["enum"];
    for handler in ["agent", "echo", "plugin"] {
        assert!(
            handlers.as_array().unwrap().contains(&json!(handler)),
            "{handlers}"
        );
    }
    let missing = &doc["paths"]["/elements/{id}"]["get"]["responses"]["404"]["content"];
    assert!(
        missing.get("application/problem+json").is_some(),
        "{missing}"
    );
    assert_eq!(doc["paths"]["/health"]["get"]["security"], json!([{}]));
}

#[tokio::test]
async fn metrics_count_requests_commits_and_tasks() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let api = server.api();
    api.post("/elements", &json!({})).await;
    api.post(
        "/tasks",
        &json!({"handler": "echo", "input": 1, "wait": true}),
    )
    .await;
    api.get("/elements/not-a-uuid").await;
    // An invented method is counted as `other`: clients cannot grow the
    // label set.
    let odd = api
        .send(api.request(Method::from_bytes(b"X-ODD").unwrap(), "/health"))
        .await;
    assert_eq!(odd.status, 405, "{odd:?}");
    Api {
        token: None,
        ..server.api()
    }
    .get("/metrics")
    .await
    .problem(401);
    let scraped = api.get("/metrics").await;
    assert_eq!(scraped.status, 200, "{scraped:?}");
    assert!(
        scraped
            .content_type()
            .starts_with("application/openmetrics-text")
    );
    let text = scraped.text;
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value(r#"lion_http_requests_total{method="POST",route="/elements",status="201"}"#),
        1.0
    );
    assert_eq!(
        value(r#"lion_http_requests_total{method="GET",route="/elements/{id}",status="400"}"#),
        1.0
    );
    assert_eq!(
        value(r#"lion_http_requests_total{method="GET",route="/metrics",status="401"}"#),
        1.0
    );
    assert_eq!(
        value(r#"lion_http_requests_total{method="other",route="/health",status="405"}"#),
        1.0
    );
    assert!(
        value(r#"lion_http_request_duration_seconds_count{method="POST",route="/tasks"}"#) >= 1.0
    );
    assert_eq!(value(r#"lion_tasks_ended_total{state="completed"}"#), 1.0);
    assert_eq!(value(r#"lion_tasks{state="running"}"#), 0.0);
    assert_eq!(value("lion_events_committed_total"), 4.0, "{text}");
    assert!(value("lion_commit_groups_total") >= 1.0, "{text}");
}

#[test]
fn bench_serve_quick_runs_every_path() {
    let dir = home();
    let bench = run(lion().args([
        "bench",
        "serve",
        "--quick",
        "--json",
        "--dir",
        dir.path().to_str().unwrap(),
    ]))
    .success();
    let report = bench.json();
    for path in [
        "/get_element/lion/per_sec",
        "/get_element/bare_axum/p99_us",
        "/get_task_store_read/lion/p50_us",
        "/post_task/lion/per_sec",
        "/post_task/in_process/per_sec",
        "/sse/lion/p99_us",
        "/sse/bare_axum/p99_us",
    ] {
        let value = report.pointer(path).and_then(Value::as_f64);
        assert!(value.is_some_and(|v| v > 0.0), "{path}: {report}");
    }
    // The scratch home is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A self-signed certificate for localhost and 127.0.0.1, made by the
/// `openssl` command: (certificate, key).
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (the TLS test makes its certificate with it)");
    assert!(made.status.success(), "{made:?}");
    (cert, key)
}

#[tokio::test]
async fn tls_serves_https_only_with_secure_cookies() {
    let dir = home();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let server = Server::start(
        dir.path(),
        &[],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let root = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let api = Api {
        client: reqwest::Client::builder()
            .add_root_certificate(root)
            .build()
            .unwrap(),
        ..server.api()
    };
    assert_eq!(api.get("/health").await.status, 200);
    let created = api.post("/elements", &json!({})).await;
    assert_eq!(created.status, 201, "{created:?}");
    let signed_in = Api {
        token: None,
        ..api.clone()
    }
    .post("/auth/session", &json!({"token": server.token}))
    .await;
    let cookie = signed_in.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("Secure"), "{cookie}");
    // Plain HTTP on the TLS port gets nothing.
    let plain = reqwest::Client::new()
        .get(server.url.replace("https://", "http://") + "/health")
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // A key that is not one is one line, before anything starts.
    let bad = run(lion_at(dir.path()).args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        cert.to_str().unwrap(),
    ]));
    let line = bad.error_line(1);
    assert!(line.contains("cert.pem"), "{line}");
}

/// Reads `stream` (of `workflow_recorded` events) until run `run` records
/// an event of type `kind`; that event.
async fn run_event(stream: &mut SseReader, run: &str, kind: &str) -> Value {
    loop {
        let (_, event) = stream.committed().await;
        let recorded = &event["event"]["workflow_recorded"];
        if recorded["run"] == run && recorded["event"]["type"] == kind {
            return recorded["event"].clone();
        }
    }
}

#[tokio::test]
async fn a_workflow_runs_over_the_api_and_goes_on_with_an_approval_given_there() {
    let dir = home();
    let server = Server::start(dir.path(), &[], &[]);
    let api = server.api();
    let flow = "name = \"api\"\n[output]\nvalue = \"{{ steps.ask.output.input.note }}\"\n\
                [steps.ask]\nkind = \"approval\"\nprompt = \"ok?\"\ntimeout = \"1h\"\n";
    let mut stream = subscribe(&api, "/events/stream?type=workflow_recorded", None).await;
    let bad = api
        .post(
            "/workflows",
            &json!({"main": "api.toml", "files": {"api.toml": "name = \"x\"\n[steps.a]\nkind = \"nope\"\n"}}),
        )
        .await;
    assert!(bad.problem(422).contains("nope"), "{bad:?}");
    let started = api
        .post(
            "/workflows",
            &json!({"main": "api.toml", "files": {"api.toml": flow}}),
        )
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let run = started.json()["id"].as_str().expect("id").to_owned();
    run_event(&mut stream, &run, "approval_requested").await;
    let waiting = api.get(&format!("/workflows/{run}")).await.json();
    assert_eq!(waiting["status"], "running");
    assert_eq!(waiting["steps"]["ask"]["state"], "waiting for approval");
    let wrong_step = api
        .post(&format!("/workflows/{run}/steps/nope/approve"), &json!({}))
        .await;
    assert!(
        wrong_step.problem(409).contains("no step"),
        "{wrong_step:?}"
    );
    let missing = api
        .get("/workflows/01234567-0123-7123-8123-0123456789ab")
        .await;
    missing.problem(404);
    let approved = api
        .post(
            &format!("/workflows/{run}/steps/ask/approve"),
            &json!({"input": {"note": "fine"}}),
        )
        .await;
    assert_eq!(approved.status, 200, "{approved:?}");
    let done = run_event(&mut stream, &run, "completed").await;
    assert_eq!(done["output"], "fine");
    let shown = api.get(&format!("/workflows/{run}")).await.json();
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["steps"]["ask"]["output"]["by"], "api token");
    let history = api.get(&format!("/workflows/{run}/history")).await.json();
    assert_eq!(history[0]["event"]["type"], "started");
    let listed = api.get("/workflows").await.json();
    assert_eq!(listed["items"][0]["id"], run.as_str());
    api.post(&format!("/workflows/{run}/cancel"), &json!({}))
        .await
        .problem(409);
    // A fork from the approval asks again; cancelling it ends it.
    let forked = api
        .post(&format!("/workflows/{run}/fork"), &json!({"from": "ask"}))
        .await;
    assert_eq!(forked.status, 201, "{forked:?}");
    let fork = forked.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(forked.json()["origin"]["run"], run.as_str());
    run_event(&mut stream, &fork, "approval_requested").await;
    let cancelled = api
        .post(&format!("/workflows/{fork}/cancel"), &json!({}))
        .await
        .json();
    assert_eq!(cancelled["status"], "cancelled");
}
