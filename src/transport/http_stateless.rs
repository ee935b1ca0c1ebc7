//! One stateless (2026-07-28) exchange with a Streamable HTTP upstream: the
//! client's request is `POST`ed as it came (same bytes, same
//! `MCP-Protocol-Version` / `Mcp-Method` / `Mcp-Name` / `Mcp-Param-*`
//! headers, plus the operator's configured upstream headers), and the answer
//! — JSON, or an SSE stream of notifications ending with the response — is
//! read back. There is no session on either side.
//!
//! Cancellation in this revision is closing the response stream: the
//! exchange is a future, and dropping it (the client went away, the call
//! timed out) drops the upstream connection.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode, header};
use mcp_meter_plugin::ProxyError;
use sse_stream::SseStream;
use tokio::sync::mpsc;

use super::http_upstream::{HttpUpstreamSpec, error_chain, read_limited};
use crate::protocol::{Message, stateless};

/// What the upstream answered a stateless request with.
#[derive(Debug)]
pub struct StatelessAnswer {
    /// The JSON-RPC response (a result or an error).
    pub message: Message,
    /// The HTTP status the upstream sent it with.
    pub status: StatusCode,
}

/// Sends `request` upstream and waits for its response. Notifications the
/// upstream sends on the response stream first go to `interim`, in order.
pub async fn exchange(
    spec: &HttpUpstreamSpec,
    request: &Message,
    client_headers: &HeaderMap,
    interim: Option<&mpsc::Sender<Message>>,
) -> Result<StatelessAnswer, ProxyError> {
    let response = post_upstream(spec, request, client_headers)
        .send()
        .await
        .map_err(|e| {
            unavailable(format!(
                "the upstream MCP server could not be reached: {}",
                error_chain(&e)
            ))
        })?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let limit = spec.max_message_bytes();
    if status.is_success() && content_type.starts_with("text/event-stream") {
        let message = read_event_stream(response, request, limit, interim).await?;
        return Ok(StatelessAnswer { message, status });
    }
    let body = read_limited(response, limit).await.map_err(unavailable)?;
    match Message::parse(body.clone()) {
        Ok(message) if message.is_response() => Ok(StatelessAnswer { message, status }),
        _ => {
            let shown: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            Err(unavailable(format!(
                "the upstream MCP server answered HTTP {status} without a JSON-RPC response: {shown}"
            )))
        }
    }
}

/// Sends a stateless notification upstream (fire and forget: the upstream's
/// `202` is all there is).
pub async fn notify(
    spec: &HttpUpstreamSpec,
    notification: &Message,
    client_headers: &HeaderMap,
) -> Result<(), ProxyError> {
    let response = post_upstream(spec, notification, client_headers)
        .send()
        .await
        .map_err(|e| {
            unavailable(format!(
                "the upstream MCP server could not be reached: {}",
                error_chain(&e)
            ))
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(unavailable(format!(
            "the upstream MCP server answered HTTP {}",
            response.status()
        )))
    }
}

/// The `POST` of `message` upstream, with the client's mirroring headers.
fn post_upstream(
    spec: &HttpUpstreamSpec,
    message: &Message,
    client_headers: &HeaderMap,
) -> reqwest::RequestBuilder {
    let mut builder = spec
        .post()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream");
    for (name, value) in client_headers {
        if stateless::is_forwarded_header(name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    builder.body(message.as_bytes().clone())
}

async fn read_event_stream(
    response: reqwest::Response,
    request: &Message,
    limit: usize,
    interim: Option<&mpsc::Sender<Message>>,
) -> Result<Message, ProxyError> {
    let mut events = SseStream::from_bytes_stream(response.bytes_stream());
    while let Some(item) = events.next().await {
        let event = item.map_err(|e| {
            unavailable(format!(
                "the upstream's response stream broke before the answer: {e}"
            ))
        })?;
        let Some(data) = event.data else { continue };
        if data.trim().is_empty() {
            continue;
        }
        if data.len() > limit {
            return Err(unavailable(format!(
                "the upstream sent a message larger than {limit} bytes (server.max_message_bytes)"
            )));
        }
        let message = match Message::parse(Bytes::from(data)) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "stateless upstream sent a message that is not JSON-RPC; ignored");
                continue;
            }
        };
        if message.is_response() && message.id() == request.id() {
            return Ok(message);
        }
        if let Some(interim) = interim
            && interim.send(message).await.is_err()
        {
            return Err(ProxyError::Cancelled);
        }
    }
    Err(unavailable(
        "the upstream closed the response stream before answering".into(),
    ))
}

fn unavailable(reason: String) -> ProxyError {
    ProxyError::UpstreamUnavailable {
        reason,
        retry_after: None,
    }
}
