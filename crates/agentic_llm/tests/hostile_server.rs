//! The OpenAI-compatible provider against local test servers that
//! misbehave: one that never answers, one that stalls after its headers,
//! an endless SSE line, a 20 MB line, a 200 MB error body, connections
//! that break after the request was sent, and a listener that never
//! accepts. Each must end in a clear error after a bounded wait and a
//! bounded read, and a request that may have reached the server must never
//! be sent twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentic_core::llm::{
    ChatChunk, ChatMessage, ChatRequest, ChatStream, LlmError, LlmProvider, Role,
};
use agentic_llm::sse::MAX_EVENT_BYTES;
use agentic_llm::{OpenAiConfig, OpenAiProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// Only a guard against a hanging test, not a performance threshold.
const HANG_GUARD: Duration = Duration::from_secs(30);
/// The short timeouts the tests configure, so that a stuck server is given
/// up on quickly (what is tested is that the wait ends, not how fast).
const SHORT: Duration = Duration::from_millis(200);
/// Bytes per write of the streaming test servers.
const WRITE: usize = 64 << 10;
/// What the endless-line server sends at most, so that it stops by itself
/// even against a client that never stops reading.
const ENDLESS_CAP: usize = 1 << 30;
/// The size of the error body the 401 server announces and would send.
const HUGE_BODY: usize = 200 << 20;

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    (listener, url)
}

/// A provider for `url` with `retries` retries, then `tune`d.
fn provider(url: &str, retries: u32, tune: impl FnOnce(&mut OpenAiConfig)) -> OpenAiProvider {
    let mut config = OpenAiConfig::new(url);
    config.max_retries = retries;
    tune(&mut config);
    OpenAiProvider::new(config).expect("provider")
}

/// Reads one request: its head and its body (by content-length).
async fn read_request(socket: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&data).to_string()
}

/// Writes `head`, then `first`, then `filler` bytes up to `total` in
/// [`WRITE`]-byte writes; returns how many body bytes were written before
/// a write failed (the client closed), and whether one did.
async fn stream_out(
    socket: &mut TcpStream,
    head: &str,
    first: &[u8],
    filler: u8,
    total: usize,
) -> (usize, bool) {
    if socket.write_all(head.as_bytes()).await.is_err() || socket.write_all(first).await.is_err() {
        return (0, true);
    }
    let piece = vec![filler; WRITE];
    let mut written = first.len();
    while written < total {
        let n = WRITE.min(total - written);
        if socket.write_all(&piece[..n]).await.is_err() {
            return (written, true);
        }
        written += n;
    }
    (written, false)
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "test-model".into(),
        messages: vec![ChatMessage::new(Role::User, "Hi")],
        tools: Vec::new(),
        temperature: Some(0.0),
        max_tokens: Some(16),
    }
}

fn text_event(t: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"choices":[{"index":0,"delta":{"content":t}}]})
    )
}

/// Every item until the stream ends (an error is last).
async fn drain(mut stream: ChatStream) -> Vec<Result<ChatChunk, LlmError>> {
    let mut out = Vec::new();
    while let Some(item) = tokio::time::timeout(HANG_GUARD, stream.next())
        .await
        .expect("the stream hung")
    {
        out.push(item);
    }
    out
}

#[tokio::test]
async fn a_server_that_never_answers_fails_after_the_response_timeout() {
    let (listener, url) = listen().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            read_request(&mut socket).await;
            // Never answers, never closes.
            held.push(socket);
        }
    });
    let provider = provider(&url, 2, |c| c.response_timeout = SHORT);
    let err = tokio::time::timeout(HANG_GUARD, provider.stream(request()))
        .await
        .expect("the request hung: no response timeout")
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Unreachable { message, .. }
            if message.contains("no response within 200ms") && message.contains("response timeout")),
        "{err}"
    );
}

#[tokio::test]
async fn a_stream_that_stalls_after_the_headers_fails_after_the_idle_timeout() {
    let (listener, url) = listen().await;
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        read_request(&mut socket).await;
        let out = format!("{SSE_HEAD}{}", text_event("first"));
        socket.write_all(out.as_bytes()).await.expect("write");
        // Then nothing, with the connection open.
        let mut buf = [0u8; 64];
        while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let provider = provider(&url, 0, |c| c.idle_timeout = SHORT);
    let stream = tokio::time::timeout(HANG_GUARD, provider.stream(request()))
        .await
        .expect("hung")
        .expect("stream");
    let items = drain(stream).await;
    assert_eq!(items[0], Ok(ChatChunk::Text("first".into())));
    assert!(
        matches!(&items[1], Err(LlmError::StreamBroken(m))
            if m.contains("no data from the provider for 200ms (the idle timeout)")),
        "{items:?}"
    );
    assert_eq!(items.len(), 2);
}

#[tokio::test]
async fn dropping_the_request_while_waiting_for_the_headers_closes_the_connection() {
    let (listener, url) = listen().await;
    let (got_tx, got) = oneshot::channel();
    let (closed_tx, closed) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        read_request(&mut socket).await;
        let _ = got_tx.send(());
        let mut buf = [0u8; 64];
        while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    let provider = Arc::new(provider(&url, 0, |_| {}));
    let pending = {
        let provider = provider.clone();
        tokio::spawn(async move { provider.stream(request()).await.map(|_| ()) })
    };
    got.await.expect("the server got the request");
    pending.abort();
    assert!(pending.await.unwrap_err().is_cancelled());
    tokio::time::timeout(HANG_GUARD, closed)
        .await
        .expect("the connection stayed open after the request was dropped")
        .expect("closed");
}

