//! What a read-write directory holds, across calls: `max_write_bytes`
//! bounds one call, so without this a plugin called N times could write N
//! times its quota and fill the disk.
//!
//! Each granted read-write directory has a [`DirLedger`] per sandbox (one
//! per process in practice), keyed by its host path, so plugins granted
//! the same directory share it. It is measured when a plugin granted it is
//! first called: a walk that counts every entry as [`CREATED_ENTRY_BYTES`]
//! plus a regular file's length, follows no symbolic link, and stops at
//! [`MAX_MEASURED_ENTRIES`] (a directory with more is not measured, and
//! writes into it are refused, saying so). From then on every byte a call
//! writes into it (and every entry it opens to create) is added to the
//! ledger before it reaches the disk; past the plugin's `max_dir_bytes`
//! the write fails and the call ends as `write_limit`.
//!
//! Charges over-count: an overwrite is charged as new bytes, opening an
//! existing file with `create` as a new entry, and a deleted file is not
//! credited. So a call that starts while no call writes into the directory
//! and finds the ledger past half its limit measures it again (then the
//! disk is what the calls left): a plugin that rewrites its state file
//! runs for ever, one that keeps what it writes is stopped at its limit.
//!
//! What it does not see: other processes (or anything else on the host)
//! writing into the directory at the same time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use agentic_core::plugin::{CallFailure, FailureKind};

use crate::bounds::CREATED_ENTRY_BYTES;

/// Most entries (files, directories, links, at any depth) the measuring
/// walk visits: each is a `stat`, so this bounds the first call's wait (a
/// tenth of a second to a few seconds). A directory holding more is not
/// measured, and writes into it are refused.
pub(crate) const MAX_MEASURED_ENTRIES: u64 = 100_000;

/// The ledgers of one sandbox, by host path.
#[derive(Default)]
pub(crate) struct DirLedgers {
    ledgers: Mutex<HashMap<PathBuf, Arc<DirLedger>>>,
}

impl DirLedgers {
    /// The ledger of the directory at `path` (the grant's resolved path).
    pub(crate) fn get(&self, path: &Path) -> Arc<DirLedger> {
        self.ledgers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(path.to_owned())
            .or_insert_with(|| {
                Arc::new(DirLedger {
                    path: path.to_owned(),
                    measured: tokio::sync::Mutex::new(None),
                    known: Mutex::new(None),
                    bytes: AtomicU64::new(0),
                    writers: AtomicU32::new(0),
                })
            })
            .clone()
    }
}

/// What the measuring walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measured {
    /// The directory held this many bytes (entries counted as blocks).
    Bytes(u64),
    /// It held more entries than the walk visits.
    TooManyEntries,
}

/// One read-write directory: what it holds, as this process knows it.
pub(crate) struct DirLedger {
    path: PathBuf,
    /// The last walk's result, locked while a call starts writing (so a
    /// walk never runs while a call may write).
    measured: tokio::sync::Mutex<Option<Measured>>,
    /// The last walk's result, for charges (which cannot wait).
    known: Mutex<Option<Measured>>,
    /// What it held when measured, plus what calls wrote since.
    bytes: AtomicU64,
    /// Calls that may write into it now.
    writers: AtomicU32,
}

