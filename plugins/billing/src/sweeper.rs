//! Recovery after an unclean stop: the sweep that gives back credits held
//! by calls that will never end and writes the usage records that were
//! lost with a killed process.
//!
//! A credits call reserves before it is forwarded and settles after it; a
//! process killed in between (`kill -9`, a crash, a power loss) leaves the
//! reservation held for good. The usage recorder writes records behind the
//! call, in batches, so a kill can also lose the record of a call whose
//! settlement was already committed: the ledger would charge a call the
//! usage records do not know. [`spawn_recovery`] runs a task that, at start
//! and then every [`RecoverySettings::every`]:
//!
//! 1. refunds every reservation held for longer than
//!    [`RecoverySettings::abandon_after`] (reason `abandoned`), through the
//!    ordinary settlement, which applies once: a call that was in fact
//!    still running finds itself settled when it ends and is not charged;
//! 2. writes a usage record (outcome `recovered`) for every call settled
//!    longer ago than the same horizon that has none.
//!
//! The horizon, not "everything at start", because several instances may
//! share one database and the calls another instance has in flight hold
//! reservations too: only a reservation older than the longest call (the
//! configuration refuses a horizon not above `[server]
//! request_timeout_secs`) can be abandoned. Faults are logged and the work
//! is tried again on the next round; the task never panics.

use std::collections::HashSet;
use std::time::Duration;

use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{ChargeKey, SettleOutcome, Settlement, SharedLedger};
use mcp_meter_plugin::ports::{SharedClock, StoreError};
use tokio::task::JoinHandle;

use crate::plan::config::DEFAULT_ABANDON_RESERVATIONS_AFTER_SECS;

/// The refund reason of an abandoned reservation.
pub const ABANDONED: &str = "abandoned";
/// How many rows one read of a scan takes.
const PAGE: u32 = 500;
/// The longest pause between rounds.
const MAX_EVERY: Duration = Duration::from_secs(30);
/// The shortest pause between rounds.
const MIN_EVERY: Duration = Duration::from_secs(1);

/// How the recovery sweep runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverySettings {
    /// A reservation held (or a call settled without a usage record) for
    /// longer than this is taken to be left by a stopped process.
    pub abandon_after: Duration,
    /// The pause between rounds.
    pub every: Duration,
    /// Whether to write the usage records of settled calls that have none
    /// (only where a usage recorder writes records at all).
    pub recover_usage: bool,
}

impl RecoverySettings {
    /// Settings for a horizon of `abandon_after`: a round every third of
    /// it, at least every 30 s and at most every second, recovering usage
    /// records.
    pub fn new(abandon_after: Duration) -> Self {
        Self {
            abandon_after,
            every: (abandon_after / 3).clamp(MIN_EVERY, MAX_EVERY),
            recover_usage: true,
        }
    }
}

impl Default for RecoverySettings {
    /// A horizon of `[billing] abandon_reservations_after_secs`' default
    /// (15 minutes), a round every 30 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(DEFAULT_ABANDON_RESERVATIONS_AFTER_SECS))
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Abandoned reservations refunded now.
    pub refunded: usize,
    /// Credits they returned.
    pub credits_returned: i64,
    /// Usage records written for calls that had lost theirs.
    pub recovered: usize,
    /// Writes or reads that failed (tried again next round).
    pub failures: usize,
}

/// Starts the recovery sweep: one round now, then one every
/// `settings.every`, until the handle is aborted.
pub fn spawn_recovery(
    ledger: SharedLedger,
    clock: SharedClock,
    settings: RecoverySettings,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut sweeper = Sweeper::new(ledger, clock, settings);
        let mut ticks = tokio::time::interval(settings.every.max(MIN_EVERY));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let report = sweeper.round().await;
            if report != RoundReport::default() {
                tracing::info!(
                    refunded = report.refunded,
                    credits_returned = report.credits_returned,
                    recovered = report.recovered,
                    failures = report.failures,
                    "recovery sweep after an unclean stop"
                );
            }
        }
    })
}

/// The sweep's state between rounds.
pub struct Sweeper {
    ledger: SharedLedger,
    clock: SharedClock,
    settings: RecoverySettings,
    /// Settled calls that changed before this were all looked at (a full
    /// look first, then only what is recent).
    recorded_since: UnixMillis,
}

impl Sweeper {
    /// A sweeper that has not looked at anything yet.
    pub fn new(ledger: SharedLedger, clock: SharedClock, settings: RecoverySettings) -> Self {
        Self {
            ledger,
            clock,
            settings,
            recorded_since: UnixMillis(i64::MIN),
        }
    }

