//! The Streamable HTTP downstream: `POST`, `GET` and `DELETE` on the MCP
//! endpoint, per the MCP transport specification (2025-03-26 through
//! 2025-11-25), plus `/healthz` and `/readyz`.
//!
//! * `POST` carries one JSON-RPC message (or, in revisions that have them, a
//!   batch). Notifications and responses get `202 Accepted`. A request is
//!   answered with `application/json` when the upstream answers it with
//!   nothing in between, or with a `text/event-stream` as soon as the
//!   upstream sends a related message first (progress, a sampling request),
//!   so those reach the client while the call runs.
//! * `initialize` without `Mcp-Session-Id` opens a session; its answer
//!   carries the new id. Any other request needs the header; an unknown id
//!   answers `404` so the client starts over.
//! * `GET` opens the session's stream for server-initiated messages.
//! * `DELETE` ends the session and its upstream.
//!
//! `POST /webhooks/stripe` receives Stripe's events (see
//! [`crate::stripe::webhook`]).
//!
//! Refusals are HTTP statuses with a JSON-RPC error body the client can read.

mod auth;
mod stateless;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;
use mcp_meter_auth::TransportIdentity;
use mcp_meter_plugin::{BoxMcpService, McpRequest, SessionInfo, TransportKind};
use mcp_meter_rate_limit::RateLimitStatus;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::access_log::{self, AccessNote};
use super::http_upstream::{PROTOCOL_VERSION_HEADER, SESSION_HEADER};
use super::origin::OriginPolicy;
use crate::engine::{Downstream, InterimSink, Proxy, Session};
use crate::protocol::stateless as stateless_revision;
use crate::protocol::{
    INVALID_REQUEST, Message, RequestId, framing, is_batch, methods, split_batch, version,
};
use crate::stripe::{pay as stripe_pay, webhook as stripe_webhook};

#[derive(Clone)]
struct AppState {
    proxy: Arc<Proxy>,
    origins: Arc<OriginPolicy>,
    max_message_bytes: usize,
}

/// The HTTP application: the MCP endpoint and the health routes.
pub fn router(proxy: Arc<Proxy>) -> Router {
    let config = proxy.config();
    let state = AppState {
        origins: Arc::new(OriginPolicy::new(&config.server.allowed_origins)),
        max_message_bytes: config.server.max_message_bytes,
        proxy: proxy.clone(),
    };
    let path = config.server.mcp_path.clone();
    let stripe = proxy.stripe().cloned();
    Router::new()
        .route(&path, get(get_mcp).post(post_mcp).delete(delete_mcp))
        .route(
            "/.well-known/oauth-protected-resource",
            get(auth::protected_resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/{*resource}",
            get(auth::protected_resource_metadata),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(stripe_webhook::routes(stripe.clone()))
        .merge(stripe_pay::routes(stripe, proxy.authenticator().cloned()))
        .merge(if separate_admin_listener(&proxy) {
            api_state(&proxy).map_or_else(Router::new, |(state, max)| {
                crate::api::me_router(state, max)
            })
        } else {
            api_routes(&proxy)
        })
}

/// Whether the management API has its own listener (`[api] listen`).
fn separate_admin_listener(proxy: &Proxy) -> bool {
    proxy
        .config()
        .api
        .as_ref()
        .is_some_and(|api| api.listen.is_some())
}

/// The admin listener's application: the management API and `/metrics`.
pub fn admin_router(proxy: Arc<Proxy>) -> Router {
    let metrics_state = AppState {
        origins: Arc::new(OriginPolicy::new(&proxy.config().server.allowed_origins)),
        max_message_bytes: proxy.config().server.max_message_bytes,
        proxy: proxy.clone(),
    };
    api_routes(&proxy).merge(
        Router::new()
            .route("/metrics", get(metrics))
            .with_state(metrics_state),
    )
}

/// Serves [`admin_router`] on `listener` until the proxy shuts down; each
/// request is logged by [`access_log`] unless `[logging] access_log =
/// false`.
pub async fn serve_admin(proxy: Arc<Proxy>, listener: TcpListener) -> std::io::Result<()> {
    let shutdown = proxy.shutdown_token();
    let access_log = proxy.config().logging.access_log;
    let app = access_log::wrap(admin_router(proxy), access_log);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// The management API's state and body limit when `[api]` and a
/// `[database]` are configured.
fn api_state(proxy: &Arc<Proxy>) -> Option<(crate::api::ApiState, usize)> {
    let config = proxy.config();
    let (Some(api), Some(store)) = (&config.api, proxy.store()) else {
        return None;
    };
    let catalog = match mcp_meter_billing::Catalog::compile(&config.billing, &config.plans) {
        Ok(catalog) => catalog,
        Err(problems) => {
            // `check` and the start refuse such plans before this.
            tracing::error!(
                ?problems,
                "the plans do not compile; the management API is off"
            );
            return None;
        }
    };
    let state = crate::api::ApiState {
        store: store.clone(),
        catalog: Arc::new(catalog),
        admin_tokens: Arc::new(api.admin_tokens.clone()),
        authenticator: proxy.authenticator().cloned(),
        admin_jwt: api
            .admin_jwt_role_claim
            .clone()
            .map(|claim| (claim, api.admin_jwt_role.clone())),
    };
    Some((state, api.max_body_bytes))
}

/// The management API when `[api]` and a `[database]` are configured (an
/// empty router otherwise).
fn api_routes(proxy: &Arc<Proxy>) -> Router {
    api_state(proxy).map_or_else(Router::new, |(state, max)| crate::api::router(state, max))
}

/// Serves `router(proxy)` on `listener` until the proxy shuts down; in-flight
/// requests are let finish (the caller bounds how long). Each request is
/// logged by [`access_log`] unless `[logging] access_log = false`.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) -> std::io::Result<()> {
    let shutdown = proxy.shutdown_token();
    let access_log = proxy.config().logging.access_log;
    let app = access_log::wrap(router(proxy), access_log);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

fn error_body(id: Option<&RequestId>, code: i64, message: &str) -> Body {
    Body::from(
        Message::error_response(id, code, message, None)
            .as_bytes()
            .clone(),
    )
}

/// A request refused before it reached the plugin stack: an HTTP status and
/// a JSON-RPC error body (with a `null` id) the client can read.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: i64,
    message: String,
    retry_after: Option<&'static str>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            error_body(None, self.code, &self.message),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
        }
        response
    }
}

