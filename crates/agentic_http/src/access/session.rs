//! Browser sessions: a token exchanged for a random session id, kept in an
//! HttpOnly, SameSite=Strict cookie, with a CSRF token the page must echo
//! in a header on every request that changes something.
//!
//! Sessions live in memory only (a restart signs everyone out), are bounded
//! in number and age, and die with the token that made them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::AccessError;
use super::token::{digest, random_hex};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "lion_session";

/// Header carrying the CSRF token of a cookie-authenticated request.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Sessions kept at once: a browser or two per operator is the use; the
/// oldest is dropped beyond this, so a token holder signing in in a loop
/// cannot grow the server's memory.
const MAX_SESSIONS: usize = 256;

/// How long a session lasts: a working day.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Random bytes in a session id and in a CSRF token.
const SECRET_BYTES: usize = 32;

/// A new session's secrets, to hand to the browser.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Goes into the cookie.
    pub id: String,
    /// Goes into the page, which echoes it in [`CSRF_HEADER`].
    pub csrf: String,
}

struct Session {
    /// SHA-256 of the CSRF token.
    csrf: [u8; 32],
    /// The token generation it was made under.
    generation: u64,
    created: Instant,
}

/// The live sessions, keyed by the SHA-256 of their ids (a memory dump
/// does not hand out cookies).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

/// What a session cookie turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    /// A live session whose CSRF token matched (or was not needed).
    Valid,
    /// A live session, but the CSRF token was missing or wrong.
    BadCsrf,
    /// No such session (never made, expired, signed out, or made with a
    /// token since rotated).
    Unknown,
}

impl Sessions {
    /// Opens a session under token generation `generation`.
    pub fn open(&self, generation: u64) -> Result<NewSession, AccessError> {
        let new = NewSession {
            id: random_hex(SECRET_BYTES)?,
            csrf: random_hex(SECRET_BYTES)?,
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME && s.generation == generation);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            digest(&new.id),
            Session {
                csrf: digest(&new.csrf),
                generation,
                created: Instant::now(),
            },
        );
        Ok(new)
    }

    /// Checks session `id` under the current token generation; `csrf` is
    /// the header's value when the request changes state (`None` when it
    /// needs none).
    pub fn check(&self, id: &str, generation: u64, csrf: Option<Option<&str>>) -> SessionCheck {
        let key = digest(id);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(session) = map.get(&key) else {
            return SessionCheck::Unknown;
        };
        if session.generation != generation || session.created.elapsed() >= SESSION_LIFETIME {
            map.remove(&key);
            return SessionCheck::Unknown;
        }
        match csrf {
            None => SessionCheck::Valid,
            Some(Some(given)) if digest(given) == session.csrf => SessionCheck::Valid,
            Some(_) => SessionCheck::BadCsrf,
        }
    }

    /// Ends session `id`, if it exists.
    pub fn close(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&digest(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_needs_its_csrf_token_to_change_state() {
        let sessions = Sessions::default();
        let s = sessions.open(1).unwrap();
        assert_eq!(sessions.check(&s.id, 1, None), SessionCheck::Valid);
        assert_eq!(
            sessions.check(&s.id, 1, Some(Some(&s.csrf))),
            SessionCheck::Valid
        );
        assert_eq!(sessions.check(&s.id, 1, Some(None)), SessionCheck::BadCsrf);
        assert_eq!(
            sessions.check(&s.id, 1, Some(Some("nope"))),
            SessionCheck::BadCsrf
        );
    }

    #[test]
    fn rotation_and_sign_out_end_sessions() {
        let sessions = Sessions::default();
        let s = sessions.open(1).unwrap();
        assert_eq!(sessions.check(&s.id, 2, None), SessionCheck::Unknown);
        let s = sessions.open(2).unwrap();
        sessions.close(&s.id);
        assert_eq!(sessions.check(&s.id, 2, None), SessionCheck::Unknown);
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open(1).unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.open(1).unwrap();
        }
        assert_eq!(sessions.check(&first.id, 1, None), SessionCheck::Unknown);
        assert_eq!(sessions.map.lock().unwrap().len(), MAX_SESSIONS);
    }
}
