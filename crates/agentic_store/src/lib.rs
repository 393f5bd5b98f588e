//! Event-store adapters for lion: implementations of the kernel's
//! [`agentic_core::EventStore`] port.
//!
//! - [`memory`] — [`MemoryStore`], in memory, for tests and ephemeral runs.
//! - [`sqlite`] — [`SqliteStore`], the embedded default: SQLite in WAL mode with
//!   `synchronous=FULL`, one group-commit writer per process, projections
//!   updated in the append's transaction, and the `HEAD` file that lets
//!   verification detect a truncated log.
//! - [`postgres`] — [`PostgresStore`], the shared store: the log and its
//!   projections in a PostgreSQL database that several kernels append to,
//!   serialised on the log's head so the sequence stays gapless and in
//!   commit order, with group commit in each kernel.
//! - [`bench`] — the store benchmark behind `lion bench store`, with its
//!   same-run baselines (raw SQLite inserts, raw `fdatasync`). It pins
//!   threads to CPUs itself, from outside the store: the store has no knob
//!   that exists only for a benchmark.

pub mod bench;
pub mod memory;
pub mod postgres;
pub mod sqlite;

pub use memory::MemoryStore;
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore, VerifyReport};
