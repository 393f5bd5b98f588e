//! lion's host interfaces as the guest sees them: logging, key-value,
//! events and HTTP. Each checks its grant through the call's context first;
//! calling an interface that was not granted ends the call as
//! `permission_denied`, with the denial in the log.

use agentic_core::error_chain;
use agentic_core::plugin::HostInterface;
use wasmtime::format_err;

use crate::bindings::lion::plugin::{events, http, kv, logging};
use crate::call::CallState;

/// Longest log line kept; longer ones are cut (and still counted in full).
const MAX_LOG_LINE: usize = 4096;

impl CallState {
    /// Ends the call unless `interface` was granted.
    fn require(&self, interface: HostInterface) -> wasmtime::Result<()> {
        self.ctx
            .require(interface)
            .map_err(|failure| format_err!("{}", failure.message))
    }
}

impl logging::Host for CallState {
    async fn log(&mut self, level: logging::Level, message: String) -> wasmtime::Result<()> {
        self.require(HostInterface::Log)?;
        self.ctx
            .log(&message)
            .map_err(|failure| format_err!("{}", failure.message))?;
        let mut line = message.as_str();
        if line.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line = &line[..end];
        }
        let plugin = self.ctx.plugin();
        let call = self.ctx.call_id();
        match level {
            logging::Level::Trace => tracing::trace!(plugin, %call, "{line}"),
            logging::Level::Debug => tracing::debug!(plugin, %call, "{line}"),
            logging::Level::Info => tracing::info!(plugin, %call, "{line}"),
            logging::Level::Warn => tracing::warn!(plugin, %call, "{line}"),
            logging::Level::Error => tracing::error!(plugin, %call, "{line}"),
        }
        Ok(())
    }
}

impl kv::Host for CallState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.require(HostInterface::Kv)?;
        Ok(self.ctx.kv_get(&key))
    }

    async fn set(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), String>> {
        self.require(HostInterface::Kv)?;
        Ok(self.ctx.kv_set(&key, &value))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        self.require(HostInterface::Kv)?;
        Ok(self.ctx.kv_delete(&key))
    }

    async fn keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        self.require(HostInterface::Kv)?;
        Ok(self.ctx.kv_keys(&prefix))
    }
}

impl events::Host for CallState {
    async fn emit(&mut self, kind: String, data: String) -> wasmtime::Result<Result<(), String>> {
        self.require(HostInterface::Events)?;
        Ok(self.ctx.emit(&kind, &data))
    }
}

impl http::Host for CallState {
    async fn fetch(
        &mut self,
        request: http::Request,
    ) -> wasmtime::Result<Result<http::Response, String>> {
        self.require(HostInterface::Http)?;
        let access = match self.ctx.http_access(&request.url) {
            Ok(access) => access,
            Err(refused) => return Ok(Err(refused)),
        };
        let cap = self.ctx.limits().max_output_bytes;
        // No timeout of its own: the call's timeout bounds the request, and
        // names the failure.
        Ok(fetch(&self.http, request, &access.url, cap).await)
    }
}

/// Sends the request (no redirects: a redirect is the plugin's to follow,
/// through the same grant check) and reads at most `cap` bytes of body.
async fn fetch(
    client: &reqwest::Client,
    request: http::Request,
    url: &str,
    cap: u64,
) -> Result<http::Response, String> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("bad HTTP method {:?}", request.method))?;
    let mut builder = client.request(method, url);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if !request.body.is_empty() {
        builder = builder.body(request.body);
    }
    let mut response = builder
        .send()
        .await
        .map_err(|e| format!("http {url}: {}", error_chain(&e)))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("http {url}: {}", error_chain(&e)))?
    {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(format!(
                "http {url}: the response body is over the {cap} byte limit"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(http::Response {
        status,
        headers,
        body,
    })
}
