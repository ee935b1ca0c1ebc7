//! Webhook events from the payment provider (Stripe): each stored once by
//! its id, then processed by the webhook worker, which marks it processed,
//! or failed with a time to try again, or `failed` for good. Also the
//! customer lookups the events need (by Stripe customer id) and attaching
//! a Stripe customer id to a customer that has none.
//!
//! Inserting is the only write on the request path: it either stores the
//! event or finds it stored (a redelivery, or a concurrent delivery of the
//! same event), never both, and a duplicate is never an error. Each mark is
//! one conditional update on a pending event, so a processed event stays
//! processed.

use mcp_meter_plugin::identity::{Customer, CustomerId, UnixMillis};
use mcp_meter_plugin::ports::StoreError;
use serde::Serialize;
use sqlx::Pool;

use super::driver::{Driver, Read};
use super::error::Fault;
use super::ledger::refused;
use super::queue;
use super::rollup::TEXT_MAX_CHARS;
use super::rows::{self, CUSTOMER_COLUMNS};
use super::statement::Statement;

/// The largest payload stored (MySQL's `MEDIUMTEXT` holds 16 MiB; the
/// endpoint accepts far less).
const PAYLOAD_MAX_BYTES: usize = 16 * 1024 * 1024 - 1;

/// Where a stored webhook event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum WebhookStatus {
    /// Waiting to be processed (again).
    Pending,
    /// Applied (or deliberately without effect, for a type not handled).
    Processed,
    /// Given up on after too many failed attempts.
    Failed,
}

impl WebhookStatus {
    /// The snake_case name stored in the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            WebhookStatus::Pending => "pending",
            WebhookStatus::Processed => "processed",
            WebhookStatus::Failed => "failed",
        }
    }

    /// The status stored as `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [
            WebhookStatus::Pending,
            WebhookStatus::Processed,
            WebhookStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A webhook event to store, as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhookEvent {
    /// The provider's event id (`evt_…`).
    pub id: String,
    /// The event type (`checkout.session.completed`, …).
    pub event_type: String,
    /// The provider's event time, in Unix seconds.
    pub created: i64,
    /// The raw body, exactly as signed.
    pub payload: String,
    /// When it arrived; it is due for processing at once.
    pub received_at: UnixMillis,
}

/// A stored webhook event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WebhookEvent {
    /// The provider's event id (`evt_…`).
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// The provider's event time, in Unix seconds.
    pub created: i64,
    /// The raw body.
    pub payload: String,
    /// When it first arrived.
    pub received_at: UnixMillis,
    /// Where it stands.
    pub status: WebhookStatus,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// A pending event is not processed before this.
    pub next_attempt_at: UnixMillis,
    /// When it was processed.
    pub processed_at: Option<UnixMillis>,
}

/// Which webhook events to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookFilter {
    /// Only events in this state.
    pub status: Option<WebhookStatus>,
    /// Only events whose id sorts after this one (paging).
    pub after_id: Option<String>,
    /// At most this many.
    pub limit: u32,
}

/// The webhook event columns (10 columns).
const EVENT_COLUMNS: &str = "id, event_type, created, payload, received_at, status, attempts, \
     last_error, next_attempt_at, processed_at";

fn event(row: &impl Read) -> Result<WebhookEvent, sqlx::Error> {
    let id = row.text(0)?;
    let status = row.text(5)?;
    let attempts = row.int(6)?;
    let invalid = |what: String| sqlx::Error::Decode(format!("webhook event {id}: {what}").into());
    Ok(WebhookEvent {
        event_type: row.text(1)?,
        created: row.int(2)?,
        payload: row.text(3)?,
        received_at: UnixMillis(row.int(4)?),
        status: WebhookStatus::parse(&status)
            .ok_or_else(|| invalid(format!("unknown status {status:?}")))?,
        attempts: u32::try_from(attempts)
            .map_err(|_| invalid(format!("attempts out of range ({attempts})")))?,
        last_error: row.opt_text(7)?,
        next_attempt_at: UnixMillis(row.int(8)?),
        processed_at: row.opt_int(9)?.map(UnixMillis),
        id,
    })
}

