//! What the store needs from a sqlx backend, bundled in one trait so that the
//! queries are written once, generically, and bounded by `DB: Driver` alone.
//!
//! The bounds ride on associated types (`Connection: Exec + Migrate`,
//! `Arguments: Bind`, `Row: Read`), which Rust implies wherever `Driver` is
//! named; the helper traits have blanket impls, so a backend only supplies
//! its dialect (`sqlite.rs`, `postgres.rs`, `mysql.rs`).

use sqlx::database::HasStatementCache;
use sqlx::error::{BoxDynError, DatabaseError};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::PoolOptions;
use sqlx::{Arguments, ColumnIndex, Connection, Database, Decode, Encode, Executor, Row, Type};

use super::Backend;

/// The connect options of a driver.
pub(super) type ConnectOptionsOf<DB> = <<DB as Database>::Connection as Connection>::Options;

/// A sqlx backend the store can run on, with what differs between dialects.
/// Placeholders (`?` vs `$1`) are not here: [`super::statement::Statement`]
/// asks the arguments to write them.
pub(super) trait Driver:
    Database<Connection: Exec + Migrate, Arguments: Bind, Row: Read> + HasStatementCache
{
    /// Which backend this is.
    const BACKEND: Backend;

    /// Starts a write transaction (SQLite takes the write lock up front, so
    /// a transaction that reads first cannot fail on upgrade).
    const BEGIN_WRITE: &'static str;

    /// Whether the database takes one writer at a time (SQLite). The store
    /// then queues its own writers in memory, so that they wait their turn
    /// instead of sleeping in the database's busy handler (in steps of one
    /// millisecond and more).
    const ONE_WRITER: bool;

    /// Run before a batch of the hot path's ledger writes begins its
    /// transaction, where the default isolation would keep one snapshot for
    /// the whole batch (MySQL's REPEATABLE READ): sets READ COMMITTED, so
    /// that each write's reads after its locks see the latest commits.
    const BATCH_ISOLATION: Option<&'static str>;

    /// Appended to a `SELECT` of rows the write transaction is about to
    /// change: locks them until the transaction ends, so the value read is
    /// the value the transaction changes (` FOR UPDATE`). Empty on SQLite,
    /// whose `BEGIN IMMEDIATE` already keeps every other writer out.
    const FOR_UPDATE: &'static str;

    /// Completes `INSERT INTO usage_daily (day, customer_id, method, tool,
    /// calls, errors, units, duration_us, bytes_in, bytes_out) VALUES …` so
    /// that an existing row gets the new totals added.
    const ADD_TO_DAILY: &'static str;

    /// Completes `INSERT INTO charges_daily (day, customer_id, plan_id,
    /// tool, unit, amount, entries) VALUES …` so that an existing row gets
    /// the amount and entries added.
    const ADD_TO_CHARGES_DAILY: &'static str;

    /// Completes `INSERT INTO outcomes_daily (day, customer_id, tool,
    /// outcome, reason, calls) VALUES …` so that an existing row gets the
    /// calls added.
    const ADD_TO_OUTCOMES_DAILY: &'static str;

    /// Completes `INSERT INTO call_charges (customer_id, charge_key,
    /// attempt, state, amount, call_id, plan_id, tool, created_at,
    /// updated_at) VALUES …` so that an existing row takes the new values
    /// of every column but `created_at`.
    const REPLACE_CALL_CHARGE: &'static str;

    /// Completes `INSERT INTO usage_records (…) VALUES …` so that a call id
    /// already stored is skipped and the ids actually inserted come back
    /// (`ON CONFLICT DO NOTHING RETURNING`), where the dialect can. `None`:
    /// the store reads which ids are stored first, then inserts the rest.
    const SKIP_STORED_RETURNING_NEW: Option<&'static str>;

    /// The most bind parameters one statement may carry.
    const MAX_PARAMS: usize;

    /// The 64-bit integer type of `CAST(… AS …)`: a `SUM` of `BIGINT`s is
    /// a decimal on PostgreSQL and MySQL, cast back to read it as `i64`.
    const INT_CAST: &'static str;

    /// This backend's embedded migrations, with sqlx's own locking off (the
    /// store takes the lock itself, around its version check).
    fn migrator() -> Migrator;

    /// Parses a URL into connect options with the store's settings applied
    /// (SQLite pragmas, for instance).
    fn connect_options(url: &str) -> Result<ConnectOptionsOf<Self>, sqlx::Error>;

    /// Connect options that open an existing database only (the source of
    /// `db copy`: a SQLite file is not created when it is missing).
    fn existing_only(options: ConnectOptionsOf<Self>) -> ConnectOptionsOf<Self> {
        options
    }

    /// Pool settings this backend needs beyond the common ones.
    fn tune_pool(pool: PoolOptions<Self>, _url: &str) -> PoolOptions<Self> {
        pool
    }

    /// Whether a database error means the database cannot serve right now
    /// (shutting down, out of connections, disk I/O) rather than a bad
    /// request.
    fn is_unavailable(error: &dyn DatabaseError) -> bool;

    /// Whether a database error is a lost race worth re-running the
    /// transaction for (deadlock, serialization failure, busy).
    fn is_transient(error: &dyn DatabaseError) -> bool;

    /// What a connect-time database error says about the setup, if it is
    /// one the operator can fix.
    fn connect_failure(error: &dyn DatabaseError) -> Option<ConnectFailure>;
}

