//! The meter outbox: events written by `meter_usage` (with the usage they
//! report, in one transaction) and drained by the billing plugin's worker,
//! which reads the due ones, then marks each sent, failed with a time to
//! try again, or parked; the operator puts a parked event back in the
//! queue.
//!
//! Each mark is one conditional update, so marks from several workers (or
//! instances) never undo one another: a sent event stays sent, and only a
//! pending event records a failure. This module must never lose an event
//! or mark one sent that the worker did not send.

use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::outbox::{MeterEvent, OutboxFilter, OutboxStatus};
use sqlx::Pool;

use super::driver::{Driver, Read};
use super::error::Fault;
use super::queue;
use super::rows::{self, METER_EVENT_COLUMNS};
use super::statement::Statement;

/// Runs a select of [`METER_EVENT_COLUMNS`].
async fn fetch<DB: Driver>(
    pool: &Pool<DB>,
    statement: Statement<DB>,
) -> Result<Vec<MeterEvent>, Fault> {
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    Ok(found
        .iter()
        .map(rows::meter_event)
        .collect::<Result<_, _>>()?)
}

/// Pending events due at `now`, by due time then id, at most `limit`.
pub(super) async fn due<DB: Driver>(
    pool: &Pool<DB>,
    now: UnixMillis,
    limit: u32,
) -> Result<Vec<MeterEvent>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .push(METER_EVENT_COLUMNS)
        .push(" FROM meter_outbox WHERE ");
    queue::push_due(&mut statement, now, limit);
    fetch(pool, statement).await
}

/// Marks pending (or parked) events sent at `at`; sent ones stay as they
/// are.
pub(super) async fn mark_sent<DB: Driver>(
    pool: &Pool<DB>,
    ids: &[i64],
    at: UnixMillis,
) -> Result<(), Fault> {
    update_ids(pool, ids, |update| {
        update
            .push("UPDATE meter_outbox SET status = ")
            .bind(OutboxStatus::Sent.as_str())
            .push(", sent_at = ")
            .bind(at)
            .push(" WHERE status IN (")
            .bind(OutboxStatus::Pending.as_str())
            .push(", ")
            .bind(OutboxStatus::Parked.as_str())
            .push(") AND ");
    })
    .await
}

/// Runs the update that `head` starts (up to `… AND `) for the events
/// `ids`: `id IN (…)` in chunks within one transaction, ids in order so
/// that concurrent updates lock rows in one order.
async fn update_ids<DB: Driver>(
    pool: &Pool<DB>,
    ids: &[i64],
    head: impl Fn(&mut Statement<DB>),
) -> Result<(), Fault> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    for chunk in ids.chunks(DB::MAX_PARAMS.saturating_sub(8).max(1)) {
        let mut update = Statement::<DB>::new("");
        update.one_off();
        head(&mut update);
        update.push("id IN (");
        for (n, id) in chunk.iter().enumerate() {
            if n > 0 {
                update.push(", ");
            }
            update.bind(*id);
        }
        update.push(")");
        update.execute(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Records a failed attempt of a pending event: due again at `retry_at`,
/// or parked.
pub(super) async fn mark_failed<DB: Driver>(
    pool: &Pool<DB>,
    id: i64,
    error: &str,
    retry_at: Option<UnixMillis>,
) -> Result<(), Fault> {
    queue::mark_failed(
        pool,
        "meter_outbox",
        "id",
        id,
        error,
        retry_at,
        OutboxStatus::Parked.as_str(),
    )
    .await
}

/// Puts a parked event back in the queue, due at `now`, with the rest of
/// its batch; `false` when no parked event has this id. Failed attempts
/// are kept.
pub(super) async fn retry<DB: Driver>(
    pool: &Pool<DB>,
    id: i64,
    now: UnixMillis,
) -> Result<bool, Fault> {
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let mut read = Statement::<DB>::new("SELECT status, batch_id FROM meter_outbox WHERE id = ");
    read.bind(id).push(DB::FOR_UPDATE);
    let (parked, batch) = match read.fetch_optional(&mut tx).await? {
        Some(row) => (
            row.text(0)? == OutboxStatus::Parked.as_str(),
            row.opt_text(1)?,
        ),
        None => (false, None),
    };
    if !parked {
        tx.rollback().await?;
        return Ok(false);
    }
    let mut update = Statement::<DB>::new("UPDATE meter_outbox SET status = ");
    update
        .bind(OutboxStatus::Pending.as_str())
        .push(", next_attempt_at = ")
        .bind(now)
        .push(" WHERE status = ")
        .bind(OutboxStatus::Parked.as_str());
    // The whole batch goes back: it is sent as one event, under one
    // identifier, with the total it was fixed with.
    match batch {
        Some(batch) => update.push(" AND batch_id = ").bind(batch.as_str()),
        None => update.push(" AND id = ").bind(id),
    };
    update.execute(&mut tx).await?;
    tx.commit().await?;
    Ok(true)
}

/// Gives the id `batch` to those of the pending events `ids` that are in no
/// batch yet.
pub(super) async fn claim_batch<DB: Driver>(
    pool: &Pool<DB>,
    ids: &[i64],
    batch: &str,
) -> Result<(), Fault> {
    update_ids(pool, ids, |update| {
        update
            .push("UPDATE meter_outbox SET batch_id = ")
            .bind(batch)
            .push(" WHERE batch_id IS NULL AND status = ")
            .bind(OutboxStatus::Pending.as_str())
            .push(" AND ");
    })
    .await
}

/// The events of `batch`, by id.
pub(super) async fn batch<DB: Driver>(
    pool: &Pool<DB>,
    batch: &str,
) -> Result<Vec<MeterEvent>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .push(METER_EVENT_COLUMNS)
        .push(" FROM meter_outbox WHERE batch_id = ")
        .bind(batch)
        .push(" ORDER BY id");
    fetch(pool, statement).await
}

/// Records a failed attempt at sending `batch`: its pending events are due
/// again at `retry_at`, or parked.
pub(super) async fn mark_batch_failed<DB: Driver>(
    pool: &Pool<DB>,
    batch: &str,
    error: &str,
    retry_at: Option<UnixMillis>,
) -> Result<(), Fault> {
    queue::mark_failed(
        pool,
        "meter_outbox",
        "batch_id",
        batch,
        error,
        retry_at,
        OutboxStatus::Parked.as_str(),
    )
    .await
}

/// Events matching `filter`, by id ascending.
pub(super) async fn list<DB: Driver>(
    pool: &Pool<DB>,
    filter: &OutboxFilter,
) -> Result<Vec<MeterEvent>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .one_off()
        .push(METER_EVENT_COLUMNS)
        .push(" FROM meter_outbox WHERE 1 = 1");
    queue::push_filter(&mut statement, filter);
    fetch(pool, statement).await
}
