//! Customers and their API keys.
//!
//! * `GET /customers` (paged), `POST /customers`, `GET /customers/{id}`
//!   (with its keys), `PATCH /customers/{id}` (`status`, `plan`, `name`,
//!   `email`, `metadata`),
//!   `DELETE /customers/{id}` (suspends; the history is kept).
//! * `POST /customers/{id}/keys` (the key is in this answer only),
//!   `GET /customers/{id}/keys`, `DELETE /keys/{id}` (revokes).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use mcp_meter_auth::key::ApiKey;
use mcp_meter_plugin::identity::{
    ApiKeyRecord, Customer, CustomerId, CustomerStatus, KeyId, KeyScope, UnixMillis,
};
use mcp_meter_plugin::ports::{CREDENTIAL_LEASE, NewCustomer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, Page, bad_cursor, limit, position, time};
use crate::store::{CustomerUpdate, NewApiKey};

/// The routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
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
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl PageQuery {
    /// The limit and cursor asked for.
    pub fn parts(&self) -> (Option<u32>, Option<&str>) {
        (self.limit, self.cursor.as_deref())
    }
}

#[utoipa::path(get, path = "/customers", tag = "customers",
    summary = "List customers, oldest first",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of customers", body = Page<Customer>),
        (status = 400, description = "A bad `limit` or `cursor`", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn list(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Customer>>, ApiError> {
    let limit = limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| position(c).and_then(|p| customer_id(&p).map_err(|_| bad_cursor())))
        .transpose()?;
    let customers = state
        .store
        .list_customers(after.as_ref(), limit + 1)
        .await?;
    Ok(Json(Page::of(customers, limit, |c| c.id.to_string())))
}

/// A new customer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewCustomerBody {
    /// Display name (not blank).
    name: String,
    /// Contact email.
    email: Option<String>,
    /// A configured plan's id (`GET /api/v1/plans`).
    plan: Option<String>,
    /// The identity-provider subject a JWT names this customer by.
    subject: Option<String>,
    /// Free-form operator metadata.
    #[serde(default)]
    #[schema(value_type = Object)]
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

#[utoipa::path(post, path = "/customers", tag = "customers",
    summary = "Create a customer",
    request_body = NewCustomerBody,
    responses(
        (status = 201, description = "The customer", body = Customer),
        (status = 400, description = "A bad body, a blank name or an unknown plan", body = ErrorBody),
        (status = 409, description = "The subject already names another customer", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 422, description = "The database refused a value", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
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

/// A customer with its API keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerWithKeys {
    /// The customer.
    pub customer: Customer,
    /// Its keys (never their secrets), revoked ones included.
    pub keys: Vec<ApiKeyRecord>,
}

#[utoipa::path(get, path = "/customers/{id}", tag = "customers",
    summary = "A customer and its API keys",
    params(CustomerPath),
    responses(
        (status = 200, description = "The customer and its keys", body = CustomerWithKeys),
        (status = 400, description = "Not a customer id", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CustomerWithKeys>, ApiError> {
    let id = customer_id(&id)?;
    let customer = existing(&state, &id).await?;
    let keys = state.store.list_api_keys(Some(&id)).await?;
    Ok(Json(CustomerWithKeys { customer, keys }))
}

/// A customer's id in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CustomerPath {
    /// The customer's id.
    #[param(pattern = "^cus_[A-Za-z0-9]+$")]
    pub id: String,
}

/// What to change of a customer: at least one field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CustomerChange {
    /// Suspending refuses every call until resumed.
    #[schema(value_type = Option<CustomerStatus>)]
    status: Option<String>,
    /// A configured plan's id.
    plan: Option<String>,
    /// Display name (not blank).
    name: Option<String>,
    /// Contact email; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    email: Option<Option<String>>,
    /// Replaces the metadata.
    #[schema(value_type = Option<Object>)]
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

#[utoipa::path(patch, path = "/customers/{id}", tag = "customers",
    summary = "Change a customer's status, plan, name, email or metadata",
    params(CustomerPath),
    request_body = CustomerChange,
    responses(
        (status = 200, description = "The customer as changed", body = Customer),
        (status = 400, description = "A bad id or body, nothing to change, or an unknown plan", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 409, description = "A conflicting change", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 422, description = "The database refused a value", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
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

#[utoipa::path(delete, path = "/customers/{id}", tag = "customers",
    summary = "Suspend a customer (its history is kept)",
    params(CustomerPath),
    responses(
        (status = 200, description = "The customer, suspended", body = Customer),
        (status = 400, description = "Not a customer id", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn remove(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    let id = customer_id(&id)?;
    Ok(Json(
        set_status(&state, &id, CustomerStatus::Suspended).await?,
    ))
}

#[utoipa::path(get, path = "/customers/{id}/keys", tag = "customers",
    summary = "A customer's API keys (one page, never their secrets)",
    params(CustomerPath),
    responses(
        (status = 200, description = "All the customer's keys; `next_cursor` is always null", body = Page<ApiKeyRecord>),
        (status = 400, description = "Not a customer id", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn list_keys(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Page<ApiKeyRecord>>, ApiError> {
    let id = customer_id(&id)?;
    existing(&state, &id).await?;
    let keys = state.store.list_api_keys(Some(&id)).await?;
    Ok(Json(Page {
        data: keys,
        next_cursor: None,
    }))
}

/// A new API key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    /// A label.
    name: Option<String>,
    /// When the key stops working, in the future (RFC 3339).
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Tools the key may call (exact names or `prefix*`); none: all.
    #[serde(default)]
    tools: Vec<String>,
    /// JSON-RPC methods the key may use (exact or `prefix*`); none: all.
    #[serde(default)]
    methods: Vec<String>,
}

/// A key as answered once at creation: the secret and the record.
#[derive(Serialize, ToSchema)]
struct CreatedKey {
    /// The secret (`mcp_…`): shown in this answer only.
    key: String,
    #[serde(flatten)]
    record: ApiKeyRecord,
}

#[utoipa::path(post, path = "/customers/{id}/keys", tag = "customers",
    summary = "Create an API key (the secret is in this answer only)",
    params(CustomerPath),
    request_body = NewKeyBody,
    responses(
        (status = 201, description = "The key and its secret", body = CreatedKey),
        (status = 400, description = "A bad id or body, or `expires_at` not in the future", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 409, description = "A conflicting key", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 422, description = "The database refused a value", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
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

/// An API key's id in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// The key's id (not its secret).
    #[param(pattern = "^key_[A-Za-z0-9]+$")]
    pub id: String,
}

#[utoipa::path(delete, path = "/keys/{id}", tag = "customers",
    summary = "Revoke an API key",
    params(KeyPath),
    responses(
        (status = 200, description = "The key, revoked", body = ApiKeyRecord),
        (status = 400, description = "Not a key id", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
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
