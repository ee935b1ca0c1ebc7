//! Quota held by a call in flight (free calls, included calls): taken
//! before the call is forwarded, so concurrent calls can never pass the
//! cap, and given back when the call fails, so a failed call never uses
//! quota. Dropping a held quota (the client went away) gives it back as
//! `cancelled`; a give-back the database does not take at once is retried
//! in the background (it applies at most once).

use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ledger::{
    ChargeKey, QuotaOutcome, QuotaRelease, QuotaTake, ReleaseOutcome, SharedLedger,
};
use mcp_meter_plugin::ports::StoreError;
use serde_json::{Value, json};

use crate::layer::{Billing, MeteredCall};
use crate::retry;

/// Where a call stands with its quota.
pub(crate) enum Quota {
    /// Taken now; held until the call ends.
    Held {
        /// Gives the units back if the call fails.
        held: HeldQuota,
        /// Units used in the period, this call included.
        used: i64,
    },
    /// This logical call holds its units already (a retry).
    Repeat {
        /// Units used in the period.
        used: i64,
    },
    /// The cap is reached.
    Exhausted {
        /// Units used in the period.
        used: i64,
    },
}

/// Takes one unit of `counter` in the period starting at `period_start`
/// for the call, under `cap`.
pub(crate) async fn take(
    billing: &Billing,
    call: &MeteredCall,
    charge_key: &ChargeKey,
    counter: String,
    period_start: UnixMillis,
    cap: Option<i64>,
) -> Result<Quota, StoreError> {
    let customer_id = call.caller.customer.id.clone();
    let take = QuotaTake {
        customer_id: customer_id.clone(),
        charge_key: charge_key.clone(),
        call_id: call.call_id.clone(),
        plan_id: call.plan.id.clone(),
        tool: call.request.tool_name().map(str::to_owned),
        counter,
        period_start,
        units: 1,
        cap,
        at: billing.clock.now(),
    };
    let outcome = billing.ledger.take_quota(&take).await?;
    Ok(match outcome {
        QuotaOutcome::Taken { used } => Quota::Held {
            held: HeldQuota::new(
                billing.ledger.clone(),
                QuotaRelease {
                    customer_id,
                    charge_key: charge_key.clone(),
                    reason: String::new(),
                    at: take.at,
                },
            ),
            used,
        },
        QuotaOutcome::AlreadyTaken { used } => Quota::Repeat { used },
        QuotaOutcome::Exhausted { used } => Quota::Exhausted { used },
    })
}

/// Quota a call holds until it ends.
pub(crate) struct HeldQuota {
    ledger: SharedLedger,
    release: Option<QuotaRelease>,
}

impl HeldQuota {
    pub(crate) fn new(ledger: SharedLedger, release: QuotaRelease) -> Self {
        Self {
            ledger,
            release: Some(release),
        }
    }

    /// Keeps the quota used (the call succeeded), or gives it back (it
    /// failed). `Some` when the units were given back now.
    pub(crate) async fn finish(&mut self, failure: Option<&str>) -> Option<ReleaseOutcome> {
        let mut release = self.release.take()?;
        let reason = failure?;
        release.reason = reason.to_owned();
        match self.ledger.release_quota(&release).await {
            Ok(outcome) => Some(outcome),
            Err(error) => {
                tracing::warn!(
                    %error,
                    charge_key = %release.charge_key,
                    "could not give a failed call's quota back; retrying in the background"
                );
                release_in_background(self.ledger.clone(), release);
                None
            }
        }
    }
}

impl Drop for HeldQuota {
    fn drop(&mut self) {
        if let Some(mut release) = self.release.take() {
            release.reason = "cancelled".to_owned();
            release_in_background(self.ledger.clone(), release);
        }
    }
}

fn release_in_background(ledger: SharedLedger, release: QuotaRelease) {
    let key = release.charge_key.to_string();
    retry::in_background("giving a failed call's quota back", key, move || {
        let ledger = ledger.clone();
        let release = release.clone();
        async move { ledger.release_quota(&release).await }
    });
}

/// The warning for the highest of `percents` (ascending) that `used` of
/// `limit` has reached, if any.
pub(crate) fn quota_warning(used: i64, limit: i64, percents: &[i64]) -> Option<Value> {
    if limit <= 0 {
        return None;
    }
    let reached = percents
        .iter()
        .rev()
        .find(|p| i128::from(used) * 100 >= i128::from(**p) * i128::from(limit))?;
    Some(json!({
        "kind": "quota",
        "percent": reached,
        "used": used,
        "limit": limit,
        "message": format!("You have used {used} of {limit} calls ({reached}% or more) in this period."),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_percentage_reached_is_the_warning() {
        let at = [80, 90, 100];
        assert_eq!(quota_warning(79, 100, &at), None);
        assert_eq!(quota_warning(80, 100, &at).unwrap()["percent"], 80);
        assert_eq!(quota_warning(89, 100, &at).unwrap()["percent"], 80);
        assert_eq!(quota_warning(90, 100, &at).unwrap()["percent"], 90);
        assert_eq!(quota_warning(100, 100, &at).unwrap()["percent"], 100);
        // 8 of 10 is 80%; 7 of 9 is not.
        assert_eq!(quota_warning(8, 10, &at).unwrap()["percent"], 80);
        assert_eq!(quota_warning(7, 9, &at), None);
        assert_eq!(quota_warning(5, 0, &at), None);
        assert_eq!(quota_warning(100, 100, &[]), None);
    }
}
