//! Per-call plans (and subscription overage) billed through Stripe invoice
//! items.
//!
//! A `per_call` plan's calls accrue `charge` entries in the ledger (exact,
//! in micro-units). When a billing period has closed (plus
//! `[stripe] invoice_delay_secs`, so calls still running at the boundary
//! have settled), the invoicer sums each customer's charges on the plan
//! over that period, applies the plan's `minimum`, and **queues one invoice
//! item per customer, plan and period** in the invoice outbox (unique in
//! the database: several instances closing the same period queue it once).
//! The sender then creates the invoice item at Stripe with an idempotency
//! key made of the customer, plan and period, so a retry after a failure,
//! a lost answer or a crash creates it once; Stripe adds pending invoice
//! items to the customer's next invoice. Failures are retried with backoff
//! and parked after `meter_max_attempts` attempts, like meter events.
//!
//! Amounts: the period's total in micro-units is rounded half up, once per
//! period, to the currency's minor unit (cents; none for zero-decimal
//! currencies such as JPY; three decimals for BHD, JOD, KWD, OMR, TND).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_meter_billing::Catalog;
use mcp_meter_billing::money::Unit;
use mcp_meter_billing::period::{BillingPeriod, Period, rfc3339};
use mcp_meter_billing::plan::Model;
use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ports::StoreError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{InvoiceItemRequest, StripeApi};
use super::customers::{CustomerLinkError, ensure_stripe_customer};
use super::events::META_CUSTOMER;
use super::worker::next_attempt;
use crate::store::{InvoiceItemRow, NewInvoiceItem, Store};

/// How often the invoicer looks for closed periods and due items.
const POLL: Duration = Duration::from_secs(5);

/// Due items read at once.
const DUE_LIMIT: u32 = 100;

/// Closed periods looked at per plan: the last one, and the one before in
/// case the proxy was down when it closed.
const LOOKBACK_PERIODS: usize = 2;

/// A per-call plan as the invoicer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoicedPlan {
    /// The plan id.
    pub id: String,
    /// Its display name (on the invoice line).
    pub name: String,
    /// ISO 4217, lower case.
    pub currency: String,
    /// Its billing period.
    pub period: Period,
    /// The least owed for a period with calls, micro-units.
    pub minimum: Option<i64>,
}

impl InvoicedPlan {
    /// The plans of `catalog` whose charges are invoiced: per-call plans,
    /// and subscription plans with overage on calendar periods (the fee
    /// itself is Stripe's subscription; the overage is invoiced here).
    pub fn all(catalog: &Catalog) -> Vec<InvoicedPlan> {
        catalog
            .plans()
            .filter_map(|plan| {
                let Unit::Currency(code) = &plan.unit else {
                    return None;
                };
                let (period, minimum) = match &plan.model {
                    Model::PerCall {
                        period, minimum, ..
                    } => (*period, *minimum),
                    Model::Subscription(rules) => match rules.period {
                        BillingPeriod::Calendar(period) if rules.overage => (period, None),
                        _ => return None,
                    },
                    _ => return None,
                };
                Some(InvoicedPlan {
                    id: plan.id.clone(),
                    name: plan.name.clone(),
                    currency: code.clone(),
                    period,
                    minimum,
                })
            })
            .collect()
    }

    /// The closed periods to invoice at `now` (closed `delay_ms` ago at
    /// least), newest first.
    fn closed_periods(&self, now: UnixMillis, delay_ms: i64) -> Vec<(UnixMillis, UnixMillis)> {
        let mut end = self
            .period
            .start_of(UnixMillis(now.0.saturating_sub(delay_ms)));
        let mut periods = Vec::with_capacity(LOOKBACK_PERIODS);
        for _ in 0..LOOKBACK_PERIODS {
            let start = self.period.start_of(UnixMillis(end.0 - 1));
            periods.push((start, end));
            end = start;
        }
        periods
    }
}

/// The number of decimals of `currency`'s minor unit.
fn minor_decimals(currency: &str) -> u32 {
    const ZERO: &[&str] = &[
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ];
    const THREE: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];
    if ZERO.contains(&currency) {
        0
    } else if THREE.contains(&currency) {
        3
    } else {
        2
    }
}

/// `micros` (millionths of `currency`) in its minor unit, rounded half up;
/// `None` if it does not fit.
pub fn minor_units(micros: i64, currency: &str) -> Option<i64> {
    let divisor = 10_i64.pow(6 - minor_decimals(currency));
    micros
        .checked_add(divisor / 2)
        .map(|m| m.div_euclid(divisor))
}

/// What one round of sending did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InvoiceReport {
    /// Items queued for closed periods.
    pub queued: u32,
    /// Items Stripe accepted (or with nothing to invoice).
    pub sent: u32,
    /// Items that failed and wait for another attempt.
    pub retrying: u32,
    /// Items parked.
    pub parked: u32,
}

/// Queues and sends the invoice items of per-call plans.
pub struct Invoicer {
    store: Arc<dyn Store>,
    api: StripeApi,
    plans: Vec<InvoicedPlan>,
    delay_ms: i64,
    max_attempts: u32,
    /// The newest period end closed per plan by this process.
    closed: Mutex<HashMap<String, UnixMillis>>,
}

