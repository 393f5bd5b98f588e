//! Finding the home directory, choosing where its log is, and opening it.
//!
//! The log is the SQLite store in the home by default. `--store
//! postgres://…` (or `LION_STORE`, or `url` under `[store]` in the home's
//! `config.toml`) puts it in a PostgreSQL database instead, which kernels
//! on several machines share; the home then keeps only what stays per
//! machine (its config, the API token, the live socket, plugin files).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentic_core::EventStore;
use agentic_core::State;
use agentic_store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, VerifyReport};
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

/// Default home when neither `--home` nor `LION_HOME` is given.
const DEFAULT_HOME: &str = ".lion";

/// Environment variable overriding how long a commit waits for another
/// process's lock (milliseconds).
const BUSY_TIMEOUT_ENV: &str = "LION_BUSY_TIMEOUT_MS";

/// The home to use: `--home`/`LION_HOME` (clap fills both), else `./.lion`.
pub fn resolve(home: Option<&Path>) -> PathBuf {
    home.map_or_else(|| PathBuf::from(DEFAULT_HOME), Path::to_path_buf)
}

/// Where the log is.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreAt {
    /// The SQLite store in the home directory.
    Home,
    /// A PostgreSQL database (its URL, as given).
    Postgres(String),
}

impl std::fmt::Debug for StoreAt {
    /// Never shows the URL, which may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreAt::Home => f.write_str("Home"),
            StoreAt::Postgres(_) => f.write_str("Postgres(…)"),
        }
    }
}

/// `[store]` of the home's `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The shared store's URL (`postgres://…`).
    pub url: Option<String>,
}

/// The part of `config.toml` this module reads.
#[derive(Debug, Default, Deserialize)]
struct StoreConfig {
    #[serde(default)]
    store: StoreSection,
}

/// Where the log of `home` is: `--store`/`LION_STORE` (clap fills both;
/// empty is unset, as `LION_STORE=` says), else `[store] url` in the home's
/// `config.toml`, else the home itself.
pub fn store_at(home: &Path, flag: Option<&str>) -> Result<StoreAt> {
    not_a_file(home)?;
    let url = match flag.filter(|url| !url.is_empty()) {
        Some(url) => Some(url.to_owned()),
        None => configured_url(home)?,
    };
    match url {
        None => Ok(StoreAt::Home),
        Some(url) => Ok(StoreAt::Postgres(shared_url(&url)?)),
    }
}

/// `url` if it names a shared (PostgreSQL) store.
pub fn shared_url(url: &str) -> Result<String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_owned());
    }
    bail!(
        "the store must be a postgres:// URL (the home's own SQLite store is the default), got {:?}",
        url.split('@').next_back().unwrap_or_default()
    )
}

/// `[store] url` from the home's `config.toml`, if it has one.
fn configured_url(home: &Path) -> Result<Option<String>> {
    let path = home.join("config.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    let config: StoreConfig = toml::from_str(&text).map_err(|e| {
        anyhow!(
            "{}: {}",
            path.display(),
            e.message().lines().next().unwrap_or("invalid TOML")
        )
    })?;
    Ok(config.store.url)
}

/// Opens (creating on first use) the log at `at`, for a kernel or for a
/// command that shows what it reads (a shared store then answers a read
/// only once what it saw is durable). A home that lost its log, or whose
/// `HEAD` disagrees with it, is refused here, before anything is written
/// (exit code 3, see `main`).
pub async fn open(home: &Path, at: &StoreAt, kernel: bool) -> Result<Arc<dyn EventStore>> {
    Ok(match at {
        StoreAt::Home => Arc::new(open_sqlite(home)?),
        StoreAt::Postgres(url) => {
            // The home still holds what stays per machine (the kernel's
            // lock, the live socket, plugin files), as the SQLite store's
            // opening would have made it.
            not_a_file(home)?;
            std::fs::create_dir_all(home)
                .with_context(|| format!("cannot create the home {}", home.display()))?;
            let options = PostgresOptions {
                settle_reads: !kernel,
                ..PostgresOptions::default()
            };
            Arc::new(PostgresStore::open(url, options).await?)
        }
    })
}

/// Opens (creating on first use) the SQLite store of the home at `path`.
pub fn open_sqlite(path: &Path) -> Result<SqliteStore> {
    not_a_file(path)?;
    Ok(SqliteStore::open(path, options()?)?)
}

/// Opens (creating its tables on first use) the PostgreSQL store at `url`.
pub async fn open_postgres(url: &str) -> Result<PostgresStore> {
    Ok(PostgresStore::open(url, PostgresOptions::default()).await?)
}

/// A store opened for checking it (`events verify`, `replay`, and both
/// ends of `store copy`).
pub enum Checked {
    /// A home's SQLite store ([`Checked::open`] opens it read-only: no file
    /// of the home is created or changed, whatever state it is in).
    Home(SqliteStore),
    /// A shared PostgreSQL store.
    Postgres(PostgresStore),
}

impl Checked {
    /// Opens the log at `at` for checking.
    pub async fn open(home: &Path, at: &StoreAt) -> Result<Self> {
        Ok(match at {
            StoreAt::Home => {
                not_a_file(home)?;
                Checked::Home(SqliteStore::open_read_only(home, options()?)?)
            }
            StoreAt::Postgres(url) => {
                Checked::Postgres(PostgresStore::open(url, PostgresOptions::default()).await?)
            }
        })
    }

    /// The store, for reads.
    pub fn store(&self) -> &dyn EventStore {
        match self {
            Checked::Home(store) => store,
            Checked::Postgres(store) => store,
        }
    }

    /// Verifies the whole chain and the recorded head.
    pub async fn verify(&self) -> Result<VerifyReport, agentic_core::StoreError> {
        match self {
            Checked::Home(store) => store.verify(),
            Checked::Postgres(store) => store.verify().await,
        }
    }

    /// Folds the whole log afresh (chain checked); the state and the number
    /// of events.
    pub async fn replay(&self) -> Result<(State, u64), agentic_core::StoreError> {
        match self {
            Checked::Home(store) => store.replay(true),
            Checked::Postgres(store) => store.replay().await,
        }
    }
}

/// Refuses a home path that names something other than a directory.
fn not_a_file(home: &Path) -> Result<()> {
    if home.exists() && !home.is_dir() {
        bail!("the home {} is not a directory", home.display());
    }
    Ok(())
}

/// Store options, with the busy timeout from the environment if set.
fn options() -> Result<SqliteOptions> {
    let mut options = SqliteOptions::default();
    if let Ok(ms) = std::env::var(BUSY_TIMEOUT_ENV) {
        let ms: u64 = ms.parse().map_err(|_| {
            anyhow!("{BUSY_TIMEOUT_ENV} must be a number of milliseconds, got {ms:?}")
        })?;
        options.busy_timeout = Duration::from_millis(ms);
    }
    Ok(options)
}
