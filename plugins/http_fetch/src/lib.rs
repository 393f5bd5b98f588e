//! lion's example plugin: `get` `{"url":"http://..."}` answers
//! `{"status":200,"body":"..."}`, fetched by the host from a granted host.

use agentic_pdk::http;
use serde::{Deserialize, Serialize};

/// The input of `get`.
#[derive(Deserialize)]
struct Url {
    url: String,
}

/// The output of `get`.
#[derive(Serialize)]
struct Page {
    status: u16,
    /// The body as text (invalid UTF-8 replaced).
    body: String,
}

/// Fetches `url` with GET.
fn get(Url { url }: Url) -> Result<Page, String> {
    let response = http::get(&url)?;
    Ok(Page {
        status: response.status,
        body: response.text(),
    })
}

agentic_pdk::plugin!(get);
