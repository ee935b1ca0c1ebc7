//! Plans (read-only, from the configuration, with effective prices) and
//! subscriptions: `GET /plans`, `GET /plans/{id}`,
//! `GET /customers/{id}/subscription`, `PUT /customers/{id}/subscription`
//! (set by hand when no payment provider keeps it current).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use mcp_meter_billing::plan::Model;
use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ports::CREDENTIAL_LEASE;
use mcp_meter_plugin::subscription::{Subscription, SubscriptionChange, SubscriptionStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::customers::{customer_id, existing};
use super::error::ApiError;
use super::extract::{ApiJson, time};
use crate::admin::billing::describe;

/// The routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/plans", get(plans))
        .route("/plans/{id}", get(plan))
        .route(
            "/customers/{id}/subscription",
            get(subscription).put(set_subscription),
        )
}

async fn plans(State(state): State<ApiState>) -> Json<Value> {
    let data: Vec<Value> = state.catalog.plans().map(|p| describe(p)).collect();
    Json(json!({ "data": data, "next_cursor": null }))
}

async fn plan(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .catalog
        .plan(&id)
        .map(|p| Json(describe(p)))
        .ok_or_else(|| ApiError::not_found(format!("there is no plan {id:?} in the configuration")))
}

async fn subscription(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Subscription>, ApiError> {
    let id = customer_id(&id)?;
    existing(&state, &id).await?;
    state
        .store
        .subscription(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("customer {id} has no subscription")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionBody {
    plan: String,
    status: String,
    started_at: Option<String>,
    period_start: Option<String>,
    period_end: Option<String>,
    external_id: Option<String>,
}

async fn set_subscription(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SubscriptionBody>,
) -> Result<Json<Subscription>, ApiError> {
    let id = customer_id(&id)?;
    match state.catalog.plan(&body.plan).map(|p| &p.model) {
        Some(Model::Subscription(_)) => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "plan {:?} is a {} plan, not a subscription plan",
                body.plan,
                other.name()
            )));
        }
        None => {
            return Err(ApiError::invalid(format!(
                "there is no plan {:?} in the configuration",
                body.plan
            )));
        }
    }
    let status = SubscriptionStatus::parse(&body.status).ok_or_else(|| {
        ApiError::invalid(format!(
            "`status` {:?} must be active, trialing, past_due, unpaid, canceled, incomplete or paused",
            body.status
        ))
    })?;
    let current_period = match (&body.period_start, &body.period_end) {
        (Some(start), Some(end)) => {
            let (start, end) = (time("period_start", start)?, time("period_end", end)?);
            if end.0 <= start.0 {
                return Err(ApiError::invalid(
                    "`period_end` must be after `period_start`",
                ));
            }
            Some((start, end))
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "give both `period_start` and `period_end`, or neither",
            ));
        }
    };
    existing(&state, &id).await?;
    let change = SubscriptionChange {
        customer_id: id,
        plan_id: body.plan,
        status,
        started_at: body
            .started_at
            .as_deref()
            .map(|t| time("started_at", t))
            .transpose()?,
        current_period,
        external_id: body.external_id,
        at: UnixMillis::now(),
        provider_event_at: None,
    };
    let subscription = state.store.set_subscription(&change).await?;
    // The customer's plan moved: instances may act on the plan they read up
    // to a lease ago.
    tokio::time::sleep(CREDENTIAL_LEASE).await;
    Ok(Json(subscription))
}
