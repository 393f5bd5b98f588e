//! The [`Sandbox`] port: what the plugin manager needs from a sandbox
//! (compile a component, load a checked artifact, call a function), and the
//! [`CallContext`] through which a running call reaches the host — every
//! grant check and every denial goes through it. No WebAssembly types here:
//! a subprocess sandbox fits beside the wasmtime one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::manifest::{Grant, HostInterface, Limits};
use super::record::{CallFailure, FailureKind};

/// Why a component could not be compiled or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The bytes are not a valid plugin component.
    #[error("invalid plugin component: {0}")]
    InvalidComponent(String),
    /// The host failed (out of resources, I/O...).
    #[error("sandbox error: {0}")]
    Host(String),
}

/// What compiling a component gives.
#[derive(Debug)]
pub struct Compiled {
    /// The compiled artifact, to cache and load.
    pub artifact: Vec<u8>,
    /// The lion host interfaces the component imports.
    pub imports: Vec<HostInterface>,
}

/// Compiled bytes whose SHA-256 matched the hash recorded when they were
/// compiled (or that were compiled just now), so a sandbox may trust them as
/// its own output.
#[derive(Debug)]
pub struct VerifiedArtifact {
    bytes: Vec<u8>,
    sha256: String,
}

impl VerifiedArtifact {
    /// Bytes this process has just compiled.
    pub fn compiled(bytes: Vec<u8>) -> Self {
        let sha256 = sha256_hex(&bytes);
        Self { bytes, sha256 }
    }

    /// Bytes read from a cache: `None` unless they hash to `expected`.
    pub fn check(bytes: Vec<u8>, expected: &str) -> Option<Self> {
        let sha256 = sha256_hex(&bytes);
        (sha256 == expected).then_some(Self { bytes, sha256 })
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Their SHA-256, in hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// SHA-256 of `bytes`, in lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A sandbox that runs plugins: compiles components and loads them.
pub trait Sandbox: Send + Sync + 'static {
    /// The sandbox's name, recorded with each installed plugin (`wasm`).
    fn kind(&self) -> &'static str;

    /// Artifacts compiled under another key (another engine version or
    /// settings) are not reused.
    fn artifact_key(&self) -> &str;

    /// Checks and compiles a component. Blocking and CPU-heavy.
    fn compile(&self, component: &[u8]) -> Result<Compiled, SandboxError>;

    /// Loads a compiled artifact, ready for calls.
    fn load(&self, artifact: &VerifiedArtifact) -> Result<Arc<dyn LoadedPlugin>, SandboxError>;
}

/// A loaded plugin. Every call runs in a fresh instance.
#[async_trait]
pub trait LoadedPlugin: Send + Sync {
    /// Calls `function` with JSON `input` under the context's grant and
    /// limits; the plugin's JSON output, or why the call failed.
    async fn call(
        &self,
        function: &str,
        input: &str,
        ctx: Arc<CallContext>,
    ) -> Result<String, CallFailure>;
}

/// Key-value entries a call may write, and their sizes.
const MAX_KV_KEY_BYTES: usize = 256;
const MAX_KV_VALUE_BYTES: usize = 64 << 10;
const MAX_KV_WRITES: usize = 1000;
/// Custom events a call may emit.
const MAX_EMITS: usize = 100;

/// One plugin call's view of the host: the grant and limits it runs under,
/// its key-value store (its own writes on top of a snapshot), the events it
/// emits and the denials it met. The manager commits the effects with the
/// call's result.
#[derive(Debug)]
pub struct CallContext {
    plugin: String,
    call_id: Uuid,
    grant: Arc<Grant>,
    limits: Limits,
    kv: Arc<BTreeMap<String, String>>,
    effects: Mutex<Effects>,
}

/// What a call did to the world, committed only with its result.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Key-value writes; `None` deletes.
    pub(crate) kv_writes: BTreeMap<String, Option<String>>,
    /// Custom events, kind and data.
    pub(crate) emitted: Vec<(String, Value)>,
    /// Denials: what was asked, why it was refused.
    pub(crate) denials: Vec<(String, String)>,
    /// Bytes logged so far (counted against the output limit).
    logged_bytes: u64,
    /// The first limit the call hit, which names its failure.
    limit_hit: Option<CallFailure>,
}

