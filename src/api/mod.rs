//! The management API under `/api/v1` on the proxy's listener, when
//! `[api]` is configured: customers and their API keys, plans, credits and
//! the ledger, subscriptions, usage, the queues for the payment provider,
//! and, with a customer's own key, `/api/v1/me`.
//!
//! * [`config`]: the `[api]` section.
//! * [`auth`]: admin tokens (constant-time) and the customer of `/me`.
//! * [`extract`]: queries, JSON bodies, times and cursor pages, refused in
//!   the one error shape of [`error`].
//! * [`customers`], [`credits`], [`usage`], [`export`], [`billing`],
//!   [`queues`], [`analytics`], [`me`]: the routes.
//! * [`openapi`]: the OpenAPI 3.1 document of them all, derived from the
//!   handlers, served at `/api/v1/openapi.json`.
//!
//! JSON in and out; errors are `{"error": {"code", "message"}}`; lists are
//! `{"data": […], "next_cursor": …}` with `limit` (1 to 1000, default
//! 100) and `cursor`.

pub mod analytics;
pub mod auth;
pub mod billing;
pub mod config;
pub mod credits;
pub mod customers;
pub mod error;
pub mod export;
pub mod extract;
pub mod me;
pub mod openapi;
pub mod queues;
pub mod usage;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use mcp_meter_auth::Authenticator;
use mcp_meter_billing::Catalog;
use utoipa_axum::router::OpenApiRouter;

pub use config::ApiConfig;

use crate::store::Store;

/// What the routes share.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The plans, checked.
    pub catalog: Arc<Catalog>,
    /// The admin tokens.
    pub admin_tokens: Arc<Vec<String>>,
    /// Identifies customers on `/me` (the auth plugin's), and verifies
    /// admin JWTs.
    pub authenticator: Option<Arc<Authenticator>>,
    /// Admin JWTs: the claim and the role it must hold.
    pub admin_jwt: Option<(String, String)>,
}

/// Only the customers' routes (`/api/v1/me…`), for the proxy's listener
/// when the admin routes have a listener of their own.
pub fn me_router(state: ApiState, max_body_bytes: usize) -> Router {
    Router::new()
        .nest("/api/v1", Router::from(me::routes()))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The routes behind the admin token (each documented where it is
/// registered).
fn admin_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .merge(customers::routes())
        .merge(credits::routes())
        .merge(usage::routes())
        .merge(export::routes())
        .merge(billing::routes())
        .merge(queues::routes())
        .merge(analytics::routes())
}

/// The API's routes under `/api/v1`, for `state`, with bodies limited to
/// `max_body_bytes`.
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    let admin = Router::from(admin_routes()).route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_admin,
    ));
    Router::new()
        .nest(
            "/api/v1",
            admin
                .merge(Router::from(me::routes()))
                .merge(Router::from(openapi::routes()))
                .fallback(|| async {
                    error::ApiError::not_found(
                        "there is no such API route; see /api/v1 in the README",
                    )
                }),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
