//! Background WAL checkpoints, off the commit path, and WAL recycling.
//!
//! SQLite normally checkpoints inside the commit that pushes the WAL past
//! 1000 pages: that commit then copies the WAL into the database and makes
//! two more fsyncs, and every append waiting on it waits for them too. The
//! writer connection instead reports the WAL's size after each commit (its
//! WAL hook, which also turns SQLite's automatic checkpoints off), and this
//! thread runs `PASSIVE` checkpoints on its own connection, beside the writer.
//!
//! Those checkpoints alone never let the WAL restart under sustained load:
//! the writer keeps adding frames while they copy, so they never catch up,
//! and every commit extends the WAL file. A flush that extends a file also
//! commits the filesystem's journal (the file's new size and blocks), which
//! on this machine's ext4 makes it cost about twice the flush of an overwrite
//! (see `docs/event-log.md`). So once the WAL is long enough and the
//! checkpointer has copied nearly all of it, the writer copies the few frames
//! added since itself, between two commits ([`Recycler`]): the next commit
//! starts the WAL over, and the ones after it overwrite blocks the file
//! already has.
//!
//! "Long enough" is about [`COMMITS_PER_CYCLE`] commits of the size commits
//! have lately been, between [`MIN_RECYCLE_PAGES`] and
//! [`SqliteOptions::wal_recycle_pages`](super::SqliteOptions): each restart
//! pauses the writer for a checkpoint's flushes, so large commits want a
//! long WAL that restarts rarely, while small ones (a workflow step, one
//! appender at a time) would otherwise extend the file for thousands of
//! commits before the first restart.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use agentic_core::StoreError;
use rusqlite::Connection;
use tracing::{debug, warn};

use super::schema::{self, DbFile};

/// WAL growth (pages) between checkpoints: SQLite's own default.
const CHECKPOINT_PAGES: i32 = 1000;

/// About how many commits the WAL holds before it is recycled: the writer's
/// pause to recycle it comes at most this often.
const COMMITS_PER_CYCLE: f64 = 256.0;

/// Shortest WAL (pages) that is recycled: about one checkpoint's worth.
const MIN_RECYCLE_PAGES: i64 = 1024;

/// Weight of the newest commit in the running mean of WAL pages a commit
/// adds.
const COMMIT_SIZE_WEIGHT: f64 = 1.0 / 32.0;

/// Most WAL pages left for the writer to copy when it recycles the WAL: the
/// checkpointer copies again first while more are left (up to
/// [`CATCH_UP_PASSES`] times), since the writer's copy holds up appends.
const RECYCLE_REMAINDER: i64 = 256;

/// Most extra checkpoints the checkpointer runs to bring the remainder under
/// [`RECYCLE_REMAINDER`] before leaving the rest to the writer anyway.
const CATCH_UP_PASSES: usize = 3;

/// WAL size (pages, ~256 MiB) past which passive checkpoints, which never
/// wait, are replaced by one that waits for the writer's lock and restarts
/// the WAL, so that sustained load cannot grow it without bound (when
/// recycling keeps failing, e.g. because a reader holds on to the WAL).
const RESTART_PAGES: i64 = 65_536;

