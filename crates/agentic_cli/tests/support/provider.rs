//! A scripted OpenAI-compatible provider: a local server answering chat
//! completion requests with SSE bodies the test chose.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An SSE body streaming `chunks` of text, then stop, usage and `[DONE]`.
pub fn text_body(chunks: &[&str]) -> String {
    let mut out = String::new();
    for c in chunks {
        let delta = serde_json::json!({"choices":[{"index":0,"delta":{"content":c}}]});
        out.push_str(&format!("data: {delta}\n\n"));
    }
    out.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    out.push_str(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n",
    );
    out.push_str("data: [DONE]\n\n");
    out
}

/// An SSE body in which the model calls tool `name` with `arguments`.
pub fn tool_call_body(name: &str, arguments: &str) -> String {
    let call = serde_json::json!({"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[
        {"index":0,"id":"call_1","type":"function","function":{"name":name,"arguments":arguments}}]}}]});
    format!(
        "data: {call}\n\ndata: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"tool_calls\"}}]}}\n\ndata: [DONE]\n\n"
    )
}

/// A test server answering every request with the same SSE stream of
/// `chunks`; returns its base URL and the request bodies it saw.
pub async fn server(chunks: &'static [&'static str]) -> (String, Arc<Mutex<Vec<String>>>) {
    scripted(vec![text_body(chunks)]).await
}

/// A test server answering request i with `bodies[i]` (the last one again
/// once they run out).
pub async fn scripted(bodies: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
    responding(move |index, _| bodies[index.min(bodies.len() - 1)].clone()).await
}

/// A test server answering each request (its index, its text) with the
/// SSE body `respond` gives.
pub async fn responding(
    respond: impl Fn(usize, &str) -> String + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let requests = seen.clone();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let requests = requests.clone();
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
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
                            requests.lock().unwrap().push(text);
                            break;
                        }
                    }
                }
                let (index, request) = {
                    let seen = requests.lock().unwrap();
                    (seen.len() - 1, seen[seen.len() - 1].clone())
                };
                let body = respond(index, &request);
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
                );
                let _ = socket.write_all(out.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// Reads a chat completion request from `socket` until its body has begun
/// (`"messages"` seen); false if the client went away first.
pub async fn read_until_messages(socket: &mut tokio::net::TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&data).contains("\"messages\"") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A test server that streams `first` (an SSE chunk of text) to each
/// request and then holds the answer open, never finishing it; the
/// returned receiver reports each request whose connection lion closed.
pub async fn stalling(first: &'static str) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                if !read_until_messages(&mut socket).await {
                    return;
                }
                let delta = serde_json::json!({"choices":[{"index":0,"delta":{"content":first}}]});
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: {delta}\n\n"
                );
                if socket.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                // Until lion hangs up.
                let mut buf = [0u8; 8192];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed.send(());
            });
        }
    });
    (url, rx)
}

/// What a prompt to [`gated`]'s model says to have it call a tool.
pub const GATED_TOOL_PROMPT: &str = "Fetch the page with your tool";

/// A test server that streams `chunks` of text to each chat request one at
/// a time: the first at once, each next one when something fetches
/// `CONTROL/release` (the second URL returned), then stop and `[DONE]`. A
/// test (or a browser test's script) sees an answer still being generated.
/// A conversation whose prompt is [`GATED_TOOL_PROMPT`] is answered at
/// once instead: a call of the tool `http_fetch__get`, then, once its
/// result is sent back, "The tool was refused.".
pub async fn gated(chunks: &'static [&'static str]) -> (String, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let releases = Arc::new(tokio::sync::Semaphore::new(0));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let releases = releases.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                // The request line and headers first: a release has no body.
                while !String::from_utf8_lossy(&data).contains("\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                if String::from_utf8_lossy(&data).starts_with("GET /release") {
                    releases.add_permits(1);
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                // The whole body (a chat request says its length).
                let text = String::from_utf8_lossy(&data).to_string();
                let header_end = text.find("\r\n\r\n").map_or(0, |i| i + 4);
                let length = text[..header_end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                while data.len() < header_end + length {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&data[header_end..]).to_string();
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                // A prompt asking for a tool: the model calls one (ungated),
                // and answers at once when the tool's result comes back.
                if body.contains(GATED_TOOL_PROMPT) {
                    let answer = if body.contains("\"role\":\"tool\"") {
                        text_body(&["The tool was refused."])
                    } else {
                        tool_call_body("http_fetch__get", r#"{"url":"http://127.0.0.1:9/"}"#)
                    };
                    let _ = socket.write_all(answer.as_bytes()).await;
                    return;
                }
                for (i, chunk) in chunks.iter().enumerate() {
                    if i > 0 {
                        match releases.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => return,
                        }
                    }
                    let delta =
                        serde_json::json!({"choices":[{"index":0,"delta":{"content":chunk}}]});
                    if socket
                        .write_all(format!("data: {delta}\n\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let end = text_body(&[]);
                let _ = socket.write_all(end.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/v1"), format!("http://{addr}"))
}
