//! The answer a plugin stack returns for one request.

use http::Extensions;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::jsonrpc::{Message, MessageKind, RequestId};

/// How a call ended, as a client would see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A result that is not a tool error.
    Ok,
    /// A `tools/call` result with `isError: true`.
    ToolError,
    /// A JSON-RPC error response.
    Error,
}

impl CallOutcome {
    /// A short lowercase name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::ToolError => "tool_error",
            CallOutcome::Error => "error",
        }
    }
}

/// The response to one [`crate::McpRequest`].
#[derive(Debug)]
pub struct McpResponse {
    /// The JSON-RPC response (success or error), bytes untouched.
    pub message: Message,
    /// Typed values layers attach on the way back (units, cost, warnings).
    pub extensions: Extensions,
}

impl McpResponse {
    /// Wraps a response message.
    pub fn new(message: Message) -> Self {
        Self {
            message,
            extensions: Extensions::new(),
        }
    }

    /// A success response with a raw result.
    pub fn result(id: &RequestId, result: &RawValue) -> Self {
        Self::new(Message::result_response(id, result))
    }

    /// An error response, e.g. a refusal by a plugin.
    pub fn error(
        id: &RequestId,
        code: i64,
        message: &str,
        data: Option<&serde_json::Value>,
    ) -> Self {
        Self::new(Message::error_response(Some(id), code, message, data))
    }

    /// How the call ended. Reads `isError` from the result only for results
    /// (a small scan, no tree is built).
    pub fn outcome(&self) -> CallOutcome {
        #[derive(Deserialize)]
        struct ToolResult {
            #[serde(rename = "isError", default)]
            is_error: bool,
        }
        match self.message.kind() {
            MessageKind::ErrorResponse => CallOutcome::Error,
            _ => {
                let is_error = self
                    .message
                    .result()
                    .and_then(|r| serde_json::from_str::<ToolResult>(r.get()).ok())
                    .is_some_and(|r| r.is_error);
                if is_error {
                    CallOutcome::ToolError
                } else {
                    CallOutcome::Ok
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn resp(s: &'static str) -> McpResponse {
        McpResponse::new(Message::parse(Bytes::from_static(s.as_bytes())).unwrap())
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            resp(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#).outcome(),
            CallOutcome::Ok
        );
        assert_eq!(
            resp(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"isError"}],"isError":true}}"#).outcome(),
            CallOutcome::ToolError
        );
        assert_eq!(
            resp(r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#).outcome(),
            CallOutcome::Error
        );
    }
}
