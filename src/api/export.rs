//! Exports: `GET /export/usage` and `GET /export/ledger`, the whole table
//! (or the filtered part of it) as CSV or JSON lines, streamed in batches
//! with constant memory (see [`crate::export`] for the columns).
//!
//! A bad parameter is refused before the first byte in the API's error
//! shape; a database failure after it ends the body early (the client
//! sees it cut short) and is logged.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;
use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ports::UsageOutcome;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::customers::customer_id;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, range};
use crate::export::{Export, Format, Table};

/// The routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(usage))
        .routes(routes!(ledger))
}

/// The formats of an export.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Only documents the strings `format` takes.
enum ExportFormat {
    /// `text/csv`, with a header row.
    Csv,
    /// `application/x-ndjson`: one JSON object a line.
    Jsonl,
}

/// The parameters of `/export/usage`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UsageExportQuery {
    /// The file format.
    #[param(required = true, value_type = ExportFormat, inline)]
    format: Option<String>,
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
}

/// The parameters of `/export/ledger`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LedgerExportQuery {
    /// The file format.
    #[param(required = true, value_type = ExportFormat, inline)]
    format: Option<String>,
    /// Only this customer's entries.
    #[param(pattern = "^cus_[A-Za-z0-9]+$")]
    customer: Option<String>,
    /// From this time on (inclusive, RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Before this time (exclusive, RFC 3339; after `since`).
    #[param(format = DateTime)]
    until: Option<String>,
}

fn format(text: Option<&str>) -> Result<Format, ApiError> {
    match text {
        None => Err(ApiError::invalid("`format` is required: csv or jsonl")),
        Some(f) => Format::parse(f)
            .ok_or_else(|| ApiError::invalid(format!("`format` must be csv or jsonl, not {f:?}"))),
    }
}

#[utoipa::path(get, path = "/export/usage", tag = "export",
    summary = "Usage records as a file, streamed",
    params(UsageExportQuery),
    responses(
        (status = 200, description = "The records, oldest first (a database failure part way cuts the body short)",
            headers(("Content-Disposition" = String, description = "attachment; filename=\"usage-….csv\"")),
            content(
                (String = "text/csv"),
                (String = "application/x-ndjson"),
            )),
        (status = 400, description = "A missing or bad `format`, or a bad filter", body = ErrorBody),
    ))]
async fn usage(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<UsageExportQuery>,
) -> Result<Response, ApiError> {
    let format = format(query.format.as_deref())?;
    let (since, until) = range(query.since.as_deref(), query.until.as_deref())?;
    let outcome = query
        .outcome
        .as_deref()
        .map(|o| {
            UsageOutcome::parse(o)
                .ok_or_else(|| ApiError::invalid(format!("`outcome` {o:?} is not an outcome")))
        })
        .transpose()?;
    let export = Export {
        table: Table::Usage,
        format,
        customer: query.customer.as_deref().map(customer_id).transpose()?,
        tool: query.tool,
        outcome,
        since,
        until,
    };
    Ok(respond(&state, export))
}

#[utoipa::path(get, path = "/export/ledger", tag = "export",
    summary = "Ledger entries as a file, streamed",
    params(LedgerExportQuery),
    responses(
        (status = 200, description = "The entries, oldest first (a database failure part way cuts the body short)",
            headers(("Content-Disposition" = String, description = "attachment; filename=\"ledger-….csv\"")),
            content(
                (String = "text/csv"),
                (String = "application/x-ndjson"),
            )),
        (status = 400, description = "A missing or bad `format`, or a bad filter", body = ErrorBody),
    ))]
async fn ledger(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<LedgerExportQuery>,
) -> Result<Response, ApiError> {
    let format = format(query.format.as_deref())?;
    let (since, until) = range(query.since.as_deref(), query.until.as_deref())?;
    let export = Export {
        table: Table::Ledger,
        format,
        customer: query.customer.as_deref().map(customer_id).transpose()?,
        tool: None,
        outcome: None,
        since,
        until,
    };
    Ok(respond(&state, export))
}

/// The streamed response of `export`.
fn respond(state: &ApiState, export: Export) -> Response {
    let table = export.table.as_str();
    let content_type = export.format.content_type();
    let disposition = format!(
        "attachment; filename=\"{}\"",
        export.file_name(UnixMillis::now())
    );
    let chunks = export
        .stream(state.store.clone())
        .inspect_err(move |error| {
            tracing::error!(%error, table, "an export failed part way; its body is cut short");
        });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
