//! The schema: applies this binary's embedded migrations and refuses a
//! database that has a migration this binary does not know (it was migrated
//! by a newer mcp-meter, and using it could corrupt data). Runs under the
//! backend's migration lock, on one connection, before the pool opens.

use std::fmt;

use sqlx::migrate::{Migrate, MigrateError, Migrator};

use super::Backend;
use super::driver::Driver;

/// sqlx's bookkeeping table.
const TABLE: &str = "_sqlx_migrations";

/// One migration of the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationVersion {
    /// Its version (the number the migration file starts with).
    pub version: i64,
    /// What it does (the rest of the file name).
    pub description: String,
}

/// What a migration run did (for `mcp-meter migrate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The backend migrated.
    pub backend: Backend,
    /// Migrations applied by this run, oldest first.
    pub applied_now: Vec<MigrationVersion>,
    /// Migrations that were already applied before, oldest first.
    pub already_applied: Vec<MigrationVersion>,
}

impl MigrationReport {
    /// The schema version the database is at now (0 for none).
    pub fn current_version(&self) -> i64 {
        self.applied_now
            .iter()
            .chain(&self.already_applied)
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
    }
}

impl fmt::Display for MigrationReport {
    /// One line per migration applied now, then the version reached.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.applied_now {
            writeln!(f, "applied migration {} ({})", m.version, m.description)?;
        }
        write!(
            f,
            "{} schema at version {}: {} migration(s) applied now, {} already applied",
            self.backend,
            self.current_version(),
            self.applied_now.len(),
            self.already_applied.len()
        )
    }
}

/// Why the schema could not be brought up to date.
#[derive(Debug)]
pub(super) enum SchemaError {
    /// The database has migrations this binary does not know.
    Newer {
        /// The highest version applied to the database.
        database: i64,
        /// The highest version this binary knows.
        binary: i64,
    },
    /// Checking or applying the migrations failed.
    Failed(MigrateError),
}

impl From<MigrateError> for SchemaError {
    fn from(error: MigrateError) -> Self {
        SchemaError::Failed(error)
    }
}

/// Brings the schema up to date on `conn`, holding the migration lock
/// (PostgreSQL advisory lock, MySQL `GET_LOCK`; SQLite needs none).
pub(super) async fn migrate<DB: Driver>(
    conn: &mut DB::Connection,
) -> Result<MigrationReport, SchemaError> {
    let migrator = DB::migrator();
    conn.lock().await?;
    let outcome = migrate_locked::<DB>(&migrator, conn).await;
    let unlocked = conn.unlock().await;
    let report = outcome?;
    unlocked?;
    Ok(report)
}

async fn migrate_locked<DB: Driver>(
    migrator: &Migrator,
    conn: &mut DB::Connection,
) -> Result<MigrationReport, SchemaError> {
    conn.ensure_migrations_table(TABLE).await?;
    let before = conn.list_applied_migrations(TABLE).await?;
    let binary = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    if before.iter().any(|m| !migrator.version_exists(m.version)) {
        let database = before.iter().map(|m| m.version).max().unwrap_or(0);
        return Err(SchemaError::Newer { database, binary });
    }
    // `run_direct` is `Migrator::run` on a plain connection (sqlx's own
    // workaround for a higher-ranked `Acquire` bound); it also checks the
    // checksums of applied migrations and refuses a dirty one.
    migrator.run_direct(None, conn, false).await?;
    let after = conn.list_applied_migrations(TABLE).await?;
    let describe = |version: i64| MigrationVersion {
        version,
        description: migrator
            .iter()
            .find(|m| m.version == version)
            .map(|m| m.description.to_string())
            .unwrap_or_default(),
    };
    let was_applied = |version: i64| before.iter().any(|m| m.version == version);
    let mut applied_now: Vec<_> = after
        .iter()
        .filter(|m| !was_applied(m.version))
        .map(|m| describe(m.version))
        .collect();
    let mut already_applied: Vec<_> = before.iter().map(|m| describe(m.version)).collect();
    applied_now.sort_by_key(|m| m.version);
    already_applied.sort_by_key(|m| m.version);
    Ok(MigrationReport {
        backend: DB::BACKEND,
        applied_now,
        already_applied,
    })
}