fn refuse(status: StatusCode, code: i64, message: &str) -> Refusal {
    Refusal {
        status,
        code,
        message: message.to_owned(),
        retry_after: None,
    }
}

fn accepts(headers: &HeaderMap, wanted: &str) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',').any(|part| {
                let media = part.split(';').next().unwrap_or_default().trim();
                media.eq_ignore_ascii_case(wanted) || media == "*/*"
            })
        })
    })
}

fn session_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok())
}

fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Refusal> {
    if state.origins.allows(headers.get(header::ORIGIN)) {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::FORBIDDEN,
            INVALID_REQUEST,
            "Forbidden: this Origin is not allowed (configure server.allowed_origins)",
        ))
    }
}

fn find_session(state: &AppState, headers: &HeaderMap) -> Result<Arc<Session>, Refusal> {
    match session_header(headers) {
        None => Err(refuse(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "Bad Request: the Mcp-Session-Id header is required; send initialize first",
        )),
        Some(id) => state.proxy.sessions().get(id).ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                INVALID_REQUEST,
                "Session not found: it expired or was closed; send initialize to start a new one",
            )
        }),
    }
}

async fn post_mcp(
    State(state): State<AppState>,
    note: Option<Extension<AccessNote>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let note = note.map(|Extension(note)| note).unwrap_or_default();
    match post(&state, &headers, body, &note).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

async fn post(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    note: &AccessNote,
) -> Result<Response, Refusal> {
    check_origin(state, headers)?;
    if !(accepts(headers, "application/json") && accepts(headers, "text/event-stream")) {
        return Err(refuse(
            StatusCode::NOT_ACCEPTABLE,
            INVALID_REQUEST,
            "Not Acceptable: the Accept header must list both application/json and text/event-stream",
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
        ));
    }
    if let Some(v) = headers.get(PROTOCOL_VERSION_HEADER) {
        let known = v.to_str().is_ok_and(version::is_known);
        if !known {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                &format!(
                    "Bad Request: unsupported MCP-Protocol-Version {:?}; supported: {}, {}",
                    String::from_utf8_lossy(v.as_bytes()),
                    version::HANDSHAKE_REVISIONS.join(", "),
                    version::STATELESS_REVISION
                ),
            ));
        }
    }
    let body = match axum::body::to_bytes(body, state.max_message_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                &format!(
                    "Payload Too Large: messages are limited to {} bytes (server.max_message_bytes)",
                    state.max_message_bytes
                ),
            ));
        }
    };
    let batch = is_batch(&body);
    let mut messages = parse_body(&body, batch)?;
    note_messages(note, &messages, batch);
    let mut identities = match auth::pre_authenticate(state, headers, &messages).await {
        Ok(identities) => identities,
        Err(refused) => return Ok(refused),
    };
    if let Some(caller) = identities
        .iter()
        .flatten()
        .find_map(|TransportIdentity(identity)| match identity {
            mcp_meter_auth::Identity::Known(known) => Some(&known.caller),
            mcp_meter_auth::Identity::Anonymous => None,
        })
    {
        note.caller(caller);
    }
    if !batch
        && session_header(headers).is_none()
        && let Some(message) = messages.pop_if(|m| {
            !m.is_response()
                && m.method() != Some(methods::INITIALIZE)
                && stateless_revision::is_stateless_request(m, headers)
        })
    {
        let identity = identities.pop().flatten();
        return stateless::post(state, headers, message, identity).await;
    }
    let initialize = messages
        .iter()
        .any(|m| m.method() == Some(methods::INITIALIZE));
    let session = if initialize {
        if batch {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "Bad Request: initialize must be sent alone, not in a batch",
            ));
        }
        if session_header(headers).is_some() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "Bad Request: this session is already initialized; send initialize without Mcp-Session-Id to start a new one",
            ));
        }
        if state.proxy.shutdown_token().is_cancelled() {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                INVALID_REQUEST,
                "mcp-meter is shutting down",
            ));
        }
        match state
            .proxy
            .open_session(TransportKind::Http, Downstream::Http)
        {
            Ok(session) => session,
            Err(full) => {
                return Err(Refusal {
                    retry_after: Some("5"),
                    ..refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        INVALID_REQUEST,
                        &full.to_string(),
                    )
                });
            }
        }
    } else {
        find_session(state, headers)?
    };
    if initialize {
        session.bind_owner(auth::customer_of(
            identities.first().and_then(Option::as_ref),
        ));
    } else if let Some(refused) = auth::owner_mismatch(&session, &identities) {
        return Ok(refused);
    }
    if batch {
        let revision = session
            .protocol_version()
            .map(|v| v.to_string())
            .unwrap_or_else(|| version::DEFAULT_HTTP_REVISION.to_owned());
        if !version::allows_batches(&revision) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                &format!(
                    "Bad Request: JSON-RPC batches are not part of MCP protocol revision {revision}; send one message per request"
                ),
            ));
        }
    }
    let mut requests = Vec::new();
    for (message, identity) in messages.into_iter().zip(identities) {
        if message.is_request() {
            requests.push((message, identity));
        } else if let Err(e) = session.pipe_from_client(message).await {
            tracing::debug!(session = %session.id(), error = %e, "could not relay a client message");
            if requests.is_empty() && !batch {
                return Err(refuse(StatusCode::BAD_GATEWAY, e.code(), &e.to_string()));
            }
        }
    }
    if requests.is_empty() {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    Ok(if batch {
        answer_batch(&session, requests, headers).await
    } else {
        let (request, identity) = requests.remove(0);
        answer_request(state, &session, request, identity, headers, initialize).await
    })
}

