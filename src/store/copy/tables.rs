//! The tables `db copy` moves: every data table of schema
//! [`SCHEMA_VERSION`] (all but sqlx's `_sqlx_migrations`), in foreign-key
//! order (customers first: every other table that names a customer refers
//! to it), each with its columns' types and its primary key.
//!
//! A migration that adds a table or a column must add it here too (and
//! bump [`SCHEMA_VERSION`]); the unit test below fails until it does.

/// The schema version these tables describe. `db copy` refuses a source
/// at any other version.
pub(super) const SCHEMA_VERSION: i64 = 7;

/// How a column's values are read and bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A 64-bit integer (`INTEGER`, `BIGINT`).
    Int,
    /// Text (`TEXT`, `VARCHAR`, `MEDIUMTEXT`).
    Text,
    /// A byte string (`BLOB`, `BYTEA`, `VARBINARY`).
    Bytes,
}

/// One column of a table.
#[derive(Debug)]
pub(super) struct Column {
    /// Its name.
    pub(super) name: &'static str,
    /// Its type.
    pub(super) kind: Kind,
}

/// One table: its columns, primary key first.
#[derive(Debug)]
pub(super) struct Table {
    /// The table's name.
    pub(super) name: &'static str,
    /// Every column; the first [`Table::key`] of them are the primary key.
    pub(super) columns: &'static [Column],
    /// How many leading columns make up the primary key.
    pub(super) key: usize,
    /// Whether the key is an identity (PostgreSQL) or auto-increment
    /// (SQLite, MySQL) id, whose sequence must continue after the ids
    /// copied.
    pub(super) identity: bool,
}

impl Table {
    /// The primary key's columns.
    pub(super) fn key_columns(&self) -> &'static [Column] {
        &self.columns[..self.key]
    }
}

const fn int(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Int,
    }
}

const fn text(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Text,
    }
}

const fn bytes(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Bytes,
    }
}

/// The ledger: its rows are also checksummed on both sides after a copy.
pub(super) const LEDGER: Table = Table {
    name: "ledger_entries",
    columns: &[
        int("id"),
        text("customer_id"),
        text("kind"),
        int("amount"),
        text("unit"),
        int("balance_after"),
        text("call_id"),
        text("plan_id"),
        text("tool"),
        text("idempotency_key"),
        text("reason"),
        int("created_at"),
    ],
    key: 1,
    identity: true,
};

