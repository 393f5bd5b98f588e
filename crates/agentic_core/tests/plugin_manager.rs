//! The plugin manager's own rules, with a test sandbox whose calls and
//! loads wait at gates the test opens (the wasmtime sandbox's behaviour is
//! tested in `agentic_wasm`): a call that outlives its install writes
//! nothing into the next install, loading one plugin holds up no call to
//! another, and a call dropped before it ends is recorded as cancelled.
//! Each runs on the in-memory and the SQLite store.

#[path = "support/delegate.rs"]
#[macro_use]
mod delegate;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use agentic_core::plugin::{
    CallContext, CallFailure, CallOptions, Compiled, ComponentRef, FailureKind, FunctionSpec,
    Grant, HostInterface, LoadedPlugin, Permissions, PluginManager, PluginManifest, Sandbox,
    SandboxError, VerifiedArtifact,
};
use agentic_core::{Durability, EventStore, State, SystemEvent};
use agentic_store::{MemoryStore, SqliteOptions, SqliteStore};
use async_trait::async_trait;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

/// Gates a test opens: a call of `wait` or a load of a gated component
/// stops there until the test adds a permit.
#[derive(Default)]
struct Gates {
    calls: HashMap<String, Arc<Semaphore>>,
    loads: HashMap<Vec<u8>, Arc<std::sync::Barrier>>,
}

/// A sandbox whose "components" are their own names as bytes. Function
/// `write` sets kv key `k` to its input's `v`; `wait` does the same, then
/// waits at the gate of the call's plugin (saying so on `reached`).
struct TestSandbox {
    gates: Arc<Mutex<Gates>>,
    reached: mpsc::UnboundedSender<String>,
}

struct TestPlugin {
    name: String,
    gates: Arc<Mutex<Gates>>,
    reached: mpsc::UnboundedSender<String>,
}

impl Sandbox for TestSandbox {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn artifact_key(&self) -> &str {
        "test-1"
    }

    fn compile(&self, component: &[u8]) -> Result<Compiled, SandboxError> {
        Ok(Compiled {
            artifact: component.to_vec(),
            imports: vec![HostInterface::Kv],
        })
    }

    fn load(&self, artifact: &VerifiedArtifact) -> Result<Arc<dyn LoadedPlugin>, SandboxError> {
        let gate = self
            .gates
            .lock()
            .unwrap()
            .loads
            .get(artifact.bytes())
            .cloned();
        if let Some(gate) = gate {
            // Blocking, as a real compile is: the test's own thread lifts it.
            let _ = self.reached.send(format!(
                "load {}",
                String::from_utf8_lossy(artifact.bytes())
            ));
            gate.wait();
        }
        Ok(Arc::new(TestPlugin {
            name: String::from_utf8_lossy(artifact.bytes()).into_owned(),
            gates: self.gates.clone(),
            reached: self.reached.clone(),
        }))
    }
}

#[async_trait]
impl LoadedPlugin for TestPlugin {
    async fn call(
        &self,
        function: &str,
        input: &str,
        ctx: Arc<CallContext>,
    ) -> Result<String, CallFailure> {
        if function == "read" {
            return Ok(json!({"k": ctx.kv_get("k")}).to_string());
        }
        let input: serde_json::Value = serde_json::from_str(input).expect("input");
        let value = input["v"].as_str().unwrap_or("x");
        ctx.kv_set("k", value)
            .map_err(|e| CallFailure::new(FailureKind::Refused, e))?;
        if function == "wait" {
            let gate = self.gates.lock().unwrap().calls.get(&self.name).cloned();
            let _ = self.reached.send(format!("call {}", self.name));
            if let Some(gate) = gate {
                gate.acquire().await.expect("gate").forget();
            }
        }
        Ok("{}".into())
    }
}

struct Setup {
    store: Arc<dyn EventStore>,
    manager: PluginManager,
    gates: Arc<Mutex<Gates>>,
    reached: mpsc::UnboundedReceiver<String>,
    dir: tempfile::TempDir,
}

