//! The `credits` model: a prepaid balance. The call's credits are reserved
//! (an atomic conditional debit) before it is forwarded, and settled after
//! it: kept when it succeeded, returned when it failed in a way the plan
//! refunds. The result's `_meta` says what the call cost and what is left,
//! with a warning when the balance is low. A plan may price units of a
//! meter (bytes, duration, a number the server reports) instead of calls:
//! the price of the most units a call may use is reserved, and the units
//! it used are settled.

use mcp_meter_plugin::ledger::{Reservation, ReserveOutcome, SettleOutcome, Settlement};
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

use crate::charge_key::charge_key;
use crate::failure::failure_of;
use crate::grants;
use crate::layer::{Billing, MeteredCall};
use crate::meta::with_billing_meta;
use crate::meter::Measure;
use crate::plan::{Model, ToolPrice};
use crate::refusal::{Denial, refuse};
use crate::settle::PendingSettlement;

/// Runs one metered call on a credits plan.
pub(crate) async fn run<S>(
    billing: &Billing,
    call: MeteredCall,
    inner: S,
) -> Result<McpResponse, ProxyError>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Send,
    S::Future: Send,
{
    let Model::Credits {
        refund_on,
        low_balance_warnings,
        grant,
        metering,
    } = &call.plan.model
    else {
        return inner.oneshot(call.request).await;
    };
    let price = match call.price {
        ToolPrice::Fixed(price) | ToolPrice::Default(price) => price,
        ToolPrice::Free | ToolPrice::NotIncluded => 0,
    };
    // With a meter, the most a call can cost is reserved; what it used is
    // settled after it.
    let cost = match metering {
        Some(metering) => metering.cost(price, metering.max_units),
        None => price,
    };
    let plan_id = call.plan.id.clone();
    if cost == 0 {
        let response = inner.oneshot(call.request).await?;
        let meta = json!({"plan": plan_id, "unit": "credits", "charged": 0});
        return Ok(with_billing_meta(response, meta));
    }
    let customer_id = call.caller.customer.id.clone();
    let key = charge_key(&call.request, &customer_id, &call.call_id);
    let reservation = Reservation {
        customer_id: customer_id.clone(),
        charge_key: key.clone(),
        call_id: call.call_id.clone(),
        amount: cost,
        plan_id: plan_id.clone(),
        tool: call.request.tool_name().map(str::to_owned),
        at: billing.clock.now(),
    };
    if let Some(grant) = grant {
        let _lane = billing.lanes.enter(&customer_id).await;
        grants::apply_due(billing, &customer_id, &plan_id, grant).await;
    }
    // No lane: the store batches reservations and settlements itself, many
    // calls of one customer in one transaction.
    let reserved = match billing.ledger.reserve(&reservation).await {
        Ok(outcome) => outcome,
        Err(error) => {
            tracing::error!(%error, customer = %customer_id, "cannot reserve credits; refusing the call");
            return Ok(refuse(
                &call.request,
                Some(&call.plan),
                Denial::billing_unavailable(),
            ));
        }
    };
    let (attempt, balance_after_reserve) = match reserved {
        ReserveOutcome::Insufficient { balance } => {
            let denial = Denial::new(
                "insufficient_credits",
                format!("This call costs {cost} credits and your balance is {balance}."),
            )
            .fact("needed", cost)
            .fact("balance", balance)
            .fact("unit", "credits");
            return Ok(refuse(&call.request, Some(&call.plan), denial));
        }
        ReserveOutcome::AlreadyCharged => {
            let response = inner.oneshot(call.request).await?;
            let meta = json!({"plan": plan_id, "unit": "credits", "charged": 0, "repeat": true});
            return Ok(with_billing_meta(response, meta));
        }
        ReserveOutcome::Reserved {
            attempt,
            balance_after,
        } => (attempt, balance_after),
    };
    let mut pending = PendingSettlement::new(
        billing.ledger.clone(),
        Settlement {
            customer_id: customer_id.clone(),
            charge_key: key,
            attempt,
            actual: cost,
            refund_reason: None,
            at: billing.clock.now(),
        },
        refund_on.clone(),
    );
    let measure = Measure::start(&call.request);
    let result = inner.oneshot(call.request).await;
    let mut units = None;
    if let (Some(metering), Ok(response)) = (metering, &result) {
        let used = measure.units(&metering.meter, response, &plan_id);
        pending.set_actual(metering.cost(price, used));
        units = Some(used);
    }
    let settled = pending.finish(failure_of(&result)).await;
    let response = result?;
    let (charged, balance) = match settled {
        Some(SettleOutcome::Applied {
            returned,
            balance_after,
        }) => (cost - returned, Some(balance_after)),
        // Settling goes on in the background: the reservation stands.
        None => (cost, Some(balance_after_reserve)),
        Some(SettleOutcome::AlreadySettled | SettleOutcome::NoReservation) => (cost, None),
    };
    let mut meta = json!({"plan": plan_id, "unit": "credits", "charged": charged});
    if let (Some(units), Some(metering)) = (units, metering) {
        meta["units"] = Value::from(units);
        meta["meter"] = Value::from(metering.meter.name());
    }
    if let Some(balance) = balance {
        meta["balance"] = Value::from(balance);
        if let Some(warning) = low_balance_warning(low_balance_warnings, balance) {
            meta["warnings"] = json!([warning]);
        }
    }
    Ok(with_billing_meta(response, meta))
}

/// The warning for the lowest configured threshold the balance is at or
/// below (`thresholds` highest first).
fn low_balance_warning(thresholds: &[i64], balance: i64) -> Option<Value> {
    let threshold = thresholds.iter().rev().find(|t| balance <= **t)?;
    Some(json!({
        "kind": "low_balance",
        "threshold": threshold,
        "balance": balance,
        "message": format!("Your balance is {balance} credits, at or below {threshold}."),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_threshold_reached_is_the_warning() {
        let thresholds = [100, 10];
        assert_eq!(low_balance_warning(&thresholds, 101), None);
        assert_eq!(
            low_balance_warning(&thresholds, 100).unwrap()["threshold"],
            100
        );
        assert_eq!(
            low_balance_warning(&thresholds, 50).unwrap()["threshold"],
            100
        );
        assert_eq!(
            low_balance_warning(&thresholds, 10).unwrap()["threshold"],
            10
        );
        assert_eq!(
            low_balance_warning(&thresholds, 0).unwrap()["threshold"],
            10
        );
        assert_eq!(low_balance_warning(&[], 0), None);
    }
}
