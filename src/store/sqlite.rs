//! SQLite: the embedded default. A file created on first start (or
//! `:memory:`), WAL journal, foreign keys on, `synchronous=NORMAL`, a 5 s
//! busy timeout; writes take the lock up front (`BEGIN IMMEDIATE`), so the
//! usage write reads which call ids exist and inserts the rest with no other
//! writer in between (cheaper here than `RETURNING`, whose rows cross sqlx's
//! worker channel one by one).

use std::time::Duration;

use sqlx::Sqlite;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use super::Backend;
use super::driver::{
    ConnectFailure, Driver, ON_CONFLICT_ADD_TO_CHARGES_DAILY, ON_CONFLICT_ADD_TO_DAILY,
    ON_CONFLICT_ADD_TO_OUTCOMES_DAILY, ON_CONFLICT_REPLACE_CALL_CHARGE,
};

/// How long a writer waits for the lock before SQLite answers "busy".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Driver for Sqlite {
    const BACKEND: Backend = Backend::Sqlite;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const ONE_WRITER: bool = true;
    const BATCH_ISOLATION: Option<&'static str> = None;
    const FOR_UPDATE: &'static str = "";
    const SKIP_STORED_RETURNING_NEW: Option<&'static str> = None;
    const ADD_TO_DAILY: &'static str = ON_CONFLICT_ADD_TO_DAILY;
    const ADD_TO_CHARGES_DAILY: &'static str = ON_CONFLICT_ADD_TO_CHARGES_DAILY;
    const REPLACE_CALL_CHARGE: &'static str = ON_CONFLICT_REPLACE_CALL_CHARGE;
    const ADD_TO_OUTCOMES_DAILY: &'static str = ON_CONFLICT_ADD_TO_OUTCOMES_DAILY;
    // SQLITE_MAX_VARIABLE_NUMBER of the bundled SQLite (3.32 and later).
    const MAX_PARAMS: usize = 32_766;
    const INT_CAST: &'static str = "INTEGER";

    fn migrator() -> Migrator {
        let mut migrator = sqlx::migrate!("migrations/sqlite");
        migrator.set_locking(false);
        migrator
    }

    fn connect_options(url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
        let options: SqliteConnectOptions = url.parse()?;
        Ok(options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Checkpoint every ~40 MB of WAL instead of 4 MB: hot pages (index
            // leaves, roll-up rows) are copied back once instead of many times.
            .pragma("wal_autocheckpoint", "10000")
            // Statement journals of multi-row INSERTs in memory, not in a
            // temporary file (a third of the write cost otherwise).
            .pragma("temp_store", "memory"))
    }

    /// A missing file is an error, not a new empty database.
    fn existing_only(options: SqliteConnectOptions) -> SqliteConnectOptions {
        options.create_if_missing(false)
    }

    /// An in-memory database lives as long as one of its connections: keep
    /// one open for the life of the pool.
    fn tune_pool(pool: PoolOptions<Self>, url: &str) -> PoolOptions<Self> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            pool.min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            pool
        }
    }

    fn is_unavailable(error: &dyn DatabaseError) -> bool {
        // BUSY, LOCKED, IOERR, FULL, CANTOPEN (primary codes).
        primary_code(error).is_some_and(|code| matches!(code, 5 | 6 | 10 | 13 | 14))
    }

    fn is_transient(error: &dyn DatabaseError) -> bool {
        // BUSY, LOCKED.
        primary_code(error).is_some_and(|code| matches!(code, 5 | 6))
    }

    fn connect_failure(error: &dyn DatabaseError) -> Option<ConnectFailure> {
        // CANTOPEN, PERM, READONLY, AUTH, NOTADB.
        primary_code(error)
            .is_some_and(|code| matches!(code, 14 | 3 | 8 | 23 | 26))
            .then_some(ConnectFailure::CannotOpenFile)
    }
}

/// The primary result code (the low byte of the extended code).
fn primary_code(error: &dyn DatabaseError) -> Option<i32> {
    error.code()?.parse::<i32>().ok().map(|code| code & 0xff)
}
