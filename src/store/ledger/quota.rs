//! Period counters: numbering a priced plan's calls within their period
//! and charging each at its number's price (`accrue_in`), and moving quota
//! counters under a cap (`step_counter`). Each is one transaction that
//! locks the counter row it moves (see the parent module), so concurrent
//! calls get distinct, consecutive numbers and a cap is never passed.
//!
//! This module must never number two calls alike, never charge a charge
//! key twice, and never move a counter above its cap or below zero.

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{Accrual, AccrueOutcome, CounterOutcome, CounterStep, EntryKind};
use sqlx::Pool;

use super::super::driver::{Driver, Read};
use super::super::error::Fault;
use super::super::statement::Statement;
use super::{
    NewEntry, UNIT_MAX_CHARS, append, check_key, entry_exists, refused, retrying,
    unless_no_customer,
};

/// One counter in one period.
pub(super) struct CounterKey<'a> {
    /// Whose counter.
    pub(super) customer: &'a CustomerId,
    /// Which counter.
    pub(super) counter: &'a str,
    /// The start of its period.
    pub(super) period_start: UnixMillis,
}

impl CounterKey<'_> {
    /// Appends ` WHERE customer_id = … AND counter = … AND period_start = …`.
    fn push_where<DB: Driver>(&self, statement: &mut Statement<DB>) {
        statement
            .push(" WHERE customer_id = ")
            .bind(self.customer.as_str())
            .push(" AND counter = ")
            .bind(self.counter)
            .push(" AND period_start = ")
            .bind(self.period_start);
    }

    /// The counter's value, its row locked until the transaction ends;
    /// `None` when it was never moved.
    pub(super) async fn locked<DB: Driver>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<Option<i64>, sqlx::Error> {
        let mut statement = Statement::<DB>::new("SELECT used FROM period_counters");
        self.push_where(&mut statement);
        statement.push(DB::FOR_UPDATE);
        match statement.fetch_optional(conn).await? {
            Some(row) => Ok(Some(row.int(0)?)),
            None => Ok(None),
        }
    }

    /// Sets the counter to `used`: an update of the row read locked, or an
    /// insert when there was none (two inserts racing: the primary key
    /// refuses one, which runs again).
    pub(super) async fn set<DB: Driver>(
        &self,
        conn: &mut DB::Connection,
        existed: bool,
        used: i64,
    ) -> Result<(), Fault> {
        if existed {
            let mut update = Statement::<DB>::new("UPDATE period_counters SET used = ");
            update.bind(used);
            self.push_where(&mut update);
            return Ok(update.execute(conn).await?);
        }
        let mut insert = Statement::<DB>::new(
            "INSERT INTO period_counters (customer_id, counter, period_start, used) VALUES ",
        );
        insert.tuples([()], |t, ()| {
            t.bind(self.customer.as_str())
                .bind(self.counter)
                .bind(self.period_start)
                .bind(used);
        });
        insert
            .execute(conn)
            .await
            .map_err(|error| unless_no_customer(error, self.customer))
    }
}

/// Refuses an accrual no transaction could apply: a bad key, counter name, quantity or currency.
pub(in crate::store) fn check_accrual(accrual: &Accrual) -> Result<(), Fault> {
    check_key("charge key", accrual.charge_key.as_str())?;
    check_key("counter name", &accrual.counter)?;
    if accrual.quantity < 0 {
        return Err(refused(format!(
            "a call's quantity cannot be negative ({})",
            accrual.quantity
        )));
    }
    if accrual.currency.is_empty() || accrual.currency.chars().count() > UNIT_MAX_CHARS {
        return Err(refused(format!(
            "{:?} is not a currency code",
            accrual.currency
        )));
    }
    Ok(())
}

/// Numbers a call in its period and charges it, once per charge key,
/// inside the caller's transaction `conn` (a batch's).
pub(super) async fn accrue_in<DB: Driver>(
    conn: &mut DB::Connection,
    a: &Accrual,
) -> Result<AccrueOutcome, Fault> {
    let idempotency_key = format!("charge:{}", a.charge_key);
    let key = CounterKey {
        customer: &a.customer_id,
        counter: &a.counter,
        period_start: a.period_start,
    };
    // Read before the counter lock, so a replay takes no lock. A concurrent
    // accrual of the same key that slips past this check fails on the
    // entry's unique key (its count rolls back) and, run again, stops here.
    if entry_exists::<DB>(&mut *conn, &a.customer_id, &idempotency_key).await? {
        return Ok(AccrueOutcome::AlreadyCharged);
    }
    let used = key.locked::<DB>(&mut *conn).await?;
    let before = used.unwrap_or(0);
    let number = before.checked_add(a.quantity).ok_or_else(|| {
        refused(format!(
            "counter {:?} of customer {} is full",
            a.counter, a.customer_id
        ))
    })?;
    key.set::<DB>(&mut *conn, used.is_some(), number).await?;
    let amount = a.schedule.charge_for(before, a.quantity);
    append::<DB>(
        &mut *conn,
        &NewEntry {
            customer_id: &a.customer_id,
            kind: EntryKind::Charge,
            amount,
            unit: &a.currency,
            balance_after: None,
            call_id: Some(a.call_id.as_str()),
            plan_id: Some(&a.plan_id),
            tool: a.tool.as_deref(),
            idempotency_key: &idempotency_key,
            reason: None,
            at: a.at,
        },
    )
    .await?;
    Ok(AccrueOutcome::Charged { number, amount })
}

/// Moves a counter by `delta` unless that passes the cap. A give-back
/// (negative delta) larger than the counter stops at 0 rather than being
/// refused; a cap only refuses steps up, so a counter above a lowered cap
/// can still be given back.
pub(in crate::store) async fn step_counter<DB: Driver>(
    pool: &Pool<DB>,
    step: &CounterStep,
) -> Result<CounterOutcome, Fault> {
    check_key("counter name", &step.counter)?;
    retrying::<DB, _, _, _>("counter step", || step_once(pool, step)).await
}

async fn step_once<DB: Driver>(pool: &Pool<DB>, s: &CounterStep) -> Result<CounterOutcome, Fault> {
    let key = CounterKey {
        customer: &s.customer_id,
        counter: &s.counter,
        period_start: s.period_start,
    };
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let stored = key.locked::<DB>(&mut tx).await?;
    let used = stored.unwrap_or(0);
    let next = used.saturating_add(s.delta).max(0);
    if s.delta > 0 && s.cap.is_some_and(|cap| next > cap) {
        tx.rollback().await?;
        return Ok(CounterOutcome::CapReached { used });
    }
    if next == used {
        tx.rollback().await?;
        return Ok(CounterOutcome::Counted { used });
    }
    key.set::<DB>(&mut tx, stored.is_some(), next).await?;
    tx.commit().await?;
    Ok(CounterOutcome::Counted { used: next })
}