fn setup(store: Arc<dyn EventStore>, dir: tempfile::TempDir) -> Setup {
    let gates = Arc::new(Mutex::new(Gates::default()));
    let (tx, reached) = mpsc::unbounded_channel();
    let sandbox = TestSandbox {
        gates: gates.clone(),
        reached: tx,
    };
    let manager = PluginManager::new(
        store.clone(),
        Arc::new(sandbox),
        dir.path().join("plugins"),
        Uuid::now_v7(),
        Durability::Durable,
    );
    Setup {
        store,
        manager,
        gates,
        reached,
        dir,
    }
}

/// Both stores, each in a fresh directory.
fn stores() -> Vec<(&'static str, Arc<dyn EventStore>, tempfile::TempDir)> {
    let memory = tempfile::tempdir().expect("tempdir");
    let sqlite = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(sqlite.path(), SqliteOptions::default()).expect("open");
    vec![
        ("memory", Arc::new(MemoryStore::new()), memory),
        ("sqlite", Arc::new(store), sqlite),
    ]
}

/// A manifest of plugin `name` whose component file (in `dir`) holds the
/// name.
fn manifest(dir: &Path, name: &str) -> PluginManifest {
    let path = dir.join(format!("{name}.component"));
    std::fs::write(&path, name).expect("write component");
    let schema = json!({"type": "object"});
    let function = FunctionSpec {
        description: String::new(),
        input_schema: schema.clone(),
        output_schema: schema,
        tool: None,
    };
    PluginManifest {
        name: name.to_owned(),
        version: "1".into(),
        description: "test".into(),
        component: Some(ComponentRef {
            path,
            sha256: hex::encode(Sha256::digest(name.as_bytes())),
        }),
        server: None,
        permissions: Permissions {
            interfaces: vec![HostInterface::Kv],
            ..Permissions::default()
        },
        limits: Default::default(),
        functions: BTreeMap::from([
            ("write".into(), function.clone()),
            ("read".into(), function.clone()),
            ("wait".into(), function),
        ]),
        folder: None,
    }
}

fn kv_grant() -> Grant {
    Grant {
        interfaces: vec![HostInterface::Kv],
        ..Grant::default()
    }
}

