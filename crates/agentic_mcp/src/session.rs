//! One MCP client session with a tool server, over the server's stdout and
//! stdin (any `AsyncRead` + `AsyncWrite` pair: lion starts the server itself,
//! in its sandbox, and hands the pipes here).
//!
//! The protocol is `rmcp`'s: its client service, its JSON-RPC types and its
//! newline-delimited transport. This module adds what lion needs around it:
//!
//! - **deadlines**: `initialize`, every listing request and every tool call
//!   run under one ([`SessionConfig`], [`McpSession::call_tool`]); a server
//!   that never answers gives a typed error naming the deadline. A call that
//!   runs out is cancelled on the wire (`notifications/cancelled`);
//! - **bounded input**: the server's stdout goes through a line guard
//!   that ends the session the moment a message passes
//!   [`SessionConfig::max_message_bytes`] without a newline (rmcp's own
//!   transport would drop such a line and carry on, after reading all of
//!   it), or a line is not a JSON-RPC 2.0 envelope: a JSON object with
//!   `"jsonrpc": "2.0"` (rmcp skips unparsable lines, which would leave a
//!   call waiting for its deadline). The session then ends with
//!   [`SessionError::MessageTooLarge`] or [`SessionError::Malformed`]. A
//!   well-formed envelope whose content rmcp cannot read is rmcp's: a
//!   request is answered with Invalid Request, a response fails its call
//!   ([`SessionError::Protocol`]) or leaves it to its deadline;
//! - **the server going away** (its stdout closed) fails pending and later
//!   requests with [`SessionError::ServerGone`], never a hang;
//! - **capabilities**: lion offers `roots` (the directories the operator
//!   granted, as `file://` URIs, answered to `roots/list`) and nothing else.
//!   `sampling` and `elicitation` are not advertised, and a server asking
//!   for them (or for any other method) gets a JSON-RPC error; each such
//!   refusal is kept ([`McpSession::refusals`]) for lion to record.
//!
//! The handshake is the `initialize` one at revision 2025-11-25
//! ([`rmcp::model::ProtocolVersion::LATEST_WITH_INITIALIZE`]), which servers
//! of that revision and earlier speak; a server may answer with an older
//! revision, which rmcp accepts and [`ServerIdentity::protocol_version`]
//! reports. (rmcp 3.11 also knows 2026-07-28, which drops `initialize` for
//! `server/discover`; lion does not probe for it yet.)

// Roots and sampling are deprecated by SEP-2577 (revision 2026-07-28), but
// they are part of 2025-11-25, the revision lion negotiates.
#![expect(
    deprecated,
    reason = "roots/sampling types of the 2025-11-25 revision lion speaks"
)]

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
    CreateMessageRequestParams, CreateMessageResult, CustomRequest, CustomResult,
    ElicitRequestParams, ElicitResult, ErrorCode, ErrorData, Implementation, ListRootsResult,
    PaginatedRequestParams, ProtocolVersion, RootsCapabilities, Tool,
};
use rmcp::service::{ClientCacheConfig, RequestContext, RoleClient, RunningService, ServiceError};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ClientHandler, ServiceExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a server may take to answer `initialize` by default. Node
/// servers load their modules first (about a second here, more on a cold
/// disk); 20 s is generous for that and still ends a stuck start.
pub const DEFAULT_INITIALIZE_DEADLINE: Duration = Duration::from_secs(20);

/// How long one `tools/list` page may take by default: listing is
/// bookkeeping, not work, so this only bounds a stuck server.
pub const DEFAULT_LIST_DEADLINE: Duration = Duration::from_secs(20);

/// The largest single message (one line) lion reads from a server by
/// default. rmcp's own default line cap (and its streamable-HTTP event cap)
/// is 16 MiB; a tool result larger than that is not something an agent
/// should be handed in one piece.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The most tools lion takes from one server: each becomes a plugin
/// function with its schemas recorded, and a model is offered a few dozen
/// at most, so a server listing more is broken or hostile.
pub const MAX_TOOLS: usize = 1024;

/// The most `tools/list` pages lion follows: a server handing out cursors
/// forever (or one tool per page) would otherwise keep install busy.
pub const MAX_TOOL_PAGES: usize = 64;

