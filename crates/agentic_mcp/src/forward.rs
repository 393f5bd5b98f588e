//! Network grants of a server plugin: a `host:HOST:PORT` grant makes
//! exactly that reachable from the server's otherwise empty network
//! namespace, and nothing else.
//!
//! How (see also `agentic_jail`'s "Forwarding" section):
//!
//! 1. [`NetworkPlan`]: per granted host, a loopback address inside the
//!    jail — a granted loopback address keeps its own (`127.0.0.1:PORT`),
//!    each granted name gets one of its own (`127.0.0.2`, `127.0.0.3`…) —
//!    and a listener there on the granted port, made by the jail inside the
//!    namespace and handed to lion. A hosts file maps each name to its
//!    address (and `localhost` to `127.0.0.1`), mounted over `/etc/hosts`
//!    with an `nsswitch.conf` saying `hosts: files`: no resolver is asked,
//!    none is reachable, and `/etc/resolv.conf` is not readable.
//! 2. [`Forwarding`]: lion accepts on each listener for the life of the
//!    running server; for each connection it resolves the name itself,
//!    keeps the addresses the WASM sandbox's HTTP rule allows
//!    ([`reachable_addresses`]: global, or the address itself granted — a
//!    name resolving to `127.0.0.1` is refused unless that address is
//!    granted too; one resolving to a private or link-local address such
//!    as `169.254.169.254` is always refused, as a server cannot be granted
//!    it), connects from its own namespace to a
//!    checked address (not the name again), and copies bytes both ways.
//!    A refused or failed forward resets the server's connection and is
//!    reported to the launch's [`ServerDenials`] (the manager records it as
//!    `plugin_permission_denied`, with the call's id when exactly one call
//!    was under way).
//!
//! What lion does not see: a connection to a port or address that has no
//! listener is refused inside the namespace (Landlock allows TCP connect to
//! the listeners' ports only; nothing else is up), UDP and DNS reach
//! nothing, and none of that reaches lion to be recorded.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentic_core::plugin::{Grant, SandboxError, ServerDenials, ServerHost, reachable_addresses};
use agentic_jail::JailSpec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

/// Forwarded connections one server may have open at once, all its hosts
/// together; one more is refused (reset, and recorded).
pub const MAX_CONNECTIONS: usize = 32;
/// Refusals recorded per start of a server: a server refused in a loop
/// must not flood the log. The last one recorded says so.
pub const MAX_RECORDED_DENIALS: usize = 64;
/// How long lion waits for a granted name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Name lookups one server's connections may have under way at once: each
/// runs on a blocking thread that a timeout does not stop, so a server
/// looping connections to a slowly resolving name cannot pile them up.
const MAX_LOOKUPS: usize = 4;
/// How long lion waits for each address it connects to.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first address a granted name may get inside the jail
/// (`127.0.0.1` is `localhost`).
const FIRST_NAME_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// One granted host and where the server reaches it inside its jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The granted host.
    pub host: ServerHost,
    /// The address and port of lion's listener inside the jail.
    pub inside: SocketAddrV4,
}

/// The network of a server: its granted hosts, each with its listener's
/// address inside the jail, and the hosts file naming them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkPlan {
    forwards: Vec<Forward>,
}