impl Invoicer {
    /// An invoicer for `plans`; `None` when there are none.
    pub fn new(
        store: Arc<dyn Store>,
        api: StripeApi,
        plans: Vec<InvoicedPlan>,
        delay: Duration,
        max_attempts: u32,
    ) -> Option<Self> {
        if plans.is_empty() {
            return None;
        }
        Some(Self {
            store,
            api,
            plans,
            delay_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
            max_attempts: max_attempts.max(1),
            closed: Mutex::new(HashMap::new()),
        })
    }

    /// Runs rounds until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(error) = self.round(UnixMillis::now()).await {
                    tracing::warn!(%error, "invoicing per-call charges failed; trying again");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        })
    }

    /// Queues the items of periods closed by `now`, then sends due items.
    pub async fn round(&self, now: UnixMillis) -> Result<InvoiceReport, StoreError> {
        let mut report = InvoiceReport {
            queued: self.close_periods(now).await?,
            ..InvoiceReport::default()
        };
        for item in self.store.due_invoice_items(now, DUE_LIMIT).await? {
            match self.send(&item, now).await? {
                Sent::Yes => report.sent += 1,
                Sent::Retrying => report.retrying += 1,
                Sent::Parked => report.parked += 1,
            }
        }
        Ok(report)
    }

    async fn close_periods(&self, now: UnixMillis) -> Result<u32, StoreError> {
        let mut queued = 0;
        for plan in &self.plans {
            let periods = plan.closed_periods(now, self.delay_ms);
            let Some(&(_, newest_end)) = periods.first() else {
                continue;
            };
            let done = self
                .closed
                .lock()
                .ok()
                .and_then(|closed| closed.get(&plan.id).copied());
            if done == Some(newest_end) {
                continue;
            }
            for (start, end) in periods {
                queued += self.close_period(plan, start, end, now).await?;
            }
            if let Ok(mut closed) = self.closed.lock() {
                closed.insert(plan.id.clone(), newest_end);
            }
        }
        Ok(queued)
    }

    async fn close_period(
        &self,
        plan: &InvoicedPlan,
        start: UnixMillis,
        end: UnixMillis,
        now: UnixMillis,
    ) -> Result<u32, StoreError> {
        let mut queued = 0;
        for charges in self.store.period_charges(&plan.id, start, end).await? {
            if charges.currency != plan.currency {
                tracing::error!(customer = %charges.customer_id, plan = %plan.id,
                    currency = %charges.currency, "charges in another currency than the plan's; \
                     not invoiced");
                continue;
            }
            let charged = charges.charged.max(0);
            let minimum = plan.minimum.unwrap_or(0);
            let owed = charged.max(minimum);
            let Some(amount) = minor_units(owed, &plan.currency) else {
                tracing::error!(customer = %charges.customer_id, plan = %plan.id, owed,
                    "the period's total does not fit an invoice item; not invoiced");
                continue;
            };
            let new = NewInvoiceItem {
                customer_id: charges.customer_id.clone(),
                plan_id: plan.id.clone(),
                period_start: start,
                period_end: end,
                currency: plan.currency.clone(),
                charged,
                amount,
                minimum_applied: minimum > charged,
                at: now,
            };
            if self.store.queue_invoice_item(&new).await? {
                queued += 1;
                tracing::info!(customer = %new.customer_id, plan = %plan.id, amount,
                    currency = %plan.currency, calls = charges.calls,
                    period_start = %rfc3339(start), "queued the period's invoice item");
            }
        }
        Ok(queued)
    }

    async fn send(&self, item: &InvoiceItemRow, now: UnixMillis) -> Result<Sent, StoreError> {
        if item.amount == 0 {
            self.store
                .mark_invoice_item_sent(item.id, None, now)
                .await?;
            return Ok(Sent::Yes);
        }
        let stripe_customer =
            match ensure_stripe_customer(&self.api, self.store.as_ref(), &item.customer_id).await {
                Ok(id) => id,
                Err(CustomerLinkError::Store(error)) => return Err(error),
                Err(error) => {
                    let message = format!("creating the Stripe customer failed: {error}");
                    return self.fail(item, &message, error.is_retryable(), now).await;
                }
            };
        let plan_name = self
            .plans
            .iter()
            .find(|p| p.id == item.plan_id)
            .map_or(item.plan_id.as_str(), |p| p.name.as_str());
        let day = |at: UnixMillis| rfc3339(at).chars().take(10).collect::<String>();
        let mut description = format!(
            "{plan_name}: calls from {} to {} (UTC)",
            day(item.period_start),
            day(item.period_end)
        );
        if item.minimum_applied {
            description.push_str(", the plan's minimum charge");
        }
        let request = InvoiceItemRequest {
            stripe_customer: &stripe_customer,
            amount: item.amount,
            currency: &item.currency,
            description: &description,
            period_start_secs: item.period_start.0.div_euclid(1_000),
            // Stripe's period end is inclusive.
            period_end_secs: (item.period_end.0 - 1).div_euclid(1_000),
            metadata: HashMap::from([
                (META_CUSTOMER.to_owned(), item.customer_id.to_string()),
                ("mcp_meter_plan".to_owned(), item.plan_id.clone()),
                (
                    "mcp_meter_period_start".to_owned(),
                    rfc3339(item.period_start),
                ),
            ]),
        };
        let key = format!(
            "mcp-meter-invoice-{}-{}-{}",
            item.customer_id, item.plan_id, item.period_start.0
        );
        match self.api.create_invoice_item(&request, &key).await {
            Ok(id) => {
                self.store
                    .mark_invoice_item_sent(item.id, Some(&id), now)
                    .await?;
                tracing::info!(customer = %item.customer_id, plan = %item.plan_id,
                    invoice_item = %id, amount = item.amount, "invoice item created at Stripe");
                Ok(Sent::Yes)
            }
            Err(error) => {
                self.fail(item, &error.to_string(), error.is_retryable(), now)
                    .await
            }
        }
    }

    async fn fail(
        &self,
        item: &InvoiceItemRow,
        message: &str,
        retryable: bool,
        now: UnixMillis,
    ) -> Result<Sent, StoreError> {
        let failures = item.attempts.saturating_add(1);
        let retry_at = next_attempt(failures, retryable, self.max_attempts, now);
        self.store
            .mark_invoice_item_failed(item.id, message, retry_at)
            .await?;
        Ok(if retry_at.is_some() {
            tracing::warn!(item = item.id, attempt = failures, error = %message,
                "creating an invoice item at Stripe failed; will retry");
            Sent::Retrying
        } else {
            tracing::error!(item = item.id, attempts = failures, error = %message,
                "invoice item parked: see `mcp-meter invoices list --status parked`, then \
                 `mcp-meter invoices retry <id>`");
            Sent::Parked
        })
    }
}

