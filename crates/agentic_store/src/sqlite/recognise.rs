//! Recognising a home before anything is written to it: what a lion home
//! may hold, a home that lost its log (a missing or empty database beside
//! traces of an earlier one), a log that `HEAD` says was cut short or
//! rewritten — each refused without changing a file — and how a read-only
//! opener reads a home without writing to it.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use agentic_core::{ChainHead, Hash, StoreError};
use rusqlite::{Connection, OptionalExtension};

use super::head_file;
use super::reads;
use super::schema::{self, DbFile, Layout, ReadOnly};
use super::{DB_FILE, HEAD_FILE};

/// Files a home may hold besides the database; a directory holding anything
/// else and no database is not a lion home.
pub(super) const HOME_FILES: &[&str] = &[
    DB_FILE,
    HEAD_FILE,
    "HEAD.lock",
    "lion.db-wal",
    "lion.db-shm",
    "lion.db-journal",
    "kernel.lock",
    "kernel.sock",
    "plugins",
    "config.toml",
];

/// Files a home holds only once it has had a log (besides a `HEAD.tmp.*`
/// file and a WAL with content): one of them beside a missing or empty
/// `lion.db` means the log was lost, not that the home is new. Not in the
/// list: `HEAD.lock` (created before the database), `config.toml` (an
/// operator may write it first), and an empty WAL or its index (what a
/// creation interrupted by a crash leaves).
pub(super) const HISTORY_FILES: &[&str] = &[HEAD_FILE, "kernel.lock", "kernel.sock", "plugins"];

/// What a home's `lion.db` is, before SQLite opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DbState {
    /// There is no database, or an empty file with no WAL content: opening
    /// it starts a new log.
    New,
    /// There is a database (perhaps still all in its WAL).
    Present,
}

/// Looks at a home before SQLite opens its database: creates the directory
/// if `create` (else a missing one is a new home), refuses a directory that is
/// not a lion home, a home that lost its log (a missing or empty database
/// beside traces of one) and a database file that is not SQLite or is cut
/// short. Changes nothing else.
pub(super) fn recognise(home: &Path, db: &Path, create: bool) -> Result<DbState, StoreError> {
    let io = |p: &Path, e: std::io::Error| StoreError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    if create {
        std::fs::create_dir_all(home).map_err(|e| io(home, e))?;
    } else if !home.exists() {
        return Ok(DbState::New);
    }
    let len = match std::fs::metadata(db) {
        Ok(meta) => Some(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(db, e)),
    };
    match len {
        Some(0) if !schema::wal_has_content(db) => {
            if let Err(lost) = refuse_if_history(home, db) {
                return look_again(home, db, create, lost);
            }
            Ok(DbState::New)
        }
        Some(_) => {
            schema::check_file(db)?;
            Ok(DbState::Present)
        }
        None => {
            if let Err(lost) = refuse_if_history(home, db) {
                return look_again(home, db, create, lost);
            }
            let entries = std::fs::read_dir(home).map_err(|e| io(home, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io(home, e))?;
                let name = entry.file_name();
                let ours = HOME_FILES.iter().any(|f| name == *f)
                    || name.to_string_lossy().starts_with(head_file::TMP_PREFIX);
                if !ours {
                    return Err(StoreError::NotAStore {
                        path: home.display().to_string(),
                        reason: format!(
                            "the directory holds other files (e.g. {}) and no {DB_FILE}",
                            name.to_string_lossy()
                        ),
                    });
                }
            }
            Ok(DbState::New)
        }
    }
}

