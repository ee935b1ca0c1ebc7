//! A customer's billing status: their plan, their balance (credits), the
//! quota used and left in the current period (subscription and freemium)
//! and the period's bounds, computed from the ledger, the subscriptions and
//! the catalog. `GET /api/v1/me` and the `[billing] status_tool` tool both
//! answer with it, so they always agree.
//!
//! Read only: computing a status never writes to the ledger (no grant is
//! applied, no quota taken).

use mcp_meter_plugin::identity::{Customer, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::Ledger;
use mcp_meter_plugin::ports::StoreError;
use mcp_meter_plugin::subscription::Subscriptions;
use serde::Serialize;

use crate::money::Unit;
use crate::period::{BillingPeriod, rfc3339};
use crate::plan::{Catalog, Model};
use crate::subscription::{CALLS_COUNTER, period_of};

/// Where a customer stands with their plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BillingStatus {
    /// The customer.
    pub customer_id: CustomerId,
    /// The plan billed calls are charged under (the customer's own, or
    /// `[billing] default_plan`); `None` when there is none.
    pub plan_id: Option<String>,
    /// The plan's display name (`None` when the plan is not configured).
    pub plan_name: Option<String>,
    /// The billing model: `credits`, `per_call`, `subscription`, `usage` or
    /// `freemium`.
    pub model: Option<String>,
    /// What amounts count: `credits`, `calls` or a currency code.
    pub unit: Option<String>,
    /// The ISO 4217 code (lower case) of a plan priced in a currency.
    pub currency: Option<String>,
    /// The balance in credits, on a credits plan (or a freemium plan that
    /// falls through to one).
    pub balance: Option<i64>,
    /// The included or free calls of the current period (subscription and
    /// freemium plans).
    pub quota: Option<QuotaStatus>,
    /// The start of the current period (RFC 3339, UTC), when the plan has
    /// one.
    pub period_start: Option<String>,
    /// The end of the current period (RFC 3339, UTC): when quotas reset,
    /// the next grant comes or the bill closes.
    pub period_end: Option<String>,
    /// A subscription plan's subscription status (`active`, `past_due`,
    /// …; `none` without a subscription to the plan).
    pub subscription_status: Option<String>,
}

/// Included or free calls in the current period (units, on a subscription
/// with a meter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaStatus {
    /// Calls counted in the period (on a subscription with overage, calls
    /// beyond the included ones are counted too).
    pub used: i64,
    /// Calls included (or free) per period.
    pub limit: i64,
    /// Included (or free) calls left in the period.
    pub remaining: i64,
}

impl QuotaStatus {
    fn new(used: i64, limit: i64) -> Self {
        Self {
            used,
            limit,
            remaining: (limit - used).max(0),
        }
    }
}

impl BillingStatus {
    /// One sentence a person can read (the tool's text content).
    pub fn summary(&self) -> String {
        let Some(plan_id) = &self.plan_id else {
            return "You are not on a plan: billed calls are refused.".to_owned();
        };
        let (Some(name), Some(model)) = (&self.plan_name, &self.model) else {
            return format!(
                "Your plan `{plan_id}` is not offered by this server; contact the operator."
            );
        };
        let mut text = format!("Plan: {name} (`{plan_id}`, {model}).");
        if let Some(balance) = self.balance {
            text.push_str(&format!(" Balance: {balance} credits."));
        }
        if let Some(status) = &self.subscription_status {
            text.push_str(&format!(" Subscription: {status}."));
        }
        if let Some(quota) = self.quota {
            text.push_str(&format!(
                " Calls this period: {} used of {}, {} left.",
                quota.used, quota.limit, quota.remaining
            ));
        }
        if let (Some(start), Some(end)) = (&self.period_start, &self.period_end) {
            text.push_str(&format!(" Period: {start} to {end}."));
        }
        if let Some(currency) = &self.currency {
            text.push_str(&format!(" Currency: {}.", currency.to_ascii_uppercase()));
        }
        text
    }
}

/// The status of `customer` at `now`, read from `ledger` and
/// `subscriptions` under `catalog`'s plans.
pub async fn billing_status(
    catalog: &Catalog,
    ledger: &dyn Ledger,
    subscriptions: &dyn Subscriptions,
    customer: &Customer,
    now: UnixMillis,
) -> Result<BillingStatus, StoreError> {
    let mut status = BillingStatus {
        customer_id: customer.id.clone(),
        plan_id: None,
        plan_name: None,
        model: None,
        unit: None,
        currency: None,
        balance: None,
        quota: None,
        period_start: None,
        period_end: None,
        subscription_status: None,
    };
    let plan = match catalog.plan_for(customer.plan_id.as_deref()) {
        Ok(Some(plan)) => plan.clone(),
        Ok(None) => return Ok(status),
        Err(unknown) => {
            status.plan_id = Some(unknown);
            return Ok(status);
        }
    };
    status.plan_id = Some(plan.id.clone());
    status.plan_name = Some(plan.name.clone());
    status.model = Some(plan.model.name().to_owned());
    status.unit = Some(plan.unit.as_str().to_owned());
    if let Unit::Currency(code) = &plan.unit {
        status.currency = Some(code.clone());
    }
    let mut period = None;
    match &plan.model {
        Model::Credits { grant, .. } => {
            status.balance = Some(ledger.balance(&customer.id).await?);
            period = grant.map(|g| (g.period.start_of(now), g.period.end_of(now)));
        }
        Model::PerCall { period: p, .. } => period = Some((p.start_of(now), p.end_of(now))),
        Model::Usage(_) => {}
        Model::Subscription(rules) => {
            let subscription = subscriptions
                .subscription(&customer.id)
                .await?
                .filter(|s| s.plan_id == plan.id);
            status.subscription_status = Some(
                subscription
                    .as_ref()
                    .map_or("none", |s| s.status.as_str())
                    .to_owned(),
            );
            let bounds = match (&subscription, rules.period) {
                (Some(subscription), _) => Some(period_of(rules, subscription, now)),
                (None, BillingPeriod::Calendar(p)) => Some((p.start_of(now), p.end_of(now))),
                // Anchored to a subscription there is none of.
                (None, BillingPeriod::Subscription) => None,
            };
            if let Some((start, _)) = bounds {
                // Counted in blocks; told in units with a meter.
                let scale = rules.metering.as_ref().map_or(1, |m| m.unit_size);
                let used = ledger.counter(&customer.id, CALLS_COUNTER, start).await?;
                status.quota = Some(QuotaStatus::new(
                    used.saturating_mul(scale),
                    rules.included_calls.saturating_mul(scale),
                ));
            }
            period = bounds;
        }
        Model::Freemium(rules) => {
            let (counter, cap) = rules.quota_for(None);
            let start = rules.window.start_of(now);
            let used = ledger.counter(&customer.id, &counter, start).await?;
            status.quota = Some(QuotaStatus::new(used, cap));
            period = Some((start, rules.window.end_of(now)));
            let then_credits = rules
                .then_plan
                .as_deref()
                .and_then(|id| catalog.plan(id))
                .is_some_and(|then| matches!(then.model, Model::Credits { .. }));
            if then_credits {
                status.balance = Some(ledger.balance(&customer.id).await?);
            }
        }
    }
    if let Some((start, end)) = period {
        status.period_start = Some(rfc3339(start));
        status.period_end = Some(rfc3339(end));
    }
    Ok(status)
}
