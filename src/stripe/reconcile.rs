//! `mcp-meter stripe reconcile`: compares local state with Stripe and lists
//! every difference; with `--fix` it repairs what can be repaired, the way
//! the webhook would have, and says what it did.
//!
//! What is compared:
//!
//! 1. **Completed Checkout Sessions** (all pages; `--since` limits them by
//!    creation time). A paid `payment` session naming a credit pack
//!    (`metadata.mcp_meter_credit_pack`) must have granted it: its customer
//!    has a ledger entry with the key `checkout:{session id}`. A
//!    `subscription` session naming a plan (`metadata.mcp_meter_plan`) must
//!    have become the customer's subscription (its `external_id`), unless
//!    that subscription has ended at Stripe since.
//! 2. **Subscriptions**: every local subscription with an `external_id` is
//!    retrieved at Stripe; status, plan (the first item's price through
//!    `[stripe] plan_prices`) and current period must agree.
//! 3. **Customers**: a stored Stripe customer id must still exist at Stripe.
//! 4. **The meter outbox**: parked batches, and pending events older than
//!    an hour.
//!
//! Every read happens before any repair, so a Stripe or database failure
//! while reading changes nothing. Repairs reuse the webhook's code
//! ([`Processor`]): a credit pack is granted once per session through its
//! ledger key (a webhook arriving at the same moment cannot grant it
//! twice), and a subscription takes Stripe's current state with the time
//! of the repair as its provider event time, so it wins over older events
//! and loses to newer ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use mcp_meter_plugin::identity::{Customer, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::LedgerFilter;
use mcp_meter_plugin::outbox::{MeterEvent, OutboxFilter, OutboxStatus};
use mcp_meter_plugin::ports::StoreError;
use mcp_meter_plugin::subscription::{Subscription, SubscriptionStatus};
use serde::Serialize;
use stripe_billing::subscription::RetrieveSubscription;
use stripe_checkout::checkout_session::ListCheckoutSession;
use stripe_checkout::{
    CheckoutSession, CheckoutSessionMode, CheckoutSessionPaymentStatus, CheckoutSessionStatus,
};
use stripe_core::customer::{RetrieveCustomer, RetrieveCustomerReturned};
use stripe_types::RangeQueryTs;

use super::client::{ClientBuildError, StripeApi, StripeCallError};
use super::config::StripeConfig;
use super::events::{
    Applied, CustomerRef, EventError, META_CUSTOMER, META_PACK, META_PLAN, Processor, Purchase,
    SubscriptionUpdate, find_customer, purchase_key,
};
use crate::admin::format_time;
use crate::config::Config;
use crate::store::Store;

/// Pending meter events older than this (ms) are a difference: the sender
/// should have sent them.
pub const STALE_PENDING_MS: i64 = 3_600_000;

/// Checkout Sessions asked for per page (Stripe's maximum).
const STRIPE_PAGE: i64 = 100;

/// Rows read from the store per page.
const STORE_PAGE: u32 = 500;

/// Why reconciliation could not run to the end. Differences are not
/// errors: they are the report.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// `[stripe] secret_key` is missing.
    #[error(
        "reconcile needs [stripe] secret_key: set it to a secret key (sk_…) or a restricted \
         key (rk_…) that can read Checkout Sessions, subscriptions and customers"
    )]
    NoSecretKey,
    /// The Stripe client cannot be built from `[stripe]`.
    #[error("the Stripe client cannot be built: {0}")]
    Client(String),
    /// Stripe could not be read; nothing was changed.
    #[error(
        "Stripe could not be read while {what} ({source}); nothing was changed. Check [stripe] \
         secret_key and api_base, then run `mcp-meter stripe reconcile` again"
    )]
    Stripe {
        /// What was being read.
        what: String,
        /// Stripe's answer, or why there was none.
        source: StripeCallError,
    },
    /// The database failed.
    #[error("the database failed while {what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        source: StoreError,
    },
}

/// What to reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Only Checkout Sessions created at or after this instant (the rest is
    /// always compared whole).
    pub since: Option<UnixMillis>,
    /// Repair what can be repaired.
    pub fix: bool,
}

/// What a difference is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// A paid credit pack was never granted.
    CreditPackNotGranted,
    /// A paid session names a credit pack that is not configured.
    UnknownCreditPack,
    /// A session names no customer that exists here.
    UnknownCustomer,
    /// A subscription bought through Checkout is not the customer's
    /// subscription here.
    SubscriptionNotApplied,
    /// A subscription's status, plan or period differs from Stripe's.
    SubscriptionDiffers,
    /// Stripe does not know a subscription stored here.
    SubscriptionUnknownAtStripe,
    /// A stored Stripe customer was deleted at Stripe, or never existed.
    StripeCustomerMissing,
    /// A batch of meter events is parked.
    ParkedMeterBatch,
    /// Pending meter events are older than an hour.
    StaleMeterEvents,
}

impl DifferenceKind {
    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            DifferenceKind::CreditPackNotGranted => "credit_pack_not_granted",
            DifferenceKind::UnknownCreditPack => "unknown_credit_pack",
            DifferenceKind::UnknownCustomer => "unknown_customer",
            DifferenceKind::SubscriptionNotApplied => "subscription_not_applied",
            DifferenceKind::SubscriptionDiffers => "subscription_differs",
            DifferenceKind::SubscriptionUnknownAtStripe => "subscription_unknown_at_stripe",
            DifferenceKind::StripeCustomerMissing => "stripe_customer_missing",
            DifferenceKind::ParkedMeterBatch => "parked_meter_batch",
            DifferenceKind::StaleMeterEvents => "stale_meter_events",
        }
    }
}

