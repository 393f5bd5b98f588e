//! The scripted OpenAI-compatible server `bench scale`'s agent turn talks
//! to: every chat request is answered with the same streamed answer.

use std::sync::Arc;

use anyhow::Result;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::ANSWER;

/// Starts an OpenAI-compatible server answering every chat request with
/// [`ANSWER`] streamed in a few chunks (as the CLI tests script agents);
/// returns its base URL.
pub(super) async fn scripted_server() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let mut body = String::new();
    for chunk in ANSWER {
        let delta = json!({"choices":[{"index":0,"delta":{"content":chunk}}]});
        body.push_str(&format!("data: {delta}\n\n"));
    }
    body.push_str(
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    );
    body.push_str(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":9}}\n\n",
    );
    body.push_str("data: [DONE]\n\n");
    let response = Arc::new(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
    ));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                if read_request(&mut socket).await {
                    let _ = socket.write_all(response.as_bytes()).await;
                }
            });
        }
    });
    Ok(url)
}

/// Reads one HTTP request (its head and `content-length` bytes of body);
/// false if the peer went away first.
async fn read_request(socket: &mut tokio::net::TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]);
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            return true;
        }
    }
}
