//! The `usage` model: each successful call's units (calls, request or
//! response bytes, duration, or a number the server reports in the
//! result's `_meta`) are recorded in the ledger and, in the same
//! transaction, queued in the meter outbox for the payment provider, which
//! prices them. Nothing is refused for price; a failed call is not
//! metered; a repeated request is metered once.

use mcp_meter_plugin::ledger::{MeterOutcome, MeteredUsage, SharedLedger};
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

use crate::charge_key::charge_key;
use crate::failure::failure_of;
use crate::layer::{Billing, MeteredCall};
use crate::meta::with_billing_meta;
use crate::meter::Measure;
use crate::plan::{ToolPrice, UsageRules};
use crate::retry;

/// Runs one metered call on a usage plan.
pub(crate) async fn run<S>(
    billing: &Billing,
    call: MeteredCall,
    rules: &UsageRules,
    inner: S,
) -> Result<McpResponse, ProxyError>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Send,
    S::Future: Send,
{
    let plan_id = call.plan.id.clone();
    if call.price == ToolPrice::Free {
        let response = inner.oneshot(call.request).await?;
        let meta = json!({"plan": plan_id, "unit": rules.meter.unit(), "units": 0});
        return Ok(with_billing_meta(response, meta));
    }
    let customer_id = call.caller.customer.id.clone();
    let key = charge_key(&call.request, &customer_id, &call.call_id);
    let tool = call.request.tool_name().map(str::to_owned);
    let measure = Measure::start(&call.request);
    let result = inner.oneshot(call.request).await;
    if failure_of(&result).is_some() {
        return result;
    }
    let response = result?;
    let units = measure.units(&rules.meter, &response, &plan_id);
    let usage = MeteredUsage {
        customer_id,
        charge_key: key,
        call_id: call.call_id,
        plan_id: plan_id.clone(),
        tool,
        event_name: rules.event_name.clone(),
        unit: rules.meter.unit().to_owned(),
        units,
        at: billing.clock.now(),
    };
    let mut meta = json!({"plan": plan_id, "unit": rules.meter.unit(), "units": units});
    match billing.ledger.meter_usage(&usage).await {
        Ok(MeterOutcome::Recorded) => {}
        Ok(MeterOutcome::AlreadyRecorded) => {
            meta["units"] = Value::from(0);
            meta["repeat"] = Value::from(true);
        }
        Err(error) => {
            tracing::warn!(%error, charge_key = %usage.charge_key, "could not record a call's usage; retrying in the background");
            meta["usage_pending"] = Value::from(true);
            meter_in_background(billing.ledger.clone(), usage);
        }
    }
    Ok(with_billing_meta(response, meta))
}

/// Records usage from a task, retrying with backoff.
fn meter_in_background(ledger: SharedLedger, usage: MeteredUsage) {
    let key = usage.charge_key.to_string();
    retry::in_background("recording a call's usage", key, move || {
        let ledger = ledger.clone();
        let usage = usage.clone();
        async move { ledger.meter_usage(&usage).await }
    });
}
