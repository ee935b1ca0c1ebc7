//! Self-service with the customer's own API key (or JWT): `GET /me` (plan,
//! balance, subscription, and the billing status of `[billing]
//! status_tool`) and `GET /me/usage` (their usage records, paged
//! and filtered like `/usage`). Opening a checkout is
//! `POST /api/v1/me/checkout` (see the Stripe module).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use mcp_meter_billing::{BillingStatus, billing_status};
use mcp_meter_plugin::identity::{CustomerId, CustomerStatus};
use mcp_meter_plugin::ports::{UsageOutcome, UsageRecord};
use mcp_meter_plugin::subscription::Subscription;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::auth::customer;
use super::billing::PlanView;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, Page};
use super::usage::{UsageQuery, page};

/// The routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(usage))
}

/// What a customer sees of their account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// Who.
    pub customer: MeCustomer,
    /// The plan its calls are billed on (its own or `[billing] default_plan`),
    /// when that plan is configured.
    pub plan: Option<PlanView>,
    /// Prepaid credits.
    pub balance: i64,
    /// The subscription, if any.
    pub subscription: Option<Subscription>,
    /// Where the customer stands under the plan their calls are billed
    /// on (their own, or `[billing] default_plan`): balance, quota and
    /// period, as the `[billing] status_tool` tells it.
    pub billing: BillingStatus,
}

/// The customer's own record, as they see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeCustomer {
    /// Their id.
    pub id: CustomerId,
    /// Display name.
    pub name: String,
    /// Contact email.
    pub email: Option<String>,
    /// Active or suspended.
    pub status: CustomerStatus,
    /// The plan they are on.
    pub plan_id: Option<String>,
}

#[utoipa::path(get, path = "/me", tag = "self-service",
    summary = "The calling customer's plan, balance and subscription",
    responses(
        (status = 200, description = "The account", body = Me),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn me(State(state): State<ApiState>, headers: HeaderMap) -> Result<Json<Me>, ApiError> {
    let customer = customer(state.authenticator.as_deref(), &headers).await?;
    let balance = state.store.balance(&customer.id).await?;
    let subscription = state.store.subscription(&customer.id).await?;
    let store = state.store.as_ref();
    let now = mcp_meter_plugin::identity::UnixMillis::now();
    let billing = billing_status(&state.catalog, store, store, &customer, now).await?;
    // The plan its calls are billed on: its own, or the default plan.
    let plan = state
        .catalog
        .plan_for(customer.plan_id.as_deref())
        .ok()
        .flatten()
        .map(|p| PlanView::of(p));
    Ok(Json(Me {
        customer: MeCustomer {
            id: customer.id,
            name: customer.name,
            email: customer.email,
            status: customer.status,
            plan_id: customer.plan_id,
        },
        plan,
        balance,
        subscription,
        billing,
    }))
}

#[utoipa::path(get, path = "/me/usage", tag = "self-service",
    summary = "The calling customer's usage records, oldest first",
    params(
        ("tool" = Option<String>, Query, description = "Only calls of this tool."),
        ("outcome" = Option<UsageOutcome>, Query, description = "Only calls that ended so."),
        ("since" = Option<String>, Query, format = DateTime, description = "From this time on (inclusive, RFC 3339)."),
        ("until" = Option<String>, Query, format = DateTime, description = "Before this time (exclusive, RFC 3339; after `since`)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Records per page (default 100)."),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of the customer's usage records", body = Page<UsageRecord>),
        (status = 400, description = "A bad filter, `limit` or `cursor` (or a `customer`: it is always your own)", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]

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
