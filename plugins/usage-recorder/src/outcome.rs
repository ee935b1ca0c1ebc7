//! How a call's result maps to a recorded outcome and reason.

use mcp_meter_plugin::identity::Refusal;
use mcp_meter_plugin::ports::UsageOutcome;
use mcp_meter_plugin::{CallOutcome, McpResponse, ProxyError};
use serde::Deserialize;

/// The reason recorded when the call's future was dropped before it
/// finished (the client went away).
pub(crate) const CLIENT_GONE: &str = "client_gone";

/// The outcome of a response: a plugin's refusal, an error response, a tool
/// error or a success.
pub(crate) fn of_response(response: &McpResponse) -> (UsageOutcome, Option<String>) {
    if let Some(refusal) = response.extensions.get::<Refusal>() {
        return (UsageOutcome::Refused, Some(refusal.reason.to_owned()));
    }
    match response.outcome() {
        CallOutcome::Ok => (UsageOutcome::Ok, None),
        CallOutcome::ToolError => (UsageOutcome::ToolError, None),
        CallOutcome::Error => (UsageOutcome::UpstreamError, error_data_reason(response)),
    }
}

/// The outcome of a fault: timeout, cancellation, or an upstream failure.
pub(crate) fn of_error(error: &ProxyError) -> (UsageOutcome, Option<String>) {
    let outcome = match error {
        ProxyError::Timeout { .. } => UsageOutcome::Timeout,
        ProxyError::Cancelled => UsageOutcome::Cancelled,
        _ => UsageOutcome::UpstreamError,
    };
    (outcome, Some(error.reason().to_owned()))
}

/// The `error.data.reason` string of an error response, if there is one.
fn error_data_reason(response: &McpResponse) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorObject {
        data: Option<ErrorData>,
    }
    #[derive(Deserialize)]
    struct ErrorData {
        reason: Option<String>,
    }
    let error = response.message.error()?;
    serde_json::from_str::<ErrorObject>(error.get())
        .ok()?
        .data?
        .reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_meter_plugin::jsonrpc::Message;

    fn resp(s: &str) -> McpResponse {
        McpResponse::new(Message::parse(s.to_owned().into()).unwrap())
    }

    #[test]
    fn error_reason_comes_from_data_reason_only_when_it_is_a_string() {
        let with = resp(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32004,"message":"x","data":{"reason":"upstream_unavailable"}}}"#,
        );
        assert_eq!(
            of_response(&with),
            (
                UsageOutcome::UpstreamError,
                Some("upstream_unavailable".into())
            )
        );
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x","data":"text"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x","data":{"reason":7}}}"#,
        ] {
            assert_eq!(
                of_response(&resp(text)),
                (UsageOutcome::UpstreamError, None),
                "{text}"
            );
        }
    }

    #[test]
    fn faults_keep_their_reason() {
        assert_eq!(
            of_error(&ProxyError::SessionClosed),
            (UsageOutcome::UpstreamError, Some("session_closed".into()))
        );
        assert_eq!(
            of_error(&ProxyError::Cancelled),
            (UsageOutcome::Cancelled, Some("cancelled".into()))
        );
    }
}
