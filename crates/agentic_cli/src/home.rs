//! Finding the home directory and opening its store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentic_store::{SqliteOptions, SqliteStore};
use anyhow::Result;

/// Default home when neither `--home` nor `LION_HOME` is given.
const DEFAULT_HOME: &str = ".lion";

/// Environment variable overriding how long a commit waits for another
/// process's lock (milliseconds).
const BUSY_TIMEOUT_ENV: &str = "LION_BUSY_TIMEOUT_MS";

/// The home to use: `--home`/`LION_HOME` (clap fills both), else `./.lion`.
pub fn resolve(home: Option<&Path>) -> PathBuf {
    home.map_or_else(|| PathBuf::from(DEFAULT_HOME), Path::to_path_buf)
}

/// Opens (creating on first use) the store of `home`.
pub fn open(home: &Path) -> Result<SqliteStore> {
    if home.exists() && !home.is_dir() {
        anyhow::bail!("the home {} is not a directory", home.display());
    }
    let mut options = SqliteOptions::default();
    if let Ok(ms) = std::env::var(BUSY_TIMEOUT_ENV) {
        let ms: u64 = ms.parse().map_err(|_| {
            anyhow::anyhow!("{BUSY_TIMEOUT_ENV} must be a number of milliseconds, got {ms:?}")
        })?;
        options.busy_timeout = Duration::from_millis(ms);
    }
    Ok(SqliteStore::open(home, options)?)
}
