//! One end of a copy: a single connection to one backend, behind the
//! object-safe [`Side`] so that the copy itself is written once, not once
//! per pair of backends. Rows travel between the two as [`Cell`]s.
//!
//! What differs per backend is here and small: how the source's snapshot
//! is taken, how explicit ids are inserted (PostgreSQL's identity columns
//! need `OVERRIDING SYSTEM VALUE`), and how the id sequences are moved past
//! the ids copied.

use async_trait::async_trait;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migrate, MigrateError};
use sqlx::{AssertSqlSafe, Connection};

use super::tables::{Kind, Table};
use crate::store::Backend;
use crate::store::driver::{Bind, Driver, Exec, Read};
use crate::store::statement::{Statement, Value};

/// sqlx's bookkeeping table of applied migrations.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Most bytes of values one `INSERT` carries (well under MySQL's default
/// `max_allowed_packet`).
const STATEMENT_BYTES: usize = 4 << 20;

/// Most rows one `INSERT` carries.
const STATEMENT_ROWS: usize = 1_000;

/// One value of a row, as read from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cell {
    /// SQL `NULL`.
    Null,
    /// A 64-bit integer.
    Int(i64),
    /// Text.
    Text(String),
    /// A byte string.
    Bytes(Vec<u8>),
}

impl Cell {
    /// About how many bytes the value takes in a statement.
    fn size(&self) -> usize {
        match self {
            Cell::Null => 4,
            Cell::Int(_) => 8,
            Cell::Text(text) => text.len(),
            Cell::Bytes(bytes) => bytes.len(),
        }
    }
}

/// A row: one cell per column of its [`Table`], in the table's order.
pub(super) type Row = Vec<Cell>;

/// A cell bound as its column's type (a `NULL` is typed too: PostgreSQL
/// refuses a text `NULL` in a `BIGINT` column).
struct Typed<'a>(Kind, &'a Cell);

impl Value for Typed<'_> {
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError> {
        match self {
            Typed(_, Cell::Int(value)) => args.add_int(*value),
            Typed(_, Cell::Text(value)) => args.add_text(value),
            Typed(_, Cell::Bytes(value)) => args.add_bytes(value),
            Typed(Kind::Int, Cell::Null) => args.add_opt_int(None),
            Typed(Kind::Text, Cell::Null) => args.add_opt_text(None),
            Typed(Kind::Bytes, Cell::Null) => args.add_opt_bytes(None),
        }
    }
}

/// How the source's schema compares with this binary's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SchemaState {
    /// Exactly this binary's migrations, all applied.
    Current,
    /// No `_sqlx_migrations` could be read: not an mcp-meter database.
    Unreadable(String),
    /// Some of this binary's migrations are missing.
    Older {
        /// The highest version applied.
        database: i64,
    },
    /// A migration this binary does not know is applied.
    Newer {
        /// The highest version applied.
        database: i64,
    },
    /// A migration failed half-way or differs from this binary's.
    Differs {
        /// Its version.
        version: i64,
    },
}

/// One end of the copy, whatever its backend.
#[async_trait]
pub(super) trait Side: Send {
    /// The backend.
    fn backend(&self) -> Backend;

    /// The highest migration version this binary knows for the backend.
    fn binary_version(&self) -> i64;

    /// Compares the database's applied migrations with this binary's,
    /// without changing anything.
    async fn schema_state(&mut self) -> SchemaState;

    /// Starts the read-only transaction every read of the source then
    /// runs in: one consistent snapshot, whatever else writes meanwhile.
    async fn begin_snapshot(&mut self) -> Result<(), sqlx::Error>;

    /// Sets the session up for inserting explicit ids (the target).
    async fn prepare_target(&mut self) -> Result<(), sqlx::Error>;

