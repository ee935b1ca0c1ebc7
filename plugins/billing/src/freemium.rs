//! The `freemium` model: a free quota of calls per window (hour, day or
//! month, UTC), for all tools or per tool. A call takes its unit of quota
//! before it is forwarded (so concurrent calls never pass the quota) and
//! gives it back if it fails. Beyond the quota the call is refused with
//! `quota_exceeded`, when the window resets and where to upgrade — or, when
//! the plan names a `then_plan`, it is charged on that plan instead.

use std::sync::Arc;

use mcp_meter_plugin::ledger::ReleaseOutcome;
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

use crate::charge_key::charge_key;
use crate::failure::failure_of;
use crate::layer::{Billing, MeteredCall};
use crate::meta::with_billing_meta;
use crate::period::rfc3339;
use crate::plan::{FreemiumRules, ToolPrice};
use crate::quota::{self, Quota, quota_warning};
use crate::refusal::{Denial, refuse};

/// Runs one metered call on a freemium plan.
pub(crate) async fn run<S>(
    billing: &Billing,
    call: MeteredCall,
    rules: Arc<FreemiumRules>,
    inner: S,
) -> Result<McpResponse, ProxyError>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Send,
    S::Future: Send,
{
    let plan_id = call.plan.id.clone();
    if call.price == ToolPrice::Free {
        let response = inner.oneshot(call.request).await?;
        let meta = json!({"plan": plan_id, "unit": "calls", "charged": 0});
        return Ok(with_billing_meta(response, meta));
    }
    let now = billing.clock.now();
    let (counter, cap) = rules.quota_for(call.request.tool_name());
    let period_start = rules.window.start_of(now);
    let resets_at = rules.window.end_of(now);
    let key = charge_key(&call.request, &call.caller.customer.id, &call.call_id);
    let taken = quota::take(billing, &call, &key, counter, period_start, Some(cap)).await;
    let (held, used, repeat) = match taken {
        Ok(Quota::Held { held, used }) => (Some(held), used, false),
        Ok(Quota::Repeat { used }) => (None, used, true),
        Ok(Quota::Exhausted { used }) => {
            return beyond_quota(billing, call, &rules, used, cap, inner).await;
        }
        Err(error) => {
            tracing::error!(%error, customer = %call.caller.customer.id, "cannot count a free call; refusing it");
            return Ok(refuse(
                &call.request,
                Some(&call.plan),
                Denial::billing_unavailable(),
            ));
        }
    };
    let result = inner.oneshot(call.request).await;
    let mut used = used;
    if let Some(mut held) = held
        && let Some(ReleaseOutcome::Released { used: after }) =
            held.finish(failure_of(&result)).await
    {
        used = after;
    }
    let response = result?;
    let mut meta = json!({
        "plan": plan_id,
        "unit": "calls",
        "charged": 0,
        "quota": {
            "used": used,
            "limit": cap,
            "remaining": (cap - used).max(0),
            "window": rules.window.name(),
            "resets_at_ms": resets_at.0,
        },
    });
    if repeat {
        meta["repeat"] = Value::from(true);
    }
    if let Some(warning) = quota_warning(used, cap, &rules.warn_at_percent) {
        meta["warnings"] = json!([warning]);
    }
    Ok(with_billing_meta(response, meta))
}

/// The quota is used up: charge the call on `then_plan`, or refuse it.
async fn beyond_quota<S>(
    billing: &Billing,
    call: MeteredCall,
    rules: &FreemiumRules,
    used: i64,
    cap: i64,
    inner: S,
) -> Result<McpResponse, ProxyError>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Send,
    S::Future: Send,
{
    if let Some(then) = rules
        .then_plan
        .as_deref()
        .and_then(|id| billing.catalog.plan(id))
    {
        let then = then.clone();
        let price = then.price_of(call.request.tool_name());
        let paid = MeteredCall {
            plan: then,
            price,
            ..call
        };
        return billing.charge_on_paid_plan(paid, inner).await;
    }
    let now = billing.clock.now();
    let resets_at = rules.window.end_of(now);
    let denial = Denial::new(
        "quota_exceeded",
        format!(
            "You have used all {cap} free calls for this {}; the quota resets at {}.",
            rules.window.name(),
            rfc3339(resets_at)
        ),
    )
    .fact("limit", cap)
    .fact("used", used)
    .fact("remaining", 0)
    .fact("window", rules.window.name())
    .fact("resets_at_ms", resets_at.0)
    .fact("retry_after_ms", (resets_at.0 - now.0).max(0));
    Ok(refuse(&call.request, Some(&call.plan), denial))
}
