//! Quota taken per logical call: a free or included call takes its units
//! from a counter under a cap before it is forwarded (`take_in`), and
//! gives them back if it fails (`release_in`), each inside a transaction
//! that locks the counter row it moves (see the parent module).
//!
//! What a call took lives in `quota_uses`, one row per charge key holding
//! its latest attempt: `taken` until it is released; a released call may
//! take again as the next attempt. The row keeps the counter, period and
//! units taken, so a release gives back exactly those, to the period they
//! came from, even after the period turned. This module must never pass a
//! cap, never count a call twice while it holds its units, never give back
//! more than was taken or take a counter below zero, and never move a
//! counter without the ledger entry that records it in the same
//! transaction.

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{EntryKind, QuotaOutcome, QuotaRelease, QuotaTake, ReleaseOutcome};

use super::super::driver::{Driver, Read};
use super::super::error::Fault;
use super::super::rollup::{TEXT_MAX_CHARS, fit};
use super::super::statement::Statement;
use super::quota::CounterKey;
use super::{CALL_ID_MAX_CHARS, CALLS, NewEntry, append, check_key, refused, unless_no_customer};

/// Where a call's latest take stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Taken,
    Released,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Taken => "taken",
            State::Released => "released",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "taken" => Some(State::Taken),
            "released" => Some(State::Released),
            _ => None,
        }
    }
}

/// A `quota_uses` row.
struct QuotaUse {
    attempt: i64,
    state: State,
    counter: String,
    period_start: UnixMillis,
    units: i64,
    call_id: String,
    plan_id: String,
    tool: Option<String>,
}

/// The charge key's row, if the call ever took quota; locked until the
/// transaction ends when `lock` is set.
async fn quota_use<DB: Driver>(
    conn: &mut DB::Connection,
    customer: &CustomerId,
    charge_key: &str,
    lock: bool,
) -> Result<Option<QuotaUse>, sqlx::Error> {
    let mut statement = Statement::<DB>::new(
        "SELECT attempt, state, counter, period_start, units, call_id, plan_id, tool \
         FROM quota_uses WHERE customer_id = ",
    );
    statement
        .bind(customer.as_str())
        .push(" AND charge_key = ")
        .bind(charge_key);
    if lock {
        statement.push(DB::FOR_UPDATE);
    }
    let Some(row) = statement.fetch_optional(conn).await? else {
        return Ok(None);
    };
    let state = row.text(1)?;
    Ok(Some(QuotaUse {
        attempt: row.int(0)?,
        state: State::parse(&state).ok_or_else(|| {
            sqlx::Error::Decode(format!("quota use {charge_key:?}: unknown state {state:?}").into())
        })?,
        counter: row.text(2)?,
        period_start: UnixMillis(row.int(3)?),
        units: row.int(4)?,
        call_id: row.text(5)?,
        plan_id: row.text(6)?,
        tool: row.opt_text(7)?,
    }))
}

/// Refuses a take no transaction could apply: under one unit, a negative cap, a bad key or counter name.
pub(in crate::store) fn check_take(take: &QuotaTake) -> Result<(), Fault> {
    if take.units < 1 {
        return Err(refused(format!(
            "a call takes at least 1 unit of quota, not {}",
            take.units
        )));
    }
    if let Some(cap) = take.cap.filter(|cap| *cap < 0) {
        return Err(refused(format!("a quota cap cannot be negative ({cap})")));
    }
    check_key("charge key", take.charge_key.as_str())?;
    check_key("counter name", &take.counter)?;
    Ok(())
}