#[tokio::test]
async fn an_endless_line_is_cut_at_the_event_limit() {
    let (listener, url) = listen().await;
    let (report, written) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        read_request(&mut socket).await;
        let _ = report.send(stream_out(&mut socket, SSE_HEAD, b"data: ", b'x', ENDLESS_CAP).await);
    });
    let provider = provider(&url, 0, |_| {});
    let items = drain(provider.stream(request()).await.expect("stream")).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(&items[0], Err(LlmError::Malformed(m))
            if m.contains(&format!("larger than the {MAX_EVENT_BYTES}-byte limit"))),
        "{items:?}"
    );
    let (written, cut) = tokio::time::timeout(HANG_GUARD, written)
        .await
        .expect("the server is still writing")
        .expect("report");
    assert!(cut, "the client read all {written} bytes the server had");
    // The client read past the limit (that is what stopped it) and then
    // closed the connection: the server stopped far short of its cap.
    assert!(written >= MAX_EVENT_BYTES, "{written}");
    assert!(written < ENDLESS_CAP, "{written}");
}

#[tokio::test]
async fn a_20_mb_line_fails_at_the_limit() {
    const LINE: usize = 20_000_000;
    let (listener, url) = listen().await;
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        read_request(&mut socket).await;
        let (_, cut) = stream_out(&mut socket, SSE_HEAD, b"data: \"", b'y', LINE).await;
        if !cut {
            let end = format!("\"\n\n{}data: [DONE]\n\n", text_event("after"));
            let _ = socket.write_all(end.as_bytes()).await;
        }
    });
    let provider = provider(&url, 0, |_| {});
    let items = drain(provider.stream(request()).await.expect("stream")).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(&items[0], Err(LlmError::Malformed(m))
            if m.contains(&format!("larger than the {MAX_EVENT_BYTES}-byte limit"))),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_huge_error_body_is_not_read_whole() {
    let (listener, url) = listen().await;
    let (report, written) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        read_request(&mut socket).await;
        let head = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {HUGE_BODY}\r\n\r\n"
        );
        let first = br#"{"error":{"message":"Incorrect API key provided"}}"#;
        let _ = report.send(stream_out(&mut socket, &head, first, b' ', HUGE_BODY).await);
    });
    let provider = provider(&url, 3, |_| {});
    let err = tokio::time::timeout(HANG_GUARD, provider.stream(request()))
        .await
        .expect("hung")
        .unwrap_err();
    assert_eq!(
        err,
        LlmError::Unauthorized {
            status: 401,
            message: "Incorrect API key provided".into()
        }
    );
    let (written, cut) = tokio::time::timeout(HANG_GUARD, written)
        .await
        .expect("the server is still writing")
        .expect("report");
    assert!(cut, "the client read the whole {written}-byte body");
    assert!(written < HUGE_BODY, "{written}");
}

/// A server that reads each request, counts it, then ends the connection
/// without answering: with a reset (`reset`) or a plain close.
async fn breaking_server(reset: bool) -> (String, Arc<AtomicUsize>) {
    let (listener, url) = listen().await;
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            read_request(&mut socket).await;
            seen.fetch_add(1, Ordering::SeqCst);
            if reset {
                // SO_LINGER 0: the close sends a reset. (Deprecated because
                // the close may block on a socket with unsent data; this one
                // has none.)
                #[allow(deprecated)]
                socket.set_linger(Some(Duration::ZERO)).expect("linger");
            }
            drop(socket);
        }
    });
    (url, count)
}

#[tokio::test]
async fn a_request_that_may_have_reached_the_server_is_not_sent_again() {
    for reset in [true, false] {
        let (url, count) = breaking_server(reset).await;
        let provider = provider(&url, 3, |_| {});
        let err = tokio::time::timeout(HANG_GUARD, provider.stream(request()))
            .await
            .expect("hung")
            .unwrap_err();
        assert!(
            matches!(&err, LlmError::Unreachable { message, .. } if message.contains("not retried")),
            "reset {reset}: {err}"
        );
        // The server counts a request before it breaks the connection, and
        // the client's error follows that break: every request sent is in.
        assert_eq!(count.load(Ordering::SeqCst), 1, "reset {reset}");
    }
}

#[tokio::test]
async fn a_listener_that_never_accepts_fails_after_the_connect_timeout() {
    // A backlog of 0 queues one connection; the kernel drops the SYNs of
    // any other until it is accepted, which it never is.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let _queued = TcpStream::connect(addr)
        .await
        .expect("the one queued connection");
    let provider = provider(&format!("http://{addr}/v1"), 1, |c| {
        c.connect_timeout = SHORT
    });
    let err = tokio::time::timeout(HANG_GUARD, provider.stream(request()))
        .await
        .expect("hung")
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Unreachable { message, .. }
            if message.contains("no connection within 200ms (the connect timeout)")),
        "{err}"
    );
    drop(listener);
}
