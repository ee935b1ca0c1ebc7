//! The outbound Stripe client: async-stripe's typed requests over rustls,
//! pointed at `[stripe] api_base`. Every write carries an idempotency key
//! chosen by the caller from what it writes (never a random one), and is
//! sent once per call: retrying, with backoff and the same key, is the
//! caller's job, so that it can record each attempt durably.

use std::collections::HashMap;
use std::time::Duration;

use stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::invoice_item::{CreateInvoiceItem, Period};
use stripe_checkout::CheckoutSessionMode;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
};
use stripe_core::customer::CreateCustomer;

use super::config::StripeConfig;

/// Why a request to Stripe did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StripeCallError {
    /// Stripe answered with an error.
    #[error("Stripe answered {status}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: u16,
        /// Stripe's error code, when it gave one.
        code: Option<String>,
        /// Stripe's message.
        message: String,
    },
    /// Stripe could not be reached, or did not answer in time.
    #[error("Stripe could not be reached: {0}")]
    Unreachable(String),
    /// Stripe's answer could not be read.
    #[error("Stripe's answer could not be read: {0}")]
    BadAnswer(String),
    /// The request could not be made (a bad idempotency key, a bad
    /// setting).
    #[error("the request to Stripe could not be made: {0}")]
    Request(String),
}

impl StripeCallError {
    /// Whether the same request may succeed later: rate limits, Stripe's
    /// own failures, idempotency conflicts with a request still running,
    /// and anything that never got an answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            StripeCallError::Api { status, .. } => {
                *status == 429 || *status == 409 || *status >= 500
            }
            StripeCallError::Unreachable(_) | StripeCallError::BadAnswer(_) => true,
            StripeCallError::Request(_) => false,
        }
    }
}

impl From<StripeError> for StripeCallError {
    fn from(error: StripeError) -> Self {
        match error {
            StripeError::Stripe(api, status) => StripeCallError::Api {
                status,
                code: api.code.as_ref().map(|c| c.as_str().to_owned()),
                message: api
                    .message
                    .clone()
                    .unwrap_or_else(|| "no message".to_owned()),
            },
            StripeError::Timeout => StripeCallError::Unreachable("no answer in time".into()),
            StripeError::ClientError(text) => StripeCallError::Unreachable(text),
            StripeError::JSONDeserialize(text) => StripeCallError::BadAnswer(text),
            StripeError::ConfigError(text) => StripeCallError::Request(text),
        }
    }
}

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// `[stripe] secret_key` is missing.
    #[error("Stripe is not configured for outbound calls: set [stripe] secret_key")]
    NoSecretKey,
    /// async-stripe refused the settings.
    #[error("the Stripe client cannot be built: {0}")]
    Invalid(String),
}

/// A Checkout Session as far as mcp-meter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSession {
    /// `cs_…`.
    pub id: String,
    /// Where the customer pays.
    pub url: String,
}

/// What a Checkout Session sells and to whom.
#[derive(Debug, Clone)]
pub struct SessionRequest<'a> {
    /// The Stripe customer (`cus_…`).
    pub stripe_customer: &'a str,
    /// mcp-meter's customer id (`client_reference_id` and metadata).
    pub customer_id: &'a str,
    /// The Stripe price.
    pub price_id: &'a str,
    /// A subscription (`true`) or a one-time payment.
    pub subscription: bool,
    /// Metadata for the session (and the subscription it creates).
    pub metadata: HashMap<String, String>,
    /// After paying.
    pub success_url: &'a str,
    /// After going back.
    pub cancel_url: Option<&'a str>,
}

/// The typed Stripe client.
#[derive(Clone)]
pub struct StripeApi {
    client: stripe::Client,
}

impl std::fmt::Debug for StripeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeApi").finish_non_exhaustive()
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, StripeCallError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| StripeCallError::Request(format!("idempotency key {key:?}: {e}")))
}

impl StripeApi {
    /// The client for `[stripe]`.
    pub fn new(config: &StripeConfig) -> Result<Self, ClientBuildError> {
        let key = config
            .secret_key
            .as_deref()
            .ok_or(ClientBuildError::NoSecretKey)?;
        let mut base = config.api_base.clone();
        if !base.ends_with('/') {
            base.push('/');
        }
        let client = stripe::ClientBuilder::new(key)
            .url(base)
            .timeout(Duration::from_secs(config.request_timeout_secs))
            .request_strategy(RequestStrategy::Once)
            .build()
            .map_err(|e| ClientBuildError::Invalid(e.to_string()))?;
        Ok(Self { client })
    }

    /// The typed client, for read-only requests (reconciliation).
    pub fn client(&self) -> &stripe::Client {
        &self.client
    }

    /// Creates the Stripe customer for mcp-meter's customer `id`; the same
    /// `id` always sends the same idempotency key, so a retry after a lost
    /// answer gets the customer created the first time.
    pub async fn create_customer(
        &self,
        id: &str,
        name: Option<&str>,
        email: Option<&str>,
    ) -> Result<String, StripeCallError> {
        let mut request = CreateCustomer::new().metadata(HashMap::from([(
            super::events::META_CUSTOMER.to_owned(),
            id.to_owned(),
        )]));
        if let Some(name) = name {
            request = request.name(name);
        }
        if let Some(email) = email {
            request = request.email(email);
        }
        let customer = request
            .customize()
            .request_strategy(idempotent(&format!("mcp-meter-customer-{id}"))?)
            .send(&self.client)
            .await?;
        Ok(customer.id.as_str().to_owned())
    }

