//! Stateless (2026-07-28) requests on the HTTP endpoint: no session, each
//! `POST` self-contained.
//!
//! Every request first passes the validation ladder of
//! [`crate::protocol::stateless::check`] (envelope present, headers agree
//! with the body, version supported), so no plugin ever reads a header the
//! body contradicts. It then runs through the same plugin stack as session
//! requests (with `session.id = None`) and is answered with JSON, or with an
//! SSE stream when the upstream sends notifications first (progress,
//! `subscriptions/listen`). Closing that stream cancels the call upstream.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mcp_meter_auth::TransportIdentity;
use mcp_meter_plugin::{McpRequest, SessionInfo, TransportKind};
use tokio::sync::mpsc;

use super::{Answered, AppState, LimitSlot, Refusal, run_stack, stream_answer, with_limit_headers};
use crate::engine::{InterimSink, UpstreamHeaders};
use crate::protocol::stateless::{self as revision, Rejection};
use crate::protocol::{Message, RequestId};

/// Answers one stateless request or notification.
pub(super) async fn post(
    state: &AppState,
    headers: &HeaderMap,
    message: Message,
    identity: Option<TransportIdentity>,
) -> Result<Response, Refusal> {
    if message.is_notification() {
        // This revision defines no client→server notifications on HTTP
        // (cancellation is closing the stream); an HTTP upstream decides
        // for itself, anything else is acknowledged.
        if let Err(e) = state.proxy.stateless_notify(&message, headers).await {
            tracing::debug!(error = %e, "stateless notification not relayed");
        }
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let route = match revision::check(&message, headers) {
        Ok(route) => route,
        Err(rejection) => return Ok(rejected(message.id(), &rejection)),
    };
    let (interim_tx, interim) = mpsc::channel::<Message>(64);
    let mut request = McpRequest::new(message);
    request.session = SessionInfo {
        id: None,
        transport: TransportKind::Http,
        protocol_version: Some(route.protocol_version.into()),
    };
    request.credentials.headers = headers.clone();
    if let Some(identity) = identity {
        request.extensions.insert(identity);
    }
    request.extensions.insert(InterimSink(interim_tx));
    request
        .extensions
        .insert(UpstreamHeaders(forwarded_headers(headers)));
    let limits = LimitSlot::default();
    let call = Box::pin(run_stack(
        state.proxy.stateless_stack(),
        request,
        Some(limits.clone()),
    ));
    let response = match stream_answer(call, interim).await {
        Answered::Json(answer) => {
            let status = answer
                .error_code()
                .map_or(StatusCode::OK, revision::http_status_for);
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                answer.as_bytes().clone(),
            )
                .into_response()
        }
        Answered::Stream(response) => response,
    };
    Ok(with_limit_headers(response, &limits))
}

/// The client's headers that travel to an HTTP upstream with the request.
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| revision::is_forwarded_header(name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// A request the ladder refused: its JSON-RPC error with the request's id,
/// and the HTTP status the specification gives the code.
fn rejected(id: Option<&RequestId>, rejection: &Rejection) -> Response {
    let body = Message::error_response(
        id,
        rejection.code,
        &rejection.message,
        rejection.data.as_ref(),
    );
    (
        revision::http_status_for(rejection.code),
        [(header::CONTENT_TYPE, "application/json")],
        body.as_bytes().clone(),
    )
        .into_response()
}
