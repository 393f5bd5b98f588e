//! The API token: a secret kept in the home (`serve.token`), readable by
//! its owner only, created on first use and replaced by rotation.
//!
//! The server keeps only the token's SHA-256, and compares the digests of
//! what clients present with it. A rotation writes a new file in place of
//! the old one (atomically: a reader sees one token or the other, never
//! half of one); a running server notices the new file at the next request
//! and from then on refuses the old token and every session made with it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::AccessError;

/// File name of the token inside a home.
pub const TOKEN_FILE: &str = "serve.token";

/// What every token starts with, so a leaked one is recognisable (secret
/// scanners look for such prefixes).
const PREFIX: &str = "lion_";

/// Random bytes in a token: 256 bits, beyond guessing.
const TOKEN_BYTES: usize = 32;

/// The API token of a home.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// The token's text, as clients send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its SHA-256, what the server compares with.
    pub(crate) fn digest(&self) -> [u8; 32] {
        digest(&self.0)
    }

    /// A new random token.
    fn generate() -> Result<Self, AccessError> {
        Ok(Self(format!("{PREFIX}{}", random_hex(TOKEN_BYTES)?)))
    }

    /// The token of `home`, created (owner-only) if the home has none yet.
    /// A token file others may read is refused: whoever could read it
    /// could act as its owner.
    pub fn load_or_create(home: &Path) -> Result<Self, AccessError> {
        match Self::load(home) {
            Err(AccessError::Missing(_)) => Self::rotate(home),
            other => other,
        }
    }

    /// The token of `home`; fails when there is none.
    pub fn load(home: &Path) -> Result<Self, AccessError> {
        let path = path(home);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AccessError::Missing(path));
            }
            Err(e) => return Err(AccessError::io(&path, e)),
        };
        if meta.mode() & 0o077 != 0 {
            return Err(AccessError::Exposed {
                path,
                mode: meta.mode() & 0o777,
            });
        }
        let text = fs::read_to_string(&path).map_err(|e| AccessError::io(&path, e))?;
        let text = text.trim();
        if !text.starts_with(PREFIX) || text.len() != PREFIX.len() + 2 * TOKEN_BYTES {
            return Err(AccessError::Malformed(path));
        }
        Ok(Self(text.to_owned()))
    }

    /// Replaces the token of `home` with a new one (creating it if there
    /// was none) and returns it.
    pub fn rotate(home: &Path) -> Result<Self, AccessError> {
        let token = Self::generate()?;
        let path = path(home);
        fs::create_dir_all(home).map_err(|e| AccessError::io(home, e))?;
        // A temporary file is created owner-only (0600) and renamed over
        // the old token: never a moment where the token is readable by
        // others, or half written.
        let mut file = NamedTempFile::new_in(home).map_err(|e| AccessError::io(home, e))?;
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| AccessError::io(&path, e))?;
        writeln!(file, "{}", token.0).map_err(|e| AccessError::io(&path, e))?;
        file.as_file()
            .sync_all()
            .map_err(|e| AccessError::io(&path, e))?;
        file.persist(&path)
            .map_err(|e| AccessError::io(&path, e.error))?;
        Ok(token)
    }
}

/// Where the token of `home` is kept.
pub fn path(home: &Path) -> PathBuf {
    home.join(TOKEN_FILE)
}

/// SHA-256 of `text`.
pub(crate) fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// `bytes` random bytes from the OS, as hex.
pub(crate) fn random_hex(bytes: usize) -> Result<String, AccessError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| AccessError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_owner_only_and_read_back() {
        let home = tempfile::tempdir().unwrap();
        let token = Token::load_or_create(home.path()).unwrap();
        let mode = fs::metadata(path(home.path())).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Token::load_or_create(home.path()).unwrap(), token);
        assert!(token.expose().starts_with(PREFIX));
    }

    #[test]
    fn rotation_replaces_the_token() {
        let home = tempfile::tempdir().unwrap();
        let first = Token::load_or_create(home.path()).unwrap();
        let second = Token::rotate(home.path()).unwrap();
        assert_ne!(first, second);
        assert_eq!(Token::load(home.path()).unwrap(), second);
    }

    #[test]
    fn a_token_others_can_read_is_refused() {
        let home = tempfile::tempdir().unwrap();
        Token::load_or_create(home.path()).unwrap();
        fs::set_permissions(path(home.path()), fs::Permissions::from_mode(0o644)).unwrap();
        let err = Token::load(home.path()).unwrap_err().to_string();
        assert!(err.contains("0644"), "{err}");
    }

    #[test]
    fn a_damaged_token_file_is_refused_not_replaced() {
        let home = tempfile::tempdir().unwrap();
        Token::load_or_create(home.path()).unwrap();
        fs::write(path(home.path()), "not a token").unwrap();
        let err = Token::load_or_create(home.path()).unwrap_err();
        assert!(matches!(err, AccessError::Malformed(_)), "{err}");
        assert_eq!(
            fs::read_to_string(path(home.path())).unwrap(),
            "not a token"
        );
    }
}
