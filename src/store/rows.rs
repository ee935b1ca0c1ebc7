//! Rows to domain values: the column lists the queries select and how each
//! row becomes a [`Customer`], an [`ApiKeyRecord`], a [`UsageRecord`], a
//! [`DailyUsage`], a [`LedgerEntry`], a [`Subscription`] or a
//! [`MeterEvent`]. A column order is defined here once and read here only.

use mcp_meter_plugin::identity::{
    ApiKeyRecord, CallId, Customer, CustomerId, CustomerStatus, KeyId, KeyScope, UnixMillis,
};
use mcp_meter_plugin::ledger::{EntryKind, LedgerEntry};
use mcp_meter_plugin::outbox::{MeterEvent, OutboxStatus};
use mcp_meter_plugin::ports::{UsageOutcome, UsageRecord};
use mcp_meter_plugin::subscription::{Subscription, SubscriptionStatus};
use serde::de::DeserializeOwned;

use super::DailyUsage;
use super::driver::Read;

/// The customer columns, table alias `c` (10 columns).
pub(super) const CUSTOMER_COLUMNS: &str = "c.id, c.name, c.email, c.plan_id, c.status, \
     c.stripe_customer_id, c.external_subject, c.metadata, c.created_at, c.updated_at";

/// The API key columns, table alias `k` (9 columns).
pub(super) const KEY_COLUMNS: &str = "k.id, k.customer_id, k.prefix, k.name, k.scope, \
     k.expires_at, k.revoked_at, k.last_used_at, k.created_at";
/// Where the customer's columns start in a key-and-customer row.
pub(super) const KEY_WIDTH: usize = 9;

/// The usage record columns, in insert order (13 columns).
pub(super) const USAGE_COLUMNS: &str = "call_id, customer_id, key_id, session_id, method, tool, \
     started_at, duration_us, bytes_in, bytes_out, outcome, reason, units";

/// The daily roll-up columns, in insert order (10 columns).
pub(super) const DAILY_COLUMNS: &str =
    "day, customer_id, method, tool, calls, errors, units, duration_us, bytes_in, bytes_out";

/// Reads a customer starting at column `at`.
pub(super) fn customer(row: &impl Read, at: usize) -> Result<Customer, sqlx::Error> {
    let id = row.text(at)?;
    let status = row.text(at + 4)?;
    Ok(Customer {
        status: CustomerStatus::parse(&status)
            .ok_or_else(|| invalid(&id, format!("unknown status {status:?}")))?,
        name: row.text(at + 1)?,
        email: row.opt_text(at + 2)?,
        plan_id: row.opt_text(at + 3)?,
        stripe_customer_id: row.opt_text(at + 5)?,
        external_subject: row.opt_text(at + 6)?,
        metadata: json(&id, "metadata", &row.text(at + 7)?)?,
        created_at: UnixMillis(row.int(at + 8)?),
        updated_at: UnixMillis(row.int(at + 9)?),
        id: CustomerId::new(id),
    })
}

/// Reads an API key starting at column `at`.
pub(super) fn api_key(row: &impl Read, at: usize) -> Result<ApiKeyRecord, sqlx::Error> {
    let id = row.text(at)?;
    let scope: KeyScope = json(&id, "scope", &row.text(at + 4)?)?;
    Ok(ApiKeyRecord {
        customer_id: CustomerId::new(row.text(at + 1)?),
        prefix: row.text(at + 2)?,
        name: row.opt_text(at + 3)?,
        scope,
        expires_at: row.opt_int(at + 5)?.map(UnixMillis),
        revoked_at: row.opt_int(at + 6)?.map(UnixMillis),
        last_used_at: row.opt_int(at + 7)?.map(UnixMillis),
        created_at: UnixMillis(row.int(at + 8)?),
        id: KeyId::new(id),
    })
}

/// Reads a usage record (columns as in [`USAGE_COLUMNS`]).
pub(super) fn usage_record(row: &impl Read) -> Result<UsageRecord, sqlx::Error> {
    let call_id = row.text(0)?;
    let outcome = row.text(10)?;
    Ok(UsageRecord {
        customer_id: row.opt_text(1)?.map(CustomerId::new),
        key_id: row.opt_text(2)?.map(KeyId::new),
        session_id: row.opt_text(3)?,
        method: row.text(4)?,
        tool: row.opt_text(5)?,
        started_at: UnixMillis(row.int(6)?),
        duration_us: row.int(7)?,
        bytes_in: row.int(8)?,
        bytes_out: row.int(9)?,
        outcome: UsageOutcome::parse(&outcome)
            .ok_or_else(|| invalid(&call_id, format!("unknown outcome {outcome:?}")))?,
        reason: row.opt_text(11)?,
        units: row.int(12)?,
        call_id: CallId::new(call_id),
    })
}