/// Where a granted HTTP request may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAccess {
    /// The URL, checked against the grant.
    pub url: String,
    /// Its host.
    pub host: String,
    /// Its port (the scheme's default when the URL has none).
    pub port: u16,
}

impl CallContext {
    /// A context for call `call_id` of `plugin`.
    pub fn new(
        plugin: &str,
        call_id: Uuid,
        grant: Arc<Grant>,
        limits: Limits,
        kv: Arc<BTreeMap<String, String>>,
    ) -> Self {
        Self {
            plugin: plugin.to_owned(),
            call_id,
            grant,
            limits,
            kv,
            effects: Mutex::new(Effects::default()),
        }
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The call's id.
    pub fn call_id(&self) -> Uuid {
        self.call_id
    }

    /// What the plugin was granted.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The call's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn effects(&self) -> std::sync::MutexGuard<'_, Effects> {
        self.effects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn take_effects(&self) -> Effects {
        std::mem::take(&mut *self.effects())
    }

    /// Records a denial: `asked` (what the plugin tried) was refused for
    /// `reason`. The manager logs it as a `plugin_permission_denied` event.
    pub fn deny(&self, asked: impl Into<String>, reason: impl Into<String>) {
        self.effects().denials.push((asked.into(), reason.into()));
    }

    /// The failure that names a call which hit a limit (or was denied
    /// something), if any: a sandbox reports this rather than the trap the
    /// guest died of afterwards.
    pub fn limit_hit(&self) -> Option<CallFailure> {
        self.effects().limit_hit.clone()
    }

    /// Records that the call hit a limit; the first one names its failure.
    pub fn hit_limit(&self, failure: CallFailure) {
        let mut effects = self.effects();
        if effects.limit_hit.is_none() {
            effects.limit_hit = Some(failure);
        }
    }

    /// Checks that the plugin was granted `interface`; records the denial
    /// and returns the failure to end the call with when it was not.
    pub fn require(&self, interface: HostInterface) -> Result<(), CallFailure> {
        if self.grant.interfaces.contains(&interface) {
            return Ok(());
        }
        let asked = format!("interface {}", interface.as_str());
        let failure = CallFailure::new(
            FailureKind::PermissionDenied,
            format!("the plugin called the {asked}, which was not granted"),
        );
        self.deny(asked, "not granted");
        self.hit_limit(failure.clone());
        Err(failure)
    }

    /// Counts one log line against the output limit; past it, the call ends.
    pub fn log(&self, message: &str) -> Result<(), CallFailure> {
        let mut effects = self.effects();
        effects.logged_bytes += message.len() as u64;
        if effects.logged_bytes > self.limits.max_output_bytes {
            let failure = CallFailure::new(
                FailureKind::OutputLimit,
                format!(
                    "the plugin logged more than its {} byte output limit",
                    self.limits.max_output_bytes
                ),
            );
            if effects.limit_hit.is_none() {
                effects.limit_hit = Some(failure.clone());
            }
            return Err(failure);
        }
        Ok(())
    }

    /// The value under `key`: the call's own write if any, else the store's.
    pub fn kv_get(&self, key: &str) -> Option<String> {
        if let Some(written) = self.effects().kv_writes.get(key) {
            return written.clone();
        }
        self.kv.get(key).cloned()
    }

    /// Sets `key` to `value` (committed with the call's result).
    pub fn kv_set(&self, key: &str, value: &str) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KV_KEY_BYTES {
            return Err(format!("a key must be 1 to {MAX_KV_KEY_BYTES} bytes"));
        }
        if value.len() > MAX_KV_VALUE_BYTES {
            return Err(format!(
                "a value must be at most {MAX_KV_VALUE_BYTES} bytes"
            ));
        }
        let mut effects = self.effects();
        if effects.kv_writes.len() >= MAX_KV_WRITES && !effects.kv_writes.contains_key(key) {
            return Err(format!("a call may write at most {MAX_KV_WRITES} keys"));
        }
        effects
            .kv_writes
            .insert(key.to_owned(), Some(value.to_owned()));
        Ok(())
    }

