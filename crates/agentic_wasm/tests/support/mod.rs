//! Helpers shared by the sandbox tests: building the plugins once, a home
//! with a SQLite store and a plugin manager, manifests written on the fly,
//! WAT made into plugin components, reading the log back, and local
//! listeners that count the connections they see.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use agentic_core::plugin::{
    CallFailure, CallOptions, FailureKind, PluginError, PluginManager, PluginRecord,
};
use agentic_core::{Durability, EventStore, SystemEvent};
use agentic_store::{SqliteOptions, SqliteStore};
use agentic_wasm::WasmSandbox;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds every plugin once per test binary (`scripts/build-plugins`);
/// returns `plugins/dist`.
pub fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let status = std::process::Command::new(repo().join("scripts/build-plugins"))
            .status()
            .expect("run scripts/build-plugins");
        assert!(status.success(), "building the plugins failed");
        repo().join("plugins/dist")
    })
}

/// The manifest of example plugin `name`, as built.
pub fn manifest(name: &str) -> PathBuf {
    dist().join(name).join("plugin.toml")
}

/// The built component of plugin `name`.
pub fn component(name: &str) -> PathBuf {
    dist().join(name).join(format!("{name}.wasm"))
}

/// SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(path).expect("read component"),
    ))
}

/// A home with a store and a plugin manager.
pub struct Home {
    /// The temporary home directory.
    pub dir: tempfile::TempDir,
    /// Its store.
    pub store: Arc<SqliteStore>,
    /// The manager, as one `lion` process would have it.
    pub manager: PluginManager,
}

impl Home {
    /// A fresh home.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp home");
        let (store, manager) = open(dir.path(), Durability::Durable);
        Self {
            dir,
            store,
            manager,
        }
    }

    /// Another "process" on the same home: a new store and manager.
    pub fn reopen(&self) -> (Arc<SqliteStore>, PluginManager) {
        open(self.dir.path(), Durability::Durable)
    }

    /// Installs the plugin `manifest` describes with `grants` (`--grant` values).
    pub async fn install(
        &self,
        manifest: &Path,
        grants: &[&str],
    ) -> Result<PluginRecord, PluginError> {
        let m = PluginManager::read_manifest(manifest)?;
        let grants: Vec<String> = grants.iter().map(|g| (*g).to_owned()).collect();
        let grant = m.grant_from(&grants)?;
        self.manager.install(m, grant).await
    }

    /// Calls a function with JSON input.
    pub async fn call(
        &self,
        plugin: &str,
        function: &str,
        input: Value,
    ) -> Result<Value, PluginError> {
        self.manager
            .call(plugin, function, &input.to_string(), CallOptions::default())
            .await
    }

    /// Every event of the log, decoded.
    pub async fn events(&self) -> Vec<SystemEvent> {
        self.manager.flush().await.expect("flush");
        self.store
            .read_from(1, usize::MAX)
            .await
            .expect("read log")
            .iter()
            .map(|e| e.decode().expect("decode"))
            .collect()
    }

    /// The `plugin_failed` failure of the last failed call.
    pub async fn last_failure(&self) -> CallFailure {
        self.events()
            .await
            .into_iter()
            .rev()
            .find_map(|e| match e {
                SystemEvent::PluginFailed { failure, .. } => Some(failure),
                _ => None,
            })
            .expect("a plugin_failed event")
    }

    /// Every `plugin_permission_denied` event's (asked, reason).
    pub async fn denials(&self) -> Vec<(String, String)> {
        self.events()
            .await
            .into_iter()
            .filter_map(|e| match e {
                SystemEvent::PluginPermissionDenied { asked, reason, .. } => Some((asked, reason)),
                _ => None,
            })
            .collect()
    }
}

/// Opens a store on `home` and a manager with the wasmtime sandbox.
pub fn open(home: &Path, durability: Durability) -> (Arc<SqliteStore>, PluginManager) {
    let store = Arc::new(SqliteStore::open(home, SqliteOptions::default()).expect("open store"));
    let sandbox = WasmSandbox::new().expect("sandbox");
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let manager = PluginManager::new(
        dyn_store,
        Arc::new(sandbox),
        home.join("plugins"),
        Uuid::now_v7(),
        durability,
    );
    (store, manager)
}

/// The failure inside a plugin error (panics on any other error).
pub fn failure(e: PluginError) -> CallFailure {
    match e {
        PluginError::Call { failure, .. } => failure,
        other => panic!("expected a failed call, got: {other}"),
    }
}

/// Asserts a call failed with `kind`; returns the failure.
pub fn expect_kind(result: Result<Value, PluginError>, kind: FailureKind) -> CallFailure {
    match result {
        Ok(v) => panic!("expected {kind}, the call succeeded with {v}"),
        Err(e) => {
            let f = failure(e);
            assert_eq!(f.kind, kind, "{f}");
            f
        }
    }
}

