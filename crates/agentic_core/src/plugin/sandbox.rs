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
    /// A server plugin could not be started or listed, or its files
    /// changed since install (the message says which).
    #[error("{0}")]
    Server(String),
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

/// A loaded plugin. A WebAssembly plugin runs every call in a fresh
/// instance, so nothing one call leaves reaches the next; a server plugin
/// is one warm process serving call after call, which **keeps state between
/// calls** (and between callers) until it is stopped. Dropping the last
/// handle stops it.
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

/// Longest key-value key: keys are listed and compared, not stored data.
const MAX_KV_KEY_BYTES: usize = 256;
/// Largest key-value value: each write is one event in the log.
const MAX_KV_VALUE_BYTES: usize = 64 << 10;
/// Keys one call may write: each is one event, committed with the result.
const MAX_KV_WRITES: usize = 1000;
/// Custom events a call may emit: each is one event, committed with the
/// result (their bytes are bounded by the limits too).
const MAX_EMITS: usize = 100;
/// Longest custom event kind.
const MAX_EMIT_KIND_BYTES: usize = 64;

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
    /// Bytes emitted so far (kinds and data).
    emitted_bytes: u64,
    /// Bytes written into granted directories so far.
    written_bytes: u64,
    /// The key-value store's size (key and value bytes, keys) with the
    /// call's writes, once a write needed it.
    kv_usage: Option<KvUsage>,
    /// The first limit the call hit, which names its failure.
    limit_hit: Option<CallFailure>,
}

/// The size of a plugin's key-value store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct KvUsage {
    /// Key and value bytes.
    bytes: u64,
    /// Keys.
    keys: u64,
}

impl CallContext {
    /// A context for call `call_id` of `plugin`, under `limits` lowered to
    /// their ceilings (a plugin recorded before the ceilings existed may
    /// hold larger values).
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
            limits: limits.capped(),
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

