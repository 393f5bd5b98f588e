//! Reaching the server: the connection string lion takes and the TLS it
//! speaks.
//!
//! The string is libpq's (`postgres://user:password@host:port/db?…` or
//! `key=value …`), with TLS read as lion does it — through rustls, always
//! verifying the server's certificate and name:
//!
//! - no `sslmode`, or `sslmode=disable`: plain TCP (or a Unix socket);
//! - `sslmode=prefer`: TLS when the server offers it, verified;
//! - `sslmode=require`, `verify-ca` or `verify-full`: TLS or no connection,
//!   verified (lion never takes an unverified certificate);
//! - `sslrootcert=PATH` (in a `postgres://` URL): the PEM file of the
//!   certificate authorities to trust instead of the public web's (those
//!   bundled with lion).

use std::path::PathBuf;
use std::sync::Arc;

use agentic_core::StoreError;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS every connection of a store uses (when its `sslmode` asks for
/// TLS).
pub(crate) type Tls = MakeRustlsConnect;

/// Parses `url` into tokio-postgres's settings and the TLS to use.
pub(crate) fn parse(url: &str) -> Result<(tokio_postgres::Config, Tls), StoreError> {
    let bad = |reason: String| StoreError::NotAStore {
        path: redact(url),
        reason,
    };
    let (rest, mode, root) = lion_options(url).map_err(bad)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| bad(format!("not a PostgreSQL connection string: {e}")))?;
    config.ssl_mode(mode);
    let tls = tls(root.as_ref()).map_err(bad)?;
    Ok((config, tls))
}

/// Takes out of `url` what tokio-postgres does not read as lion does:
/// `sslmode` (its libpq values mapped; absent means disable) and
/// `sslrootcert`.
fn lion_options(url: &str) -> Result<(String, SslMode, Option<PathBuf>), String> {
    let scheme = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|s| url.starts_with(s));
    if scheme.is_none() {
        // A key=value string: tokio-postgres reads its sslmode (disable,
        // prefer or require); absent, it is disable here too.
        if url.contains("sslrootcert") {
            return Err("sslrootcert needs the postgres:// form of the connection string".into());
        }
        let mode = mode_of_string(url).unwrap_or(SslMode::Disable);
        return Ok((url.to_owned(), mode, None));
    }
    let mut parsed =
        url::Url::parse(url).map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    let mut mode = SslMode::Disable;
    let mut root = None;
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "sslmode" => mode = ssl_mode(&value)?,
            "sslrootcert" => root = Some(PathBuf::from(value.as_ref())),
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), mode, root))
}

/// The mode a key=value string names, when it names one lion maps.
fn mode_of_string(text: &str) -> Option<SslMode> {
    text.split_whitespace()
        .find_map(|pair| pair.strip_prefix("sslmode="))
        .and_then(|value| ssl_mode(value).ok())
}

/// libpq's `sslmode` values, as lion reads them.
fn ssl_mode(value: &str) -> Result<SslMode, String> {
    match value {
        "disable" | "allow" => Ok(SslMode::Disable),
        "prefer" => Ok(SslMode::Prefer),
        "require" | "verify-ca" | "verify-full" => Ok(SslMode::Require),
        other => Err(format!("unknown sslmode {other:?}")),
    }
}

/// A rustls client trusting the authorities in `root`, or the bundled
/// public ones.
fn tls(root: Option<&PathBuf>) -> Result<Tls, String> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect())
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "sslrootcert {}: no certificate in it",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// What a connection string that did not parse can be called in a
/// message: only its scheme (anything after it may be a password).
pub(crate) fn redact(url: &str) -> String {
    for scheme in ["postgresql://", "postgres://"] {
        if url.starts_with(scheme) {
            return format!("{scheme}…");
        }
    }
    "a connection string".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_read_as_lion_reads_them() {
        let (rest, mode, root) = lion_options(
            "postgres://u:p@db:5432/lion?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(mode, SslMode::Require);
        assert_eq!(root, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(rest, "postgres://u:p@db:5432/lion?application_name=x");
        let (rest, mode, root) = lion_options("postgres://db/lion").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://db/lion", SslMode::Disable, None)
        );
        assert!(lion_options("postgres://db/lion?sslmode=sometimes").is_err());
        let (_, mode, _) = lion_options("host=db sslmode=require").unwrap();
        assert_eq!(mode, SslMode::Require);
        assert!(lion_options("host=db sslrootcert=/x").is_err());
    }
}
