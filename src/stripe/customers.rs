//! Stripe customers, created on demand: the first checkout or the first
//! usage report of an mcp-meter customer creates their Stripe customer
//! (carrying mcp-meter's id in its metadata) and stores its id.
//!
//! The request's idempotency key is derived from mcp-meter's customer id,
//! so a crash between Stripe's answer and the store's write, or two
//! instances doing this at once, end with one Stripe customer: the retry
//! gets the first answer again.

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ports::StoreError;

use super::client::{StripeApi, StripeCallError};
use crate::store::Store;

/// Why a customer's Stripe customer could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CustomerLinkError {
    /// There is no such mcp-meter customer.
    #[error("there is no customer {0}")]
    NoSuchCustomer(CustomerId),
    /// The store failed.
    #[error("the database failed: {0}")]
    Store(#[from] StoreError),
    /// Stripe failed.
    #[error(transparent)]
    Stripe(#[from] StripeCallError),
}

impl CustomerLinkError {
    /// Whether trying again later may work.
    pub fn is_retryable(&self) -> bool {
        match self {
            CustomerLinkError::NoSuchCustomer(_) => false,
            CustomerLinkError::Store(_) => true,
            CustomerLinkError::Stripe(error) => error.is_retryable(),
        }
    }
}

/// The Stripe customer id of `id`, creating the Stripe customer first if
/// there is none yet.
pub async fn ensure_stripe_customer(
    api: &StripeApi,
    store: &dyn Store,
    id: &CustomerId,
) -> Result<String, CustomerLinkError> {
    let customer = store
        .find_customer(id)
        .await?
        .ok_or_else(|| CustomerLinkError::NoSuchCustomer(id.clone()))?;
    if let Some(stripe) = customer.stripe_customer_id {
        return Ok(stripe);
    }
    let created = api
        .create_customer(
            id.as_str(),
            Some(customer.name.as_str()).filter(|n| !n.is_empty()),
            customer.email.as_deref(),
        )
        .await?;
    if store
        .attach_stripe_customer(id, &created, UnixMillis::now())
        .await?
    {
        tracing::info!(customer = %id, stripe_customer = %created, "created the customer at Stripe");
        return Ok(created);
    }
    // Someone attached one meanwhile (a webhook, another instance): theirs
    // is the one on record.
    let stored = store
        .find_customer(id)
        .await?
        .and_then(|c| c.stripe_customer_id)
        .ok_or_else(|| CustomerLinkError::NoSuchCustomer(id.clone()))?;
    if stored != created {
        tracing::warn!(customer = %id, stored = %stored, created = %created,
            "the customer already had another Stripe customer; keeping the stored one");
    }
    Ok(stored)
}
