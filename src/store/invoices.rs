//! The invoice outbox: per-call plans' charges of a closed billing period,
//! one row per customer, plan and period, waiting to be sent to the payment
//! provider as an invoice item. A row is unique per customer, plan and
//! period start, so a period is queued once however many instances close
//! it; the sender marks it sent (with the provider's id), failed with a
//! time to try again, or parked; the operator puts a parked one back.

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::EntryKind;
use mcp_meter_plugin::outbox::{OutboxFilter, OutboxStatus};
use serde::Serialize;
use sqlx::Pool;

use super::driver::{Driver, Read};
use super::error::Fault;
use super::ledger::refused;
use super::queue;
use super::statement::Statement;

/// One customer's charges on a plan over a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodCharges {
    /// Whose.
    pub customer_id: CustomerId,
    /// The currency (the ledger unit).
    pub currency: String,
    /// The sum of the period's charges, in micro-units.
    pub charged: i64,
    /// How many charge entries (calls) it sums.
    pub calls: i64,
}

/// An invoice item to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvoiceItem {
    /// Whose.
    pub customer_id: CustomerId,
    /// The per-call plan.
    pub plan_id: String,
    /// The period, `[start, end)`.
    pub period_start: UnixMillis,
    /// The end of the period.
    pub period_end: UnixMillis,
    /// ISO 4217, lower case.
    pub currency: String,
    /// The period's charges, micro-units.
    pub charged: i64,
    /// What is invoiced, in the currency's minor units.
    pub amount: i64,
    /// Whether the plan's minimum replaced a smaller total.
    pub minimum_applied: bool,
    /// When it was queued (due at once).
    pub at: UnixMillis,
}

/// A queued invoice item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InvoiceItemRow {
    /// Position in the outbox.
    pub id: i64,
    /// Whose.
    pub customer_id: CustomerId,
    /// The plan.
    pub plan_id: String,
    /// The period start.
    pub period_start: UnixMillis,
    /// The period end.
    pub period_end: UnixMillis,
    /// ISO 4217, lower case.
    pub currency: String,
    /// The period's charges, micro-units.
    pub charged: i64,
    /// What is invoiced, in the currency's minor units.
    pub amount: i64,
    /// Whether the plan's minimum replaced a smaller total.
    pub minimum_applied: bool,
    /// Where it stands.
    pub status: OutboxStatus,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// Not sent before this.
    pub next_attempt_at: UnixMillis,
    /// When the provider accepted it.
    pub sent_at: Option<UnixMillis>,
    /// The provider's id for it (`ii_…`).
    pub external_id: Option<String>,
}

const COLUMNS: &str = "id, customer_id, plan_id, period_start, period_end, currency, charged, \
     amount, minimum_applied, status, attempts, last_error, next_attempt_at, sent_at, external_id";

fn row(row: &impl Read) -> Result<InvoiceItemRow, sqlx::Error> {
    let id = row.int(0)?;
    let bad = |what: String| sqlx::Error::Decode(format!("invoice item {id}: {what}").into());
    let status = row.text(9)?;
    let attempts = row.int(10)?;
    Ok(InvoiceItemRow {
        id,
        customer_id: CustomerId::new(row.text(1)?),
        plan_id: row.text(2)?,
        period_start: UnixMillis(row.int(3)?),
        period_end: UnixMillis(row.int(4)?),
        currency: row.text(5)?,
        charged: row.int(6)?,
        amount: row.int(7)?,
        minimum_applied: row.int(8)? != 0,
        status: OutboxStatus::parse(&status).ok_or_else(|| bad(format!("status {status:?}")))?,
        attempts: u32::try_from(attempts).map_err(|_| bad(format!("attempts {attempts}")))?,
        last_error: row.opt_text(11)?,
        next_attempt_at: UnixMillis(row.int(12)?),
        sent_at: row.opt_int(13)?.map(UnixMillis),
        external_id: row.opt_text(14)?,
    })
}

async fn fetch<DB: Driver>(
    pool: &Pool<DB>,
    statement: Statement<DB>,
) -> Result<Vec<InvoiceItemRow>, Fault> {
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    Ok(found.iter().map(row).collect::<Result<_, _>>()?)
}

