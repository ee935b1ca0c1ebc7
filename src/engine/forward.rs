//! The innermost service of every plugin stack: hands the request to its
//! session, which sends it upstream and waits for the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};

use super::session::Session;

/// Sends requests to the upstream of one session.
#[derive(Debug, Clone)]
pub(super) struct ForwardService {
    session: Weak<Session>,
}

impl ForwardService {
    /// A forwarder for `session` (weak: the session owns its stack).
    pub(super) fn new(session: Weak<Session>) -> Self {
        Self { session }
    }
}

impl tower::Service<McpRequest> for ForwardService {
    type Response = McpResponse;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<McpResponse, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: McpRequest) -> Self::Future {
        let session = self.session.upgrade();
        Box::pin(async move {
            match session {
                Some(session) => session.forward(request).await,
                None => Err(ProxyError::SessionClosed),
            }
        })
    }
}
