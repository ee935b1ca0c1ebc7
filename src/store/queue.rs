//! What the store's work queues share — the meter outbox and the Stripe
//! webhook inbox: rows that are `pending` until a worker is done with
//! them, retried at a later time after a failure, and given up on (parked
//! or failed) after too many.

use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::outbox::{OutboxFilter, OutboxStatus};
use sqlx::Pool;

use super::driver::{Driver, Read};
use super::error::Fault;
use super::rollup::fit;
use super::statement::{Statement, Value};

/// The longest failure message kept (the rest is cut).
const ERROR_MAX_CHARS: usize = 1_000;

/// The status of a row waiting for its worker, in both queues.
const PENDING: &str = "pending";

/// Records a failed attempt of the pending rows of `table` whose
/// `key_column` is `key`: due again at `retry_at`, or set to `given_up`
/// when `None`. A row that is no longer pending (sent, or failed for good
/// meanwhile) is left as it is.
pub(super) async fn mark_failed<DB: Driver>(
    pool: &Pool<DB>,
    table: &'static str,
    key_column: &'static str,
    key: impl Value,
    error: &str,
    retry_at: Option<UnixMillis>,
    given_up: &'static str,
) -> Result<(), Fault> {
    let mut update = Statement::<DB>::new("UPDATE ");
    update
        .push(table)
        .push(" SET attempts = attempts + 1, last_error = ")
        .bind(fit(error, ERROR_MAX_CHARS));
    match retry_at {
        Some(at) => update.push(", next_attempt_at = ").bind(at),
        None => update.push(", status = ").bind(given_up),
    };
    update
        .push(" WHERE ")
        .push(key_column)
        .push(" = ")
        .bind(key)
        .push(" AND status = ")
        .bind(PENDING);
    let mut conn = pool.acquire().await?;
    Ok(update.execute(&mut conn).await?)
}

/// Puts the row of `table` whose `key_column` is `key` back to `pending`,
/// due at `now`, if its status is `given_up` (parked or failed for good).
/// Whether it was: `false` for a row in any other status, or none.
pub(super) async fn requeue<DB: Driver>(
    pool: &Pool<DB>,
    table: &'static str,
    key_column: &'static str,
    key: impl Value + Clone,
    given_up: &'static str,
    now: UnixMillis,
) -> Result<bool, Fault> {
    let mut conn = pool.acquire().await?;
    let mut read = Statement::<DB>::new("SELECT status FROM ");
    read.push(table)
        .push(" WHERE ")
        .push(key_column)
        .push(" = ")
        .bind(key.clone());
    let given_up_now = match read.fetch_optional(&mut conn).await? {
        Some(row) => row.text(0)? == given_up,
        None => false,
    };
    if !given_up_now {
        return Ok(false);
    }
    let mut update = Statement::<DB>::new("UPDATE ");
    update
        .push(table)
        .push(" SET status = ")
        .bind(PENDING)
        .push(", next_attempt_at = ")
        .bind(now)
        .push(" WHERE ")
        .push(key_column)
        .push(" = ")
        .bind(key)
        .push(" AND status = ")
        .bind(given_up);
    update.execute(&mut conn).await?;
    Ok(true)
}

/// Rows per status of each payment queue: (queue, status, rows).
pub(super) async fn counts<DB: Driver>(
    pool: &Pool<DB>,
) -> Result<Vec<(&'static str, &'static str, i64)>, Fault> {
    const QUEUES: [(&str, &str, &[&str]); 3] = [
        ("meter", "meter_outbox", &["pending", "sent", "parked"]),
        ("invoice", "invoice_outbox", &["pending", "sent", "parked"]),
        (
            "webhook",
            "webhook_events",
            &["pending", "processed", "failed"],
        ),
    ];
    let mut conn = pool.acquire().await?;
    let mut found = Vec::new();
    for (queue, table, statuses) in QUEUES {
        let mut statement = Statement::<DB>::new("SELECT status, COUNT(*) FROM ");
        statement.push(table).push(" GROUP BY status");
        let rows = statement.fetch_all(&mut conn).await?;
        let mut by_status: Vec<(String, i64)> = Vec::new();
        for row in &rows {
            by_status.push((row.text(0)?, row.int(1)?));
        }
        for status in statuses {
            let n = by_status
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            found.push((queue, *status, n));
        }
    }
    Ok(found)
}

/// Appends `filter` to a `SELECT … FROM <queue> WHERE 1 = 1`: its status,
/// customer and position conditions, then the order (by id) and limit.
pub(super) fn push_filter<DB: Driver>(statement: &mut Statement<DB>, filter: &OutboxFilter) {
    if let Some(status) = filter.status {
        statement.push(" AND status = ").bind(status.as_str());
    }
    if let Some(customer) = &filter.customer {
        statement
            .push(" AND customer_id = ")
            .bind(customer.as_str());
    }
    if let Some(after) = filter.after_id {
        statement.push(" AND id > ").bind(after);
    }
    statement
        .push(" ORDER BY id LIMIT ")
        .bind(i64::from(filter.limit));
}

/// Appends the due condition to a `SELECT … FROM <queue> WHERE `: pending
/// rows due at `now`, by due time then id, at most `limit`.
pub(super) fn push_due<DB: Driver>(statement: &mut Statement<DB>, now: UnixMillis, limit: u32) {
    statement
        .push("status = ")
        .bind(OutboxStatus::Pending.as_str())
        .push(" AND next_attempt_at <= ")
        .bind(now)
        .push(" ORDER BY next_attempt_at, id LIMIT ")
        .bind(i64::from(limit));
}
