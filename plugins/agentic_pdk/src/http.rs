//! Outbound HTTP through the host, through the `http` interface.
//!
//! Needs the `http` grant, and reaches only the hosts the operator granted;
//! anything else comes back as an `Err` naming what went wrong.

use serde::de::DeserializeOwned;

use crate::bindings::lion::plugin::http;
pub use crate::bindings::lion::plugin::http::{Request, Response};

impl Request {
    /// A `method` request for `url` (absolute `http://` or `https://`),
    /// without headers or body.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A GET request for `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// The request with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The request with `body`.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

impl Response {
    /// The body as text, invalid UTF-8 replaced by U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("response body is not JSON: {e}"))
    }
}

/// Sends `request` and returns the response, whatever its status; an error
/// names what went wrong (a host not granted, a timeout, a refused
/// connection...).
pub fn fetch(request: &Request) -> Result<Response, String> {
    http::fetch(request)
}

/// Sends a GET request for `url`.
pub fn get(url: &str) -> Result<Response, String> {
    fetch(&Request::get(url))
}