/// Decides whether a home that looked like it lost its log (`lost`) did, or
/// whether another opener created the log between the look at the database
/// and the look for traces: an opener that is not holding `HEAD.lock` (the
/// first look, which creates nothing, is made without it) can see the
/// database still missing and then the `HEAD` written after that opener's
/// first commit. The log has content once a trace exists, so it is looked
/// for again: the WAL first, then the database, since a checkpoint copies the
/// WAL into the database before it empties the WAL.
pub(super) fn look_again(
    home: &Path,
    db: &Path,
    create: bool,
    lost: StoreError,
) -> Result<DbState, StoreError> {
    let wal = schema::wal_has_content(db);
    // A database that is still missing is refused whatever the WAL holds
    // (and so `recognise` below cannot come back here).
    let appeared = std::fs::metadata(db).is_ok_and(|m| wal || m.len() > 0);
    if appeared {
        recognise(home, db, create)
    } else {
        Err(lost)
    }
}

/// Refuses to start a new log in `home` (its database `db` is missing or
/// holds nothing) if the home holds a trace of an earlier one: `HEAD`, a
/// WAL with content, or one of [`HISTORY_FILES`]. Only a new home starts a
/// new log; anything else lost its log, and writing a new one would hide it.
pub(super) fn refuse_if_history(home: &Path, db: &Path) -> Result<(), StoreError> {
    let (what, how) = match std::fs::metadata(db) {
        Ok(meta) if meta.len() == 0 => ("is empty (0 bytes)", "truncated"),
        Ok(_) => ("holds no log (no tables)", "replaced"),
        Err(_) => ("is missing", "deleted"),
    };
    let lost = |reason: String| StoreError::Corrupt {
        path: db.display().to_string(),
        reason: format!("{reason}; restore the home from a backup"),
    };
    let head = home.join(HEAD_FILE);
    if let Some(recorded) = head_file::read(&head)? {
        return Err(lost(format!(
            "the database {what}, but {} records {} events: the log was {how}",
            head.display(),
            recorded.seq
        )));
    }
    let wal = schema::sibling(db, "-wal");
    let mut trace = schema::wal_has_content(db).then_some(wal);
    if trace.is_none() && home.is_dir() {
        let entries = std::fs::read_dir(home).map_err(|e| head_file::io_error(home, &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| head_file::io_error(home, &e))?;
            let name = entry.file_name();
            if HISTORY_FILES.iter().any(|f| name == *f)
                || name.to_string_lossy().starts_with(head_file::TMP_PREFIX)
            {
                trace = Some(entry.path());
                break;
            }
        }
    }
    match trace {
        Some(path) => Err(lost(format!(
            "the database {what}, but the home holds {}, left by an earlier lion: \
             its log was {how}",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Checks the log against the head recorded in `HEAD` and returns the log's
/// head: a log that ends before `HEAD` lost committed events (a truncated or
/// replaced database, a WAL deleted after a crash), and one whose record at
/// `HEAD`'s position has another hash was rewritten. Either is refused, so
/// that nothing is appended to it. One indexed read; run once, at open.
pub(super) fn check_recorded_head(
    conn: &Connection,
    db: &DbFile,
    head_path: &Path,
) -> Result<ChainHead, StoreError> {
    // HEAD first: it never leads the log, so the log read after it is at
    // least as long, whatever other processes commit meanwhile.
    let recorded = head_file::read(head_path)?;
    let head = reads::read_head(conn, db)?;
    let Some(recorded) = recorded else {
        return Ok(head);
    };
    let damaged = |reason: String| StoreError::Corrupt {
        path: db.path.display().to_string(),
        reason,
    };
    if recorded.seq > head.seq {
        return Err(damaged(format!(
            "its log ends at seq {}, but {} records seq {}: committed events are missing \
             (the database was truncated or replaced, or its -wal deleted after a crash); \
             restore the home from a backup",
            head.seq,
            head_path.display(),
            recorded.seq
        )));
    }
    let stored: Option<Hash> = if recorded.seq == 0 {
        Some(Hash::GENESIS)
    } else {
        conn.prepare_cached("SELECT hash FROM events WHERE seq = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([recorded.seq as i64], |r| {
                    Ok(r.get_ref(0)?
                        .as_blob()
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .map(Hash))
                })
                .optional()
            })
            .map_err(|e| db.err(e))?
            .flatten()
    };
    if stored != Some(recorded.hash) {
        return Err(damaged(format!(
            "its record at seq {} is not the one {} records: the log was rewritten; \
             restore the home from a backup",
            recorded.seq,
            head_path.display()
        )));
    }
    Ok(head)
}

/// Runs the checks of a present database ([`check_recorded_head`], and
/// [`refuse_if_history`] for one with no tables) on a read-only connection,
/// before the writable one opens it: closing that one (the last connection)
/// would copy the WAL into `lion.db` and remove it, changing a home that is
/// about to be refused. The caller holds `HEAD.lock`, so no writer opens the
/// home meanwhile. When the database cannot be read without changing a file
/// (a WAL with content but no index), the checks are left to the writable
/// connection, after SQLite's recovery of that WAL (which loses nothing).
pub(super) fn check_before_writing(
    home: &Path,
    db: &DbFile,
    head_path: &Path,
) -> Result<(), StoreError> {
    match read_only_connection(db) {
        Ok((_, _, Layout::Empty)) => refuse_if_history(home, &db.path),
        Ok((_, conn, Layout::Lion(_))) => check_recorded_head(&conn, db, head_path).map(|_| ()),
        Err(StoreError::Io { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Times a read-only open looks again when the WAL and its index change
/// under it: a store closing elsewhere removes both (the index first) within
/// microseconds, and no store can open meanwhile (the caller holds
/// `HEAD.lock`), so the files settle at once; a state that lasts (a WAL
/// without its index) is reported.
pub(super) const READ_ONLY_ATTEMPTS: usize = 5;
/// Pause between those looks.
pub(super) const READ_ONLY_PAUSE: Duration = Duration::from_millis(2);

/// Opens a read-only connection that changes no file (see [`ReadOnly`]),
/// chosen by the files present, and reads the database's layout through it.
pub(super) fn read_only_connection(
    db: &DbFile,
) -> Result<(ReadOnly, Connection, Layout), StoreError> {
    let mut attempt = 1;
    loop {
        let opened = read_only_mode(&db.path).and_then(|how| {
            let conn = schema::connect_read_only(db, how)?;
            let layout = schema::layout(&conn, db)?;
            Ok((how, conn, layout))
        });
        match opened {
            Err(StoreError::Io { .. }) if attempt < READ_ONLY_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(READ_ONLY_PAUSE);
            }
            other => return other,
        }
    }
}

/// A shared lock on the home's `HEAD.lock`, which openers take exclusively:
/// held, it keeps writers from opening the home. `None` if there is no lock
/// file (it is not created: a read-only open creates nothing).
pub(super) fn shared_home_lock(home: &Path) -> Result<Option<File>, StoreError> {
    let path = home.join(HEAD_FILE).with_extension("lock");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(head_file::io_error(&path, &e)),
    };
    file.lock_shared()
        .map_err(|e| head_file::io_error(&path, &e))?;
    Ok(Some(file))
}

/// How a read-only store reads a present database (see [`ReadOnly`]).
pub(super) fn read_only_mode(db: &Path) -> Result<ReadOnly, StoreError> {
    let wal = schema::sibling(db, "-wal");
    let shm = schema::sibling(db, "-shm");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).ok();
    match (wal_len, shm.exists()) {
        // No WAL, or an empty one without its index: nobody has the
        // database open, and `lion.db` holds the whole log.
        (None, _) | (Some(0), false) => Ok(ReadOnly::Immutable),
        (Some(_), true) => Ok(ReadOnly::Wal),
        (Some(_), false) => Err(StoreError::Io {
            path: shm.display().to_string(),
            message: format!(
                "missing, while {} holds commits not yet copied into {DB_FILE}: reading them \
                 read-only would have to create it; open the home once with another lion \
                 command (e.g. `lion events list --limit 1`), which recovers the WAL, then \
                 check again",
                wal.display()
            ),
        }),
    }
}
