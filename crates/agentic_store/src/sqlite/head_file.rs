//! The `HEAD` file: the newest committed (seq, hash), kept outside the log so
//! that verification can tell a log whose newest records were cut off.
//!
//! It is written after commits, never before, so it may lag the log but
//! never leads it. A recorder thread ([`spawn_recorder`]) writes it off the
//! writer's critical path, the newest head at most every 50 ms under load
//! and at once when the store closes. Several processes share a home: a lock file serialises
//! writers, and a head only ever moves forward. The file is replaced by an
//! atomic rename; it is not fsynced (that would double the cost of each
//! commit), so after a power cut it may lag further — which verification
//! allows — but it is never half-written.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agentic_core::{ChainHead, StoreError};
use tracing::warn;

/// Prefix of the temporary file a new head is written to before the rename.
pub const TMP_PREFIX: &str = "HEAD.tmp.";

/// Reader and writer of one home's `HEAD` file.
#[derive(Debug)]
pub struct HeadFile {
    path: PathBuf,
    lock: File,
}

impl HeadFile {
    /// Opens the head file of a home (creating its lock file).
    pub fn open(path: PathBuf) -> Result<Self, StoreError> {
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, &e))?;
        Ok(Self { path, lock })
    }

    /// The recorded head, `None` if no head was ever written.
    pub fn read(&self) -> Result<Option<ChainHead>, StoreError> {
        read(&self.path)
    }

    /// Runs `f` holding the home's lock file (`HEAD.lock`), which serialises
    /// head writers and openers creating the database, across processes.
    pub fn exclusive<R>(&self, f: impl FnOnce() -> Result<R, StoreError>) -> Result<R, StoreError> {
        self.lock.lock().map_err(|e| io_error(&self.path, &e))?;
        let result = f();
        let unlocked = self.lock.unlock().map_err(|e| io_error(&self.path, &e));
        result.and_then(|r| unlocked.map(|()| r))
    }

    /// Records `head` unless the file already records a newer one.
    pub fn advance(&self, head: ChainHead) -> Result<(), StoreError> {
        self.exclusive(|| self.advance_locked(head))
    }

    fn advance_locked(&self, head: ChainHead) -> Result<(), StoreError> {
        if matches!(self.read(), Ok(Some(current)) if current.seq >= head.seq) {
            return Ok(());
        }
        let tmp = self
            .path
            .with_file_name(format!("{TMP_PREFIX}{}", std::process::id()));
        let mut f = File::create(&tmp).map_err(|e| io_error(&tmp, &e))?;
        f.write_all(head.to_line().as_bytes())
            .map_err(|e| io_error(&tmp, &e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io_error(&self.path, &e))
    }
}

/// Shortest time between two writes of `HEAD` by one recorder. Replacing the
/// file (a new inode, a rename) costs a few hundred microseconds of kernel
/// work; under load, writing it after every commit took CPU from the
/// appenders the commit had just released. `HEAD` may lag the log anyway.
const MIN_RECORD_INTERVAL: Duration = Duration::from_millis(50);

/// Starts the thread that records the heads sent to it: the newest one, at
/// most every [`MIN_RECORD_INTERVAL`]. When the sender is dropped it records
/// the last head at once and stops.
pub fn spawn_recorder(
    head_file: HeadFile,
) -> Result<(mpsc::Sender<ChainHead>, JoinHandle<()>), StoreError> {
    let (tx, rx) = mpsc::channel::<ChainHead>();
    let handle = std::thread::Builder::new()
        .name("lion-head-recorder".into())
        .spawn(move || {
            let mut pending: Option<ChainHead> = None;
            let mut last_write: Option<Instant> = None;
            loop {
                // Wait for a head, or until the pending one may be written.
                let received = match (pending, last_write) {
                    (None, _) => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    (Some(_), Some(at)) => match MIN_RECORD_INTERVAL.checked_sub(at.elapsed()) {
                        Some(wait) => rx.recv_timeout(wait),
                        None => Err(RecvTimeoutError::Timeout),
                    },
                    (Some(_), None) => Err(RecvTimeoutError::Timeout),
                };
                match received {
                    // Heads arrive in commit order: a newer one replaces the pending one.
                    Ok(head) => pending = Some(head),
                    Err(RecvTimeoutError::Timeout) => {
                        record(&head_file, pending.take());
                        last_write = Some(Instant::now());
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        record(&head_file, pending.take());
                        return;
                    }
                }
            }
        })
        .map_err(|e| StoreError::Backend(format!("cannot start the HEAD recorder: {e}")))?;
    Ok((tx, handle))
}

/// Records `head`, if any; a failure only makes `HEAD` lag, so it is logged.
fn record(head_file: &HeadFile, head: Option<ChainHead>) {
    if let Some(head) = head
        && let Err(e) = head_file.advance(head)
    {
        warn!(error = %e, "cannot record HEAD; verification will see it lag");
    }
}

/// Reads a `HEAD` file: `None` if absent, an error if unreadable or malformed.
pub fn read(path: &Path) -> Result<Option<ChainHead>, StoreError> {
    match fs::read_to_string(path) {
        Ok(text) => ChainHead::parse_line(&text)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt {
                path: path.display().to_string(),
                reason: "HEAD is not \"<seq> <sha256 hex>\"".into(),
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, &e)),
    }
}

pub(crate) fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentic_core::Hash;

    #[test]
    fn only_moves_forward() {
        let dir = tempfile::tempdir().expect("tempdir");
        let head = HeadFile::open(dir.path().join("HEAD")).expect("open");
        assert_eq!(head.read().expect("read"), None);
        let h5 = ChainHead {
            seq: 5,
            hash: Hash([5; 32]),
        };
        let h3 = ChainHead {
            seq: 3,
            hash: Hash([3; 32]),
        };
        head.advance(h5).expect("advance");
        head.advance(h3).expect("stale advance is ignored");
        assert_eq!(head.read().expect("read"), Some(h5));
    }

    #[test]
    fn a_garbled_head_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("HEAD");
        fs::write(&path, "not a head").expect("write");
        assert!(matches!(read(&path), Err(StoreError::Corrupt { .. })));
    }
}
