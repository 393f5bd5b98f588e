//! lion's host interfaces as the guest sees them: logging, key-value,
//! events and HTTP. Each checks its grant through the call's context first;
//! calling an interface that was not granted ends the call as
//! `permission_denied`, with the denial in the log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use agentic_core::error_chain;
use agentic_core::plugin::{CallContext, HostInterface};
use url::Host;
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
        let ctx = self.ctx.clone();
        let target = match check_http(&ctx, &request).await {
            Ok(target) => target,
            Err(refused) => return Ok(Err(refused)),
        };
        let cap = ctx.limits().max_output_bytes;
        // No timeout of its own: the call's timeout bounds the request, and
        // names the failure.
        Ok(fetch(request, target, cap).await)
    }
}

/// Headers a plugin may not set: `Host` would aim the request at another
/// site on the granted address than the URL names, `Content-Length` and
/// `Transfer-Encoding` could disagree with the body the host sends, and the
/// others concern the connection or a proxy, which are the host's.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
];

/// A checked request: its URL (parsed once, and sent as parsed) and the
/// addresses it may connect to.
struct Target {
    url: reqwest::Url,
    /// The host name to pin to `addrs`; `None` for an IP address.
    name: Option<String>,
    addrs: Vec<SocketAddr>,
}

/// Checks a request against the grant: the URL (parsed once, with the
/// parser reqwest itself uses), its host and port, its headers, and what
/// the host resolves to (once: the request connects to the addresses
/// checked here, so a second answer from DNS cannot send it elsewhere).
/// Every refusal of a grant is recorded as a denial.
async fn check_http(ctx: &CallContext, request: &http::Request) -> Result<Target, String> {
    let url =
        reqwest::Url::parse(&request.url).map_err(|e| format!("bad URL {:?}: {e}", request.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("unsupported URL scheme {:?}", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs with user info are not allowed".into());
    }
    let (host, ip) = match url.host() {
        Some(Host::Domain(name)) => (name.to_owned(), None),
        Some(Host::Ipv4(ip)) => (ip.to_string(), Some(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => (ip.to_string(), Some(IpAddr::V6(ip))),
        None => return Err(format!("no host in URL {:?}", request.url)),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("no port for URL {:?}", request.url))?;
    ctx.http_host(&host, port)?;
    for (name, _) in &request.headers {
        if FORBIDDEN_HEADERS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(name.trim()))
        {
            ctx.deny(
                format!("http {host}:{port} header {name}"),
                "the host sets this header itself",
            );
            return Err(format!(
                "permission denied: the {name} header is set by the host"
            ));
        }
    }
    let resolved: Vec<SocketAddr> = match ip {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("http {host}: cannot resolve: {e}"))?
            .collect(),
    };
    let addrs = ctx.http_addresses(&host, port, &resolved)?;
    Ok(Target {
        url,
        name: ip.is_none().then_some(host),
        addrs,
    })
}

/// A resolver that resolves nothing: every name a request may reach is
/// pinned to its checked addresses, so any other lookup is a mistake.
struct NoLookups;

impl reqwest::dns::Resolve for NoLookups {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let message = format!("{} was not resolved and checked first", name.as_str());
        Box::pin(async move { Err(message.into()) })
    }
}

/// Sends the request to the checked addresses only (no redirects: a
/// redirect is the plugin's to follow, through the same checks; no proxy
/// from the environment) and reads at most `cap` bytes of body.
async fn fetch(request: http::Request, target: Target, cap: u64) -> Result<http::Response, String> {
    let url = target.url.as_str().to_owned();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(NoLookups));
    if let Some(name) = &target.name {
        builder = builder.resolve_to_addrs(name, &target.addrs);
    }
    let client = builder
        .build()
        .map_err(|e| format!("http {url}: {}", error_chain(&e)))?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("bad HTTP method {:?}", request.method))?;
    let mut builder = client.request(method, target.url);
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
