//! Who may call the server, checked on every request before any handler
//! runs ([`guard`]):
//!
//! 1. `Host` must name this server (an allowed host and port), and
//!    `Origin`, when a browser sends one, must be this server too: a page
//!    on another site, or a DNS name rebound to 127.0.0.1, is refused.
//! 2. Outside a few public paths (the sign-in page and its assets,
//!    `/health`, `/openapi.json`, signing in), a request carries the home's
//!    token as `Authorization: Bearer …`, or a session cookie got by
//!    signing in with it. A cookie-authenticated request that changes
//!    something (any method but GET, HEAD, OPTIONS) also carries the
//!    session's CSRF token in `X-CSRF-Token`.
//! 3. Until the kernel has recovered, API requests get 503.
//!
//! Refusals are answered as problems (401, 403, 503) and logged with the
//! reason; they are not appended to the event log, where anyone able to
//! reach the port could otherwise fill the disk.

pub mod session;
pub mod token;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

pub use session::{CSRF_HEADER, SESSION_COOKIE, SessionCheck, Sessions};
pub use token::{TOKEN_FILE, Token};

use crate::AppState;
use crate::api::Body;
use crate::problem::Problem;

/// Why access could not be set up or checked.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The home has no token file.
    #[error("no token in {0} (start `lion serve` once, or rotate to create one)")]
    Missing(PathBuf),
    /// The token file can be read by others.
    #[error("{path} is readable by others (mode {mode:04o}): chmod 600 it, or rotate the token")]
    Exposed {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file does not hold a lion token.
    #[error("{0} does not hold a lion token (rotate the token to replace it)")]
    Malformed(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The OS gave no random bytes.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

impl AccessError {
    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

/// What identifies one version of the token file: a rotation changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
    size: u64,
}

impl Stamp {
    fn of(path: &Path) -> Result<Self, AccessError> {
        let meta = fs::metadata(path).map_err(|e| AccessError::io(path, e))?;
        Ok(Self {
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            size: meta.size(),
        })
    }
}

/// The token in force: its digest, the file version it came from, and a
/// generation counted up at each rotation seen (sessions die with theirs).
struct Current {
    digest: [u8; 32],
    stamp: Stamp,
    generation: u64,
}

/// The token and sessions requests are checked against.
pub struct Access {
    home: PathBuf,
    allowed_hosts: Vec<String>,
    tls: bool,
    current: Mutex<Current>,
    sessions: Sessions,
}

impl Access {
    /// Access to a server on `home` (creating its token on first start),
    /// answering to `allowed_hosts` (host:port, any case).
    pub fn new(home: &Path, allowed_hosts: &[String], tls: bool) -> Result<Self, AccessError> {
        Token::load_or_create(home)?;
        // The file's version first, then its token: a rotation between the
        // two is seen at the first request, never missed.
        let stamp = Stamp::of(&token::path(home))?;
        let token = Token::load(home)?;
        Ok(Self {
            home: home.to_owned(),
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            tls,
            current: Mutex::new(Current {
                digest: token.digest(),
                stamp,
                generation: 1,
            }),
            sessions: Sessions::default(),
        })
    }

    /// The digest and generation of the token in force, re-read if the
    /// file changed since (a rotation). A token file gone or damaged
    /// fails: nobody gets in until it is fixed.
    fn current(&self) -> Result<([u8; 32], u64), AccessError> {
        let path = token::path(&self.home);
        let stamp = Stamp::of(&path)?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.stamp != stamp {
            let token = Token::load(&self.home)?;
            if token.digest() != current.digest {
                current.generation += 1;
                tracing::info!("the API token was rotated: older tokens and sessions end");
            }
            current.digest = token.digest();
            current.stamp = stamp;
        }
        Ok((current.digest, current.generation))
    }

    /// Whether `host` (a `Host` header, or an `Origin`'s host and port)
    /// names this server. Browsers leave the scheme's default port out
    /// (443 with TLS, 80 without): `name` is read as `name:443` (or `:80`).
    fn host_allowed(&self, host: &str) -> bool {
        let mut host = host.to_ascii_lowercase();
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
            && !host.ends_with(']');
        if !has_port {
            host.push_str(if self.tls { ":443" } else { ":80" });
        }
        self.allowed_hosts.contains(&host)
    }
}

/// Paths served without a token: the sign-in page and its assets, the
/// liveness check, the API description, and signing in itself.
fn is_public(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::HEAD => {
            path == "/"
                || path == "/health"
                || path == "/openapi.json"
                || path.starts_with("/assets/")
        }
        Method::POST => path == "/auth/session",
        _ => false,
    }
}

/// Whether a request of this method may change state (and so needs a
/// CSRF token when it comes with a cookie).
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The middleware: Host and Origin, then the token or session, then
/// readiness. See the module docs.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check(&state, &request) {
        Ok(()) => next.run(request).await,
        Err(problem) => {
            tracing::info!(
                method = %request.method(),
                path = request.uri().path(),
                status = problem.status.as_u16(),
                reason = %problem.detail,
                "request refused"
            );
            problem.into_response()
        }
    }
}