    /// Sends one meter event; `identifier` is also the idempotency key.
    pub async fn send_meter_event(
        &self,
        event_name: &str,
        stripe_customer: &str,
        value: i64,
        identifier: &str,
        timestamp_secs: i64,
    ) -> Result<(), StripeCallError> {
        let payload = HashMap::from([
            ("stripe_customer_id".to_owned(), stripe_customer.to_owned()),
            ("value".to_owned(), value.to_string()),
        ]);
        CreateBillingMeterEvent::new(event_name, payload)
            .identifier(identifier)
            .timestamp(timestamp_secs)
            .customize()
            .request_strategy(idempotent(identifier)?)
            .send(&self.client)
            .await?;
        Ok(())
    }

    /// Adds an invoice item (`amount` in the currency's minor units) to
    /// the customer's next invoice; `key` is the idempotency key.
    pub async fn create_invoice_item(
        &self,
        item: &InvoiceItemRequest<'_>,
        key: &str,
    ) -> Result<String, StripeCallError> {
        let currency = item
            .currency
            .parse::<stripe_types::Currency>()
            .map_err(|_| StripeCallError::Request(format!("unknown currency {}", item.currency)))?;
        let created = CreateInvoiceItem::new()
            .customer(item.stripe_customer)
            .amount(item.amount)
            .currency(currency)
            .description(item.description)
            .period(Period {
                start: item.period_start_secs,
                end: item.period_end_secs,
            })
            .metadata(item.metadata.clone())
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await?;
        Ok(created.id.as_str().to_owned())
    }

    /// Creates a Checkout Session; with `key`, a repeat of the same
    /// request (within Stripe's idempotency window) gets the same session.
    pub async fn create_checkout_session(
        &self,
        session: &SessionRequest<'_>,
        key: Option<&str>,
    ) -> Result<CreatedSession, StripeCallError> {
        let mut line = CreateCheckoutSessionLineItems::new();
        line.price = Some(session.price_id.to_owned());
        line.quantity = Some(1);
        let mode = if session.subscription {
            CheckoutSessionMode::Subscription
        } else {
            CheckoutSessionMode::Payment
        };
        let mut request = CreateCheckoutSession::new()
            .mode(mode)
            .customer(session.stripe_customer)
            .client_reference_id(session.customer_id)
            .line_items(vec![line])
            .metadata(session.metadata.clone())
            .success_url(session.success_url);
        if let Some(cancel) = session.cancel_url {
            request = request.cancel_url(cancel);
        }
        if session.subscription {
            let mut data = CreateCheckoutSessionSubscriptionData::new();
            data.metadata = Some(session.metadata.clone());
            request = request.subscription_data(data);
        }
        let strategy = match key {
            Some(key) => idempotent(key)?,
            None => RequestStrategy::Once,
        };
        let created = request
            .customize()
            .request_strategy(strategy)
            .send(&self.client)
            .await?;
        let url = created.url.clone().ok_or_else(|| {
            StripeCallError::BadAnswer(format!(
                "Checkout Session {} has no url",
                created.id.as_str()
            ))
        })?;
        Ok(CreatedSession {
            id: created.id.as_str().to_owned(),
            url,
        })
    }
}

/// One invoice item.
#[derive(Debug, Clone)]
pub struct InvoiceItemRequest<'a> {
    /// The Stripe customer.
    pub stripe_customer: &'a str,
    /// In the currency's minor units (cents).
    pub amount: i64,
    /// ISO 4217, lower case.
    pub currency: &'a str,
    /// What the customer sees on the invoice.
    pub description: &'a str,
    /// The period it bills, Unix seconds.
    pub period_start_secs: i64,
    /// The end of that period, Unix seconds.
    pub period_end_secs: i64,
    /// Metadata (mcp-meter's customer, plan, period).
    pub metadata: HashMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failures_are_retried() {
        let api = |status| StripeCallError::Api {
            status,
            code: None,
            message: "x".into(),
        };
        assert!(api(429).is_retryable());
        assert!(api(500).is_retryable());
        assert!(api(503).is_retryable());
        assert!(api(409).is_retryable());
        assert!(!api(400).is_retryable());
        assert!(!api(401).is_retryable());
        assert!(!api(404).is_retryable());
        assert!(StripeCallError::Unreachable("reset".into()).is_retryable());
        assert!(!StripeCallError::Request("bad key".into()).is_retryable());
    }

    #[test]
    fn an_api_error_names_its_status_and_code() {
        let error = StripeCallError::Api {
            status: 400,
            code: Some("resource_missing".into()),
            message: "No such customer".into(),
        };
        assert_eq!(
            error.to_string(),
            "Stripe answered 400 (resource_missing): No such customer"
        );
    }
}
