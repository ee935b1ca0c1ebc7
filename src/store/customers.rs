//! Customers: create, provision from a JWT subject, find, list, suspend.

use mcp_meter_plugin::identity::{Customer, CustomerId, CustomerStatus, UnixMillis};
use mcp_meter_plugin::ports::{NewCustomer, StoreError};
use sqlx::Pool;

use super::CustomerUpdate;
use super::driver::Driver;
use super::error::Fault;
use super::ids;
use super::rows::{self, CUSTOMER_COLUMNS};
use super::statement::Statement;

fn select<DB: Driver>() -> Statement<DB> {
    let mut statement = Statement::new("SELECT ");
    statement.push(CUSTOMER_COLUMNS).push(" FROM customers c");
    statement
}

async fn fetch_one<DB: Driver>(
    pool: &Pool<DB>,
    statement: Statement<DB>,
) -> Result<Option<Customer>, Fault> {
    let mut conn = pool.acquire().await?;
    match statement.fetch_optional(&mut conn).await? {
        Some(row) => Ok(Some(rows::customer(&row, 0)?)),
        None => Ok(None),
    }
}

/// The customer with this id.
pub(super) async fn find<DB: Driver>(
    pool: &Pool<DB>,
    id: &CustomerId,
) -> Result<Option<Customer>, Fault> {
    let mut statement = select::<DB>();
    statement.push(" WHERE c.id = ").bind(id.as_str());
    fetch_one(pool, statement).await
}

/// The customer an identity-provider subject names.
pub(super) async fn find_by_subject<DB: Driver>(
    pool: &Pool<DB>,
    subject: &str,
) -> Result<Option<Customer>, Fault> {
    let mut statement = select::<DB>();
    statement.push(" WHERE c.external_subject = ").bind(subject);
    fetch_one(pool, statement).await
}

/// Creates a customer; a duplicate subject is a conflict.
pub(super) async fn create<DB: Driver>(
    pool: &Pool<DB>,
    new: NewCustomer,
) -> Result<Customer, Fault> {
    let now = UnixMillis::now();
    let customer = Customer {
        id: ids::customer_id(),
        name: new.name,
        email: new.email,
        plan_id: new.plan_id,
        status: CustomerStatus::Active,
        stripe_customer_id: None,
        external_subject: new.external_subject,
        metadata: new.metadata,
        created_at: now,
        updated_at: now,
    };
    let metadata = serde_json::Value::Object(customer.metadata.clone()).to_string();
    let mut statement = Statement::<DB>::new(
        "INSERT INTO customers (id, name, email, plan_id, status, stripe_customer_id, \
         external_subject, metadata, created_at, updated_at) VALUES ",
    );
    statement.tuples([&customer], |t, c| {
        t.bind(c.id.as_str())
            .bind(c.name.as_str())
            .bind(c.email.as_deref())
            .bind(c.plan_id.as_deref())
            .bind(c.status.as_str())
            .bind(c.stripe_customer_id.as_deref())
            .bind(c.external_subject.as_deref())
            .bind(metadata.as_str())
            .bind(c.created_at)
            .bind(c.updated_at);
    });
    let mut conn = pool.acquire().await?;
    match statement.execute(&mut conn).await {
        Ok(()) => Ok(customer),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(Fault::Store(
            StoreError::Conflict(match &customer.external_subject {
                Some(subject) => format!("a customer with external subject {subject:?} exists"),
                None => format!("customer {} exists", customer.id),
            }),
        )),
        Err(error) => Err(error.into()),
    }
}

/// Creates a customer for a subject, or returns the one that already has
/// it (also when a concurrent call created it first).
pub(super) async fn provision<DB: Driver>(
    pool: &Pool<DB>,
    new: NewCustomer,
) -> Result<Customer, Fault> {
    let subject = new.external_subject.clone();
    match create(pool, new).await {
        Err(Fault::Store(StoreError::Conflict(message))) => match subject {
            Some(subject) => find_by_subject(pool, &subject)
                .await?
                .ok_or(Fault::Store(StoreError::Conflict(message))),
            None => Err(Fault::Store(StoreError::Conflict(message))),
        },
        other => other,
    }
}

/// Customers ordered by id after `after`, at most `limit`.
pub(super) async fn list<DB: Driver>(
    pool: &Pool<DB>,
    after: Option<&CustomerId>,
    limit: u32,
) -> Result<Vec<Customer>, Fault> {
    let mut statement = select::<DB>();
    if let Some(after) = after {
        statement.push(" WHERE c.id > ").bind(after.as_str());
    }
    statement
        .push(" ORDER BY c.id LIMIT ")
        .bind(i64::from(limit));
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    Ok(found
        .iter()
        .map(|row| rows::customer(row, 0))
        .collect::<Result<_, _>>()?)
}

/// Sets a customer's status and bumps `updated_at`.
/// Changes the fields `update` names (plan, name, email, metadata),
/// bumping `updated_at`.
pub(super) async fn update<DB: Driver>(
    pool: &Pool<DB>,
    id: &CustomerId,
    update: &CustomerUpdate,
) -> Result<Customer, Fault> {
    let metadata = update
        .metadata
        .as_ref()
        .map(|m| serde_json::Value::Object(m.clone()).to_string());
    let mut statement = Statement::<DB>::new("UPDATE customers SET updated_at = ");
    statement.one_off().bind(UnixMillis::now());
    if let Some(plan) = &update.plan_id {
        statement.push(", plan_id = ").bind(plan.as_str());
    }
    if let Some(name) = &update.name {
        statement.push(", name = ").bind(name.as_str());
    }
    if let Some(email) = &update.email {
        statement.push(", email = ").bind(email.as_deref());
    }
    if let Some(metadata) = &metadata {
        statement.push(", metadata = ").bind(metadata.as_str());
    }
    statement.push(" WHERE id = ").bind(id.as_str());
    {
        let mut conn = pool.acquire().await?;
        statement.execute(&mut conn).await?;
    }
    find(pool, id)
        .await?
        .ok_or_else(|| Fault::Store(StoreError::NotFound(format!("customer {id}"))))
}

pub(super) async fn set_status<DB: Driver>(
    pool: &Pool<DB>,
    id: &CustomerId,
    status: CustomerStatus,
) -> Result<Customer, Fault> {
    let mut statement = Statement::<DB>::new("UPDATE customers SET status = ");
    statement
        .bind(status.as_str())
        .push(", updated_at = ")
        .bind(UnixMillis::now())
        .push(" WHERE id = ")
        .bind(id.as_str());
    {
        let mut conn = pool.acquire().await?;
        statement.execute(&mut conn).await?;
    }
    find(pool, id)
        .await?
        .ok_or_else(|| Fault::Store(StoreError::NotFound(format!("customer {id}"))))
}
