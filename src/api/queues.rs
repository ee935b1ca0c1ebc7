//! What waits for the payment provider: the meter outbox
//! (`GET /outbox`, `POST /outbox/{id}/retry`), per-call plans' invoice
//! items (`GET /invoices`, `POST /invoices/{id}/retry`), and Stripe's
//! webhook events (`GET /webhook-events`, `GET /webhook-events/{id}`,
//! `POST /webhook-events/{id}/retry` for one that `failed`).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::outbox::{MeterEvent, OutboxFilter, OutboxStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::customers::customer_id;
use super::error::ApiError;
use super::extract::{ApiQuery, Page, limit, position};
use crate::store::{InvoiceItemRow, WebhookEvent, WebhookFilter, WebhookStatus};

/// The routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/outbox", get(outbox))
        .route("/outbox/{id}/retry", post(retry_meter_event))
        .route("/invoices", get(invoices))
        .route("/invoices/{id}/retry", post(retry_invoice))
        .route("/webhook-events", get(webhook_events))
        .route("/webhook-events/{id}", get(webhook_event))
        .route("/webhook-events/{id}/retry", post(retry_webhook_event))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueQuery {
    status: Option<String>,
    customer: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

impl QueueQuery {
    fn filter(&self) -> Result<(OutboxFilter, u32), ApiError> {
        let limit = limit(self.limit)?;
        let status = self
            .status
            .as_deref()
            .map(|s| {
                OutboxStatus::parse(s).ok_or_else(|| {
                    ApiError::invalid(format!("`status` {s:?} must be pending, sent or parked"))
                })
            })
            .transpose()?;
        let after_id = self.cursor.as_deref().map(row_id).transpose()?;
        let filter = OutboxFilter {
            status,
            customer: self.customer.as_deref().map(customer_id).transpose()?,
            after_id,
            limit: limit + 1,
        };
        Ok((filter, limit))
    }
}

fn row_id(cursor: &str) -> Result<i64, ApiError> {
    position(cursor)?
        .parse()
        .map_err(|_| ApiError::invalid("`cursor` is not one this API gave out"))
}

async fn outbox(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<QueueQuery>,
) -> Result<Json<Page<MeterEvent>>, ApiError> {
    let (filter, limit) = query.filter()?;
    let events = state.store.meter_events(&filter).await?;
    Ok(Json(Page::of(events, limit, |e| e.id.to_string())))
}

async fn retry_meter_event(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    if state.store.retry_meter_event(id, UnixMillis::now()).await? {
        Ok(Json(json!({ "id": id, "status": "pending" })))
    } else {
        Err(ApiError::not_found(format!(
            "there is no parked meter event {id} (only parked events can be retried)"
        )))
    }
}

async fn invoices(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<QueueQuery>,
) -> Result<Json<Page<InvoiceItemRow>>, ApiError> {
    let (filter, limit) = query.filter()?;
    let items = state.store.invoice_items(&filter).await?;
    Ok(Json(Page::of(items, limit, |i| i.id.to_string())))
}

async fn retry_invoice(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    if state
        .store
        .retry_invoice_item(id, UnixMillis::now())
        .await?
    {
        Ok(Json(json!({ "id": id, "status": "pending" })))
    } else {
        Err(ApiError::not_found(format!(
            "there is no parked invoice item {id} (only parked items can be retried)"
        )))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn webhook_events(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<EventQuery>,
) -> Result<Json<Page<WebhookEvent>>, ApiError> {
    let limit = limit(query.limit)?;
    let status = query
        .status
        .as_deref()
        .map(|s| {
            WebhookStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "`status` {s:?} must be pending, processed or failed"
                ))
            })
        })
        .transpose()?;
    let after_id = query.cursor.as_deref().map(position).transpose()?;
    let events = state
        .store
        .webhook_events(&WebhookFilter {
            status,
            after_id,
            limit: limit + 1,
        })
        .await?;
    Ok(Json(Page::of(events, limit, |e| e.id.clone())))
}

async fn webhook_event(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookEvent>, ApiError> {
    state
        .store
        .webhook_event(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("there is no webhook event {id:?}")))
}

async fn retry_webhook_event(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state
        .store
        .retry_webhook_event(&id, UnixMillis::now())
        .await?
    {
        Ok(Json(json!({ "id": id, "status": "pending" })))
    } else {
        Err(ApiError::not_found(format!(
            "there is no failed webhook event {id:?} (only failed events can be retried)"
        )))
    }
}