async fn fetch<DB: Driver>(
    pool: &Pool<DB>,
    statement: Statement<DB>,
) -> Result<Vec<WebhookEvent>, Fault> {
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    Ok(found.iter().map(event).collect::<Result<_, _>>()?)
}

/// Stores an event unless one with its id is stored; `true` when stored
/// now. A concurrent insert of the same id makes this one "not new".
pub(super) async fn insert<DB: Driver>(
    pool: &Pool<DB>,
    new: &NewWebhookEvent,
) -> Result<bool, Fault> {
    for (what, value) in [("id", &new.id), ("type", &new.event_type)] {
        let chars = value.chars().count();
        if chars == 0 || chars > TEXT_MAX_CHARS {
            return Err(refused(format!(
                "a webhook event's {what} has 1 to {TEXT_MAX_CHARS} characters, not {chars}"
            )));
        }
    }
    if new.payload.len() > PAYLOAD_MAX_BYTES {
        return Err(refused(format!(
            "a webhook event's payload is at most {PAYLOAD_MAX_BYTES} bytes, not {}",
            new.payload.len()
        )));
    }
    let mut statement = Statement::<DB>::new(
        "INSERT INTO webhook_events (id, event_type, created, payload, received_at, status, \
         attempts, next_attempt_at) VALUES ",
    );
    statement.tuples([new], |t, e| {
        t.bind(e.id.as_str())
            .bind(e.event_type.as_str())
            .bind(e.created)
            .bind(e.payload.as_str())
            .bind(e.received_at)
            .bind(WebhookStatus::Pending.as_str())
            .bind(0_i64)
            .bind(e.received_at);
    });
    let mut conn = pool.acquire().await?;
    match statement.execute(&mut conn).await {
        Ok(()) => Ok(true),
        // Stored before, or by a concurrent delivery that won the race
        // (its insert waited for ours or we for its).
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// The event with this id.
pub(super) async fn find<DB: Driver>(
    pool: &Pool<DB>,
    id: &str,
) -> Result<Option<WebhookEvent>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .push(EVENT_COLUMNS)
        .push(" FROM webhook_events WHERE id = ")
        .bind(id);
    Ok(fetch(pool, statement).await?.pop())
}

/// Pending events due at `now`, oldest (by the provider's time) first, at
/// most `limit`.
pub(super) async fn due<DB: Driver>(
    pool: &Pool<DB>,
    now: UnixMillis,
    limit: u32,
) -> Result<Vec<WebhookEvent>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .push(EVENT_COLUMNS)
        .push(" FROM webhook_events WHERE status = ")
        .bind(WebhookStatus::Pending.as_str())
        .push(" AND next_attempt_at <= ")
        .bind(now)
        .push(" ORDER BY created, received_at, id LIMIT ")
        .bind(i64::from(limit));
    fetch(pool, statement).await
}

/// Marks a pending event processed at `at`.
pub(super) async fn mark_processed<DB: Driver>(
    pool: &Pool<DB>,
    id: &str,
    at: UnixMillis,
) -> Result<(), Fault> {
    let mut update = Statement::<DB>::new("UPDATE webhook_events SET status = ");
    update
        .bind(WebhookStatus::Processed.as_str())
        .push(", processed_at = ")
        .bind(at)
        .push(" WHERE id = ")
        .bind(id)
        .push(" AND status = ")
        .bind(WebhookStatus::Pending.as_str());
    let mut conn = pool.acquire().await?;
    Ok(update.execute(&mut conn).await?)
}