impl NetworkPlan {
    /// The plan for `grant`'s hosts (each checked as a server's host grant:
    /// a name or a loopback address, with a port); a repeated grant counts
    /// once.
    pub fn of(grant: &Grant) -> Result<Self, SandboxError> {
        let mut hosts: Vec<ServerHost> = Vec::new();
        for h in &grant.hosts {
            let host = ServerHost::parse(h).map_err(SandboxError::Host)?;
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        let taken: Vec<Ipv4Addr> = hosts
            .iter()
            .filter_map(|h| match h {
                ServerHost::Loopback { ip, .. } => Some(*ip),
                ServerHost::Name { .. } => None,
            })
            .collect();
        let mut names: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        let mut next = u32::from(FIRST_NAME_ADDRESS);
        let mut forwards = Vec::with_capacity(hosts.len());
        for host in hosts {
            let ip = match &host {
                ServerHost::Loopback { ip, .. } => *ip,
                ServerHost::Name { name, .. } => match names.get(name) {
                    Some(ip) => *ip,
                    None => {
                        let ip = loop {
                            let ip = Ipv4Addr::from(next);
                            next += 1;
                            if !taken.contains(&ip) {
                                break ip;
                            }
                        };
                        names.insert(name.clone(), ip);
                        ip
                    }
                },
            };
            forwards.push(Forward {
                inside: SocketAddrV4::new(ip, host.port()),
                host,
            });
        }
        Ok(Self { forwards })
    }

    /// The granted hosts, each with where it is reached inside the jail.
    pub fn forwards(&self) -> &[Forward] {
        &self.forwards
    }

    /// True when no host is granted: the namespace stays without any
    /// interface up, and nothing is mounted over `/etc`.
    pub fn is_empty(&self) -> bool {
        self.forwards.is_empty()
    }

    /// The hosts file the server sees: `localhost` at `127.0.0.1` (unless
    /// `localhost` is itself a granted name), then each granted name at its
    /// address.
    pub fn hosts_file(&self) -> String {
        let mut names: Vec<(Ipv4Addr, &str)> = Vec::new();
        for f in &self.forwards {
            if let ServerHost::Name { name, .. } = &f.host
                && !names.iter().any(|(_, n)| n == name)
            {
                names.push((*f.inside.ip(), name));
            }
        }
        let mut file = String::new();
        if !names.iter().any(|(_, n)| *n == "localhost") {
            file.push_str("127.0.0.1 localhost\n");
        }
        for (ip, name) in names {
            file.push_str(&format!("{ip} {name}\n"));
        }
        file
    }

    /// Adds the plan to `spec`: a listener per granted host, and (when any
    /// host is granted) the hosts file and an `nsswitch.conf` of
    /// `hosts: files`, written into `dir` and mounted over `/etc`.
    pub fn apply(&self, spec: &mut JailSpec, dir: &Path) -> Result<(), SandboxError> {
        if self.is_empty() {
            return Ok(());
        }
        let io =
            |path: &Path, e: std::io::Error| SandboxError::Host(format!("{}: {e}", path.display()));
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut mounts: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (name, text, required) in [
            ("hosts", self.hosts_file(), true),
            // Without it glibc's default asks DNS first; with it, only the
            // hosts file. (A system without the file has no NSS to steer.)
            ("nsswitch.conf", "hosts: files\n".to_owned(), false),
        ] {
            let target = Path::new("/etc").join(name);
            if !target.exists() {
                if required {
                    return Err(SandboxError::Host(format!(
                        "cannot grant hosts to a server: {} does not exist to mount the jail's \
                         over",
                        target.display()
                    )));
                }
                continue;
            }
            let file = dir.join(name);
            std::fs::write(&file, text).map_err(|e| io(&file, e))?;
            mounts.push((file, target));
        }
        spec.listeners = self.forwards.iter().map(|f| f.inside).collect();
        spec.file_mounts = mounts;
        Ok(())
    }
}

/// The calls under way on a server, by id: a refusal lion makes while
/// exactly one runs is recorded with that call's id.
#[derive(Debug, Clone, Default)]
pub struct CallIds(Arc<Mutex<Vec<Uuid>>>);

impl CallIds {
    /// Counts call `id` as under way until the returned guard is dropped.
    pub fn enter(&self, id: Uuid) -> CallGuard {
        self.lock().push(id);
        CallGuard {
            calls: self.clone(),
            id,
        }
    }