impl fmt::Display for DifferenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a difference stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "note", rename_all = "snake_case")]
pub enum Outcome {
    /// `--fix` would repair it; it was not asked for.
    Fixable,
    /// Repaired; what was done.
    Fixed(String),
    /// Reconciliation cannot repair it; why, and what to do.
    NotFixable(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Fixable => f.write_str("not fixed: run with --fix to repair it"),
            Outcome::Fixed(what) => write!(f, "fixed: {what}"),
            Outcome::NotFixable(why) => write!(f, "not fixed: {why}"),
        }
    }
}

/// What `--fix` does for a difference.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repair {
    /// Grant the pack, as a paid `checkout.session.completed` does.
    GrantPack(Purchase),
    /// Apply Stripe's state, as `customer.subscription.updated` does (its
    /// `event_at` is set when applied).
    ApplySubscription(SubscriptionUpdate),
    /// Put a parked batch back in the queue through one of its events.
    RetryBatch(i64),
}

/// One difference between local state and Stripe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// What it is about.
    pub kind: DifferenceKind,
    /// The local customer (`cus_…`), when one is concerned.
    pub customer: Option<String>,
    /// The Stripe object (`cs_…`, `sub_…`, `cus_…`), or the meter batch id
    /// (the meter event's identifier at Stripe).
    pub stripe_id: Option<String>,
    /// What differs.
    pub detail: String,
    /// Whether it was or can be repaired.
    pub outcome: Outcome,
    #[serde(skip)]
    repair: Option<Repair>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}: {} → {}",
            self.kind,
            self.customer.as_deref().unwrap_or("-"),
            self.stripe_id.as_deref().unwrap_or("-"),
            self.detail,
            self.outcome
        )
    }
}

/// How much was compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// Completed Checkout Sessions that sell a credit pack or a plan.
    pub checkout_sessions: u64,
    /// Local customers.
    pub customers: u64,
    /// Subscriptions retrieved at Stripe: the local ones, and those bought
    /// through Checkout that are not the customer's subscription here.
    pub subscriptions: u64,
    /// Stored Stripe customer ids retrieved at Stripe.
    pub stripe_customers: u64,
}

/// A parked batch of meter events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedBatch {
    /// The batch id (`None` for an event parked on its own).
    pub batch: Option<String>,
    /// Its first event's id (what `mcp-meter outbox retry` takes).
    pub first_event_id: i64,
    /// Whose usage.
    pub customer: String,
    /// The meter.
    pub event_name: String,
    /// How many events.
    pub events: u64,
    /// Their total value.
    pub value: i64,
    /// Failed attempts.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
}

/// The meter outbox at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxSummary {
    /// Events waiting to be sent.
    pub pending_events: u64,
    /// Their total value.
    pub pending_value: i64,
    /// When the oldest of them happened.
    pub oldest_pending_at: Option<UnixMillis>,
    /// Parked batches, oldest first.
    pub parked_batches: Vec<ParkedBatch>,
}

/// What reconciliation found (and, with `--fix`, did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// The `--since` bound on Checkout Sessions.
    pub since: Option<UnixMillis>,
    /// Whether repairs were asked for.
    pub fix: bool,
    /// How much was compared.
    pub checked: Checked,
    /// The meter outbox.
    pub outbox: OutboxSummary,
    /// Every difference found.
    pub differences: Vec<Difference>,
}

impl ReconcileReport {
    fn new(options: &ReconcileOptions) -> Self {
        Self {
            since: options.since,
            fix: options.fix,
            checked: Checked::default(),
            outbox: OutboxSummary::default(),
            differences: Vec::new(),
        }
    }

    /// How many differences were repaired.
    pub fn fixed(&self) -> usize {
        self.differences
            .iter()
            .filter(|d| matches!(d.outcome, Outcome::Fixed(_)))
            .count()
    }

    fn add(
        &mut self,
        kind: DifferenceKind,
        customer: Option<&str>,
        stripe_id: Option<&str>,
        detail: String,
        fix: Result<Repair, String>,
    ) {
        let (outcome, repair) = match fix {
            Ok(repair) => (Outcome::Fixable, Some(repair)),
            Err(why) => (Outcome::NotFixable(why), None),
        };
        self.differences.push(Difference {
            kind,
            customer: customer.map(str::to_owned),
            stripe_id: stripe_id.map(str::to_owned),
            detail,
            outcome,
            repair,
        });
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = match self.since {
            Some(at) => format!("created since {}", format_time(at)),
            None => "all".to_owned(),
        };
        let c = &self.checked;
        writeln!(
            f,
            "Checked: {} completed Checkout Sessions ({since}), {} customers, {} subscriptions, \
             {} Stripe customers.",
            c.checkout_sessions, c.customers, c.subscriptions, c.stripe_customers
        )?;
        let o = &self.outbox;
        let oldest = o
            .oldest_pending_at
            .map(|at| format!(", oldest {}", format_time(at)))
            .unwrap_or_default();
        writeln!(
            f,
            "Meter outbox: {} pending events (value {}{oldest}), {} parked batches.",
            o.pending_events,
            o.pending_value,
            o.parked_batches.len()
        )?;
        if self.differences.is_empty() {
            return writeln!(f, "No differences.");
        }
        writeln!(
            f,
            "{} differences ({} fixed):",
            self.differences.len(),
            self.fixed()
        )?;
        for difference in &self.differences {
            writeln!(f, "{difference}")?;
        }
        Ok(())
    }
}

