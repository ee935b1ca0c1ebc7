//! The end of a reserved call: settle it at its cost or refund it, once.
//!
//! A [`PendingSettlement`] is armed when credits are reserved. It is
//! finished with the call's outcome; if the call's future is dropped first
//! (the client went away), dropping it settles the call as `cancelled`. A
//! settlement the database does not take right away is retried in the
//! background until it does — retrying is safe because a settlement applies
//! at most once — so a database hiccup after the call never leaves credits
//! held for good while the proxy runs.

use std::collections::HashSet;
use std::sync::Arc;

use mcp_meter_plugin::ledger::{SettleOutcome, Settlement, SharedLedger};

use crate::failure::{INPUT_REQUIRED, NOT_SERVED};
use crate::retry;

/// A reservation waiting for its call to end.
pub(crate) struct PendingSettlement {
    ledger: SharedLedger,
    settlement: Option<Settlement>,
    refund_on: Arc<HashSet<String>>,
}

impl PendingSettlement {
    pub(crate) fn new(
        ledger: SharedLedger,
        settlement: Settlement,
        refund_on: Arc<HashSet<String>>,
    ) -> Self {
        Self {
            ledger,
            settlement: Some(settlement),
            refund_on,
        }
    }

    /// Settles at `actual` (at most the reserved amount) instead of the
    /// whole reservation.
    pub(crate) fn set_actual(&mut self, actual: i64) {
        if let Some(settlement) = &mut self.settlement {
            settlement.actual = actual;
        }
    }

    /// Settles (success, or a failure the plan does not refund) or refunds
    /// the call. `None` when the database did not answer; the settlement
    /// then goes on in the background.
    pub(crate) async fn finish(&mut self, failure: Option<&str>) -> Option<SettleOutcome> {
        let mut settlement = self.settlement.take()?;
        settlement.refund_reason = self.refund_reason(failure);
        match self.ledger.settle(&settlement).await {
            Ok(outcome) => Some(outcome),
            Err(error) => {
                tracing::warn!(
                    %error,
                    charge_key = %settlement.charge_key,
                    "could not settle a call's credits; retrying in the background"
                );
                retry_in_background(self.ledger.clone(), settlement);
                None
            }
        }
    }

    fn refund_reason(&self, failure: Option<&str>) -> Option<String> {
        let kind = failure?;
        (kind == NOT_SERVED || kind == INPUT_REQUIRED || self.refund_on.contains(kind))
            .then(|| kind.to_owned())
    }
}

impl Drop for PendingSettlement {
    fn drop(&mut self) {
        if let Some(mut settlement) = self.settlement.take() {
            settlement.refund_reason = self.refund_reason(Some("cancelled"));
            retry_in_background(self.ledger.clone(), settlement);
        }
    }
}

/// Applies `settlement` from a task, retrying with backoff.
fn retry_in_background(ledger: SharedLedger, settlement: Settlement) {
    let key = settlement.charge_key.to_string();
    retry::in_background("settling a call's credits", key, move || {
        let ledger = ledger.clone();
        let settlement = settlement.clone();
        async move { ledger.settle(&settlement).await }
    });
}
