//! Usage: writing a batch of records with its daily roll-ups (totals in
//! `usage_daily`, outcome counts in `outcomes_daily`) in one transaction,
//! and reading records and roll-ups back.
//!
//! A batch may be sent again (the recorder retries after a fault), so a
//! record whose `call_id` is already stored is skipped and only the records
//! actually inserted are added to the roll-up. PostgreSQL says which rows it
//! inserted (`ON CONFLICT DO NOTHING RETURNING call_id`). Elsewhere the store
//! first reads which of the batch's ids exist and inserts the rest with
//! plain INSERTs: SQLite holds the write lock from `BEGIN IMMEDIATE`, so no
//! one can slip in between; on MySQL a concurrent writer can, and then the
//! INSERT fails on the primary key, the transaction rolls back and runs
//! again. Either way nothing is counted twice.

use std::collections::HashSet;

use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ports::UsageRecord;
use sqlx::Pool;

use super::driver::{Driver, Read};
use super::error::Fault;
use super::rollup::{self, DayKey, METHOD_MAX_CHARS, OutcomeKey, TEXT_MAX_CHARS, Totals, fit};
use super::rows::{self, DAILY_COLUMNS, USAGE_COLUMNS};
use super::statement::Statement;
use super::{DailyUsage, UsageFilter};

/// The most rows one INSERT carries (also under every backend's parameter
/// limit).
const MAX_ROWS: usize = 512;
/// Columns of `usage_records`.
const USAGE_WIDTH: usize = 13;
/// Columns of `usage_daily`.
const DAILY_WIDTH: usize = 10;
/// Columns of `outcomes_daily`.
const OUTCOMES_WIDTH: usize = 6;

/// Stores a batch and adds it to the daily roll-ups, in one transaction.
/// Returns how many records were inserted (those whose call id was not
/// stored yet).
pub(super) async fn record<DB: Driver>(
    pool: &Pool<DB>,
    batch: &[UsageRecord],
) -> Result<usize, Fault> {
    // One record per call id (the first wins), as the primary key demands.
    let mut seen = HashSet::with_capacity(batch.len());
    let batch: Vec<&UsageRecord> = batch
        .iter()
        .filter(|r| seen.insert(r.call_id.as_str()))
        .collect();
    if batch.is_empty() {
        return Ok(0);
    }
    // Two writers of overlapping batches (two instances, or a batch sent
    // again) can both find a call id unstored; the loser's insert fails on
    // the primary key and runs again, after a short random pause, and then
    // skips what the winner stored.
    super::ledger::retrying::<DB, _, _, _>("usage batch", || async {
        record_once(pool, &batch).await.map_err(Fault::Sql)
    })
    .await
}