/// The most refused server requests a session keeps for lion to record;
/// later ones are counted, not kept, so a server cannot grow the list.
pub const MAX_KEPT_REFUSALS: usize = 64;

/// The most bytes of the server's name or version kept: they end up in
/// events and listings, and a name is a line, not a document.
pub const MAX_SERVER_NAME_BYTES: usize = 256;

/// The most bytes of the server's `instructions` kept (untrusted text an
/// operator may want to read, not a place to park megabytes).
pub const MAX_INSTRUCTIONS_BYTES: usize = 8 << 10;

/// Bytes read from the server's stdout at a time by the line guard.
const READ_CHUNK: usize = 64 << 10;

/// What the session needs from lion.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The name lion introduces itself by in `initialize`.
    pub client_name: String,
    /// The version lion introduces itself by.
    pub client_version: String,
    /// The directories offered as roots (`roots/list`): absolute paths as
    /// the *server* sees them (inside its sandbox, where a grant may be
    /// mounted elsewhere than on the host).
    pub roots: Vec<PathBuf>,
    /// How long the server may take to answer `initialize`.
    pub initialize_deadline: Duration,
    /// How long one `tools/list` page may take.
    pub list_deadline: Duration,
    /// The largest single message read from the server.
    pub max_message_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            client_name: "lion".to_owned(),
            client_version: env!("CARGO_PKG_VERSION").to_owned(),
            roots: Vec::new(),
            initialize_deadline: DEFAULT_INITIALIZE_DEADLINE,
            list_deadline: DEFAULT_LIST_DEADLINE,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Why a session could not do what was asked. Every variant ends in a
/// one-line message naming the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The server did not answer `initialize` in time.
    #[error("the MCP server did not answer initialize within its {deadline:?} deadline")]
    InitializeTimeout {
        /// The deadline it missed.
        deadline: Duration,
    },
    /// The `initialize` handshake failed otherwise (rmcp's reason).
    #[error("MCP initialize failed: {0}")]
    Initialize(String),
    /// A request got no answer in time; a tool call is cancelled on the wire.
    #[error("the MCP server did not answer {method} within its {deadline:?} deadline")]
    Timeout {
        /// The request (`tools/list`, `tools/call NAME`).
        method: String,
        /// The deadline it missed.
        deadline: Duration,
    },
    /// The server sent a message longer than the limit; the session ended
    /// without reading the rest of it.
    #[error("the MCP server sent a message over {limit} bytes; the session was ended")]
    MessageTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The server sent something that is not a JSON-RPC message; the
    /// session was ended.
    #[error("the MCP server sent a malformed message ({detail}); the session was ended")]
    Malformed {
        /// What was wrong with it.
        detail: String,
    },
    /// The server's output closed (it exited, or lion ended the session).
    #[error("the MCP server went away (its output closed)")]
    ServerGone,
    /// The server answered with a JSON-RPC error.
    #[error("the MCP server refused {method}: {message} (code {code})")]
    Server {
        /// The request it refused.
        method: String,
        /// The JSON-RPC error code.
        code: i32,
        /// Its message.
        message: String,
    },
    /// The server answered with something else than the request calls for.
    #[error("the MCP server answered {method} with an unexpected response: {detail}")]
    Protocol {
        /// The request.
        method: String,
        /// What rmcp made of it.
        detail: String,
    },
    /// The server lists more tools than [`MAX_TOOLS`].
    #[error("the MCP server lists more than {MAX_TOOLS} tools")]
    TooManyTools,
    /// The server's tool list runs over more than [`MAX_TOOL_PAGES`] pages.
    #[error("the MCP server's tool list runs over more than {MAX_TOOL_PAGES} pages")]
    TooManyPages,
    /// Tool arguments must be a JSON object (or null for none).
    #[error("tool arguments must be a JSON object, not {0}")]
    ArgumentsNotObject(&'static str),
    /// The server answered `initialize` with a revision lion cannot speak.
    #[error(
        "the MCP server answered with protocol revision {0:?}, which lion does not speak (it speaks 2024-11-05 to 2025-11-25)"
    )]
    UnsupportedProtocol(String),
    /// A root is not an absolute path that makes a `file://` URI.
    #[error("root {0:?} is not an absolute directory path")]
    InvalidRoot(PathBuf),
}

