//! Subscriptions: each customer's subscription to a plan, read on every
//! call to a subscription plan and set by the operator or the payment
//! provider's webhooks.
//!
//! A change is one transaction that first locks the customer's row (which
//! it changes too: the customer's plan follows the subscription), so the
//! changes of one customer queue there, also before their subscription row
//! exists, and each is computed from the latest one. A change from the
//! payment provider carries its event's time; one older than the event last
//! applied (`provider_event_at`) is ignored in the same transaction, so
//! events delivered out of order end in the newest state. This module must
//! never leave the customer's plan and their subscription's plan apart,
//! except when a provider ends a subscription and the customer moves to
//! the plan configured for after a cancellation ([`end`]).

use mcp_meter_plugin::identity::CustomerId;
use mcp_meter_plugin::ports::StoreError;
use mcp_meter_plugin::subscription::{Subscription, SubscriptionChange, SubscriptionStatus};
use sqlx::Pool;

use mcp_meter_plugin::identity::UnixMillis;

use super::driver::{Driver, Read};
use super::error::Fault;
use super::ledger::{not_found, refused, retrying};
use super::rollup::TEXT_MAX_CHARS;
use super::rows::{self, SUBSCRIPTION_COLUMNS};
use super::statement::Statement;

/// The customer's subscription row.
async fn read<DB: Driver>(
    conn: &mut DB::Connection,
    customer: &CustomerId,
) -> Result<Option<Subscription>, sqlx::Error> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .push(SUBSCRIPTION_COLUMNS)
        .push(" FROM subscriptions WHERE customer_id = ")
        .bind(customer.as_str());
    match statement.fetch_optional(conn).await? {
        Some(row) => Ok(Some(rows::subscription(&row)?)),
        None => Ok(None),
    }
}

/// The customer's subscription row and the time of the last provider event
/// applied to it.
async fn read_with_event_at<DB: Driver>(
    conn: &mut DB::Connection,
    customer: &CustomerId,
) -> Result<Option<(Subscription, Option<UnixMillis>)>, sqlx::Error> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .push(SUBSCRIPTION_COLUMNS)
        .push(", provider_event_at FROM subscriptions WHERE customer_id = ")
        .bind(customer.as_str());
    match statement.fetch_optional(conn).await? {
        Some(row) => Ok(Some((
            rows::subscription(&row)?,
            row.opt_int(SUBSCRIPTION_WIDTH)?.map(UnixMillis),
        ))),
        None => Ok(None),
    }
}

/// How many columns [`SUBSCRIPTION_COLUMNS`] lists.
const SUBSCRIPTION_WIDTH: usize = 9;

/// The customer's subscription, if they ever had one.
pub(super) async fn find<DB: Driver>(
    pool: &Pool<DB>,
    customer: &CustomerId,
) -> Result<Option<Subscription>, Fault> {
    let mut conn = pool.acquire().await?;
    Ok(read::<DB>(&mut conn, customer).await?)
}

/// Creates or changes the customer's subscription and sets their plan.
pub(super) async fn set<DB: Driver>(
    pool: &Pool<DB>,
    change: &SubscriptionChange,
) -> Result<Subscription, Fault> {
    check(change)?;
    retrying::<DB, _, _, _>("subscription change", || set_once(pool, change, None)).await
}

/// Like [`set`] (a provider ending a subscription: `change` is usually
/// `canceled`), but the customer's plan becomes `plan_after` instead of the
/// subscription's plan. An ignored (older) change leaves the plan alone.
pub(super) async fn end<DB: Driver>(
    pool: &Pool<DB>,
    change: &SubscriptionChange,
    plan_after: &str,
) -> Result<Subscription, Fault> {
    check(change)?;
    let plan_chars = plan_after.chars().count();
    if plan_chars == 0 || plan_chars > TEXT_MAX_CHARS {
        return Err(refused(format!(
            "a plan id has 1 to {TEXT_MAX_CHARS} characters, not {plan_chars}"
        )));
    }
    retrying::<DB, _, _, _>("subscription end", || {
        set_once(pool, change, Some(plan_after))
    })
    .await
}

