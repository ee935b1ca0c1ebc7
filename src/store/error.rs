//! Errors: [`OpenError`] when the store cannot be opened (each says what to
//! fix), and the mapping of sqlx errors to the contract's [`StoreError`]
//! while serving. URLs in messages always have their password hidden.

use mcp_meter_plugin::ports::StoreError;

use super::driver::Driver;

/// Why the store could not be opened or migrated. Every message names the
/// database URL (password hidden) and what to change.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL's scheme is not one mcp-meter speaks.
    #[error(
        "unsupported database URL `{url}`: [database] url must start with sqlite:// \
         (e.g. sqlite://mcp-meter.db), postgres:// or mysql://"
    )]
    UnsupportedUrl {
        /// The URL, password hidden.
        url: String,
    },
    /// The URL could not be parsed.
    #[error("invalid database URL `{url}`: {reason}; fix [database] url")]
    InvalidUrl {
        /// The URL, password hidden.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The server could not be reached (down, wrong host or port, timeout).
    #[error(
        "cannot reach the database at `{url}`: {reason}; check that the server is running \
         and that the host and port in [database] url are right"
    )]
    Unreachable {
        /// The URL, password hidden.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the user name or password.
    #[error(
        "the database at `{url}` refused the login: {reason}; check the user name and \
         password in [database] url"
    )]
    Credentials {
        /// The URL, password hidden.
        url: String,
        /// What the server said.
        reason: String,
    },
    /// The database named in the URL does not exist on the server.
    #[error(
        "the database named in `{url}` does not exist: {reason}; create it first \
         (CREATE DATABASE …) or fix the name in [database] url"
    )]
    MissingDatabase {
        /// The URL, password hidden.
        url: String,
        /// What the server said.
        reason: String,
    },
    /// The SQLite file could not be opened or created.
    #[error(
        "cannot open the SQLite database `{url}`: {reason}; check that its directory \
         exists and is writable"
    )]
    CannotOpenFile {
        /// The URL.
        url: String,
        /// What SQLite said.
        reason: String,
    },
    /// The database was migrated by a newer mcp-meter.
    #[error(
        "the database at `{url}` has schema version {database}, but this mcp-meter only \
         knows versions up to {binary}: it was migrated by a newer mcp-meter; upgrade \
         mcp-meter (it refuses to use a schema it does not know)"
    )]
    NewerSchema {
        /// The URL, password hidden.
        url: String,
        /// The highest migration version applied to the database.
        database: i64,
        /// The highest migration version this binary knows.
        binary: i64,
    },
    /// Applying or checking the migrations failed.
    #[error("migrating the database at `{url}` failed: {reason}")]
    Migration {
        /// The URL, password hidden.
        url: String,
        /// What failed.
        reason: String,
    },
    /// Any other database error while opening.
    #[error("cannot open the database at `{url}`: {reason}")]
    Other {
        /// The URL, password hidden.
        url: String,
        /// What failed.
        reason: String,
    },
}

impl OpenError {
    /// The URL the error is about, password hidden.
    pub fn url(&self) -> &str {
        match self {
            OpenError::UnsupportedUrl { url }
            | OpenError::InvalidUrl { url, .. }
            | OpenError::Unreachable { url, .. }
            | OpenError::Credentials { url, .. }
            | OpenError::MissingDatabase { url, .. }
            | OpenError::CannotOpenFile { url, .. }
            | OpenError::NewerSchema { url, .. }
            | OpenError::Migration { url, .. }
            | OpenError::Other { url, .. } => url,
        }
    }
}

/// A failure inside the store: a sqlx error still to be classified, or an
/// answer already in the contract's terms (not found, conflict).
#[derive(Debug)]
pub(super) enum Fault {
    /// A database error.
    Sql(sqlx::Error),
    /// A fault already classified.
    Store(StoreError),
}

impl From<sqlx::Error> for Fault {
    fn from(error: sqlx::Error) -> Self {
        Fault::Sql(error)
    }
}

impl From<StoreError> for Fault {
    fn from(error: StoreError) -> Self {
        Fault::Store(error)
    }
}

impl Fault {
    /// The fault as a [`StoreError`].
    pub(super) fn into_store<DB: Driver>(self) -> StoreError {
        match self {
            Fault::Sql(error) => store_error::<DB>(error),
            Fault::Store(error) => error,
        }
    }
}

/// A sqlx error while serving, as the contract's [`StoreError`].
pub(super) fn store_error<DB: Driver>(error: sqlx::Error) -> StoreError {
    if let Some(message) = unavailable::<DB>(&error) {
        return StoreError::Unavailable(message);
    }
    match &error {
        sqlx::Error::RowNotFound => StoreError::NotFound(error.to_string()),
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        _ => StoreError::Other(error.to_string()),
    }
}

/// What makes the database unable to serve right now (unreachable, out of
/// connections, out of disk), if that is what `error` says; `None` for an
/// error of the request itself.
pub(super) fn unavailable<DB: Driver>(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Some(error.to_string()),
        sqlx::Error::Database(db)
            if !db.is_unique_violation() && DB::is_unavailable(db.as_ref()) =>
        {
            Some(db.message().to_owned())
        }
        _ => None,
    }
}

/// Whether a failed transaction is worth running again: it lost a race
/// (unique violation on a row another writer just added, deadlock,
/// serialization failure, busy).
pub(super) fn is_lost_race<DB: Driver>(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.is_unique_violation() || DB::is_transient(db.as_ref()),
        _ => false,
    }
}
