//! The auth layer: every request is identified and authorized before it goes
//! further; a refusal is a JSON-RPC error response marked as a
//! [`Refusal`](mcp_meter_plugin::identity::Refusal).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mcp_meter_plugin::identity::CallerSlot;
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use tower::{Layer, Service};

use crate::authenticator::{Authenticator, Identity, TransportIdentity};

/// The layer: holds the shared [`Authenticator`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer checking requests with `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service that checks each request before its inner service sees it.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S> Service<McpRequest> for Auth<S>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = McpResponse;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<McpResponse, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: McpRequest) -> Self::Future {
        // The ready inner service is the one to call; leave a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let Some(id) = request.message.id().cloned() else {
                return Err(ProxyError::Internal(
                    "the auth layer was given a message without an id".into(),
                ));
            };
            let identity = match request.extensions.remove::<TransportIdentity>() {
                Some(TransportIdentity(identity)) => Ok(identity),
                None => {
                    authenticator
                        .identify(&request.credentials, request.method())
                        .await
                }
            };
            // Once the caller is known it is named on the way out, also when
            // the call is then refused (suspended, out of scope) or fails.
            let caller = match &identity {
                Ok(Identity::Known(known)) => Some(known.caller.clone()),
                _ => None,
            };
            if let (Some(caller), Some(slot)) = (&caller, request.extensions.get::<CallerSlot>()) {
                slot.fill(caller.clone());
            }
            let checked = identity.and_then(|identity| {
                authenticator.authorize(&identity, request.method(), request.tool_name())
            });
            if let Err(failure) = checked {
                tracing::info!(
                    method = request.method(),
                    reason = failure.reason,
                    "call refused by auth"
                );
                let mut response = failure.into_response(&id);
                if let Some(caller) = caller {
                    response.extensions.insert(caller);
                }
                return Ok(response);
            }
            if let Some(caller) = &caller {
                request.extensions.insert(caller.clone());
            }
            let mut response = inner.call(request).await?;
            if let Some(caller) = caller {
                response.extensions.insert(caller);
            }
            Ok(response)
        })
    }
}
