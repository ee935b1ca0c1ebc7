//! The subscriptions port: each customer's subscription to a plan and where
//! it stands. The billing plugin reads it on every call to a subscription
//! plan; the operator sets it (CLI, API), and the payment provider keeps it
//! current through its webhooks.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::identity::{CustomerId, UnixMillis};
use crate::ports::StoreError;

/// Where a subscription stands (the payment provider's vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SubscriptionStatus {
    /// Paid and current.
    Active,
    /// In a free trial: served like `active`.
    Trialing,
    /// A payment failed; served during the plan's grace period, then
    /// refused.
    PastDue,
    /// Payment failed for good; refused.
    Unpaid,
    /// Ended; refused.
    Canceled,
    /// Created but never paid; refused.
    Incomplete,
    /// Paused by the operator or the provider; refused.
    Paused,
}

impl SubscriptionStatus {
    /// Every status, in the order above.
    pub const ALL: [SubscriptionStatus; 7] = [
        SubscriptionStatus::Active,
        SubscriptionStatus::Trialing,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Unpaid,
        SubscriptionStatus::Canceled,
        SubscriptionStatus::Incomplete,
        SubscriptionStatus::Paused,
    ];

    /// The snake_case name stored in the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::Paused => "paused",
        }
    }

    /// The status named `text` (as stored, or as the payment provider
    /// names it; `incomplete_expired` is `incomplete`).
    pub fn parse(text: &str) -> Option<Self> {
        if text == "incomplete_expired" {
            return Some(SubscriptionStatus::Incomplete);
        }
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A customer's subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Subscription {
    /// Whose.
    pub customer_id: CustomerId,
    /// The plan subscribed to.
    pub plan_id: String,
    /// Where it stands.
    pub status: SubscriptionStatus,
    /// When it started: the anchor of subscription-anchored periods.
    pub started_at: UnixMillis,
    /// Since when it has been `past_due` (set when it becomes `past_due`,
    /// kept while it stays so, cleared otherwise).
    pub past_due_since: Option<UnixMillis>,
    /// The current billing period as the payment provider reports it.
    pub current_period_start: Option<UnixMillis>,
    /// The end of the current billing period.
    pub current_period_end: Option<UnixMillis>,
    /// The payment provider's subscription id.
    pub external_id: Option<String>,
    /// Last change.
    pub updated_at: UnixMillis,
}

/// A change to a customer's subscription (created when there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    /// Whose.
    pub customer_id: CustomerId,
    /// The plan; the customer's `plan_id` is set to it in the same
    /// transaction.
    pub plan_id: String,
    /// The new status.
    pub status: SubscriptionStatus,
    /// The start to record; `None` keeps the stored one (or `at` for a new
    /// subscription).
    pub started_at: Option<UnixMillis>,
    /// The provider's current period; `None` keeps the stored one.
    pub current_period: Option<(UnixMillis, UnixMillis)>,
    /// The provider's id; `None` keeps the stored one.
    pub external_id: Option<String>,
    /// When.
    pub at: UnixMillis,
    /// The time of the payment provider's event this change comes from
    /// (`None` for changes by the operator). A change older than the
    /// provider event already applied to the subscription is ignored, so
    /// events delivered out of order end in the newest state.
    pub provider_event_at: Option<UnixMillis>,
}

/// Reads and sets subscriptions.
#[async_trait]
pub trait Subscriptions: Send + Sync + 'static {
    /// The customer's subscription, if they ever had one.
    async fn subscription(&self, customer: &CustomerId)
    -> Result<Option<Subscription>, StoreError>;

    /// Creates or changes the customer's subscription and sets their plan,
    /// in one transaction; [`StoreError::NotFound`] if there is no such
    /// customer. A change whose `provider_event_at` is older than that of
    /// the last provider event applied is ignored: the stored subscription
    /// comes back unchanged (and the customer's plan is left as it is).
    async fn set_subscription(
        &self,
        change: &SubscriptionChange,
    ) -> Result<Subscription, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for status in SubscriptionStatus::ALL {
            assert_eq!(SubscriptionStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(
            SubscriptionStatus::parse("incomplete_expired"),
            Some(SubscriptionStatus::Incomplete)
        );
        assert_eq!(SubscriptionStatus::parse("Active"), None);
    }
}
