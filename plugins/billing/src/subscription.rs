//! The `subscription` model: a recurring fee (collected by the payment
//! provider) with N calls included per period. Each call needs an active
//! subscription to the customer's plan (`trialing` counts as active;
//! `past_due` is served through the plan's grace period). Beyond the
//! included calls a plan either refuses (`quota_exceeded`, a hard cap
//! enforced before forwarding, like a free quota) or charges overage: each
//! successful call is numbered in the period and the calls past the
//! included ones are charged at their tool's price.

use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ledger::{
    Accrual, AccrueOutcome, ChargeKey, PriceSchedule, ReleaseOutcome, Tier,
};
use mcp_meter_plugin::subscription::{Subscription, SubscriptionStatus};
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

use crate::charge_key::charge_key;
use crate::failure::failure_of;
use crate::layer::{Billing, MeteredCall};
use crate::meta::with_billing_meta;
use crate::meter::Measure;
use crate::per_call::accrue_in_background;
use crate::period::{BillingPeriod, anchored_month, rfc3339};
use crate::plan::{DEFAULT_WARN_AT_PERCENT, SubscriptionRules, ToolPrice};
use crate::quota::{self, Quota, quota_warning};
use crate::refusal::{Denial, refuse};

/// The counter of a period's included (and overage) calls.
pub(crate) const CALLS_COUNTER: &str = "subscription_calls";

/// Runs one metered call on a subscription plan.
pub(crate) async fn run<S>(
    billing: &Billing,
    call: MeteredCall,
    rules: &SubscriptionRules,
    inner: S,
) -> Result<McpResponse, ProxyError>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Send,
    S::Future: Send,
{
    let now = billing.clock.now();
    let subscription = match billing
        .subscriptions
        .subscription(&call.caller.customer.id)
        .await
    {
        Ok(subscription) => subscription,
        Err(error) => {
            tracing::error!(%error, customer = %call.caller.customer.id, "cannot read a subscription; refusing the call");
            return Ok(refuse(
                &call.request,
                Some(&call.plan),
                Denial::billing_unavailable(),
            ));
        }
    };
    let (standing, subscription) = match standing(subscription, &call.plan.id, rules, now) {
        Ok(found) => found,
        Err(denial) => return Ok(refuse(&call.request, Some(&call.plan), *denial)),
    };
    let plan_id = call.plan.id.clone();
    let overage_price = match call.price {
        ToolPrice::Free | ToolPrice::NotIncluded => {
            let response = inner.oneshot(call.request).await?;
            let mut meta =
                json!({"plan": plan_id, "unit": call.plan.unit.as_str(), "charged": "0"});
            add_standing(&mut meta, &standing);
            return Ok(with_billing_meta(response, meta));
        }
        ToolPrice::Fixed(price) | ToolPrice::Default(price) => price,
    };
    let (period_start, period_end) = period_of(rules, &subscription, now);
    let mut meta = json!({
        "plan": plan_id,
        "unit": call.plan.unit.as_str(),
        "period_end_ms": period_end.0,
    });
    add_standing(&mut meta, &standing);
    let key = charge_key(&call.request, &call.caller.customer.id, &call.call_id);
    if !rules.overage {
        return capped(
            billing,
            call,
            rules,
            inner,
            key,
            (period_start, period_end),
            meta,
        )
        .await;
    }
    let customer_id = call.caller.customer.id.clone();
    let tool = call.request.tool_name().map(str::to_owned);
    let measure = Measure::start(&call.request);
    let result = inner.oneshot(call.request).await;
    if failure_of(&result).is_some() {
        return result;
    }
    let response = result?;
    let units = rules
        .metering
        .as_ref()
        .map(|m| (m, measure.units(&m.meter, &response, &plan_id)));
    if let Some((m, units)) = units {
        meta["meter"] = Value::from(m.meter.name());
        meta["units"] = Value::from(units);
    }
    let schedule = if rules.included_calls == 0 {
        PriceSchedule::Flat {
            price: overage_price,
        }
    } else {
        PriceSchedule::Graduated {
            tiers: vec![
                Tier {
                    up_to: Some(rules.included_calls),
                    price: 0,
                },
                Tier {
                    up_to: None,
                    price: overage_price,
                },
            ],
        }
    };
    let accrual = Accrual {
        customer_id,
        charge_key: key,
        call_id: call.call_id,
        plan_id,
        tool,
        currency: call.plan.unit.as_str().to_owned(),
        counter: CALLS_COUNTER.to_owned(),
        period_start,
        schedule,
        quantity: units.map_or(1, |(m, units)| m.blocks(units)),
        at: now,
    };
    let accrued = billing.ledger.accrue(&accrual).await;
    match accrued {
        Ok(AccrueOutcome::Charged { number, amount }) => {
            meta["charged"] = Value::from(call.plan.unit.format(amount));
            add_included(&mut meta, rules, number);
        }
        Ok(AccrueOutcome::AlreadyCharged) => {
            meta["charged"] = Value::from("0");
            meta["repeat"] = Value::from(true);
        }
        Err(error) => {
            tracing::warn!(%error, charge_key = %accrual.charge_key, "could not record a call's charge; retrying in the background");
            meta["charge_pending"] = Value::from(true);
            accrue_in_background(billing.ledger.clone(), accrual);
        }
    }
    Ok(with_billing_meta(response, meta))
}

