//! Refusals a client and an agent can act on: a JSON-RPC error whose `data`
//! carries the facts (`reason`, the amount needed, the balance, where to
//! pay), or — for clients that hide JSON-RPC error data — a `tools/call`
//! result with `isError: true` whose text says the same. Either way the
//! response is marked with a [`Refusal`] so the usage record says why.

use std::sync::Arc;

use mcp_meter_plugin::identity::{Caller, Refusal};
use mcp_meter_plugin::jsonrpc::Message;
use mcp_meter_plugin::{McpRequest, McpResponse};
use serde_json::{Map, Value, json};

use crate::plan::{DEFAULT_REFUSAL_CODE, Plan, RefusalStyle};

/// The `_meta` key a tool-result refusal carries its facts under.
pub const REFUSAL_META_KEY: &str = "mcp-meter/refusal";

/// The refusals that paying or upgrading would lift: they carry a checkout
/// link when the plan offers one. (`payment_required` for a past-due
/// subscription needs the card fixed, not a second subscription;
/// `rate_limited` passes by itself.)
const PAYABLE: &[&str] = &[
    "insufficient_credits",
    "quota_exceeded",
    "subscription_required",
    "tool_not_in_plan",
];

/// Why a call is refused, with the facts that go with it.
#[derive(Debug, Clone)]
pub(crate) struct Denial {
    /// snake_case reason (`insufficient_credits`, `tool_not_in_plan`, …).
    pub(crate) reason: &'static str,
    /// A sentence a person can act on.
    pub(crate) message: String,
    /// Further facts for `data` (amounts, balance, URL).
    pub(crate) facts: Map<String, Value>,
}

impl Denial {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            facts: Map::new(),
        }
    }

    /// The ledger did not answer: the call is neither forwarded nor
    /// charged.
    pub(crate) fn billing_unavailable() -> Self {
        Self::new(
            "billing_unavailable",
            "Billing is unavailable right now, so the call was neither forwarded nor charged; try again shortly.",
        )
    }

    pub(crate) fn fact(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.facts.insert(key.to_owned(), value.into());
        self
    }
}

/// The caller's own checkout link for a refusal that paying would lift.
fn checkout_url(request: &McpRequest, plan: &Plan, reason: &str) -> Option<String> {
    if !PAYABLE.contains(&reason) {
        return None;
    }
    let hook = plan.checkout.as_ref()?;
    let caller = request.extensions.get::<Arc<Caller>>()?;
    hook.0.checkout_url(&caller.customer.id, &plan.id)
}

/// Builds the refusal for `request` in the plan's style (the default style
/// and code when there is no plan).
pub(crate) fn refuse(request: &McpRequest, plan: Option<&Plan>, denial: Denial) -> McpResponse {
    let (style, code) = plan.map_or((RefusalStyle::Error, DEFAULT_REFUSAL_CODE), |p| {
        (p.refusal, p.refusal_code)
    });
    let mut data = Map::new();
    data.insert("reason".to_owned(), Value::from(denial.reason));
    if let Some(plan) = plan {
        data.insert("plan".to_owned(), Value::from(plan.id.as_str()));
        if let Some(url) = &plan.upgrade_url {
            data.insert("upgrade_url".to_owned(), Value::from(url.as_str()));
        }
        if let Some(url) = checkout_url(request, plan, denial.reason) {
            data.insert("checkout_url".to_owned(), Value::from(url));
        }
    }
    data.extend(denial.facts);
    let mut message = denial.message;
    if let Some(url) = data.get("checkout_url").and_then(Value::as_str) {
        message.push_str(&format!(" Pay or upgrade at {url}"));
    } else if let Some(url) = data.get("upgrade_url").and_then(Value::as_str) {
        message.push_str(&format!(" Buy more or upgrade at {url}"));
    }
    let id = request
        .message
        .id()
        .cloned()
        .unwrap_or_else(|| mcp_meter_plugin::jsonrpc::RequestId::number(0));
    let mut response = if style == RefusalStyle::ToolResult && request.method() == "tools/call" {
        let result = json!({
            "content": [{"type": "text", "text": message}],
            "isError": true,
            "_meta": {REFUSAL_META_KEY: Value::Object(data)},
        });
        match serde_json::value::to_raw_value(&result) {
            Ok(raw) => McpResponse::new(Message::result_response(&id, &raw)),
            Err(_) => McpResponse::error(&id, code, &message, None),
        }
    } else {
        McpResponse::error(&id, code, &message, Some(&Value::Object(data)))
    };
    response.extensions.insert(Refusal {
        reason: denial.reason,
    });
    response
}
