//! MySQL and MariaDB: InnoDB, utf8mb4 with binary collation (ids compare
//! case-sensitively, as on the other backends); errors are told apart by
//! MySQL error number.

use sqlx::MySql;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError};

use super::Backend;
use super::driver::{ConnectFailure, Driver};

impl Driver for MySql {
    const BACKEND: Backend = Backend::MySql;
    const BEGIN_WRITE: &'static str = "BEGIN";
    const ONE_WRITER: bool = false;
    const BATCH_ISOLATION: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const SKIP_STORED_RETURNING_NEW: Option<&'static str> = None;
    const ADD_TO_DAILY: &'static str = " ON DUPLICATE KEY UPDATE \
         calls = calls + VALUES(calls), \
         errors = errors + VALUES(errors), \
         units = units + VALUES(units), \
         duration_us = duration_us + VALUES(duration_us), \
         bytes_in = bytes_in + VALUES(bytes_in), \
         bytes_out = bytes_out + VALUES(bytes_out)";
    const ADD_TO_CHARGES_DAILY: &'static str = " ON DUPLICATE KEY UPDATE \
         amount = amount + VALUES(amount), \
         entries = entries + VALUES(entries)";
    const REPLACE_CALL_CHARGE: &'static str = " ON DUPLICATE KEY UPDATE \
         attempt = VALUES(attempt), state = VALUES(state), amount = VALUES(amount), \
         call_id = VALUES(call_id), plan_id = VALUES(plan_id), tool = VALUES(tool), \
         updated_at = VALUES(updated_at)";
    const ADD_TO_OUTCOMES_DAILY: &'static str =
        " ON DUPLICATE KEY UPDATE calls = calls + VALUES(calls)";
    // Prepared statements count parameters in 16 bits.
    const MAX_PARAMS: usize = 65_535;
    const INT_CAST: &'static str = "SIGNED";

    fn migrator() -> Migrator {
        let mut migrator = sqlx::migrate!("migrations/mysql");
        migrator.set_locking(false);
        migrator
    }

    fn connect_options(url: &str) -> Result<MySqlConnectOptions, sqlx::Error> {
        Ok(url.parse::<MySqlConnectOptions>()?.charset("utf8mb4"))
    }

    fn is_unavailable(error: &dyn DatabaseError) -> bool {
        // SQLSTATE class 08 (connection), too many connections, server
        // shutdown, disk full, read-only server.
        error.code().is_some_and(|code| code.starts_with("08"))
            || number(error).is_some_and(|n| matches!(n, 1040 | 1053 | 1021 | 1290 | 1836))
    }

    fn is_transient(error: &dyn DatabaseError) -> bool {
        // Deadlock, lock wait timeout.
        number(error).is_some_and(|n| matches!(n, 1213 | 1205))
    }

    fn connect_failure(error: &dyn DatabaseError) -> Option<ConnectFailure> {
        match number(error)? {
            // Access denied (user/password, to the database, plugin).
            1045 | 1044 | 1698 => Some(ConnectFailure::Credentials),
            // Unknown database.
            1049 => Some(ConnectFailure::MissingDatabase),
            _ => None,
        }
    }
}

fn number(error: &dyn DatabaseError) -> Option<u16> {
    error
        .try_downcast_ref::<MySqlDatabaseError>()
        .map(MySqlDatabaseError::number)
}