/// Who the server says it is, and what was negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    /// `serverInfo.name` (cut at [`MAX_SERVER_NAME_BYTES`]), empty when the
    /// server gave none.
    pub name: String,
    /// `serverInfo.version` (cut likewise), empty when the server gave none.
    pub version: String,
    /// The protocol revision the server answered `initialize` with.
    pub protocol_version: String,
    /// The server's `instructions`, if any (untrusted text, cut at
    /// [`MAX_INSTRUCTIONS_BYTES`]).
    pub instructions: Option<String>,
}

/// A request from the server that lion refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The method it asked for (`sampling/createMessage`, ...).
    pub method: String,
}

/// What the server did wrong on the wire, as the line guard saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamFault {
    TooLarge { limit: usize },
    Malformed { detail: String },
}

type FaultSlot = Arc<Mutex<Option<StreamFault>>>;

fn record_fault(slot: &FaultSlot, fault: StreamFault) -> io::Error {
    let message = match &fault {
        StreamFault::TooLarge { limit } => format!("message over {limit} bytes"),
        StreamFault::Malformed { detail } => format!("malformed message: {detail}"),
    };
    let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert(fault);
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A reader over a server's stdout that hands rmcp only whole lines, each
/// within a byte limit and each a JSON object, and fails the stream (so the
/// session ends) at the first that is not. It buffers at most one line of
/// the limit plus one read chunk; a line over the limit is refused as soon
/// as the limit is passed, without reading the rest.
struct LineGuard<R> {
    inner: R,
    limit: usize,
    /// The current line, not yet checked.
    line: Vec<u8>,
    /// Checked bytes waiting for rmcp to read them.
    out: Vec<u8>,
    out_pos: usize,
    chunk: Box<[u8]>,
    fault: FaultSlot,
    failed: Option<StreamFault>,
    eof: bool,
}

impl<R> LineGuard<R> {
    fn new(inner: R, limit: usize, fault: FaultSlot) -> Self {
        Self {
            inner,
            limit,
            line: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            fault,
            failed: None,
            eof: false,
        }
    }
}

/// Moves `data` (just read) into the current `line`, checking each line it
/// completes and appending it to `out`.
fn take(
    line: &mut Vec<u8>,
    out: &mut Vec<u8>,
    limit: usize,
    mut data: &[u8],
) -> Result<(), StreamFault> {
    while !data.is_empty() {
        let newline = data.iter().position(|b| *b == b'\n');
        let piece = &data[..newline.unwrap_or(data.len())];
        if line.len() + piece.len() > limit {
            return Err(StreamFault::TooLarge { limit });
        }
        line.extend_from_slice(piece);
        let Some(at) = newline else {
            return Ok(());
        };
        data = &data[at + 1..];
        check_line(line)?;
        out.extend_from_slice(line);
        out.push(b'\n');
        line.clear();
    }
    Ok(())
}

/// The one member every JSON-RPC 2.0 message carries; the rest of the
/// message is rmcp's to read (skipped here without being built).
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<std::borrow::Cow<'a, str>>,
}

/// A line is a JSON-RPC 2.0 envelope (a JSON object with `"jsonrpc":
/// "2.0"`, after an optional BOM and `\r`), or blank. What is inside the
/// envelope is rmcp's to judge: it answers a request it cannot read with
/// Invalid Request, and a response it cannot read leaves its call to run
/// into the call's deadline.
fn check_line(line: &[u8]) -> Result<(), StreamFault> {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(first) = line.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(());
    };
    let malformed = |detail: String| StreamFault::Malformed { detail };
    if *first != b'{' {
        return Err(malformed("a line that is not a JSON object".to_owned()));
    }
    let envelope: Envelope<'_> =
        serde_json::from_slice(line).map_err(|e| malformed(format!("invalid JSON: {e}")))?;
    if envelope.jsonrpc.as_deref() != Some("2.0") {
        return Err(malformed(
            "a JSON object without \"jsonrpc\": \"2.0\"".to_owned(),
        ));
    }
    Ok(())
}

