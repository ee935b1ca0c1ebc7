//! Usage: `GET /usage` (records, paged, filtered by customer, tool,
//! outcome and time range) and `GET /usage/daily` (the daily roll-ups).

use axum::Json;
use axum::extract::State;
use mcp_meter_plugin::identity::{CallId, UnixMillis};
use mcp_meter_plugin::ports::{UsageOutcome, UsageRecord};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::customers::customer_id;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, Page, limit, position, range};
use crate::store::{DailyUsage, UsageFilter};

/// The routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(records))
        .routes(routes!(daily))
}

/// The filters of `/usage`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Only this customer's records.
    #[param(pattern = "^cus_[A-Za-z0-9]+$")]
    customer: Option<String>,
    /// Only calls of this tool.
    tool: Option<String>,
    /// Only calls that ended so.
    #[param(value_type = Option<UsageOutcome>)]
    outcome: Option<String>,
    /// From this time on (inclusive, RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Before this time (exclusive, RFC 3339; after `since`).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Records per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl UsageQuery {
    /// Whether `customer` was given.
    pub fn has_customer(&self) -> bool {
        self.customer.is_some()
    }

    /// The store filter these parameters ask for (`customer` forced when
    /// given: `/me/usage`).
    pub fn filter(&self, customer: Option<&str>) -> Result<(UsageFilter, u32), ApiError> {
        let limit = limit(self.limit)?;
        let (since, until) = range(self.since.as_deref(), self.until.as_deref())?;
        let outcome = self
            .outcome
            .as_deref()
            .map(|o| {
                UsageOutcome::parse(o)
                    .ok_or_else(|| ApiError::invalid(format!("`outcome` {o:?} is not an outcome")))
            })
            .transpose()?;
        let after = self.cursor.as_deref().map(after_of).transpose()?;
        let customer = customer
            .or(self.customer.as_deref())
            .map(customer_id)
            .transpose()?;
        let filter = UsageFilter {
            customer,
            since,
            until,
            limit: limit + 1,
            tool: self.tool.clone(),
            outcome,
            after,
        };
        Ok((filter, limit))
    }
}

/// The keyset a usage cursor names: `started_at` and `call_id`.
fn after_of(cursor: &str) -> Result<(UnixMillis, CallId), ApiError> {
    let text = position(cursor)?;
    let bad = || ApiError::invalid("`cursor` is not one this API gave out");
    let (at, call) = text.split_once('/').ok_or_else(bad)?;
    let at = at.parse::<i64>().map_err(|_| bad())?;
    Ok((UnixMillis(at), CallId::new(call.to_owned())))
}

/// The cursor of the page after `record`.
pub fn cursor_of(record: &UsageRecord) -> String {
    format!("{}/{}", record.started_at.0, record.call_id)
}

/// The records `query` asks for, as a page.
pub async fn page(
    state: &ApiState,
    query: &UsageQuery,
    customer: Option<&str>,
) -> Result<Page<UsageRecord>, ApiError> {
    let (filter, limit) = query.filter(customer)?;
    let records = state.store.usage_records(&filter).await?;
    Ok(Page::of(records, limit, cursor_of))
}

#[utoipa::path(get, path = "/usage", tag = "usage",
    summary = "Usage records, oldest first, filtered",
    params(UsageQuery),
    responses(
        (status = 200, description = "A page of usage records", body = Page<UsageRecord>),
        (status = 400, description = "A bad filter, `limit` or `cursor`", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn records(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<Page<UsageRecord>>, ApiError> {
    Ok(Json(page(&state, &query, None).await?))
}

#[utoipa::path(get, path = "/usage/daily", tag = "usage",
    summary = "The daily roll-ups (one row per UTC day, customer, method and tool)",
    params(
        ("customer" = Option<String>, Query, pattern = "^cus_[A-Za-z0-9]+$", description = "Only this customer's rows."),
        ("tool" = Option<String>, Query, description = "Only this tool's rows."),
        ("since" = Option<String>, Query, format = DateTime, description = "From the UTC day holding this time (RFC 3339)."),
        ("until" = Option<String>, Query, format = DateTime, description = "Up to this time (exclusive, RFC 3339; after `since`)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "The most rows (default 100): more matching rows are refused, not paged."),
    ),
    responses(
        (status = 200, description = "The rows; `next_cursor` is always null", body = Page<DailyUsage>),
        (status = 400, description = "A bad filter, `outcome` or `cursor` given, or more rows than `limit`", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn daily(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<Page<DailyUsage>>, ApiError> {
    if query.outcome.is_some() || query.cursor.is_some() {
        return Err(ApiError::invalid(
            "daily roll-ups have no `outcome` or `cursor`; narrow by `since`/`until`",
        ));
    }
    let (filter, limit) = query.filter(None)?;
    let rows = state.store.usage_daily(&filter).await?;
    if rows.len() > limit as usize {
        return Err(ApiError::invalid(format!(
            "more than {limit} daily rows match: narrow `since`/`until` or `customer`, or raise `limit`"
        )));
    }
    Ok(Json(Page {
        data: rows,
        next_cursor: None,
    }))
}
