//! The example plugin, built for wasm32-wasip2 and run in the sandbox.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use agentic_wasm::{CallLimits, SandboxError, WasmSandbox};

/// Builds the plugins workspace once per test run; returns hello_world.wasm.
fn hello_world() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--manifest-path")
            .arg(plugins.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(plugins.join("target"))
            .status()
            .expect("run cargo to build the plugins");
        assert!(status.success(), "building the plugins failed");
        let wasm: PathBuf = plugins.join("target/wasm32-wasip2/release/hello_world.wasm");
        std::fs::read(&wasm).expect("read hello_world.wasm")
    })
}

const LIMITS: CallLimits = CallLimits {
    memory_bytes: 16 << 20,
    timeout: Duration::from_secs(5),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_greets_ada() {
    let sandbox = WasmSandbox::new().expect("sandbox");
    let plugin = sandbox.load(hello_world()).expect("load");
    let out = plugin
        .invoke("greet", r#"{"name":"Ada"}"#, LIMITS)
        .await
        .expect("greet");
    assert_eq!(out.output, r#"{"greeting":"Hello, Ada!"}"#);
    assert_eq!(out.logs, vec![(2, "greeting Ada".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_own_errors_come_back_as_refusals() {
    let sandbox = WasmSandbox::new().expect("sandbox");
    let plugin = sandbox.load(hello_world()).expect("load");
    let err = plugin.invoke("nope", "{}", LIMITS).await.unwrap_err();
    assert_eq!(
        err,
        SandboxError::Refused("unknown function \"nope\"".into())
    );
    let err = plugin.invoke("greet", "{}", LIMITS).await.unwrap_err();
    assert!(matches!(err, SandboxError::Refused(m) if m.contains("needs")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_share_no_state() {
    let sandbox = WasmSandbox::new().expect("sandbox");
    let plugin = std::sync::Arc::new(sandbox.load(hello_world()).expect("load"));
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let plugin = plugin.clone();
            tokio::spawn(async move {
                let input = format!(r#"{{"name":"n{i}"}}"#);
                plugin.invoke("greet", &input, LIMITS).await
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let out = call.await.expect("join").expect("greet");
        assert_eq!(out.output, format!(r#"{{"greeting":"Hello, n{i}!"}}"#));
        assert_eq!(out.logs.len(), 1, "logs leaked between calls");
    }
}

#[test]
fn garbage_is_not_a_component() {
    let sandbox = WasmSandbox::new().expect("sandbox");
    assert!(matches!(
        sandbox.load(b"not wasm at all"),
        Err(SandboxError::InvalidComponent(_))
    ));
}