/// How sending one item went.
enum Sent {
    Yes,
    Retrying,
    Parked,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_units_round_half_up_to_the_minor_unit() {
        assert_eq!(minor_units(750_000, "usd"), Some(75));
        assert_eq!(minor_units(4_999, "usd"), Some(0));
        assert_eq!(minor_units(5_000, "usd"), Some(1));
        assert_eq!(minor_units(1_234_567, "eur"), Some(123));
        assert_eq!(minor_units(1_500_000, "jpy"), Some(2));
        assert_eq!(minor_units(1_499_999, "jpy"), Some(1));
        assert_eq!(minor_units(1_234_567, "kwd"), Some(1_235));
        assert_eq!(minor_units(0, "usd"), Some(0));
        assert_eq!(minor_units(i64::MAX, "usd"), None);
    }

    #[test]
    fn per_call_plans_and_calendar_overage_are_invoiced() {
        let config = crate::config::Config::parse_str(
            r#"
[upstream]
command = "sh"
[[plans]]
id = "payg"
model = "per_call"
currency = "usd"
prices = { default = "0.01" }
per_call = { period = "day", minimum = "5.00" }
[[plans]]
id = "team"
model = "subscription"
currency = "usd"
prices = { default = "0.02" }
subscription = { included_calls = 10, beyond_included = "overage", period = "month" }
[[plans]]
id = "capped"
model = "subscription"
currency = "usd"
subscription = { included_calls = 10 }
[[plans]]
id = "anchored"
model = "subscription"
currency = "usd"
prices = { default = "0.02" }
subscription = { included_calls = 10, beyond_included = "overage", period = "subscription" }
[[plans]]
id = "prepaid"
model = "credits"
prices = { default = 1 }
"#,
            "test",
            &|_| None,
        )
        .expect("parses");
        let catalog = Catalog::compile(&config.billing, &config.plans).expect("compiles");
        let plans = InvoicedPlan::all(&catalog);
        let ids: Vec<(&str, Period, Option<i64>)> = plans
            .iter()
            .map(|p| (p.id.as_str(), p.period, p.minimum))
            .collect();
        assert_eq!(
            ids,
            [
                ("payg", Period::Day, Some(5_000_000)),
                ("team", Period::Month, None)
            ]
        );
    }

    #[test]
    fn closed_periods_are_the_last_two_after_the_delay() {
        let plan = InvoicedPlan {
            id: "p".into(),
            name: "P".into(),
            currency: "usd".into(),
            period: Period::Day,
            minimum: None,
        };
        let day = 86_400_000;
        // 00:05 on day 10, 10 minutes of delay: day 9 has not closed yet.
        let now = UnixMillis(10 * day + 5 * 60_000);
        assert_eq!(
            plan.closed_periods(now, 10 * 60_000),
            [
                (UnixMillis(8 * day), UnixMillis(9 * day)),
                (UnixMillis(7 * day), UnixMillis(8 * day)),
            ]
        );
        assert_eq!(
            plan.closed_periods(now, 60_000),
            [
                (UnixMillis(9 * day), UnixMillis(10 * day)),
                (UnixMillis(8 * day), UnixMillis(9 * day)),
            ]
        );
    }
}
