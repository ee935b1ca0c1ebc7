//! Plans' periodic credit grants: once per customer, plan and period, what
//! is left of the balance expires (all of it on a reset, what passes the
//! rollover cap otherwise) and the period's credits are added, in one
//! transaction that locks the customer's balance row (see the parent
//! module), so a grant never races a reservation or another grant.
//!
//! This module must never grant a period twice, never expire more than
//! the balance holds, and never move the balance without the entries that
//! record it: an `expiry` (when anything expires) then a `grant`, each
//! with the balance right after it.

use mcp_meter_plugin::ledger::{EntryKind, GrantMode, GrantOutcome, PeriodicGrant};
use sqlx::Pool;

use super::super::driver::Driver;
use super::super::error::Fault;
use super::super::rollup::TEXT_MAX_CHARS;
use super::credits::{customer_exists, insert_balance};
use super::{
    CREDITS, NewEntry, add_to_balance, append, entry_exists, locked_balance, not_found, refused,
    retrying,
};

/// Applies a plan's grant for a period, once.
pub(in crate::store) async fn periodic_grant<DB: Driver>(
    pool: &Pool<DB>,
    grant: &PeriodicGrant,
) -> Result<GrantOutcome, Fault> {
    if grant.amount < 1 {
        return Err(refused(format!(
            "a periodic grant gives at least 1 credit, not {}",
            grant.amount
        )));
    }
    if let GrantMode::Rollover { cap: Some(cap) } = grant.mode
        && cap < 0
    {
        return Err(refused(format!(
            "a rollover cap cannot be negative ({cap})"
        )));
    }
    let plan_chars = grant.plan_id.chars().count();
    if plan_chars == 0 || plan_chars > TEXT_MAX_CHARS {
        return Err(refused(format!(
            "a plan id has 1 to {TEXT_MAX_CHARS} characters, not {plan_chars}"
        )));
    }
    retrying::<DB, _, _, _>("periodic grant", || grant_once(pool, grant)).await
}

async fn grant_once<DB: Driver>(pool: &Pool<DB>, g: &PeriodicGrant) -> Result<GrantOutcome, Fault> {
    let customer = &g.customer_id;
    let grant_key = format!("period-grant:{}:{}", g.plan_id, g.period_start.0);
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let locked = locked_balance::<DB>(&mut tx, customer).await?;
    if locked.is_none() && !customer_exists::<DB>(&mut tx, customer).await? {
        tx.rollback().await?;
        return Err(not_found(customer));
    }
    if entry_exists::<DB>(&mut tx, customer, &grant_key).await? {
        tx.rollback().await?;
        return Ok(GrantOutcome::AlreadyGranted);
    }
    let balance = locked.unwrap_or(0);
    let carried = match g.mode {
        GrantMode::Reset => 0,
        GrantMode::Rollover { cap: None } => balance,
        GrantMode::Rollover { cap: Some(cap) } => balance.min(cap),
    };
    let expired = balance - carried;
    let Some(balance_after) = carried.checked_add(g.amount) else {
        return Err(refused(format!(
            "the balance of customer {customer} would overflow"
        )));
    };
    match locked {
        Some(_) => add_to_balance::<DB>(&mut tx, customer, balance_after - balance, g.at).await?,
        None => insert_balance::<DB>(&mut tx, customer, balance_after, g.at).await?,
    }
    if expired > 0 {
        let expiry_key = format!("period-expiry:{}:{}", g.plan_id, g.period_start.0);
        let reason = match g.mode {
            GrantMode::Reset => "reset",
            GrantMode::Rollover { .. } => "rollover cap",
        };
        append::<DB>(
            &mut tx,
            &NewEntry {
                customer_id: customer,
                kind: EntryKind::Expiry,
                amount: -expired,
                unit: CREDITS,
                balance_after: Some(carried),
                call_id: None,
                plan_id: Some(&g.plan_id),
                tool: None,
                idempotency_key: &expiry_key,
                reason: Some(reason),
                at: g.at,
            },
        )
        .await?;
    }
    append::<DB>(
        &mut tx,
        &NewEntry {
            customer_id: customer,
            kind: EntryKind::Grant,
            amount: g.amount,
            unit: CREDITS,
            balance_after: Some(balance_after),
            call_id: None,
            plan_id: Some(&g.plan_id),
            tool: None,
            idempotency_key: &grant_key,
            reason: None,
            at: g.at,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(GrantOutcome::Granted {
        expired,
        balance: balance_after,
    })
}