/// A Stripe subscription as reconciliation compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StripeSubscription {
    id: String,
    customer: String,
    status: String,
    price: Option<String>,
    period: Option<(UnixMillis, UnixMillis)>,
    started_at: Option<UnixMillis>,
}

impl StripeSubscription {
    fn from_typed(subscription: &stripe_billing::Subscription) -> Self {
        let item = subscription.items.data.first();
        Self {
            id: subscription.id.as_str().to_owned(),
            customer: subscription.customer.id().as_str().to_owned(),
            status: subscription.status.as_str().to_owned(),
            price: item.map(|item| item.price.id.as_str().to_owned()),
            period: item.and_then(|item| {
                Some((
                    millis(item.current_period_start)?,
                    millis(item.current_period_end)?,
                ))
            }),
            started_at: millis(subscription.start_date),
        }
    }

    /// Whether it is over (nothing to serve any more).
    fn ended(&self) -> bool {
        matches!(self.status.as_str(), "canceled" | "incomplete_expired")
    }

    /// The plan its price maps to, or why there is none.
    fn plan<'a>(&self, config: &'a StripeConfig) -> Result<&'a str, String> {
        let price = self
            .price
            .as_deref()
            .ok_or_else(|| format!("subscription {} has no item with a price", self.id))?;
        config.plan_for_price(price).ok_or_else(|| {
            format!(
                "Stripe price {price} is not mapped to a plan in [stripe] plan_prices; add it, \
                 then run reconcile --fix again"
            )
        })
    }

    /// Its status in mcp-meter's terms, or why it has none.
    fn status(&self) -> Result<SubscriptionStatus, String> {
        SubscriptionStatus::parse(&self.status).ok_or_else(|| {
            format!(
                "Stripe's status {:?} is not one mcp-meter knows",
                self.status
            )
        })
    }

    /// The change a `customer.subscription.updated` event with this state
    /// would apply to `customer` (a `canceled` one ends the subscription,
    /// as `customer.subscription.deleted` does), or why it cannot be made.
    fn update(
        &self,
        config: &StripeConfig,
        customer: &CustomerId,
    ) -> Result<SubscriptionUpdate, String> {
        let status = self.status()?;
        Ok(SubscriptionUpdate {
            customer: CustomerRef {
                ours: Some(customer.as_str().to_owned()),
                stripe: Some(self.customer.clone()),
            },
            plan: Some(self.plan(config)?.to_owned()),
            fallback_plan: None,
            status,
            external_id: Some(self.id.clone()),
            period: self.period,
            started_at: self.started_at,
            ends: status == SubscriptionStatus::Canceled,
            // Set to the time of the repair when it is applied.
            event_at: UnixMillis(0),
        })
    }
}

/// Unix seconds as milliseconds.
fn millis(seconds: i64) -> Option<UnixMillis> {
    seconds.checked_mul(1000).map(UnixMillis)
}

/// A period as text.
fn period_text(period: Option<(UnixMillis, UnixMillis)>) -> String {
    match period {
        Some((start, end)) => format!("{} to {}", format_time(start), format_time(end)),
        None => "none".to_owned(),
    }
}

/// How the local subscription differs from Stripe's, one phrase each.
fn subscription_differences(
    local: &Subscription,
    stripe: &StripeSubscription,
    config: &StripeConfig,
) -> Vec<String> {
    let mut found = Vec::new();
    if stripe.status().ok() != Some(local.status) {
        found.push(format!(
            "status {} here, {} at Stripe",
            local.status, stripe.status
        ));
    }
    match stripe.plan(config) {
        Ok(plan) if plan == local.plan_id => {}
        Ok(plan) => found.push(format!("plan {} here, {plan} at Stripe", local.plan_id)),
        Err(_) => found.push(format!(
            "plan {} here, Stripe price {} maps to no plan",
            local.plan_id,
            stripe.price.as_deref().unwrap_or("(none)")
        )),
    }
    let here = local.current_period_start.zip(local.current_period_end);
    if stripe.period.is_some() && stripe.period != here {
        found.push(format!(
            "current period {} here, {} at Stripe",
            period_text(here),
            period_text(stripe.period)
        ));
    }
    found
}

/// What a completed Checkout Session sold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sold {
    /// A credit pack (paid).
    Pack(String),
    /// A subscription plan; the subscription the session created.
    Plan(Option<String>),
}

/// A completed Checkout Session that sold something mcp-meter handles.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CompletedSession {
    id: String,
    customer: CustomerRef,
    sold: Sold,
}