/// A running checkpointer: it stops once both its handle and the writer
/// connection it is hooked to are gone.
pub struct Checkpointer {
    keep_alive: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Stops the thread and waits for it. Call it only after the writer's
    /// connection is closed: the last connection to close is the one that
    /// checkpoints and removes the WAL, and two closing at once may each
    /// leave that to the other.
    pub fn stop(&mut self) {
        self.keep_alive.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer's side of WAL recycling: armed by the checkpointer when it has
/// copied nearly all of a long WAL, taken by the writer between commits.
pub struct Recycler {
    armed: Arc<AtomicBool>,
}

impl Recycler {
    /// If the checkpointer armed it, copies the WAL frames it left on
    /// `writer` (the writer's own connection, so none are added meanwhile),
    /// which lets the next commit restart the WAL.
    ///
    /// A checkpoint that cannot finish (the checkpointer has started another
    /// one, or a reader still uses the WAL) is only a missed chance: the WAL
    /// grows on until the next.
    pub fn recycle(&self, writer: &Connection, db: &DbFile) {
        if !self.armed.swap(false, Ordering::Relaxed) {
            return;
        }
        match run(writer, "PASSIVE") {
            Ok((busy, log, done)) => debug!(busy, log, done, "WAL recycling checkpoint"),
            Err(e) => warn!(error = %db.err(e), "WAL checkpoint failed; the WAL keeps growing"),
        }
    }
}

/// Starts the checkpointer of `db` and hooks it to the writer's connection
/// `writer`, whose automatic checkpoints this turns off; the [`Recycler`]
/// goes to the writer. WALs are recycled from about [`COMMITS_PER_CYCLE`]
/// commits' worth of pages, and at the latest from `recycle_pages`.
pub fn start(
    writer: &mut Connection,
    db: &DbFile,
    recycle_pages: u32,
) -> Result<(Checkpointer, Recycler), StoreError> {
    let conn = schema::connect(db)?;
    let (tx, rx) = mpsc::channel::<()>();
    let keep_alive = tx.clone();
    // The WAL's size after the writer's newest commit.
    let wal_pages = Arc::new(AtomicI64::new(0));
    let hook_pages = wal_pages.clone();
    let recycle_pages = i64::from(recycle_pages.max(1));
    let recycle_at = Arc::new(AtomicI64::new(recycle_pages));
    let mut asking = Asking::new(recycle_pages);
    let hook_recycle_at = recycle_at.clone();
    writer
        .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            let ask = asking.after_commit(pages);
            hook_recycle_at.store(asking.recycle_at(), Ordering::Relaxed);
            hook_pages.store(i64::from(pages), Ordering::Relaxed);
            if ask {
                // A stopped checkpointer only means the WAL grows until close.
                let _ = tx.send(());
            }
            Ok(())
        }))
        .map_err(|e| db.err(e))?;
    let db = db.clone();
    let armed = Arc::new(AtomicBool::new(false));
    let recycler = Recycler {
        armed: armed.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("lion-checkpointer".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {} // one checkpoint covers them all
                for pass in 0..=CATCH_UP_PASSES {
                    match checkpoint(&conn) {
                        Ok(Some(copied)) if copied >= recycle_at.load(Ordering::Relaxed) => {
                            let left = wal_pages.load(Ordering::Relaxed) - copied;
                            if left <= RECYCLE_REMAINDER || pass == CATCH_UP_PASSES {
                                armed.store(true, Ordering::Relaxed);
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            warn!(error = %db.err(e), "WAL checkpoint failed; the WAL keeps growing");
                            break;
                        }
                    }
                }
            }
        })
        .map_err(|e| StoreError::Backend(format!("cannot start the checkpointer: {e}")))?;
    let checkpointer = Checkpointer {
        keep_alive: Some(keep_alive),
        thread: Some(thread),
    };
    Ok((checkpointer, recycler))
}

/// When the writer's hook asks the checkpointer for a checkpoint: each time
/// the WAL has grown by [`CHECKPOINT_PAGES`] (asking after every commit
/// would keep it copying a few pages at a time), and once when the WAL
/// reaches the length to recycle from (else it would run on to the next
/// [`CHECKPOINT_PAGES`]).
struct Asking {
    next_at: i64,
    /// The WAL's size after the previous commit; a smaller one means it
    /// started over.
    last: i64,
    /// Asked already at this WAL's recycle length.
    asked_to_recycle: bool,
    cycle: CycleLength,
    recycle_at: i64,
}

impl Asking {
    fn new(recycle_pages: i64) -> Self {
        Self {
            next_at: i64::from(CHECKPOINT_PAGES),
            last: 0,
            asked_to_recycle: false,
            cycle: CycleLength::new(recycle_pages),
            recycle_at: recycle_pages,
        }
    }

    /// Takes in a commit after which the WAL holds `pages`; whether to ask
    /// for a checkpoint now.
    fn after_commit(&mut self, pages: i32) -> bool {
        let pages = i64::from(pages);
        let added = if pages < self.last {
            // Started over: this commit wrote all of it.
            self.next_at = i64::from(CHECKPOINT_PAGES);
            self.asked_to_recycle = false;
            pages
        } else {
            pages - self.last
        };
        self.last = pages;
        self.recycle_at = self
            .cycle
            .after_commit(i32::try_from(added).unwrap_or(i32::MAX));
        let recycle = !self.asked_to_recycle && pages >= self.recycle_at;
        if pages >= self.next_at || recycle {
            self.next_at = pages + i64::from(CHECKPOINT_PAGES);
            self.asked_to_recycle |= recycle;
            return true;
        }
        false
    }

