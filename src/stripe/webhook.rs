//! `POST /webhooks/stripe`: receives Stripe's events.
//!
//! The raw body (at most [`MAX_BODY_BYTES`]; more is `413`) is checked
//! against the `Stripe-Signature` header before anything parses it; a
//! refusal is `400` with `{"error": {"code": "invalid_signature", "message":
//! …}}` and nothing is stored. Then only `id`, `type` and `created` are
//! read (`400` `malformed` otherwise), the event is stored once by its id,
//! and the answer is `200 {"received": true, "duplicate": …}` at once; the
//! worker applies it in the background. A store that does not answer is
//! `503`, so Stripe delivers the event again later. Without `[stripe]` the
//! endpoint answers `404` (`not_configured`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use mcp_meter_plugin::identity::UnixMillis;
use serde_json::{Value, json};

use super::StripeRuntime;
use super::signature::{self, SignatureError};
use crate::store::NewWebhookEvent;

/// The path of the endpoint.
pub const PATH: &str = "/webhooks/stripe";

/// The largest body accepted (Stripe's events are far smaller).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The longest event id or type accepted.
const MAX_ID_CHARS: usize = 255;

/// The endpoint's state: the Stripe runtime, or nothing when `[stripe]` is
/// not configured.
#[derive(Clone)]
struct Endpoint(Option<Arc<StripeRuntime>>);

/// The endpoint's routes, served by `runtime` (`None`: answers `404`).
pub fn routes(runtime: Option<Arc<StripeRuntime>>) -> Router {
    Router::new()
        .route(PATH, post(receive))
        .with_state(Endpoint(runtime))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": { "code": code, "message": message } }).to_string(),
    )
        .into_response()
}

/// The part of an event the endpoint reads.
#[derive(Debug, PartialEq, Eq)]
struct Envelope {
    id: String,
    event_type: String,
    created: i64,
}

/// Reads `id`, `type` and `created` from a verified body.
fn envelope(body: &[u8]) -> Result<Envelope, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.chars().count() <= MAX_ID_CHARS)
            .map(str::to_owned)
            .ok_or_else(|| {
                format!("the event has no `{name}` (a string of 1 to {MAX_ID_CHARS} characters)")
            })
    };
    let id = field("id")?;
    let event_type = field("type")?;
    let created = value
        .get("created")
        .and_then(Value::as_i64)
        .filter(|t| (0..=i64::MAX / 1000 - 1000).contains(t))
        .ok_or_else(|| "the event has no `created` (Unix seconds)".to_owned())?;
    Ok(Envelope {
        id,
        event_type,
        created,
    })
}

async fn receive(State(endpoint): State<Endpoint>, headers: HeaderMap, body: Body) -> Response {
    let Some(runtime) = endpoint.0 else {
        return error(
            StatusCode::NOT_FOUND,
            "not_configured",
            "Stripe is not configured on this mcp-meter: add a [stripe] section with \
             webhook_secrets to accept Stripe webhooks",
        );
    };
    runtime.ensure_worker();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    let stripe = runtime.processor.config();
    let header = match headers.get(signature::HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            return refused(&SignatureError::Malformed(
                "it has characters that are not visible ASCII".into(),
            ));
        }
    };
    let now = UnixMillis::now();
    if let Err(refusal) = signature::verify(
        header,
        &body,
        &stripe.webhook_secrets,
        Duration::from_secs(stripe.webhook_tolerance_secs),
        now.0.div_euclid(1000),
    ) {
        return refused(&refusal);
    }
    let envelope = match envelope(&body) {
        Ok(envelope) => envelope,
        Err(reason) => return error(StatusCode::BAD_REQUEST, "malformed", &reason),
    };
    let Ok(payload) = String::from_utf8(body.to_vec()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed",
            "the body is not UTF-8 text",
        );
    };
    let new = NewWebhookEvent {
        id: envelope.id,
        event_type: envelope.event_type,
        created: envelope.created,
        payload,
        received_at: now,
    };
    match runtime.store.insert_webhook_event(&new).await {
        Ok(stored) => {
            if stored {
                tracing::debug!(event = %new.id, r#type = %new.event_type, "Stripe event stored");
                runtime.wake.notify_one();
            } else {
                tracing::debug!(event = %new.id, "Stripe event delivered again; already stored");
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json!({ "received": true, "duplicate": !stored }).to_string(),
            )
                .into_response()
        }
        Err(store_error) => {
            tracing::warn!(event = %new.id, error = %store_error, "could not store a Stripe event; Stripe will deliver it again");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event could not be stored (the database did not answer; see mcp-meter's \
                 log); deliver it again later",
            )
        }
    }
}

fn refused(refusal: &SignatureError) -> Response {
    tracing::warn!(reason = %refusal, "refused a Stripe webhook delivery");
    error(
        StatusCode::BAD_REQUEST,
        "invalid_signature",
        &refusal.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_read_from_an_event() {
        let body = br#"{"id":"evt_1","object":"event","type":"invoice.paid","created":1767225600,"data":{"object":{}}}"#;
        assert_eq!(
            envelope(body),
            Ok(Envelope {
                id: "evt_1".into(),
                event_type: "invoice.paid".into(),
                created: 1_767_225_600,
            })
        );
    }

    #[test]
    fn a_body_that_is_not_an_event_is_malformed() {
        for (body, says) in [
            (&b"not json"[..], "not JSON"),
            (br#"[1]"#, "no `id`"),
            (br#"{"id":"","object":"event"}"#, "no `id`"),
            (
                br#"{"id":"evt_1","object":"event","created":1}"#,
                "no `type`",
            ),
            (
                br#"{"id":"evt_1","object":"event","type":"x","created":"1"}"#,
                "no `created`",
            ),
            (
                br#"{"id":"evt_1","object":"event","type":"x","created":-5}"#,
                "no `created`",
            ),
        ] {
            let reason = envelope(body).expect_err("malformed");
            assert!(reason.contains(says), "{reason}");
        }
    }
}