impl CompletedSession {
    /// The session, when it is complete, created at or after `since`, and
    /// a paid credit pack or a plan of mcp-meter's.
    fn read(session: &CheckoutSession, since: Option<UnixMillis>) -> Option<Self> {
        if session.status != Some(CheckoutSessionStatus::Complete)
            || since.is_some_and(|since| millis(session.created).is_none_or(|at| at < since))
        {
            return None;
        }
        let meta = |key: &str| {
            session
                .metadata
                .as_ref()
                .and_then(|m| m.get(key))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let sold = match (&session.mode, &session.payment_status) {
            (
                CheckoutSessionMode::Payment,
                CheckoutSessionPaymentStatus::Paid
                | CheckoutSessionPaymentStatus::NoPaymentRequired,
            ) => Sold::Pack(meta(META_PACK)?),
            (CheckoutSessionMode::Subscription, _) => {
                meta(META_PLAN)?;
                Sold::Plan(
                    session
                        .subscription
                        .as_ref()
                        .map(|s| s.id().as_str().to_owned()),
                )
            }
            _ => return None,
        };
        Some(Self {
            id: session.id.as_str().to_owned(),
            customer: CustomerRef {
                ours: session
                    .client_reference_id
                    .clone()
                    .filter(|c| !c.is_empty())
                    .or_else(|| meta(META_CUSTOMER)),
                stripe: session
                    .customer
                    .as_ref()
                    .map(|c| c.id().as_str().to_owned()),
            },
            sold,
        })
    }
}

/// Why a session's customer is not found, for the report.
fn unknown_customer_reason(error: &EventError) -> String {
    match error {
        EventError::UnknownCustomer(id) => {
            format!(
                "it names customer {id}, which does not exist here; create it or correct the session"
            )
        }
        EventError::UnknownStripeCustomer(stripe) => format!(
            "it names no mcp-meter customer, and none is linked to its Stripe customer {stripe}"
        ),
        other => other.to_string(),
    }
}

/// Compares local state with Stripe (see the module documentation).
#[derive(Debug)]
pub struct Reconciler {
    api: StripeApi,
    processor: Processor,
}

impl Reconciler {
    /// For `stripe` (the `[stripe]` of `config`); it needs `secret_key`.
    pub fn new(stripe: &StripeConfig, config: &Config) -> Result<Self, ReconcileError> {
        let api = StripeApi::new(stripe).map_err(|error| match error {
            ClientBuildError::NoSecretKey => ReconcileError::NoSecretKey,
            ClientBuildError::Invalid(why) => ReconcileError::Client(why),
        })?;
        Ok(Self {
            api,
            processor: Processor::for_config(stripe.clone(), config),
        })
    }

    /// Compares everything, then, with `options.fix`, repairs what can be.
    pub async fn run(
        &self,
        store: &dyn Store,
        options: &ReconcileOptions,
    ) -> Result<ReconcileReport, ReconcileError> {
        let mut pass = Pass {
            store,
            api: &self.api,
            processor: &self.processor,
            report: ReconcileReport::new(options),
            checkout_keys: HashMap::new(),
        };
        pass.checkout_sessions(options.since).await?;
        pass.customers().await?;
        pass.outbox(UnixMillis::now()).await?;
        if options.fix {
            pass.repair().await?;
        }
        Ok(pass.report)
    }
}

/// One reconciliation: what it reads with, and what it found so far.
struct Pass<'a> {
    store: &'a dyn Store,
    api: &'a StripeApi,
    processor: &'a Processor,
    report: ReconcileReport,
    /// Per customer, the `checkout:…` ledger keys (read once each).
    checkout_keys: HashMap<String, HashSet<String>>,
}

/// A store failure while doing `what`.
fn store_failed(what: impl Into<String>) -> impl FnOnce(StoreError) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Store { what, source }
}

/// A Stripe failure while doing `what`.
fn stripe_failed(what: impl Into<String>) -> impl FnOnce(stripe::StripeError) -> ReconcileError {
    let what = what.into();
    move |error| ReconcileError::Stripe {
        what,
        source: error.into(),
    }
}

/// `Ok` when Stripe answered 404 (no such object), the error otherwise.
fn not_found(error: stripe::StripeError, what: String) -> Result<(), ReconcileError> {
    match StripeCallError::from(error) {
        StripeCallError::Api { status: 404, .. } => Ok(()),
        source => Err(ReconcileError::Stripe { what, source }),
    }
}