/// Refuses a change the schema cannot hold.
fn check(change: &SubscriptionChange) -> Result<(), Fault> {
    let plan_chars = change.plan_id.chars().count();
    if plan_chars == 0 || plan_chars > TEXT_MAX_CHARS {
        return Err(refused(format!(
            "a plan id has 1 to {TEXT_MAX_CHARS} characters, not {plan_chars}"
        )));
    }
    if let Some(external) = &change.external_id {
        let chars = external.chars().count();
        if chars == 0 || chars > TEXT_MAX_CHARS {
            return Err(refused(format!(
                "a subscription's external id has 1 to {TEXT_MAX_CHARS} characters, not {chars}"
            )));
        }
    }
    if let Some((start, end)) = change.current_period
        && end < start
    {
        return Err(refused(format!(
            "the current period ends ({}) before it starts ({})",
            end.0, start.0
        )));
    }
    Ok(())
}

/// One attempt of a change; the customer's plan becomes `customer_plan`, or
/// the subscription's plan when `None`.
async fn set_once<DB: Driver>(
    pool: &Pool<DB>,
    c: &SubscriptionChange,
    customer_plan: Option<&str>,
) -> Result<Subscription, Fault> {
    let customer = &c.customer_id;
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let mut lock = Statement::<DB>::new("SELECT id FROM customers WHERE id = ");
    lock.bind(customer.as_str()).push(DB::FOR_UPDATE);
    if lock.fetch_optional(&mut tx).await?.is_none() {
        tx.rollback().await?;
        return Err(not_found(customer));
    }
    let (stored, stored_event_at) = match read_with_event_at::<DB>(&mut tx, customer).await? {
        Some((subscription, event_at)) => (Some(subscription), event_at),
        None => (None, None),
    };
    if let (Some(stored), Some(event_at), Some(applied)) =
        (&stored, c.provider_event_at, stored_event_at)
        && event_at < applied
    {
        // An older provider event than the one the row reflects: nothing
        // changes.
        tx.rollback().await?;
        return Ok(stored.clone());
    }
    let event_at = match (c.provider_event_at, stored_event_at) {
        (Some(new), Some(old)) => Some(new.max(old)),
        (new, old) => new.or(old),
    };
    let next = apply(stored.as_ref(), c);

    let write = match &stored {
        None => {
            let mut insert = Statement::<DB>::new("INSERT INTO subscriptions (");
            insert
                .push(SUBSCRIPTION_COLUMNS)
                .push(", provider_event_at) VALUES ");
            insert.tuples([&next], |row, s| {
                row.bind(s.customer_id.as_str())
                    .bind(s.plan_id.as_str())
                    .bind(s.status.as_str())
                    .bind(s.started_at)
                    .bind(s.past_due_since)
                    .bind(s.current_period_start)
                    .bind(s.current_period_end)
                    .bind(s.external_id.as_deref())
                    .bind(s.updated_at)
                    .bind(event_at);
            });
            insert
        }
        Some(_) => {
            let mut update = Statement::<DB>::new("UPDATE subscriptions SET plan_id = ");
            update
                .bind(next.plan_id.as_str())
                .push(", status = ")
                .bind(next.status.as_str())
                .push(", started_at = ")
                .bind(next.started_at)
                .push(", past_due_since = ")
                .bind(next.past_due_since)
                .push(", current_period_start = ")
                .bind(next.current_period_start)
                .push(", current_period_end = ")
                .bind(next.current_period_end)
                .push(", external_id = ")
                .bind(next.external_id.as_deref())
                .push(", updated_at = ")
                .bind(next.updated_at)
                .push(", provider_event_at = ")
                .bind(event_at)
                .push(" WHERE customer_id = ")
                .bind(customer.as_str());
            update
        }
    };
    match write.execute(&mut tx).await {
        Ok(()) => {}
        // The customer's row is locked, so their own row cannot be racing:
        // the external id is another customer's.
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            tx.rollback().await?;
            return Err(Fault::Store(StoreError::Conflict(format!(
                "another customer's subscription has external id {:?}",
                next.external_id.as_deref().unwrap_or_default()
            ))));
        }
        Err(error) => return Err(error.into()),
    }
    let mut plan = Statement::<DB>::new("UPDATE customers SET plan_id = ");
    plan.bind(customer_plan.unwrap_or(c.plan_id.as_str()))
        .push(", updated_at = ")
        .bind(c.at)
        .push(" WHERE id = ")
        .bind(customer.as_str());
    plan.execute(&mut tx).await?;
    tx.commit().await?;
    Ok(next)
}

