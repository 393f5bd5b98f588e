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

/// Opens (creating on first use) the store of `home`. A home that lost its
/// log, or whose `HEAD` disagrees with it, is refused here, before anything
/// is written (exit code 3, see `main`).
pub fn open(home: &Path) -> Result<SqliteStore> {
    not_a_file(home)?;
    Ok(SqliteStore::open(home, options()?)?)
}

/// Opens the store of `home` for checking it (`events verify`, `replay`):
/// no file of the home is created or changed, whatever state it is in.
pub fn open_read_only(home: &Path) -> Result<SqliteStore> {
    not_a_file(home)?;
    Ok(SqliteStore::open_read_only(home, options()?)?)
}

/// Refuses a home path that names something other than a directory.
fn not_a_file(home: &Path) -> Result<()> {
    if home.exists() && !home.is_dir() {
        anyhow::bail!("the home {} is not a directory", home.display());
    }
    Ok(())
}

/// Store options, with the busy timeout from the environment if set.
fn options() -> Result<SqliteOptions> {
    let mut options = SqliteOptions::default();
    if let Ok(ms) = std::env::var(BUSY_TIMEOUT_ENV) {
        let ms: u64 = ms.parse().map_err(|_| {
            anyhow::anyhow!("{BUSY_TIMEOUT_ENV} must be a number of milliseconds, got {ms:?}")
        })?;
        options.busy_timeout = Duration::from_millis(ms);
    }
    Ok(options)
}