    /// Deletes `key`; true when it was there.
    pub fn kv_delete(&self, key: &str) -> bool {
        let existed = self.kv_get(key).is_some();
        if existed {
            self.effects().kv_writes.insert(key.to_owned(), None);
        }
        existed
    }

    /// Every key starting with `prefix`, in order, with the call's writes.
    pub fn kv_keys(&self, prefix: &str) -> Vec<String> {
        let effects = self.effects();
        let mut keys: std::collections::BTreeSet<&str> = self
            .kv
            .range(prefix.to_owned()..)
            .map(|(k, _)| k.as_str())
            .take_while(|k| k.starts_with(prefix))
            .collect();
        for (key, value) in &effects.kv_writes {
            if key.starts_with(prefix) {
                match value {
                    Some(_) => keys.insert(key),
                    None => keys.remove(key.as_str()),
                };
            }
        }
        keys.into_iter().map(str::to_owned).collect()
    }

    /// Emits a custom event of `kind` with JSON `data` (committed with the
    /// call's result).
    pub fn emit(&self, kind: &str, data: &str) -> Result<(), String> {
        if kind.is_empty() || kind.len() > 64 {
            return Err("an event kind must be 1 to 64 bytes".into());
        }
        let data: Value =
            serde_json::from_str(data).map_err(|e| format!("event data is not JSON: {e}"))?;
        let mut effects = self.effects();
        if effects.emitted.len() >= MAX_EMITS {
            return Err(format!("a call may emit at most {MAX_EMITS} events"));
        }
        effects.emitted.push((kind.to_owned(), data));
        Ok(())
    }

    /// Checks an HTTP request against the grant: the `http` interface and
    /// the URL's host. Records the denial when refused.
    pub fn http_access(&self, url: &str) -> Result<HttpAccess, String> {
        if !self.grant.interfaces.contains(&HostInterface::Http) {
            self.deny(format!("http {url}"), "the http interface was not granted");
            return Err("permission denied: the http interface was not granted".into());
        }
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("not an absolute URL: {url}"))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            other => return Err(format!("unsupported URL scheme {other:?}")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err("URLs with user info are not allowed".into());
        }
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| format!("bad host in URL: {url}"))?;
        if self.host_granted(&host, port) {
            Ok(HttpAccess {
                url: url.to_owned(),
                host,
                port,
            })
        } else {
            self.deny(
                format!("http {host}:{port}"),
                "host not in the granted hosts",
            );
            Err(format!(
                "permission denied: host {host}:{port} was not granted"
            ))
        }
    }

    /// Whether a socket may reach `addr` (`what` says how: `tcp connect`,
    /// `udp send`...). Only granted hosts written as IP addresses can be
    /// reached by sockets; everything else is recorded as denied.
    pub fn socket_allowed(&self, addr: SocketAddr, what: &str) -> bool {
        let allowed = self.grant.hosts.iter().any(|h| {
            split_host_port(h, 0).is_some_and(|(host, port)| {
                host.parse::<IpAddr>().is_ok_and(|ip| ip == addr.ip())
                    && (port == 0 || port == addr.port())
            })
        });
        if !allowed {
            self.deny(format!("{what} {addr}"), "address not in the granted hosts");
        }
        allowed
    }

    /// True when `host:port` matches a granted host (`name` matches any
    /// port, `name:port` only that one).
    fn host_granted(&self, host: &str, port: u16) -> bool {
        self.grant.hosts.iter().any(|h| {
            split_host_port(h, 0)
                .is_some_and(|(gh, gp)| gh.eq_ignore_ascii_case(host) && (gp == 0 || gp == port))
        })
    }
}