/// The functions of the abuse plugin, each with permissive schemas.
pub const ABUSE_FUNCTIONS: &[&str] = &[
    "spin",
    "grow",
    "recurse",
    "output",
    "log_flood",
    "trap",
    "panic",
    "read_file",
    "write_file",
    "list_dir",
    "tcp_connect",
    "udp_send",
    "dns",
    "http_get",
    "http_fetch",
    "kv_set",
    "kv_get",
    "emit",
    "env",
    "counter",
    "echo",
    "emit_flood",
    "kv_fill",
    "open_files",
    "write_bytes",
    "stdout_flood",
    "exit",
];

/// A home with `hello_world` and the abuse plugin installed; the abuse
/// manifest asks for every interface plus `permissions`, under `limits`,
/// and gets `grants`.
pub async fn abuse_home(
    permissions: &str,
    limits: &str,
    grants: &[&str],
) -> (Home, tempfile::TempDir) {
    let home = Home::new();
    home.install(&manifest("hello_world"), &["interface:log"])
        .await
        .expect("install hello_world");
    let scratch = tempfile::tempdir().expect("scratch");
    let m = abuse_manifest(scratch.path(), permissions, limits);
    home.install(&m, grants).await.expect("install abuse");
    (home, scratch)
}

/// Runs an abuse call beside a `hello_world` greeting, which must succeed.
pub async fn beside_hello(home: &Home, function: &str, input: Value) -> Result<Value, PluginError> {
    let (abuse, hello) = tokio::join!(
        home.call("abuse", function, input),
        home.call("hello_world", "greet", serde_json::json!({"name": "Ada"}))
    );
    assert_eq!(
        hello.expect("the bystander call"),
        serde_json::json!({"greeting": "Hello, Ada!"})
    );
    abuse
}

/// Asserts the failure the log recorded for the last failed call.
pub async fn logged(home: &Home, expected: &CallFailure) {
    assert_eq!(&home.last_failure().await, expected);
}

/// Writes a manifest for the abuse plugin into `dir`: it asks for every
/// host interface, plus the `[permissions]` lines given (hosts, env,
/// dirs), with the given `[limits]` body; returns its path.
pub fn abuse_manifest(dir: &Path, permissions: &str, limits: &str) -> PathBuf {
    let wasm = component("abuse");
    let permissions =
        format!("interfaces = [\"log\", \"kv\", \"events\", \"http\"]\n{permissions}");
    write_manifest(dir, "abuse", &wasm, &permissions, limits, ABUSE_FUNCTIONS)
}

/// Writes a manifest for `component` named `name` with functions taking
/// and returning anything.
pub fn write_manifest(
    dir: &Path,
    name: &str,
    component: &Path,
    permissions: &str,
    limits: &str,
    functions: &[&str],
) -> PathBuf {
    let mut text = format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\ndescription = \"test plugin\"\n\n\
         [component]\npath = {path:?}\nsha256 = \"{sha}\"\n\n[permissions]\n{permissions}\n\n\
         [limits]\n{limits}\n",
        path = component.display().to_string(),
        sha = sha256_file(component),
    );
    for f in functions {
        text.push_str(&format!(
            "\n[functions.{f}]\ninput_schema = true\noutput_schema = true\n"
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// The plugin WIT, for making components out of WAT.
const WIT: &str = include_str!("../../../../wit/plugin.wit");

/// Makes a plugin component out of a core module in WAT (which must export
/// `memory`, `cabi_realloc`, `describe` and `invoke` per the canonical ABI).
pub fn wat_component(wat: &str) -> Vec<u8> {
    let mut core = wat::parse_str(wat).expect("parse WAT");
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("plugin.wit", WIT).expect("parse WIT");
    let world = resolve
        .select_world(&[package], Some("plugin"))
        .expect("the plugin world");
    wit_component::embed_component_metadata(
        &mut core,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("embed metadata");
    wit_component::ComponentEncoder::default()
        .module(&core)
        .expect("core module")
        .validate(true)
        .encode()
        .expect("encode component")
}

/// A non-blocking TCP listener on 127.0.0.1, bound without a runtime (a
/// test may bind before it starts any thread).
pub fn bind() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    listener
}

/// A TCP listener on 127.0.0.1 that counts connections and answers each
/// with a small HTTP response (or never answers, when `silent`).
pub struct Listener {
    /// Its address.
    pub addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Listener {
    /// Starts a listener.
    pub async fn start(silent: bool) -> Self {
        Self::serve(bind(), silent)
    }

    /// Serves on `listener` (from [`bind`]); within a tokio runtime.
    pub fn serve(listener: std::net::TcpListener, silent: bool) -> Self {
        let listener = tokio::net::TcpListener::from_std(listener).expect("into tokio");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    if silent {
                        // Hold the connection open without answering.
                        let _ = socket.read(&mut buf).await;
                        return;
                    }
                    let body = "hello from the test server";
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Self { addr, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
