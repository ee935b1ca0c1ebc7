//! The webhook worker: processes stored events in the background, so the
//! endpoint answers Stripe at once.
//!
//! It wakes when the endpoint stores a new event, and once a second for
//! events due again; takes the due ones (oldest first), applies each and
//! marks it processed, or failed with the next attempt after an exponential
//! backoff (1 s, 2 s, 4 s, … at most 10 min). After
//! `[stripe] webhook_max_attempts` attempts (default 10) the event is
//! `failed` for good and logged as an error. Events stay in the database
//! meanwhile, so a restart loses none. Several instances may process the
//! same event at once: every effect is idempotent (see [`super::events`]).

use std::sync::Arc;
use std::time::Duration;

use mcp_meter_plugin::identity::UnixMillis;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::events::{Applied, Processor};
use crate::store::{Store, WebhookEvent};

/// Events taken from the store at once.
const BATCH: u32 = 50;

/// How often the worker looks for events due again without being woken.
const POLL: Duration = Duration::from_secs(1);

/// The first retry's delay.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest delay between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The delay before the next attempt after `failures` failed attempts
/// (1 s after the first, doubling, at most 10 min).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF)
}

/// When to try again after a failed attempt that made `failures` in all:
/// `None` (give up) when the failure will not pass or the attempts are
/// used up, else after the [`backoff`].
pub fn next_attempt(
    failures: u32,
    retryable: bool,
    max_attempts: u32,
    now: UnixMillis,
) -> Option<UnixMillis> {
    (retryable && failures < max_attempts).then(|| {
        let delay = i64::try_from(backoff(failures).as_millis()).unwrap_or(i64::MAX);
        UnixMillis(now.0.saturating_add(delay))
    })
}

/// Starts the worker: it processes due events with `processor` until
/// `shutdown`, woken early by `wake`.
pub fn spawn_worker(
    store: Arc<dyn Store>,
    processor: Arc<Processor>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tracing::debug!("Stripe webhook worker started");
        loop {
            drain(store.as_ref(), &processor, &shutdown).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        tracing::debug!("Stripe webhook worker stopped");
    })
}

/// Processes due events until none is left (or shutdown).
async fn drain(store: &dyn Store, processor: &Processor, shutdown: &CancellationToken) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let due = match store.due_webhook_events(UnixMillis::now(), BATCH).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read due Stripe webhook events; trying again shortly");
                return;
            }
        };
        let full = due.len() == BATCH as usize;
        for event in &due {
            if shutdown.is_cancelled() {
                return;
            }
            process(store, processor, event).await;
        }
        if !full {
            return;
        }
    }
}

/// Applies one event and records the outcome.
async fn process(store: &dyn Store, processor: &Processor, event: &WebhookEvent) {
    let id = event.id.as_str();
    let kind = event.event_type.as_str();
    match processor.apply(store, event).await {
        Ok(done) => {
            match &done {
                Applied::Changed(what) => tracing::info!(event = id, r#type = kind, "{what}"),
                Applied::Nothing(why) => tracing::debug!(event = id, r#type = kind, "{why}"),
            }
            if let Err(error) = store
                .mark_webhook_event_processed(id, UnixMillis::now())
                .await
            {
                // Applied but not marked: it runs again, with no second
                // effect.
                tracing::warn!(event = id, %error, "could not mark a Stripe event processed");
            }
        }
        Err(error) => {
            let failures = event.attempts.saturating_add(1);
            let max = processor.config().webhook_max_attempts;
            let message = error.to_string();
            let retry_at = (failures < max).then(|| {
                let delay = backoff(failures);
                UnixMillis(
                    UnixMillis::now()
                        .0
                        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                )
            });
            match retry_at {
                Some(at) => tracing::warn!(
                    event = id,
                    r#type = kind,
                    attempt = failures,
                    of = max,
                    retry_in_ms = at.0.saturating_sub(UnixMillis::now().0),
                    "Stripe event failed; retrying: {message}"
                ),
                None => tracing::error!(
                    event = id,
                    r#type = kind,
                    attempts = failures,
                    "Stripe event failed {failures} times and is given up on (status failed): {message}"
                ),
            }
            if let Err(error) = store
                .mark_webhook_event_failed(id, &message, retry_at)
                .await
            {
                tracing::warn!(event = id, %error, "could not record a Stripe event's failure");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_ten_minutes() {
        let secs: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        assert_eq!(backoff(0), FIRST_BACKOFF);
    }
}
