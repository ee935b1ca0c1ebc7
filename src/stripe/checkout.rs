//! Checkout: a Stripe Checkout Session for a customer to buy a credit pack
//! (`mode=payment`) or subscribe to a plan (`mode=subscription`).
//!
//! The session carries mcp-meter's customer id as `client_reference_id` and
//! in its metadata (and the subscription's), with the pack or plan, so the
//! `checkout.session.completed` webhook grants the pack's credits or
//! activates the plan for the right customer. The Stripe customer is
//! created first if the customer has none.

use std::collections::HashMap;
use std::sync::Arc;

use mcp_meter_plugin::identity::CustomerId;
use mcp_meter_plugin::ports::StoreError;

use super::client::{CreatedSession, SessionRequest, StripeApi, StripeCallError};
use super::config::{CheckoutItem, StripeConfig};
use super::customers::{CustomerLinkError, ensure_stripe_customer};
use super::events::{META_CUSTOMER, META_PACK, META_PLAN};
use crate::store::Store;

/// Why no Checkout Session was made.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// Stripe is not configured for outbound calls.
    #[error("Stripe checkout is not configured: set [stripe] secret_key and success_url")]
    NotConfigured,
    /// The pack or plan cannot be sold.
    #[error("{0}")]
    UnknownItem(String),
    /// There is no such customer.
    #[error("there is no customer {0}")]
    NoSuchCustomer(CustomerId),
    /// The store failed.
    #[error("the database failed: {0}")]
    Store(#[from] StoreError),
    /// Stripe refused or could not be reached.
    #[error(transparent)]
    Stripe(#[from] StripeCallError),
}

impl From<CustomerLinkError> for CheckoutError {
    fn from(error: CustomerLinkError) -> Self {
        match error {
            CustomerLinkError::NoSuchCustomer(id) => CheckoutError::NoSuchCustomer(id),
            CustomerLinkError::Store(e) => CheckoutError::Store(e),
            CustomerLinkError::Stripe(e) => CheckoutError::Stripe(e),
        }
    }
}

/// Opens Checkout Sessions.
pub struct Checkout {
    api: StripeApi,
    store: Arc<dyn Store>,
    config: StripeConfig,
}

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout").finish_non_exhaustive()
    }
}

impl Checkout {
    /// Checkout through `api` for `[stripe]`; `NotConfigured` without a
    /// success URL.
    pub fn new(
        api: StripeApi,
        store: Arc<dyn Store>,
        config: StripeConfig,
    ) -> Result<Self, CheckoutError> {
        if config.success_url.is_none() {
            return Err(CheckoutError::NotConfigured);
        }
        Ok(Self { api, store, config })
    }

    /// Checks that `item` can be sold, without calling anyone.
    pub fn check_item(&self, item: &CheckoutItem) -> Result<(), CheckoutError> {
        self.config
            .price_of(item)
            .map(|_| ())
            .map_err(CheckoutError::UnknownItem)
    }

    /// A Checkout Session for `customer` to buy `item`. With `key`, the
    /// same key within a day gets the same session back.
    pub async fn open(
        &self,
        customer: &CustomerId,
        item: &CheckoutItem,
        key: Option<&str>,
    ) -> Result<CreatedSession, CheckoutError> {
        let (price_id, subscription) = self
            .config
            .price_of(item)
            .map_err(CheckoutError::UnknownItem)?;
        let success_url = self
            .config
            .success_url
            .as_deref()
            .ok_or(CheckoutError::NotConfigured)?;
        let stripe_customer =
            ensure_stripe_customer(&self.api, self.store.as_ref(), customer).await?;
        let mut metadata = HashMap::from([(META_CUSTOMER.to_owned(), customer.to_string())]);
        match item {
            CheckoutItem::Pack(id) => metadata.insert(META_PACK.to_owned(), id.clone()),
            CheckoutItem::Plan(id) => metadata.insert(META_PLAN.to_owned(), id.clone()),
        };
        let request = SessionRequest {
            stripe_customer: &stripe_customer,
            customer_id: customer.as_str(),
            price_id,
            subscription,
            metadata,
            success_url,
            cancel_url: self.config.cancel_url.as_deref(),
        };
        let session = self.api.create_checkout_session(&request, key).await?;
        tracing::info!(customer = %customer, item = %item, session = %session.id,
            "opened a Stripe Checkout Session");
        Ok(session)
    }
}