fn check(state: &AppState, request: &Request) -> Result<(), Problem> {
    let access = &state.access;
    let headers = request.headers();
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| Problem::forbidden("the request names no Host"))?;
    if !access.host_allowed(host) {
        return Err(Problem::forbidden(format!(
            "Host {host:?} is not this server (DNS rebinding is refused; the operator may allow a name with --allow-host)"
        )));
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let allowed = origin
            .strip_prefix(if access.tls { "https://" } else { "http://" })
            .is_some_and(|h| access.host_allowed(h));
        if !allowed {
            return Err(Problem::forbidden(format!(
                "Origin {origin:?} is not this server: cross-site requests are refused"
            )));
        }
    }
    let path = request.uri().path();
    if is_public(request.method(), path) {
        return Ok(());
    }
    let (digest, generation) = access.current().map_err(|e| {
        tracing::error!(error = %e, "the API token cannot be read: every request is refused");
        Problem::unavailable(format!("the server's token cannot be read: {e}"))
    })?;
    match credentials(headers) {
        Credentials::Bearer(given) => {
            if token::digest(given) != digest {
                return Err(Problem::unauthorized(
                    "the bearer token is not this server's",
                ));
            }
        }
        Credentials::Cookie(id) => {
            let csrf = changes_state(request.method())
                .then(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()));
            match access.sessions.check(id, generation, csrf) {
                SessionCheck::Valid => {}
                SessionCheck::BadCsrf => {
                    return Err(Problem::forbidden(format!(
                        "a request that changes state with a session cookie needs the session's CSRF token in {CSRF_HEADER}"
                    )));
                }
                SessionCheck::Unknown => {
                    return Err(Problem::unauthorized(
                        "the session has ended (expired, signed out, or the token was rotated): sign in again",
                    ));
                }
            }
        }
        Credentials::Malformed => {
            return Err(Problem::unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ));
        }
        Credentials::None => {
            return Err(Problem::unauthorized(
                "this API needs the server's token: `Authorization: Bearer <token>` (see `lion serve --print-token`)",
            ));
        }
    }
    if !*state.ready.borrow() {
        return Err(Problem::unavailable(
            "the kernel is starting (recovering unfinished tasks); retry shortly",
        ));
    }
    Ok(())
}

/// What a request presents.
enum Credentials<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
    Malformed,
    None,
}

fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        return match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            Some(token) => Credentials::Bearer(token.trim()),
            None => Credentials::Malformed,
        };
    }
    match session_cookie(headers) {
        Some(id) => Credentials::Cookie(id),
        None => Credentials::None,
    }
}

/// The session id in the request's cookies, if any.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// Signing in: the token, exchanged for a session.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignIn {
    /// The server's token (`lion serve --print-token`).
    pub token: String,
}

/// A session was opened: the cookie is set; the page keeps the CSRF token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignedIn {
    /// Echo it in `X-CSRF-Token` on every request that changes state.
    pub csrf_token: String,
    /// Seconds until the session ends.
    pub expires_in: u64,
}

/// Exchanges the token for a session cookie (for browsers, which cannot
/// put a header on an `EventSource`).
#[utoipa::path(post, path = "/auth/session", tag = "access", request_body = SignIn,
    responses((status = 201, body = SignedIn), (status = 401, body = Problem)))]
pub async fn sign_in(
    State(state): State<AppState>,
    Body(body): Body<SignIn>,
) -> Result<Response, Problem> {
    let (digest, generation) = state
        .access
        .current()
        .map_err(|e| Problem::unavailable(format!("the server's token cannot be read: {e}")))?;
    if token::digest(body.token.trim()) != digest {
        return Err(Problem::unauthorized("that is not this server's token"));
    }
    let session = state
        .access
        .sessions
        .open(generation)
        .map_err(|e| Problem::internal(e.to_string()))?;
    let secure = if state.access.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        session.id,
        session::SESSION_LIFETIME.as_secs()
    );
    let mut response = (
        StatusCode::CREATED,
        axum::Json(SignedIn {
            csrf_token: session.csrf,
            expires_in: session::SESSION_LIFETIME.as_secs(),
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    Ok(response)
}

/// Ends the session of the request's cookie (signing out).
#[utoipa::path(delete, path = "/auth/session", tag = "access",
    responses((status = 204), (status = 401, body = Problem)))]
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.access.sessions.close(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let expired = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; lion_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("lion_sessionx=abc"));
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn hosts_match_with_their_default_ports() {
        let home = tempfile::tempdir().unwrap();
        let hosts = [
            "lion.example:443".to_owned(),
            "127.0.0.1:4710".to_owned(),
            "[::1]:4710".to_owned(),
        ];
        let tls = Access::new(home.path(), &hosts, true).unwrap();
        assert!(tls.host_allowed("LION.example"));
        assert!(tls.host_allowed("lion.example:443"));
        assert!(!tls.host_allowed("lion.example:80"));
        assert!(tls.host_allowed("127.0.0.1:4710"));
        assert!(tls.host_allowed("[::1]:4710"));
        assert!(!tls.host_allowed("[::1]"));
        assert!(!tls.host_allowed("evil.example"));
    }

    #[test]
    fn only_the_sign_in_page_and_descriptions_are_public() {
        assert!(is_public(&Method::GET, "/"));
        assert!(is_public(&Method::GET, "/assets/app.js"));
        assert!(is_public(&Method::POST, "/auth/session"));
        assert!(!is_public(&Method::GET, "/elements"));
        assert!(!is_public(&Method::DELETE, "/auth/session"));
        assert!(!is_public(&Method::POST, "/health"));
    }
}
