//! Prepaid credits outside calls: grants, purchases and adjustments, each
//! one transaction that starts by locking the customer's balance row (see
//! the parent module). Reserving and settling calls' credits is in
//! `reservations`. This module must never let a balance go below zero and
//! never apply a change twice.

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{BalanceChange, ChangeOutcome, EntryKind};
use sqlx::Pool;

use super::super::driver::Driver;
use super::super::error::Fault;
use super::super::statement::Statement;
use super::{
    CREDITS, DERIVED_PREFIXES, NewEntry, add_to_balance, append, check_key, entry_exists,
    locked_balance, not_found, refused, retrying, unless_no_customer,
};

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
