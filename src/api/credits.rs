//! Prepaid credits: `GET /customers/{id}/balance`,
//! `POST /customers/{id}/credits` (a grant or an adjustment, applied once
//! per `Idempotency-Key`), `GET /customers/{id}/ledger` (paged).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{
    BalanceChange, ChangeOutcome, EntryKind, LedgerEntry, LedgerFilter,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::customers::{CustomerPath, PageQuery, customer_id, existing};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, Page, limit, position};

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_CHARS: usize = 200;

/// The routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(balance))
        .routes(routes!(change))
        .routes(routes!(ledger))
}

/// A customer's prepaid balance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Balance {
    /// Whose.
    pub customer_id: CustomerId,
    /// The credits.
    pub balance: i64,
    /// Always `credits`.
    #[schema(value_type = String, example = "credits")]
    pub unit: &'static str,
}

#[utoipa::path(get, path = "/customers/{id}/balance", tag = "credits",
    summary = "A customer's prepaid credit balance",
    params(CustomerPath),
    responses(
        (status = 200, description = "The balance", body = Balance),
        (status = 400, description = "Not a customer id", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn balance(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Balance>, ApiError> {
    let id = customer_id(&id)?;
    existing(&state, &id).await?;
    let balance = state.store.balance(&id).await?;
    Ok(Json(Balance {
        customer_id: id,
        balance,
        unit: "credits",
    }))
}

/// The kinds of change `POST /customers/{id}/credits` takes.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Only documents the strings `kind` takes.
enum CreditChangeKind {
    /// Adds at least 1 credit.
    Grant,
    /// Adds or removes credits (not 0), with a `reason`.
    Adjustment,
}

/// A grant or an adjustment of a customer's credits.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreditChange {
    /// `grant` (adds credits) or `adjustment` (either way, with a reason).
    #[schema(value_type = CreditChangeKind)]
    kind: String,
    /// The credits: at least 1 for a grant, not 0 for an adjustment.
    amount: i64,
    /// Why; required for an adjustment.
    reason: Option<String>,
}

/// What a credit change did.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditChangeResult {
    /// Whose.
    pub customer_id: CustomerId,
    /// `false` when this `Idempotency-Key` was already applied (nothing
    /// changed).
    pub applied: bool,
    /// The balance after the change.
    pub balance: i64,
    /// The key the change was applied under (generated when none was
    /// sent).
    pub idempotency_key: String,
}

#[utoipa::path(post, path = "/customers/{id}/credits", tag = "credits",
    summary = "Grant or adjust credits, once per Idempotency-Key",
    params(
        CustomerPath,
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 200,
            description = "Applies the change once: a retry with the same key changes nothing (answered 200). Without it every request is a new change."),
    ),
    request_body = CreditChange,
    responses(
        (status = 201, description = "Applied", body = CreditChangeResult),
        (status = 200, description = "Already applied under this Idempotency-Key; nothing changed", body = CreditChangeResult),
        (status = 400, description = "A bad id, body or Idempotency-Key", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 409, description = "`insufficient_credits`: the balance would go below zero", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 422, description = "The database refused the change", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]

async fn change(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreditChange>,
) -> Result<impl IntoResponse, ApiError> {
    let id = customer_id(&id)?;
    let kind = match body.kind.as_str() {
        "grant" if body.amount >= 1 => EntryKind::Grant,
        "grant" => {
            return Err(ApiError::invalid(
                "a grant adds at least 1 credit; use kind \"adjustment\" to remove credits",
            ));
        }
        "adjustment" if body.amount == 0 => {
            return Err(ApiError::invalid("an adjustment of 0 changes nothing"));
        }
        "adjustment" if body.reason.as_deref().is_none_or(|r| r.trim().is_empty()) => {
            return Err(ApiError::invalid("an adjustment needs a `reason`"));
        }
        "adjustment" => EntryKind::Adjustment,
        other => {
            return Err(ApiError::invalid(format!(
                "`kind` must be grant or adjustment, not {other:?}"
            )));
        }
    };
    existing(&state, &id).await?;
    let idempotency_key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(key)) if !key.trim().is_empty() && key.chars().count() <= MAX_KEY_CHARS => {
            key.to_owned()
        }
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible characters"
            )));
        }
        // Without a key this request applies once; a retry is a new change.
        None => format!(
            "api:{}",
            CallId::generate()
                .as_str()
                .trim_start_matches(CallId::PREFIX)
        ),
    };
    let change = BalanceChange {
        customer_id: id.clone(),
        kind,
        amount: body.amount,
        idempotency_key: idempotency_key.clone(),
        reason: body.reason,
        at: UnixMillis::now(),
    };
    match state.store.change_balance(&change).await? {
        ChangeOutcome::Applied { balance_after } => Ok((
            StatusCode::CREATED,
            Json(CreditChangeResult {
                customer_id: id,
                applied: true,
                balance: balance_after,
                idempotency_key,
            }),
        )),
        ChangeOutcome::AlreadyApplied { balance } => Ok((
            StatusCode::OK,
            Json(CreditChangeResult {
                customer_id: id,
                applied: false,
                balance,
                idempotency_key,
            }),
        )),
        ChangeOutcome::WouldGoNegative { balance } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "insufficient_credits",
            format!(
                "the balance is {balance}; {:+} would take it below zero, nothing changed",
                change.amount
            ),
        )),
    }
}

#[utoipa::path(get, path = "/customers/{id}/ledger", tag = "credits",
    summary = "A customer's ledger entries, oldest first",
    params(CustomerPath, PageQuery),
    responses(
        (status = 200, description = "A page of entries", body = Page<LedgerEntry>),
        (status = 400, description = "A bad id, `limit` or `cursor`", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn ledger(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<LedgerEntry>>, ApiError> {
    let id = customer_id(&id)?;
    existing(&state, &id).await?;
    let (asked, cursor) = query.parts();
    let limit = limit(asked)?;
    let after_id = cursor
        .map(|c| {
            position(c)?
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("`cursor` is not one this API gave out"))
        })
        .transpose()?;
    let entries = state
        .store
        .entries(&LedgerFilter {
            customer: Some(id),
            after_id,
            limit: limit + 1,
        })
        .await?;
    Ok(Json(Page::of(entries, limit, |e| e.id.to_string())))
}
