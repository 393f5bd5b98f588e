//! lion's test-only plugin: each function tries one thing a sandbox must
//! contain (run forever, eat memory, overflow the stack, flood output or
//! logs, trap, panic, touch files, sockets, DNS, the environment, host
//! interfaces) so the host's abuse tests can check what it allows.
//!
//! The flooding functions (`emit_flood`, `kv_fill`, `open_files`,
//! `write_bytes`, `stdout_flood`) go on past the host's refusals, as a
//! careless plugin would, and can loop afterwards (`"spin": true`) to stay
//! running until their timeout.
//!
//! Functions that reach the OS return its errors as `Err("<what> <target>:
//! <error>")`, e.g. `tcp connect 127.0.0.1:9: Connection refused (os error
//! 14)`; they never panic on them. Running out of memory in `grow` and the
//! stack in `recurse` are not errors but traps, as in any plugin.

use std::hint::black_box;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};

use agentic_pdk::{NoInput, events, http, kv, log};
use serde::Deserialize;
use serde_json::{Value, json};

/// Loops forever; only the host's timeout (or fuel) ends it.
fn spin(_: NoInput) -> Result<(), String> {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// The input of `grow`.
#[derive(Deserialize)]
struct Mib {
    mib: usize,
    #[serde(flatten)]
    then: Then,
}

/// Allocates `mib` MiB and writes to every page of it. An allocation the
/// memory limit refuses aborts, which traps; with `hold`, a refused
/// allocation waits on it instead and then fails.
fn grow(Mib { mib, then }: Mib) -> Result<Value, String> {
    let bytes = mib
        .checked_mul(1 << 20)
        .ok_or_else(|| format!("grow {mib} MiB: more than the address space"))?;
    if then.hold.is_some() {
        let mut reserve: Vec<u8> = Vec::new();
        if let Err(e) = reserve.try_reserve_exact(bytes) {
            then.finish();
            return Err(format!("grow {mib} MiB: {e}"));
        }
    }
    let mut block = vec![0u8; bytes];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(&block);
    Ok(json!({ "allocated_mib": mib }))
}

/// The input of `recurse`.
#[derive(Deserialize)]
struct Depth {
    depth: u64,
}

/// Recurses `depth` calls deep, each with a frame on the stack.
fn recurse(Depth { depth }: Depth) -> Result<Value, String> {
    Ok(json!({ "depth": descend(depth) }))
}

/// Counts down to 0 one frame at a time. The frame's buffer escapes through
/// `black_box` and is read after the recursive call, so the call can be
/// neither inlined nor turned into a loop.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    let mut frame = [0u8; 64];
    black_box(&mut frame);
    descend(black_box(depth - 1)) + 1 + u64::from(frame[0])
}

/// The input of `output`.
#[derive(Deserialize)]
struct Bytes {
    bytes: usize,
    #[serde(flatten)]
    then: Then,
}

/// Answers `{"data":"xxx..."}` of at least `bytes` bytes (after `hold`).
fn output(Bytes { bytes, then }: Bytes) -> Result<Value, String> {
    let data = "x".repeat(bytes);
    then.finish();
    Ok(json!({ "data": data }))
}

/// The input of `log_flood`.
#[derive(Deserialize)]
struct Flood {
    lines: u64,
    line_bytes: usize,
}

/// Logs `lines` info lines of `line_bytes` bytes each.
fn log_flood(Flood { lines, line_bytes }: Flood) -> Result<Value, String> {
    let line = "x".repeat(line_bytes);
    for _ in 0..lines {
        log::info(&line);
    }
    Ok(json!({ "lines": lines }))
}

/// Executes wasm `unreachable` (aborts when built for the host).
fn trap(_: NoInput) -> Result<(), String> {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// The input of `panic`.
#[derive(Deserialize)]
struct Message {
    message: String,
}

/// Panics with `message` (plugins abort on panic, which traps).
fn panic(Message { message }: Message) -> Result<(), String> {
    panic!("{message}")
}

/// The input of the file functions.
#[derive(Deserialize)]
struct FileInput {
    path: String,
    #[serde(default)]
    content: String,
}

/// Reads a file as text: `{"content":...}`.
fn read_file(FileInput { path, .. }: FileInput) -> Result<Value, String> {
    let content = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    Ok(json!({ "content": content }))
}

/// Writes `content` to a file: `{"written":bytes}`.
fn write_file(FileInput { path, content }: FileInput) -> Result<Value, String> {
    std::fs::write(&path, &content).map_err(|e| format!("write {path}: {e}"))?;
    Ok(json!({ "written": content.len() }))
}

/// Lists a directory: `{"entries":[sorted names]}`.
fn list_dir(FileInput { path, .. }: FileInput) -> Result<Value, String> {
    let error = |e: std::io::Error| format!("list {path}: {e}");
    let mut entries = std::fs::read_dir(&path)
        .map_err(error)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    entries.sort();
    Ok(json!({ "entries": entries }))
}

/// The input of the socket functions.
#[derive(Deserialize)]
struct Addr {
    addr: String,
}

/// Connects over TCP to `addr` and writes `ping`: `{"connected":true}`.
fn tcp_connect(Addr { addr }: Addr) -> Result<Value, String> {
    let mut stream = TcpStream::connect(&addr).map_err(|e| format!("tcp connect {addr}: {e}"))?;
    stream
        .write_all(b"ping")
        .map_err(|e| format!("tcp write {addr}: {e}"))?;
    Ok(json!({ "connected": true }))
}

/// Sends `ping` over UDP to `addr` from an ephemeral port: `{"sent":4}`.
fn udp_send(Addr { addr }: Addr) -> Result<Value, String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("udp bind 0.0.0.0:0: {e}"))?;
    let sent = socket
        .send_to(b"ping", &addr)
        .map_err(|e| format!("udp send {addr}: {e}"))?;
    Ok(json!({ "sent": sent }))
}