    /// The WAL length to recycle from, as of the newest commit.
    fn recycle_at(&self) -> i64 {
        self.recycle_at
    }
}

/// The WAL length to recycle from, as commits come: [`COMMITS_PER_CYCLE`]
/// times the running mean of the pages a commit adds, within
/// [[`MIN_RECYCLE_PAGES`], the store's `wal_recycle_pages`].
struct CycleLength {
    /// Running mean of WAL pages per commit (`None` before the first).
    mean: Option<f64>,
    max: i64,
}

impl CycleLength {
    fn new(max: i64) -> Self {
        Self { mean: None, max }
    }

    /// Takes in a commit that added `pages` to the WAL; the length to
    /// recycle from now.
    fn after_commit(&mut self, pages: i32) -> i64 {
        let pages = f64::from(pages.max(0));
        let mean = match self.mean {
            Some(mean) => mean + (pages - mean) * COMMIT_SIZE_WEIGHT,
            None => pages,
        };
        self.mean = Some(mean);
        ((mean * COMMITS_PER_CYCLE) as i64).clamp(MIN_RECYCLE_PAGES.min(self.max), self.max)
    }
}

/// Runs one checkpoint; returns the WAL pages it saw when it copied them all.
fn checkpoint(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let (busy, log, done) = run(conn, "PASSIVE")?;
    debug!(busy, log, done, "passive WAL checkpoint");
    if log >= RESTART_PAGES && done < log {
        let (busy, log, done) = run(conn, "RESTART")?;
        debug!(busy, log, done, "restarting WAL checkpoint");
        return Ok(None);
    }
    Ok((busy == 0 && done == log).then_some(done))
}