    /// Sets `key` to `value` (committed with the call's result). A write
    /// past a cap (key or value size, keys written by the call, the
    /// store's total size or key count) is refused and ends the call as
    /// `kv_limit`.
    pub fn kv_set(&self, key: &str, value: &str) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KV_KEY_BYTES {
            return Err(self.over(
                FailureKind::KvLimit,
                format!("a key must be 1 to {MAX_KV_KEY_BYTES} bytes"),
            ));
        }
        if value.len() > MAX_KV_VALUE_BYTES {
            return Err(self.over(
                FailureKind::KvLimit,
                format!(
                    "a value must be at most {MAX_KV_VALUE_BYTES} bytes (this one is {})",
                    value.len()
                ),
            ));
        }
        let mut effects = self.effects();
        if effects.kv_writes.len() >= MAX_KV_WRITES && !effects.kv_writes.contains_key(key) {
            drop(effects);
            return Err(self.over(
                FailureKind::KvLimit,
                format!("a call may write at most {MAX_KV_WRITES} keys"),
            ));
        }
        let mut usage = self.kv_usage(&effects);
        match self.current_len(&effects, key) {
            Some(old) => usage.bytes -= (key.len() + old) as u64,
            None => usage.keys += 1,
        }
        usage.bytes += (key.len() + value.len()) as u64;
        let limits = &self.limits;
        let refusal = if usage.bytes > limits.max_kv_total_bytes {
            Some(format!(
                "the key-value store would hold {} bytes, over its {} byte limit \
                 (max_kv_total_bytes)",
                usage.bytes, limits.max_kv_total_bytes
            ))
        } else if usage.keys > limits.max_kv_keys {
            Some(format!(
                "the key-value store would hold {} keys, over its {} key limit (max_kv_keys)",
                usage.keys, limits.max_kv_keys
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            drop(effects);
            return Err(self.over(FailureKind::KvLimit, reason));
        }
        effects.kv_usage = Some(usage);
        effects
            .kv_writes
            .insert(key.to_owned(), Some(value.to_owned()));
        Ok(())
    }

    /// Records that the call went past a limit of `kind` (which ends it
    /// with that failure) and returns the message for the guest.
    fn over(&self, kind: FailureKind, message: String) -> String {
        self.hit_limit(CallFailure::new(kind, message.clone()));
        message
    }

    /// The length of the value under `key` as the call sees it.
    fn current_len(&self, effects: &Effects, key: &str) -> Option<usize> {
        match effects.kv_writes.get(key) {
            Some(written) => written.as_ref().map(String::len),
            None => self.kv.get(key).map(String::len),
        }
    }

    /// The store's size with the call's writes (counted on first need).
    fn kv_usage(&self, effects: &Effects) -> KvUsage {
        if let Some(usage) = effects.kv_usage {
            return usage;
        }
        let mut usage = KvUsage::default();
        for (key, value) in self.kv.iter() {
            usage.bytes += (key.len() + value.len()) as u64;
            usage.keys += 1;
        }
        for (key, written) in &effects.kv_writes {
            if let Some(old) = self.kv.get(key) {
                usage.bytes -= (key.len() + old.len()) as u64;
                usage.keys -= 1;
            }
            if let Some(new) = written {
                usage.bytes += (key.len() + new.len()) as u64;
                usage.keys += 1;
            }
        }
        usage
    }

    /// Deletes `key`; true when it was there.
    pub fn kv_delete(&self, key: &str) -> bool {
        let mut effects = self.effects();
        let Some(old) = self.current_len(&effects, key) else {
            return false;
        };
        if let Some(usage) = &mut effects.kv_usage {
            usage.bytes -= (key.len() + old) as u64;
            usage.keys -= 1;
        }
        effects.kv_writes.insert(key.to_owned(), None);
        true
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
    /// call's result). An event over the size limit, or past the call's
    /// count or total bytes, is refused and ends the call as `emit_limit`.
    pub fn emit(&self, kind: &str, data: &str) -> Result<(), String> {
        if kind.is_empty() || kind.len() > MAX_EMIT_KIND_BYTES {
            return Err(format!(
                "an event kind must be 1 to {MAX_EMIT_KIND_BYTES} bytes"
            ));
        }
        let limits = &self.limits;
        // Sizes first: a payload over the limit is never parsed.
        if data.len() as u64 > limits.max_emit_bytes {
            return Err(self.over(
                FailureKind::EmitLimit,
                format!(
                    "an event's data is {} bytes, over the {} byte limit (max_emit_bytes)",
                    data.len(),
                    limits.max_emit_bytes
                ),
            ));
        }
        let mut effects = self.effects();
        let total = effects.emitted_bytes + (kind.len() + data.len()) as u64;
        let refusal = if effects.emitted.len() >= MAX_EMITS {
            Some(format!("a call may emit at most {MAX_EMITS} events"))
        } else if total > limits.max_emit_total_bytes {
            Some(format!(
                "the call would emit {total} bytes of events, over its {} byte limit \
                 (max_emit_total_bytes)",
                limits.max_emit_total_bytes
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            drop(effects);
            return Err(self.over(FailureKind::EmitLimit, reason));
        }
        let data: Value =
            serde_json::from_str(data).map_err(|e| format!("event data is not JSON: {e}"))?;
        effects.emitted_bytes = total;
        effects.emitted.push((kind.to_owned(), data));
        Ok(())
    }

    /// Counts `bytes` written into the granted directories; past the
    /// call's limit the write is refused, and the call ends as
    /// `write_limit`.
    pub fn count_write(&self, bytes: u64) -> Result<(), CallFailure> {
        let mut effects = self.effects();
        let total = effects.written_bytes.saturating_add(bytes);
        if total > self.limits.max_write_bytes {
            let failure = CallFailure::new(
                FailureKind::WriteLimit,
                format!(
                    "the call would write {total} bytes into its directories, over its {} \
                     byte limit (max_write_bytes)",
                    self.limits.max_write_bytes
                ),
            );
            if effects.limit_hit.is_none() {
                effects.limit_hit = Some(failure.clone());
            }
            return Err(failure);
        }
        effects.written_bytes = total;
        Ok(())
    }

    /// Checks an HTTP request's host and port (parsed from its URL by the
    /// sandbox, which sends that same parsed URL) against the grant: the
    /// `http` interface and the granted hosts. Records the denial when
    /// refused. `host` is a name or an IP address (IPv6 without brackets).
    pub fn http_host(&self, host: &str, port: u16) -> Result<(), String> {
        let asked = authority(host, port);
        if !self.grant.interfaces.contains(&HostInterface::Http) {
            self.deny(
                format!("http {asked}"),
                "the http interface was not granted",
            );
            return Err("permission denied: the http interface was not granted".into());
        }
        if self.host_granted(host, port) {
            return Ok(());
        }
        self.deny(format!("http {asked}"), "host not in the granted hosts");
        Err(format!("permission denied: host {asked} was not granted"))
    }

    /// Of the addresses a granted HTTP host resolved to, those the request
    /// may connect to: every global address, and any other (loopback,
    /// private, link-local such as the cloud metadata address
    /// 169.254.169.254, unspecified...) only when that address itself is a
    /// granted host. When none is left the request is refused and the
    /// denial recorded.
    pub fn http_addresses(
        &self,
        host: &str,
        port: u16,
        resolved: &[SocketAddr],
    ) -> Result<Vec<SocketAddr>, String> {
        let allowed = reachable_addresses(&self.grant, port, resolved);
        if !allowed.is_empty() {
            return Ok(allowed);
        }
        let asked = authority(host, port);
        let addrs = if resolved.is_empty() {
            "no address".to_owned()
        } else {
            let ips: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
            ips.join(", ")
        };
        self.deny(
            format!("http {asked} ({addrs})"),
            "resolves to no global or granted address",
        );
        Err(format!(
            "permission denied: {asked} resolves to {addrs}: not a global address, and not granted"
        ))
    }

    /// Whether a socket may reach `addr` (`what` says how: `tcp connect`,
    /// `udp send`...). Only granted hosts written as IP addresses can be
    /// reached by sockets; everything else is recorded as denied.
    pub fn socket_allowed(&self, addr: SocketAddr, what: &str) -> bool {
        let allowed = address_granted(&self.grant, addr.ip(), addr.port());
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

/// Of the addresses a granted host name resolved to (for `port`), those a
/// plugin may be connected to: every global address, and any other
/// (loopback, private, link-local such as the cloud metadata address
/// 169.254.169.254, unspecified...) only when that address itself is a
/// granted host (for any port, or for `port`). The rule of both sandboxes:
/// the WASM sandbox's HTTP requests and a server's forwarded connections.
pub fn reachable_addresses(grant: &Grant, port: u16, resolved: &[SocketAddr]) -> Vec<SocketAddr> {
    resolved
        .iter()
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .filter(|a| is_global(a.ip()) || address_granted(grant, a.ip(), port))
        .collect()
}

/// True when `ip` is a granted host written as an IP address, for any port
/// or for `port`.
fn address_granted(grant: &Grant, ip: IpAddr, port: u16) -> bool {
    grant.hosts.iter().any(|h| {
        split_host_port(h, 0).is_some_and(|(gh, gp)| {
            gh.parse::<IpAddr>()
                .is_ok_and(|g| g.to_canonical() == ip.to_canonical())
                && (gp == 0 || gp == port)
        })
    })
}

/// `host:port`, with an IPv6 host in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// True for an address of the public internet: not loopback, private,
/// shared (carrier-grade NAT), link-local (the cloud metadata address among
/// them), unspecified, broadcast, multicast, documentation, benchmarking or
/// reserved. An IPv4 address inside an IPv6 one (mapped, NAT64, 6to4) is
/// judged as IPv4. (`IpAddr::is_global` is not stable yet.)
pub fn is_global(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(a == 0
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10: shared address space (carrier-grade NAT).
                || (a == 100 && (b & 0xc0) == 64)
                // 192.0.0.0/24: IETF protocol assignments.
                || (a == 192 && b == 0 && c == 0)
                // 198.18.0.0/15: benchmarking.
                || (a == 198 && (b & 0xfe) == 18)
                // 240.0.0.0/4: reserved.
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let v4 = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                IpAddr::from([a, b, c, d])
            };
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach IPv4 hosts.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_global(v4(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_global(v4(s[1], s[2]));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                // ::/96: IPv4-compatible (deprecated); 100::/64: discard.
                || s[..6] == [0; 6]
                || s[..4] == [0x100, 0, 0, 0]
                // 2001::/23: IETF assignments (Teredo, benchmarking...);
                // 2001:db8::/32: documentation.
                || (s[0] == 0x2001 && (s[1] < 0x200 || s[1] == 0xdb8))
                // fec0::/10: site-local (deprecated).
                || (s[0] & 0xffc0) == 0xfec0
                // 64:ff9b:1::/48: local-use NAT64, which may translate to
                // any IPv4 address (private ones included), wherever its
                // prefix length puts the embedded address.
                || s[..3] == [0x64, 0xff9b, 1]
                // 3fff::/20: documentation.
                || (s[0] == 0x3fff && s[1] & 0xf000 == 0))
        }
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
        assert!(none.http_host("example.com", 80).is_err());
        let grant = Grant {
            interfaces: vec![HostInterface::Http],
            hosts: vec!["example.com".into(), "127.0.0.1:8080".into()],
            ..Grant::default()
        };
        let c = ctx(grant);
        assert!(c.http_host("EXAMPLE.com", 443).is_ok());
        assert!(c.http_host("127.0.0.1", 8080).is_ok());
        assert!(c.http_host("127.0.0.1", 8081).is_err());
        assert!(c.http_host("evil.com", 80).is_err());
        let denials = c.take_effects().denials;
        assert_eq!(denials.len(), 2, "{denials:?}");
        assert_eq!(denials[0].0, "http 127.0.0.1:8081");
    }

    #[test]
    fn a_granted_name_reaches_only_global_or_granted_addresses() {
        let c = ctx(Grant {
            interfaces: vec![HostInterface::Http],
            hosts: vec!["example.com".into(), "127.0.0.1:8080".into()],
            ..Grant::default()
        });
        let addrs = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|a| a.parse().unwrap()).collect()
        };
        // A public address passes; a loopback one only where granted.
        let public = addrs(&["93.184.216.34:80"]);
        assert_eq!(
            c.http_addresses("example.com", 80, &public).unwrap(),
            public
        );
        let granted = addrs(&["127.0.0.1:8080"]);
        assert_eq!(
            c.http_addresses("example.com", 8080, &granted).unwrap(),
            granted
        );
        // Mixed answers keep only what passes.
        let mixed = addrs(&["127.0.0.1:80", "93.184.216.34:80"]);
        assert_eq!(
            c.http_addresses("example.com", 80, &mixed).unwrap(),
            addrs(&["93.184.216.34:80"])
        );
        for bad in [
            "127.0.0.1:80",
            "169.254.169.254:80",
            "0.0.0.0:80",
            "10.1.2.3:80",
            "[::1]:80",
            "[::ffff:169.254.169.254]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[64:ff9b::a9fe:a9fe]:80",
        ] {
            assert!(
                c.http_addresses("example.com", 80, &addrs(&[bad])).is_err(),
                "{bad}"
            );
        }
        assert!(c.http_addresses("example.com", 80, &[]).is_err());
        let denials = c.take_effects().denials;
        assert_eq!(denials.len(), 10, "{denials:?}");
        assert_eq!(
            denials[1],
            (
                "http example.com:80 (169.254.169.254)".to_owned(),
                "resolves to no global or granted address".to_owned()
            )
        );
    }

    #[test]
    fn only_public_addresses_are_global() {
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "1.1.1.1",
        ] {
            assert!(is_global(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "fe80::1",
            "fc00::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "64:ff9b::7f00:1",
            "2002:a9fe:a9fe::1",
            "100::1",
            "64:ff9b:1:a9fe:a9fe::",
            "64:ff9b:1::a9fe:a9fe",
            "3fff::1",
        ] {
            assert!(!is_global(ip.parse().unwrap()), "{ip}");
        }
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

    fn limited(limits: Limits, kv: &[(&str, &str)]) -> CallContext {
        CallContext::new(
            "p",
            Uuid::nil(),
            Arc::new(Grant::default()),
            limits,
            Arc::new(
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
        )
    }

    #[test]
    fn an_event_over_the_size_limit_is_refused_unparsed_and_ends_the_call() {
        let c = limited(
            Limits {
                max_emit_bytes: 16,
                ..Limits::default()
            },
            &[],
        );
        c.emit("k", "\"0123456789\"").unwrap();
        let big = format!("\"{}\"", "x".repeat(100));
        let refused = c.emit("k", &big).unwrap_err();
        assert!(refused.contains("max_emit_bytes"), "{refused}");
        assert_eq!(c.limit_hit().unwrap().kind, FailureKind::EmitLimit);
        assert_eq!(c.take_effects().emitted.len(), 1);
    }

    #[test]
    fn events_past_the_calls_total_are_refused() {
        let c = limited(
            Limits {
                max_emit_total_bytes: 100,
                ..Limits::default()
            },
            &[],
        );
        let data = format!("\"{}\"", "x".repeat(38));
        c.emit("k", &data).unwrap();
        c.emit("k", &data).unwrap();
        let refused = c.emit("k", &data).unwrap_err();
        assert!(refused.contains("123 bytes"), "{refused}");
        assert_eq!(c.limit_hit().unwrap().kind, FailureKind::EmitLimit);
        assert_eq!(c.take_effects().emitted.len(), 2);
    }

    #[test]
    fn kv_writes_past_the_stores_total_are_refused() {
        // The store holds "a"="1" and "bb"="22" (6 bytes, 2 keys).
        let limits = Limits {
            max_kv_total_bytes: 10,
            max_kv_keys: 3,
            ..Limits::default()
        };
        let c = limited(limits, &[("a", "1"), ("bb", "22")]);
        // Replacing a value counts only the difference: 6 - 2 + 5 = 9.
        c.kv_set("a", "1234").unwrap();
        let refused = c.kv_set("c", "12").unwrap_err();
        assert!(refused.contains("12 bytes"), "{refused}");
        assert_eq!(c.limit_hit().unwrap().kind, FailureKind::KvLimit);
        // Deleting makes room again.
        assert!(c.kv_delete("bb"));
        c.kv_set("c", "12").unwrap();
        c.kv_set("d", "").unwrap();
        let refused = c.kv_set("e", "").unwrap_err();
        assert!(refused.contains("4 keys"), "{refused}");

        // A call that deleted before its first write is counted right too.
        let c = limited(limits, &[("a", "12345"), ("bb", "22")]);
        assert!(c.kv_delete("a"));
        c.kv_set("c", "12345").unwrap();
        assert_eq!(c.limit_hit(), None);
    }

    #[test]
    fn written_bytes_past_the_limit_end_the_call() {
        let c = limited(
            Limits {
                max_write_bytes: 100,
                ..Limits::default()
            },
            &[],
        );
        c.count_write(60).unwrap();
        let failure = c.count_write(41).unwrap_err();
        assert_eq!(failure.kind, FailureKind::WriteLimit);
        assert!(failure.message.contains("101 bytes"), "{failure}");
        assert_eq!(c.limit_hit(), Some(failure));
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
