//! The layer and its service: each request of an identified customer is
//! checked against the customer's limits before the inner service sees it;
//! a refusal is a JSON-RPC error response, never an `Err`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::{Clock, MonotonicClock};
use mcp_meter_plugin::identity::Caller;
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use tower::{Layer, Service};

use crate::config::{RateLimitConfig, RateLimitConfigError};
use crate::limits::{Decision, Limits};

/// The layer: holds every plan's limiters. Cheap to clone; clones (and the
/// services they make) share the same limits, so a customer is limited
/// across all sessions and transports of one process.
///
/// `C` is the clock the limiters read: [`MonotonicClock`] in production,
/// [`FakeRelativeClock`](governor::clock::FakeRelativeClock) in tests.
pub struct RateLimitLayer<C: Clock = MonotonicClock> {
    limits: Arc<Limits<C>>,
}

impl RateLimitLayer<MonotonicClock> {
    /// A layer enforcing `config` on the monotonic system clock. Fails
    /// with every problem [`RateLimitConfig::validate`] finds.
    pub fn new(config: &RateLimitConfig) -> Result<Self, RateLimitConfigError> {
        Self::with_clock(config, MonotonicClock)
    }
}

impl<C: Clock + Clone> RateLimitLayer<C> {
    /// A layer enforcing `config` on `clock` (clones of a
    /// [`FakeRelativeClock`](governor::clock::FakeRelativeClock) share its
    /// time, so a test can move it). Fails with every problem
    /// [`RateLimitConfig::validate`] finds.
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Result<Self, RateLimitConfigError> {
        Ok(Self {
            limits: Arc::new(Limits::build(config, clock)?),
        })
    }
}

impl<C: Clock> RateLimitLayer<C> {
    /// How many per-customer states the layer holds (one per customer and
    /// window used, plus one per customer with calls in flight): for
    /// metrics, and to see idle eviction work.
    pub fn tracked_states(&self) -> usize {
        self.limits.tracked_states()
    }
}

impl<C: Clock> Clone for RateLimitLayer<C> {
    fn clone(&self) -> Self {
        Self {
            limits: self.limits.clone(),
        }
    }
}

impl<C: Clock> fmt::Debug for RateLimitLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("refusal_code", &self.limits.refusal_code)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clock> Layer<S> for RateLimitLayer<C> {
    type Service = RateLimitService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The service that checks each request of an identified customer against
/// the customer's limits, refuses what does not fit, and notes a
/// [`RateLimitStatus`](crate::RateLimitStatus) in the response's
/// extensions.
pub struct RateLimitService<S, C: Clock = MonotonicClock> {
    inner: S,
    limits: Arc<Limits<C>>,
}

impl<S: Clone, C: Clock> Clone for RateLimitService<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limits: self.limits.clone(),
        }
    }
}

impl<S: fmt::Debug, C: Clock> fmt::Debug for RateLimitService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, C> Service<McpRequest> for RateLimitService<S, C>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError>,
    S::Future: Send + 'static,
    C: Clock,
{
    type Response = McpResponse;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<McpResponse, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: McpRequest) -> Self::Future {
        // Notifications and anything else without an id cannot be refused
        // (there is nothing to answer); calls without a caller are not the
        // customer's to count.
        let id = match request.message.id() {
            Some(id) if request.message.is_request() => id.clone(),
            _ => return Box::pin(self.inner.call(request)),
        };
        let Some(caller) = request.extensions.get::<Arc<Caller>>() else {
            return Box::pin(self.inner.call(request));
        };
        let decision = self.limits.admit(caller, request.tool_name());
        match decision {
            Decision::Unlimited => Box::pin(self.inner.call(request)),
            Decision::Pass { status, slot } => {
                let future = self.inner.call(request);
                Box::pin(async move {
                    let result = future.await;
                    // The slot is also released if this future is dropped
                    // before the inner one completes (the client went away).
                    drop(slot);
                    let mut response = result?;
                    if let Some(status) = status {
                        response.extensions.insert(status);
                    }
                    Ok(response)
                })
            }
            Decision::Refuse(refused) => {
                tracing::debug!(
                    customer = %caller.customer.id,
                    method = request.method(),
                    tool = request.tool_name(),
                    window = refused.window,
                    retry_after_ms = refused.status.retry_after_ms,
                    "call refused by rate limit"
                );
                let response = refused.into_response(&id, self.limits.refusal_code);
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}