/// Puts a failed event back in the queue, due at `now`; `false` when no
/// failed event has this id.
pub(super) async fn retry<DB: Driver>(
    pool: &Pool<DB>,
    id: &str,
    now: UnixMillis,
) -> Result<bool, Fault> {
    queue::requeue(
        pool,
        "webhook_events",
        "id",
        id,
        WebhookStatus::Failed.as_str(),
        now,
    )
    .await
}

/// Records a failed attempt of a pending event: due again at `retry_at`,
/// or `failed` for good when `None`.
pub(super) async fn mark_failed<DB: Driver>(
    pool: &Pool<DB>,
    id: &str,
    error: &str,
    retry_at: Option<UnixMillis>,
) -> Result<(), Fault> {
    queue::mark_failed(
        pool,
        "webhook_events",
        "id",
        id,
        error,
        retry_at,
        WebhookStatus::Failed.as_str(),
    )
    .await
}

/// Events matching `filter`, by id ascending.
pub(super) async fn list<DB: Driver>(
    pool: &Pool<DB>,
    filter: &WebhookFilter,
) -> Result<Vec<WebhookEvent>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .one_off()
        .push(EVENT_COLUMNS)
        .push(" FROM webhook_events WHERE 1 = 1");
    if let Some(status) = filter.status {
        statement.push(" AND status = ").bind(status.as_str());
    }
    if let Some(after) = &filter.after_id {
        statement.push(" AND id > ").bind(after.as_str());
    }
    statement
        .push(" ORDER BY id LIMIT ")
        .bind(i64::from(filter.limit));
    fetch(pool, statement).await
}

/// The customer whose Stripe customer id is `stripe_id`; a
/// [`StoreError::Conflict`] when several customers have it.
pub(super) async fn find_customer_by_stripe_id<DB: Driver>(
    pool: &Pool<DB>,
    stripe_id: &str,
) -> Result<Option<Customer>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .push(CUSTOMER_COLUMNS)
        .push(" FROM customers c WHERE c.stripe_customer_id = ")
        .bind(stripe_id)
        .push(" ORDER BY c.id LIMIT 2");
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    let mut customers = found
        .iter()
        .map(|row| rows::customer(row, 0))
        .collect::<Result<Vec<_>, _>>()?;
    match customers.len() {
        0 => Ok(None),
        1 => Ok(customers.pop()),
        _ => Err(Fault::Store(StoreError::Conflict(format!(
            "customers {} and {} both have Stripe customer id {stripe_id:?}; \
             keep it on one of them",
            customers[0].id, customers[1].id
        )))),
    }
}

/// Sets the customer's Stripe customer id if they have none; `true` when
/// set now. [`StoreError::NotFound`] if there is no such customer.
pub(super) async fn attach_stripe_customer<DB: Driver>(
    pool: &Pool<DB>,
    id: &CustomerId,
    stripe_id: &str,
    at: UnixMillis,
) -> Result<bool, Fault> {
    let chars = stripe_id.chars().count();
    if chars == 0 || chars > TEXT_MAX_CHARS {
        return Err(refused(format!(
            "a Stripe customer id has 1 to {TEXT_MAX_CHARS} characters, not {chars}"
        )));
    }
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let mut lock = Statement::<DB>::new("SELECT stripe_customer_id FROM customers WHERE id = ");
    lock.bind(id.as_str()).push(DB::FOR_UPDATE);
    let current = match lock.fetch_optional(&mut tx).await? {
        Some(row) => row.opt_text(0)?,
        None => {
            tx.rollback().await?;
            return Err(Fault::Store(StoreError::NotFound(format!("customer {id}"))));
        }
    };
    if current.is_some() {
        tx.rollback().await?;
        return Ok(false);
    }
    let mut update = Statement::<DB>::new("UPDATE customers SET stripe_customer_id = ");
    update
        .bind(stripe_id)
        .push(", updated_at = ")
        .bind(at)
        .push(" WHERE id = ")
        .bind(id.as_str());
    update.execute(&mut tx).await?;
    tx.commit().await?;
    Ok(true)
}