impl<R: AsyncRead + Unpin> AsyncRead for LineGuard<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(fault) = &this.failed {
                return Poll::Ready(Err(record_fault(&this.fault, fault.clone())));
            }
            if this.eof {
                // A partial last line without its newline is not a message.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            if n == 0 {
                this.eof = true;
                continue;
            }
            if let Err(fault) = take(&mut this.line, &mut this.out, this.limit, &this.chunk[..n]) {
                this.line = Vec::new();
                this.failed = Some(fault);
            }
        }
    }
}

/// lion's side of the protocol: roots offered, everything else refused.
struct LionClient {
    config: ClientConfig,
    roots: Vec<rmcp::model::Root>,
    refusals: Arc<Mutex<Refusals>>,
}

#[derive(Debug, Default)]
struct Refusals {
    kept: Vec<Refusal>,
    total: u64,
}

impl LionClient {
    fn refuse(&self, method: &str) -> ErrorData {
        let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        r.total += 1;
        if r.kept.len() < MAX_KEPT_REFUSALS {
            r.kept.push(Refusal {
                method: method.to_owned(),
            });
        }
        ErrorData::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!("lion does not offer {method} to MCP servers"),
            None,
        )
    }
}

impl ClientHandler for LionClient {
    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        Err(self.refuse("sampling/createMessage"))
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        Err(self.refuse("elicitation/create"))
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleClient>,
    ) -> Result<CustomResult, ErrorData> {
        Err(self.refuse(&request.method))
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        Ok(ListRootsResult::new(self.roots.clone()))
    }

    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }
}

/// A live session with one MCP server.
pub struct McpSession {
    service: RunningService<RoleClient, LionClient>,
    identity: ServerIdentity,
    fault: FaultSlot,
    refusals: Arc<Mutex<Refusals>>,
    list_deadline: Duration,
}