async fn record_once<DB: Driver>(
    pool: &Pool<DB>,
    batch: &[&UsageRecord],
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let fresh = insert_new::<DB>(&mut tx, batch).await?;
    let groups: Vec<(DayKey<'_>, Totals)> = rollup::aggregate(fresh.iter().copied())
        .into_iter()
        .collect();
    for chunk in chunks(&groups, max_rows::<DB>(DAILY_WIDTH)) {
        add_to_daily::<DB>(&mut tx, chunk).await?;
    }
    // Always after `usage_daily`, each in key order: concurrent batches
    // lock roll-up rows in the same order.
    let outcomes: Vec<(OutcomeKey<'_>, i64)> = rollup::count_outcomes(fresh.iter().copied())
        .into_iter()
        .collect();
    for chunk in chunks(&outcomes, max_rows::<DB>(OUTCOMES_WIDTH)) {
        add_to_outcomes::<DB>(&mut tx, chunk).await?;
    }
    tx.commit().await?;
    Ok(fresh.len())
}

/// Inserts the records whose call id is not stored yet; returns them.
async fn insert_new<'r, DB: Driver>(
    conn: &mut DB::Connection,
    batch: &[&'r UsageRecord],
) -> Result<Vec<&'r UsageRecord>, sqlx::Error> {
    let rows = max_rows::<DB>(USAGE_WIDTH);
    if let Some(skip_stored) = DB::SKIP_STORED_RETURNING_NEW {
        let mut inserted = HashSet::with_capacity(batch.len());
        for chunk in chunks(batch, rows) {
            let mut statement = insert_records::<DB>(chunk);
            statement.push(skip_stored);
            for row in statement.fetch_all(conn).await? {
                inserted.insert(row.text(0)?);
            }
        }
        return Ok(batch
            .iter()
            .copied()
            .filter(|r| inserted.contains(r.call_id.as_str()))
            .collect());
    }
    let stored = stored_ids::<DB>(conn, batch).await?;
    let fresh: Vec<&UsageRecord> = batch
        .iter()
        .copied()
        .filter(|r| !stored.contains(r.call_id.as_str()))
        .collect();
    for chunk in chunks(&fresh, rows) {
        insert_records::<DB>(chunk).execute(conn).await?;
    }
    Ok(fresh)
}

/// Which of the batch's call ids are already stored.
async fn stored_ids<DB: Driver>(
    conn: &mut DB::Connection,
    batch: &[&UsageRecord],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut stored = HashSet::new();
    for chunk in chunks(batch, max_rows::<DB>(1)) {
        let mut statement =
            Statement::<DB>::new("SELECT call_id FROM usage_records WHERE call_id IN ");
        statement.tuples([chunk], |t, chunk| {
            for record in chunk {
                t.bind(record.call_id.as_str());
            }
        });
        for row in statement.fetch_all(conn).await? {
            stored.insert(row.text(0)?);
        }
    }
    Ok(stored)
}

/// `INSERT INTO usage_records … VALUES …` for `records`.
fn insert_records<DB: Driver>(records: &[&UsageRecord]) -> Statement<DB> {
    let mut statement = Statement::<DB>::new("INSERT INTO usage_records (");
    statement.push(USAGE_COLUMNS).push(") VALUES ");
    statement.tuples(records, |t, r| {
        t.bind(r.call_id.as_str())
            .bind(r.customer_id.as_ref().map(|id| id.as_str()))
            .bind(r.key_id.as_ref().map(|id| id.as_str()))
            .bind(r.session_id.as_deref().map(|s| fit(s, TEXT_MAX_CHARS)))
            .bind(fit(&r.method, METHOD_MAX_CHARS))
            .bind(r.tool.as_deref().map(|s| fit(s, TEXT_MAX_CHARS)))
            .bind(r.started_at)
            .bind(r.duration_us)
            .bind(r.bytes_in)
            .bind(r.bytes_out)
            .bind(r.outcome.as_str())
            .bind(r.reason.as_deref().map(|s| fit(s, TEXT_MAX_CHARS)))
            .bind(r.units);
    });
    statement
}

async fn add_to_daily<DB: Driver>(
    conn: &mut DB::Connection,
    groups: &[(DayKey<'_>, Totals)],
) -> Result<(), sqlx::Error> {
    let mut statement = Statement::<DB>::new("INSERT INTO usage_daily (");
    statement.push(DAILY_COLUMNS).push(") VALUES ");
    statement.tuples(groups, |t, (key, totals)| {
        t.bind(key.day.as_str())
            .bind(key.customer)
            .bind(key.method)
            .bind(key.tool)
            .bind(totals.calls)
            .bind(totals.errors)
            .bind(totals.units)
            .bind(totals.duration_us)
            .bind(totals.bytes_in)
            .bind(totals.bytes_out);
    });
    statement.push(DB::ADD_TO_DAILY);
    statement.execute(conn).await
}

async fn add_to_outcomes<DB: Driver>(
    conn: &mut DB::Connection,
    groups: &[(OutcomeKey<'_>, i64)],
) -> Result<(), sqlx::Error> {
    let mut statement = Statement::<DB>::new(
        "INSERT INTO outcomes_daily (day, customer_id, tool, outcome, reason, calls) VALUES ",
    );
    statement.tuples(groups, |t, (key, calls)| {
        t.bind(key.day.as_str())
            .bind(key.customer)
            .bind(key.tool)
            .bind(key.outcome)
            .bind(key.reason)
            .bind(*calls);
    });
    statement.push(DB::ADD_TO_OUTCOMES_DAILY);
    statement.execute(conn).await
}

/// The most rows of `width` columns one statement may carry.
fn max_rows<DB: Driver>(width: usize) -> usize {
    (DB::MAX_PARAMS / width).clamp(1, MAX_ROWS)
}

/// Splits `items` into chunks whose sizes are powers of two (at most
/// `max`), largest first: the few distinct statement shapes stay in the
/// prepared-statement cache whatever the batch size.
fn chunks<T>(mut items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let max = max.max(1);
    let largest = if max.is_power_of_two() {
        max
    } else {
        max.next_power_of_two() / 2
    };
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let mut size = largest;
        while size > items.len() {
            size /= 2;
        }
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}

/// Raw records matching `filter`, ordered by start then call id.
pub(super) async fn records<DB: Driver>(
    pool: &Pool<DB>,
    filter: &UsageFilter,
) -> Result<Vec<UsageRecord>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .one_off()
        .push(USAGE_COLUMNS)
        .push(" FROM usage_records WHERE 1 = 1");
    if let Some(customer) = &filter.customer {
        statement
            .push(" AND customer_id = ")
            .bind(customer.as_str());
    }
    if let Some(since) = filter.since {
        statement.push(" AND started_at >= ").bind(since);
    }
    if let Some(until) = filter.until {
        statement.push(" AND started_at < ").bind(until);
    }
    if let Some(tool) = &filter.tool {
        statement.push(" AND tool = ").bind(tool.as_str());
    }
    if let Some(outcome) = filter.outcome {
        statement.push(" AND outcome = ").bind(outcome.as_str());
    }
    if let Some((at, call)) = &filter.after {
        // `started_at >= at` first, so that every backend walks the
        // `started_at` index from the cursor on instead of sorting the rest
        // of the table for each page (an export reads it all, page by page).
        statement
            .push(" AND started_at >= ")
            .bind(*at)
            .push(" AND (started_at > ")
            .bind(*at)
            .push(" OR call_id > ")
            .bind(call.as_str())
            .push(")");
    }
    statement
        .push(" ORDER BY started_at, call_id LIMIT ")
        .bind(i64::from(filter.limit));
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    Ok(found
        .iter()
        .map(rows::usage_record)
        .collect::<Result<_, _>>()?)
}

/// Daily roll-ups matching `filter`, ordered by day, customer, method and
/// tool.
pub(super) async fn daily<DB: Driver>(
    pool: &Pool<DB>,
    filter: &UsageFilter,
) -> Result<Vec<DailyUsage>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .one_off()
        .push(DAILY_COLUMNS)
        .push(" FROM usage_daily WHERE 1 = 1");
    if let Some(customer) = &filter.customer {
        statement
            .push(" AND customer_id = ")
            .bind(customer.as_str());
    }
    let since = filter.since.map(rollup::utc_day);
    if let Some(since) = &since {
        statement.push(" AND day >= ").bind(since.as_str());
    }
    let until = filter
        .until
        .map(|until| rollup::utc_day(UnixMillis(until.0.saturating_sub(1))));
    if let Some(until) = &until {
        statement.push(" AND day <= ").bind(until.as_str());
    }
    if let Some(tool) = &filter.tool {
        statement.push(" AND tool = ").bind(tool.as_str());
    }
    statement
        .push(" ORDER BY day, customer_id, method, tool LIMIT ")
        .bind(i64::from(filter.limit));
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    Ok(found.iter().map(rows::daily).collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_largest_first() {
        let items: Vec<u32> = (0..1000).collect();
        let sizes: Vec<usize> = chunks(&items, 512).map(<[u32]>::len).collect();
        assert_eq!(sizes, [512, 256, 128, 64, 32, 8]);
        let sizes: Vec<usize> = chunks(&items[..3], 100).map(<[u32]>::len).collect();
        assert_eq!(sizes, [2, 1]);
        assert_eq!(chunks(&items[..0], 8).count(), 0);
        let sizes: Vec<usize> = chunks(&items[..5], 0).map(<[u32]>::len).collect();
        assert_eq!(sizes, [1, 1, 1, 1, 1]);
    }
}
