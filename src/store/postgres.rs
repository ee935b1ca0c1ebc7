//! PostgreSQL: the usage write learns which rows it inserted from
//! `RETURNING`; errors are told apart by SQLSTATE.

use sqlx::Postgres;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;

use super::Backend;
use super::driver::{
    ConnectFailure, Driver, ON_CONFLICT_ADD_TO_CHARGES_DAILY, ON_CONFLICT_ADD_TO_DAILY,
    ON_CONFLICT_ADD_TO_OUTCOMES_DAILY, ON_CONFLICT_REPLACE_CALL_CHARGE,
};

impl Driver for Postgres {
    const BACKEND: Backend = Backend::Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";
    const ONE_WRITER: bool = false;
    const BATCH_ISOLATION: Option<&'static str> = None;
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const SKIP_STORED_RETURNING_NEW: Option<&'static str> =
        Some(" ON CONFLICT (call_id) DO NOTHING RETURNING call_id");
    const ADD_TO_DAILY: &'static str = ON_CONFLICT_ADD_TO_DAILY;
    const ADD_TO_CHARGES_DAILY: &'static str = ON_CONFLICT_ADD_TO_CHARGES_DAILY;
    const REPLACE_CALL_CHARGE: &'static str = ON_CONFLICT_REPLACE_CALL_CHARGE;
    const ADD_TO_OUTCOMES_DAILY: &'static str = ON_CONFLICT_ADD_TO_OUTCOMES_DAILY;
    // The wire protocol counts parameters in 16 bits.
    const MAX_PARAMS: usize = 65_535;
    const INT_CAST: &'static str = "BIGINT";

    fn migrator() -> Migrator {
        let mut migrator = sqlx::migrate!("migrations/postgres");
        migrator.set_locking(false);
        migrator
    }

    fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
        url.parse()
    }

    fn is_unavailable(error: &dyn DatabaseError) -> bool {
        // Class 08 connection exception, 53 insufficient resources, 57P0x
        // shutting down or starting up.
        sqlstate(error).is_some_and(|code| {
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P0")
        })
    }

    fn is_transient(error: &dyn DatabaseError) -> bool {
        // serialization_failure, deadlock_detected, lock_not_available.
        sqlstate(error).is_some_and(|code| matches!(code.as_str(), "40001" | "40P01" | "55P03"))
    }

    fn connect_failure(error: &dyn DatabaseError) -> Option<ConnectFailure> {
        match sqlstate(error)?.as_str() {
            // invalid_password, invalid_authorization_specification.
            "28P01" | "28000" => Some(ConnectFailure::Credentials),
            // invalid_catalog_name.
            "3D000" => Some(ConnectFailure::MissingDatabase),
            _ => None,
        }
    }
}

fn sqlstate(error: &dyn DatabaseError) -> Option<String> {
    error.code().map(|code| code.into_owned())
}
