//! The meter outbox's sender: reports recorded usage to Stripe Meters,
//! exactly once, through crashes and Stripe outages.
//!
//! Each round it reads the due events, groups the ones in no batch yet by
//! customer, meter and minute, and **fixes each group as a batch in the
//! database** (a random batch id on its events) before anything is sent.
//! A batch is then sent as one meter event whose value is the batch's
//! total, whose timestamp is its latest event's, and whose `identifier`
//! and `Idempotency-Key` are both the batch id. So:
//!
//! * a batch retried after a failure, a lost answer or a crash is the same
//!   events with the same total under the same identifier: Stripe counts
//!   it once (the idempotency key replays the first answer for a day, the
//!   identifier is unique at Stripe for at least a day);
//! * a batch is marked sent only after Stripe accepted it, so a crash
//!   before that mark sends it again, never loses it;
//! * one request per customer, meter and minute of backlog, sent one at a
//!   time: Stripe allows one concurrent meter event per customer and meter.
//!
//! Failures that may pass (429, 409, 5xx, no answer) are retried with
//! backoff (1 s, 2 s, 4 s, … at most 10 min); after `[stripe]
//! meter_max_attempts` attempts, or at once for an error that will not
//! pass (a 400, an unknown customer), the batch is parked with its error
//! and waits for `mcp-meter outbox retry`. The customer's Stripe customer
//! is created on the first report if they have none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::outbox::{MeterEvent, OutboxStatus};
use mcp_meter_plugin::ports::StoreError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{StripeApi, StripeCallError};
use super::customers::{CustomerLinkError, ensure_stripe_customer};
use super::worker::next_attempt;
use crate::store::Store;

/// Due events read at once.
const DUE_LIMIT: u32 = 1_000;

/// How often the sender looks for due events.
const POLL: Duration = Duration::from_secs(1);

/// Events of one customer and meter are batched per this many ms.
const BATCH_WINDOW_MS: i64 = 60_000;

/// How old an event Stripe accepts (35 days), in ms.
const STRIPE_MAX_AGE_MS: i64 = 35 * 86_400_000;

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    /// Batches Stripe accepted.
    pub sent: u32,
    /// Batches that failed and wait for another attempt.
    pub retrying: u32,
    /// Batches parked.
    pub parked: u32,
}

/// Sends meter events to Stripe from the outbox.
pub struct MeterSender {
    store: Arc<dyn Store>,
    api: StripeApi,
    max_attempts: u32,
}

