//! A SQL statement built at run time with bind parameters, for any
//! [`Driver`]: the SQL is written once and each backend's arguments write
//! their own placeholders (`?` or `$n`). Values are always bound, never
//! formatted into the SQL text.

use sqlx::error::BoxDynError;
use sqlx::{Arguments, AssertSqlSafe, Database, IntoArguments};

use super::driver::{Bind, Driver, Exec};
use mcp_meter_plugin::identity::UnixMillis;

/// A statement under construction: SQL text plus its arguments.
pub(super) struct Statement<DB: Database> {
    sql: String,
    args: DB::Arguments,
    persistent: bool,
    error: Option<BoxDynError>,
}

/// A value that can be bound to a placeholder.
pub(super) trait Value {
    /// Appends the value to `args`.
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError>;
}

impl Value for &str {
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError> {
        args.add_text(self)
    }
}

impl Value for Option<&str> {
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError> {
        args.add_opt_text(self)
    }
}

impl Value for i64 {
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError> {
        args.add_int(self)
    }
}

impl Value for Option<i64> {
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError> {
        args.add_opt_int(self)
    }
}

impl Value for UnixMillis {
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError> {
        args.add_int(self.0)
    }
}

impl Value for Option<UnixMillis> {
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError> {
        args.add_opt_int(self.map(|at| at.0))
    }
}

impl Value for &[u8] {
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError> {
        args.add_bytes(self)
    }
}

impl Value for Option<&[u8]> {
    fn add_to<A: Bind>(self, args: &mut A) -> Result<(), BoxDynError> {
        args.add_opt_bytes(self)
    }
}

/// The arguments handed to sqlx (a local type, so that it can say how it
/// turns into the backend's arguments without a bound per backend).
struct Args<DB: Database>(DB::Arguments);

impl<DB: Database> IntoArguments<DB> for Args<DB> {
    fn into_arguments(self) -> DB::Arguments {
        self.0
    }
}

impl<DB: Driver> Statement<DB> {
    /// Starts a statement with `sql`.
    pub(super) fn new(sql: &str) -> Self {
        Self {
            sql: sql.to_owned(),
            args: DB::Arguments::default(),
            persistent: true,
            error: None,
        }
    }

    /// Plans the statement afresh on every run instead of caching it on the
    /// connection: for queries over tables that grow fast (usage), where a
    /// plan cached while the table was small (PostgreSQL's generic plan)
    /// could scan the whole table later.
    pub(super) fn one_off(&mut self) -> &mut Self {
        self.persistent = false;
        self
    }

    /// Appends SQL text (never a value: use [`Self::bind`]).
    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub(super) fn bind(&mut self, value: impl Value) -> &mut Self {
        if let Err(error) = value.add_to(&mut self.args) {
            self.error.get_or_insert(error);
        }
        if let Err(error) = self.args.format_placeholder(&mut self.sql) {
            self.error.get_or_insert(Box::new(error));
        }
        self
    }

    /// Appends `(…), (…)`: one parenthesised tuple per item, each filled by
    /// `each`.
    pub(super) fn tuples<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut each: impl FnMut(&mut Tuple<'_, DB>, T),
    ) -> &mut Self {
        for (n, item) in items.into_iter().enumerate() {
            self.push(if n == 0 { "(" } else { ", (" });
            each(
                &mut Tuple {
                    statement: self,
                    first: true,
                },
                item,
            );
            self.push(")");
        }
        self
    }

    /// Runs the statement, discarding any rows.
    pub(super) async fn execute(self, conn: &mut DB::Connection) -> Result<(), sqlx::Error> {
        let (sql, args, persistent) = self.finish()?;
        sqlx::query_with::<DB, _>(sql, args)
            .persistent(persistent)
            .execute(conn.executor())
            .await?;
        Ok(())
    }

    /// Runs the statement and returns all rows.
    pub(super) async fn fetch_all(
        self,
        conn: &mut DB::Connection,
    ) -> Result<Vec<DB::Row>, sqlx::Error> {
        let (sql, args, persistent) = self.finish()?;
        sqlx::query_with::<DB, _>(sql, args)
            .persistent(persistent)
            .fetch_all(conn.executor())
            .await
    }

    /// Runs the statement and returns its first row, if any.
    pub(super) async fn fetch_optional(
        self,
        conn: &mut DB::Connection,
    ) -> Result<Option<DB::Row>, sqlx::Error> {
        let (sql, args, persistent) = self.finish()?;
        sqlx::query_with::<DB, _>(sql, args)
            .persistent(persistent)
            .fetch_optional(conn.executor())
            .await
    }

    fn finish(self) -> Result<(AssertSqlSafe<String>, Args<DB>, bool), sqlx::Error> {
        match self.error {
            Some(error) => Err(sqlx::Error::Encode(error)),
            // Only fixed SQL fragments were pushed; every value is bound.
            None => Ok((AssertSqlSafe(self.sql), Args(self.args), self.persistent)),
        }
    }
}

/// One parenthesised tuple of [`Statement::tuples`]: binds separated by
/// commas.
pub(super) struct Tuple<'s, DB: Database> {
    statement: &'s mut Statement<DB>,
    first: bool,
}

impl<DB: Driver> Tuple<'_, DB> {
    /// Appends the next value of the tuple.
    pub(super) fn bind(&mut self, value: impl Value) -> &mut Self {
        if !self.first {
            self.statement.push(", ");
        }
        self.first = false;
        self.statement.bind(value);
        self
    }
}
