//! Metered usage: a call's units on a `usage` plan, recorded once per
//! charge key as a ledger entry and, in the same transaction, as an event
//! in the meter outbox for the payment provider (see `outbox` for how the
//! outbox is drained).
//!
//! There is no row to lock before the entry exists: the entry's unique
//! `(customer_id, idempotency_key)` decides. Two recordings of one call at
//! once both insert it; the database refuses the second (after the first
//! commits), whose transaction (batch) runs again and finds the entry. This module
//! must never record a call's usage twice, nor usage without its outbox
//! event, nor an event without its usage.

use mcp_meter_plugin::ledger::{EntryKind, MeterOutcome, MeteredUsage};
use mcp_meter_plugin::outbox::OutboxStatus;
use mcp_meter_plugin::ports::StoreError;

use super::super::driver::Driver;
use super::super::error::Fault;
use super::super::rollup::{TEXT_MAX_CHARS, fit};
use super::super::statement::Statement;
use super::{
    CALL_ID_MAX_CHARS, NewEntry, UNIT_MAX_CHARS, append, check_key, entry_exists, refused,
    unless_no_customer,
};

/// The longest meter event name (the payment provider's limit).
const EVENT_NAME_MAX_CHARS: usize = 100;

/// Refuses metered usage no transaction could apply: a bad key, units, event name, unit or call id.
pub(in crate::store) fn check_usage(usage: &MeteredUsage) -> Result<(), Fault> {
    check_key("charge key", usage.charge_key.as_str())?;
    if usage.units < 0 {
        return Err(refused(format!(
            "metered units cannot be negative ({})",
            usage.units
        )));
    }
    let name_chars = usage.event_name.chars().count();
    if name_chars == 0 || name_chars > EVENT_NAME_MAX_CHARS {
        return Err(refused(format!(
            "a meter event name has 1 to {EVENT_NAME_MAX_CHARS} characters, not {name_chars}"
        )));
    }
    if usage.unit.is_empty() || usage.unit.chars().count() > UNIT_MAX_CHARS {
        return Err(refused(format!(
            "{:?} is not a unit (1 to {UNIT_MAX_CHARS} characters)",
            usage.unit
        )));
    }
    // The call id is the event's identifier at the payment provider: it is
    // refused rather than cut, since a cut one could merge two events.
    let call_id = usage.call_id.as_str();
    if call_id.is_empty() || call_id.chars().count() > CALL_ID_MAX_CHARS {
        return Err(refused(format!(
            "a metered call id has 1 to {CALL_ID_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

/// Records a call's metered units and its outbox event, once per charge
/// key, inside the caller's transaction `conn`.
pub(super) async fn meter_in<DB: Driver>(
    conn: &mut DB::Connection,
    u: &MeteredUsage,
) -> Result<MeterOutcome, Fault> {
    let customer = &u.customer_id;
    let idempotency_key = format!("usage:{}", u.charge_key);
    if entry_exists::<DB>(&mut *conn, customer, &idempotency_key).await? {
        return Ok(MeterOutcome::AlreadyRecorded);
    }
    // The entry first: a concurrent recording of the same call fails here
    // on the unique key, before it reaches the outbox.
    append::<DB>(
        &mut *conn,
        &NewEntry {
            customer_id: customer,
            kind: EntryKind::Usage,
            amount: u.units,
            unit: &u.unit,
            balance_after: None,
            call_id: Some(u.call_id.as_str()),
            plan_id: Some(fit(&u.plan_id, TEXT_MAX_CHARS)),
            tool: u.tool.as_deref(),
            idempotency_key: &idempotency_key,
            reason: Some(&u.event_name),
            at: u.at,
        },
    )
    .await?;
    let mut insert = Statement::<DB>::new(
        "INSERT INTO meter_outbox (customer_id, event_name, value, identifier, occurred_at, \
         status, attempts, last_error, next_attempt_at, sent_at, created_at) VALUES ",
    );
    insert.tuples([()], |row, ()| {
        row.bind(customer.as_str())
            .bind(u.event_name.as_str())
            .bind(u.units)
            .bind(u.call_id.as_str())
            .bind(u.at)
            .bind(OutboxStatus::Pending.as_str())
            .bind(0i64)
            .bind(None::<&str>)
            .bind(u.at)
            .bind(None::<i64>)
            .bind(u.at);
    });
    match insert.execute(&mut *conn).await {
        Ok(()) => {}
        // This charge key's entry was new, so another call holds the
        // identifier: a caller's mistake, not a race to run again.
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            return Err(Fault::Store(StoreError::Conflict(format!(
                "a meter event with identifier {:?} exists for another call",
                u.call_id.as_str()
            ))));
        }
        Err(error) => return Err(unless_no_customer(error, customer)),
    }
    Ok(MeterOutcome::Recorded)
}