impl Pass<'_> {
    fn config(&self) -> &StripeConfig {
        self.processor.config()
    }

    // ---- 1. Completed Checkout Sessions --------------------------------

    async fn checkout_sessions(&mut self, since: Option<UnixMillis>) -> Result<(), ReconcileError> {
        let mut after: Option<String> = None;
        loop {
            let mut request = ListCheckoutSession::new()
                .status(CheckoutSessionStatus::Complete)
                .limit(STRIPE_PAGE);
            if let Some(since) = since {
                request = request.created(RangeQueryTs::gte(since.0.div_euclid(1000)));
            }
            if let Some(after) = &after {
                request = request.starting_after(after.as_str());
            }
            let page = request
                .send(self.api.client())
                .await
                .map_err(stripe_failed("listing completed Checkout Sessions"))?;
            for session in &page.data {
                if let Some(session) = CompletedSession::read(session, since) {
                    self.report.checked.checkout_sessions += 1;
                    self.session(&session).await?;
                }
            }
            after = page.data.last().map(|s| s.id.as_str().to_owned());
            if !page.has_more || after.is_none() {
                return Ok(());
            }
        }
    }

    async fn session(&mut self, session: &CompletedSession) -> Result<(), ReconcileError> {
        let customer = match find_customer(self.store, &session.customer).await {
            Ok(customer) => customer,
            Err(EventError::Store(source)) => {
                return Err(ReconcileError::Store {
                    what: format!("finding the customer of Checkout Session {}", session.id),
                    source,
                });
            }
            Err(error) => {
                self.report.add(
                    DifferenceKind::UnknownCustomer,
                    session.customer.ours.as_deref(),
                    Some(&session.id),
                    "a completed Checkout Session whose customer is not found here".to_owned(),
                    Err(unknown_customer_reason(&error)),
                );
                return Ok(());
            }
        };
        match &session.sold {
            Sold::Pack(pack) => self.pack_session(session, &customer, pack).await,
            Sold::Plan(Some(subscription)) => {
                self.plan_session(session, &customer, subscription).await
            }
            Sold::Plan(None) => Ok(()),
        }
    }

    async fn pack_session(
        &mut self,
        session: &CompletedSession,
        customer: &Customer,
        pack_id: &str,
    ) -> Result<(), ReconcileError> {
        let key = purchase_key(&session.id);
        if self.checkout_keys_of(&customer.id).await?.contains(&key) {
            return Ok(());
        }
        let Some(pack) = self.config().pack(pack_id) else {
            self.report.add(
                DifferenceKind::UnknownCreditPack,
                Some(customer.id.as_str()),
                Some(&session.id),
                format!("paid for credit pack {pack_id}, which is not granted here"),
                Err(format!(
                    "credit pack {pack_id} (metadata.{META_PACK}) is not in [stripe] \
                     credit_packs; add it, then run reconcile --fix"
                )),
            );
            return Ok(());
        };
        let purchase = Purchase {
            customer: CustomerRef {
                ours: Some(customer.id.as_str().to_owned()),
                stripe: session.customer.stripe.clone(),
            },
            pack: pack.id.clone(),
            credits: pack.credits,
            session: session.id.clone(),
        };
        self.report.add(
            DifferenceKind::CreditPackNotGranted,
            Some(customer.id.as_str()),
            Some(&session.id),
            format!(
                "paid for credit pack {} ({} credits), but the ledger has no entry {key}",
                pack.id, pack.credits
            ),
            Ok(Repair::GrantPack(purchase)),
        );
        Ok(())
    }

    /// The `checkout:…` ledger keys of `customer`.
    async fn checkout_keys_of(
        &mut self,
        customer: &CustomerId,
    ) -> Result<&HashSet<String>, ReconcileError> {
        let id = customer.as_str().to_owned();
        if !self.checkout_keys.contains_key(&id) {
            let keys = self.read_checkout_keys(customer).await?;
            self.checkout_keys.insert(id.clone(), keys);
        }
        Ok(self.checkout_keys.entry(id).or_default())
    }

    async fn read_checkout_keys(
        &self,
        customer: &CustomerId,
    ) -> Result<HashSet<String>, ReconcileError> {
        let mut keys = HashSet::new();
        let mut after_id = None;
        loop {
            let filter = LedgerFilter {
                customer: Some(customer.clone()),
                after_id,
                limit: STORE_PAGE,
            };
            let entries = self
                .store
                .entries(&filter)
                .await
                .map_err(store_failed(format!("reading the ledger of {customer}")))?;
            keys.extend(
                entries
                    .iter()
                    .filter(|e| e.idempotency_key.starts_with("checkout:"))
                    .map(|e| e.idempotency_key.clone()),
            );
            match entries.last() {
                Some(last) if entries.len() == STORE_PAGE as usize => after_id = Some(last.id),
                _ => return Ok(keys),
            }
        }
    }

    async fn plan_session(
        &mut self,
        session: &CompletedSession,
        customer: &Customer,
        subscription_id: &str,
    ) -> Result<(), ReconcileError> {
        let local = self.subscription_of(&customer.id).await?;
        let local_external = local.as_ref().and_then(|s| s.external_id.as_deref());
        if local_external == Some(subscription_id) {
            return Ok(());
        }
        let Some(stripe) = self.retrieve_subscription(subscription_id).await? else {
            self.report.add(
                DifferenceKind::SubscriptionUnknownAtStripe,
                Some(customer.id.as_str()),
                Some(subscription_id),
                format!(
                    "Checkout Session {} created subscription {subscription_id}, which Stripe \
                     does not know",
                    session.id
                ),
                Err("nothing to apply: Stripe has no such subscription".to_owned()),
            );
            return Ok(());
        };
        if stripe.ended() {
            return Ok(());
        }
        let detail = format!(
            "Checkout Session {} created subscription {subscription_id} ({} at Stripe); the \
             customer's subscription here is {}",
            session.id,
            stripe.status,
            local_external.unwrap_or("none")
        );
        let fix = match local_external {
            Some(other) => Err(format!(
                "the customer's subscription here is {other}; if {subscription_id} is the \
                 current one, set it with `mcp-meter subscriptions set --external-id \
                 {subscription_id}` and run reconcile --fix again"
            )),
            None => stripe
                .update(self.config(), &customer.id)
                .map(Repair::ApplySubscription),
        };
        self.report.add(
            DifferenceKind::SubscriptionNotApplied,
            Some(customer.id.as_str()),
            Some(subscription_id),
            detail,
            fix,
        );
        Ok(())
    }

    async fn subscription_of(
        &self,
        customer: &CustomerId,
    ) -> Result<Option<Subscription>, ReconcileError> {
        self.store
            .subscription(customer)
            .await
            .map_err(store_failed(format!(
                "reading the subscription of {customer}"
            )))
    }

    /// The subscription at Stripe; `None` when Stripe does not know it.
    async fn retrieve_subscription(
        &mut self,
        id: &str,
    ) -> Result<Option<StripeSubscription>, ReconcileError> {
        self.report.checked.subscriptions += 1;
        match RetrieveSubscription::new(id).send(self.api.client()).await {
            Ok(subscription) => Ok(Some(StripeSubscription::from_typed(&subscription))),
            Err(error) => not_found(error, format!("retrieving subscription {id}")).map(|()| None),
        }
    }

    // ---- 2 and 3. Customers: subscriptions, Stripe customers ----------

    async fn customers(&mut self) -> Result<(), ReconcileError> {
        let mut after: Option<CustomerId> = None;
        loop {
            let page = self
                .store
                .list_customers(after.as_ref(), STORE_PAGE)
                .await
                .map_err(store_failed("listing customers"))?;
            for customer in &page {
                self.report.checked.customers += 1;
                self.stripe_customer(customer).await?;
                self.subscription(customer).await?;
            }
            match page.last() {
                Some(last) if page.len() == STORE_PAGE as usize => after = Some(last.id.clone()),
                _ => return Ok(()),
            }
        }
    }

    async fn stripe_customer(&mut self, customer: &Customer) -> Result<(), ReconcileError> {
        let Some(stripe_id) = customer.stripe_customer_id.as_deref() else {
            return Ok(());
        };
        self.report.checked.stripe_customers += 1;
        let found = match RetrieveCustomer::new(stripe_id)
            .send(self.api.client())
            .await
        {
            Ok(RetrieveCustomerReturned::Customer(_)) => return Ok(()),
            Ok(RetrieveCustomerReturned::DeletedCustomer(_)) => "was deleted at Stripe",
            Err(error) => {
                not_found(error, format!("retrieving customer {stripe_id}"))?;
                "is not known at Stripe"
            }
        };
        self.report.add(
            DifferenceKind::StripeCustomerMissing,
            Some(customer.id.as_str()),
            Some(stripe_id),
            format!("the customer's Stripe customer {stripe_id} {found}"),
            Err(
                "restore the customer at Stripe, or clear customers.stripe_customer_id in the \
                 database so that a new Stripe customer is created at the next checkout or \
                 usage report"
                    .to_owned(),
            ),
        );
        Ok(())
    }

    async fn subscription(&mut self, customer: &Customer) -> Result<(), ReconcileError> {
        let Some(local) = self.subscription_of(&customer.id).await? else {
            return Ok(());
        };
        let Some(external) = local.external_id.as_deref() else {
            return Ok(());
        };
        let Some(stripe) = self.retrieve_subscription(external).await? else {
            self.report.add(
                DifferenceKind::SubscriptionUnknownAtStripe,
                Some(customer.id.as_str()),
                Some(external),
                format!(
                    "the customer's subscription ({} on plan {}) is {external}, which Stripe \
                     does not know",
                    local.status, local.plan_id
                ),
                Err(
                    "correct it with `mcp-meter subscriptions set --external-id …` (or end it \
                     with --status canceled)"
                        .to_owned(),
                ),
            );
            return Ok(());
        };
        let found = subscription_differences(&local, &stripe, self.config());
        if found.is_empty() {
            return Ok(());
        }
        let fix = stripe
            .update(self.config(), &customer.id)
            .map(Repair::ApplySubscription);
        self.report.add(
            DifferenceKind::SubscriptionDiffers,
            Some(customer.id.as_str()),
            Some(external),
            found.join("; "),
            fix,
        );
        Ok(())
    }

    // ---- 4. The meter outbox -------------------------------------------

    async fn outbox(&mut self, now: UnixMillis) -> Result<(), ReconcileError> {
        let pending = self.meter_events(OutboxStatus::Pending).await?;
        self.pending(&pending, now);
        let parked = self.meter_events(OutboxStatus::Parked).await?;
        for batch in parked_batches(&parked) {
            self.report.add(
                DifferenceKind::ParkedMeterBatch,
                Some(&batch.customer),
                batch.batch.as_deref(),
                format!(
                    "{} meter events ({}, value {}) parked after {} attempts: {}",
                    batch.events,
                    batch.event_name,
                    batch.value,
                    batch.attempts,
                    batch.last_error.as_deref().unwrap_or("no error recorded")
                ),
                Ok(Repair::RetryBatch(batch.first_event_id)),
            );
            self.report.outbox.parked_batches.push(batch);
        }
        Ok(())
    }

    fn pending(&mut self, pending: &[MeterEvent], now: UnixMillis) {
        let summary = &mut self.report.outbox;
        summary.pending_events = pending.len() as u64;
        summary.pending_value = pending
            .iter()
            .fold(0i64, |sum, e| sum.saturating_add(e.value));
        summary.oldest_pending_at = pending.iter().map(|e| e.occurred_at).min();
        let stale = pending
            .iter()
            .filter(|e| now.0.saturating_sub(e.occurred_at.0) > STALE_PENDING_MS)
            .count();
        let Some(oldest) = summary.oldest_pending_at.filter(|_| stale > 0) else {
            return;
        };
        self.report.add(
            DifferenceKind::StaleMeterEvents,
            None,
            None,
            format!(
                "{stale} pending meter events are older than an hour (oldest {}) and not at \
                 Stripe yet",
                format_time(oldest)
            ),
            Err(
                "they are sent while `mcp-meter serve` runs with [stripe] secret_key; see their \
                 last error with `mcp-meter outbox list --status pending`"
                    .to_owned(),
            ),
        );
    }

    async fn meter_events(&self, status: OutboxStatus) -> Result<Vec<MeterEvent>, ReconcileError> {
        let mut events = Vec::new();
        let mut after_id = None;
        loop {
            let filter = OutboxFilter {
                status: Some(status),
                customer: None,
                after_id,
                limit: STORE_PAGE,
            };
            let page = self
                .store
                .meter_events(&filter)
                .await
                .map_err(store_failed(format!(
                    "reading the {} meter events",
                    status.as_str()
                )))?;
            let full = page.len() == STORE_PAGE as usize;
            after_id = page.last().map(|e| e.id);
            events.extend(page);
            if !full {
                return Ok(events);
            }
        }
    }

    // ---- Repairs --------------------------------------------------------

    async fn repair(&mut self) -> Result<(), ReconcileError> {
        let mut differences = std::mem::take(&mut self.report.differences);
        for difference in &mut differences {
            let Some(repair) = difference.repair.take() else {
                continue;
            };
            let what = format!(
                "repairing {} of {} (the repairs listed before it were made; run reconcile \
                 again)",
                difference.kind,
                difference.stripe_id.as_deref().unwrap_or("-")
            );
            difference.outcome = self.apply(&repair, what).await?;
        }
        self.report.differences = differences;
        Ok(())
    }

    async fn apply(&self, repair: &Repair, what: String) -> Result<Outcome, ReconcileError> {
        match repair {
            Repair::GrantPack(purchase) => {
                applied(self.processor.purchase(self.store, purchase).await, what)
            }
            Repair::ApplySubscription(update) => {
                let update = SubscriptionUpdate {
                    event_at: UnixMillis::now(),
                    ..update.clone()
                };
                applied(self.processor.subscription(self.store, &update).await, what)
            }
            Repair::RetryBatch(event) => {
                let queued = self
                    .store
                    .retry_meter_event(*event, UnixMillis::now())
                    .await
                    .map_err(store_failed(what))?;
                Ok(Outcome::Fixed(if queued {
                    "queued again with the rest of its batch (sent while `mcp-meter serve` runs)"
                        .to_owned()
                } else {
                    "no longer parked (queued again meanwhile)".to_owned()
                }))
            }
        }
    }
}