    /// One round: refunds abandoned reservations, then recovers lost usage
    /// records.
    pub async fn round(&mut self) -> RoundReport {
        let abandon_ms = millis(self.settings.abandon_after);
        let horizon = UnixMillis(self.clock.now().0.saturating_sub(abandon_ms));
        let mut report = RoundReport::default();
        self.refund_abandoned(horizon, &mut report).await;
        if self.settings.recover_usage {
            let failures = report.failures;
            let complete = self.recover_usage(horizon, &mut report).await;
            if complete && report.failures == failures {
                // Rows changed before the horizon are done, but a row can
                // commit a little after the time it carries (a settlement
                // waits for its turn): look back two horizons next time.
                let overlap = abandon_ms.saturating_mul(2);
                self.recorded_since = UnixMillis(horizon.0.saturating_sub(overlap));
            }
        }
        report
    }

    /// Refunds every reservation held since before `horizon`.
    async fn refund_abandoned(&self, horizon: UnixMillis, report: &mut RoundReport) {
        let mut seen: HashSet<(CustomerId, ChargeKey, i64)> = HashSet::new();
        loop {
            let page = match self.ledger.held_reservations(horizon, PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "could not read held reservations; trying again later");
                    report.failures += 1;
                    return;
                }
            };
            let full = page.len() >= PAGE as usize;
            let mut progressed = false;
            for held in page {
                let seen_key = (
                    held.customer_id.clone(),
                    held.charge_key.clone(),
                    held.attempt,
                );
                if !seen.insert(seen_key) {
                    continue;
                }
                progressed = true;
                let settlement = Settlement {
                    customer_id: held.customer_id.clone(),
                    charge_key: held.charge_key.clone(),
                    attempt: held.attempt,
                    actual: held.amount,
                    refund_reason: Some(ABANDONED.to_owned()),
                    at: self.clock.now(),
                };
                match self.ledger.settle(&settlement).await {
                    Ok(SettleOutcome::Applied {
                        returned,
                        balance_after,
                    }) => {
                        tracing::warn!(
                            customer = %held.customer_id,
                            call_id = %held.call_id,
                            charge_key = %held.charge_key,
                            credits = returned,
                            balance_after,
                            reserved_at = held.reserved_at.0,
                            "refunded a reservation abandoned by a stopped process"
                        );
                        report.refunded += 1;
                        report.credits_returned = report.credits_returned.saturating_add(returned);
                    }
                    Ok(outcome) => {
                        tracing::debug!(
                            customer = %held.customer_id,
                            call_id = %held.call_id,
                            ?outcome,
                            "a held reservation ended on its own"
                        );
                    }
                    Err(error) => {
                        report.failures += 1;
                        tracing::warn!(
                            %error,
                            customer = %held.customer_id,
                            call_id = %held.call_id,
                            "could not refund an abandoned reservation; trying again later"
                        );
                        if matches!(error, StoreError::Unavailable(_)) {
                            return;
                        }
                    }
                }
            }
            if !full || !progressed {
                return;
            }
        }
    }

    /// Writes a usage record for every call settled between
    /// `recorded_since` and `horizon` that has none. `true` when every
    /// page was read.
    async fn recover_usage(&self, horizon: UnixMillis, report: &mut RoundReport) -> bool {
        let mut seen: HashSet<CallId> = HashSet::new();
        loop {
            let page = match self
                .ledger
                .unrecorded_charges(self.recorded_since, horizon, PAGE)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "could not look for calls without usage records; trying again later"
                    );
                    report.failures += 1;
                    return false;
                }
            };
            let full = page.len() >= PAGE as usize;
            let mut progressed = false;
            for charge in page {
                if !seen.insert(charge.call_id.clone()) {
                    continue;
                }
                progressed = true;
                match self.ledger.record_recovered_call(&charge).await {
                    Ok(true) => {
                        tracing::warn!(
                            customer = %charge.customer_id,
                            call_id = %charge.call_id,
                            tool = charge.tool.as_deref().unwrap_or(""),
                            credits = charge.amount,
                            "recorded a charged call whose usage record was lost"
                        );
                        report.recovered += 1;
                    }
                    Ok(false) => {}
                    Err(error) => {
                        report.failures += 1;
                        tracing::warn!(
                            %error,
                            customer = %charge.customer_id,
                            call_id = %charge.call_id,
                            "could not record a recovered call; trying again later"
                        );
                        if matches!(error, StoreError::Unavailable(_)) {
                            return false;
                        }
                    }
                }
            }
            if !full {
                return true;
            }
            if !progressed {
                return false;
            }
        }
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_come_thrice_per_horizon_between_one_and_thirty_seconds() {
        assert_eq!(RecoverySettings::default().every, Duration::from_secs(30));
        assert_eq!(
            RecoverySettings::default().abandon_after,
            Duration::from_secs(900)
        );
        assert_eq!(
            RecoverySettings::new(Duration::from_secs(3)).every,
            Duration::from_secs(1)
        );
        assert_eq!(
            RecoverySettings::new(Duration::from_secs(60)).every,
            Duration::from_secs(20)
        );
        assert_eq!(
            RecoverySettings::new(Duration::from_millis(10)).every,
            MIN_EVERY
        );
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }
}