impl std::fmt::Debug for McpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpSession")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl McpSession {
    /// Runs the `initialize` handshake over `reader` (the server's stdout)
    /// and `writer` (its stdin), within `config.initialize_deadline`.
    pub async fn connect<R, W>(
        reader: R,
        writer: W,
        config: SessionConfig,
    ) -> Result<Self, SessionError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let roots = config
            .roots
            .iter()
            .map(|dir| {
                url::Url::from_directory_path(dir)
                    .map(|u| {
                        let name = dir
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_else(|| dir.display().to_string());
                        rmcp::model::Root::new(u.to_string()).with_name(name)
                    })
                    .map_err(|()| SessionError::InvalidRoot(dir.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut capabilities = ClientCapabilities::default();
        // Roots are fixed for a session: no list_changed notifications.
        capabilities.roots = Some(RootsCapabilities::default());
        let client_config = ClientConfig::new(
            capabilities,
            Implementation::new(config.client_name.clone(), config.client_version.clone()),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE);
        let fault = FaultSlot::default();
        let refusals = Arc::new(Mutex::new(Refusals::default()));
        let client = LionClient {
            config: client_config,
            roots,
            refusals: refusals.clone(),
        };
        let guard = LineGuard::new(reader, config.max_message_bytes, fault.clone());
        // rmcp's own cap sits above ours so that ours, which ends the
        // session, is the one that acts.
        let transport = AsyncRwTransport::<RoleClient, _, _>::new_client(guard, writer)
            .with_max_line_length(config.max_message_bytes.saturating_add(2));
        let deadline = config.initialize_deadline;
        let service = match tokio::time::timeout(deadline, client.serve(transport)).await {
            Err(_elapsed) => {
                return Err(
                    fault_of(&fault).unwrap_or(SessionError::InitializeTimeout { deadline })
                );
            }
            Ok(Err(e)) => {
                return Err(fault_of(&fault).unwrap_or_else(|| match e {
                    rmcp::service::ClientInitializeError::ConnectionClosed(_) => {
                        SessionError::ServerGone
                    }
                    e => SessionError::Initialize(e.to_string()),
                }));
            }
            Ok(Ok(service)) => service,
        };
        // rmcp caches list results for as long as the server's `ttlMs`
        // says, and by default serves a stale one when a re-fetch fails.
        // lion lists to learn what a server offers now (a changed tool must
        // be seen, a failure reported), so every listing goes to the server.
        service
            .peer()
            .set_response_cache_config(ClientCacheConfig::disabled())
            .await;
        let info = service.peer().peer_info();
        let identity = match info.as_deref() {
            Some(info) => {
                let version = &info.protocol_version;
                if !version.has_initialize() || !ProtocolVersion::KNOWN_VERSIONS.contains(version) {
                    let version = cut(version.as_str(), MAX_SERVER_NAME_BYTES).to_owned();
                    let mut service = service;
                    let _ = service.close().await;
                    return Err(SessionError::UnsupportedProtocol(version));
                }
                let field = |f: fn(&Implementation) -> &str| {
                    info.server_info
                        .as_ref()
                        .map(|s| cut(f(s), MAX_SERVER_NAME_BYTES).to_owned())
                        .unwrap_or_default()
                };
                ServerIdentity {
                    name: field(|s| &s.name),
                    version: field(|s| &s.version),
                    protocol_version: version.to_string(),
                    instructions: info
                        .instructions
                        .as_deref()
                        .map(|i| cut(i, MAX_INSTRUCTIONS_BYTES).to_owned()),
                }
            }
            None => {
                return Err(SessionError::Initialize(
                    "rmcp kept no server information".to_owned(),
                ));
            }
        };
        Ok(Self {
            service,
            identity,
            fault,
            refusals,
            list_deadline: config.list_deadline,
        })
    }

    /// Who the server says it is, and the negotiated revision.
    pub fn server(&self) -> &ServerIdentity {
        &self.identity
    }

    /// Every tool the server offers, following `nextCursor` over at most
    /// [`MAX_TOOL_PAGES`] pages and [`MAX_TOOLS`] tools, each page within the
    /// list deadline. A repeated cursor counts as a page like any other. Every
    /// call asks the server afresh (rmcp's response cache is off).
    pub async fn list_tools(&self) -> Result<Vec<Tool>, SessionError> {
        let mut tools = Vec::new();
        let mut cursor = None;
        for _ in 0..MAX_TOOL_PAGES {
            let params = cursor
                .take()
                .map(|c| PaginatedRequestParams::default().with_cursor(Some(c)));
            let method = "tools/list";
            let page = self
                .request(
                    method,
                    self.list_deadline,
                    self.service.peer().list_tools(params),
                )
                .await?;
            if tools.len() + page.tools.len() > MAX_TOOLS {
                return Err(SessionError::TooManyTools);
            }
            tools.extend(page.tools);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(tools),
            }
        }
        Err(SessionError::TooManyPages)
    }

    /// Calls tool `name` (its exact MCP name) with `arguments` (a JSON
    /// object, or null for none), waiting at most `deadline`; past it the
    /// request is cancelled on the wire and [`SessionError::Timeout`]
    /// returned. A result with `isError` is returned as a result: turning
    /// it into lion's typed error is [`crate::output`]'s job.
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: serde_json::Value,
        deadline: Duration,
    ) -> Result<CallToolResult, SessionError> {
        let arguments = match arguments {
            serde_json::Value::Object(map) => Some(map),
            serde_json::Value::Null => None,
            other => return Err(SessionError::ArgumentsNotObject(json_kind(&other))),
        };
        let mut params = CallToolRequestParams::new(name.to_owned());
        params.arguments = arguments;
        let method = format!("tools/call {name}");
        self.request(&method, deadline, self.service.peer().call_tool(params))
            .await
    }

    /// The server requests lion refused so far (the first
    /// [`MAX_KEPT_REFUSALS`]), and how many there were in all.
    pub fn refusals(&self) -> (Vec<Refusal>, u64) {
        let r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        (r.kept.clone(), r.total)
    }

    /// Whether the session has ended (the server went away, sent something
    /// that ended it, or was closed).
    pub fn is_closed(&self) -> bool {
        self.service.is_closed()
    }

    /// Why the session ended on the wire, if the server broke it
    /// ([`SessionError::MessageTooLarge`] or [`SessionError::Malformed`]).
    pub fn fault(&self) -> Option<SessionError> {
        fault_of(&self.fault)
    }

    /// Ends the session: stops rmcp's service and closes the server's stdin
    /// (a well-behaved stdio server exits on that; lion's sandbox kills the
    /// rest).
    pub async fn close(mut self) {
        // A join error means rmcp's task panicked; there is nothing left to
        // close then, so it is not an error of the close.
        let _ = self.service.close().await;
    }

    async fn request<T>(
        &self,
        method: &str,
        deadline: Duration,
        fut: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, SessionError> {
        let result = tokio::time::timeout(deadline, fut).await;
        if let Some(fault) = fault_of(&self.fault) {
            return Err(fault);
        }
        match result {
            Err(_elapsed) => Err(SessionError::Timeout {
                method: method.to_owned(),
                deadline,
            }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(match e {
                ServiceError::McpError(data) => SessionError::Server {
                    method: method.to_owned(),
                    code: data.code.0,
                    message: data.message.into_owned(),
                },
                ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
                    SessionError::ServerGone
                }
                ServiceError::Timeout { timeout } => SessionError::Timeout {
                    method: method.to_owned(),
                    deadline: timeout,
                },
                other => SessionError::Protocol {
                    method: method.to_owned(),
                    detail: other.to_string(),
                },
            }),
        }
    }
}

fn fault_of(slot: &FaultSlot) -> Option<SessionError> {
    let guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().map(|fault| match fault {
        StreamFault::TooLarge { limit } => SessionError::MessageTooLarge { limit: *limit },
        StreamFault::Malformed { detail } => SessionError::Malformed {
            detail: detail.clone(),
        },
    })
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(input: &[u8], limit: usize) -> (Vec<u8>, Option<StreamFault>) {
        let slot = FaultSlot::default();
        let mut guard = LineGuard::new(input, limit, slot.clone());
        let mut out = Vec::new();
        let _ = guard.read_to_end(&mut out).await;
        let fault = slot.lock().unwrap().clone();
        (out, fault)
    }

    #[tokio::test]
    async fn whole_json_lines_pass_through() {
        let input = b"{\"jsonrpc\":\"2.0\",\"a\":1}\n\r\n\xEF\xBB\xBF{\"b\":[2],\"jsonrpc\":\"2.0\"}\r\n{\"partial\"";
        let (out, fault) = read_all(input, 64).await;
        assert_eq!(fault, None);
        assert_eq!(
            out,
            b"{\"jsonrpc\":\"2.0\",\"a\":1}\n\r\n\xEF\xBB\xBF{\"b\":[2],\"jsonrpc\":\"2.0\"}\r\n"
        );
    }

    #[tokio::test]
    async fn a_line_over_the_limit_fails_the_stream() {
        let mut input = b"{\"jsonrpc\":\"2.0\"}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100));
        let (out, fault) = read_all(&input, 50).await;
        assert_eq!(out, b"{\"jsonrpc\":\"2.0\"}\n");
        assert_eq!(fault, Some(StreamFault::TooLarge { limit: 50 }));
        // Exactly at the limit passes.
        let line = format!("{{\"jsonrpc\":\"2.0\",\"k\":\"{}\"}}\n", "y".repeat(26));
        let (out, fault) = read_all(line.as_bytes(), 50).await;
        assert_eq!(fault, None, "{} bytes", line.len() - 1);
        assert_eq!(out, line.as_bytes());
    }

    #[tokio::test]
    async fn non_json_and_non_object_lines_fail_the_stream() {
        for bad in [
            &b"hello\n"[..],
            b"{\"a\":\n",
            b"[1,2]\n",
            b"42\n",
            b"{\"a\":1}\n",
            b"{\"jsonrpc\":\"1.0\",\"id\":1}\n",
            b"{\"jsonrpc\":\"2.0\"} trailing\n",
        ] {
            let (out, fault) = read_all(bad, 64).await;
            assert!(out.is_empty());
            assert!(
                matches!(fault, Some(StreamFault::Malformed { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
