//! Credentials on the HTTP endpoint, checked before a session exists: a
//! request without a valid credential is answered `401` with
//! `WWW-Authenticate` (and `403` / `503` for the other auth refusals), so no
//! session, no upstream child and no upstream call is ever made for it. What
//! passes travels into the stack as a [`TransportIdentity`], so the auth
//! layer does not look the credential up a second time.
//!
//! With an authorization server configured, the protected-resource metadata
//! document (RFC 9728) is served at `/.well-known/oauth-protected-resource`
//! (and with the endpoint's path appended), as the MCP authorization
//! specification asks.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mcp_meter_auth::{AuthFailure, Identity, TransportIdentity};
use mcp_meter_plugin::Credentials;
use mcp_meter_plugin::identity::CustomerId;

use super::AppState;
use crate::engine::Session;
use crate::protocol::{INVALID_REQUEST, Message};

/// The customer an identity names, if any.
pub(super) fn customer_of(identity: Option<&TransportIdentity>) -> Option<CustomerId> {
    match identity {
        Some(TransportIdentity(Identity::Known(known))) => Some(known.caller.customer.id.clone()),
        _ => None,
    }
}

/// The `403` for a request on a session opened with another customer's
/// credential, if it is one. A session belongs to the customer who opened
/// it: a session id is not a credential, and one customer's calls never run,
/// or are charged, in another's session.
pub(super) fn owner_mismatch(
    session: &Session,
    identities: &[Option<TransportIdentity>],
) -> Option<Response> {
    let owner = session.owner()?;
    let foreign = identities
        .iter()
        .filter_map(|identity| customer_of(identity.as_ref()))
        .any(|customer| &customer != owner);
    foreign.then(|| {
        tracing::warn!(session = %session.id(), "a credential of another customer was used on a session");
        owner_refusal()
    })
}

/// `GET` and `DELETE` on a session opened with a credential need a
/// credential of the same customer.
pub(super) async fn check_stream_owner(
    state: &AppState,
    headers: &HeaderMap,
    session: &Session,
) -> Result<(), Response> {
    let (Some(owner), Some(authenticator)) = (session.owner(), state.proxy.authenticator()) else {
        return Ok(());
    };
    let credentials = Credentials {
        headers: headers.clone(),
        api_key: None,
    };
    // Not a JSON-RPC method: never public, so a credential is required.
    match authenticator
        .identify(&credentials, "GET/DELETE /mcp")
        .await
    {
        Ok(Identity::Known(known)) if &known.caller.customer.id == owner => Ok(()),
        Ok(_) => Err(owner_refusal()),
        Err(failure) => Err(refusal_without_id(
            &failure,
            authenticator.resource_metadata_url(),
        )),
    }
}

fn owner_refusal() -> Response {
    let body = Message::error_response(
        None,
        mcp_meter_auth::CODE_FORBIDDEN,
        "this session belongs to another customer; start a session with your own credential",
        Some(&serde_json::json!({ "reason": "session_owner_mismatch" })),
    );
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "application/json")],
        body.as_bytes().clone(),
    )
        .into_response()
}

fn refusal_without_id(failure: &AuthFailure, metadata_url: Option<&str>) -> Response {
    let placeholder = Message::error_response(None, INVALID_REQUEST, "", None);
    refusal(failure, &placeholder, metadata_url)
}

/// The identity of each message of a POST (in order; `None` for responses
/// and notifications, or when no auth plugin is configured), or the HTTP
/// refusal for the first request that fails.
pub(super) async fn pre_authenticate(
    state: &AppState,
    headers: &HeaderMap,
    messages: &[Message],
) -> Result<Vec<Option<TransportIdentity>>, Response> {
    let Some(authenticator) = state.proxy.authenticator() else {
        return Ok(messages.iter().map(|_| None).collect());
    };
    let credentials = Credentials {
        headers: headers.clone(),
        api_key: None,
    };
    let mut identities = Vec::with_capacity(messages.len());
    for message in messages {
        if !message.is_request() {
            identities.push(None);
            continue;
        }
        let method = message.method().unwrap_or_default();
        match authenticator.identify(&credentials, method).await {
            Ok(identity) => identities.push(Some(TransportIdentity(identity))),
            Err(failure) => {
                tracing::info!(
                    method,
                    reason = failure.reason,
                    "HTTP request refused by auth"
                );
                return Err(refusal(
                    &failure,
                    message,
                    authenticator.resource_metadata_url(),
                ));
            }
        }
    }
    Ok(identities)
}

/// The HTTP answer for an auth refusal: its status, `WWW-Authenticate` for
/// 401/403, `Retry-After` for 503, and the JSON-RPC error as the body.
fn refusal(failure: &AuthFailure, message: &Message, metadata_url: Option<&str>) -> Response {
    let data = serde_json::json!({ "reason": failure.public_reason });
    let body = Message::error_response(message.id(), failure.code(), &failure.message, Some(&data));
    let status = StatusCode::from_u16(failure.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.as_bytes().clone(),
    )
        .into_response();
    if let Some(challenge) = failure
        .www_authenticate(metadata_url)
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// `GET /.well-known/oauth-protected-resource[/…]`: the metadata document,
/// or 404 when no authorization server is configured.
pub(super) async fn protected_resource_metadata(State(state): State<AppState>) -> Response {
    match state
        .proxy
        .authenticator()
        .and_then(|a| a.resource_metadata())
    {
        Some(document) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            document.to_string(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
