//! Background WAL checkpoints, off the commit path.
//!
//! SQLite normally checkpoints inside the commit that pushes the WAL past
//! 1000 pages: that commit then copies the WAL into the database and makes
//! two more fsyncs, and every append waiting on it waits for them too. The
//! writer connection instead reports the WAL's size after each commit (its
//! WAL hook, which also turns SQLite's automatic checkpoints off), and this
//! thread runs `PASSIVE` checkpoints on its own connection, beside the writer.

use std::sync::mpsc;
use std::thread::JoinHandle;

use agentic_core::StoreError;
use rusqlite::Connection;
use tracing::{debug, warn};

use super::schema::{self, DbFile};

/// WAL growth (pages) between checkpoints: SQLite's own default.
const CHECKPOINT_PAGES: i32 = 1000;

/// WAL size (pages, ~256 MiB) past which passive checkpoints, which never
/// wait, are replaced by one that waits for the writer's lock and restarts
/// the WAL, so that sustained load cannot grow it without bound.
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

/// Starts the checkpointer of `db` and hooks it to the writer's connection
/// `writer`, whose automatic checkpoints this turns off.
pub fn start(writer: &mut Connection, db: &DbFile) -> Result<Checkpointer, StoreError> {
    let conn = schema::connect(db)?;
    let (tx, rx) = mpsc::channel::<()>();
    let keep_alive = tx.clone();
    // Ask for a checkpoint each time the WAL has grown by CHECKPOINT_PAGES:
    // while the writer keeps appending, the WAL cannot restart, and asking
    // after every commit would keep the checkpointer copying a few pages at a
    // time. A smaller size than last time means the WAL restarted.
    let mut next_at = CHECKPOINT_PAGES;
    let mut last = 0;
    writer
        .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            if pages < last {
                next_at = CHECKPOINT_PAGES;
            }
            last = pages;
            if pages >= next_at {
                next_at = pages + CHECKPOINT_PAGES;
                // A stopped checkpointer only means the WAL grows until close.
                let _ = tx.send(());
            }
            Ok(())
        }))
        .map_err(|e| db.err(e))?;
    let db = db.clone();
    let thread = std::thread::Builder::new()
        .name("lion-checkpointer".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {} // one checkpoint covers them all
                if let Err(e) = checkpoint(&conn) {
                    warn!(error = %db.err(e), "WAL checkpoint failed; the WAL keeps growing");
                }
            }
        })
        .map_err(|e| StoreError::Backend(format!("cannot start the checkpointer: {e}")))?;
    Ok(Checkpointer {
        keep_alive: Some(keep_alive),
        thread: Some(thread),
    })
}

fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    let (busy, log, done) = run(conn, "PASSIVE")?;
    debug!(busy, log, done, "passive WAL checkpoint");
    if log >= RESTART_PAGES && done < log {
        let (busy, log, done) = run(conn, "RESTART")?;
        debug!(busy, log, done, "restarting WAL checkpoint");
    }
    Ok(())
}

fn run(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}
