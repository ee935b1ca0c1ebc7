//! The `per_call` model: each successful call is counted in its billing
//! period and charged to the customer's bill (a `charge` ledger entry) at
//! the price its number in the period gives (flat, volume or graduated
//! tiers). A failed call is not charged. Nothing is refused for price.

use mcp_meter_plugin::ledger::{Accrual, AccrueOutcome, PriceSchedule, SharedLedger};
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

use crate::charge_key::charge_key;
use crate::failure::failure_of;
use crate::layer::{Billing, MeteredCall};
use crate::meta::with_billing_meta;
use crate::meter::Measure;
use crate::plan::{Model, ToolPrice};
use crate::retry;

/// Counter of calls priced by the plan's schedule.
const SCHEDULED_COUNTER: &str = "calls";
/// Counter of calls to tools with a price of their own.
const FIXED_COUNTER: &str = "fixed_price_calls";

/// Runs one metered call on a per-call plan.
pub(crate) async fn run<S>(
    billing: &Billing,
    call: MeteredCall,
    inner: S,
) -> Result<McpResponse, ProxyError>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Send,
    S::Future: Send,
{
    let Model::PerCall {
        schedule,
        period,
        metering,
        ..
    } = &call.plan.model
    else {
        return inner.oneshot(call.request).await;
    };
    let currency = call.plan.unit.as_str().to_owned();
    let plan_id = call.plan.id.clone();
    let (schedule, counter) = match call.price {
        ToolPrice::Fixed(price) => (PriceSchedule::Flat { price }, FIXED_COUNTER),
        ToolPrice::Default(_) => (schedule.clone(), SCHEDULED_COUNTER),
        ToolPrice::Free | ToolPrice::NotIncluded => {
            let response = inner.oneshot(call.request).await?;
            let meta = json!({"plan": plan_id, "unit": currency, "charged": "0"});
            return Ok(with_billing_meta(response, meta));
        }
    };
    let customer_id = call.caller.customer.id.clone();
    let key = charge_key(&call.request, &customer_id, &call.call_id);
    let tool = call.request.tool_name().map(str::to_owned);
    let measure = Measure::start(&call.request);
    let result = inner.oneshot(call.request).await;
    if failure_of(&result).is_some() {
        return result;
    }
    let response = result?;
    let units = metering
        .as_ref()
        .map(|m| (m, measure.units(&m.meter, &response, &plan_id)));
    let at = billing.clock.now();
    let accrual = Accrual {
        customer_id,
        charge_key: key,
        call_id: call.call_id,
        plan_id: plan_id.clone(),
        tool,
        currency: currency.clone(),
        counter: counter.to_owned(),
        period_start: period.start_of(at),
        schedule,
        quantity: units.map_or(1, |(m, units)| m.blocks(units)),
        at,
    };
    let mut meta = json!({"plan": plan_id, "unit": currency});
    if let Some((m, units)) = units {
        meta["meter"] = Value::from(m.meter.name());
        meta["units"] = Value::from(units);
    }
    let accrued = billing.ledger.accrue(&accrual).await;
    match accrued {
        Ok(AccrueOutcome::Charged { number, amount }) => {
            meta["charged"] = Value::from(call.plan.unit.format(amount));
            meta["period"] = Value::from(period.name());
            match units {
                None => meta["period_calls"] = Value::from(number),
                Some((m, _)) => {
                    meta["period_units"] = Value::from(number.saturating_mul(m.unit_size))
                }
            }
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

/// Records a charge from a task, retrying with backoff.
pub(crate) fn accrue_in_background(ledger: SharedLedger, accrual: Accrual) {
    let key = accrual.charge_key.to_string();
    retry::in_background("recording a call's charge", key, move || {
        let ledger = ledger.clone();
        let accrual = accrual.clone();
        async move { ledger.accrue(&accrual).await }
    });
}
