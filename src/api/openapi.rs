//! The API's OpenAPI 3.1 document, `GET /api/v1/openapi.json` (no
//! authentication: it describes the routes and holds no data).
//!
//! It is derived from the code, never written by hand: each route's
//! `#[utoipa::path]` sits on its handler and is registered with the router
//! by the same `routes!` call that documents it, the schemas are derived
//! from the types the handlers take and return, and the admin routes'
//! security (and the 401/403 their middleware answers) is added here to
//! exactly the routes [`super::router`] puts behind it.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi as _;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;

/// The security scheme of the admin routes: one of `[api] admin_tokens`
/// (or an admin JWT).
pub const ADMIN_SCHEME: &str = "admin_token";

/// The security scheme of `/me…`: the customer's own API key (or JWT).
pub const CUSTOMER_SCHEME: &str = "customer_key";

/// The document's head: what the routes do not say themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "mcp-meter management API",
        description = "Customers and their API keys, plans, credits and the ledger, \
subscriptions, usage, exports, analytics and the payment provider's queues; `/me` for a \
customer's own key. JSON in and out; every error is `{\"error\": {\"code\", \"message\"}}`; \
lists are `{\"data\": [...], \"next_cursor\": ...}` with `limit` and `cursor`; JSON bodies \
with unknown fields are refused.",
    ),
    components(schemas(super::error::ErrorBody)),
    tags(
        (name = "customers", description = "Customers and their API keys"),
        (name = "credits", description = "Prepaid credits and the ledger"),
        (name = "usage", description = "Usage records and daily roll-ups"),
        (name = "export", description = "Whole tables as files"),
        (name = "billing", description = "Plans and subscriptions"),
        (name = "queues", description = "What waits for the payment provider"),
        (name = "analytics", description = "Revenue, usage and customers over a range"),
        (name = "self-service", description = "A customer's own account, with their API key"),
        (name = "meta", description = "This document"),
    )
)]
struct Head;

/// `POST /me/checkout`, which the Stripe module serves (it needs the
/// payment provider, not the API's state).
#[derive(utoipa::OpenApi)]
#[openapi(paths(crate::stripe::pay::me_checkout))]
struct Checkout;

/// The route serving the document (public).
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// The whole document: the admin routes, `/me…` and this document's own
/// route, under `/api/v1`, each with its security.
pub fn document() -> OpenApi {
    let mut admin = super::admin_routes().into_openapi();
    secure(&mut admin, ADMIN_SCHEME, &admin_refusals());
    let mut me = super::me::routes().into_openapi();
    // Served by the Stripe module on the proxy's listener, beside `/me`.
    me.merge(Checkout::openapi());
    secure(&mut me, CUSTOMER_SCHEME, &customer_refusals());
    let mut all = admin;
    all.merge(me);
    all.merge(routes().into_openapi());
    let mut document = Head::openapi().nest("/api/v1", all);
    let components = document.components.get_or_insert_with(Default::default);
    for name in [ADMIN_SCHEME, CUSTOMER_SCHEME] {
        let description = if name == ADMIN_SCHEME {
            "One of `[api] admin_tokens` (or an admin JWT): `Authorization: Bearer <token>`"
        } else {
            "The customer's own API key (`mcp_…`) or JWT: `Authorization: Bearer mcp_…`"
        };
        components.add_security_scheme(
            name,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            ),
        );
    }
    document
}

/// An error answer with `description`.
fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// What the admin middleware ([`super::auth::require_admin`]) answers.
fn admin_refusals() -> Vec<(&'static str, RefOr<utoipa::openapi::Response>)> {
    vec![
        ("401", error("No admin token, or not a valid one")),
        (
            "403",
            error("A customer API key: customers have /api/v1/me"),
        ),
    ]
}

/// What identifying the customer of `/me` ([`super::auth::customer`])
/// answers.
fn customer_refusals() -> Vec<(&'static str, RefOr<utoipa::openapi::Response>)> {
    vec![
        ("401", error("No API key, or not a valid one")),
        (
            "403",
            error("The customer is suspended, or the key may not do this"),
        ),
        (
            "404",
            error("`not_configured`: self-service needs the auth plugin"),
        ),
        ("503", error("The credentials cannot be checked right now")),
    ]
}

/// Requires `scheme` on every operation of `api` and adds the answers
/// `refusals` the check can give (an operation's own answer for the same
/// status is kept).
fn secure(
    api: &mut OpenApi,
    scheme: &str,
    refusals: &[(&'static str, RefOr<utoipa::openapi::Response>)],
) {
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            secure_operation(operation, scheme, refusals);
        }
    }
}

fn secure_operation(
    operation: &mut Operation,
    scheme: &str,
    refusals: &[(&'static str, RefOr<utoipa::openapi::Response>)],
) {
    operation.security = Some(vec![SecurityRequirement::new::<_, _, &str>(scheme, [])]);
    for (status, response) in refusals {
        operation
            .responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| response.clone());
    }
}

/// The document as served, made once.
fn served() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        document().to_json().unwrap_or_else(|error| {
            tracing::error!(%error, "the OpenAPI document could not be encoded");
            String::from("{}")
        })
    })
}

/// The document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    summary = "This OpenAPI 3.1 document (no authentication)",
    security(()),
    responses(
        (status = 200, description = "The document", content_type = "application/json",
            body = Object),
    ))]
async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        served(),
    )
        .into_response()
}
