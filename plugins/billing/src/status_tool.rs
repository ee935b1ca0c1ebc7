//! `[billing] status_tool`: a tool the proxy adds to `tools/list` for
//! authenticated callers and answers itself with the caller's
//! [`BillingStatus`](crate::status::BillingStatus), as `structuredContent`
//! and as text. Its calls are never forwarded and never charged: no
//! reservation, no quota, no ledger entry (the usage recorder, outside this
//! layer, still records the call, and rate limits still apply).
//!
//! It must never shadow an upstream tool. Every `tools/list` page the
//! upstream sends is looked at: when the upstream has a tool of that name,
//! the proxy adds nothing, forwards the calls of that name (charged like
//! any other tool) and warns once. A call that comes before any list was
//! seen makes the proxy ask the upstream for its list first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use mcp_meter_plugin::identity::Caller;
use mcp_meter_plugin::jsonrpc::{Message, RequestId};
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

use crate::layer::Billing;
use crate::meta::{META_KEY, edit_result};
use crate::refusal::{Denial, refuse};
use crate::status::billing_status;

/// Whether the upstream has a tool of the status tool's name.
const UNKNOWN: u8 = 0;
const ABSENT: u8 = 1;
const PRESENT: u8 = 2;

/// The most `tools/list` pages read when asking the upstream.
const MAX_PROBE_PAGES: usize = 20;

/// The configured status tool and what is known of the upstream's tools.
#[derive(Debug)]
pub(crate) struct StatusTool {
    name: String,
    upstream: AtomicU8,
    warned: AtomicBool,
}

/// The parts of a `tools/list` result looked at here.
#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    tools: Vec<ListedTool>,
    #[serde(rename = "nextCursor", default)]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ListedTool {
    #[serde(default)]
    name: Option<String>,
}

