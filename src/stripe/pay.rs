//! The routes that open Checkout for a customer:
//!
//! * `GET /pay/<token>`: a payment link from a refusal. Checks the token
//!   (`400` if it is not one of ours, `410` once expired), creates the
//!   Checkout Session and answers `303 See Other` to it. The session is
//!   created with an idempotency key derived from the token, so opening
//!   the link twice (a reload, two clicks) leads to the same session.
//! * `POST /api/v1/me/checkout` with the customer's own API key (or JWT):
//!   `{"pack": "<credit pack id>"}` or `{"plan": "<plan id>"}` answers
//!   `200 {"id": "cs_…", "url": "https://checkout.stripe.com/…", "item":
//!   "pack:…"}`. An `Idempotency-Key` header makes a retry return the same
//!   session. Errors are `{"error": {"code", "message"}}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mcp_meter_auth::Authenticator;
use mcp_meter_plugin::identity::UnixMillis;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::StripeRuntime;
use super::checkout::CheckoutError;
use super::config::CheckoutItem;
use super::pay_link::{PayLinkError, token_digest};

/// The path of the self-service checkout route.
pub const ME_CHECKOUT_PATH: &str = "/api/v1/me/checkout";

/// The largest request body of `POST /api/v1/me/checkout`.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 200;

#[derive(Clone)]
pub(crate) struct PayState {
    stripe: Option<Arc<StripeRuntime>>,
    authenticator: Option<Arc<Authenticator>>,
}

/// The routes, served by `stripe` (`None`: they answer `404`), with
/// customers identified by `authenticator`.
pub fn routes(
    stripe: Option<Arc<StripeRuntime>>,
    authenticator: Option<Arc<Authenticator>>,
) -> Router {
    Router::new()
        .route("/pay/{token}", get(open_link))
        .route(ME_CHECKOUT_PATH, post(me_checkout))
        .with_state(PayState {
            stripe,
            authenticator,
        })
}

fn text(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": { "code": code, "message": message } }).to_string(),
    )
        .into_response()
}

/// The status, code and message for a checkout that failed.
fn checkout_failure(error: &CheckoutError) -> (StatusCode, &'static str, String) {
    match error {
        CheckoutError::NotConfigured => {
            (StatusCode::NOT_FOUND, "not_configured", error.to_string())
        }
        CheckoutError::UnknownItem(_) => {
            (StatusCode::BAD_REQUEST, "unknown_item", error.to_string())
        }
        CheckoutError::NoSuchCustomer(_) => {
            (StatusCode::NOT_FOUND, "no_such_customer", error.to_string())
        }
        CheckoutError::Store(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is not answering; try again in a moment".to_owned(),
        ),
        CheckoutError::Stripe(stripe) if stripe.is_retryable() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "stripe_unavailable",
            format!("Stripe is not answering; try again in a moment ({stripe})"),
        ),
        CheckoutError::Stripe(stripe) => (
            StatusCode::BAD_GATEWAY,
            "stripe_error",
            format!("Stripe refused the checkout: {stripe}"),
        ),
    }
}

async fn open_link(State(state): State<PayState>, Path(token): Path<String>) -> Response {
    let Some((links, checkout)) = state
        .stripe
        .as_deref()
        .and_then(|s| Some((s.pay_links()?, s.checkout()?)))
    else {
        return text(
            StatusCode::NOT_FOUND,
            "Payment links are not configured on this server.",
        );
    };
    let link = match links.verify(&token, UnixMillis::now().0 / 1000) {
        Ok(link) => link,
        Err(error @ PayLinkError::Expired) => return text(StatusCode::GONE, &error.to_string()),
        Err(error @ PayLinkError::Invalid) => {
            return text(StatusCode::BAD_REQUEST, &error.to_string());
        }
    };
    let customer = mcp_meter_plugin::identity::CustomerId::new(link.customer.clone());
    let key = format!("mcp-meter-pay-{}", token_digest(&token));
    match checkout.open(&customer, &link.item, Some(&key)).await {
        Ok(session) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, session.url)],
            Body::empty(),
        )
            .into_response(),
        Err(CheckoutError::UnknownItem(_)) => text(
            StatusCode::GONE,
            "What this link offered is no longer sold; make the call again to get a new link.",
        ),
        Err(error) => {
            let (status, _, message) = checkout_failure(&error);
            tracing::warn!(customer = %customer, %error, "a payment link could not be opened");
            text(status, &message)
        }
    }
}

/// The body of `POST /api/v1/me/checkout`: one of the two.
/// What to buy: exactly one of a credit pack or a subscription plan.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// A credit pack of `[stripe] credit_packs`.
    pack: Option<String>,
    /// A plan with a Stripe price (a subscription).
    plan: Option<String>,
}

/// An opened Checkout Session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckoutSession {
    /// Stripe's session id (`cs_…`).
    id: String,
    /// Where the customer pays.
    url: String,
    /// What is bought: `pack:<id>` or `plan:<id>`.
    item: String,
}

#[utoipa::path(post, path = "/me/checkout", tag = "self-service",
    summary = "Open a Stripe Checkout Session for a credit pack or a plan",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 200,
            description = "The same key (for the same customer) gives the same session."),
    ),
    request_body = CheckoutBody,
    responses(
        (status = 200, description = "The session: send the customer to `url`", body = CheckoutSession),
        (status = 400, description = "A bad body or Idempotency-Key, or an unknown pack or plan", body = crate::api::error::ErrorBody),
        (status = 404, description = "`not_configured`: Stripe checkout is not configured on this server", body = crate::api::error::ErrorBody),
        (status = 413, description = "The body is over 16 KiB", body = crate::api::error::ErrorBody),
        (status = 502, description = "Stripe refused the session", body = crate::api::error::ErrorBody),
        (status = 503, description = "Stripe or the database is not answering", body = crate::api::error::ErrorBody),
    ))]
pub(crate) async fn me_checkout(
    State(state): State<PayState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Who asks, first: an anonymous caller learns nothing of the set-up.
    let customer = match crate::api::auth::customer(state.authenticator.as_deref(), &headers).await
    {
        Ok(customer) => customer,
        Err(error) => return error.into_response(),
    };
    let Some(checkout) = state.stripe.as_ref().and_then(|s| s.checkout()) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_configured",
            "Stripe checkout is not configured on this server",
        );
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    let request: CheckoutBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!(
                    "the body must be {{\"pack\": \"<credit pack id>\"}} or {{\"plan\": \"<plan id>\"}}: {error}"
                ),
            );
        }
    };
    let item = match (request.pack, request.plan) {
        (Some(pack), None) => CheckoutItem::Pack(pack),
        (None, Some(plan)) => CheckoutItem::Plan(plan),
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "name exactly one of `pack` (a credit pack) or `plan` (a subscription plan)",
            );
        }
    };
    if let Err(error) = checkout.check_item(&item) {
        return json_error(StatusCode::BAD_REQUEST, "unknown_item", &error.to_string());
    }
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => {
            // Hashed with the customer: keys of two customers never meet,
            // and the key sent to Stripe stays short.
            Some(format!(
                "mcp-meter-me-{}",
                token_digest(&format!("{}\n{key}", customer.id))
            ))
        }
        Some(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            );
        }
    };
    match checkout.open(&customer.id, &item, key.as_deref()).await {
        Ok(session) => axum::Json(CheckoutSession {
            id: session.id,
            url: session.url,
            item: item.to_string(),
        })
        .into_response(),
        Err(error) => {
            let (status, code, message) = checkout_failure(&error);
            json_error(status, code, &message)
        }
    }
}
