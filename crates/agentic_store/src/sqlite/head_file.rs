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
//!
//! A `HEAD` that cannot be parsed is never overwritten: it is damage for the
//! operator to look at, and the store refuses to open on it. When recording
//! fails (no descriptor left, disk full), the commit it follows is durable
//! all the same and is not reported as failed: the failure is logged as an
//! error, kept for [`RecorderStatus::failure`], and the newest head is tried
//! again after the next commit and when the store closes. `HEAD` meanwhile
//! lags, which is what it may always do; it never records a head that was
//! not committed, and a failed write leaves no temporary file behind.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agentic_core::{ChainHead, StoreError};
use tracing::{error, info};

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

    /// Records `head` unless the file already records it or a newer one.
    /// A `HEAD` that cannot be parsed is refused, not overwritten.
    pub fn advance(&self, head: ChainHead) -> Result<(), StoreError> {
        self.exclusive(|| self.advance_locked(head))
    }

    fn advance_locked(&self, head: ChainHead) -> Result<(), StoreError> {
        if let Some(current) = self.read()?
            && current.seq >= head.seq
        {
            return Ok(());
        }
        let tmp = self
            .path
            .with_file_name(format!("{TMP_PREFIX}{}", std::process::id()));
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(head.to_line().as_bytes()))
            .map_err(|e| io_error(&tmp, &e))
            .and_then(|()| fs::rename(&tmp, &self.path).map_err(|e| io_error(&self.path, &e)));
        if written.is_err() {
            // Nothing half-written may stay behind; `HEAD` itself is untouched.
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

/// What a recorder could not record, shared with the store that started it.
#[derive(Debug, Default)]
pub struct RecorderStatus {
    failure: Mutex<Option<StoreError>>,
}

impl RecorderStatus {
    /// Why the newest committed head is not in `HEAD`, if its recording
    /// failed (cleared once a later attempt succeeds).
    pub fn failure(&self) -> Option<StoreError> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<StoreError>> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Shortest time between two writes of `HEAD` by one recorder. Replacing the
/// file (a new inode, a rename) costs a few hundred microseconds of kernel
/// work; under load, writing it after every commit took CPU from the
/// appenders the commit had just released. `HEAD` may lag the log anyway.
const MIN_RECORD_INTERVAL: Duration = Duration::from_millis(50);

/// A message to the HEAD recorder.
#[derive(Debug)]
pub enum Recording {
    /// A head just committed (heads arrive in commit order).
    Head(ChainHead),
    /// Record the pending head now, and answer whether `HEAD` now records
    /// every head sent before this message (else why not).
    Flush(mpsc::Sender<Result<(), StoreError>>),
}

/// A running HEAD recorder.
pub struct Recorder {
    /// Where heads (and flushes) go; the recorder stops once every clone is dropped.
    pub queue: mpsc::Sender<Recording>,
    /// What it could not record.
    pub status: Arc<RecorderStatus>,
    /// The thread, to join once the queue is dropped.
    pub thread: JoinHandle<()>,
}

/// Starts the thread that records the heads sent to it: the newest one, at
/// most every [`MIN_RECORD_INTERVAL`]. When every sender is dropped it
/// records the last head at once and stops. A head it failed to record is
/// tried again when the next one arrives (after the next commit), on a
/// [`Recording::Flush`] and at close.
pub fn spawn_recorder(head_file: HeadFile) -> Result<Recorder, StoreError> {
    let (tx, rx) = mpsc::channel::<Recording>();
    let status = Arc::new(RecorderStatus::default());
    let shared = status.clone();
    let handle = std::thread::Builder::new()
        .name("lion-head-recorder".into())
        .spawn(move || {
            let mut pending: Option<ChainHead> = None;
            let mut last_write: Option<Instant> = None;
            // The last attempt failed: wait for a new head (or the close)
            // rather than fail again every interval.
            let mut stalled = false;
            loop {
                // Wait for a head, or until the pending one may be written.
                let received = if pending.is_none() || stalled {
                    rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                } else {
                    match last_write.and_then(|at| MIN_RECORD_INTERVAL.checked_sub(at.elapsed())) {
                        Some(wait) => rx.recv_timeout(wait),
                        None => Err(RecvTimeoutError::Timeout),
                    }
                };
                match received {
                    // A newer head replaces the pending one.
                    Ok(Recording::Head(head)) => {
                        pending = Some(head);
                        stalled = false;
                    }
                    Ok(Recording::Flush(reply)) => {
                        let recorded = record(&head_file, &shared, &mut pending);
                        stalled = !recorded;
                        last_write = Some(Instant::now());
                        let _ = reply.send(if recorded {
                            Ok(())
                        } else {
                            Err(shared.failure().unwrap_or(StoreError::Closed))
                        });
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        stalled = !record(&head_file, &shared, &mut pending);
                        last_write = Some(Instant::now());
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        if !record(&head_file, &shared, &mut pending)
                            && let Some(head) = pending
                        {
                            error!(
                                path = %head_file.path.display(),
                                seq = head.seq,
                                "HEAD lags the log: the newest committed head could not be \
                                 recorded before the store closed; the next commit records it, \
                                 and until then verification cannot see those events cut off"
                            );
                        }
                        return;
                    }
                }
            }
        })
        .map_err(|e| StoreError::Backend(format!("cannot start the HEAD recorder: {e}")))?;
    Ok(Recorder {
        queue: tx,
        status,
        thread: handle,
    })
}

/// Records the pending head, if any; returns false if that failed (the head
/// then stays pending). The first failure of a run of them is logged as an
/// error, and the recovery after it too.
fn record(head_file: &HeadFile, status: &RecorderStatus, pending: &mut Option<ChainHead>) -> bool {
    let Some(head) = *pending else {
        return true;
    };
    let result = head_file.advance(head);
    let mut failure = status.lock();
    match result {
        Ok(()) => {
            *pending = None;
            if failure.take().is_some() {
                info!(seq = head.seq, "HEAD is recorded again");
            }
            true
        }
        Err(e) => {
            if failure.is_none() {
                error!(
                    error = %e,
                    seq = head.seq,
                    "cannot record HEAD after a durable commit (the commit stands); \
                     HEAD lags the log until a later attempt succeeds"
                );
            }
            *failure = Some(e);
            false
        }
    }
}

/// Longest `HEAD` file read: its one line, `"<seq> <64 hex digits>\n"`, is
/// at most 86 bytes; anything longer is damage, and is not read whole.
const MAX_HEAD_BYTES: u64 = 128;

/// Reads a `HEAD` file: `None` if absent, an error if unreadable, and
/// [`StoreError::Corrupt`] naming the file if it is not one head line.
pub fn read(path: &Path) -> Result<Option<ChainHead>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        path: path.display().to_string(),
        reason: reason.into(),
    };
    match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(corrupt("HEAD is not a regular file")),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, &e)),
    }
    let mut bytes = Vec::new();
    match File::open(path).and_then(|f| f.take(MAX_HEAD_BYTES + 1).read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, &e)),
    }
    std::str::from_utf8(&bytes)
        .ok()
        .filter(|_| bytes.len() as u64 <= MAX_HEAD_BYTES)
        .and_then(ChainHead::parse_line)
        .map(Some)
        .ok_or_else(|| corrupt("HEAD is not \"<seq> <sha256 hex>\""))
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