/// Splits `host[:port]` (IPv6 in brackets); `default` when there is no port.
fn split_host_port(authority: &str, default: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => Some((authority.to_owned(), default)),
        None if authority.is_empty() => None,
        None => Some((authority.to_owned(), default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(grant: Grant) -> CallContext {
        CallContext::new(
            "p",
            Uuid::nil(),
            Arc::new(grant),
            Limits::default(),
            Arc::new(BTreeMap::from([("a".into(), "1".into())])),
        )
    }

    #[test]
    fn http_is_refused_without_the_interface_and_outside_the_hosts() {
        let none = ctx(Grant::default());
        assert!(none.http_access("http://example.com/").is_err());
        let grant = Grant {
            interfaces: vec![HostInterface::Http],
            hosts: vec!["example.com".into(), "127.0.0.1:8080".into()],
            ..Grant::default()
        };
        let c = ctx(grant);
        assert_eq!(c.http_access("https://EXAMPLE.com/x").unwrap().port, 443);
        assert!(c.http_access("http://127.0.0.1:8080/").is_ok());
        assert!(c.http_access("http://127.0.0.1:8081/").is_err());
        assert!(c.http_access("http://example.com@evil.com/").is_err());
        assert!(c.http_access("http://evil.com/?example.com").is_err());
        assert!(c.http_access("file:///etc/passwd").is_err());
        let denials = c.take_effects().denials;
        assert_eq!(denials.len(), 2, "{denials:?}");
        assert_eq!(denials[0].0, "http 127.0.0.1:8081");
    }

    #[test]
    fn sockets_reach_only_granted_ip_hosts() {
        let c = ctx(Grant {
            hosts: vec!["127.0.0.1:9000".into(), "[::1]".into(), "localhost".into()],
            ..Grant::default()
        });
        assert!(c.socket_allowed("127.0.0.1:9000".parse().unwrap(), "tcp connect"));
        assert!(!c.socket_allowed("127.0.0.1:9001".parse().unwrap(), "tcp connect"));
        assert!(c.socket_allowed("[::1]:5".parse().unwrap(), "udp send"));
        assert_eq!(c.take_effects().denials.len(), 1);
    }

    #[test]
    fn kv_reads_see_the_calls_own_writes_over_the_snapshot() {
        let c = ctx(Grant::default());
        assert_eq!(c.kv_get("a").as_deref(), Some("1"));
        c.kv_set("b", "2").unwrap();
        assert!(c.kv_delete("a"));
        assert!(!c.kv_delete("zz"));
        assert_eq!(c.kv_get("a"), None);
        assert_eq!(c.kv_keys(""), vec!["b".to_owned()]);
        assert!(c.kv_set("", "x").is_err());
        assert!(c.emit("k", "not json").is_err());
        c.emit("k", "{\"x\":1}").unwrap();
        let effects = c.take_effects();
        assert_eq!(effects.kv_writes.len(), 2);
        assert_eq!(effects.emitted.len(), 1);
    }

    #[test]
    fn logging_past_the_output_limit_ends_the_call_as_output_limit() {
        let limits = Limits {
            max_output_bytes: 10,
            ..Limits::default()
        };
        let c = CallContext::new(
            "p",
            Uuid::nil(),
            Arc::new(Grant::default()),
            limits,
            Arc::default(),
        );
        c.log("12345").unwrap();
        let failure = c.log("123456").unwrap_err();
        assert_eq!(failure.kind, FailureKind::OutputLimit);
        assert_eq!(c.limit_hit(), Some(failure));
    }
}