/// Takes a call's units from its counter unless that passes the cap, once
/// per charge key while taken, inside the caller's transaction `conn`.
pub(super) async fn take_in<DB: Driver>(
    conn: &mut DB::Connection,
    t: &QuotaTake,
) -> Result<QuotaOutcome, Fault> {
    let customer = &t.customer_id;
    let charge_key = t.charge_key.as_str();
    let key = CounterKey {
        customer,
        counter: &t.counter,
        period_start: t.period_start,
    };
    // The counter first: every take of this counter queues here, and the
    // call's row read after it is the latest committed (a concurrent take
    // of the same key took this lock before, or fails on the row's primary
    // key or the entry's unique key and runs again).
    let stored = key.locked::<DB>(&mut *conn).await?;
    let used = stored.unwrap_or(0);
    let previous = quota_use::<DB>(&mut *conn, customer, charge_key, false).await?;
    let attempt = match &previous {
        None => 1,
        Some(taken) if taken.state == State::Taken => {
            return Ok(QuotaOutcome::AlreadyTaken { used });
        }
        Some(released) => released.attempt + 1,
    };
    let next = used.checked_add(t.units).ok_or_else(|| {
        refused(format!(
            "counter {:?} of customer {customer} is full",
            t.counter
        ))
    })?;
    if t.cap.is_some_and(|cap| next > cap) {
        return Ok(QuotaOutcome::Exhausted { used });
    }
    key.set::<DB>(&mut *conn, stored.is_some(), next).await?;

    let call_id = fit(t.call_id.as_str(), CALL_ID_MAX_CHARS);
    let plan_id = fit(&t.plan_id, TEXT_MAX_CHARS);
    let tool = t.tool.as_deref().map(|tool| fit(tool, TEXT_MAX_CHARS));
    let write = match &previous {
        None => {
            let mut insert = Statement::<DB>::new(
                "INSERT INTO quota_uses (customer_id, charge_key, attempt, state, counter, \
                 period_start, units, call_id, plan_id, tool, created_at, updated_at) VALUES ",
            );
            insert.tuples([()], |row, ()| {
                row.bind(customer.as_str())
                    .bind(charge_key)
                    .bind(attempt)
                    .bind(State::Taken.as_str())
                    .bind(t.counter.as_str())
                    .bind(t.period_start)
                    .bind(t.units)
                    .bind(call_id)
                    .bind(plan_id)
                    .bind(tool)
                    .bind(t.at)
                    .bind(t.at);
            });
            insert
        }
        Some(released) => {
            let mut update = Statement::<DB>::new("UPDATE quota_uses SET attempt = ");
            update
                .bind(attempt)
                .push(", state = ")
                .bind(State::Taken.as_str())
                .push(", counter = ")
                .bind(t.counter.as_str())
                .push(", period_start = ")
                .bind(t.period_start)
                .push(", units = ")
                .bind(t.units)
                .push(", call_id = ")
                .bind(call_id)
                .push(", plan_id = ")
                .bind(plan_id)
                .push(", tool = ")
                .bind(tool)
                .push(", updated_at = ")
                .bind(t.at)
                .push(" WHERE customer_id = ")
                .bind(customer.as_str())
                .push(" AND charge_key = ")
                .bind(charge_key)
                .push(" AND attempt = ")
                .bind(released.attempt)
                .push(" AND state = ")
                .bind(State::Released.as_str());
            update
        }
    };
    write
        .execute(&mut *conn)
        .await
        .map_err(|error| unless_no_customer(error, customer))?;

    let idempotency_key = format!("quota:{charge_key}:{attempt}");
    append::<DB>(
        &mut *conn,
        &NewEntry {
            customer_id: customer,
            kind: EntryKind::Usage,
            amount: t.units,
            unit: CALLS,
            balance_after: None,
            call_id: Some(call_id),
            plan_id: Some(plan_id),
            tool,
            idempotency_key: &idempotency_key,
            reason: Some(&t.counter),
            at: t.at,
        },
    )
    .await?;
    Ok(QuotaOutcome::Taken { used: next })
}

/// Refuses a release with a bad charge key.
pub(in crate::store) fn check_release(release: &QuotaRelease) -> Result<(), Fault> {
    check_key("charge key", release.charge_key.as_str())?;
    Ok(())
}

/// Gives a taken call's units back to the counter and period it took them
/// from, once per attempt, inside the caller's transaction `conn`.
pub(super) async fn release_in<DB: Driver>(
    conn: &mut DB::Connection,
    r: &QuotaRelease,
) -> Result<ReleaseOutcome, Fault> {
    let customer = &r.customer_id;
    let charge_key = r.charge_key.as_str();
    // The call's row decides (releases of one key queue on it); then the
    // counter it took from, which takes of that counter also lock first.
    let Some(taken) = quota_use::<DB>(&mut *conn, customer, charge_key, true).await? else {
        return Ok(ReleaseOutcome::NotTaken);
    };
    if taken.state == State::Released {
        return Ok(ReleaseOutcome::AlreadyReleased);
    }
    let key = CounterKey {
        customer,
        counter: &taken.counter,
        period_start: taken.period_start,
    };
    let stored = key.locked::<DB>(&mut *conn).await?;
    let used = match stored {
        Some(used) => {
            let next = used.saturating_sub(taken.units).max(0);
            if next != used {
                key.set::<DB>(&mut *conn, true, next).await?;
            }
            next
        }
        // Cannot happen (the take set the counter); nothing to give back to.
        None => 0,
    };
    let mut update = Statement::<DB>::new("UPDATE quota_uses SET state = ");
    update
        .bind(State::Released.as_str())
        .push(", updated_at = ")
        .bind(r.at)
        .push(" WHERE customer_id = ")
        .bind(customer.as_str())
        .push(" AND charge_key = ")
        .bind(charge_key)
        .push(" AND attempt = ")
        .bind(taken.attempt)
        .push(" AND state = ")
        .bind(State::Taken.as_str());
    update.execute(&mut *conn).await?;

    let idempotency_key = format!("unquota:{charge_key}:{}", taken.attempt);
    append::<DB>(
        &mut *conn,
        &NewEntry {
            customer_id: customer,
            kind: EntryKind::Refund,
            amount: -taken.units,
            unit: CALLS,
            balance_after: None,
            call_id: Some(&taken.call_id),
            plan_id: Some(&taken.plan_id),
            tool: taken.tool.as_deref(),
            idempotency_key: &idempotency_key,
            reason: Some(&r.reason),
            at: r.at,
        },
    )
    .await?;
    Ok(ReleaseOutcome::Released { used })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [State::Taken, State::Released] {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::parse("reserved"), None);
    }
}