/// The subscription after `change`, from what is stored.
fn apply(stored: Option<&Subscription>, change: &SubscriptionChange) -> Subscription {
    let past_due = SubscriptionStatus::PastDue;
    let past_due_since = match stored {
        _ if change.status != past_due => None,
        Some(s) if s.status == past_due => s.past_due_since.or(Some(change.at)),
        _ => Some(change.at),
    };
    let (current_period_start, current_period_end) = match change.current_period {
        Some((start, end)) => (Some(start), Some(end)),
        None => (
            stored.and_then(|s| s.current_period_start),
            stored.and_then(|s| s.current_period_end),
        ),
    };
    Subscription {
        customer_id: change.customer_id.clone(),
        plan_id: change.plan_id.clone(),
        status: change.status,
        started_at: change
            .started_at
            .or(stored.map(|s| s.started_at))
            .unwrap_or(change.at),
        past_due_since,
        current_period_start,
        current_period_end,
        external_id: change
            .external_id
            .clone()
            .or_else(|| stored.and_then(|s| s.external_id.clone())),
        updated_at: change.at,
    }
}

#[cfg(test)]
mod tests {
    use mcp_meter_plugin::identity::UnixMillis;

    use super::*;

    fn change(status: SubscriptionStatus, at: i64) -> SubscriptionChange {
        SubscriptionChange {
            customer_id: CustomerId::new("cus_a"),
            plan_id: "pro".into(),
            status,
            started_at: None,
            current_period: None,
            external_id: None,
            at: UnixMillis(at),
            provider_event_at: None,
        }
    }

    #[test]
    fn past_due_since_is_set_kept_and_cleared() {
        let first = apply(None, &change(SubscriptionStatus::Active, 10));
        assert_eq!(
            (first.started_at, first.past_due_since),
            (UnixMillis(10), None)
        );
        let due = apply(Some(&first), &change(SubscriptionStatus::PastDue, 20));
        assert_eq!(due.past_due_since, Some(UnixMillis(20)));
        assert_eq!(due.started_at, UnixMillis(10));
        let still = apply(Some(&due), &change(SubscriptionStatus::PastDue, 30));
        assert_eq!(still.past_due_since, Some(UnixMillis(20)));
        let paid = apply(Some(&still), &change(SubscriptionStatus::Active, 40));
        assert_eq!(paid.past_due_since, None);
        assert_eq!(paid.updated_at, UnixMillis(40));
    }

    #[test]
    fn provider_fields_are_kept_when_not_given() {
        let first = apply(
            None,
            &SubscriptionChange {
                current_period: Some((UnixMillis(1), UnixMillis(2))),
                external_id: Some("sub_1".into()),
                started_at: Some(UnixMillis(5)),
                ..change(SubscriptionStatus::Trialing, 10)
            },
        );
        let next = apply(Some(&first), &change(SubscriptionStatus::Active, 20));
        assert_eq!(next.current_period_start, Some(UnixMillis(1)));
        assert_eq!(next.current_period_end, Some(UnixMillis(2)));
        assert_eq!(next.external_id.as_deref(), Some("sub_1"));
        assert_eq!(next.started_at, UnixMillis(5));
    }
}