/// [`Driver::ADD_TO_DAILY`] in the `ON CONFLICT` dialect (SQLite,
/// PostgreSQL).
pub(super) const ON_CONFLICT_ADD_TO_DAILY: &str = " ON CONFLICT (day, customer_id, method, tool) DO UPDATE SET \
     calls = usage_daily.calls + excluded.calls, \
     errors = usage_daily.errors + excluded.errors, \
     units = usage_daily.units + excluded.units, \
     duration_us = usage_daily.duration_us + excluded.duration_us, \
     bytes_in = usage_daily.bytes_in + excluded.bytes_in, \
     bytes_out = usage_daily.bytes_out + excluded.bytes_out";

/// [`Driver::ADD_TO_CHARGES_DAILY`] in the `ON CONFLICT` dialect.
pub(super) const ON_CONFLICT_ADD_TO_CHARGES_DAILY: &str = " ON CONFLICT (day, customer_id, plan_id, tool, unit) DO UPDATE SET \
     amount = charges_daily.amount + excluded.amount, \
     entries = charges_daily.entries + excluded.entries";

/// [`Driver::ADD_TO_OUTCOMES_DAILY`] in the `ON CONFLICT` dialect.
pub(super) const ON_CONFLICT_ADD_TO_OUTCOMES_DAILY: &str = " ON CONFLICT (day, customer_id, tool, outcome, reason) DO UPDATE SET \
     calls = outcomes_daily.calls + excluded.calls";

/// [`Driver::REPLACE_CALL_CHARGE`] in the `ON CONFLICT` dialect.
pub(super) const ON_CONFLICT_REPLACE_CALL_CHARGE: &str = " ON CONFLICT (customer_id, charge_key) DO UPDATE SET \
     attempt = excluded.attempt, state = excluded.state, amount = excluded.amount, \
     call_id = excluded.call_id, plan_id = excluded.plan_id, tool = excluded.tool, \
     updated_at = excluded.updated_at";

/// A connect-time refusal with a known fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnectFailure {
    /// The user name or password is wrong.
    Credentials,
    /// The named database does not exist.
    MissingDatabase,
    /// The SQLite file cannot be opened or created.
    CannotOpenFile,
}

/// A connection that runs queries: `&mut Connection` as an executor.
pub(super) trait Exec: Connection {
    /// This connection as an executor for one query.
    fn executor(&mut self) -> impl Executor<'_, Database = Self::Database>;
}

impl<C> Exec for C
where
    C: Connection,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
{
    fn executor(&mut self) -> impl Executor<'_, Database = Self::Database> {
        self
    }
}

/// Bind arguments of the few types the store uses.
pub(super) trait Bind: Arguments {
    /// Adds a text value.
    fn add_text(&mut self, value: &str) -> Result<(), BoxDynError>;
    /// Adds a nullable text value.
    fn add_opt_text(&mut self, value: Option<&str>) -> Result<(), BoxDynError>;
    /// Adds a 64-bit integer.
    fn add_int(&mut self, value: i64) -> Result<(), BoxDynError>;
    /// Adds a nullable 64-bit integer.
    fn add_opt_int(&mut self, value: Option<i64>) -> Result<(), BoxDynError>;
    /// Adds a byte string.
    fn add_bytes(&mut self, value: &[u8]) -> Result<(), BoxDynError>;
    /// Adds a nullable byte string.
    fn add_opt_bytes(&mut self, value: Option<&[u8]>) -> Result<(), BoxDynError>;
}

impl<A> Bind for A
where
    A: Arguments,
    for<'a> &'a str: Encode<'a, A::Database> + Type<A::Database>,
    for<'a> Option<&'a str>: Encode<'a, A::Database>,
    for<'a> i64: Encode<'a, A::Database> + Type<A::Database>,
    for<'a> Option<i64>: Encode<'a, A::Database>,
    for<'a> &'a [u8]: Encode<'a, A::Database> + Type<A::Database>,
    for<'a> Option<&'a [u8]>: Encode<'a, A::Database>,
{
    fn add_text(&mut self, value: &str) -> Result<(), BoxDynError> {
        self.add(value)
    }
    fn add_opt_text(&mut self, value: Option<&str>) -> Result<(), BoxDynError> {
        self.add(value)
    }
    fn add_int(&mut self, value: i64) -> Result<(), BoxDynError> {
        self.add(value)
    }
    fn add_opt_int(&mut self, value: Option<i64>) -> Result<(), BoxDynError> {
        self.add(value)
    }
    fn add_bytes(&mut self, value: &[u8]) -> Result<(), BoxDynError> {
        self.add(value)
    }
    fn add_opt_bytes(&mut self, value: Option<&[u8]>) -> Result<(), BoxDynError> {
        self.add(value)
    }
}

/// Reads columns of the few types the store uses, by position.
pub(super) trait Read: Row {
    /// A text column.
    fn text(&self, index: usize) -> Result<String, sqlx::Error>;
    /// A nullable text column.
    fn opt_text(&self, index: usize) -> Result<Option<String>, sqlx::Error>;
    /// A 64-bit integer column.
    fn int(&self, index: usize) -> Result<i64, sqlx::Error>;
    /// A nullable 64-bit integer column.
    fn opt_int(&self, index: usize) -> Result<Option<i64>, sqlx::Error>;
    /// A nullable byte-string column.
    fn opt_bytes(&self, index: usize) -> Result<Option<Vec<u8>>, sqlx::Error>;
}

impl<R> Read for R
where
    R: Row,
    usize: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, index: usize) -> Result<String, sqlx::Error> {
        self.try_get(index)
    }
    fn opt_text(&self, index: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(index)
    }
    fn int(&self, index: usize) -> Result<i64, sqlx::Error> {
        self.try_get(index)
    }
    fn opt_int(&self, index: usize) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(index)
    }
    fn opt_bytes(&self, index: usize) -> Result<Option<Vec<u8>>, sqlx::Error> {
        self.try_get(index)
    }
}
