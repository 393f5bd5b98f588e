//! `lion serve` in the background, and an HTTP client for it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::ClearLion;

/// A `lion serve` process, stopped (SIGKILL) on drop if still running.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The home's API token.
    pub token: String,
    /// The home it serves.
    pub home: PathBuf,
    stderr: Arc<Mutex<String>>,
    /// The thread copying its stderr: it ends with the pipe.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `lion serve --addr 127.0.0.1:0 ARGS…` on `home` with `envs`,
    /// and waits for its ready line.
    pub fn start(home: &Path, envs: &[(&str, &str)], args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lion"))
            .arg("--home")
            .arg(home)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .env_clear_lion()
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lion serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let kept = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                kept.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read the ready line");
        let url = line
            .trim()
            .strip_prefix("lion serve: listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no ready line, got {line:?}; stderr: {}",
                    stderr.lock().unwrap()
                )
            })
            .to_owned();
        let token = std::fs::read_to_string(home.join("serve.token"))
            .expect("token file")
            .trim()
            .to_owned();
        Self {
            child,
            url,
            token,
            home: home.to_owned(),
            stderr,
            reader: Some(reader),
        }
    }

    /// The server's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for it to exit; its exit status.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        signal(self.child.id(), libc::SIGTERM);
        let status = self.child.wait().expect("wait for lion serve");
        // All of its stderr, once the pipe has closed.
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stderr reader");
        }
        (status, self.stderr())
    }

    /// A client sending the server's token.
    pub fn api(&self) -> Api {
        Api {
            base: self.url.clone(),
            token: Some(self.token.clone()),
            client: reqwest::Client::new(),
        }
    }

    /// `host:port` of the server.
    pub fn authority(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A response: status, headers and body (JSON when it parses).
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub text: String,
}

impl Reply {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The content type.
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a problem with `status`, and returns its detail.
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type(), "application/problem+json", "{self:?}");
        let body = self.json();
        assert_eq!(body["status"], status, "{self:?}");
        body["detail"].as_str().expect("detail").to_owned()
    }
}

/// A client of one server.
#[derive(Clone)]
pub struct Api {
    /// The server's URL.
    pub base: String,
    /// The token sent as a bearer token, if any.
    pub token: Option<String>,
    /// The HTTP client.
    pub client: reqwest::Client,
}

impl Api {
    /// A request to `path`, with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Sends a request and reads the whole reply.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request");
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.expect("body"),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }
}