/// The input of `dns` and `env`.
#[derive(Deserialize)]
struct Name {
    name: String,
}

/// Resolves `name` (port 80): `{"addrs":["ip", ...]}`.
fn dns(Name { name }: Name) -> Result<Value, String> {
    let addrs: Vec<String> = (name.as_str(), 80)
        .to_socket_addrs()
        .map_err(|e| format!("dns {name}: {e}"))?
        .map(|a| a.ip().to_string())
        .collect();
    Ok(json!({ "addrs": addrs }))
}

/// The input of `http_get`.
#[derive(Deserialize)]
struct Url {
    url: String,
    #[serde(flatten)]
    then: Then,
}

/// Fetches `url` through the host: `{"status":..,"body":..}` (after
/// `hold`, whatever the answer).
fn http_get(Url { url, then }: Url) -> Result<Value, String> {
    let response = http::get(&url);
    then.finish();
    let response = response.map_err(|e| format!("http get {url}: {e}"))?;
    Ok(json!({ "status": response.status, "body": response.text() }))
}

/// The input of `http_fetch`.
#[derive(Deserialize)]
struct Fetch {
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

/// GET `url` through the host with `headers`: `{"status":..,"body":..}`.
fn http_fetch(Fetch { url, headers }: Fetch) -> Result<Value, String> {
    let mut request = http::Request::get(url.as_str());
    for (name, value) in headers {
        request = request.with_header(name, value);
    }
    let response = http::fetch(&request).map_err(|e| format!("http get {url}: {e}"))?;
    Ok(json!({ "status": response.status, "body": response.text() }))
}

/// The input of `kv_set` and `kv_get`.
#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

/// Sets a key in the host store: `{"ok":true}`.
fn kv_set(KeyValue { key, value }: KeyValue) -> Result<Value, String> {
    kv::set(&key, &value).map_err(|e| format!("kv set {key}: {e}"))?;
    Ok(json!({ "ok": true }))
}

/// Reads a key from the host store: `{"value": string or null}`.
fn kv_get(KeyValue { key, .. }: KeyValue) -> Result<Value, String> {
    Ok(json!({ "value": kv::get(&key) }))
}

/// The input of `emit`.
#[derive(Deserialize)]
struct Event {
    kind: String,
    #[serde(default)]
    data: Value,
}

/// Emits an event: `{"ok":true}`.
fn emit(Event { kind, data }: Event) -> Result<Value, String> {
    events::emit(&kind, &data).map_err(|e| format!("emit {kind}: {e}"))?;
    Ok(json!({ "ok": true }))
}

/// Reads an environment variable: `{"value": string or null}`.
fn env(Name { name }: Name) -> Result<Value, String> {
    match std::env::var(&name) {
        Ok(value) => Ok(json!({ "value": value })),
        Err(std::env::VarError::NotPresent) => Ok(json!({ "value": null })),
        Err(e) => Err(format!("env {name}: {e}")),
    }
}

/// After some of the flooding functions: what to do once the flood is
/// done, so the call stays running while a test does something else.
#[derive(Deserialize, Default)]
struct Then {
    /// A URL to GET (through the `http` interface) and wait for: the test
    /// answers it when it wants the call to go on.
    #[serde(default)]
    hold: Option<String>,
    /// Loop forever (until the call's timeout).
    #[serde(default)]
    spin: bool,
}

impl Then {
    /// Waits on the hold URL, then loops forever, as asked.
    fn finish(&self) {
        if let Some(url) = &self.hold {
            let _ = http::get(url);
        }
        if self.spin {
            let _ = spin(NoInput);
        }
    }
}

/// The input of `emit_flood`.
#[derive(Deserialize)]
struct EmitFlood {
    events: u64,
    bytes: usize,
    #[serde(flatten)]
    then: Then,
}

/// Emits `events` events whose data is a string of `bytes` bytes, going on
/// whatever the host answers: `{"emitted":n,"refused":m}`.
fn emit_flood(input: EmitFlood) -> Result<Value, String> {
    let data = Value::String("x".repeat(input.bytes));
    let (mut emitted, mut refused) = (0u64, 0u64);
    for _ in 0..input.events {
        match events::emit("flood", &data) {
            Ok(()) => emitted += 1,
            Err(_) => refused += 1,
        }
    }
    input.then.finish();
    Ok(json!({ "emitted": emitted, "refused": refused }))
}

/// The input of `kv_fill`.
#[derive(Deserialize)]
struct KvFill {
    keys: u64,
    value_bytes: usize,
    #[serde(default)]
    prefix: String,
    #[serde(flatten)]
    then: Then,
}

/// Sets `keys` keys (`<prefix><i>`) to values of `value_bytes` bytes,
/// going on whatever the host answers: `{"set":n,"refused":m}`.
fn kv_fill(input: KvFill) -> Result<Value, String> {
    let value = "v".repeat(input.value_bytes);
    let (mut set, mut refused) = (0u64, 0u64);
    for i in 0..input.keys {
        match kv::set(&format!("{}{i}", input.prefix), &value) {
            Ok(()) => set += 1,
            Err(_) => refused += 1,
        }
    }
    input.then.finish();
    Ok(json!({ "set": set, "refused": refused }))
}

/// The input of `open_files`.
#[derive(Deserialize)]
struct OpenFiles {
    path: String,
    count: u64,
    #[serde(flatten)]
    then: Then,
}

/// Opens the file at `path` `count` times and keeps every handle:
/// `{"opened":n,"error":first error or null}`.
fn open_files(input: OpenFiles) -> Result<Value, String> {
    let mut held = Vec::new();
    let mut error = None;
    for _ in 0..input.count {
        match std::fs::File::open(&input.path) {
            Ok(file) => held.push(file),
            Err(e) => {
                error = Some(format!("open {}: {e}", input.path));
                break;
            }
        }
    }
    input.then.finish();
    Ok(json!({ "opened": held.len(), "error": error }))
}

/// The input of `write_bytes`.
#[derive(Deserialize)]
struct WriteBytes {
    path: String,
    bytes: u64,
    #[serde(flatten)]
    then: Then,
}

/// Writes `bytes` bytes to a new file at `path`, 64 KiB at a time:
/// `{"written":n,"error":first error or null}`.
fn write_bytes(input: WriteBytes) -> Result<Value, String> {
    let chunk = vec![b'w'; 64 << 10];
    let mut written = 0u64;
    let mut error = None;
    match std::fs::File::create(&input.path) {
        Ok(mut file) => {
            while written < input.bytes {
                let n = chunk.len().min((input.bytes - written) as usize);
                if let Err(e) = file.write_all(&chunk[..n]) {
                    error = Some(format!("write {}: {e}", input.path));
                    break;
                }
                written += n as u64;
            }
        }
        Err(e) => error = Some(format!("create {}: {e}", input.path)),
    }
    input.then.finish();
    Ok(json!({ "written": written, "error": error }))
}

/// The input of `stdout_flood`.
#[derive(Deserialize)]
struct StdoutFlood {
    bytes: u64,
    #[serde(flatten)]
    then: Then,
}

/// Writes `bytes` bytes to stdout, 4 KiB at a time, ignoring every error:
/// `{"bytes":n}`.
fn stdout_flood(input: StdoutFlood) -> Result<Value, String> {
    let chunk = vec![b'o'; 4096];
    let mut stdout = std::io::stdout();
    let mut left = input.bytes;
    while left > 0 {
        let n = chunk.len().min(left as usize);
        let _ = stdout.write_all(&chunk[..n]);
        left -= n as u64;
    }
    let _ = stdout.flush();
    input.then.finish();
    Ok(json!({ "bytes": input.bytes }))
}

/// The input of `exit`.
#[derive(Deserialize)]
struct Exit {
    code: i32,
}

/// Calls WASI `exit` with `code` instead of returning.
fn exit(Exit { code }: Exit) -> Result<(), String> {
    std::process::exit(code)
}

/// Calls so far in this instance.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Counts calls in a static: `{"count":n}`, always 1 when every call gets
/// a fresh instance.
fn counter(_: NoInput) -> Result<Value, String> {
    Ok(json!({ "count": CALLS.fetch_add(1, Ordering::Relaxed) + 1 }))
}

/// Answers its input.
fn echo(input: Value) -> Result<Value, String> {
    Ok(input)
}

agentic_pdk::plugin!(
    spin,
    grow,
    recurse,
    output,
    log_flood,
    trap,
    panic,
    read_file,
    write_file,
    list_dir,
    tcp_connect,
    udp_send,
    dns,
    http_get,
    http_fetch,
    kv_set,
    kv_get,
    emit,
    env,
    counter,
    echo,
    emit_flood,
    kv_fill,
    open_files,
    write_bytes,
    stdout_flood,
    exit,
);
