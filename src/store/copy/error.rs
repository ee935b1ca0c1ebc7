//! Why a copy did not happen or did not finish, in words an operator can
//! act on. URLs always have their password hidden.

use crate::store::OpenError;

/// Why a copy did not happen or did not finish. Each message names the
/// database (password hidden) and what to do; a copy that fails half-way
/// can be run again with the same arguments.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// `--from` and `--to` are the same URL.
    #[error("--from and --to name the same database (`{url}`): copy into another, empty database")]
    SameDatabase {
        /// The URL, password hidden.
        url: String,
    },
    /// The source cannot be opened.
    #[error("cannot open the source database (--from): {0}")]
    OpenSource(#[source] OpenError),
    /// The target cannot be opened or migrated.
    #[error("cannot open the target database (--to): {0}")]
    OpenTarget(#[source] OpenError),
    /// The source has no readable migration history.
    #[error(
        "the source database at `{url}` holds no mcp-meter schema (reading _sqlx_migrations \
         failed: {reason}); check --from"
    )]
    NotAStore {
        /// The URL, password hidden.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The source lacks some of this binary's migrations.
    #[error(
        "the source database at `{url}` is at schema version {database}, this mcp-meter at \
         {binary}: bring it up to date first with `mcp-meter migrate --database-url <the --from \
         URL>` (db copy never writes to the source)"
    )]
    SourceOlder {
        /// The URL, password hidden.
        url: String,
        /// The source's highest migration.
        database: i64,
        /// This binary's highest migration.
        binary: i64,
    },
    /// The source was migrated by a newer mcp-meter.
    #[error(
        "the source database at `{url}` has schema version {database}, newer than this \
         mcp-meter knows ({binary}): run db copy with the mcp-meter that migrated it"
    )]
    SourceNewer {
        /// The URL, password hidden.
        url: String,
        /// The source's highest migration.
        database: i64,
        /// This binary's highest migration.
        binary: i64,
    },
    /// A migration of the source failed half-way or is not this binary's.
    #[error(
        "the source database at `{url}` has migration {version} failed or changed (it is not \
         the migration this mcp-meter has): repair the source before copying it"
    )]
    SourceSchemaDiffers {
        /// The URL, password hidden.
        url: String,
        /// The migration's version.
        version: i64,
    },
    /// This build's copy does not know its own schema (a build error).
    #[error(
        "this mcp-meter's migrations reach schema version {binary}, but its db copy knows \
         version {known} only: this build cannot copy; use a release build"
    )]
    Unsupported {
        /// This binary's highest migration.
        binary: i64,
        /// The schema version db copy knows.
        known: i64,
    },
    /// The target holds rows that are not the start of this copy.
    #[error(
        "the target database at `{url}` is not empty and does not hold an interrupted copy of \
         this source: table {table} {detail}; nothing was written. Copy into an empty database \
         (drop and re-create it), or check --to"
    )]
    TargetNotEmpty {
        /// The URL, password hidden.
        url: String,
        /// The first table found different.
        table: &'static str,
        /// How it differs.
        detail: String,
    },
    /// The source failed during the copy.
    #[error("the source database at `{url}` failed while {what}: {reason}")]
    Source {
        /// The URL, password hidden.
        url: String,
        /// What the copy was doing.
        what: String,
        /// What failed.
        reason: String,
    },
    /// The target failed during the copy.
    #[error(
        "the target database at `{url}` failed while {what}: {reason}; the rows copied so far \
         are kept: run the same command again to continue"
    )]
    Target {
        /// The URL, password hidden.
        url: String,
        /// What the copy was doing.
        what: String,
        /// What failed.
        reason: String,
    },
    /// The target does not hold what the source holds after the copy.
    #[error(
        "verification failed: {}; ledger checksum (sha256) source {source_checksum}, \
         target {target_checksum}",
        mismatches.join("; ")
    )]
    Verification {
        /// What differs.
        mismatches: Vec<String>,
        /// The source's ledger checksum.
        source_checksum: String,
        /// The target's ledger checksum.
        target_checksum: String,
    },
}
