//! The `usage` model: each successful call's units (calls, request or
//! response bytes, duration, or a number the server reports in the
//! result's `_meta`) are recorded in the ledger and, in the same
//! transaction, queued in the meter outbox for the payment provider, which
//! prices them. Nothing is refused for price; a failed call is not
//! metered; a repeated request is metered once.

use std::time::Instant;

use mcp_meter_plugin::ledger::{MeterOutcome, MeteredUsage, SharedLedger};
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

use crate::charge_key::charge_key;
use crate::failure::failure_of;
use crate::layer::{Billing, MeteredCall};
use crate::meta::{TopLevel, with_billing_meta};
use crate::plan::{Meter, ToolPrice, UsageRules};
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
    let request_bytes = call.request.message.as_bytes().len();
    let started = Instant::now();
    let result = inner.oneshot(call.request).await;
    let elapsed = started.elapsed();
    if failure_of(&result).is_some() {
        return result;
    }
    let response = result?;
    let units = match &rules.meter {
        Meter::Calls => 1,
        Meter::RequestBytes => i64::try_from(request_bytes).unwrap_or(i64::MAX),
        Meter::ResponseBytes => {
            i64::try_from(response.message.as_bytes().len()).unwrap_or(i64::MAX)
        }
        Meter::DurationMs => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
        Meter::Meta(meta_key) => match reported_units(&response, meta_key) {
            Some(units) => units,
            None => {
                tracing::warn!(
                    plan = %plan_id,
                    meta_key = %meta_key,
                    "the server's result carries no non-negative integer under this _meta key; metering 0 units"
                );
                0
            }
        },
    };
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

/// The non-negative integer the server put in the result's
/// `_meta[meta_key]`.
fn reported_units(response: &McpResponse, meta_key: &str) -> Option<i64> {
    let raw = response.message.result()?;
    let top = TopLevel::parse(raw)?;
    let meta: Value = serde_json::from_str(top.get("_meta")?.get()).ok()?;
    meta.get(meta_key)?.as_i64().filter(|units| *units >= 0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_meter_plugin::jsonrpc::Message;

    fn response(body: &str) -> McpResponse {
        McpResponse::new(Message::parse(body.as_bytes().to_vec().into()).unwrap())
    }

    #[test]
    fn units_are_read_from_the_results_meta() {
        let ok =
            response(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"_meta":{"tokens":1234}}}"#);
        assert_eq!(reported_units(&ok, "tokens"), Some(1234));
        assert_eq!(reported_units(&ok, "other"), None);
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"tokens":-5}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"tokens":1.5}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"tokens":"12"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"no"}}"#,
        ] {
            assert_eq!(reported_units(&response(bad), "tokens"), None, "{bad}");
        }
    }
}