/// The outcome of a repair made through the webhook's code.
fn applied(result: Result<Applied, EventError>, what: String) -> Result<Outcome, ReconcileError> {
    match result {
        Ok(Applied::Changed(done)) => Ok(Outcome::Fixed(done)),
        Ok(Applied::Nothing(why)) => Ok(Outcome::Fixed(format!("nothing left to change: {why}"))),
        Err(EventError::Store(source @ (StoreError::Unavailable(_) | StoreError::Other(_)))) => {
            Err(ReconcileError::Store { what, source })
        }
        Err(error) => Ok(Outcome::NotFixable(error.to_string())),
    }
}

/// Parked events grouped by batch (an event without one alone), oldest
/// first.
fn parked_batches(parked: &[MeterEvent]) -> Vec<ParkedBatch> {
    let mut groups: BTreeMap<i64, ParkedBatch> = BTreeMap::new();
    let mut first_of: HashMap<&str, i64> = HashMap::new();
    for event in parked {
        let first = match event.batch.as_deref() {
            Some(batch) => *first_of.entry(batch).or_insert(event.id),
            None => event.id,
        };
        let group = groups.entry(first).or_insert_with(|| ParkedBatch {
            batch: event.batch.clone(),
            first_event_id: event.id,
            customer: event.customer_id.as_str().to_owned(),
            event_name: event.event_name.clone(),
            events: 0,
            value: 0,
            attempts: 0,
            last_error: None,
        });
        group.events += 1;
        group.value = group.value.saturating_add(event.value);
        group.attempts = group.attempts.max(event.attempts);
        if event.last_error.is_some() {
            group.last_error = event.last_error.clone();
        }
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StripeConfig {
        toml::from_str(
            r#"
            webhook_secrets = ["whsec_test"]
            plan_prices = { team = "price_team", pro = "price_pro" }
            "#,
        )
        .expect("config")
    }

    const T: i64 = 1_767_225_600_000;

    fn local(status: SubscriptionStatus, plan: &str) -> Subscription {
        Subscription {
            customer_id: CustomerId::new("cus_ours"),
            plan_id: plan.into(),
            status,
            started_at: UnixMillis(T),
            past_due_since: None,
            current_period_start: Some(UnixMillis(T)),
            current_period_end: Some(UnixMillis(T + 1000)),
            external_id: Some("sub_1".into()),
            updated_at: UnixMillis(T),
        }
    }

    fn stripe(status: &str, price: &str) -> StripeSubscription {
        StripeSubscription {
            id: "sub_1".into(),
            customer: "cus_Stripe".into(),
            status: status.into(),
            price: Some(price.into()),
            period: Some((UnixMillis(T), UnixMillis(T + 1000))),
            started_at: Some(UnixMillis(T)),
        }
    }

    #[test]
    fn the_same_subscription_has_no_differences() {
        let found = subscription_differences(
            &local(SubscriptionStatus::Active, "team"),
            &stripe("active", "price_team"),
            &config(),
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn status_plan_and_period_differences_are_named() {
        let mut at_stripe = stripe("past_due", "price_pro");
        at_stripe.period = Some((UnixMillis(T + 1000), UnixMillis(T + 2000)));
        let found = subscription_differences(
            &local(SubscriptionStatus::Active, "team"),
            &at_stripe,
            &config(),
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0], "status active here, past_due at Stripe");
        assert_eq!(found[1], "plan team here, pro at Stripe");
        assert!(found[2].starts_with("current period"), "{found:?}");
        let unmapped = subscription_differences(
            &local(SubscriptionStatus::Active, "team"),
            &stripe("active", "price_other"),
            &config(),
        );
        assert_eq!(unmapped.len(), 1);
        assert!(unmapped[0].contains("price_other"), "{unmapped:?}");
    }

    #[test]
    fn stripes_state_becomes_the_webhooks_change() {
        let customer = CustomerId::new("cus_ours");
        let update = stripe("past_due", "price_team")
            .update(&config(), &customer)
            .expect("an update");
        assert_eq!(update.plan.as_deref(), Some("team"));
        assert_eq!(update.status, SubscriptionStatus::PastDue);
        assert_eq!(update.customer.ours.as_deref(), Some("cus_ours"));
        assert_eq!(update.customer.stripe.as_deref(), Some("cus_Stripe"));
        assert!(!update.ends);
        let canceled = stripe("canceled", "price_team")
            .update(&config(), &customer)
            .expect("an update");
        assert!(canceled.ends);
        let unmapped = stripe("active", "price_other").update(&config(), &customer);
        assert!(
            unmapped.as_ref().is_err_and(|e| e.contains("plan_prices")),
            "{unmapped:?}"
        );
        let odd = stripe("exploded", "price_team").update(&config(), &customer);
        assert!(odd.is_err(), "{odd:?}");
        assert!(stripe("incomplete_expired", "price_team").ended());
        assert!(!stripe("past_due", "price_team").ended());
    }

    fn event(id: i64, batch: Option<&str>, value: i64, error: Option<&str>) -> MeterEvent {
        MeterEvent {
            id,
            customer_id: CustomerId::new("cus_ours"),
            event_name: "mcp_calls".into(),
            value,
            identifier: format!("call_{id}"),
            occurred_at: UnixMillis(T),
            status: OutboxStatus::Parked,
            attempts: 3,
            last_error: error.map(str::to_owned),
            next_attempt_at: UnixMillis(T),
            sent_at: None,
            batch: batch.map(str::to_owned),
        }
    }

    #[test]
    fn parked_events_group_by_batch() {
        let batches = parked_batches(&[
            event(1, Some("b1"), 2, Some("Stripe answered 400")),
            event(2, Some("b2"), 5, None),
            event(3, Some("b1"), 3, Some("Stripe answered 400")),
            event(4, None, 1, Some("alone")),
        ]);
        assert_eq!(batches.len(), 3, "{batches:?}");
        assert_eq!(batches[0].batch.as_deref(), Some("b1"));
        assert_eq!((batches[0].events, batches[0].value), (2, 5));
        assert_eq!(batches[0].first_event_id, 1);
        assert_eq!(
            batches[0].last_error.as_deref(),
            Some("Stripe answered 400")
        );
        assert_eq!(batches[1].batch.as_deref(), Some("b2"));
        assert_eq!((batches[2].batch.as_deref(), batches[2].value), (None, 1));
    }

    #[test]
    fn the_report_prints_one_line_per_difference_and_serializes() {
        let mut report = ReconcileReport::new(&ReconcileOptions {
            since: None,
            fix: false,
        });
        assert!(report.to_string().contains("No differences."));
        report.add(
            DifferenceKind::StripeCustomerMissing,
            Some("cus_ours"),
            Some("cus_Stripe"),
            "gone".into(),
            Err("restore it".into()),
        );
        report.add(
            DifferenceKind::ParkedMeterBatch,
            Some("cus_ours"),
            Some("b1"),
            "parked".into(),
            Ok(Repair::RetryBatch(1)),
        );
        let text = report.to_string();
        assert!(
            text.contains(
                "stripe_customer_missing cus_ours cus_Stripe: gone → not fixed: restore it"
            ),
            "{text}"
        );
        assert!(
            text.contains("parked_meter_batch cus_ours b1: parked → not fixed: run with --fix"),
            "{text}"
        );
        let json = serde_json::to_value(&report).expect("JSON");
        assert_eq!(json["differences"][0]["kind"], "stripe_customer_missing");
        assert_eq!(json["differences"][0]["outcome"]["status"], "not_fixable");
        assert_eq!(json["differences"][0]["outcome"]["note"], "restore it");
        assert_eq!(json["differences"][1]["outcome"]["status"], "fixable");
        assert!(json["differences"][1].get("repair").is_none());
    }
}
