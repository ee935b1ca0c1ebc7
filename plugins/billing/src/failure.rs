//! How a forwarded call ended, in the words of `refund_on`: a success, or
//! one of the failure kinds a credits plan may refund.

use mcp_meter_plugin::{CallOutcome, McpResponse, ProxyError};

/// A call that was not served: its credits always come back, whatever
/// `refund_on` says (the upstream never saw it, or the proxy refused it).
pub(crate) const NOT_SERVED: &str = "not_served";

/// The failure kind of a finished call (`None`: it succeeded).
pub(crate) fn failure_of(result: &Result<McpResponse, ProxyError>) -> Option<&'static str> {
    match result {
        Ok(response) => match response.outcome() {
            CallOutcome::Ok => None,
            CallOutcome::ToolError => Some("tool_error"),
            CallOutcome::Error => Some("error"),
        },
        Err(error) => Some(match error {
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::Cancelled | ProxyError::SessionClosed => "cancelled",
            ProxyError::UpstreamExited { .. } | ProxyError::Internal(_) => "upstream_failure",
            ProxyError::UpstreamUnavailable { .. } | ProxyError::DuplicateId(_) => NOT_SERVED,
        }),
    }
}
