//! The meter outbox port: usage events waiting to be reported to the
//! payment provider. [`crate::ledger::Ledger::meter_usage`] writes each
//! event in the same transaction as the usage it reports, so no recorded
//! usage is ever missing from the outbox; a worker drains it, marking each
//! event sent, or failed with a time to try again, or parked after too
//! many attempts.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::identity::{CustomerId, UnixMillis};
use crate::ports::StoreError;

/// Where an outbox event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OutboxStatus {
    /// Waiting to be sent (again).
    Pending,
    /// Accepted by the payment provider.
    Sent,
    /// Given up on after too many failures; waits for the operator.
    Parked,
}

impl OutboxStatus {
    /// The snake_case name stored in the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Parked => "parked",
        }
    }

    /// The status stored as `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [
            OutboxStatus::Pending,
            OutboxStatus::Sent,
            OutboxStatus::Parked,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One meter event for the payment provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeterEvent {
    /// Position in the outbox (increasing).
    pub id: i64,
    /// Whose usage.
    pub customer_id: CustomerId,
    /// The provider's meter.
    pub event_name: String,
    /// The units.
    pub value: i64,
    /// Unique per event: the provider drops a second event with it.
    pub identifier: String,
    /// When the usage happened.
    pub occurred_at: UnixMillis,
    /// Where it stands.
    pub status: OutboxStatus,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// A pending event is not sent before this.
    pub next_attempt_at: UnixMillis,
    /// When it was accepted.
    pub sent_at: Option<UnixMillis>,
    /// The batch it is sent in, once one is fixed: the events of a batch
    /// are sent together as one event whose value is their total and whose
    /// identifier is the batch id, and are marked together.
    pub batch: Option<String>,
}

/// Which outbox events to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxFilter {
    /// Only events in this state.
    pub status: Option<OutboxStatus>,
    /// Only this customer's events.
    pub customer: Option<CustomerId>,
    /// Only events after this position (for paging).
    pub after_id: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// The meter outbox.
#[async_trait]
pub trait MeterOutbox: Send + Sync + 'static {
    /// Pending events due at `now` (`next_attempt_at <= now`), oldest
    /// first, at most `limit`.
    async fn due_meter_events(
        &self,
        now: UnixMillis,
        limit: u32,
    ) -> Result<Vec<MeterEvent>, StoreError>;

    /// Marks pending events sent (events already sent stay as they are).
    async fn mark_meter_events_sent(&self, ids: &[i64], at: UnixMillis) -> Result<(), StoreError>;

    /// Records a failed attempt: the event is tried again at `retry_at`,
    /// or parked when `retry_at` is `None`.
    async fn mark_meter_event_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<UnixMillis>,
    ) -> Result<(), StoreError>;

    /// Puts a parked event back in the queue, due at `now`, with the rest of
    /// its batch; `false` when no parked event has this id.
    async fn retry_meter_event(&self, id: i64, now: UnixMillis) -> Result<bool, StoreError>;

    /// Fixes a batch: gives the id `batch` to those of the pending events
    /// `ids` that are in no batch yet (another worker may have taken some:
    /// [`MeterOutbox::meter_batch`] says which it got).
    async fn claim_meter_batch(&self, ids: &[i64], batch: &str) -> Result<(), StoreError>;

    /// The events of a batch, in order, whatever their status.
    async fn meter_batch(&self, batch: &str) -> Result<Vec<MeterEvent>, StoreError>;

    /// Records a failed attempt at sending a batch: each of its pending
    /// events is tried again at `retry_at`, or parked when `None`.
    async fn mark_meter_batch_failed(
        &self,
        batch: &str,
        error: &str,
        retry_at: Option<UnixMillis>,
    ) -> Result<(), StoreError>;

    /// Events in order.
    async fn meter_events(&self, filter: &OutboxFilter) -> Result<Vec<MeterEvent>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for status in [
            OutboxStatus::Pending,
            OutboxStatus::Sent,
            OutboxStatus::Parked,
        ] {
            assert_eq!(OutboxStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OutboxStatus::parse("done"), None);
    }
}
