//! API keys: the hot-path lookup by hash (one indexed query joining the
//! customer), create, list, revoke, and the batched `last_used_at` update.

use std::collections::BTreeMap;

use mcp_meter_plugin::identity::{ApiKeyRecord, CustomerId, KeyId, UnixMillis};
use mcp_meter_plugin::ports::{KeyGrant, StoreError};
use sqlx::Pool;

use super::NewApiKey;
use super::driver::Driver;
use super::error::Fault;
use super::ids;
use super::rows::{self, CUSTOMER_COLUMNS, KEY_COLUMNS, KEY_WIDTH};
use super::statement::Statement;

fn select<DB: Driver>() -> Statement<DB> {
    let mut statement = Statement::new("SELECT ");
    statement.push(KEY_COLUMNS).push(" FROM api_keys k");
    statement
}

/// The key whose secret hashes to `hash`, with its customer.
pub(super) async fn find_by_hash<DB: Driver>(
    pool: &Pool<DB>,
    hash: &[u8; 32],
) -> Result<Option<KeyGrant>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .push(KEY_COLUMNS)
        .push(", ")
        .push(CUSTOMER_COLUMNS)
        .push(" FROM api_keys k JOIN customers c ON c.id = k.customer_id WHERE k.key_hash = ")
        .bind(&hash[..]);
    let mut conn = pool.acquire().await?;
    match statement.fetch_optional(&mut conn).await? {
        Some(row) => Ok(Some(KeyGrant {
            key: rows::api_key(&row, 0)?,
            customer: rows::customer(&row, KEY_WIDTH)?,
        })),
        None => Ok(None),
    }
}

/// Stores a new key for an existing customer.
pub(super) async fn create<DB: Driver>(
    pool: &Pool<DB>,
    new: NewApiKey,
) -> Result<ApiKeyRecord, Fault> {
    let key = ApiKeyRecord {
        id: ids::key_id(),
        customer_id: new.customer_id,
        prefix: new.prefix,
        name: new.name,
        scope: new.scope,
        expires_at: new.expires_at,
        revoked_at: None,
        last_used_at: None,
        created_at: UnixMillis::now(),
    };
    let scope = serde_json::to_string(&key.scope)
        .map_err(|e| Fault::Store(StoreError::Other(format!("key scope: {e}"))))?;
    let mut statement = Statement::<DB>::new(
        "INSERT INTO api_keys (id, customer_id, key_hash, prefix, name, scope, expires_at, \
         revoked_at, last_used_at, created_at) VALUES ",
    );
    statement.tuples([&key], |t, k| {
        t.bind(k.id.as_str())
            .bind(k.customer_id.as_str())
            .bind(&new.key_hash[..])
            .bind(k.prefix.as_str())
            .bind(k.name.as_deref())
            .bind(scope.as_str())
            .bind(k.expires_at)
            .bind(k.revoked_at)
            .bind(k.last_used_at)
            .bind(k.created_at);
    });
    let mut conn = pool.acquire().await?;
    match statement.execute(&mut conn).await {
        Ok(()) => Ok(key),
        Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => Err(Fault::Store(
            StoreError::NotFound(format!("customer {}", key.customer_id)),
        )),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(Fault::Store(
            StoreError::Conflict("a key with the same hash is already stored".into()),
        )),
        Err(error) => Err(error.into()),
    }
}

/// Keys, of one customer or all, ordered by creation time then id.
pub(super) async fn list<DB: Driver>(
    pool: &Pool<DB>,
    customer: Option<&CustomerId>,
) -> Result<Vec<ApiKeyRecord>, Fault> {
    let mut statement = select::<DB>();
    if let Some(customer) = customer {
        statement
            .push(" WHERE k.customer_id = ")
            .bind(customer.as_str());
    }
    statement.push(" ORDER BY k.created_at, k.id");
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    Ok(found
        .iter()
        .map(|row| rows::api_key(row, 0))
        .collect::<Result<_, _>>()?)
}

/// Revokes a key at `at` unless it already is revoked; returns it.
pub(super) async fn revoke<DB: Driver>(
    pool: &Pool<DB>,
    id: &KeyId,
    at: UnixMillis,
) -> Result<ApiKeyRecord, Fault> {
    let mut conn = pool.acquire().await?;
    let mut update = Statement::<DB>::new("UPDATE api_keys SET revoked_at = ");
    update
        .bind(at)
        .push(" WHERE id = ")
        .bind(id.as_str())
        .push(" AND revoked_at IS NULL");
    update.execute(&mut conn).await?;
    let mut statement = select::<DB>();
    statement.push(" WHERE k.id = ").bind(id.as_str());
    match statement.fetch_optional(&mut conn).await? {
        Some(row) => Ok(rows::api_key(&row, 0)?),
        None => Err(Fault::Store(StoreError::NotFound(format!("API key {id}")))),
    }
}

/// Moves each key's `last_used_at` forward to the latest given time (never
/// back), in one transaction.
pub(super) async fn touch<DB: Driver>(
    pool: &Pool<DB>,
    used: &[(KeyId, UnixMillis)],
) -> Result<(), Fault> {
    // Latest time per key, in id order (a stable lock order).
    let mut latest: BTreeMap<&str, UnixMillis> = BTreeMap::new();
    for (id, at) in used {
        let entry = latest.entry(id.as_str()).or_insert(*at);
        *entry = (*entry).max(*at);
    }
    if latest.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    for (id, at) in latest {
        let mut update = Statement::<DB>::new("UPDATE api_keys SET last_used_at = ");
        update
            .bind(at)
            .push(" WHERE id = ")
            .bind(id)
            .push(" AND (last_used_at IS NULL OR last_used_at < ")
            .bind(at)
            .push(")");
        update.execute(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
