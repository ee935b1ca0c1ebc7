//! Prepaid credits: reserving before a call, settling or refunding after
//! it, and grants, purchases and adjustments, each one transaction that
//! starts by locking the customer's balance row (see the parent module).
//!
//! A logical call's reservation lives in `call_charges`, one row per charge
//! key holding its latest attempt: `reserved` until it is settled or
//! refunded; a refunded call may reserve again as the next attempt. This
//! module must never take credits the balance does not hold, never charge
//! a call twice, and never return more than a reservation took.

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{
    BalanceChange, ChangeOutcome, EntryKind, Reservation, ReserveOutcome, SettleOutcome, Settlement,
};
use sqlx::Pool;

use super::super::driver::{Driver, Read};
use super::super::error::Fault;
use super::super::rollup::{TEXT_MAX_CHARS, fit};
use super::super::statement::Statement;
use super::{
    CALL_ID_MAX_CHARS, CREDITS, DERIVED_PREFIXES, NewEntry, add_to_balance, append, check_key,
    entry_exists, locked_balance, not_found, refused, retrying, unless_no_customer,
};

/// Where a call's latest attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reserved,
    Settled,
    Refunded,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Reserved => "reserved",
            State::Settled => "settled",
            State::Refunded => "refunded",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "reserved" => Some(State::Reserved),
            "settled" => Some(State::Settled),
            "refunded" => Some(State::Refunded),
            _ => None,
        }
    }
}

/// A `call_charges` row.
struct CallCharge {
    attempt: i64,
    state: State,
    amount: i64,
    call_id: String,
    plan_id: String,
    tool: Option<String>,
}

/// The charge key's row, if the call ever reserved. Read after the balance
/// row is locked, so it is the latest committed state (every writer of
/// the row holds that lock).
async fn call_charge<DB: Driver>(
    conn: &mut DB::Connection,
    customer: &CustomerId,
    charge_key: &str,
) -> Result<Option<CallCharge>, sqlx::Error> {
    let mut statement = Statement::<DB>::new(
        "SELECT attempt, state, amount, call_id, plan_id, tool FROM call_charges \
         WHERE customer_id = ",
    );
    statement
        .bind(customer.as_str())
        .push(" AND charge_key = ")
        .bind(charge_key);
    let Some(row) = statement.fetch_optional(conn).await? else {
        return Ok(None);
    };
    let state = row.text(1)?;
    Ok(Some(CallCharge {
        attempt: row.int(0)?,
        state: State::parse(&state).ok_or_else(|| {
            sqlx::Error::Decode(
                format!("call charge {charge_key:?}: unknown state {state:?}").into(),
            )
        })?,
        amount: row.int(2)?,
        call_id: row.text(3)?,
        plan_id: row.text(4)?,
        tool: row.opt_text(5)?,
    }))
}

/// Takes the credits of a reservation if the balance holds them, once per
/// charge key (and attempt).
pub(in crate::store) async fn reserve<DB: Driver>(
    pool: &Pool<DB>,
    reservation: &Reservation,
) -> Result<ReserveOutcome, Fault> {
    if reservation.amount < 1 {
        return Err(refused(format!(
            "a reservation takes at least 1 credit, not {}",
            reservation.amount
        )));
    }
    check_key("charge key", reservation.charge_key.as_str())?;
    retrying::<DB, _, _, _>("reservation", || reserve_once(pool, reservation)).await
}

