//! How a forwarded call ended, in the words of `refund_on`: a success, or
//! one of the failure kinds a credits plan may refund — or a call that is
//! not finished: a 2026-07-28 `tools/call` answered with `resultType:
//! "input_required"` is resumed by a later request carrying its
//! `requestState`, and it is that request which is charged.

use mcp_meter_plugin::{CallOutcome, McpResponse, ProxyError};

use crate::meta::TopLevel;

/// A call that was not served: its credits always come back, whatever
/// `refund_on` says (the upstream never saw it, or the proxy refused it).
pub(crate) const NOT_SERVED: &str = "not_served";

/// A call answered `input_required`: not charged, whatever `refund_on`
/// says; its resumption is the call that is charged.
pub(crate) const INPUT_REQUIRED: &str = "input_required";

/// The failure kind of a finished call (`None`: it succeeded).
pub(crate) fn failure_of(result: &Result<McpResponse, ProxyError>) -> Option<&'static str> {
    match result {
        Ok(response) if asks_for_input(response) => Some(INPUT_REQUIRED),
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

/// Whether the result is `resultType: "input_required"` (checked on the raw
/// bytes first, so other results are not parsed).
fn asks_for_input(response: &McpResponse) -> bool {
    let Some(raw) = response.message.result() else {
        return false;
    };
    if !raw.get().contains(INPUT_REQUIRED) {
        return false;
    }
    TopLevel::parse(raw)
        .and_then(|top| {
            top.get("resultType")
                .map(|t| t.get().trim() == "\"input_required\"")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_meter_plugin::jsonrpc::Message;

    fn answered(body: &str) -> Result<McpResponse, ProxyError> {
        Ok(McpResponse::new(
            Message::parse(body.as_bytes().to_vec().into()).unwrap(),
        ))
    }

    #[test]
    fn an_input_required_answer_is_not_a_finished_call() {
        let waiting = answered(
            r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required","inputRequests":{},"requestState":"s"}}"#,
        );
        assert_eq!(failure_of(&waiting), Some(INPUT_REQUIRED));
        // The words elsewhere in a result change nothing.
        let done = answered(
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"input_required"}]}}"#,
        );
        assert_eq!(failure_of(&done), None);
        let complete = answered(r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete"}}"#);
        assert_eq!(failure_of(&complete), None);
        let tool_error = answered(r#"{"jsonrpc":"2.0","id":1,"result":{"isError":true}}"#);
        assert_eq!(failure_of(&tool_error), Some("tool_error"));
    }
}
