//! Faults of the proxy or the upstream, as opposed to refusals.

use std::time::Duration;

use crate::jsonrpc::RequestId;
use crate::response::McpResponse;

/// A fault that kept a request from getting an answer from the upstream.
///
/// Each variant maps to a JSON-RPC error with a stable code in the
/// implementation-defined range, so a client can tell them apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The upstream process exited while the request was pending.
    #[error("the upstream MCP server exited ({status}) before answering")]
    UpstreamExited {
        /// The exit status as text (`exit status: 1`, `signal: 9`).
        status: String,
    },
    /// The upstream cannot be reached or started right now.
    #[error("the upstream MCP server is unavailable: {reason}")]
    UpstreamUnavailable {
        /// Why, in words an operator can act on.
        reason: String,
        /// When the proxy will try again, if it knows.
        retry_after: Option<Duration>,
    },
    /// The upstream did not answer in time; the proxy sent it a cancellation.
    #[error("the upstream MCP server did not answer within {} ms; the request was cancelled", .after.as_millis())]
    Timeout {
        /// The configured request timeout.
        after: Duration,
    },
    /// The client cancelled the request.
    #[error("the request was cancelled by the client")]
    Cancelled,
    /// The session ended while the request was pending.
    #[error("the session was closed")]
    SessionClosed,
    /// A request with this id is already pending in this session.
    #[error("a request with id {0} is already in progress in this session")]
    DuplicateId(RequestId),
    /// A bug or an unexpected state inside the proxy.
    #[error("internal proxy error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// JSON-RPC code for [`ProxyError::UpstreamExited`].
    pub const CODE_UPSTREAM_EXITED: i64 = -32003;
    /// JSON-RPC code for [`ProxyError::UpstreamUnavailable`].
    pub const CODE_UPSTREAM_UNAVAILABLE: i64 = -32004;
    /// JSON-RPC code for [`ProxyError::Timeout`].
    pub const CODE_TIMEOUT: i64 = -32001;
    /// JSON-RPC code for [`ProxyError::Cancelled`].
    pub const CODE_CANCELLED: i64 = -32800;
    /// JSON-RPC code for [`ProxyError::SessionClosed`].
    pub const CODE_SESSION_CLOSED: i64 = -32005;

    /// The JSON-RPC error code for this fault.
    pub fn code(&self) -> i64 {
        match self {
            ProxyError::UpstreamExited { .. } => Self::CODE_UPSTREAM_EXITED,
            ProxyError::UpstreamUnavailable { .. } => Self::CODE_UPSTREAM_UNAVAILABLE,
            ProxyError::Timeout { .. } => Self::CODE_TIMEOUT,
            ProxyError::Cancelled => Self::CODE_CANCELLED,
            ProxyError::SessionClosed => Self::CODE_SESSION_CLOSED,
            ProxyError::DuplicateId(_) => crate::jsonrpc::INVALID_REQUEST,
            ProxyError::Internal(_) => crate::jsonrpc::INTERNAL_ERROR,
        }
    }

    /// A short machine-readable reason, also used as `data.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::UpstreamExited { .. } => "upstream_exited",
            ProxyError::UpstreamUnavailable { .. } => "upstream_unavailable",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::Cancelled => "cancelled",
            ProxyError::SessionClosed => "session_closed",
            ProxyError::DuplicateId(_) => "duplicate_id",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// The JSON-RPC error response a client receives for this fault.
    pub fn into_response(self, id: &RequestId) -> McpResponse {
        let mut data = serde_json::json!({ "reason": self.reason() });
        match &self {
            ProxyError::UpstreamExited { status } => {
                data["exitStatus"] = status.clone().into();
            }
            ProxyError::UpstreamUnavailable {
                retry_after: Some(after),
                ..
            } => {
                data["retry_after"] = after.as_secs().max(1).into();
            }
            ProxyError::Timeout { after } => {
                data["timeoutMs"] = (after.as_millis() as u64).into();
            }
            _ => {}
        }
        McpResponse::error(id, self.code(), &self.to_string(), Some(&data))
    }
}