/// Tells the access log what the POST carries: the method and tool of a
/// single message, or the size of a batch.
fn note_messages(note: &AccessNote, messages: &[Message], batch: bool) {
    if batch {
        note.batch(messages.len());
    } else if let Some(message) = messages.first() {
        let tool = (message.method() == Some("tools/call"))
            .then(|| McpRequest::new(message.clone()))
            .and_then(|request| request.tool_name().map(str::to_owned));
        note.mcp(message.method(), tool.as_deref());
    }
}

fn parse_body(body: &Bytes, batch: bool) -> Result<Vec<Message>, Refusal> {
    let parse_failure = |e: crate::protocol::EnvelopeError| {
        refuse(StatusCode::BAD_REQUEST, e.code(), &e.to_string())
    };
    if !batch {
        return Message::parse(body.clone())
            .map(|m| vec![m])
            .map_err(parse_failure);
    }
    let items = split_batch(body).map_err(parse_failure)?;
    if items.is_empty() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid request: an empty batch",
        ));
    }
    items
        .into_iter()
        .map(Message::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(parse_failure)
}

fn mcp_request(
    session: &Session,
    message: Message,
    identity: Option<TransportIdentity>,
    headers: &HeaderMap,
) -> McpRequest {
    let mut request = McpRequest::new(message);
    if let Some(identity) = identity {
        request.extensions.insert(identity);
    }
    request.session = SessionInfo {
        id: Some(session.id().clone()),
        transport: TransportKind::Http,
        protocol_version: session.protocol_version(),
    };
    request.credentials.headers = headers.clone();
    request
}

