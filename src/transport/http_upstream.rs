//! The Streamable HTTP upstream: a remote MCP endpoint reached with `POST`
//! (one per message), a `GET` stream for server-initiated messages, and
//! `DELETE` when the session ends.
//!
//! The upstream's own `Mcp-Session-Id` is captured from its `initialize`
//! answer and sent on every later request; it is never shown to the client,
//! which only ever sees mcp-meter's session id. Messages that arrive on a
//! POST's response stream are tagged with the request they answer, so the
//! session can relay them on the matching downstream stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use sse_stream::SseStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::UpstreamEvent;
use crate::protocol::{Message, RequestId, is_batch, split_batch};

/// Header carrying the session id (both directions).
pub const SESSION_HEADER: &str = "mcp-session-id";
/// Header carrying the negotiated protocol revision.
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";

/// Why the upstream could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum HttpUpstreamError {
    /// A header from `[upstream.headers]` is invalid.
    #[error("upstream header {0:?} is invalid")]
    Header(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Shared, per-proxy settings of an HTTP upstream.
#[derive(Debug, Clone)]
pub struct HttpUpstreamSpec {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    max_message_bytes: usize,
}

impl HttpUpstreamSpec {
    /// Builds the client for `url` with the configured extra headers.
    pub fn new(
        url: &str,
        headers: &[(String, String)],
        max_message_bytes: usize,
        connect_timeout: Duration,
    ) -> Result<Self, HttpUpstreamError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpUpstreamError::Header(name.clone()))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| HttpUpstreamError::Header(name.to_string()))?;
            map.insert(name, value);
        }
        let url = reqwest::Url::parse(url).map_err(|_| HttpUpstreamError::Header("url".into()))?;
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(64)
            // Servers close idle keep-alive connections after a few seconds
            // (Node's default is 5 s). A pooled connection reused just as the
            // server closes it is reset mid-request, and a POST cannot be
            // safely retried; so idle connections are dropped first.
            .pool_idle_timeout(UPSTREAM_POOL_IDLE)
            .build()?;
        Ok(Self {
            client,
            url,
            headers: map,
            max_message_bytes,
        })
    }

    /// The endpoint URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// A `POST` to the endpoint with the configured extra headers.
    pub(super) fn post(&self) -> reqwest::RequestBuilder {
        self.client
            .post(self.url.clone())
            .headers(self.headers.clone())
    }

    /// The largest message accepted from the upstream.
    pub(super) fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Whether the endpoint answers at all (any HTTP status counts).
    pub async fn probe(&self) -> Result<(), String> {
        self.client
            .get(self.url.clone())
            .header(header::ACCEPT, "text/event-stream")
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// How long an idle upstream connection is kept for reuse: under the 5 s
/// keep-alive timeout of common servers (Node.js, many load balancers).
const UPSTREAM_POOL_IDLE: Duration = Duration::from_millis(3_500);

/// One upstream MCP session over Streamable HTTP.
#[derive(Debug)]
pub struct HttpUpstream {
    spec: HttpUpstreamSpec,
    events: mpsc::Sender<UpstreamEvent>,
    state: Mutex<State>,
    closed: CancellationToken,
    session_label: Arc<str>,
}

#[derive(Debug, Default)]
struct State {
    session_id: Option<HeaderValue>,
    protocol_version: Option<HeaderValue>,
    get_stream_started: bool,
}

impl HttpUpstream {
    /// A new upstream session; nothing is sent until the first message.
    pub fn new(
        spec: HttpUpstreamSpec,
        session_label: &str,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Arc<Self> {
        Arc::new(Self {
            spec,
            events,
            state: Mutex::new(State::default()),
            closed: CancellationToken::new(),
            session_label: session_label.into(),
        })
    }

    /// Records the negotiated revision, sent as `MCP-Protocol-Version` from
    /// now on.
    pub fn set_protocol_version(&self, version: &str) {
        if let Ok(value) = HeaderValue::from_str(version) {
            self.lock().protocol_version = Some(value);
        }
    }

    /// Forgets the upstream session (after it expired), so the next
    /// `initialize` starts a new one.
    pub fn reset(&self) {
        let mut state = self.lock();
        state.session_id = None;
        state.get_stream_started = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(
        &self,
        method: reqwest::Method,
        extra: Option<&HeaderMap>,
    ) -> reqwest::RequestBuilder {
        let mut builder = self
            .spec
            .client
            .request(method, self.spec.url.clone())
            .headers(self.spec.headers.clone());
        let state = self.lock();
        if let Some(id) = &state.session_id {
            builder = builder.header(SESSION_HEADER, id.clone());
        }
        if let Some(version) = &state.protocol_version {
            builder = builder.header(PROTOCOL_VERSION_HEADER, version.clone());
        }
        drop(state);
        if let Some(extra) = extra {
            builder = builder.headers(extra.clone());
        }
        builder
    }

    /// Sends one message. For a request, the POST runs in its own task and
    /// its answer (JSON or an SSE stream) arrives as events tagged with the
    /// request id; the returned handle aborts it (closing the stream, which
    /// is how the stateless revision cancels). Notifications and responses
    /// are delivered before this returns.
    pub async fn send(
        self: &Arc<Self>,
        message: &Message,
        extra_headers: Option<HeaderMap>,
    ) -> Result<Option<AbortHandle>, String> {
        let builder = self
            .request(reqwest::Method::POST, extra_headers.as_ref())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(message.as_bytes().clone());
        if message.is_request() {
            let this = self.clone();
            let related = message.id().cloned();
            let is_initialize = message.method() == Some(crate::protocol::methods::INITIALIZE);
            let task = tokio::spawn(async move {
                this.run_post(builder, related, is_initialize).await;
            });
            Ok(Some(task.abort_handle()))
        } else {
            let response = builder.send().await.map_err(|e| error_chain(&e))?;
            let status = response.status();
            if status == StatusCode::NOT_FOUND && self.lock().session_id.is_some() {
                let _ = self.events.send(UpstreamEvent::SessionExpired).await;
                return Err("the upstream session expired".into());
            }
            if !status.is_success() {
                return Err(format!("the upstream answered HTTP {status}"));
            }
            // Some servers answer a notification with a body; relay it.
            self.relay_body(response, None).await;
            if message.method() == Some(crate::protocol::methods::INITIALIZED) {
                self.start_get_stream();
            }
            Ok(None)
        }
    }

    async fn run_post(
        self: Arc<Self>,
        builder: reqwest::RequestBuilder,
        related: Option<RequestId>,
        is_initialize: bool,
    ) {
        let fail = |message: String| {
            let id = related.clone();
            let events = self.events.clone();
            async move {
                if let Some(id) = id {
                    let error = Message::error_response(
                        Some(&id),
                        mcp_meter_plugin::ProxyError::CODE_UPSTREAM_UNAVAILABLE,
                        &message,
                        Some(&serde_json::json!({"reason": "upstream_http_error"})),
                    );
                    let _ = events
                        .send(UpstreamEvent::Message {
                            message: error,
                            related: Some(id),
                        })
                        .await;
                }
            }
        };
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(session = %self.session_label, error = %e, "upstream request failed");
                fail(format!(
                    "the upstream MCP server could not be reached: {}",
                    error_chain(&e)
                ))
                .await;
                return;
            }
        };
        let status = response.status();
        if let (true, Some(id)) = (
            is_initialize && status.is_success(),
            response.headers().get(SESSION_HEADER),
        ) {
            self.lock().session_id = Some(id.clone());
        }
        if status == StatusCode::NOT_FOUND && self.lock().session_id.is_some() {
            let _ = self.events.send(UpstreamEvent::SessionExpired).await;
            fail("the upstream MCP session expired; the proxy will start a new one on the next request".into()).await;
            return;
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            // An upstream may answer a bad request with a JSON-RPC error body.
            if let Ok(message) = Message::parse(Bytes::from(body.clone()))
                && message.is_response()
            {
                {
                    let _ = self
                        .events
                        .send(UpstreamEvent::Message {
                            message,
                            related: related.clone(),
                        })
                        .await;
                    return;
                }
            }
            let shown: String = body.chars().take(200).collect();
            fail(format!(
                "the upstream MCP server answered HTTP {status}: {shown}"
            ))
            .await;
            return;
        }
        if !self.relay_body(response, related.clone()).await {
            fail("the upstream closed the response stream before answering".into()).await;
        }
    }

    /// Relays a POST or GET response body; returns whether a response to
    /// `related` was among the messages.
    async fn relay_body(&self, response: reqwest::Response, related: Option<RequestId>) -> bool {
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut answered = false;
        if content_type.starts_with("text/event-stream") {
            let mut events = SseStream::from_bytes_stream(response.bytes_stream());
            loop {
                let next = tokio::select! {
                    next = events.next() => next,
                    _ = self.closed.cancelled() => return answered,
                };
                let Some(item) = next else { break };
                let event = match item {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::debug!(session = %self.session_label, error = %e, "upstream SSE stream ended");
                        break;
                    }
                };
                let Some(data) = event.data else { continue };
                if data.trim().is_empty() {
                    continue;
                }
                answered |= self.relay_payload(Bytes::from(data), &related).await;
            }
        } else if content_type.starts_with("application/json") {
            match read_limited(response, self.spec.max_message_bytes).await {
                Ok(body) if !body.is_empty() => {
                    answered |= self.relay_payload(body, &related).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(session = %self.session_label, error = %e, "upstream body unreadable")
                }
            }
        }
        answered
    }

    async fn relay_payload(&self, payload: Bytes, related: &Option<RequestId>) -> bool {
        let items = if is_batch(&payload) {
            match split_batch(&payload) {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!(session = %self.session_label, error = %e, "upstream sent an unreadable batch");
                    return false;
                }
            }
        } else {
            vec![payload]
        };
        let mut answered = false;
        for item in items {
            match Message::parse(item) {
                Ok(message) => {
                    answered |= message.is_response() && message.id() == related.as_ref();
                    let _ = self
                        .events
                        .send(UpstreamEvent::Message {
                            message,
                            related: related.clone(),
                        })
                        .await;
                }
                Err(e) => {
                    tracing::warn!(session = %self.session_label, error = %e, "upstream sent a message that is not JSON-RPC; ignored")
                }
            }
        }
        answered
    }

    /// Opens the `GET` stream for server-initiated messages, reconnecting
    /// with backoff until the session closes. A `405` means the server has
    /// none, which is fine.
    fn start_get_stream(self: &Arc<Self>) {
        {
            let mut state = self.lock();
            if state.get_stream_started {
                return;
            }
            state.get_stream_started = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                let request = this
                    .request(reqwest::Method::GET, None)
                    .header(header::ACCEPT, "text/event-stream")
                    .send();
                let response = tokio::select! {
                    r = request => r,
                    _ = this.closed.cancelled() => return,
                };
                match response {
                    Ok(r) if r.status() == StatusCode::METHOD_NOT_ALLOWED => return,
                    Ok(r) if r.status() == StatusCode::NOT_FOUND => return,
                    Ok(r) if r.status().is_success() => {
                        delay = Duration::from_millis(500);
                        this.relay_body(r, None).await;
                    }
                    Ok(r) => {
                        tracing::debug!(session = %this.session_label, status = %r.status(), "upstream GET stream refused");
                    }
                    Err(e) => {
                        tracing::debug!(session = %this.session_label, error = %e, "upstream GET stream failed");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = this.closed.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// Ends the upstream session (`DELETE`, best effort) and stops its
    /// streams.
    pub async fn close(&self) {
        self.closed.cancel();
        if self.lock().session_id.is_some() {
            let _ = self
                .request(reqwest::Method::DELETE, None)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
        }
    }
}

/// An error with its causes (`error sending request: connection reset`), as
/// reqwest's own message leaves out why.
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads a whole (JSON) body, refusing one larger than `limit`.
pub(super) async fn read_limited(
    response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if body.len() + chunk.len() > limit {
            return Err(format!("the upstream answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}