/// A call's right to write into a directory: while it is held the
/// directory is not measured again.
pub(crate) struct Writing(Arc<DirLedger>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DirLedger {
    /// Starts a call that may write into the directory under `limit`
    /// (`max_dir_bytes`): measures it first if it never was, or if no call
    /// writes into it now and the ledger is past half of `limit` (charges
    /// over-count; see the module documentation). Concurrent starts wait
    /// for the one walk.
    pub(crate) async fn start_writing(self: &Arc<Self>, limit: u64) -> Writing {
        let mut measured = self.measured.lock().await;
        let quiet = self.writers.load(Ordering::SeqCst) == 0;
        let remeasure = match *measured {
            None => true,
            Some(Measured::Bytes(_)) => quiet && self.bytes.load(Ordering::SeqCst) > limit / 2,
            // Each walk of such a directory costs the full entry limit.
            Some(Measured::TooManyEntries) => false,
        };
        if remeasure {
            let path = self.path.clone();
            let now = tokio::task::spawn_blocking(move || measure(&path, MAX_MEASURED_ENTRIES))
                .await
                // A walk that panicked measured nothing: refuse writes.
                .unwrap_or(Measured::TooManyEntries);
            if let Measured::Bytes(bytes) = now {
                self.bytes.store(bytes, Ordering::SeqCst);
                tracing::debug!(
                    path = %self.path.display(),
                    bytes,
                    "measured a read-write plugin directory"
                );
            }
            *measured = Some(now);
            *self.known.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
        }
        self.writers.fetch_add(1, Ordering::SeqCst);
        Writing(self.clone())
    }

    /// Adds `bytes` written into the directory (seen by the plugin at
    /// `guest`); refused, nothing added, past `limit` (`max_dir_bytes`).
    pub(crate) fn charge(&self, bytes: u64, limit: u64, guest: &str) -> Result<(), CallFailure> {
        let path = self.path.display();
        let known = *self.known.lock().unwrap_or_else(PoisonError::into_inner);
        match known {
            Some(Measured::Bytes(_)) => {}
            Some(Measured::TooManyEntries) => {
                return Err(CallFailure::new(
                    FailureKind::WriteLimit,
                    format!(
                        "the directory {guest} ({path}) holds more than {MAX_MEASURED_ENTRIES} \
                         entries, too many to measure (MAX_MEASURED_ENTRIES): writes into it are \
                         refused"
                    ),
                ));
            }
            None => {
                return Err(CallFailure::new(
                    FailureKind::WriteLimit,
                    format!("the directory {guest} ({path}) was not measured: writes refused"),
                ));
            }
        }
        self.bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .map(drop)
            .map_err(|used| {
                CallFailure::new(
                    FailureKind::WriteLimit,
                    format!(
                        "the directory {guest} ({path}) would hold {} bytes, over its {limit} \
                         byte limit (max_dir_bytes: what it held when first measured in this \
                         process plus what calls wrote since)",
                        used.saturating_add(bytes)
                    ),
                )
            })
    }
}

/// Walks the directory at `root`: every entry counts
/// [`CREATED_ENTRY_BYTES`], a regular file its length too; symbolic links
/// are not followed, entries that cannot be read count as entries. Gives
/// up past `max_entries`.
pub(crate) fn measure(root: &Path, max_entries: u64) -> Measured {
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing {
            entries += 1;
            if entries > max_entries {
                return Measured::TooManyEntries;
            }
            bytes = bytes.saturating_add(CREATED_ENTRY_BYTES);
            // `DirEntry::metadata` does not follow a symbolic link.
            match entry.and_then(|e| Ok((e.path(), e.metadata()?))) {
                Ok((path, meta)) if meta.is_dir() => pending.push(path),
                Ok((_, meta)) if meta.is_file() => bytes = bytes.saturating_add(meta.len()),
                _ => {}
            }
        }
    }
    Measured::Bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_counts_entries_and_file_bytes_and_follows_no_link() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("a"), vec![0u8; 1000]).expect("a");
        std::fs::create_dir(root.path().join("sub")).expect("sub");
        std::fs::write(root.path().join("sub/b"), vec![0u8; 10]).expect("b");
        std::os::unix::fs::symlink("/", root.path().join("root")).expect("link");
        // a, sub, sub/b and the link: four entries, 1010 bytes of files.
        assert_eq!(
            measure(root.path(), 100),
            Measured::Bytes(4 * CREATED_ENTRY_BYTES + 1010)
        );
        assert_eq!(measure(root.path(), 4), measure(root.path(), 100));
        assert_eq!(measure(root.path(), 3), Measured::TooManyEntries);
    }

    #[tokio::test]
    async fn charges_past_the_limit_are_refused_and_add_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("a"), vec![0u8; 904]).expect("a");
        let ledgers = DirLedgers::default();
        let ledger = ledgers.get(root.path());
        assert!(ledger.charge(1, 10_000, "/data").is_err(), "not measured");
        let writing = ledger.start_writing(10_000).await;
        // Holds 4096 + 904 = 5000.
        ledger.charge(4000, 10_000, "/data").expect("9000");
        let refused = ledger.charge(1001, 10_000, "/data").unwrap_err();
        assert_eq!(refused.kind, FailureKind::WriteLimit);
        assert!(refused.message.contains("10001 bytes"), "{refused}");
        assert!(refused.message.contains("max_dir_bytes"), "{refused}");
        ledger
            .charge(1000, 10_000, "/data")
            .expect("exactly the limit");
        // The same path, the same ledger.
        assert!(ledgers.get(root.path()).charge(1, 10_000, "/x").is_err());
        drop(writing);
    }

    #[tokio::test]
    async fn a_quiet_ledger_past_half_its_limit_is_measured_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let ledger = DirLedgers::default().get(root.path());
        let limit = 100_000;
        // Writes over-counted (an overwrite, say): 60 000 charged, nothing
        // on the disk.
        let first = ledger.start_writing(limit).await;
        ledger.charge(60_000, limit, "/data").expect("under");
        // While a call writes, another start measures nothing.
        let second = ledger.start_writing(limit).await;
        assert!(ledger.charge(50_000, limit, "/data").is_err());
        drop((first, second));
        // Quiet and past half: measured again, the disk holds nothing.
        let _third = ledger.start_writing(limit).await;
        ledger
            .charge(90_000, limit, "/data")
            .expect("measured again");
    }
}