    /// The table's row count.
    async fn count(&mut self, table: &'static Table) -> Result<u64, sqlx::Error>;

    /// Up to `limit` rows in primary-key order, after the key `after`.
    async fn read(
        &mut self,
        table: &'static Table,
        after: Option<&[Cell]>,
        limit: usize,
    ) -> Result<Vec<Row>, sqlx::Error>;

    /// Inserts `rows` in one transaction.
    async fn write(&mut self, table: &'static Table, rows: &[Row]) -> Result<(), sqlx::Error>;

    /// Moves the table's id sequence past its highest id, so that the next
    /// row inserted gets a fresh id.
    async fn reset_ids(&mut self, table: &'static Table) -> Result<(), sqlx::Error>;

    /// Ends the snapshot, if any, and closes the connection.
    async fn close(self: Box<Self>);
}

/// A [`Side`] over one connection of backend `DB`.
pub(super) struct Conn<DB: Driver> {
    conn: DB::Connection,
    in_snapshot: bool,
}

impl<DB: Driver> Conn<DB> {
    /// Wraps an open connection.
    pub(super) fn new(conn: DB::Connection) -> Self {
        Self {
            conn,
            in_snapshot: false,
        }
    }

    /// Runs fixed SQL through the text protocol (transaction control, which
    /// MySQL does not prepare).
    async fn raw(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(self.conn.executor()).await?;
        Ok(())
    }

    async fn applied(&mut self) -> Result<(Vec<(i64, Vec<u8>)>, Option<i64>), MigrateError> {
        let applied = self.conn.list_applied_migrations(MIGRATIONS_TABLE).await?;
        let dirty = self.conn.dirty_version(MIGRATIONS_TABLE).await?;
        let applied = applied
            .into_iter()
            .map(|m| (m.version, m.checksum.into_owned()))
            .collect();
        Ok((applied, dirty))
    }
}

#[async_trait]
impl<DB: Driver> Side for Conn<DB> {
    fn backend(&self) -> Backend {
        DB::BACKEND
    }

    fn binary_version(&self) -> i64 {
        binary_migrations::<DB>()
            .iter()
            .map(|(version, _)| *version)
            .max()
            .unwrap_or(0)
    }

    async fn schema_state(&mut self) -> SchemaState {
        match self.applied().await {
            Ok((applied, dirty)) => compare_schema(&binary_migrations::<DB>(), &applied, dirty),
            Err(error) => SchemaState::Unreadable(error.to_string()),
        }
    }

    async fn begin_snapshot(&mut self) -> Result<(), sqlx::Error> {
        match DB::BACKEND {
            Backend::Sqlite => self.raw("BEGIN").await?,
            Backend::Postgres => {
                self.raw("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?
            }
            Backend::MySql => {
                self.raw("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .await?;
                self.raw("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await?
            }
        }
        self.in_snapshot = true;
        Ok(())
    }

    async fn prepare_target(&mut self) -> Result<(), sqlx::Error> {
        if DB::BACKEND == Backend::MySql {
            // An explicit id 0 would otherwise be replaced by the next
            // auto-increment value.
            self.raw(
                "SET SESSION sql_mode = \
                 CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'NO_AUTO_VALUE_ON_ZERO')",
            )
            .await?;
        }
        Ok(())
    }

    async fn count(&mut self, table: &'static Table) -> Result<u64, sqlx::Error> {
        let mut statement = Statement::<DB>::new("SELECT COUNT(*) FROM ");
        statement.push(table.name);
        let row = statement.fetch_optional(&mut self.conn).await?;
        let count = match row {
            Some(row) => row.int(0)?,
            None => 0,
        };
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn read(
        &mut self,
        table: &'static Table,
        after: Option<&[Cell]>,
        limit: usize,
    ) -> Result<Vec<Row>, sqlx::Error> {
        let statement = select::<DB>(table, after, limit);
        let rows = statement.fetch_all(&mut self.conn).await?;
        rows.iter().map(|row| decode(table, row)).collect()
    }

    async fn write(&mut self, table: &'static Table, rows: &[Row]) -> Result<(), sqlx::Error> {
        let max_rows = (DB::MAX_PARAMS / table.columns.len()).clamp(1, STATEMENT_ROWS);
        let mut tx = self.conn.begin_with(DB::BEGIN_WRITE).await?;
        for chunk in statement_chunks(rows, max_rows) {
            insert::<DB>(table, chunk).execute(&mut tx).await?;
        }
        tx.commit().await
    }

    async fn reset_ids(&mut self, table: &'static Table) -> Result<(), sqlx::Error> {
        match DB::BACKEND {
            // Explicit ids move SQLite's AUTOINCREMENT sequence by themselves.
            Backend::Sqlite => Ok(()),
            Backend::Postgres => {
                let mut statement = Statement::<DB>::new("SELECT setval(pg_get_serial_sequence('");
                statement
                    .push(table.name)
                    .push("', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM ")
                    .push(table.name);
                statement.execute(&mut self.conn).await
            }
            Backend::MySql => {
                let mut statement = Statement::<DB>::new("SELECT MAX(id) FROM ");
                statement.push(table.name);
                let highest = match statement.fetch_optional(&mut self.conn).await? {
                    Some(row) => row.opt_int(0)?.unwrap_or(0),
                    None => 0,
                };
                let next = highest.saturating_add(1);
                // Both parts are ours: a table name of the fixed list and an
                // integer (DDL takes no bound parameters).
                let sql = format!("ALTER TABLE {} AUTO_INCREMENT = {next}", table.name);
                sqlx::raw_sql(AssertSqlSafe(sql))
                    .execute(self.conn.executor())
                    .await?;
                Ok(())
            }
        }
    }

    async fn close(mut self: Box<Self>) {
        if self.in_snapshot {
            let _ = self.raw("ROLLBACK").await;
        }
        let _ = self.conn.close().await;
    }
}

/// This binary's migrations for `DB`: version and checksum.
fn binary_migrations<DB: Driver>() -> Vec<(i64, Vec<u8>)> {
    DB::migrator()
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect()
}

/// Compares applied migrations (and the first that failed half-way, if
/// any) with this binary's.
fn compare_schema(
    binary: &[(i64, Vec<u8>)],
    applied: &[(i64, Vec<u8>)],
    dirty: Option<i64>,
) -> SchemaState {
    let database = applied.iter().map(|(v, _)| *v).max().unwrap_or(0);
    if applied
        .iter()
        .any(|(v, _)| !binary.iter().any(|(b, _)| b == v))
    {
        return SchemaState::Newer { database };
    }
    if let Some(version) = dirty {
        return SchemaState::Differs { version };
    }
    for (version, checksum) in binary {
        match applied.iter().find(|(v, _)| v == version) {
            None => return SchemaState::Older { database },
            Some((_, applied)) if applied != checksum => {
                return SchemaState::Differs { version: *version };
            }
            Some(_) => {}
        }
    }
    SchemaState::Current
}

/// `SELECT <columns> FROM <table> [WHERE key > after] ORDER BY key LIMIT n`.
fn select<DB: Driver>(table: &Table, after: Option<&[Cell]>, limit: usize) -> Statement<DB> {
    let mut statement = Statement::<DB>::new("SELECT ");
    push_names(&mut statement, table.columns);
    statement.push(" FROM ").push(table.name);
    if let Some(after) = after {
        statement.push(" WHERE ");
        after_key(&mut statement, table, after);
    }
    statement.push(" ORDER BY ");
    push_names(&mut statement, table.key_columns());
    statement
        .push(" LIMIT ")
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
    statement
}

/// `a.b, c` for the columns.
fn push_names<DB: Driver>(statement: &mut Statement<DB>, columns: &[super::tables::Column]) {
    for (n, column) in columns.iter().enumerate() {
        if n > 0 {
            statement.push(", ");
        }
        statement.push(column.name);
    }
}

/// The rows whose key comes after `after`, in a form every backend's
/// planner turns into an index range: `k1 >= ? AND (k1 > ? OR (k1 = ? AND
/// (k2 > ? OR …)))` (a row-value comparison is not a range on MariaDB).
fn after_key<DB: Driver>(statement: &mut Statement<DB>, table: &Table, after: &[Cell]) {
    let key = table.key_columns();
    if key.len() > 1 {
        statement.push(key[0].name).push(" >= ");
        statement.bind(Typed(key[0].kind, &after[0]));
        statement.push(" AND ");
    }
    after_from::<DB>(statement, key, after, 0);
}

fn after_from<DB: Driver>(
    statement: &mut Statement<DB>,
    key: &[super::tables::Column],
    after: &[Cell],
    n: usize,
) {
    let column = &key[n];
    if n + 1 == key.len() {
        statement.push(column.name).push(" > ");
        statement.bind(Typed(column.kind, &after[n]));
        return;
    }
    statement.push("(").push(column.name).push(" > ");
    statement.bind(Typed(column.kind, &after[n]));
    statement.push(" OR (").push(column.name).push(" = ");
    statement.bind(Typed(column.kind, &after[n]));
    statement.push(" AND ");
    after_from::<DB>(statement, key, after, n + 1);
    statement.push("))");
}

/// `INSERT INTO <table> (<columns>) VALUES (…), (…)`, explicit ids
/// included.
fn insert<DB: Driver>(table: &Table, rows: &[Row]) -> Statement<DB> {
    let mut statement = Statement::<DB>::new("INSERT INTO ");
    statement.push(table.name).push(" (");
    push_names(&mut statement, table.columns);
    statement.push(")");
    if table.identity && DB::BACKEND == Backend::Postgres {
        statement.push(" OVERRIDING SYSTEM VALUE");
    }
    statement.push(" VALUES ");
    statement.one_off().tuples(rows, |tuple, row| {
        for (column, cell) in table.columns.iter().zip(row) {
            tuple.bind(Typed(column.kind, cell));
        }
    });
    statement
}

/// Splits `rows` into runs of at most `max_rows` rows and about
/// [`STATEMENT_BYTES`] of values each (never empty: a single row larger
/// than that goes alone).
fn statement_chunks(rows: &[Row], max_rows: usize) -> impl Iterator<Item = &[Row]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut end = 0;
        while end < rest.len() && end < max_rows {
            let size: usize = rest[end].iter().map(Cell::size).sum();
            if end > 0 && bytes + size > STATEMENT_BYTES {
                break;
            }
            bytes += size;
            end += 1;
        }
        let (chunk, tail) = rest.split_at(end.max(1));
        rest = tail;
        Some(chunk)
    })
}

/// A database row as cells, each read as its column's type.
fn decode<R: Read>(table: &Table, row: &R) -> Result<Row, sqlx::Error> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(n, column)| {
            Ok(match column.kind {
                Kind::Int => row.opt_int(n)?.map_or(Cell::Null, Cell::Int),
                Kind::Text => row.opt_text(n)?.map_or(Cell::Null, Cell::Text),
                Kind::Bytes => row.opt_bytes(n)?.map_or(Cell::Null, Cell::Bytes),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(size: usize) -> Row {
        vec![Cell::Text("x".repeat(size))]
    }

    #[test]
    fn chunks_respect_rows_and_bytes() {
        let rows: Vec<Row> = (0..10).map(|_| row(10)).collect();
        let sizes: Vec<usize> = statement_chunks(&rows, 4).map(<[Row]>::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let big: Vec<Row> = (0..3).map(|_| row(STATEMENT_BYTES / 2 + 1)).collect();
        let sizes: Vec<usize> = statement_chunks(&big, 100).map(<[Row]>::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
        let huge = vec![row(STATEMENT_BYTES * 2)];
        assert_eq!(statement_chunks(&huge, 100).count(), 1);
        assert_eq!(statement_chunks(&[], 100).count(), 0);
    }

    #[test]
    fn schema_comparison() {
        let binary = vec![(1, vec![1]), (2, vec![2])];
        assert_eq!(compare_schema(&binary, &binary, None), SchemaState::Current);
        assert_eq!(
            compare_schema(&binary, &binary[..1], None),
            SchemaState::Older { database: 1 }
        );
        let newer = vec![(1, vec![1]), (2, vec![2]), (3, vec![3])];
        assert_eq!(
            compare_schema(&binary, &newer, None),
            SchemaState::Newer { database: 3 }
        );
        let changed = vec![(1, vec![1]), (2, vec![9])];
        assert_eq!(
            compare_schema(&binary, &changed, None),
            SchemaState::Differs { version: 2 }
        );
        assert_eq!(
            compare_schema(&binary, &binary, Some(2)),
            SchemaState::Differs { version: 2 }
        );
    }
}
