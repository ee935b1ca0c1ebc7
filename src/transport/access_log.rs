//! Access logs: one structured event per HTTP request on every listener
//! (target [`TARGET`], level `info`), turned off with `[logging] access_log
//! = false`.
//!
//! Each event names the method, the path, the status, the time until the
//! response's head in microseconds, the request and response body sizes
//! when they are known up front (`Content-Length`, or a body of known
//! length), the peer address and, when a handler learned them, the
//! customer id, the API key id, the MCP method, the tool and the MCP
//! session id.
//!
//! It must never log a secret: the query string is dropped (it may carry a
//! token), a `/pay/<token>` path is logged as `/pay/…`, no header value is
//! logged (the session id is an id, not a header dump), and only key *ids*
//! are logged, never the keys themselves.
//!
//! ```
//! use axum::{Router, routing::get};
//! use mcp_meter::transport::access_log;
//!
//! let app: Router = access_log::wrap(Router::new().route("/healthz", get(|| async { "ok" })), true);
//! # let _ = app;
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::body::HttpBody;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use mcp_meter_plugin::identity::{Caller, CustomerId, KeyId};

use super::http_upstream::SESSION_HEADER;

/// The `tracing` target of access events.
pub const TARGET: &str = "mcp_meter::access";

/// The prefix of payment-link paths, whose last segment is a bearer token.
const PAY_PREFIX: &str = "/pay/";

/// What a handler learned about its request, for the access event. The
/// middleware puts one into each request's extensions; handlers fill it.
/// Cheap to clone (all clones share the facts).
#[derive(Debug, Clone, Default)]
pub struct AccessNote(Arc<Mutex<AccessFacts>>);

/// The facts an [`AccessNote`] carries.
#[derive(Debug, Clone, Default)]
struct AccessFacts {
    customer_id: Option<CustomerId>,
    key_id: Option<KeyId>,
    mcp_method: Option<String>,
    tool: Option<String>,
    batch: Option<usize>,
}

impl AccessNote {
    fn with<T>(&self, f: impl FnOnce(&mut AccessFacts) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records the authenticated caller (its customer id and, for an API
    /// key, the key's id; never the key).
    pub fn caller(&self, caller: &Caller) {
        self.with(|facts| {
            facts.customer_id = Some(caller.customer.id.clone());
            facts.key_id = caller.key_id().cloned();
        });
    }

    /// Records the MCP method and, for `tools/call`, the tool.
    pub fn mcp(&self, method: Option<&str>, tool: Option<&str>) {
        self.with(|facts| {
            facts.mcp_method = method.map(str::to_owned);
            facts.tool = tool.map(str::to_owned);
        });
    }

    /// Records that the POST carried a JSON-RPC batch of `len` messages.
    pub fn batch(&self, len: usize) {
        self.with(|facts| facts.batch = Some(len));
    }
}

/// `router` with the access log middleware when `enabled`.
pub fn wrap(router: Router, enabled: bool) -> Router {
    if enabled {
        router.layer(middleware::from_fn(log_access))
    } else {
        router
    }
}

/// The path as it may be logged: a payment link's token is replaced by `…`.
/// (The query string is never part of it.)
pub fn loggable_path(path: &str) -> &str {
    if path.starts_with(PAY_PREFIX) {
        "/pay/…"
    } else {
        path
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SESSION_HEADER)?
        .to_str()
        .ok()
        .map(str::to_owned)
}

async fn log_access(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = loggable_path(request.uri().path()).to_owned();
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let request_bytes = content_length(request.headers());
    let mut session = session_id(request.headers());
    let note = AccessNote::default();
    request.extensions_mut().insert(note.clone());

    let response = next.run(request).await;

    let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let response_bytes = response
        .body()
        .size_hint()
        .exact()
        .or_else(|| content_length(response.headers()));
    // `initialize` answers with the new session's id.
    if session.is_none() {
        session = session_id(response.headers());
    }
    let facts = note.with(|facts| facts.clone());
    tracing::info!(
        target: TARGET,
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        duration_us,
        request_bytes,
        response_bytes,
        remote_addr = remote.map(tracing::field::display),
        customer_id = facts.customer_id.as_ref().map(CustomerId::as_str),
        key_id = facts.key_id.as_ref().map(KeyId::as_str),
        mcp_method = facts.mcp_method.as_deref(),
        tool = facts.tool.as_deref(),
        batch = facts.batch,
        session_id = session.as_deref(),
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_tokens_never_reach_the_log() {
        assert_eq!(loggable_path("/pay/pt_secret123"), "/pay/…");
        assert_eq!(loggable_path("/pay/"), "/pay/…");
        assert_eq!(loggable_path("/mcp"), "/mcp");
        assert_eq!(loggable_path("/api/v1/me"), "/api/v1/me");
    }
}