/// Each customer's charges on `plan_id` over `[start, end)`.
pub(super) async fn period_charges<DB: Driver>(
    pool: &Pool<DB>,
    plan_id: &str,
    start: UnixMillis,
    end: UnixMillis,
) -> Result<Vec<PeriodCharges>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT customer_id, unit, CAST(SUM(amount) AS ");
    statement
        .push(DB::INT_CAST)
        .push("), COUNT(*) FROM ledger_entries WHERE kind = ")
        .bind(EntryKind::Charge.as_str())
        .push(" AND plan_id = ")
        .bind(plan_id)
        .push(" AND created_at >= ")
        .bind(start)
        .push(" AND created_at < ")
        .bind(end)
        .push(" GROUP BY customer_id, unit ORDER BY customer_id");
    let mut conn = pool.acquire().await?;
    let rows = statement.fetch_all(&mut conn).await?;
    Ok(rows
        .iter()
        .map(|r| {
            Ok(PeriodCharges {
                customer_id: CustomerId::new(r.text(0)?),
                currency: r.text(1)?,
                charged: r.int(2)?,
                calls: r.int(3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

/// Queues an invoice item unless one for its customer, plan and period is
/// queued; `true` when queued now.
pub(super) async fn queue<DB: Driver>(
    pool: &Pool<DB>,
    new: &NewInvoiceItem,
) -> Result<bool, Fault> {
    if new.charged < 0 || new.amount < 0 || new.period_end <= new.period_start {
        return Err(refused(format!(
            "an invoice item needs non-negative amounts and a period that ends after it \
             starts (charged {}, amount {}, period {}..{})",
            new.charged, new.amount, new.period_start.0, new.period_end.0
        )));
    }
    let mut statement = Statement::<DB>::new(
        "INSERT INTO invoice_outbox (customer_id, plan_id, period_start, period_end, currency, \
         charged, amount, minimum_applied, status, attempts, next_attempt_at, created_at) VALUES ",
    );
    statement.tuples([new], |t, n| {
        t.bind(n.customer_id.as_str())
            .bind(n.plan_id.as_str())
            .bind(n.period_start)
            .bind(n.period_end)
            .bind(n.currency.as_str())
            .bind(n.charged)
            .bind(n.amount)
            .bind(i64::from(n.minimum_applied))
            .bind(OutboxStatus::Pending.as_str())
            .bind(0_i64)
            .bind(n.at)
            .bind(n.at);
    });
    let mut conn = pool.acquire().await?;
    match statement.execute(&mut conn).await {
        Ok(()) => Ok(true),
        // Queued before, or by another instance closing the same period.
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Pending items due at `now`, oldest first, at most `limit`.
pub(super) async fn due<DB: Driver>(
    pool: &Pool<DB>,
    now: UnixMillis,
    limit: u32,
) -> Result<Vec<InvoiceItemRow>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement.push(COLUMNS).push(" FROM invoice_outbox WHERE ");
    queue::push_due(&mut statement, now, limit);
    fetch(pool, statement).await
}

/// Marks a pending (or parked) item sent, with the provider's id.
pub(super) async fn mark_sent<DB: Driver>(
    pool: &Pool<DB>,
    id: i64,
    external_id: Option<&str>,
    at: UnixMillis,
) -> Result<(), Fault> {
    let mut update = Statement::<DB>::new("UPDATE invoice_outbox SET status = ");
    update
        .bind(OutboxStatus::Sent.as_str())
        .push(", sent_at = ")
        .bind(at)
        .push(", external_id = ")
        .bind(external_id)
        .push(" WHERE id = ")
        .bind(id)
        .push(" AND status IN (")
        .bind(OutboxStatus::Pending.as_str())
        .push(", ")
        .bind(OutboxStatus::Parked.as_str())
        .push(")");
    let mut conn = pool.acquire().await?;
    Ok(update.execute(&mut conn).await?)
}

/// Records a failed attempt: due again at `retry_at`, or parked.
pub(super) async fn mark_failed<DB: Driver>(
    pool: &Pool<DB>,
    id: i64,
    error: &str,
    retry_at: Option<UnixMillis>,
) -> Result<(), Fault> {
    queue::mark_failed(
        pool,
        "invoice_outbox",
        "id",
        id,
        error,
        retry_at,
        OutboxStatus::Parked.as_str(),
    )
    .await
}

/// Puts a parked item back in the queue, due at `now`; `false` when no
/// parked item has this id.
pub(super) async fn retry<DB: Driver>(
    pool: &Pool<DB>,
    id: i64,
    now: UnixMillis,
) -> Result<bool, Fault> {
    queue::requeue(
        pool,
        "invoice_outbox",
        "id",
        id,
        OutboxStatus::Parked.as_str(),
        now,
    )
    .await
}

/// Items matching `filter`, by id.
pub(super) async fn list<DB: Driver>(
    pool: &Pool<DB>,
    filter: &OutboxFilter,
) -> Result<Vec<InvoiceItemRow>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .one_off()
        .push(COLUMNS)
        .push(" FROM invoice_outbox WHERE 1 = 1");
    queue::push_filter(&mut statement, filter);
    fetch(pool, statement).await
}
