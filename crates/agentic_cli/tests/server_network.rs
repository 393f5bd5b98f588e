//! Network grants of server plugins through the real `lion` binary: the
//! abuse test server (`abuse_server.py`), installed as a manifest-form
//! server plugin, reaches exactly the `host:HOST:PORT` it was granted —
//! through a listener lion holds in its network namespace — and nothing
//! else: not another port of the same host, not UDP, not DNS. A granted
//! name resolving to loopback needs that address granted too; a name that
//! does not resolve is refused; each refusal lion makes is a
//! `plugin_permission_denied` event. Homes live under the target directory,
//! not `/tmp`: a server's private `/tmp` hides the host's.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use support::{events, lion_run};

/// The abuse test server of the MCP adapter's tests.
const ABUSE_SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../agentic_mcp/tests/servers/abuse_server.py"
);

/// A scratch directory outside `/tmp`.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("server-network-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
}

/// The real interpreter and its prefix (`python3` on `PATH` may be a shim
/// that needs its own environment; the server runs with a cleared one).
fn python() -> (PathBuf, PathBuf) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable)); \
             print(os.path.realpath(sys.base_prefix))",
        ])
        .output()
        .expect("python3 is on PATH");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let mut lines = text.lines().map(PathBuf::from);
    (
        lines.next().expect("the interpreter"),
        lines.next().expect("its prefix"),
    )
}

/// A folder holding the abuse server and a manifest whose permissions ask
/// for `hosts`; returns the manifest's path.
fn abuse_plugin(dir: &Path, hosts: &[String]) -> PathBuf {
    let folder = dir.join("plugin");
    std::fs::create_dir_all(&folder).expect("plugin folder");
    let server = folder.join("abuse_server.py");
    std::fs::copy(ABUSE_SERVER, &server).expect("copy the abuse server");
    let (command, prefix) = python();
    let manifest = format!(
        "name = \"net\"\nversion = \"1.0.0\"\ndescription = \"the abuse server\"\n\n\
         [permissions]\nhosts = {hosts}\n\n\
         [server]\ncommand = {command}\nargs = [{server}, \"--armed\"]\nread_only = [{prefix}]\n",
        hosts = json!(hosts),
        command = json!(command.display().to_string()),
        server = json!(server.display().to_string()),
        prefix = json!(prefix.display().to_string()),
    );
    let path = folder.join("plugin.toml");
    std::fs::write(&path, manifest).expect("manifest");
    path
}

