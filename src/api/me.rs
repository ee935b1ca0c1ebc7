//! Self-service with the customer's own API key (or JWT): `GET /me` (plan,
//! balance, subscription, and the billing status of `[billing]
//! status_tool`) and `GET /me/usage` (their usage records, paged
//! and filtered like `/usage`). Opening a checkout is
//! `POST /api/v1/me/checkout` (see the Stripe module).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use mcp_meter_billing::billing_status;
use mcp_meter_plugin::ports::UsageRecord;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::customer;
use super::error::ApiError;
use super::extract::{ApiQuery, Page};
use super::usage::{UsageQuery, page};
use crate::admin::billing::describe;

/// The routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/me", get(me))
        .route("/me/usage", get(usage))
}

async fn me(State(state): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let customer = customer(state.authenticator.as_deref(), &headers).await?;
    let balance = state.store.balance(&customer.id).await?;
    let subscription = state.store.subscription(&customer.id).await?;
    let store = state.store.as_ref();
    let now = mcp_meter_plugin::identity::UnixMillis::now();
    let billing = billing_status(&state.catalog, store, store, &customer, now).await?;
    let plan = customer
        .plan_id
        .as_deref()
        .and_then(|id| state.catalog.plan(id))
        .map(|p| describe(p));
    Ok(Json(json!({
        "customer": {
            "id": customer.id,
            "name": customer.name,
            "email": customer.email,
            "status": customer.status,
            "plan_id": customer.plan_id,
        },
        "plan": plan,
        "balance": balance,
        "subscription": subscription,
        "billing": billing,
    })))
}

async fn usage(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<Page<UsageRecord>>, ApiError> {
    let customer = customer(state.authenticator.as_deref(), &headers).await?;
    if query.has_customer() {
        return Err(ApiError::invalid(
            "`customer` is not a parameter of /me/usage: it is always your own",
        ));
    }
    Ok(Json(
        page(&state, &query, Some(customer.id.as_str())).await?,
    ))
}
