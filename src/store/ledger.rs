//! The ledger over SQL, for every backend at once: prepaid balances,
//! reservations and their settlement (`credits`), charges accrued to a bill
//! and quota counters (`quota`), quota taken and given back per logical
//! call (`quota_use`), metered usage with its outbox event (`metered`),
//! plans' periodic credit grants (`grants`), what an unclean stop left
//! behind — reservations still held, settled calls without a usage record
//! (`recovery`) —, and the append-only `ledger_entries` that record every
//! movement. The reads live here, with what the writes share.
//!
//! Every write is one transaction begun with [`Driver::BEGIN_WRITE`]. It
//! first reads, locked ([`Driver::FOR_UPDATE`]), the one row that decides
//! it — the customer's balance, or the counter in its period — so that
//! every check that follows (is this call already charged, does the
//! balance hold the amount, is the cap reached) is made on the value the
//! transaction then changes: writers of the same balance or counter queue
//! on that row, on one instance or many, and no rows-affected count is
//! needed. The plain reads that follow the lock see every write committed
//! before it was granted: PostgreSQL reads the latest commit per statement,
//! and MySQL's REPEATABLE READ takes its snapshot at the first plain read,
//! which is why a plain read must never come before the lock when its
//! answer decides the write. SQLite needs no row lock, as `BEGIN IMMEDIATE`
//! keeps every other writer out. When the row does not exist yet, two writers can both try
//! to insert it: the primary key refuses one (or MySQL reports a deadlock
//! on the gap both locked) and that transaction runs again, as does any
//! transaction that loses a race on a unique ledger key. The CHECK on
//! `balances.balance` and the unique `(customer_id, idempotency_key)` of
//! `ledger_entries` are the last guards: a balance below zero or a second
//! entry for the same write fails the transaction instead of being stored.
//!
//! This module must never use floating point for money, never let a
//! balance go below zero, never move a balance, hold a reservation or
//! number a charged call without the ledger entry that records it in the
//! same transaction, and never apply a write twice: a replay answers with
//! what it finds.

mod batch;
mod credits;
mod grants;
mod metered;
mod quota;
mod quota_use;
mod recovery;
mod reservations;

use std::future::Future;
use std::time::Duration;

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{EntryKind, LedgerEntry, LedgerFilter};
use mcp_meter_plugin::ports::StoreError;
use sqlx::Pool;

use super::driver::{Driver, Read};
use super::error::{Fault, is_lost_race};
use super::rollup::{TEXT_MAX_CHARS, fit, utc_day};
use super::rows::{self, LEDGER_COLUMNS};
use super::statement::Statement;

pub(super) use batch::{LedgerOutcome, LedgerWrite, apply as apply_writes, max_batch};
pub(super) use credits::change_balance;
pub(super) use grants::periodic_grant;
pub(super) use quota::step_counter;
pub(super) use recovery::{held_reservations, record_recovered_call, unrecorded_charges};

/// How many times in all a write is tried while it keeps losing races.
const ATTEMPTS: u32 = 8;
/// The longest charge key, operator idempotency key or counter name (the
/// MySQL columns are sized for it; longer ones are refused on every
/// backend rather than cut, since a cut key could merge two calls).
const KEY_MAX_CHARS: usize = 512;
/// The longest unit (`credits` or a currency code).
const UNIT_MAX_CHARS: usize = 16;
/// The longest call id stored (as in `usage_records`).
const CALL_ID_MAX_CHARS: usize = 128;
/// The unit of prepaid balances.
const CREDITS: &str = "credits";
/// Prefixes of the idempotency keys the store derives from charge keys,
/// plans and periods; an operator's key may not start with one.
const DERIVED_PREFIXES: [&str; 9] = [
    "reserve:",
    "settle:",
    "refund:",
    "charge:",
    "quota:",
    "unquota:",
    "usage:",
    "period-grant:",
    "period-expiry:",
];
/// The unit of quota counters' ledger entries.
const CALLS: &str = "calls";

/// Runs `once` (one transaction) again while it loses races, at most
/// [`ATTEMPTS`] times in all, with a short random pause in between.
pub(super) async fn retrying<DB, T, F, Fut>(what: &str, mut once: F) -> Result<T, Fault>
where
    DB: Driver,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Fault>>,
{
    let mut attempt = 1;
    loop {
        let outcome = once().await;
        if !run_again::<DB, T>(what, &outcome, &mut attempt).await {
            return outcome;
        }
    }
}

