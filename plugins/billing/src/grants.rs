//! A credits plan's periodic grant: N credits each period, with what is
//! left reset or rolled over. The grant is applied at the customer's first
//! billed call of each period (before its credits are reserved). The store
//! applies it once per customer, plan and period, so several instances —
//! or a restart — never grant twice; this process remembers the last
//! period it saw granted to each customer so that later calls in the same
//! period do not ask again.

use std::collections::HashMap;
use std::sync::Mutex;

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{GrantOutcome, PeriodicGrant};

use crate::layer::Billing;
use crate::plan::CreditGrant;

/// The period last granted to each customer on each plan, in this process.
#[derive(Debug, Default)]
pub(crate) struct GrantedPeriods {
    seen: Mutex<HashMap<(CustomerId, String), UnixMillis>>,
}

impl GrantedPeriods {
    fn is_granted(&self, key: &(CustomerId, String), period_start: UnixMillis) -> bool {
        self.seen
            .lock()
            .map(|seen| seen.get(key) == Some(&period_start))
            .unwrap_or(false)
    }

    fn remember(&self, key: (CustomerId, String), period_start: UnixMillis) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(key, period_start);
        }
    }
}

/// Applies this period's grant for the customer if it is not applied yet.
/// Call it inside the customer's lane. A grant the database refuses is
/// logged and asked for again on the next call.
pub(crate) async fn apply_due(
    billing: &Billing,
    customer_id: &CustomerId,
    plan_id: &str,
    grant: &CreditGrant,
) {
    let at = billing.clock.now();
    let period_start = grant.period.start_of(at);
    let key = (customer_id.clone(), plan_id.to_owned());
    if billing.granted.is_granted(&key, period_start) {
        return;
    }
    let periodic = PeriodicGrant {
        customer_id: customer_id.clone(),
        plan_id: plan_id.to_owned(),
        period_start,
        amount: grant.amount,
        mode: grant.mode,
        at,
    };
    match billing.ledger.periodic_grant(&periodic).await {
        Ok(GrantOutcome::Granted { expired, balance }) => {
            tracing::info!(customer = %customer_id, plan = %plan_id, granted = grant.amount, expired, balance, "applied the plan's credit grant for a new period");
            billing.granted.remember(key, period_start);
        }
        Ok(GrantOutcome::AlreadyGranted) => billing.granted.remember(key, period_start),
        Err(error) => {
            tracing::warn!(%error, customer = %customer_id, plan = %plan_id, "could not apply the plan's credit grant; asking again on the next call");
        }
    }
}