/// Where a single request's rate-limit status is left for the HTTP
/// response's `X-RateLimit-*` headers.
pub(super) type LimitSlot = Arc<OnceLock<RateLimitStatus>>;

/// Runs a request through the stack; a proxy fault becomes its JSON-RPC
/// error. The rate-limit status, if the stack set one, goes to `limits`.
async fn run_stack(
    stack: BoxMcpService,
    request: McpRequest,
    limits: Option<LimitSlot>,
) -> Message {
    let id = request.message.id().cloned();
    match stack.oneshot(request).await {
        Ok(response) => {
            if let (Some(slot), Some(status)) =
                (limits, response.extensions.get::<RateLimitStatus>())
            {
                let _ = slot.set(*status);
            }
            response.message
        }
        Err(error) => match id {
            Some(id) => error.into_response(&id).message,
            None => Message::error_response(None, error.code(), &error.to_string(), None),
        },
    }
}

async fn answer_batch(
    session: &Arc<Session>,
    requests: Vec<(Message, Option<TransportIdentity>)>,
    headers: &HeaderMap,
) -> Response {
    let calls = requests.into_iter().map(|(message, identity)| {
        run_stack(
            session.stack(),
            mcp_request(session, message, identity, headers),
            None,
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    let mut body =
        Vec::with_capacity(answers.iter().map(Message::len).sum::<usize>() + answers.len() + 2);
    body.push(b'[');
    for (i, answer) in answers.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(answer.as_bytes());
    }
    body.push(b']');
    json_response(Bytes::from(body))
}

fn json_response(body: Bytes) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn sse_event(message: &Message) -> Event {
    let line = framing::single_line(message.as_bytes());
    Event::default().data(String::from_utf8_lossy(&line))
}

async fn answer_request(
    state: &AppState,
    session: &Arc<Session>,
    message: Message,
    identity: Option<TransportIdentity>,
    headers: &HeaderMap,
    initialize: bool,
) -> Response {
    let (interim_tx, interim) = mpsc::channel::<Message>(64);
    let mut request = mcp_request(session, message, identity, headers);
    request.extensions.insert(InterimSink(interim_tx));
    let limits = LimitSlot::default();
    let call = Box::pin(run_stack(session.stack(), request, Some(limits.clone())));
    let mut response = match stream_answer(call, interim).await {
        Answered::Json(answer) => {
            if initialize && answer.kind() != crate::protocol::MessageKind::Response {
                // A failed initialize leaves no session behind.
                state.proxy.close_session(session).await;
                return json_response(answer.as_bytes().clone());
            }
            json_response(answer.as_bytes().clone())
        }
        Answered::Stream(response) => response,
    };
    if let (true, Ok(value)) = (initialize, HeaderValue::from_str(session.id().as_str())) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    with_limit_headers(response, &limits)
}

/// Adds `X-RateLimit-*` (and, for a refusal, `Retry-After`) when the call
/// was answered before the response started. A refusal stays a JSON-RPC
/// error in a `200`, so clients keep its `data` (`retry_after_ms`).
pub(super) fn with_limit_headers(mut response: Response, limits: &LimitSlot) -> Response {
    if let Some(status) = limits.get() {
        response.headers_mut().extend(status.headers());
    }
    response
}

/// How the answer to one request goes back to the client.
enum Answered {
    /// Nothing came before the response: one JSON body.
    Json(Message),
    /// Related messages came first: an SSE stream, still running if the
    /// call is.
    Stream(Response),
}

/// Waits for the first thing a call produces. A response with nothing
/// before it is answered as JSON; anything related first (progress, a
/// server→client request) switches to an SSE stream that carries the rest
/// and ends with the response. A client that closes the stream drops the
/// call, which cancels it upstream.
async fn stream_answer(
    mut call: Pin<Box<dyn Future<Output = Message> + Send>>,
    mut interim: mpsc::Receiver<Message>,
) -> Answered {
    let first = tokio::select! {
        biased;
        answer = &mut call => Err(answer),
        Some(first) = interim.recv() => Ok(first),
    };
    match first {
        Err(answer) => {
            let mut before = Vec::new();
            while let Ok(m) = interim.try_recv() {
                before.push(m);
            }
            if before.is_empty() {
                return Answered::Json(answer);
            }
            before.push(answer);
            let events: Vec<Result<Event, Infallible>> =
                before.iter().map(|m| Ok(sse_event(m))).collect();
            Answered::Stream(Sse::new(futures_util::stream::iter(events)).into_response())
        }
        Ok(first) => {
            let (out, out_rx) = mpsc::channel::<Result<Event, Infallible>>(64);
            tokio::spawn(async move {
                if out.send(Ok(sse_event(&first))).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        biased;
                        // The client went away: dropping `call` cancels the
                        // upstream request.
                        _ = out.closed() => return,
                        answer = &mut call => {
                            while let Ok(m) = interim.try_recv() {
                                let _ = out.send(Ok(sse_event(&m))).await;
                            }
                            let _ = out.send(Ok(sse_event(&answer))).await;
                            return;
                        }
                        Some(m) = interim.recv() => {
                            if out.send(Ok(sse_event(&m))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            Answered::Stream(
                Sse::new(receiver_stream(out_rx))
                    .keep_alive(KeepAlive::default())
                    .into_response(),
            )
        }
    }
}

fn receiver_stream<T>(mut rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn get_mcp(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refusal) = check_origin(&state, &headers) {
        return refusal.into_response();
    }
    if !accepts(&headers, "text/event-stream") {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            INVALID_REQUEST,
            "Not Acceptable: GET needs Accept: text/event-stream",
        )
        .into_response();
    }
    let session = match find_session(&state, &headers) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(refused) = auth::check_stream_owner(&state, &headers, &session).await {
        return refused;
    }
    let messages = session.attach_get_stream();
    let shutdown = state.proxy.shutdown_token();
    let closed = session.closed_token();
    let stream = receiver_stream(messages)
        .map(|m| Ok::<_, Infallible>(sse_event(&m)))
        .take_until(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = closed.cancelled() => {}
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn delete_mcp(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refusal) = check_origin(&state, &headers) {
        return refusal.into_response();
    }
    match find_session(&state, &headers) {
        Ok(session) => {
            if let Err(refused) = auth::check_stream_owner(&state, &headers, &session).await {
                return refused;
            }
            state.proxy.close_session(&session).await;
            StatusCode::OK.into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}

async fn healthz() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut gauges = crate::metrics::Gauges {
        sessions: state.proxy.sessions().len(),
        ..Default::default()
    };
    let text = match state.proxy.metrics() {
        Some(metrics) => {
            gauges.usage = metrics.usage_stats();
            if let Some(store) = state.proxy.store() {
                match store.queue_counts().await {
                    Ok(counts) => gauges.queues = counts,
                    Err(error) => {
                        tracing::warn!(%error, "/metrics could not read the queue depths")
                    }
                }
            }
            metrics.render(&gauges)
        }
        None => crate::metrics::Metrics::new(Default::default()).render(&gauges),
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let upstream = state.proxy.upstream_readiness().await;
    let shutting_down = state.proxy.shutdown_token().is_cancelled();
    let mut checks = serde_json::json!({
        "upstream": { "status": if upstream.ready { "ok" } else { "failing" }, "detail": upstream.detail },
        "shutdown": { "status": if shutting_down { "shutting_down" } else { "ok" } },
    });
    let mut database_ok = true;
    if let Some(store) = state.proxy.store() {
        let (status, detail) = match store.ping().await {
            Ok(()) => ("ok", format!("{} answers", store.backend().as_str())),
            Err(e) => {
                database_ok = false;
                ("failing", e.to_string())
            }
        };
        checks["database"] = serde_json::json!({ "status": status, "detail": detail });
        // The payment queues: parked or failed rows wait for the operator;
        // they do not make the proxy unready.
        if let Ok(counts) = store.queue_counts().await {
            for (queue, stuck_status) in [
                ("meter", "parked"),
                ("invoice", "parked"),
                ("webhook", "failed"),
            ] {
                let count = |status: &str| {
                    counts
                        .iter()
                        .find(|(q, s, _)| *q == queue && *s == status)
                        .map_or(0, |(_, _, n)| *n)
                };
                let (pending, stuck) = (count("pending"), count(stuck_status));
                checks[format!("{queue}_queue")] = serde_json::json!({
                    "status": if stuck > 0 { "attention" } else { "ok" },
                    "pending": pending,
                    stuck_status: stuck,
                });
            }
        }
    }
    let ready = upstream.ready && database_ok && !shutting_down;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
        "sessions": state.proxy.sessions().len(),
    });
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