/// Whether a transaction that ended with `outcome` on its `attempt`-th
/// try lost a race and is worth running again (fewer than [`ATTEMPTS`]
/// tries so far); if so, counts the try and waits a short random pause.
pub(super) async fn run_again<DB: Driver, T>(
    what: &str,
    outcome: &Result<T, Fault>,
    attempt: &mut u32,
) -> bool {
    let Err(Fault::Sql(error)) = outcome else {
        return false;
    };
    if *attempt >= ATTEMPTS || !is_lost_race::<DB>(error) {
        return false;
    }
    tracing::debug!(%error, attempt = *attempt, "{what} lost a race; running it again");
    let pause = rand::random_range(0..=(1u64 << (*attempt).min(6)));
    tokio::time::sleep(Duration::from_millis(pause)).await;
    *attempt += 1;
    true
}

/// A request the store refuses, in the contract's terms.
pub(super) fn refused(message: String) -> Fault {
    Fault::Store(StoreError::Other(message))
}

/// Refuses an empty key or one longer than [`KEY_MAX_CHARS`].
fn check_key(what: &str, key: &str) -> Result<(), Fault> {
    if key.is_empty() {
        return Err(refused(format!("the {what} is empty")));
    }
    if key.chars().count() > KEY_MAX_CHARS {
        return Err(refused(format!(
            "the {what} is longer than {KEY_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

/// The customer does not exist.
pub(super) fn not_found(customer: &CustomerId) -> Fault {
    Fault::Store(StoreError::NotFound(format!("customer {customer}")))
}

/// An insert that failed because the customer does not exist is
/// [`StoreError::NotFound`]; anything else stays a database fault.
fn unless_no_customer(error: sqlx::Error, customer: &CustomerId) -> Fault {
    match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => not_found(customer),
        _ => Fault::Sql(error),
    }
}

/// The customer's balance, its row locked until the transaction ends;
/// `None` when the customer has no balance row.
async fn locked_balance<DB: Driver>(
    conn: &mut DB::Connection,
    customer: &CustomerId,
) -> Result<Option<i64>, sqlx::Error> {
    let mut statement = Statement::<DB>::new("SELECT balance FROM balances WHERE customer_id = ");
    statement.bind(customer.as_str()).push(DB::FOR_UPDATE);
    match statement.fetch_optional(conn).await? {
        Some(row) => Ok(Some(row.int(0)?)),
        None => Ok(None),
    }
}

/// Adds `amount` (signed) to an existing balance row.
async fn add_to_balance<DB: Driver>(
    conn: &mut DB::Connection,
    customer: &CustomerId,
    amount: i64,
    at: UnixMillis,
) -> Result<(), sqlx::Error> {
    let mut statement = Statement::<DB>::new("UPDATE balances SET balance = balance + ");
    statement
        .bind(amount)
        .push(", updated_at = ")
        .bind(at)
        .push(" WHERE customer_id = ")
        .bind(customer.as_str());
    statement.execute(conn).await
}

/// Whether the customer has an entry with this idempotency key.
async fn entry_exists<DB: Driver>(
    conn: &mut DB::Connection,
    customer: &CustomerId,
    idempotency_key: &str,
) -> Result<bool, sqlx::Error> {
    let mut statement = Statement::<DB>::new("SELECT id FROM ledger_entries WHERE customer_id = ");
    statement
        .bind(customer.as_str())
        .push(" AND idempotency_key = ")
        .bind(idempotency_key);
    Ok(statement.fetch_optional(conn).await?.is_some())
}

/// A ledger entry to append (its id comes from the database).
struct NewEntry<'a> {
    customer_id: &'a CustomerId,
    kind: EntryKind,
    amount: i64,
    unit: &'a str,
    balance_after: Option<i64>,
    call_id: Option<&'a str>,
    plan_id: Option<&'a str>,
    tool: Option<&'a str>,
    idempotency_key: &'a str,
    reason: Option<&'a str>,
    at: UnixMillis,
}

/// Appends an entry. A second entry with the same idempotency key for the
/// customer fails on the unique key (a lost race: the caller runs again).
/// A `charge` entry is also added to its row of `charges_daily`, in the
/// same transaction, as the caller's last write: the roll-up row (one per
/// day, customer, plan, tool and currency) is locked for the shortest time
/// and after every lock the caller takes, so two writers never wait for
/// each other in opposite orders.
async fn append<DB: Driver>(conn: &mut DB::Connection, entry: &NewEntry<'_>) -> Result<(), Fault> {
    append_all::<DB>(conn, std::slice::from_ref(entry)).await?;
    if entry.kind == EntryKind::Charge {
        add_to_charges_daily::<DB>(conn, entry).await?;
    }
    Ok(())
}

/// Appends `entries` in one statement (none: nothing). Unlike [`append`],
/// it adds nothing to `charges_daily`: its callers append no charges.
async fn append_all<DB: Driver>(
    conn: &mut DB::Connection,
    entries: &[NewEntry<'_>],
) -> Result<(), Fault> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let mut statement = Statement::<DB>::new(
        "INSERT INTO ledger_entries (customer_id, kind, amount, unit, balance_after, call_id, \
         plan_id, tool, idempotency_key, reason, created_at) VALUES ",
    );
    statement.tuples(entries, |t, e| {
        t.bind(e.customer_id.as_str())
            .bind(e.kind.as_str())
            .bind(e.amount)
            .bind(e.unit)
            .bind(e.balance_after)
            .bind(e.call_id.map(|id| fit(id, CALL_ID_MAX_CHARS)))
            .bind(e.plan_id.map(|id| fit(id, TEXT_MAX_CHARS)))
            .bind(e.tool.map(|tool| fit(tool, TEXT_MAX_CHARS)))
            .bind(e.idempotency_key)
            .bind(e.reason)
            .bind(e.at);
    });
    statement
        .execute(conn)
        .await
        .map_err(|error| unless_no_customer(error, first.customer_id))
}

/// Adds a charge entry to its row of `charges_daily` (created at 0 when
/// missing).
async fn add_to_charges_daily<DB: Driver>(
    conn: &mut DB::Connection,
    entry: &NewEntry<'_>,
) -> Result<(), sqlx::Error> {
    let mut statement = Statement::<DB>::new(
        "INSERT INTO charges_daily (day, customer_id, plan_id, tool, unit, amount, entries) \
         VALUES ",
    );
    let day = utc_day(entry.at);
    statement.tuples([entry], |t, e| {
        t.bind(day.as_str())
            .bind(e.customer_id.as_str())
            .bind(e.plan_id.map_or("", |id| fit(id, TEXT_MAX_CHARS)))
            .bind(e.tool.map_or("", |tool| fit(tool, TEXT_MAX_CHARS)))
            .bind(e.unit)
            .bind(e.amount)
            .bind(1i64);
    });
    statement.push(DB::ADD_TO_CHARGES_DAILY);
    statement.execute(conn).await
}

/// A customer's balance (0 without a row).
pub(super) async fn balance<DB: Driver>(
    pool: &Pool<DB>,
    customer: &CustomerId,
) -> Result<i64, Fault> {
    let mut statement = Statement::<DB>::new("SELECT balance FROM balances WHERE customer_id = ");
    statement.bind(customer.as_str());
    let mut conn = pool.acquire().await?;
    match statement.fetch_optional(&mut conn).await? {
        Some(row) => Ok(row.int(0)?),
        None => Ok(0),
    }
}

/// A counter's value in a period (0 without a row).
pub(super) async fn counter<DB: Driver>(
    pool: &Pool<DB>,
    customer: &CustomerId,
    counter: &str,
    period_start: UnixMillis,
) -> Result<i64, Fault> {
    let mut statement =
        Statement::<DB>::new("SELECT used FROM period_counters WHERE customer_id = ");
    statement
        .bind(customer.as_str())
        .push(" AND counter = ")
        .bind(counter)
        .push(" AND period_start = ")
        .bind(period_start);
    let mut conn = pool.acquire().await?;
    match statement.fetch_optional(&mut conn).await? {
        Some(row) => Ok(row.int(0)?),
        None => Ok(0),
    }
}

/// Entries matching `filter`, by id ascending.
pub(super) async fn entries<DB: Driver>(
    pool: &Pool<DB>,
    filter: &LedgerFilter,
) -> Result<Vec<LedgerEntry>, Fault> {
    entries_between(pool, filter, None, None).await
}

/// Entries matching `filter` created in `[since, until)` (either bound
/// optional), by id ascending.
pub(super) async fn entries_between<DB: Driver>(
    pool: &Pool<DB>,
    filter: &LedgerFilter,
    since: Option<UnixMillis>,
    until: Option<UnixMillis>,
) -> Result<Vec<LedgerEntry>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .one_off()
        .push(LEDGER_COLUMNS)
        .push(" FROM ledger_entries WHERE 1 = 1");
    if let Some(customer) = &filter.customer {
        statement
            .push(" AND customer_id = ")
            .bind(customer.as_str());
    }
    if let Some(after) = filter.after_id {
        statement.push(" AND id > ").bind(after);
    }
    if let Some(since) = since {
        statement.push(" AND created_at >= ").bind(since);
    }
    if let Some(until) = until {
        statement.push(" AND created_at < ").bind(until);
    }
    statement
        .push(" ORDER BY id LIMIT ")
        .bind(i64::from(filter.limit));
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    Ok(found
        .iter()
        .map(rows::ledger_entry)
        .collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_not_cut() {
        assert!(check_key("charge key", "k").is_ok());
        assert!(check_key("charge key", &"é".repeat(KEY_MAX_CHARS)).is_ok());
        assert!(check_key("charge key", &"é".repeat(KEY_MAX_CHARS + 1)).is_err());
        assert!(check_key("charge key", "").is_err());
    }
}