/// Every data table, in the order they are copied.
pub(super) const TABLES: &[Table] = &[
    Table {
        name: "customers",
        columns: &[
            text("id"),
            text("name"),
            text("email"),
            text("plan_id"),
            text("status"),
            text("stripe_customer_id"),
            text("external_subject"),
            text("metadata"),
            int("created_at"),
            int("updated_at"),
        ],
        key: 1,
        identity: false,
    },
    Table {
        name: "api_keys",
        columns: &[
            text("id"),
            text("customer_id"),
            bytes("key_hash"),
            text("prefix"),
            text("name"),
            text("scope"),
            int("expires_at"),
            int("revoked_at"),
            int("last_used_at"),
            int("created_at"),
        ],
        key: 1,
        identity: false,
    },
    Table {
        name: "subscriptions",
        columns: &[
            text("customer_id"),
            text("plan_id"),
            text("status"),
            int("started_at"),
            int("past_due_since"),
            int("current_period_start"),
            int("current_period_end"),
            text("external_id"),
            int("updated_at"),
            int("provider_event_at"),
        ],
        key: 1,
        identity: false,
    },
    Table {
        name: "balances",
        columns: &[text("customer_id"), int("balance"), int("updated_at")],
        key: 1,
        identity: false,
    },
    LEDGER,
    Table {
        name: "call_charges",
        columns: &[
            text("customer_id"),
            text("charge_key"),
            int("attempt"),
            text("state"),
            int("amount"),
            text("call_id"),
            text("plan_id"),
            text("tool"),
            int("created_at"),
            int("updated_at"),
        ],
        key: 2,
        identity: false,
    },
    Table {
        name: "period_counters",
        columns: &[
            text("customer_id"),
            text("counter"),
            int("period_start"),
            int("used"),
        ],
        key: 3,
        identity: false,
    },
    Table {
        name: "quota_uses",
        columns: &[
            text("customer_id"),
            text("charge_key"),
            int("attempt"),
            text("state"),
            text("counter"),
            int("period_start"),
            int("units"),
            text("call_id"),
            text("plan_id"),
            text("tool"),
            int("created_at"),
            int("updated_at"),
        ],
        key: 2,
        identity: false,
    },
    Table {
        name: "usage_records",
        columns: &[
            text("call_id"),
            text("customer_id"),
            text("key_id"),
            text("session_id"),
            text("method"),
            text("tool"),
            int("started_at"),
            int("duration_us"),
            int("bytes_in"),
            int("bytes_out"),
            text("outcome"),
            text("reason"),
            int("units"),
        ],
        key: 1,
        identity: false,
    },
    Table {
        name: "usage_daily",
        columns: &[
            text("day"),
            text("customer_id"),
            text("method"),
            text("tool"),
            int("calls"),
            int("errors"),
            int("units"),
            int("duration_us"),
            int("bytes_in"),
            int("bytes_out"),
        ],
        key: 4,
        identity: false,
    },
    Table {
        name: "charges_daily",
        columns: &[
            text("day"),
            text("customer_id"),
            text("plan_id"),
            text("tool"),
            text("unit"),
            int("amount"),
            int("entries"),
        ],
        key: 5,
        identity: false,
    },
    Table {
        name: "outcomes_daily",
        columns: &[
            text("day"),
            text("customer_id"),
            text("tool"),
            text("outcome"),
            text("reason"),
            int("calls"),
        ],
        key: 5,
        identity: false,
    },
    Table {
        name: "meter_outbox",
        columns: &[
            int("id"),
            text("customer_id"),
            text("event_name"),
            int("value"),
            text("identifier"),
            int("occurred_at"),
            text("status"),
            int("attempts"),
            text("last_error"),
            int("next_attempt_at"),
            int("sent_at"),
            int("created_at"),
            text("batch_id"),
        ],
        key: 1,
        identity: true,
    },
    Table {
        name: "invoice_outbox",
        columns: &[
            int("id"),
            text("customer_id"),
            text("plan_id"),
            int("period_start"),
            int("period_end"),
            text("currency"),
            int("charged"),
            int("amount"),
            int("minimum_applied"),
            text("status"),
            int("attempts"),
            text("last_error"),
            int("next_attempt_at"),
            int("sent_at"),
            text("external_id"),
            int("created_at"),
        ],
        key: 1,
        identity: true,
    },
    Table {
        name: "webhook_events",
        columns: &[
            text("id"),
            text("event_type"),
            int("created"),
            text("payload"),
            int("received_at"),
            text("status"),
            int("attempts"),
            text("last_error"),
            int("next_attempt_at"),
            int("processed_at"),
        ],
        key: 1,
        identity: false,
    },
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sqlx::{Connection, Row, SqliteConnection};

    use super::*;
    use crate::store::driver::Driver;

    /// The tables and columns of a freshly migrated SQLite database, with
    /// each column's declared type and primary-key position.
    async fn sqlite_schema() -> BTreeMap<String, Vec<(String, String, i64)>> {
        let mut conn = SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("connect");
        <sqlx::Sqlite as Driver>::migrator()
            .run_direct(None, &mut conn, false)
            .await
            .expect("migrate");
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT IN ('_sqlx_migrations', 'sqlite_sequence') ORDER BY name",
        )
        .fetch_all(&mut conn)
        .await
        .expect("tables");
        let mut schema = BTreeMap::new();
        for table in tables {
            let columns = sqlx::query(
                "SELECT name, type, pk FROM pragma_table_info(?) ORDER BY pk = 0, pk, cid",
            )
            .bind(&table)
            .fetch_all(&mut conn)
            .await
            .expect("columns")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
            schema.insert(table, columns);
        }
        schema
    }

    #[tokio::test]
    async fn the_tables_are_every_table_of_the_schema() {
        let binary = <sqlx::Sqlite as Driver>::migrator()
            .iter()
            .map(|m| m.version)
            .max();
        assert_eq!(
            binary,
            Some(SCHEMA_VERSION),
            "a new migration: update the tables of `db copy` and SCHEMA_VERSION"
        );
        let schema = sqlite_schema().await;
        let names: Vec<&str> = schema.keys().map(String::as_str).collect();
        let mut ours: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        ours.sort_unstable();
        assert_eq!(names, ours, "every data table is copied");
        for table in TABLES {
            let columns = &schema[table.name];
            let mut expected: Vec<(String, String, i64)> = Vec::new();
            for (n, column) in table.columns.iter().enumerate() {
                let declared = match column.kind {
                    Kind::Int => "INTEGER",
                    Kind::Text => "TEXT",
                    Kind::Bytes => "BLOB",
                };
                let pk = if n < table.key { n as i64 + 1 } else { 0 };
                expected.push((column.name.into(), declared.into(), pk));
            }
            let mut actual = columns.clone();
            let mut wanted = expected.clone();
            actual.sort();
            wanted.sort();
            assert_eq!(actual, wanted, "columns of {}", table.name);
        }
    }

    #[test]
    fn customers_come_first_and_identities_are_integer_ids() {
        assert_eq!(TABLES[0].name, "customers");
        for table in TABLES.iter().filter(|t| t.identity) {
            assert_eq!(table.key, 1, "{}", table.name);
            assert_eq!(table.columns[0].name, "id", "{}", table.name);
            assert_eq!(table.columns[0].kind, Kind::Int, "{}", table.name);
        }
    }
}
