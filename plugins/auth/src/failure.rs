//! Why a call was refused by the auth plugin, and how each transport shows
//! it: an HTTP status with `WWW-Authenticate`, or a JSON-RPC error.
//!
//! What reaches the client never says whether a key exists: an unknown, a
//! revoked and an expired key all get the same message and code. The precise
//! reason is kept for the operator (usage records, logs).

use mcp_meter_plugin::McpResponse;
use mcp_meter_plugin::identity::Refusal;
use mcp_meter_plugin::jsonrpc::RequestId;

/// JSON-RPC code: no credential, or one that is not valid.
pub const CODE_UNAUTHENTICATED: i64 = -32010;
/// JSON-RPC code: a valid credential that may not make this call (scope,
/// suspended customer).
pub const CODE_FORBIDDEN: i64 = -32011;
/// JSON-RPC code: credentials cannot be checked right now (the database is
/// down).
pub const CODE_AUTH_UNAVAILABLE: i64 = -32012;

/// The class of a refusal, which decides status and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No credential, or an invalid one: HTTP 401.
    Unauthenticated,
    /// Authenticated but not allowed: HTTP 403.
    Forbidden,
    /// The credential store is unavailable: HTTP 503.
    Unavailable,
}

/// A refusal by the auth plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// Its class.
    pub kind: FailureKind,
    /// The precise reason, for the operator (`key_revoked`, `key_unknown`,
    /// …). Recorded, never sent.
    pub reason: &'static str,
    /// The reason the client sees (`invalid_api_key` for unknown, revoked
    /// and expired keys alike).
    pub public_reason: &'static str,
    /// A message the client can act on.
    pub message: String,
}

impl AuthFailure {
    pub(crate) fn unauthenticated(
        reason: &'static str,
        public_reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind: FailureKind::Unauthenticated,
            reason,
            public_reason,
            message: message.into(),
        }
    }

    pub(crate) fn forbidden(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Forbidden,
            reason,
            public_reason: reason,
            message: message.into(),
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Unavailable,
            reason: "auth_store_unavailable",
            public_reason: "auth_store_unavailable",
            message: message.into(),
        }
    }

    /// The HTTP status for a refusal of a whole HTTP request.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            FailureKind::Unauthenticated => 401,
            FailureKind::Forbidden => 403,
            FailureKind::Unavailable => 503,
        }
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self.kind {
            FailureKind::Unauthenticated => CODE_UNAUTHENTICATED,
            FailureKind::Forbidden => CODE_FORBIDDEN,
            FailureKind::Unavailable => CODE_AUTH_UNAVAILABLE,
        }
    }

    /// The `WWW-Authenticate` value for a 401 or 403 (RFC 6750), pointing to
    /// the protected-resource metadata when one is served (RFC 9728).
    pub fn www_authenticate(&self, resource_metadata: Option<&str>) -> Option<String> {
        let error = match self.kind {
            FailureKind::Unauthenticated => "invalid_token",
            FailureKind::Forbidden => "insufficient_scope",
            FailureKind::Unavailable => return None,
        };
        // A header value is visible ASCII: quotes and backslashes become
        // `'`, an ellipsis `...`, anything else non-ASCII `?`.
        let description: String = self
            .message
            .replace('…', "...")
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                ' '..='~' => c,
                _ => '?',
            })
            .collect();
        let mut value = format!(
            "Bearer realm=\"mcp-meter\", error=\"{error}\", error_description=\"{description}\""
        );
        if let Some(url) = resource_metadata {
            value.push_str(&format!(", resource_metadata=\"{url}\""));
        }
        Some(value)
    }

    /// The JSON-RPC error response, marked as a [`Refusal`] for the usage
    /// recorder.
    pub fn into_response(&self, id: &RequestId) -> McpResponse {
        let data = serde_json::json!({ "reason": self.public_reason });
        let mut response = McpResponse::error(id, self.code(), &self.message, Some(&data));
        response.extensions.insert(Refusal {
            reason: self.reason,
        });
        response
    }
}