    /// The call under way when there is exactly one.
    pub fn only(&self) -> Option<Uuid> {
        match self.lock().as_slice() {
            [id] => Some(*id),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Uuid>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One call counted in [`CallIds`] until dropped.
#[derive(Debug)]
pub struct CallGuard {
    calls: CallIds,
    id: Uuid,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut calls = self.calls.lock();
        if let Some(i) = calls.iter().position(|c| *c == self.id) {
            calls.remove(i);
        }
    }
}

/// Lion's side of a running server's network: a task accepting on each
/// listener, and under it the connections being forwarded. Dropped or
/// [`stopped`](Self::stop), every one of them ends (and the listeners
/// close).
#[derive(Debug, Default)]
pub struct Forwarding {
    tasks: Mutex<JoinSet<()>>,
}

/// What every forwarding task of one server shares.
struct Shared {
    grant: Grant,
    denials: Arc<dyn ServerDenials>,
    calls: CallIds,
    slots: Arc<Semaphore>,
    lookups: Arc<Semaphore>,
    recorded: AtomicUsize,
}

impl Shared {
    /// Reports a refusal (up to [`MAX_RECORDED_DENIALS`] per start), of
    /// the connection made during call `call` (see [`CallIds::only`]).
    fn deny(&self, call: Option<Uuid>, asked: String, reason: String) {
        let n = self.recorded.fetch_add(1, Ordering::AcqRel) + 1;
        if n > MAX_RECORDED_DENIALS {
            return;
        }
        let reason = if n == MAX_RECORDED_DENIALS {
            format!(
                "{reason}; this is the {MAX_RECORDED_DENIALS}th refusal recorded since the server \
                 started: further ones are not recorded until it starts again"
            )
        } else {
            reason
        };
        tracing::info!(%asked, %reason, "a server's connection was not forwarded");
        self.denials.denied(call, asked, reason);
    }
}

impl Forwarding {
    /// Starts forwarding for a server granted `grant` (its hosts planned
    /// as `plan`), reporting refusals to `denials`: `listeners` are the
    /// jail's, in the order of `plan`'s forwards.
    pub fn start(
        grant: &Grant,
        denials: Arc<dyn ServerDenials>,
        plan: &NetworkPlan,
        listeners: Vec<std::net::TcpListener>,
        calls: CallIds,
    ) -> Result<Self, SandboxError> {
        if listeners.len() != plan.forwards.len() {
            return Err(SandboxError::Host(format!(
                "the jail made {} listeners for {} granted hosts",
                listeners.len(),
                plan.forwards.len()
            )));
        }
        let shared = Arc::new(Shared {
            grant: grant.clone(),
            denials,
            calls,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            lookups: Arc::new(Semaphore::new(MAX_LOOKUPS)),
            recorded: AtomicUsize::new(0),
        });
        let mut tasks = JoinSet::new();
        for (listener, forward) in listeners.into_iter().zip(&plan.forwards) {
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map_err(|e| SandboxError::Host(format!("lion's listener in the jail: {e}")))?;
            tasks.spawn(serve(listener, forward.host.clone(), shared.clone()));
        }
        Ok(Self {
            tasks: Mutex::new(tasks),
        })
    }

    /// Ends every forwarding task: no more accepts, every forwarded
    /// connection closed.
    pub fn stop(&self) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .abort_all();
    }
}

/// Accepts on `listener` (for granted `host`) until aborted, each
/// connection forwarded in a task that ends with this one.
async fn serve(listener: TcpListener, host: ServerHost, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // The call under way when the server connected (not when a
                // refusal is recorded, maybe seconds later).
                Ok((stream, _)) => match shared.slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (host, shared) = (host.clone(), shared.clone());
                        let call = shared.calls.only();
                        connections.spawn(async move {
                            forward(stream, &host, &shared, call).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        refuse(&stream);
                        shared.deny(
                            shared.calls.only(),
                            format!("tcp connect {host}"),
                            format!(
                                "the server already has {MAX_CONNECTIONS} forwarded connections \
                                 open (lion's limit)"
                            ),
                        );
                    }
                },
                Err(e) => {
                    // Out of descriptors, or a connection aborted before
                    // it was taken: look again shortly rather than spin.
                    tracing::warn!(error = %e, "accepting a server's connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one connection the server made to granted `host`: resolves
/// it, checks the addresses, connects to the first checked one that
/// answers and copies both ways until both sides are done. A refusal or a
/// failure resets the server's connection and is reported.
async fn forward(mut inside: TcpStream, host: &ServerHost, shared: &Shared, call: Option<Uuid>) {
    let port = host.port();
    // Recorded if the server is stopped (its forwarding aborted) before
    // this connection was made or refused.
    let mut pending = Pending {
        shared,
        call,
        asked: format!("tcp connect {host}"),
        armed: true,
    };
    let resolved: Vec<SocketAddr> = match host {
        ServerHost::Loopback { ip, port } => vec![SocketAddr::from((*ip, *port))],
        ServerHost::Name { name, port } => match resolve(shared, name, *port).await {
            Ok(addrs) => addrs,
            Err(why) => {
                pending.armed = false;
                refuse(&inside);
                shared.deny(call, format!("tcp connect {host}"), why);
                return;
            }
        },
    };
    let ips: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
    let asked = if ips.is_empty() {
        format!("tcp connect {host} (no address)")
    } else {
        format!("tcp connect {host} ({})", ips.join(", "))
    };
    pending.asked.clone_from(&asked);
    let allowed = reachable_addresses(&shared.grant, port, &resolved);
    if allowed.is_empty() {
        pending.armed = false;
        refuse(&inside);
        shared.deny(
            call,
            asked,
            "resolves to no global or granted address (a loopback, private or link-local \
             address is reached only when that address is granted too)"
                .to_owned(),
        );
        return;
    }
    let mut failures = Vec::new();
    for addr in allowed {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(mut outside)) => {
                pending.armed = false;
                if let Err(e) = tokio::io::copy_bidirectional(&mut inside, &mut outside).await {
                    tracing::debug!(error = %e, %addr, "a forwarded connection ended in error");
                }
                return;
            }
            Ok(Err(e)) => failures.push(format!("{addr}: {e}")),
            Err(_) => failures.push(format!(
                "{addr}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }
    pending.armed = false;
    refuse(&inside);
    shared.deny(
        call,
        asked,
        format!("lion could not connect: {}", failures.join("; ")),
    );
}

/// Resolves granted `name` on a blocking thread of its own, at most
/// [`MAX_LOOKUPS`] at once per server: the addresses, or why not.
async fn resolve(shared: &Shared, name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let late = || {
        format!(
            "{name} does not resolve (no answer within {} s)",
            RESOLVE_TIMEOUT.as_secs()
        )
    };
    let deadline = tokio::time::Instant::now() + RESOLVE_TIMEOUT;
    let Ok(Ok(permit)) =
        tokio::time::timeout_at(deadline, shared.lookups.clone().acquire_owned()).await
    else {
        return Err(late());
    };
    let target = format!("{name}:{port}");
    // The permit goes with the lookup: a lookup that outlives its timeout
    // still holds it until its thread is done.
    let lookup = tokio::task::spawn_blocking(move || {
        let found = std::net::ToSocketAddrs::to_socket_addrs(&target.as_str())
            .map(Iterator::collect::<Vec<SocketAddr>>);
        drop(permit);
        found
    });
    match tokio::time::timeout_at(deadline, lookup).await {
        Ok(Ok(Ok(addrs))) => Ok(addrs),
        Ok(Ok(Err(e))) => Err(format!("{name} does not resolve: {e}")),
        Ok(Err(e)) => Err(format!("{name} does not resolve: the lookup failed: {e}")),
        Err(_) => Err(late()),
    }
}

/// A connection being forwarded: until it is made or refused, its end
/// (the server stopped, its forwarding aborted) is recorded as a refusal.
struct Pending<'a> {
    shared: &'a Shared,
    call: Option<Uuid>,
    asked: String,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.deny(
                self.call,
                std::mem::take(&mut self.asked),
                "the server was stopped before lion had made the connection".to_owned(),
            );
        }
    }
}

/// Makes the server's connection end with a reset when it is dropped, so
/// the server sees an error (`ECONNRESET`), not an empty answer.
fn refuse(stream: &TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "a refused connection will close without a reset");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(hosts: &[&str]) -> Grant {
        Grant {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            ..Grant::default()
        }
    }

    fn inside(plan: &NetworkPlan) -> Vec<String> {
        plan.forwards()
            .iter()
            .map(|f| format!("{} {}", f.host, f.inside))
            .collect()
    }

    #[test]
    fn each_name_gets_an_address_of_its_own_and_loopback_keeps_its_own() {
        let plan = NetworkPlan::of(&grant(&[
            "api.example.com:443",
            "127.0.0.2:9000",
            "API.example.com:80",
            "db.test:5432",
            "127.0.0.1:8080",
            "db.test:5432",
        ]))
        .unwrap();
        assert_eq!(
            inside(&plan),
            [
                "api.example.com:443 127.0.0.3:443",
                "127.0.0.2:9000 127.0.0.2:9000",
                "api.example.com:80 127.0.0.3:80",
                "db.test:5432 127.0.0.4:5432",
                "127.0.0.1:8080 127.0.0.1:8080",
            ]
        );
        assert_eq!(
            plan.hosts_file(),
            "127.0.0.1 localhost\n127.0.0.3 api.example.com\n127.0.0.4 db.test\n"
        );
    }

    #[test]
    fn a_granted_localhost_is_a_name_like_any_other() {
        let plan = NetworkPlan::of(&grant(&["localhost:8080"])).unwrap();
        assert_eq!(inside(&plan), ["localhost:8080 127.0.0.2:8080"]);
        assert_eq!(plan.hosts_file(), "127.0.0.2 localhost\n");
    }

    #[test]
    fn a_grant_a_server_cannot_be_given_is_refused() {
        for bad in ["example.com", "10.0.0.1:80", "[::1]:80", "a b:1"] {
            assert!(NetworkPlan::of(&grant(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_host_changes_nothing_in_the_jail() {
        let plan = NetworkPlan::of(&Grant::default()).unwrap();
        assert!(plan.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let mut spec = test_spec();
        plan.apply(&mut spec, &dir.path().join("net")).unwrap();
        assert!(spec.listeners.is_empty() && spec.file_mounts.is_empty());
        assert!(!dir.path().join("net").exists());
    }

    #[test]
    fn the_plan_gives_the_jail_its_listeners_and_etc_files() {
        let plan = NetworkPlan::of(&grant(&["upstream.test:443", "127.0.0.1:80"])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut spec = test_spec();
        plan.apply(&mut spec, dir.path()).unwrap();
        assert_eq!(
            spec.listeners,
            [
                "127.0.0.2:443".parse::<SocketAddrV4>().unwrap(),
                "127.0.0.1:80".parse().unwrap()
            ]
        );
        let hosts = spec
            .file_mounts
            .iter()
            .find(|(_, target)| target == Path::new("/etc/hosts"))
            .expect("a hosts file over /etc/hosts");
        assert_eq!(
            std::fs::read_to_string(&hosts.0).unwrap(),
            "127.0.0.1 localhost\n127.0.0.2 upstream.test\n"
        );
        if Path::new("/etc/nsswitch.conf").exists() {
            let nss = spec
                .file_mounts
                .iter()
                .find(|(_, target)| target == Path::new("/etc/nsswitch.conf"))
                .expect("nsswitch.conf mounted");
            assert_eq!(std::fs::read_to_string(&nss.0).unwrap(), "hosts: files\n");
        }
    }

    #[test]
    fn the_only_call_under_way_names_a_refusal() {
        let calls = CallIds::default();
        assert_eq!(calls.only(), None);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = calls.enter(a);
        assert_eq!(calls.only(), Some(a));
        let second = calls.enter(b);
        assert_eq!(calls.only(), None);
        drop(first);
        assert_eq!(calls.only(), Some(b));
        drop(second);
        assert_eq!(calls.only(), None);
    }

    /// Refusals reported, and a wake-up for each.
    #[derive(Debug, Default)]
    struct Denials {
        seen: Mutex<Vec<(Option<Uuid>, String, String)>>,
        more: tokio::sync::Notify,
    }

    impl ServerDenials for Denials {
        fn denied(&self, call_id: Option<Uuid>, asked: String, reason: String) {
            self.seen.lock().unwrap().push((call_id, asked, reason));
            self.more.notify_one();
        }
    }

    impl Denials {
        /// Waits until `n` refusals were reported; returns them.
        async fn wait_for(&self, n: usize) -> Vec<(Option<Uuid>, String, String)> {
            loop {
                let seen = self.seen.lock().unwrap().clone();
                if seen.len() >= n {
                    return seen;
                }
                self.more.notified().await;
            }
        }
    }

    /// Stand-ins for the jail's listeners: loopback listeners of the host.
    fn listeners(n: usize) -> (Vec<std::net::TcpListener>, Vec<SocketAddr>) {
        let listeners: Vec<_> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        (listeners, addrs)
    }

    /// An upstream that echoes each connection's bytes until it half-closes,
    /// on a thread; `accepted` counts its connections.
    fn echo_upstream() -> (u16, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    /// Sends `data` through `addr`, half-closes, reads the answer to its end.
    async fn exchange(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(data).await?;
        s.shutdown().await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok(answer)
    }

    fn forwarding(
        hosts: &[&str],
        denials: &Arc<Denials>,
        calls: CallIds,
    ) -> (Forwarding, Vec<SocketAddr>) {
        let grant = grant(hosts);
        let plan = NetworkPlan::of(&grant).unwrap();
        let (ls, addrs) = listeners(plan.forwards().len());
        let f = Forwarding::start(&grant, denials.clone(), &plan, ls, calls).unwrap();
        (f, addrs)
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_forwarded_only_when_the_address_is_granted() {
        let (port, accepted) = echo_upstream();
        let denials = Arc::new(Denials::default());
        let calls = CallIds::default();
        let call = Uuid::now_v7();
        let _under_way = calls.enter(call);
        let name_only = format!("localhost:{port}");
        let (_f, addrs) = forwarding(&[&name_only], &denials, calls);
        let refused = exchange(addrs[0], b"ping").await;
        assert!(refused.as_ref().map_or(true, Vec::is_empty), "{refused:?}");
        let seen = denials.wait_for(1).await;
        assert_eq!(seen[0].0, Some(call), "named by the only call under way");
        // `localhost` may also resolve to ::1 where /etc/hosts says so.
        let asked = &seen[0].1;
        assert!(
            asked.starts_with(&format!("tcp connect localhost:{port} ("))
                && asked.contains("127.0.0.1"),
            "{asked}"
        );
        assert!(
            seen[0].2.contains("no global or granted address"),
            "{seen:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "lion never connected");

        // Control: with the address granted too, both reach the upstream.
        let address = format!("127.0.0.1:{port}");
        let (_f, addrs) = forwarding(&[&name_only, &address], &denials, CallIds::default());
        assert_eq!(exchange(addrs[0], b"by name").await.unwrap(), b"by name");
        assert_eq!(
            exchange(addrs[1], b"by address").await.unwrap(),
            b"by address"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(denials.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_granted_name_that_does_not_resolve_is_refused_and_reported() {
        let denials = Arc::new(Denials::default());
        let (_f, addrs) = forwarding(&["nothing.invalid:9"], &denials, CallIds::default());
        let refused = exchange(addrs[0], b"ping").await;
        assert!(refused.as_ref().map_or(true, Vec::is_empty), "{refused:?}");
        let seen = denials.wait_for(1).await;
        assert_eq!(seen[0].0, None, "no call was under way");
        assert_eq!(seen[0].1, "tcp connect nothing.invalid:9");
        assert!(seen[0].2.contains("does not resolve"), "{seen:?}");
    }

    #[tokio::test]
    async fn a_connection_past_the_limit_is_refused_and_stop_ends_every_forward() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (port, _) = echo_upstream();
        let denials = Arc::new(Denials::default());
        let address = format!("127.0.0.1:{port}");
        let (f, addrs) = forwarding(&[&address], &denials, CallIds::default());
        let mut open = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut s = TcpStream::connect(addrs[0]).await.unwrap();
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            open.push(s);
        }
        let over = exchange(addrs[0], b"one more").await;
        assert!(over.as_ref().map_or(true, Vec::is_empty), "{over:?}");
        let seen = denials.wait_for(1).await;
        assert!(seen[0].2.contains("forwarded connections open"), "{seen:?}");

        f.stop();
        let mut rest = Vec::new();
        let ended = open[0].read_to_end(&mut rest).await;
        assert!(ended.map_or(true, |n| n == 0), "the forward ended");
        let gone = TcpStream::connect(addrs[0]).await.unwrap_err();
        assert_eq!(gone.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn refusals_past_the_cap_are_not_recorded_and_the_last_one_says_so() {
        let denials = Arc::new(Denials::default());
        let shared = Shared {
            grant: Grant::default(),
            denials: denials.clone(),
            calls: CallIds::default(),
            slots: Arc::new(Semaphore::new(1)),
            lookups: Arc::new(Semaphore::new(1)),
            recorded: AtomicUsize::new(0),
        };
        for i in 0..MAX_RECORDED_DENIALS + 10 {
            shared.deny(None, format!("tcp connect x:{i}"), "no".into());
        }
        let seen = denials.seen.lock().unwrap();
        assert_eq!(seen.len(), MAX_RECORDED_DENIALS);
        assert!(seen.last().unwrap().2.contains("not recorded"), "{seen:?}");
    }

    fn test_spec() -> JailSpec {
        JailSpec {
            program: "/bin/true".into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: "/".into(),
            read_only: Vec::new(),
            read_write: Vec::new(),
            private_tmp: "/nonexistent".into(),
            listeners: Vec::new(),
            file_mounts: Vec::new(),
            limits: agentic_jail::JailLimits::default(),
            stdio: agentic_jail::JailStdio::Piped,
        }
    }
}