impl StatusTool {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            upstream: AtomicU8::new(UNKNOWN),
            warned: AtomicBool::new(false),
        }
    }

    /// Whether `request` calls this tool.
    pub(crate) fn is_called_by(&self, request: &McpRequest) -> bool {
        request.tool_name() == Some(self.name.as_str())
    }

    /// Learns from one `tools/list` page of the upstream whether it has a
    /// tool of this name. `true` when the page is the last one and the
    /// proxy may add its own tool to it.
    fn observe(&self, first_page: bool, page: &ListPage) -> bool {
        let listed = page
            .tools
            .iter()
            .any(|tool| tool.name.as_deref() == Some(self.name.as_str()));
        if listed {
            self.upstream.store(PRESENT, Ordering::Relaxed);
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    tool = %self.name,
                    "the upstream server has a tool named like [billing] status_tool; \
                     its calls are forwarded and the proxy's billing status tool is not offered \
                     (choose another name to offer it)"
                );
            }
            return false;
        }
        let last = page.next_cursor.is_none();
        if first_page && last {
            // The whole list, without the name.
            self.upstream.store(ABSENT, Ordering::Relaxed);
        }
        last && self.upstream.load(Ordering::Relaxed) != PRESENT
    }

    /// Whether a `tools/list` request asks for the first page (no cursor).
    pub(crate) fn asks_first_page(request: &McpRequest) -> bool {
        request
            .message
            .params()
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .is_none_or(|params| params.get("cursor").is_none_or(Value::is_null))
    }

    /// Looks at the upstream's answer to a `tools/list` request (`first`:
    /// for the first page) before anything edits it: `true` when the proxy
    /// may add its tool to it.
    pub(crate) fn may_add_to(&self, first: bool, response: &McpResponse) -> bool {
        response
            .message
            .result()
            .and_then(|raw| serde_json::from_str::<ListPage>(raw.get()).ok())
            .is_some_and(|page| self.observe(first, &page))
    }

    /// Adds the tool (with `price`, its `_meta` entry) to a `tools/list`
    /// result.
    pub(crate) fn add_to(&self, response: McpResponse, price: Value) -> McpResponse {
        let definition = self.definition(price);
        edit_result(response, |top| {
            let mut tools: Vec<Value> = serde_json::from_str(top.get("tools")?.get()).ok()?;
            tools.push(definition);
            top.set("tools", serde_json::value::to_raw_value(&tools).ok()?);
            Some(())
        })
    }

    /// Whether calls of this name go to the upstream: it has such a tool,
    /// or it could not be asked (never shadow what may be there).
    pub(crate) async fn upstream_has_it<S>(&self, request: &McpRequest, inner: S) -> bool
    where
        S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Clone + Send,
        S::Future: Send,
    {
        match self.upstream.load(Ordering::Relaxed) {
            PRESENT => return true,
            ABSENT => return false,
            _ => {}
        }
        let mut cursor: Option<String> = None;
        for page_number in 0..MAX_PROBE_PAGES {
            let params = cursor
                .as_ref()
                .and_then(|c| serde_json::value::to_raw_value(&json!({ "cursor": c })).ok());
            let id = RequestId::string(&format!(
                "mcp-meter-status-tool-probe-{}-{page_number}",
                mcp_meter_plugin::identity::CallId::generate()
            ));
            let mut probe = McpRequest::new(Message::request(&id, "tools/list", params.as_deref()));
            probe.session = request.session.clone();
            probe.credentials = request.credentials.clone();
            if let Some(caller) = request.extensions.get::<Arc<Caller>>() {
                probe.extensions.insert(caller.clone());
            }
            let page = match inner.clone().oneshot(probe).await {
                Ok(response) => response
                    .message
                    .result()
                    .and_then(|raw| serde_json::from_str::<ListPage>(raw.get()).ok()),
                Err(_) => None,
            };
            let Some(page) = page else {
                tracing::warn!(
                    tool = %self.name,
                    "could not read the upstream's tool list; forwarding the call of the billing status tool's name"
                );
                return true;
            };
            self.observe(cursor.is_none(), &page);
            if self.upstream.load(Ordering::Relaxed) == PRESENT {
                return true;
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => {
                    self.upstream.store(ABSENT, Ordering::Relaxed);
                    return false;
                }
            }
        }
        true
    }

    /// The tool's `tools/list` entry.
    fn definition(&self, price: Value) -> Value {
        let text = json!({"type": ["string", "null"]});
        json!({
            "name": self.name,
            "title": "Billing status",
            "description": "Your billing status with this server: your plan, your credit balance, \
                            the calls used and left in the current period and when it ends. \
                            Free: calling it costs nothing and uses no quota.",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": false},
            "outputSchema": {
                "type": "object",
                "properties": {
                    "customer_id": {"type": "string"},
                    "plan_id": text,
                    "plan_name": text,
                    "model": text,
                    "unit": text,
                    "currency": text,
                    "balance": {"type": ["integer", "null"]},
                    "quota": {
                        "type": ["object", "null"],
                        "properties": {
                            "used": {"type": "integer"},
                            "limit": {"type": "integer"},
                            "remaining": {"type": "integer"},
                        },
                        "required": ["used", "limit", "remaining"],
                    },
                    "period_start": text,
                    "period_end": text,
                    "subscription_status": text,
                },
                "required": ["customer_id"],
            },
            "annotations": {"readOnlyHint": true, "openWorldHint": false},
            "_meta": { META_KEY: price },
        })
    }

    /// The proxy's answer to a call of the tool by `caller`.
    pub(crate) async fn answer(
        &self,
        billing: &Billing,
        request: &McpRequest,
        caller: &Caller,
    ) -> McpResponse {
        let Some(id) = request.message.id() else {
            return refuse(request, None, Denial::billing_unavailable());
        };
        let status = billing_status(
            &billing.catalog,
            billing.ledger.as_ref(),
            billing.subscriptions.as_ref(),
            &caller.customer,
            billing.clock.now(),
        )
        .await;
        let status = match status {
            Ok(status) => status,
            Err(error) => {
                tracing::error!(%error, customer = %caller.customer.id, "cannot read a billing status");
                return refuse(request, None, Denial::billing_unavailable());
            }
        };
        let result = json!({
            "content": [{"type": "text", "text": status.summary()}],
            "structuredContent": status,
            "isError": false,
            "_meta": { META_KEY: {"plan": status.plan_id, "charged": 0, "free": true} },
        });
        match serde_json::value::to_raw_value(&result) {
            Ok(raw) => McpResponse::result(id, &raw),
            Err(_) => refuse(request, None, Denial::billing_unavailable()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(names: &[&str], next: Option<&str>) -> ListPage {
        ListPage {
            tools: names
                .iter()
                .map(|n| ListedTool {
                    name: Some((*n).to_owned()),
                })
                .collect(),
            next_cursor: next.map(str::to_owned),
        }
    }

    #[test]
    fn the_tool_is_added_to_the_last_page_only_when_the_upstream_lacks_it() {
        let tool = StatusTool::new("billing_status".into());
        assert!(!tool.observe(true, &page(&["echo"], Some("c"))));
        assert!(tool.observe(false, &page(&["add"], None)));
        assert!(tool.observe(true, &page(&["echo"], None)));
        assert_eq!(tool.upstream.load(Ordering::Relaxed), ABSENT);

        // The upstream has it (on its first page): never added, even on
        // the last page, until a whole list without it is seen.
        assert!(!tool.observe(true, &page(&["billing_status"], Some("c"))));
        assert_eq!(tool.upstream.load(Ordering::Relaxed), PRESENT);
        assert!(!tool.observe(false, &page(&["add"], None)));
        assert!(tool.observe(true, &page(&["echo"], None)));
    }
}
