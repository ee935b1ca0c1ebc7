//! What waits for the payment provider: the meter outbox
//! (`GET /outbox`, `POST /outbox/{id}/retry`), per-call plans' invoice
//! items (`GET /invoices`, `POST /invoices/{id}/retry`), and Stripe's
//! webhook events (`GET /webhook-events`, `GET /webhook-events/{id}`,
//! `POST /webhook-events/{id}/retry` for one that `failed`).

use axum::Json;
use axum::extract::{Path, State};
use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::outbox::{MeterEvent, OutboxFilter, OutboxStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::customers::customer_id;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, Page, limit, position};
use crate::store::{InvoiceItemRow, WebhookEvent, WebhookFilter, WebhookStatus};

/// The routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(outbox))
        .routes(routes!(retry_meter_event))
        .routes(routes!(invoices))
        .routes(routes!(retry_invoice))
        .routes(routes!(webhook_events))
        .routes(routes!(webhook_event))
        .routes(routes!(retry_webhook_event))
}

/// The filters of the outbox and invoice-item lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct QueueQuery {
    /// Only rows in this state.
    #[param(value_type = Option<OutboxStatus>)]
    status: Option<String>,
    /// Only this customer's rows.
    #[param(pattern = "^cus_[A-Za-z0-9]+$")]
    customer: Option<String>,
    /// Rows per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A queued row put back in line.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequeuedRow {
    /// The row's id.
    pub id: i64,
    /// Always `pending`: it is sent again shortly.
    pub status: OutboxStatus,
}

/// A webhook event put back in line.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequeuedEvent {
    /// The event's id.
    pub id: String,
    /// Always `pending`: it is processed again shortly.
    pub status: WebhookStatus,
}

/// A queued row's id in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RowPath {
    /// The row's id.
    #[param(value_type = i64)]
    pub id: String,
}

/// A row id from the path.
fn row_of(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::invalid(format!("{text:?} is not a row id (an integer)")))
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

#[utoipa::path(get, path = "/outbox", tag = "queues",
    summary = "Meter events waiting for (or sent to) the payment provider",
    params(QueueQuery),
    responses(
        (status = 200, description = "A page of meter events", body = Page<MeterEvent>),
        (status = 400, description = "A bad filter, `limit` or `cursor`", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn outbox(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<QueueQuery>,
) -> Result<Json<Page<MeterEvent>>, ApiError> {
    let (filter, limit) = query.filter()?;
    let events = state.store.meter_events(&filter).await?;
    Ok(Json(Page::of(events, limit, |e| e.id.to_string())))
}

#[utoipa::path(post, path = "/outbox/{id}/retry", tag = "queues",
    summary = "Send a parked meter event again",
    params(RowPath),
    responses(
        (status = 200, description = "The event is pending again", body = RequeuedRow),
        (status = 400, description = "Not a row id", body = ErrorBody),
        (status = 404, description = "No parked meter event with this id", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn retry_meter_event(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RequeuedRow>, ApiError> {
    let id = row_of(&id)?;
    if state.store.retry_meter_event(id, UnixMillis::now()).await? {
        Ok(Json(RequeuedRow {
            id,
            status: OutboxStatus::Pending,
        }))
    } else {
        Err(ApiError::not_found(format!(
            "there is no parked meter event {id} (only parked events can be retried)"
        )))
    }
}

#[utoipa::path(get, path = "/invoices", tag = "queues",
    summary = "Per-call plans' invoice items for the payment provider",
    params(QueueQuery),
    responses(
        (status = 200, description = "A page of invoice items", body = Page<InvoiceItemRow>),
        (status = 400, description = "A bad filter, `limit` or `cursor`", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn invoices(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<QueueQuery>,
) -> Result<Json<Page<InvoiceItemRow>>, ApiError> {
    let (filter, limit) = query.filter()?;
    let items = state.store.invoice_items(&filter).await?;
    Ok(Json(Page::of(items, limit, |i| i.id.to_string())))
}

#[utoipa::path(post, path = "/invoices/{id}/retry", tag = "queues",
    summary = "Send a parked invoice item again",
    params(RowPath),
    responses(
        (status = 200, description = "The item is pending again", body = RequeuedRow),
        (status = 400, description = "Not a row id", body = ErrorBody),
        (status = 404, description = "No parked invoice item with this id", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn retry_invoice(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RequeuedRow>, ApiError> {
    let id = row_of(&id)?;
    if state
        .store
        .retry_invoice_item(id, UnixMillis::now())
        .await?
    {
        Ok(Json(RequeuedRow {
            id,
            status: OutboxStatus::Pending,
        }))
    } else {
        Err(ApiError::not_found(format!(
            "there is no parked invoice item {id} (only parked items can be retried)"
        )))
    }
}

/// The filters of the webhook-event list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Only events in this state.
    #[param(value_type = Option<WebhookStatus>)]
    status: Option<String>,
    /// Events per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/webhook-events", tag = "queues",
    summary = "Stripe's webhook events as received, by id",
    params(EventQuery),
    responses(
        (status = 200, description = "A page of webhook events", body = Page<WebhookEvent>),
        (status = 400, description = "A bad filter, `limit` or `cursor`", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]

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

#[utoipa::path(get, path = "/webhook-events/{id}", tag = "queues",
    summary = "One webhook event",
    params(("id" = String, Path, description = "The provider's event id (`evt_…`).")),
    responses(
        (status = 200, description = "The event", body = WebhookEvent),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
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

#[utoipa::path(post, path = "/webhook-events/{id}/retry", tag = "queues",
    summary = "Process a failed webhook event again",
    params(("id" = String, Path, description = "The provider's event id (`evt_…`).")),
    responses(
        (status = 200, description = "The event is pending again", body = RequeuedEvent),
        (status = 404, description = "No failed webhook event with this id", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn retry_webhook_event(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RequeuedEvent>, ApiError> {
    if state
        .store
        .retry_webhook_event(&id, UnixMillis::now())
        .await?
    {
        Ok(Json(RequeuedEvent {
            id,
            status: WebhookStatus::Pending,
        }))
    } else {
        Err(ApiError::not_found(format!(
            "there is no failed webhook event {id:?} (only failed events can be retried)"
        )))
    }
}
