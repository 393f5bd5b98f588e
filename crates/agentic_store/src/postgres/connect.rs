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
//! - `sslrootcert=PATH`: the PEM file of the certificate authorities to
//!   trust instead of the public web's (those bundled with lion).
//!
//! Both are read from the query of a `postgres://` URL, the rest of which is
//! passed on byte for byte; a `key=value` string connects without TLS, and
//! is refused if it names either.

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
/// `sslrootcert`. Every other byte of the string is left as it was (it is
/// cut where tokio-postgres's own parser cuts it: the query starts at the
/// first `?` after the user part, which ends at the first `@`).
fn lion_options(url: &str) -> Result<(String, SslMode, Option<PathBuf>), String> {
    let Some(scheme) = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|s| url.starts_with(s))
    else {
        // A key=value string: TLS needs the URL form, where lion reads it.
        if url.contains("sslmode") || url.contains("sslrootcert") {
            return Err("TLS settings (sslmode, sslrootcert) need the postgres:// form".into());
        }
        return Ok((url.to_owned(), SslMode::Disable, None));
    };
    let rest = &url[scheme.len()..];
    let host_at = rest.find('@').map_or(0, |at| at + 1);
    let Some(query_at) = rest[host_at..].find('?').map(|q| host_at + q) else {
        return Ok((url.to_owned(), SslMode::Disable, None));
    };
    let mut mode = SslMode::Disable;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in rest[query_at + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| format!("{key} is not UTF-8"))
        };
        match key {
            "sslmode" => mode = ssl_mode(&decoded()?)?,
            "sslrootcert" => root = Some(PathBuf::from(decoded()?)),
            _ => kept.push(pair),
        }
    }
    let mut out = format!("{scheme}{}", &rest[..query_at]);
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok((out, mode, root))
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
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // PostgreSQL 17 expects it (and requires it with sslnegotiation=direct).
    config.alpn_protocols = vec![b"postgresql".to_vec()];
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
            "postgres://u:p@db:5432/lion?sslmode=verify-full&sslrootcert=/etc/a%2Bb.pem&application_name=my%20app",
        )
        .unwrap();
        assert_eq!(mode, SslMode::Require);
        assert_eq!(root, Some(PathBuf::from("/etc/a+b.pem")));
        assert_eq!(
            rest,
            "postgres://u:p@db:5432/lion?application_name=my%20app"
        );
        let (rest, mode, root) = lion_options("postgres://db/lion").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://db/lion", SslMode::Disable, None)
        );
        assert!(lion_options("postgres://db/lion?sslmode=sometimes").is_err());
        assert!(lion_options("host=db sslmode=require").is_err());
        assert_eq!(lion_options("host=db user=u").unwrap().1, SslMode::Disable);
    }

    #[test]
    fn everything_else_of_the_string_is_kept_as_it_was() {
        for url in [
            "postgres://user@/db?host=/var/run/postgresql",
            "postgres://h1:5432,h2:5433/db?sslmode=require",
            "postgres://u:pa/ss?w#rd@db/lion?options=-c%20search_path%3Dx&sslmode=prefer",
            "postgresql://[::1]:5432/db?connect_timeout=3",
        ] {
            let (rest, _, _) = lion_options(url).unwrap();
            let without = url
                .replace("?sslmode=require", "")
                .replace("&sslmode=prefer", "");
            assert_eq!(rest, without, "{url}");
            rest.parse::<tokio_postgres::Config>()
                .unwrap_or_else(|e| panic!("{rest}: {e}"));
        }
    }
}