/// Installs the abuse server into `home` with `--grant host:H` for each of
/// `grants`; returns what install printed.
fn install(home: &Path, manifest: &Path, grants: &[String]) -> support::Run {
    let mut args = vec![
        "plugin".to_owned(),
        "install".to_owned(),
        manifest.display().to_string(),
    ];
    for g in grants {
        args.push("--grant".into());
        args.push(format!("host:{g}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lion_run(home, &args)
}

/// Runs abuse case `input` (`{"case": ...}`) through `lion plugin call`;
/// returns the server's report.
fn abuse(home: &Path, input: Value) -> Value {
    let out = lion_run(
        home,
        &[
            "plugin",
            "call",
            "net",
            "abuse",
            "--input",
            &input.to_string(),
        ],
    )
    .success();
    let output: Value = serde_json::from_str(out.stdout.trim()).expect("JSON output");
    output["structuredContent"].clone()
}

/// A loopback TCP listener that echoes what each connection sends until
/// it half-closes, counting its connections.
struct Echo {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Echo {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let mut data = Vec::new();
                if conn.read_to_end(&mut data).is_ok() {
                    let _ = conn.write_all(&data);
                }
            }
        });
        Self { port, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A loopback TCP listener nobody may reach: it never accepts by itself.
fn silent_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

/// The `plugin_permission_denied` events of plugin `net`.
fn denials(home: &Path) -> Vec<Value> {
    events(home)
        .into_iter()
        .filter_map(|e| e["event"].get("plugin_permission_denied").cloned())
        .collect()
}

/// The id of the last call recorded (succeeded or failed).
fn last_call_id(home: &Path) -> Value {
    events(home)
        .into_iter()
        .rev()
        .find_map(|e| {
            let event = &e["event"];
            event
                .get("plugin_succeeded")
                .or_else(|| event.get("plugin_failed"))
                .map(|c| c["call_id"].clone())
        })
        .expect("a recorded call")
}

/// A connection lion accepted and then refused: reset (an errno) or, at
/// worst, closed without an answer — never the upstream's echo.
fn assert_cut(report: &Value) {
    let cut = report["ok"] == false && report["errno"].is_string()
        || report["ok"] == true && report["reply"] == "";
    assert!(cut, "{report}");
}

#[test]
fn a_granted_loopback_port_is_reached_and_nothing_else_is() {
    let dir = scratch();
    let home = dir.path().join("home");
    let echo = Echo::start();
    let (other, other_port) = silent_listener();
    let granted = format!("127.0.0.1:{}", echo.port);
    let manifest = abuse_plugin(dir.path(), std::slice::from_ref(&granted));
    let installed = install(&home, &manifest, std::slice::from_ref(&granted)).success();
    assert!(
        installed
            .stdout
            .contains(&format!("network: {granted} (at {granted} inside)")),
        "{installed:?}"
    );
    let info = lion_run(&home, &["plugin", "info", "net"]).success();
    assert!(
        info.stdout
            .contains(&format!("network:    {granted} (at {granted} inside)")),
        "{info:?}"
    );

    // The granted port: reached, and the echo comes back.
    let report = abuse(
        &home,
        json!({"case": "tcp_connect", "host": "127.0.0.1", "port": echo.port, "data": "ping"}),
    );
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["reply"], "ping", "{report}");
    assert_eq!(echo.connections(), 1);

    // Another port of the same host: refused inside the jail (Landlock's
    // connect right covers the granted port only) and never arrives.
    let report = abuse(
        &home,
        json!({"case": "tcp_connect", "host": "127.0.0.1", "port": other_port, "data": "x"}),
    );
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        ["EACCES", "ECONNREFUSED"].contains(&report["errno"].as_str().unwrap_or_default()),
        "{report}"
    );
    assert_eq!(
        other.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "the other port saw a connection"
    );

    // UDP to a socket of the host: nothing arrives (the datagram stays in
    // the jail's namespace, where nothing listens).
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_nonblocking(true).expect("nonblocking");
    let udp_port = udp.local_addr().expect("addr").port();
    let report = abuse(
        &home,
        json!({"case": "udp_send", "host": "127.0.0.1", "port": udp_port}),
    );
    let mut buf = [0u8; 64];
    assert_eq!(
        udp.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "a datagram arrived: {report}"
    );
    // Control: the socket is live.
    UdpSocket::bind("127.0.0.1:0")
        .expect("udp")
        .send_to(b"x", ("127.0.0.1", udp_port))
        .expect("send");
    udp.set_nonblocking(false).expect("blocking");
    assert_eq!(udp.recv(&mut buf).expect("the control datagram"), 1);

    // DNS: an outside name does not resolve, and no resolver file is
    // readable.
    let report = abuse(&home, json!({"case": "dns", "name": "example.com"}));
    assert_eq!(report["ok"], false, "{report}");
    let report = abuse(&home, json!({"case": "read", "path": "/etc/resolv.conf"}));
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["errno"], "EACCES", "{report}");
    // What the server reads instead: lion's hosts file, and an NSS
    // configuration that asks that file only.
    for (path, text) in [
        ("/etc/hosts", "127.0.0.1 localhost\n"),
        ("/etc/nsswitch.conf", "hosts: files\n"),
    ] {
        let report = abuse(&home, json!({"case": "read", "path": path}));
        assert_eq!(report["ok"], true, "{report}");
        // The report gives a size, never contents: the host's files differ.
        assert_eq!(report["bytes"], text.len(), "{path}: {report}");
    }

    assert_eq!(echo.connections(), 1, "only the granted connection arrived");
    assert!(denials(&home).is_empty(), "lion refused nothing it saw");
}