/// Reads a daily roll-up row (columns as in [`DAILY_COLUMNS`]); the empty
/// customer and tool mean none.
pub(super) fn daily(row: &impl Read) -> Result<DailyUsage, sqlx::Error> {
    let customer = row.text(1)?;
    let tool = row.text(3)?;
    Ok(DailyUsage {
        day: row.text(0)?,
        customer_id: (!customer.is_empty()).then(|| CustomerId::new(customer)),
        method: row.text(2)?,
        tool: (!tool.is_empty()).then_some(tool),
        calls: row.int(4)?,
        errors: row.int(5)?,
        units: row.int(6)?,
        duration_us: row.int(7)?,
        bytes_in: row.int(8)?,
        bytes_out: row.int(9)?,
    })
}

/// The ledger entry columns: `id`, then the rest in insert order (12
/// columns).
pub(super) const LEDGER_COLUMNS: &str = "id, customer_id, kind, amount, unit, balance_after, \
     call_id, plan_id, tool, idempotency_key, reason, created_at";

/// Reads a ledger entry (columns as in [`LEDGER_COLUMNS`]).
pub(super) fn ledger_entry(row: &impl Read) -> Result<LedgerEntry, sqlx::Error> {
    let id = row.int(0)?;
    let kind = row.text(2)?;
    Ok(LedgerEntry {
        id,
        customer_id: CustomerId::new(row.text(1)?),
        kind: EntryKind::parse(&kind)
            .ok_or_else(|| invalid(&id.to_string(), format!("unknown entry kind {kind:?}")))?,
        amount: row.int(3)?,
        unit: row.text(4)?,
        balance_after: row.opt_int(5)?,
        call_id: row.opt_text(6)?.map(CallId::new),
        plan_id: row.opt_text(7)?,
        tool: row.opt_text(8)?,
        idempotency_key: row.text(9)?,
        reason: row.opt_text(10)?,
        created_at: UnixMillis(row.int(11)?),
    })
}

/// The subscription columns, in insert order (9 columns).
pub(super) const SUBSCRIPTION_COLUMNS: &str = "customer_id, plan_id, status, started_at, \
     past_due_since, current_period_start, current_period_end, external_id, updated_at";

/// Reads a subscription (columns as in [`SUBSCRIPTION_COLUMNS`]).
pub(super) fn subscription(row: &impl Read) -> Result<Subscription, sqlx::Error> {
    let customer = row.text(0)?;
    let status = row.text(2)?;
    Ok(Subscription {
        plan_id: row.text(1)?,
        status: SubscriptionStatus::parse(&status)
            .ok_or_else(|| invalid(&customer, format!("unknown status {status:?}")))?,
        started_at: UnixMillis(row.int(3)?),
        past_due_since: row.opt_int(4)?.map(UnixMillis),
        current_period_start: row.opt_int(5)?.map(UnixMillis),
        current_period_end: row.opt_int(6)?.map(UnixMillis),
        external_id: row.opt_text(7)?,
        updated_at: UnixMillis(row.int(8)?),
        customer_id: CustomerId::new(customer),
    })
}

/// The meter outbox columns: `id`, then the rest (11 columns).
pub(super) const METER_EVENT_COLUMNS: &str = "id, customer_id, event_name, value, identifier, \
     occurred_at, status, attempts, last_error, next_attempt_at, sent_at, batch_id";

/// Reads a meter event (columns as in [`METER_EVENT_COLUMNS`]).
pub(super) fn meter_event(row: &impl Read) -> Result<MeterEvent, sqlx::Error> {
    let id = row.int(0)?;
    let status = row.text(6)?;
    let attempts = row.int(7)?;
    Ok(MeterEvent {
        id,
        customer_id: CustomerId::new(row.text(1)?),
        event_name: row.text(2)?,
        value: row.int(3)?,
        identifier: row.text(4)?,
        occurred_at: UnixMillis(row.int(5)?),
        status: OutboxStatus::parse(&status)
            .ok_or_else(|| invalid(&id.to_string(), format!("unknown status {status:?}")))?,
        attempts: u32::try_from(attempts).map_err(|_| {
            invalid(
                &id.to_string(),
                format!("attempts out of range ({attempts})"),
            )
        })?,
        last_error: row.opt_text(8)?,
        next_attempt_at: UnixMillis(row.int(9)?),
        sent_at: row.opt_int(10)?.map(UnixMillis),
        batch: row.opt_text(11)?,
    })
}

/// Parses a JSON text column.
fn json<T: DeserializeOwned>(id: &str, column: &str, text: &str) -> Result<T, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| invalid(id, format!("{column} is not valid JSON: {e}")))
}

fn invalid(id: &str, what: String) -> sqlx::Error {
    sqlx::Error::Decode(format!("row {id}: {what}").into())
}