async fn reserve_once<DB: Driver>(
    pool: &Pool<DB>,
    r: &Reservation,
) -> Result<ReserveOutcome, Fault> {
    let customer = &r.customer_id;
    let key = r.charge_key.as_str();
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let balance = locked_balance::<DB>(&mut tx, customer).await?;
    let previous = call_charge::<DB>(&mut tx, customer, key).await?;
    let attempt = match &previous {
        None => 1,
        Some(charge) if charge.state == State::Refunded => charge.attempt + 1,
        Some(_) => {
            tx.rollback().await?;
            return Ok(ReserveOutcome::AlreadyCharged);
        }
    };
    let balance = balance.unwrap_or(0);
    if balance < r.amount {
        tx.rollback().await?;
        return Ok(ReserveOutcome::Insufficient { balance });
    }
    let balance_after = balance - r.amount;
    add_to_balance::<DB>(&mut tx, customer, -r.amount, r.at).await?;

    let call_id = fit(r.call_id.as_str(), CALL_ID_MAX_CHARS);
    let plan_id = fit(&r.plan_id, TEXT_MAX_CHARS);
    let tool = r.tool.as_deref().map(|tool| fit(tool, TEXT_MAX_CHARS));
    let write = match &previous {
        None => {
            let mut insert = Statement::<DB>::new(
                "INSERT INTO call_charges (customer_id, charge_key, attempt, state, amount, \
                 call_id, plan_id, tool, created_at, updated_at) VALUES ",
            );
            insert.tuples([()], |t, ()| {
                t.bind(customer.as_str())
                    .bind(key)
                    .bind(attempt)
                    .bind(State::Reserved.as_str())
                    .bind(r.amount)
                    .bind(call_id)
                    .bind(plan_id)
                    .bind(tool)
                    .bind(r.at)
                    .bind(r.at);
            });
            insert
        }
        Some(refunded) => {
            let mut update = Statement::<DB>::new("UPDATE call_charges SET attempt = ");
            update
                .bind(attempt)
                .push(", state = ")
                .bind(State::Reserved.as_str())
                .push(", amount = ")
                .bind(r.amount)
                .push(", call_id = ")
                .bind(call_id)
                .push(", plan_id = ")
                .bind(plan_id)
                .push(", tool = ")
                .bind(tool)
                .push(", updated_at = ")
                .bind(r.at)
                .push(" WHERE customer_id = ")
                .bind(customer.as_str())
                .push(" AND charge_key = ")
                .bind(key)
                .push(" AND attempt = ")
                .bind(refunded.attempt)
                .push(" AND state = ")
                .bind(State::Refunded.as_str());
            update
        }
    };
    write.execute(&mut tx).await?;

    let idempotency_key = format!("reserve:{key}:{attempt}");
    append::<DB>(
        &mut tx,
        &NewEntry {
            customer_id: customer,
            kind: EntryKind::Reservation,
            amount: -r.amount,
            unit: CREDITS,
            balance_after: Some(balance_after),
            call_id: Some(call_id),
            plan_id: Some(plan_id),
            tool,
            idempotency_key: &idempotency_key,
            reason: None,
            at: r.at,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(ReserveOutcome::Reserved {
        attempt,
        balance_after,
    })
}

/// Settles or refunds a reserved attempt, once.
pub(in crate::store) async fn settle<DB: Driver>(
    pool: &Pool<DB>,
    settlement: &Settlement,
) -> Result<SettleOutcome, Fault> {
    check_key("charge key", settlement.charge_key.as_str())?;
    retrying::<DB, _, _, _>("settlement", || settle_once(pool, settlement)).await
}

async fn settle_once<DB: Driver>(pool: &Pool<DB>, s: &Settlement) -> Result<SettleOutcome, Fault> {
    let customer = &s.customer_id;
    let key = s.charge_key.as_str();
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let balance = locked_balance::<DB>(&mut tx, customer).await?;
    let charge = call_charge::<DB>(&mut tx, customer, key).await?;
    let outcome = match &charge {
        None => Some(SettleOutcome::NoReservation),
        // A later attempt exists only after this one was refunded.
        Some(charge) if s.attempt < charge.attempt => Some(SettleOutcome::AlreadySettled),
        Some(charge) if s.attempt > charge.attempt => Some(SettleOutcome::NoReservation),
        Some(charge) if charge.state != State::Reserved => Some(SettleOutcome::AlreadySettled),
        Some(_) => None,
    };
    let (Some(charge), None) = (charge, outcome) else {
        tx.rollback().await?;
        return Ok(outcome.unwrap_or(SettleOutcome::NoReservation));
    };
    let Some(balance) = balance else {
        return Err(refused(format!(
            "customer {customer} holds a reservation for {key:?} but has no balance"
        )));
    };
    let (kind, state, returned, prefix) = match &s.refund_reason {
        Some(_) => (EntryKind::Refund, State::Refunded, charge.amount, "refund"),
        None => {
            let actual = s.actual.max(0).min(charge.amount);
            (
                EntryKind::Settlement,
                State::Settled,
                charge.amount - actual,
                "settle",
            )
        }
    };
    let balance_after = balance
        .checked_add(returned)
        .ok_or_else(|| refused(format!("the balance of customer {customer} would overflow")))?;
    if returned > 0 {
        add_to_balance::<DB>(&mut tx, customer, returned, s.at).await?;
    }
    let mut update = Statement::<DB>::new("UPDATE call_charges SET state = ");
    update
        .bind(state.as_str())
        .push(", updated_at = ")
        .bind(s.at)
        .push(" WHERE customer_id = ")
        .bind(customer.as_str())
        .push(" AND charge_key = ")
        .bind(key)
        .push(" AND attempt = ")
        .bind(s.attempt)
        .push(" AND state = ")
        .bind(State::Reserved.as_str());
    update.execute(&mut tx).await?;

    let idempotency_key = format!("{prefix}:{key}:{}", s.attempt);
    append::<DB>(
        &mut tx,
        &NewEntry {
            customer_id: customer,
            kind,
            amount: returned,
            unit: CREDITS,
            balance_after: Some(balance_after),
            call_id: Some(&charge.call_id),
            plan_id: Some(&charge.plan_id),
            tool: charge.tool.as_deref(),
            idempotency_key: &idempotency_key,
            reason: s.refund_reason.as_deref(),
            at: s.at,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(SettleOutcome::Applied {
        returned,
        balance_after,
    })
}

/// Applies a grant, purchase or adjustment once per idempotency key.
pub(in crate::store) async fn change_balance<DB: Driver>(
    pool: &Pool<DB>,
    change: &BalanceChange,
) -> Result<ChangeOutcome, Fault> {
    match change.kind {
        EntryKind::Grant | EntryKind::Purchase if change.amount < 0 => {
            return Err(refused(format!(
                "a {} cannot be negative ({}); use an adjustment",
                change.kind.as_str(),
                change.amount
            )));
        }
        EntryKind::Grant | EntryKind::Purchase | EntryKind::Adjustment => {}
        other => {
            return Err(refused(format!(
                "a balance change is a grant, a purchase or an adjustment, not a {}",
                other.as_str()
            )));
        }
    }
    check_key("idempotency key", &change.idempotency_key)?;
    if let Some(prefix) = DERIVED_PREFIXES
        .iter()
        .find(|prefix| change.idempotency_key.starts_with(*prefix))
    {
        return Err(refused(format!(
            "idempotency keys starting with {prefix:?} are the store's own"
        )));
    }
    retrying::<DB, _, _, _>("balance change", || change_once(pool, change)).await
}

async fn change_once<DB: Driver>(
    pool: &Pool<DB>,
    c: &BalanceChange,
) -> Result<ChangeOutcome, Fault> {
    let customer = &c.customer_id;
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let locked = locked_balance::<DB>(&mut tx, customer).await?;
    if locked.is_none() && !customer_exists::<DB>(&mut tx, customer).await? {
        tx.rollback().await?;
        return Err(not_found(customer));
    }
    let balance = locked.unwrap_or(0);
    if entry_exists::<DB>(&mut tx, customer, &c.idempotency_key).await? {
        tx.rollback().await?;
        return Ok(ChangeOutcome::AlreadyApplied { balance });
    }
    let Some(balance_after) = balance.checked_add(c.amount) else {
        return Err(refused(format!(
            "the balance of customer {customer} would overflow"
        )));
    };
    if balance_after < 0 {
        tx.rollback().await?;
        return Ok(ChangeOutcome::WouldGoNegative { balance });
    }
    if locked.is_some() {
        add_to_balance::<DB>(&mut tx, customer, c.amount, c.at).await?;
    } else {
        insert_balance::<DB>(&mut tx, customer, balance_after, c.at).await?;
    }
    append::<DB>(
        &mut tx,
        &NewEntry {
            customer_id: customer,
            kind: c.kind,
            amount: c.amount,
            unit: CREDITS,
            balance_after: Some(balance_after),
            call_id: None,
            plan_id: None,
            tool: None,
            idempotency_key: &c.idempotency_key,
            reason: c.reason.as_deref(),
            at: c.at,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(ChangeOutcome::Applied { balance_after })
}

/// Creates the customer's balance row at `balance` (the caller found none
/// under the lock). Two writers creating it at once: the primary key
/// refuses one, which runs again and then finds it.
pub(super) async fn insert_balance<DB: Driver>(
    conn: &mut DB::Connection,
    customer: &CustomerId,
    balance: i64,
    at: UnixMillis,
) -> Result<(), Fault> {
    let mut insert =
        Statement::<DB>::new("INSERT INTO balances (customer_id, balance, updated_at) VALUES ");
    insert.tuples([()], |t, ()| {
        t.bind(customer.as_str()).bind(balance).bind(at);
    });
    insert
        .execute(conn)
        .await
        .map_err(|error| unless_no_customer(error, customer))
}

/// Whether the customer exists.
pub(super) async fn customer_exists<DB: Driver>(
    conn: &mut DB::Connection,
    customer: &CustomerId,
) -> Result<bool, sqlx::Error> {
    let mut statement = Statement::<DB>::new("SELECT id FROM customers WHERE id = ");
    statement.bind(customer.as_str());
    Ok(statement.fetch_optional(conn).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [State::Reserved, State::Settled, State::Refunded] {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::parse("pending"), None);
    }
}
