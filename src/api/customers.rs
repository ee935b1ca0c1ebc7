//! Customers and their API keys.
//!
//! * `GET /customers` (paged), `POST /customers`, `GET /customers/{id}`
//!   (with its keys), `PATCH /customers/{id}` (`status`, `plan`, `name`,
//!   `email`, `metadata`),
//!   `DELETE /customers/{id}` (suspends; the history is kept).
//! * `POST /customers/{id}/keys` (the key is in this answer only),
//!   `GET /customers/{id}/keys`, `DELETE /keys/{id}` (revokes).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use mcp_meter_auth::key::ApiKey;
use mcp_meter_plugin::identity::{
    ApiKeyRecord, Customer, CustomerId, CustomerStatus, KeyId, KeyScope, UnixMillis,
};
use mcp_meter_plugin::ports::{CREDENTIAL_LEASE, NewCustomer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Page, limit, position, time};
use crate::store::{CustomerUpdate, NewApiKey};

/// The routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/customers", get(list).post(create))
        .route("/customers/{id}", get(show).patch(update).delete(remove))
        .route("/customers/{id}/keys", get(list_keys).post(create_key))
        .route("/keys/{id}", delete(revoke_key))
}

/// A customer id from the path.
pub fn customer_id(text: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(text)
        .ok_or_else(|| ApiError::invalid(format!("{text:?} is not a customer id (cus_…)")))
}

/// The customer, or `404`.
pub async fn existing(state: &ApiState, id: &CustomerId) -> Result<Customer, ApiError> {
    state
        .store
        .find_customer(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no customer {id}")))
}

/// Paging of a list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

impl PageQuery {
    /// The limit and cursor asked for.
    pub fn parts(&self) -> (Option<u32>, Option<&str>) {
        (self.limit, self.cursor.as_deref())
    }
}

async fn list(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Customer>>, ApiError> {
    let limit = limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| position(c).and_then(|p| customer_id(&p)))
        .transpose()?;
    let customers = state
        .store
        .list_customers(after.as_ref(), limit + 1)
        .await?;
    Ok(Json(Page::of(customers, limit, |c| c.id.to_string())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCustomerBody {
    name: String,
    email: Option<String>,
    plan: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

/// Checks that `plan` is a configured plan.
pub fn known_plan(state: &ApiState, plan: &str) -> Result<(), ApiError> {
    if state.catalog.plan(plan).is_some() {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "there is no plan {plan:?} in the configuration (GET /api/v1/plans lists them)"
    )))
}

async fn create(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<NewCustomerBody>,
) -> Result<impl IntoResponse, ApiError> {
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid("`name` must not be empty"));
    }
    if let Some(plan) = &body.plan {
        known_plan(&state, plan)?;
    }
    let customer = state
        .store
        .create_customer(NewCustomer {
            name: body.name,
            email: body.email,
            plan_id: body.plan,
            external_subject: body.subject,
            metadata: body.metadata,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(customer)))
}

async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = customer_id(&id)?;
    let customer = existing(&state, &id).await?;
    let keys = state.store.list_api_keys(Some(&id)).await?;
    Ok(Json(json!({ "customer": customer, "keys": keys })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerChange {
    status: Option<String>,
    plan: Option<String>,
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    email: Option<Option<String>>,
    metadata: Option<Map<String, Value>>,
}

/// Tells `"email": null` (clear it) from a missing `email` (keep it).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

async fn set_status(
    state: &ApiState,
    id: &CustomerId,
    status: CustomerStatus,
) -> Result<Customer, ApiError> {
    let customer = state.store.set_customer_status(id, status).await?;
    if status == CustomerStatus::Suspended {
        // Instances may act on a customer they read up to a lease ago.
        tokio::time::sleep(CREDENTIAL_LEASE).await;
    }
    Ok(customer)
}

async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<CustomerChange>,
) -> Result<Json<Customer>, ApiError> {
    let id = customer_id(&id)?;
    let status = change
        .status
        .as_deref()
        .map(|s| {
            CustomerStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!("`status` must be active or suspended, not {s:?}"))
            })
        })
        .transpose()?;
    if let Some(plan) = &change.plan {
        known_plan(&state, plan)?;
    }
    if change.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(ApiError::invalid("`name` must not be empty"));
    }
    let update = CustomerUpdate {
        plan_id: change.plan,
        name: change.name,
        email: change.email,
        metadata: change.metadata,
    };
    if status.is_none() && update == CustomerUpdate::default() {
        return Err(ApiError::invalid(
            "name at least one of `status`, `plan`, `name`, `email` or `metadata`",
        ));
    }
    existing(&state, &id).await?;
    let mut customer = state.store.update_customer(&id, &update).await?;
    if update.plan_id.is_some() {
        // The plan moved: instances may act on the plan they read up to a
        // lease ago.
        tokio::time::sleep(CREDENTIAL_LEASE).await;
    }
    if let Some(status) = status {
        customer = set_status(&state, &id, status).await?;
    }
    Ok(Json(customer))
}

async fn remove(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    let id = customer_id(&id)?;
    Ok(Json(
        set_status(&state, &id, CustomerStatus::Suspended).await?,
    ))
}

async fn list_keys(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = customer_id(&id)?;
    existing(&state, &id).await?;
    let keys = state.store.list_api_keys(Some(&id)).await?;
    Ok(Json(json!({ "data": keys, "next_cursor": null })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    name: Option<String>,
    expires_at: Option<String>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
}

/// A key as answered once at creation.
#[derive(Serialize)]
struct CreatedKey {
    key: String,
    #[serde(flatten)]
    record: ApiKeyRecord,
}

async fn create_key(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> Result<impl IntoResponse, ApiError> {
    let id = customer_id(&id)?;
    existing(&state, &id).await?;
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|t| time("expires_at", t))
        .transpose()?;
    if expires_at.is_some_and(|at| at.0 <= UnixMillis::now().0) {
        return Err(ApiError::invalid("`expires_at` must be in the future"));
    }
    let key = ApiKey::generate();
    let record = state
        .store
        .create_api_key(NewApiKey {
            customer_id: id,
            key_hash: key.hash(),
            prefix: key.visible_prefix().to_owned(),
            name: body.name,
            scope: KeyScope {
                tools: body.tools,
                methods: body.methods,
            },
            expires_at,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: key.expose().to_owned(),
            record,
        }),
    ))
}

async fn revoke_key(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyRecord>, ApiError> {
    let id = KeyId::parse(&id)
        .ok_or_else(|| ApiError::invalid(format!("{id:?} is not an API key id (key_…)")))?;
    let record = state.store.revoke_api_key(&id, UnixMillis::now()).await?;
    // Instances may act on a key they read up to a lease ago.
    tokio::time::sleep(CREDENTIAL_LEASE).await;
    Ok(Json(record))
}
