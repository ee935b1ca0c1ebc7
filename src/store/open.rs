//! Opening the store: pick the backend by URL scheme, connect once (so the
//! real cause of a failure is reported, not a pool timeout), migrate, then
//! open the pool. Every failure is an [`OpenError`] naming the URL with its
//! password hidden.

use std::sync::Arc;

use sqlx::error::DatabaseError;
use sqlx::migrate::MigrateError;
use sqlx::pool::PoolOptions;
use sqlx::{ConnectOptions, Connection, MySql, Postgres, Sqlite};

use super::driver::{ConnectFailure, ConnectOptionsOf, Driver};
use super::options::{backend_of, redact_url};
use super::schema::{self, MigrationReport, SchemaError};
use super::sql::SqlStore;
use super::{Backend, OpenError, Store, StoreOptions};

/// Opens the store at `options.url`: connects, applies the migrations this
/// binary knows, and returns a store over a connection pool. A database
/// migrated by a newer mcp-meter is refused.
pub async fn open(options: &StoreOptions) -> Result<Arc<dyn Store>, OpenError> {
    match backend(options)? {
        Backend::Sqlite => open_with::<Sqlite>(options).await,
        Backend::Postgres => open_with::<Postgres>(options).await,
        Backend::MySql => open_with::<MySql>(options).await,
    }
}

/// Applies the migrations this binary knows and reports which were applied
/// now and which were there already (`mcp-meter migrate`). Refuses a
/// database migrated by a newer mcp-meter.
pub async fn migrate(options: &StoreOptions) -> Result<MigrationReport, OpenError> {
    match backend(options)? {
        Backend::Sqlite => migrate_with::<Sqlite>(options).await,
        Backend::Postgres => migrate_with::<Postgres>(options).await,
        Backend::MySql => migrate_with::<MySql>(options).await,
    }
}

/// The backend `options.url` names; an unknown scheme is an error.
pub(super) fn backend(options: &StoreOptions) -> Result<Backend, OpenError> {
    backend_of(&options.url).ok_or_else(|| OpenError::UnsupportedUrl {
        url: redact_url(&options.url),
    })
}

async fn open_with<DB: Driver>(options: &StoreOptions) -> Result<Arc<dyn Store>, OpenError> {
    let (connect, mut conn) = connect_once::<DB>(options).await?;
    schema_on::<DB>(options, &mut conn).await?;
    let pool = DB::tune_pool(PoolOptions::new(), &options.url)
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .test_before_acquire(true)
        .connect_with(connect)
        .await
        .map_err(|e| connect_error::<DB>(options, e));
    // Closed only now: an in-memory SQLite database lives while one of its
    // connections is open.
    let _ = conn.close().await;
    Ok(Arc::new(SqlStore::<DB>::new(pool?)))
}

async fn migrate_with<DB: Driver>(options: &StoreOptions) -> Result<MigrationReport, OpenError> {
    let (_, mut conn) = connect_once::<DB>(options).await?;
    let report = schema_on::<DB>(options, &mut conn).await;
    let _ = conn.close().await;
    report
}

/// One connection, made directly (not through a pool, which would retry a
/// refused connection until its timeout and then report only the timeout).
pub(super) async fn connect_once<DB: Driver>(
    options: &StoreOptions,
) -> Result<(ConnectOptionsOf<DB>, DB::Connection), OpenError> {
    let connect = connect_options::<DB>(options)?;
    let conn = connect_with::<DB>(options, &connect).await?;
    Ok((connect, conn))
}

/// One connection to a database that must exist already (a missing SQLite
/// file is an error instead of a new empty database): the source of
/// `db copy`.
pub(super) async fn connect_existing<DB: Driver>(
    options: &StoreOptions,
) -> Result<DB::Connection, OpenError> {
    let connect = DB::existing_only(connect_options::<DB>(options)?);
    connect_with::<DB>(options, &connect).await
}

fn connect_options<DB: Driver>(options: &StoreOptions) -> Result<ConnectOptionsOf<DB>, OpenError> {
    DB::connect_options(&options.url).map_err(|e| OpenError::InvalidUrl {
        url: redact_url(&options.url),
        reason: e.to_string(),
    })
}

async fn connect_with<DB: Driver>(
    options: &StoreOptions,
    connect: &ConnectOptionsOf<DB>,
) -> Result<DB::Connection, OpenError> {
    match tokio::time::timeout(options.acquire_timeout, connect.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(connect_error::<DB>(options, error)),
        Err(_) => Err(OpenError::Unreachable {
            url: redact_url(&options.url),
            reason: format!("no answer within {:?}", options.acquire_timeout),
        }),
    }
}

/// Brings the schema of the database behind `conn` up to date, with any
/// failure as an [`OpenError`] naming the URL.
pub(super) async fn schema_on<DB: Driver>(
    options: &StoreOptions,
    conn: &mut DB::Connection,
) -> Result<MigrationReport, OpenError> {
    let url = redact_url(&options.url);
    let binary = DB::migrator().iter().map(|m| m.version).max().unwrap_or(0);
    schema::migrate::<DB>(conn)
        .await
        .map_err(|error| match error {
            SchemaError::Newer { database, binary } => OpenError::NewerSchema {
                url,
                database,
                binary,
            },
            SchemaError::Failed(MigrateError::VersionMissing(database)) => OpenError::NewerSchema {
                url,
                database,
                binary,
            },
            SchemaError::Failed(MigrateError::Execute(error)) => {
                match connect_error::<DB>(options, error) {
                    OpenError::Other { url, reason } => OpenError::Migration { url, reason },
                    other => other,
                }
            }
            SchemaError::Failed(error) => OpenError::Migration {
                url,
                reason: error.to_string(),
            },
        })
}

/// Classifies an error met while connecting.
fn connect_error<DB: Driver>(options: &StoreOptions, error: sqlx::Error) -> OpenError {
    let url = redact_url(&options.url);
    let reason = error.to_string();
    match &error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            OpenError::Unreachable { url, reason }
        }
        sqlx::Error::Configuration(_) => OpenError::InvalidUrl { url, reason },
        sqlx::Error::Database(db) => database_error::<DB>(db.as_ref(), url, reason),
        _ => OpenError::Other { url, reason },
    }
}

fn database_error<DB: Driver>(db: &dyn DatabaseError, url: String, reason: String) -> OpenError {
    match DB::connect_failure(db) {
        Some(ConnectFailure::Credentials) => OpenError::Credentials { url, reason },
        Some(ConnectFailure::MissingDatabase) => OpenError::MissingDatabase { url, reason },
        Some(ConnectFailure::CannotOpenFile) => OpenError::CannotOpenFile { url, reason },
        None if DB::is_unavailable(db) => OpenError::Unreachable { url, reason },
        None => OpenError::Other { url, reason },
    }
}