impl MeterSender {
    /// A sender over `store` through `api`, parking a batch after
    /// `max_attempts` failed attempts.
    pub fn new(store: Arc<dyn Store>, api: StripeApi, max_attempts: u32) -> Self {
        Self {
            store,
            api,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Runs rounds until `shutdown`, one a second (a round that found work
    /// is followed by another at once).
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            tracing::debug!("Stripe meter sender started");
            loop {
                let busy = match self.round(UnixMillis::now()).await {
                    Ok(report) => report != RoundReport::default(),
                    Err(error) => {
                        tracing::warn!(%error, "the meter outbox could not be read; trying again");
                        false
                    }
                };
                if shutdown.is_cancelled() {
                    break;
                }
                if !busy {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
            }
            tracing::debug!("Stripe meter sender stopped");
        })
    }

    /// One round at `now`: fixes batches for the due events in none, then
    /// sends every due batch.
    pub async fn round(&self, now: UnixMillis) -> Result<RoundReport, StoreError> {
        let due = self.store.due_meter_events(now, DUE_LIMIT).await?;
        let mut batches: BTreeSet<String> = due.iter().filter_map(|e| e.batch.clone()).collect();
        let mut groups: BTreeMap<(&CustomerId, &str, i64), Vec<i64>> = BTreeMap::new();
        for event in due.iter().filter(|e| e.batch.is_none()) {
            let minute = event.occurred_at.0.div_euclid(BATCH_WINDOW_MS);
            groups
                .entry((&event.customer_id, event.event_name.as_str(), minute))
                .or_default()
                .push(event.id);
        }
        for ids in groups.values() {
            let batch = new_batch_id();
            self.store.claim_meter_batch(ids, &batch).await?;
            batches.insert(batch);
        }
        let mut report = RoundReport::default();
        for batch in batches {
            match self.send_batch(&batch, now).await? {
                Outcome::Sent => report.sent += 1,
                Outcome::Retrying => report.retrying += 1,
                Outcome::Parked => report.parked += 1,
                Outcome::NotDue => {}
            }
        }
        Ok(report)
    }

    async fn send_batch(&self, batch: &str, now: UnixMillis) -> Result<Outcome, StoreError> {
        let events = self.store.meter_batch(batch).await?;
        let pending: Vec<&MeterEvent> = events
            .iter()
            .filter(|e| e.status == OutboxStatus::Pending)
            .collect();
        // Nothing to send: another worker claimed these events, or sent the
        // batch meanwhile; or it waits for its next attempt.
        let Some(first) = pending.first() else {
            return Ok(Outcome::NotDue);
        };
        if pending.iter().any(|e| e.next_attempt_at > now) {
            return Ok(Outcome::NotDue);
        }
        let failures = pending.iter().map(|e| e.attempts).max().unwrap_or(0);
        let ids: Vec<i64> = pending.iter().map(|e| e.id).collect();
        let Some(total) = pending
            .iter()
            .try_fold(0i64, |sum, e| sum.checked_add(e.value))
        else {
            return self
                .fail(
                    batch,
                    failures,
                    "the batch's total does not fit in 64 bits",
                    false,
                    now,
                )
                .await;
        };
        let latest = pending
            .iter()
            .map(|e| e.occurred_at.0)
            .max()
            .unwrap_or(now.0);
        if now.0 - latest > STRIPE_MAX_AGE_MS {
            let message = "Stripe accepts meter events of the past 35 days only; this usage is \
                           older (report it to Stripe by hand or as an invoice item)";
            return self.fail(batch, failures, message, false, now).await;
        }
        let stripe_customer = match ensure_stripe_customer(
            &self.api,
            self.store.as_ref(),
            &first.customer_id,
        )
        .await
        {
            Ok(id) => id,
            Err(CustomerLinkError::Store(error)) => return Err(error),
            Err(error) => {
                let retryable = error.is_retryable();
                let message = format!("creating the Stripe customer failed: {error}");
                return self.fail(batch, failures, &message, retryable, now).await;
            }
        };
        let sent = self
            .api
            .send_meter_event(
                &first.event_name,
                &stripe_customer,
                total,
                batch,
                latest.div_euclid(1_000),
            )
            .await;
        match sent {
            Ok(()) => {}
            Err(error) if is_duplicate(&error) => {
                tracing::info!(%batch, "Stripe already has this batch; marking it sent");
            }
            Err(error) => {
                let retryable = error.is_retryable();
                return self
                    .fail(batch, failures, &error.to_string(), retryable, now)
                    .await;
            }
        }
        self.store.mark_meter_events_sent(&ids, now).await?;
        tracing::debug!(%batch, events = ids.len(), value = total, customer = %first.customer_id,
            meter = %first.event_name, "meter events sent to Stripe");
        Ok(Outcome::Sent)
    }

    async fn fail(
        &self,
        batch: &str,
        failures_before: u32,
        message: &str,
        retryable: bool,
        now: UnixMillis,
    ) -> Result<Outcome, StoreError> {
        let failures = failures_before.saturating_add(1);
        let retry_at = next_attempt(failures, retryable, self.max_attempts, now);
        self.store
            .mark_meter_batch_failed(batch, message, retry_at)
            .await?;
        Ok(match retry_at {
            Some(at) => {
                tracing::warn!(%batch, attempt = failures, error = %message,
                    retry_at = at.0, "sending meter events to Stripe failed; will retry");
                Outcome::Retrying
            }
            None => {
                tracing::error!(%batch, attempts = failures, error = %message,
                    "meter events parked: see `mcp-meter outbox list --status parked`, then \
                     `mcp-meter outbox retry <id>`");
                Outcome::Parked
            }
        })
    }
}

/// How a batch went.
enum Outcome {
    Sent,
    Retrying,
    Parked,
    NotDue,
}

/// A fresh batch id: 128 random bits, so that batches fixed by several
/// workers at once never share one (it is the identifier Stripe dedups on).
fn new_batch_id() -> String {
    format!("mcp-meter-mb-{:032x}", rand::random::<u128>())
}

/// Whether Stripe refused the event as one it already has (its identifier
/// was seen): then the batch was delivered by an earlier attempt.
fn is_duplicate(error: &StripeCallError) -> bool {
    match error {
        StripeCallError::Api {
            status: 400,
            code,
            message,
        } => {
            let message = message.to_ascii_lowercase();
            code.as_deref().is_some_and(|c| c.contains("duplicate"))
                || (message.contains("identifier")
                    && (message.contains("already exists") || message.contains("duplicate")))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_are_unique_and_fit_stripe_identifiers() {
        let a = new_batch_id();
        let b = new_batch_id();
        assert_ne!(a, b);
        assert!(a.len() <= 100, "Stripe identifiers are at most 100 chars");
        assert!(a.starts_with("mcp-meter-mb-"));
    }

    #[test]
    fn a_duplicate_identifier_counts_as_delivered() {
        let duplicate = StripeCallError::Api {
            status: 400,
            code: None,
            message: "An event already exists with identifier mcp-meter-mb-1.".into(),
        };
        assert!(is_duplicate(&duplicate));
        let other = StripeCallError::Api {
            status: 400,
            code: Some("resource_missing".into()),
            message: "No such customer".into(),
        };
        assert!(!is_duplicate(&other));
        assert!(!is_duplicate(&StripeCallError::Unreachable("x".into())));
    }
}
