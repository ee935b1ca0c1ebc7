//! Prepaid credits: `GET /customers/{id}/balance`,
//! `POST /customers/{id}/credits` (a grant or an adjustment, applied once
//! per `Idempotency-Key`), `GET /customers/{id}/ledger` (paged).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use mcp_meter_plugin::identity::{CallId, UnixMillis};
use mcp_meter_plugin::ledger::{
    BalanceChange, ChangeOutcome, EntryKind, LedgerEntry, LedgerFilter,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::customers::{PageQuery, customer_id, existing};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Page, limit, position};

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_CHARS: usize = 200;

/// The routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/customers/{id}/balance", get(balance))
        .route("/customers/{id}/credits", post(change))
        .route("/customers/{id}/ledger", get(ledger))
}

async fn balance(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = customer_id(&id)?;
    existing(&state, &id).await?;
    let balance = state.store.balance(&id).await?;
    Ok(Json(
        json!({ "customer_id": id, "balance": balance, "unit": "credits" }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditChange {
    /// `grant` (adds credits) or `adjustment` (either way, with a reason).
    kind: String,
    amount: i64,
    reason: Option<String>,
}

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
            Json(json!({
                "customer_id": id, "applied": true, "balance": balance_after,
                "idempotency_key": idempotency_key,
            })),
        )),
        ChangeOutcome::AlreadyApplied { balance } => Ok((
            StatusCode::OK,
            Json(json!({
                "customer_id": id, "applied": false, "balance": balance,
                "idempotency_key": idempotency_key,
            })),
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