/// Runs `PRAGMA wal_checkpoint(mode)`: (busy, WAL pages, pages copied).
fn run(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WAL header's checkpoint sequence number, raised by SQLite each
    /// time the WAL starts over from its first frame.
    fn restarts(wal: &std::path::Path) -> u32 {
        let bytes = std::fs::read(wal).expect("read the WAL");
        u32::from_be_bytes(bytes[12..16].try_into().expect("a WAL header"))
    }

    /// Frames in a WAL that has not started over: its length past the
    /// header, in frames of a 4 KiB page and its 24-byte header.
    fn wal_frames(wal: &std::path::Path) -> i64 {
        let len = std::fs::metadata(wal).expect("the WAL").len();
        i64::try_from(len.saturating_sub(32) / (4096 + 24)).expect("frames")
    }

    /// A writer connection on a fresh WAL database with a table `t`.
    fn writer(dir: &std::path::Path) -> (Connection, DbFile) {
        let db = DbFile {
            path: dir.join("test.db"),
            busy_timeout: std::time::Duration::from_secs(5),
        };
        let conn = schema::connect(&db).expect("connect");
        conn.execute_batch("CREATE TABLE t (x BLOB)")
            .expect("create");
        (conn, db)
    }

    fn commit(conn: &Connection) {
        conn.execute("INSERT INTO t VALUES (zeroblob(8000))", [])
            .expect("insert");
    }

    #[test]
    fn small_commits_recycle_a_shorter_wal_than_large_ones() {
        let mut small = CycleLength::new(16_384);
        let mut large = CycleLength::new(16_384);
        let (mut at_small, mut at_large) = (0, 0);
        for _ in 0..200 {
            at_small = small.after_commit(8);
            at_large = large.after_commit(100);
        }
        assert_eq!(at_small, 8 * 256, "small commits: 256 commits' worth");
        assert_eq!(at_large, 16_384, "large commits: the store's longest WAL");
        // Never shorter than a checkpoint's worth, nor longer than the most.
        assert_eq!(CycleLength::new(16_384).after_commit(1), MIN_RECYCLE_PAGES);
        assert_eq!(CycleLength::new(64).after_commit(1), 64);
        // The mean follows a change of load within a few dozen commits.
        for _ in 0..100 {
            at_small = small.after_commit(100);
        }
        assert_eq!(at_small, 16_384, "the mean did not follow larger commits");
    }

    #[test]
    fn checkpoints_are_asked_every_thousand_pages_and_once_at_the_recycle_length() {
        let mut asking = Asking::new(16_384);
        let asked: Vec<i32> = (1..=700)
            .map(|commit| commit * 8) // 8 pages a commit: recycle from 2048
            .filter(|&pages| asking.after_commit(pages))
            .collect();
        assert_eq!(asking.recycle_at(), 2048);
        // Every 1000 pages, and at 2048 once (not after every commit past it).
        assert_eq!(asked[..4], [1000, 2000, 2048, 3048], "{asked:?}");
        assert!(
            asked
                .windows(2)
                .all(|w| w[1] - w[0] >= 1000 || w[1] == 2048)
        );
        // The WAL starts over: asked again from the start, and at 2048 again.
        assert!(!asking.after_commit(8));
        let again: Vec<i32> = (2..=300)
            .map(|commit| commit * 8)
            .filter(|&pages| asking.after_commit(pages))
            .collect();
        assert_eq!(again, [1000, 2000, 2048]);
    }

    #[test]
    fn small_commits_arm_the_recycler_once_their_cycle_is_reached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut conn, db) = writer(dir.path());
        let (mut checkpointer, recycler) = start(&mut conn, &db, 16_384).expect("start");
        // Commits of a few pages recycle from MIN_RECYCLE_PAGES (their 256
        // commits' worth is less): a checkpoint is asked for there, not
        // only at the next multiple of CHECKPOINT_PAGES (the pure rule is
        // tested above; this goes through SQLite's hook and the thread).
        let wal = dir.path().join("test.db-wal");
        let mut pages = 0;
        while pages < MIN_RECYCLE_PAGES + 10 {
            commit(&conn);
            pages = wal_frames(&wal);
        }
        assert!(pages < 2 * i64::from(CHECKPOINT_PAGES), "{pages}");
        let keep = schema::connect(&db).expect("connect"); // keeps the WAL
        drop(conn);
        checkpointer.stop();
        drop(keep);
        assert!(
            recycler.armed.load(Ordering::Relaxed),
            "the recycler was not armed at {pages} WAL pages"
        );
    }

    #[test]
    fn an_armed_recycler_lets_the_next_commit_start_the_wal_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (conn, db) = writer(dir.path());
        let wal = dir.path().join("test.db-wal");
        commit(&conn);
        // Frames the checkpointer has not copied: commits only extend the WAL.
        let before = restarts(&wal);
        commit(&conn);
        assert_eq!(restarts(&wal), before, "a commit restarted an uncopied WAL");

        let recycler = Recycler {
            armed: Arc::new(AtomicBool::new(false)),
        };
        recycler.recycle(&conn, &db);
        commit(&conn);
        assert_eq!(restarts(&wal), before, "an unarmed recycler checkpointed");

        recycler.armed.store(true, Ordering::Relaxed);
        recycler.recycle(&conn, &db);
        assert!(
            !recycler.armed.load(Ordering::Relaxed),
            "the recycler stays armed"
        );
        commit(&conn);
        assert_eq!(restarts(&wal), before + 1, "the WAL did not start over");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 4);
    }

    #[test]
    fn the_checkpointer_arms_the_recycler_once_it_copied_a_long_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut conn, db) = writer(dir.path());
        let (mut checkpointer, recycler) = start(&mut conn, &db, 1).expect("start");
        // Past the recycle length (one page here), the hook asks for a
        // checkpoint, and again every CHECKPOINT_PAGES.
        for _ in 0..CHECKPOINT_PAGES / 2 + 1 {
            commit(&conn);
        }
        // Wait for the checkpointer's work: stopping it joins its thread
        // once the writer connection (the hook's sender) is gone.
        let wal = dir.path().join("test.db-wal");
        let before = restarts(&wal);
        let conn = {
            let keep = schema::connect(&db).expect("connect"); // keeps the WAL
            drop(conn);
            checkpointer.stop();
            keep
        };
        assert!(
            recycler.armed.load(Ordering::Relaxed),
            "the recycler was not armed"
        );
        recycler.recycle(&conn, &db);
        commit(&conn);
        assert!(restarts(&wal) > before, "the WAL did not start over");
    }
}