#[test]
fn a_granted_name_resolving_to_loopback_needs_that_address_granted_too() {
    let dir = scratch();
    let home = dir.path().join("home");
    let echo = Echo::start();
    let name = format!("localhost:{}", echo.port);
    let address = format!("127.0.0.1:{}", echo.port);
    let manifest = abuse_plugin(dir.path(), &[name.clone(), address.clone()]);
    install(&home, &manifest, std::slice::from_ref(&name)).success();

    // Inside, the granted name is lion's listener's address.
    let report = abuse(&home, json!({"case": "dns", "name": "localhost"}));
    assert_eq!(report["addresses"], json!(["127.0.0.2"]), "{report}");

    // lion resolves it to 127.0.0.1, which is not granted: refused,
    // recorded, and the echo never sees a connection.
    let report = abuse(
        &home,
        json!({"case": "tcp_connect", "host": "localhost", "port": echo.port, "data": "ping"}),
    );
    assert_cut(&report);
    assert_eq!(echo.connections(), 0);
    let denied = denials(&home);
    assert_eq!(denied.len(), 1, "{denied:?}");
    // `localhost` may also resolve to ::1 where /etc/hosts says so.
    let asked = denied[0]["asked"].as_str().unwrap_or_default();
    assert!(
        asked.starts_with(&format!("tcp connect localhost:{} (", echo.port))
            && asked.contains("127.0.0.1"),
        "{asked}"
    );
    let reason = denied[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no global or granted address"), "{reason}");
    assert_eq!(
        denied[0]["call_id"],
        last_call_id(&home),
        "the refusal names the call it happened in"
    );

    // Granted the address too: the same connection goes through.
    lion_run(
        &home,
        &[
            "plugin",
            "grant",
            "net",
            "--grant",
            &format!("host:{name}"),
            "--grant",
            &format!("host:{address}"),
        ],
    )
    .success();
    let report = abuse(
        &home,
        json!({"case": "tcp_connect", "host": "localhost", "port": echo.port, "data": "ping"}),
    );
    assert_eq!(report["reply"], "ping", "{report}");
    assert_eq!(echo.connections(), 1);
    assert_eq!(denials(&home).len(), 1);
}

#[test]
fn a_granted_name_that_does_not_resolve_is_refused_and_recorded() {
    let dir = scratch();
    let home = dir.path().join("home");
    let granted = "nothing.invalid:8443".to_owned();
    let manifest = abuse_plugin(dir.path(), std::slice::from_ref(&granted));
    install(&home, &manifest, std::slice::from_ref(&granted)).success();
    let report = abuse(
        &home,
        json!({"case": "tcp_connect", "host": "nothing.invalid", "port": 8443, "data": "x"}),
    );
    assert_cut(&report);
    let denied = denials(&home);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["asked"], "tcp connect nothing.invalid:8443");
    let reason = denied[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("does not resolve"), "{reason}");
}

#[test]
fn a_host_grant_a_server_cannot_be_given_is_refused_at_install_and_regrant() {
    let dir = scratch();
    let home = dir.path().join("home");
    let asked: Vec<String> = ["localhost", "10.0.0.1:5432", "[::1]:80", "localhost:9"]
        .map(str::to_owned)
        .to_vec();
    let manifest = abuse_plugin(dir.path(), &asked);
    for (grant, says) in [
        ("localhost", "needs a port"),
        ("10.0.0.1:5432", "loopback"),
        ("[::1]:80", "IPv6"),
    ] {
        let out = install(&home, &manifest, &[grant.to_owned()]);
        let line = out.error_line(1);
        assert!(line.contains(says), "{grant}: {line}");
    }
    install(&home, &manifest, &["localhost:9".to_owned()]).success();
    let out = lion_run(
        &home,
        &["plugin", "grant", "net", "--grant", "host:localhost"],
    );
    let line = out.error_line(1);
    assert!(line.contains("needs a port"), "{line}");
    let info = lion_run(&home, &["plugin", "info", "net"]).success();
    assert!(
        info.stdout
            .contains("network:    localhost:9 (at 127.0.0.2:9 inside)"),
        "the grant is unchanged: {info:?}"
    );

    // A package's grant is checked before anything is downloaded.
    let out = lion_run(
        &home,
        &[
            "plugin",
            "install",
            "pypi:mcp-server-time==2026.10.19",
            "--grant",
            "host:pypi.org",
        ],
    );
    let line = out.error_line(1);
    assert!(line.contains("needs a port"), "{line}");
    assert!(!home.join("plugins/packages/mcp-server-time").exists());
}