/// The state the log folds to, checked against the store's projections.
async fn folded(store: &Arc<dyn EventStore>) -> State {
    let mut state = State::new();
    for record in store.read_from(1, usize::MAX).await.expect("read") {
        state
            .apply(&record.decode().expect("decode"))
            .expect("apply");
    }
    let projected = store.projected_state().await.expect("projections");
    assert!(
        state.diff(&projected).is_empty(),
        "{:?}",
        state.diff(&projected)
    );
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_outlives_its_install_writes_nothing_into_the_next_install() {
    for (kind, store, dir) in stores() {
        let mut s = setup(store, dir);
        let m = manifest(s.dir.path(), "p");
        s.manager
            .install(m.clone(), kv_grant())
            .await
            .expect("install");
        s.gates
            .lock()
            .unwrap()
            .calls
            .insert("p".into(), Arc::new(Semaphore::new(0)));
        let manager = s.manager.clone();
        let call = tokio::spawn(async move {
            manager
                .call("p", "wait", r#"{"v":"old"}"#, CallOptions::default())
                .await
        });
        assert_eq!(s.reached.recv().await.as_deref(), Some("call p"));

        // Removed and installed again while the call runs.
        let other = PluginManager::new(
            s.store.clone(),
            Arc::new(TestSandbox {
                gates: Arc::new(Mutex::new(Gates::default())),
                reached: mpsc::unbounded_channel().0,
            }),
            s.dir.path().join("plugins"),
            Uuid::now_v7(),
            Durability::Durable,
        );
        other.remove("p").await.expect("remove");
        other
            .install(m.clone(), kv_grant())
            .await
            .expect("reinstall");

        let gate = s.gates.lock().unwrap().calls["p"].clone();
        gate.add_permits(1);
        call.await.expect("join").expect("the old call succeeds");

        // Its write is in the log, but not in the new install's data.
        let state = folded(&s.store).await;
        assert_eq!(state.plugin_kv("p"), None, "{kind}");
        let writes = s
            .store
            .read_from(1, usize::MAX)
            .await
            .expect("read")
            .iter()
            .filter(|r| matches!(r.decode(), Ok(SystemEvent::PluginKvSet { .. })))
            .count();
        assert_eq!(writes, 1, "{kind}");

        // The new install's own calls write as usual.
        other
            .call("p", "write", r#"{"v":"new"}"#, CallOptions::default())
            .await
            .expect("call");
        let state = folded(&s.store).await;
        assert_eq!(
            state
                .plugin_kv("p")
                .and_then(|kv| kv.get("k"))
                .map(String::as_str),
            Some("new"),
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_one_plugin_holds_up_no_call_to_another() {
    for (kind, store, dir) in stores() {
        let mut s = setup(store, dir);
        for name in ["slow", "quick"] {
            let m = manifest(s.dir.path(), name);
            s.manager.install(m, kv_grant()).await.expect("install");
        }
        // Drop what install loaded, so both load again: "slow" at a gate.
        s.manager.unload("slow").await;
        let gate = Arc::new(std::sync::Barrier::new(2));
        s.gates
            .lock()
            .unwrap()
            .loads
            .insert(b"slow".to_vec(), gate.clone());
        let manager = s.manager.clone();
        let slow = tokio::spawn(async move {
            manager
                .call("slow", "write", r#"{"v":"1"}"#, CallOptions::default())
                .await
        });
        assert_eq!(s.reached.recv().await.as_deref(), Some("load slow"));

        // While "slow" is loading, "quick" loads and answers.
        s.manager
            .call("quick", "write", r#"{"v":"1"}"#, CallOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));

        tokio::task::spawn_blocking(move || gate.wait())
            .await
            .expect("lift the gate");
        slow.await.expect("join").expect("the slow call succeeds");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_before_it_ends_is_recorded_as_cancelled() {
    for (kind, store, dir) in stores() {
        let mut s = setup(store, dir);
        s.manager
            .install(manifest(s.dir.path(), "p"), kv_grant())
            .await
            .expect("install");
        s.gates
            .lock()
            .unwrap()
            .calls
            .insert("p".into(), Arc::new(Semaphore::new(0)));
        let manager = s.manager.clone();
        let call = tokio::spawn(async move {
            manager
                .call("p", "wait", r#"{"v":"never"}"#, CallOptions::default())
                .await
        });
        assert_eq!(s.reached.recv().await.as_deref(), Some("call p"));
        call.abort();
        assert!(call.await.expect_err("aborted").is_cancelled());
        s.manager.flush().await.expect("flush");

        let events: Vec<SystemEvent> = s
            .store
            .read_from(1, usize::MAX)
            .await
            .expect("read")
            .iter()
            .map(|r| r.decode().expect("decode"))
            .collect();
        let invoked = events
            .iter()
            .find_map(|e| match e {
                SystemEvent::PluginInvoked { call_id, .. } => Some(*call_id),
                _ => None,
            })
            .expect("invoked");
        let failure = events
            .iter()
            .find_map(|e| match e {
                SystemEvent::PluginFailed {
                    call_id, failure, ..
                } if *call_id == invoked => Some(failure.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{kind}: no outcome for the dropped call"));
        assert_eq!(failure.kind, FailureKind::Cancelled, "{kind}");
        // Nothing it wrote is kept; cancellation does not count towards
        // quarantine.
        let state = folded(&s.store).await;
        assert_eq!(state.plugin_kv("p"), None, "{kind}");
        assert_eq!(state.plugin("p").expect("p").consecutive_failures, 0);
    }
}

/// A store that, at the `armed`-th read of a plugin from now, lets
/// another "process" write the plugin's key `k` right after the read (so
/// the read misses it), hands the write's record to the test, and waits for
/// the test to say it passed it on before answering.
struct RacingStore {
    inner: Arc<dyn EventStore>,
    armed: std::sync::atomic::AtomicU32,
    install_id: Mutex<Option<Uuid>>,
    written: mpsc::UnboundedSender<agentic_core::EventEnvelope>,
    observed: Arc<tokio::sync::Notify>,
}

event_store_wrapper!(RacingStore {

    async fn append(
        &self,
        events: Vec<agentic_core::NewEvent>,
        expected: agentic_core::ExpectedVersion,
    ) -> Result<agentic_core::AppendReceipt, agentic_core::StoreError> {
        self.inner.append(events, expected).await
    }

    async fn read_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<agentic_core::EventEnvelope>, agentic_core::StoreError> {
        self.inner.read_from(from, limit).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<agentic_core::EventEnvelope>, agentic_core::StoreError> {
        self.inner.read_stream(stream, from, limit).await
    }

    async fn head(&self) -> Result<agentic_core::ChainHead, agentic_core::StoreError> {
        self.inner.head().await
    }

    async fn wait_for_events(&self, seq: u64) -> Result<(), agentic_core::StoreError> {
        self.inner.wait_for_events(seq).await
    }

    async fn projected_state(&self) -> Result<State, agentic_core::StoreError> {
        self.inner.projected_state().await
    }

    async fn plugin(
        &self,
        name: &str,
    ) -> Result<Option<agentic_core::PluginSnapshot>, agentic_core::StoreError> {
        let read = self.inner.plugin(name).await?;
        let countdown = self.armed.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |n| n.checked_sub(1),
        );
        if countdown == Ok(1) {
            let write = SystemEvent::PluginKvSet {
                name: name.to_owned(),
                key: "k".into(),
                value: Some("theirs".into()),
                install_id: *self.install_id.lock().unwrap(),
            };
            let receipt = self
                .inner
                .append(
                    vec![agentic_core::NewEvent::new(write, Uuid::now_v7())],
                    agentic_core::ExpectedVersion::Any,
                )
                .await?;
            let record = self.inner.read_from(receipt.last_seq, 1).await?.remove(0);
            let _ = self.written.send(record);
            self.observed.notified().await;
        }
        Ok(read)
    }

    fn subscribe(self: Arc<Self>, from: u64) -> agentic_core::Subscription {
        agentic_core::Subscription::new(self, from)
    }
});

/// Regression (issue 14 review): a kernel dropped the key-value writes the
/// log showed while a plugin was loading, so a write another process
/// committed just after the load's read was lost to the loaded plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_seen_in_the_log_while_the_plugin_loads_reaches_it() {
    for (kind, inner, dir) in stores() {
        let (written_tx, mut written) = mpsc::unbounded_channel();
        let observed = Arc::new(tokio::sync::Notify::new());
        let store = Arc::new(RacingStore {
            inner,
            armed: 0.into(),
            install_id: Mutex::new(None),
            written: written_tx,
            observed: observed.clone(),
        });
        let s = setup(store.clone(), dir);
        let record = s
            .manager
            .install(manifest(s.dir.path(), "p"), kv_grant())
            .await
            .expect("install");
        *store.install_id.lock().unwrap() = record.installed.install_id;
        s.manager.follow_log();
        // The load reads the plugin twice (its record, then, after the
        // compile, its data): the race is at the second.
        store.armed.store(2, std::sync::atomic::Ordering::Release);
        let manager = s.manager.clone();
        let first = tokio::spawn(async move {
            manager
                .call("p", "read", "{}", CallOptions::default())
                .await
        });
        // The other process's write, passed on as the kernel would, while
        // the plugin is still loading (the store holds its answer back).
        let record = written.recv().await.expect("the racing write");
        let event = record.decode().expect("decode");
        s.manager.observe(&record, &event).await;
        observed.notify_one();
        first.await.expect("join").expect("the first call");
        let kv = s
            .manager
            .call("p", "read", "{}", CallOptions::default())
            .await
            .expect("read");
        assert_eq!(kv["k"], "theirs", "{kind}");
    }
}