/// A hard cap: the call takes one of the period's included calls before it
/// is forwarded and gives it back if it fails.
async fn capped<S>(
    billing: &Billing,
    call: MeteredCall,
    rules: &SubscriptionRules,
    inner: S,
    key: ChargeKey,
    (period_start, period_end): (UnixMillis, UnixMillis),
    mut meta: Value,
) -> Result<McpResponse, ProxyError>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Send,
    S::Future: Send,
{
    let included = rules.included_calls;
    let counter = CALLS_COUNTER.to_owned();
    let taken = quota::take(billing, &call, &key, counter, period_start, Some(included)).await;
    let (held, mut used) = match taken {
        Ok(Quota::Held { held, used }) => (Some(held), used),
        Ok(Quota::Repeat { used }) => {
            meta["repeat"] = Value::from(true);
            (None, used)
        }
        Ok(Quota::Exhausted { used }) => {
            let now = billing.clock.now();
            let denial = Denial::new(
                "quota_exceeded",
                format!(
                    "Your subscription includes {included} calls per period and they are used; \
                     the next period starts at {}.",
                    rfc3339(period_end)
                ),
            )
            .fact("limit", included)
            .fact("used", used)
            .fact("remaining", 0)
            .fact("resets_at_ms", period_end.0)
            .fact("retry_after_ms", (period_end.0 - now.0).max(0));
            return Ok(refuse(&call.request, Some(&call.plan), denial));
        }
        Err(error) => {
            tracing::error!(%error, customer = %call.caller.customer.id, "cannot count an included call; refusing it");
            return Ok(refuse(
                &call.request,
                Some(&call.plan),
                Denial::billing_unavailable(),
            ));
        }
    };
    let result = inner.oneshot(call.request).await;
    if let Some(mut held) = held
        && let Some(ReleaseOutcome::Released { used: after }) =
            held.finish(failure_of(&result)).await
    {
        used = after;
    }
    let response = result?;
    meta["charged"] = Value::from("0");
    add_included(&mut meta, rules, used);
    Ok(with_billing_meta(response, meta))
}

/// How the subscription stands for this call.
enum Standing {
    /// Active or trialing.
    Current,
    /// `past_due`, served until the grace period ends.
    InGrace { ends: UnixMillis },
}

/// Whether the customer's subscription lets the call through; the
/// subscription with how it stands when it does.
fn standing(
    subscription: Option<Subscription>,
    plan_id: &str,
    rules: &SubscriptionRules,
    now: UnixMillis,
) -> Result<(Standing, Subscription), Box<Denial>> {
    let Some(subscription) = subscription.filter(|s| s.plan_id == plan_id) else {
        return Err(Box::new(
            Denial::new(
                "subscription_required",
                format!("Your plan `{plan_id}` needs an active subscription."),
            )
            .fact("status", "none"),
        ));
    };
    match subscription.status {
        SubscriptionStatus::Active | SubscriptionStatus::Trialing => {
            Ok((Standing::Current, subscription))
        }
        SubscriptionStatus::PastDue => {
            let since = subscription
                .past_due_since
                .unwrap_or(subscription.updated_at);
            let ends = UnixMillis(since.0.saturating_add(rules.grace_ms));
            if now < ends {
                Ok((Standing::InGrace { ends }, subscription))
            } else {
                Err(Box::new(
                    Denial::new(
                        "payment_required",
                        format!(
                            "Your subscription's payment is overdue and its grace period ended at {}; \
                             update your payment to continue.",
                            rfc3339(ends)
                        ),
                    )
                    .fact("status", "past_due")
                    .fact("grace_ended_at_ms", ends.0),
                ))
            }
        }
        status => Err(Box::new(
            Denial::new(
                "subscription_required",
                format!("Your subscription is {status}; subscribe again to continue."),
            )
            .fact("status", status.as_str()),
        )),
    }
}

/// The billing period containing `now`.
pub(crate) fn period_of(
    rules: &SubscriptionRules,
    subscription: &Subscription,
    now: UnixMillis,
) -> (UnixMillis, UnixMillis) {
    match rules.period {
        BillingPeriod::Calendar(period) => (period.start_of(now), period.end_of(now)),
        BillingPeriod::Subscription => match (
            subscription.current_period_start,
            subscription.current_period_end,
        ) {
            (Some(start), Some(end)) if start <= now && now < end => (start, end),
            _ => anchored_month(subscription.started_at, now),
        },
    }
}

fn add_standing(meta: &mut Value, standing: &Standing) {
    if let Standing::InGrace { ends } = standing {
        meta["warnings"] = json!([{
            "kind": "past_due",
            "grace_ends_at_ms": ends.0,
            "message": format!(
                "Your subscription's payment is overdue; calls are refused after {}.",
                rfc3339(*ends)
            ),
        }]);
    }
}

/// Adds the period's figures (calls, or units with a meter), what is left
/// of the included ones and, near their end, a warning.
fn add_included(meta: &mut Value, rules: &SubscriptionRules, used: i64) {
    let included = rules.included_calls;
    let counted = used.min(included);
    let (scale, what) = match &rules.metering {
        None => (1, "calls"),
        Some(m) => (m.unit_size, "units"),
    };
    meta[format!("period_{what}")] = Value::from(used.saturating_mul(scale));
    meta["included"] = json!({
        "limit": included.saturating_mul(scale),
        "used": counted.saturating_mul(scale),
        "remaining": (included - used).max(0).saturating_mul(scale),
    });
    if used > included {
        meta[format!("overage_{what}")] = Value::from((used - included).saturating_mul(scale));
    }
    if let Some(warning) = quota_warning(counted, included, &DEFAULT_WARN_AT_PERCENT) {
        match meta.get_mut("warnings").and_then(Value::as_array_mut) {
            Some(warnings) => warnings.push(warning),
            None => meta["warnings"] = json!([warning]),
        }
    }
}
