//! The innermost service for stateless (2026-07-28) requests: there is no
//! session, so each request is an exchange of its own with the upstream.
//!
//! * An HTTP upstream gets the request as it came (see
//!   [`crate::transport::http_stateless`]): if it speaks 2026-07-28 it
//!   answers; if it only speaks the handshake revisions, its own refusal
//!   reaches the client, which falls back to `initialize` as it would
//!   without mcp-meter in between.
//! * A stdio upstream is a child process that mcp-meter starts per session
//!   with the `initialize` handshake; there is no stateless bridge to it.
//!   mcp-meter steers the client to the handshake instead: every stateless
//!   request is answered with -32022 (unsupported protocol version) naming
//!   the handshake revisions, on which 2026-07-28 clients that support both
//!   eras (the official SDKs' `auto` mode) retry with `initialize`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};

use super::session::{InterimSink, UpstreamHeaders};
use super::settings::{SessionSettings, UpstreamSpec};
use crate::protocol::stateless::Rejection;
use crate::protocol::version::HANDSHAKE_REVISIONS;
use crate::protocol::{methods, stateless};
use crate::transport::http_stateless;

/// Sends stateless requests upstream, one exchange each.
#[derive(Debug, Clone)]
pub(super) struct StatelessForward {
    settings: Arc<SessionSettings>,
}

impl StatelessForward {
    pub(super) fn new(settings: Arc<SessionSettings>) -> Self {
        Self { settings }
    }
}

impl tower::Service<McpRequest> for StatelessForward {
    type Response = McpResponse;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<McpResponse, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: McpRequest) -> Self::Future {
        let settings = self.settings.clone();
        Box::pin(async move {
            let Some(id) = request.message.id().cloned() else {
                return Err(ProxyError::Internal(
                    "forwarded a message that is not a request".into(),
                ));
            };
            let spec = match &settings.upstream {
                UpstreamSpec::Http(spec) => spec,
                UpstreamSpec::Stdio(_) => {
                    let requested = request
                        .session
                        .protocol_version
                        .as_deref()
                        .unwrap_or(crate::protocol::version::STATELESS_REVISION);
                    let steer = Rejection::unsupported_version(requested, HANDSHAKE_REVISIONS);
                    let message = format!(
                        "this MCP server speaks only the handshake protocol revisions ({}); connect with initialize",
                        HANDSHAKE_REVISIONS.join(", ")
                    );
                    return Ok(McpResponse::error(
                        &id,
                        stateless::UNSUPPORTED_PROTOCOL_VERSION,
                        &message,
                        steer.data.as_ref(),
                    ));
                }
            };
            let interim = request.extensions.remove::<InterimSink>().map(|s| s.0);
            let headers = request
                .extensions
                .remove::<UpstreamHeaders>()
                .map(|h| h.0)
                .unwrap_or_default();
            let exchange =
                http_stateless::exchange(spec, &request.message, &headers, interim.as_ref());
            // A subscription stream lasts as long as the client keeps it open.
            let answer = if request.method() == methods::SUBSCRIPTIONS_LISTEN {
                exchange.await?
            } else {
                let timeout = settings.request_timeout;
                tokio::time::timeout(timeout, exchange)
                    .await
                    .map_err(|_| ProxyError::Timeout { after: timeout })??
            };
            Ok(McpResponse::new(answer.message))
        })
    }
}
