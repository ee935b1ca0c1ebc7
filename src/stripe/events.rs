//! What each Stripe event does to mcp-meter's customers, credits and
//! subscriptions.
//!
//! Processing has two steps: [`interpret`] reads the stored payload (with
//! tolerant `serde_json::Value` lookups, so fields Stripe adds or moves
//! between API versions do not break it) into an [`Action`], without the
//! store; [`Processor::apply`] then finds the customer and applies the
//! action. Every effect is idempotent, so an event applied twice (a retry
//! after a crash, two instances) has one effect:
//!
//! * a credit pack is one ledger `purchase` with the idempotency key
//!   `checkout:{session id}`;
//! * a subscription change carries the event's time, and the store ignores
//!   a change older than the last one applied — so events delivered out of
//!   order end in the state of the newest one, not the last to arrive.
//!
//! Stripe's event times are whole seconds, and related events often share
//! one (`customer.subscription.created` and `…updated` when a first payment
//! succeeds at once). Within a second the events are ordered by type, in
//! the order Stripe's own lifecycle produces them (checkout, created,
//! invoice, updated, deleted): the time stored is `created × 1000 + rank`.

use mcp_meter_plugin::identity::{Customer, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{BalanceChange, ChangeOutcome, EntryKind};
use mcp_meter_plugin::ports::StoreError;
use mcp_meter_plugin::subscription::{SubscriptionChange, SubscriptionStatus};
use serde_json::Value;

use super::config::StripeConfig;
use crate::config::Config;
use crate::store::{Store, WebhookEvent};

/// The metadata key naming mcp-meter's customer id (on Checkout Sessions
/// and subscriptions).
pub const META_CUSTOMER: &str = "mcp_meter_customer_id";
/// The Checkout Session metadata key naming a credit pack.
pub const META_PACK: &str = "mcp_meter_credit_pack";
/// The Checkout Session metadata key naming a subscription plan.
pub const META_PLAN: &str = "mcp_meter_plan";

/// Why an event could not be applied. The worker records the message and
/// retries the event later; each says what would make it succeed.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The stored payload is not a JSON object with `data.object`.
    #[error("the event payload is not a Stripe event: {0}")]
    Payload(String),
    /// A field the event needs is missing or has the wrong type.
    #[error("the event's object has no {field} ({expected})")]
    Missing {
        /// Where, in the event's object.
        field: &'static str,
        /// What was expected there.
        expected: &'static str,
    },
    /// Nothing in the event names a customer.
    #[error(
        "the event names no mcp-meter customer: set client_reference_id or \
         metadata.{META_CUSTOMER} to the customer's id (cus_…) when creating the Checkout \
         Session or subscription"
    )]
    NoCustomer,
    /// The customer id the event names does not exist.
    #[error("the event names customer {0:?}, which does not exist in mcp-meter")]
    UnknownCustomer(String),
    /// No customer has the event's Stripe customer id.
    #[error(
        "no mcp-meter customer has Stripe customer id {0}: it is linked when a Checkout \
         Session with client_reference_id completes, or set metadata.{META_CUSTOMER} on the \
         subscription"
    )]
    UnknownStripeCustomer(String),
    /// The Checkout Session names a credit pack that is not configured.
    #[error(
        "credit pack {0:?} (metadata.{META_PACK}) is not in [stripe] credit_packs; add it and \
         the event is applied on its next attempt"
    )]
    UnknownPack(String),
    /// A subscription's price maps to no plan.
    #[error(
        "Stripe price {0} is not mapped to a plan in [stripe] plan_prices; add it and the \
         event is applied on its next attempt"
    )]
    UnknownPrice(String),
    /// The Checkout Session names a plan that is not a subscription plan.
    #[error(
        "plan {0:?} (metadata.{META_PLAN}) is not a `subscription` plan in [[plans]]; fix the \
         plan or the Checkout Session's metadata"
    )]
    UnknownPlan(String),
    /// The subscription's status is not one mcp-meter knows.
    #[error("subscription status {0:?} is not a Stripe status mcp-meter knows")]
    UnknownStatus(String),
    /// An invoice's subscription is not stored and the invoice names no
    /// mapped price.
    #[error(
        "subscription {0} of this invoice is not known yet and the invoice names no price \
         from [stripe] plan_prices; it is retried (its customer.subscription.created event \
         may not have arrived)"
    )]
    NoPlan(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A customer as an event names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerRef {
    /// mcp-meter's id (`client_reference_id`, `metadata.mcp_meter_customer_id`).
    pub ours: Option<String>,
    /// Stripe's customer id.
    pub stripe: Option<String>,
}

/// Credits bought through a Checkout Session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// Who paid.
    pub customer: CustomerRef,
    /// The pack bought.
    pub pack: String,
    /// Its credits.
    pub credits: i64,
    /// The Checkout Session (`cs_…`): the purchase's idempotency key.
    pub session: String,
}

/// A change to a customer's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionUpdate {
    /// Whose.
    pub customer: CustomerRef,
    /// The plan; `None` keeps the stored subscription's plan (an invoice).
    pub plan: Option<String>,
    /// The plan when `plan` is `None` and no subscription is stored yet.
    pub fallback_plan: Option<String>,
    /// The new status.
    pub status: SubscriptionStatus,
    /// Stripe's subscription id.
    pub external_id: Option<String>,
    /// The current period.
    pub period: Option<(UnixMillis, UnixMillis)>,
    /// When the subscription started.
    pub started_at: Option<UnixMillis>,
    /// The subscription ended: the customer moves to the plan for after a
    /// cancellation.
    pub ends: bool,
    /// The event's time and rank within its second (see the module
    /// documentation): the change's time and its provider event time.
    pub event_at: UnixMillis,
}

/// What an event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing (a type not handled, or a state that needs nothing yet).
    Nothing(String),
    /// Grant a credit pack.
    Purchase(Purchase),
    /// Change a subscription.
    Subscription(SubscriptionUpdate),
}

/// What applying an event did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Something changed.
    Changed(String),
    /// Nothing needed to change (a type not handled, a replay of an
    /// effect, an older event).
    Nothing(String),
}

/// The rank of an event type among events of the same second.
fn rank(event_type: &str) -> i64 {
    match event_type {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => 100,
        "customer.subscription.created" => 200,
        "invoice.paid" | "invoice.payment_failed" => 300,
        "customer.subscription.updated" => 400,
        "customer.subscription.deleted" => 900,
        _ => 0,
    }
}

/// What applying an event needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct Processor {
    stripe: StripeConfig,
    subscription_plans: Vec<String>,
    plan_after_cancel: Option<String>,
}

impl Processor {
    /// From `[stripe]`, the ids of the `subscription` plans and
    /// `[billing] default_plan`.
    pub fn new(
        stripe: StripeConfig,
        subscription_plans: Vec<String>,
        default_plan: Option<&str>,
    ) -> Self {
        let plan_after_cancel = stripe.plan_after_cancel(default_plan).map(str::to_owned);
        Self {
            stripe,
            subscription_plans,
            plan_after_cancel,
        }
    }

    /// From `stripe` and the rest of `config`: its `subscription` plans and
    /// `[billing] default_plan`.
    pub fn for_config(stripe: StripeConfig, config: &Config) -> Self {
        let subscription_plans = config
            .plans
            .iter()
            .filter(|plan| plan.model == "subscription")
            .map(|plan| plan.id.clone())
            .collect();
        Self::new(
            stripe,
            subscription_plans,
            config.billing.default_plan.as_deref(),
        )
    }

    /// The configuration.
    pub fn config(&self) -> &StripeConfig {
        &self.stripe
    }

    /// Applies a stored event; `Ok` with what it did (for the log).
    pub async fn apply(
        &self,
        store: &dyn Store,
        event: &WebhookEvent,
    ) -> Result<Applied, EventError> {
        let payload: Value =
            serde_json::from_str(&event.payload).map_err(|e| EventError::Payload(e.to_string()))?;
        match interpret(self, &event.event_type, event.created, &payload)? {
            Action::Nothing(why) => Ok(Applied::Nothing(why)),
            Action::Purchase(purchase) => self.purchase(store, &purchase).await,
            Action::Subscription(update) => self.subscription(store, &update).await,
        }
    }

    /// Grants a credit pack once per Checkout Session (ledger key
    /// `checkout:{session id}`): what a paid `checkout.session.completed`
    /// does, and what `stripe reconcile --fix` does for one it missed.
    pub(crate) async fn purchase(
        &self,
        store: &dyn Store,
        purchase: &Purchase,
    ) -> Result<Applied, EventError> {
        let customer = resolve(store, &purchase.customer).await?;
        let change = BalanceChange {
            customer_id: customer.id.clone(),
            kind: EntryKind::Purchase,
            amount: purchase.credits,
            idempotency_key: purchase_key(&purchase.session),
            reason: Some(format!(
                "credit pack {} (Stripe Checkout Session {})",
                purchase.pack, purchase.session
            )),
            at: UnixMillis::now(),
        };
        Ok(match store.change_balance(&change).await? {
            ChangeOutcome::Applied { balance_after } => Applied::Changed(format!(
                "granted {} credits (pack {}) to {}; balance {balance_after}",
                purchase.credits, purchase.pack, customer.id
            )),
            ChangeOutcome::AlreadyApplied { balance } => Applied::Nothing(format!(
                "pack {} of session {} was granted to {} before; balance {balance}",
                purchase.pack, purchase.session, customer.id
            )),
            ChangeOutcome::WouldGoNegative { balance } => {
                return Err(EventError::Store(StoreError::Other(format!(
                    "granting {} credits to {} was refused (balance {balance})",
                    purchase.credits, customer.id
                ))));
            }
        })
    }

    /// Applies a subscription change (older than the last provider event
    /// applied: nothing changes); an ending one moves the customer to the
    /// plan for after a cancellation. What subscription events do, and what
    /// `stripe reconcile --fix` does with Stripe's current state.
    pub(crate) async fn subscription(
        &self,
        store: &dyn Store,
        update: &SubscriptionUpdate,
    ) -> Result<Applied, EventError> {
        let customer = resolve(store, &update.customer).await?;
        let stored = store.subscription(&customer.id).await?;
        // An invoice (no plan of its own) of another subscription than the
        // customer's current one changes nothing.
        if let (Some(stored), Some(external)) = (&stored, &update.external_id)
            && update.plan.is_none()
            && stored
                .external_id
                .as_deref()
                .is_some_and(|current| current != external)
        {
            return Ok(Applied::Nothing(format!(
                "invoice of subscription {external}, not {}'s current subscription {}; nothing \
                 to change",
                customer.id,
                stored.external_id.as_deref().unwrap_or_default()
            )));
        }
        let plan = match (&update.plan, &stored, &update.fallback_plan) {
            (Some(plan), _, _) => plan.clone(),
            (None, Some(stored), _) => stored.plan_id.clone(),
            (None, None, Some(plan)) => plan.clone(),
            (None, None, None) => {
                return Err(EventError::NoPlan(
                    update.external_id.clone().unwrap_or_default(),
                ));
            }
        };
        let change = SubscriptionChange {
            customer_id: customer.id.clone(),
            plan_id: plan,
            status: update.status,
            started_at: update.started_at,
            current_period: update.period,
            external_id: update.external_id.clone(),
            at: update.event_at,
            provider_event_at: Some(update.event_at),
        };
        let (after, moved) = match (update.ends, &self.plan_after_cancel) {
            (true, Some(plan_after)) => (
                store.end_subscription(&change, plan_after).await?,
                Some(plan_after),
            ),
            _ => (store.set_subscription(&change).await?, None),
        };
        if after.updated_at != change.at {
            return Ok(Applied::Nothing(format!(
                "{}'s subscription already reflects a newer event ({} on plan {}); this older \
                 one changes nothing",
                customer.id, after.status, after.plan_id
            )));
        }
        Ok(Applied::Changed(match moved {
            Some(plan_after) => format!(
                "{}'s subscription is {} on plan {}; the customer is now on plan {plan_after}",
                customer.id, after.status, after.plan_id
            ),
            None => format!(
                "{}'s subscription is {} on plan {}",
                customer.id, after.status, after.plan_id
            ),
        }))
    }
}

/// The ledger idempotency key of the credit pack bought in Checkout Session
/// `session`.
pub(crate) fn purchase_key(session: &str) -> String {
    format!("checkout:{session}")
}

/// Finds the customer an event names (mcp-meter's id first, else the one
/// linked to the Stripe customer), without changing anything.
pub(crate) async fn find_customer(
    store: &dyn Store,
    reference: &CustomerRef,
) -> Result<Customer, EventError> {
    Ok(match (&reference.ours, &reference.stripe) {
        (Some(ours), _) => {
            let id =
                CustomerId::parse(ours).ok_or_else(|| EventError::UnknownCustomer(ours.clone()))?;
            store
                .find_customer(&id)
                .await?
                .ok_or_else(|| EventError::UnknownCustomer(ours.clone()))?
        }
        (None, Some(stripe)) => store
            .find_customer_by_stripe_id(stripe)
            .await?
            .ok_or_else(|| EventError::UnknownStripeCustomer(stripe.clone()))?,
        (None, None) => return Err(EventError::NoCustomer),
    })
}

/// Finds the customer an event names, and links their Stripe customer id
/// when they have none yet.
async fn resolve(store: &dyn Store, reference: &CustomerRef) -> Result<Customer, EventError> {
    let customer = find_customer(store, reference).await?;
    if let Some(stripe) = &reference.stripe {
        match customer.stripe_customer_id.as_deref() {
            None => {
                if store
                    .attach_stripe_customer(&customer.id, stripe, UnixMillis::now())
                    .await?
                {
                    tracing::info!(customer = %customer.id, stripe_customer = %stripe, "linked the customer to their Stripe customer");
                }
            }
            Some(current) if current != stripe => tracing::warn!(
                customer = %customer.id,
                stripe_customer = %stripe,
                linked = %current,
                "the event's Stripe customer differs from the one linked to the customer; the link is kept"
            ),
            Some(_) => {}
        }
    }
    Ok(customer)
}

/// The text at `path`.
fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut at = value;
    for key in path {
        at = at.get(key)?;
    }
    at.as_str().filter(|s| !s.is_empty())
}

/// The integer at `path`.
fn int(value: &Value, path: &[&str]) -> Option<i64> {
    let mut at = value;
    for key in path {
        at = at.get(key)?;
    }
    at.as_i64()
}

/// An id field: a string, or an expanded object with an `id`.
fn id_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    match value.get(key)? {
        Value::String(id) if !id.is_empty() => Some(id),
        object @ Value::Object(_) => text(object, &["id"]),
        _ => None,
    }
}

/// Unix seconds as milliseconds.
fn millis(seconds: i64) -> Option<UnixMillis> {
    seconds.checked_mul(1000).map(UnixMillis)
}

/// A `{start, end}` pair of Unix seconds under `value`.
fn period(value: &Value, start: &[&str], end: &[&str]) -> Option<(UnixMillis, UnixMillis)> {
    Some((millis(int(value, start)?)?, millis(int(value, end)?)?))
}

/// The first item of a list object (`{"data": [...]}`) at `key`.
fn first_item<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.get(key)?.get("data")?.as_array()?.first()
}

/// Reads what an event does from its payload, without the store.
pub fn interpret(
    processor: &Processor,
    event_type: &str,
    created: i64,
    payload: &Value,
) -> Result<Action, EventError> {
    let object = payload
        .get("data")
        .and_then(|data| data.get("object"))
        .filter(|object| object.is_object())
        .ok_or_else(|| EventError::Payload("it has no data.object".into()))?;
    let at = millis(created).ok_or(EventError::Missing {
        field: "created",
        expected: "Unix seconds",
    })?;
    let event_at = UnixMillis(at.0.saturating_add(rank(event_type)));
    match event_type {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            checkout(processor, object, event_at)
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            let ends = event_type == "customer.subscription.deleted";
            subscription(processor, object, ends, event_at).map(Action::Subscription)
        }
        "invoice.paid" | "invoice.payment_failed" => {
            let status = if event_type == "invoice.paid" {
                SubscriptionStatus::Active
            } else {
                SubscriptionStatus::PastDue
            };
            invoice(processor, object, status, event_at)
        }
        other => Ok(Action::Nothing(format!(
            "event type {other} is stored but not handled"
        ))),
    }
}

fn checkout(
    processor: &Processor,
    session: &Value,
    event_at: UnixMillis,
) -> Result<Action, EventError> {
    let session_id = text(session, &["id"]).ok_or(EventError::Missing {
        field: "id",
        expected: "the Checkout Session's id",
    })?;
    let customer = CustomerRef {
        ours: text(session, &["client_reference_id"])
            .or_else(|| text(session, &["metadata", META_CUSTOMER]))
            .map(str::to_owned),
        stripe: id_of(session, "customer").map(str::to_owned),
    };
    match text(session, &["mode"]) {
        Some("payment") => {
            match text(session, &["payment_status"]) {
                Some("paid") | Some("no_payment_required") | None => {}
                Some(other) => {
                    return Ok(Action::Nothing(format!(
                        "Checkout Session {session_id} is not paid yet (payment_status \
                         {other}); its credits are granted by \
                         checkout.session.async_payment_succeeded"
                    )));
                }
            }
            let pack_id = text(session, &["metadata", META_PACK]).ok_or(EventError::Missing {
                field: "metadata.mcp_meter_credit_pack",
                expected: "the id of a credit pack in [stripe] credit_packs",
            })?;
            let pack = processor
                .stripe
                .pack(pack_id)
                .ok_or_else(|| EventError::UnknownPack(pack_id.to_owned()))?;
            Ok(Action::Purchase(Purchase {
                customer,
                pack: pack.id.clone(),
                credits: pack.credits,
                session: session_id.to_owned(),
            }))
        }
        Some("subscription") => {
            let plan = text(session, &["metadata", META_PLAN]).ok_or(EventError::Missing {
                field: "metadata.mcp_meter_plan",
                expected: "the id of a subscription plan",
            })?;
            if !processor.subscription_plans.iter().any(|p| p == plan) {
                return Err(EventError::UnknownPlan(plan.to_owned()));
            }
            let subscription = id_of(session, "subscription").ok_or(EventError::Missing {
                field: "subscription",
                expected: "the id of the subscription the session created",
            })?;
            Ok(Action::Subscription(SubscriptionUpdate {
                customer,
                plan: Some(plan.to_owned()),
                fallback_plan: None,
                status: SubscriptionStatus::Active,
                external_id: Some(subscription.to_owned()),
                period: None,
                started_at: None,
                ends: false,
                event_at,
            }))
        }
        Some(other) => Ok(Action::Nothing(format!(
            "Checkout Session {session_id} in {other} mode needs nothing"
        ))),
        None => Err(EventError::Missing {
            field: "mode",
            expected: "payment or subscription",
        }),
    }
}

fn subscription(
    processor: &Processor,
    object: &Value,
    ends: bool,
    event_at: UnixMillis,
) -> Result<SubscriptionUpdate, EventError> {
    let id = text(object, &["id"]).ok_or(EventError::Missing {
        field: "id",
        expected: "the subscription's id",
    })?;
    let customer = CustomerRef {
        ours: text(object, &["metadata", META_CUSTOMER]).map(str::to_owned),
        stripe: id_of(object, "customer").map(str::to_owned),
    };
    let item = first_item(object, "items");
    let price = item
        .and_then(|item| text(item, &["price", "id"]).or_else(|| text(item, &["plan", "id"])))
        .ok_or(EventError::Missing {
            field: "items.data[0].price.id",
            expected: "the subscription's price",
        })?;
    let plan = processor
        .stripe
        .plan_for_price(price)
        .ok_or_else(|| EventError::UnknownPrice(price.to_owned()))?;
    let status = if ends {
        SubscriptionStatus::Canceled
    } else {
        let status = text(object, &["status"]).ok_or(EventError::Missing {
            field: "status",
            expected: "the subscription's status",
        })?;
        SubscriptionStatus::parse(status)
            .ok_or_else(|| EventError::UnknownStatus(status.to_owned()))?
    };
    // Older API versions have the period on the subscription, newer ones on
    // each item.
    let period = period(object, &["current_period_start"], &["current_period_end"]).or_else(|| {
        item.and_then(|item| period(item, &["current_period_start"], &["current_period_end"]))
    });
    Ok(SubscriptionUpdate {
        customer,
        plan: Some(plan.to_owned()),
        fallback_plan: None,
        status,
        external_id: Some(id.to_owned()),
        period,
        started_at: int(object, &["start_date"]).and_then(millis),
        ends,
        event_at,
    })
}

fn invoice(
    processor: &Processor,
    invoice: &Value,
    status: SubscriptionStatus,
    event_at: UnixMillis,
) -> Result<Action, EventError> {
    // `subscription` before API version 2025-03-31, then under `parent`.
    let details = invoice
        .get("parent")
        .and_then(|parent| parent.get("subscription_details"))
        .or_else(|| invoice.get("subscription_details"));
    let subscription =
        id_of(invoice, "subscription").or_else(|| details.and_then(|d| id_of(d, "subscription")));
    let Some(subscription) = subscription else {
        let id = text(invoice, &["id"]).unwrap_or("?");
        return Ok(Action::Nothing(format!(
            "invoice {id} belongs to no subscription; nothing to change"
        )));
    };
    let customer = CustomerRef {
        ours: details
            .and_then(|d| text(d, &["metadata", META_CUSTOMER]))
            .or_else(|| text(invoice, &["metadata", META_CUSTOMER]))
            .map(str::to_owned),
        stripe: id_of(invoice, "customer").map(str::to_owned),
    };
    // The subscription's own line (not a proration) carries the period paid
    // for and the price.
    let lines = invoice
        .get("lines")
        .and_then(|lines| lines.get("data"))
        .and_then(Value::as_array);
    let line = lines.and_then(|lines| {
        lines
            .iter()
            .find(|line| line.get("proration").and_then(Value::as_bool) != Some(true))
    });
    let price = line.and_then(|line| {
        text(line, &["price", "id"])
            .or_else(|| text(line, &["pricing", "price_details", "price"]))
            .or_else(|| text(line, &["plan", "id"]))
    });
    let period = match status {
        SubscriptionStatus::Active => {
            line.and_then(|line| period(line, &["period", "start"], &["period", "end"]))
        }
        _ => None,
    };
    Ok(Action::Subscription(SubscriptionUpdate {
        customer,
        // The stored subscription's plan wins: an invoice of a plan change
        // lists the old price too.
        plan: None,
        fallback_plan: price
            .and_then(|price| processor.stripe.plan_for_price(price))
            .map(str::to_owned),
        status,
        external_id: Some(subscription.to_owned()),
        period,
        started_at: None,
        ends: false,
        event_at,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn processor() -> Processor {
        let stripe: StripeConfig = toml::from_str(
            r#"
            webhook_secrets = ["whsec_test"]
            plan_prices = { team = "price_team", pro = "price_pro" }
            credit_packs = [{ id = "pack-100", credits = 100, price_id = "price_pack" }]
            "#,
        )
        .expect("config");
        Processor::new(stripe, vec!["team".into(), "pro".into()], Some("free"))
    }

    fn event(object: Value) -> Value {
        json!({ "id": "evt_1", "object": "event", "data": { "object": object } })
    }

    const T: i64 = 1_767_225_600;

    fn read(event_type: &str, object: Value) -> Result<Action, EventError> {
        interpret(&processor(), event_type, T, &event(object))
    }

    #[test]
    fn a_paid_checkout_buys_its_pack_once_per_session() {
        let action = read(
            "checkout.session.completed",
            json!({
                "id": "cs_1", "object": "checkout.session", "mode": "payment",
                "payment_status": "paid", "client_reference_id": "cus_ours",
                "customer": "cus_Stripe1", "metadata": { "mcp_meter_credit_pack": "pack-100" }
            }),
        )
        .expect("action");
        assert_eq!(
            action,
            Action::Purchase(Purchase {
                customer: CustomerRef {
                    ours: Some("cus_ours".into()),
                    stripe: Some("cus_Stripe1".into()),
                },
                pack: "pack-100".into(),
                credits: 100,
                session: "cs_1".into(),
            })
        );
        // The same session paid later (async payment) is the same purchase.
        let later = read(
            "checkout.session.async_payment_succeeded",
            json!({
                "id": "cs_1", "mode": "payment", "payment_status": "paid",
                "metadata": { "mcp_meter_customer_id": "cus_ours",
                              "mcp_meter_credit_pack": "pack-100" }
            }),
        )
        .expect("action");
        assert!(
            matches!(later, Action::Purchase(Purchase { ref session, .. }) if session == "cs_1")
        );
    }

    #[test]
    fn an_unpaid_checkout_waits_and_an_unknown_pack_fails() {
        let unpaid = read(
            "checkout.session.completed",
            json!({ "id": "cs_1", "mode": "payment", "payment_status": "unpaid",
                    "metadata": { "mcp_meter_credit_pack": "pack-100" } }),
        );
        assert!(matches!(unpaid, Ok(Action::Nothing(_))), "{unpaid:?}");
        let unknown = read(
            "checkout.session.completed",
            json!({ "id": "cs_1", "mode": "payment", "payment_status": "paid",
                    "metadata": { "mcp_meter_credit_pack": "pack-999" } }),
        );
        match unknown {
            Err(e @ EventError::UnknownPack(_)) => {
                assert!(e.to_string().contains("credit_packs"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let no_pack = read(
            "checkout.session.completed",
            json!({ "id": "cs_1", "mode": "payment", "payment_status": "paid" }),
        );
        assert!(
            matches!(no_pack, Err(EventError::Missing { .. })),
            "{no_pack:?}"
        );
    }

    #[test]
    fn a_subscription_checkout_activates_its_plan() {
        let action = read(
            "checkout.session.completed",
            json!({ "id": "cs_2", "mode": "subscription", "client_reference_id": "cus_ours",
                    "subscription": { "id": "sub_1", "object": "subscription" },
                    "metadata": { "mcp_meter_plan": "team" } }),
        )
        .expect("action");
        let Action::Subscription(update) = action else {
            panic!("{action:?}")
        };
        assert_eq!(update.plan.as_deref(), Some("team"));
        assert_eq!(update.status, SubscriptionStatus::Active);
        assert_eq!(update.external_id.as_deref(), Some("sub_1"));
        assert_eq!(update.event_at, UnixMillis(T * 1000 + 100));
        let not_a_plan = read(
            "checkout.session.completed",
            json!({ "id": "cs_2", "mode": "subscription", "subscription": "sub_1",
                    "metadata": { "mcp_meter_plan": "starter" } }),
        );
        assert!(
            matches!(not_a_plan, Err(EventError::UnknownPlan(_))),
            "{not_a_plan:?}"
        );
    }

    fn subscription_object(price: &str, status: &str) -> Value {
        json!({
            "id": "sub_1", "object": "subscription", "customer": "cus_Stripe1",
            "status": status, "start_date": T - 100,
            "metadata": { "mcp_meter_customer_id": "cus_ours" },
            "items": { "object": "list", "data": [{
                "id": "si_1", "price": { "id": price },
                "current_period_start": T, "current_period_end": T + 2_592_000
            }] }
        })
    }

    #[test]
    fn subscription_events_carry_plan_status_and_period() {
        let Action::Subscription(update) = read(
            "customer.subscription.updated",
            subscription_object("price_pro", "past_due"),
        )
        .expect("action") else {
            panic!("not a subscription update")
        };
        assert_eq!(update.plan.as_deref(), Some("pro"));
        assert_eq!(update.status, SubscriptionStatus::PastDue);
        assert_eq!(
            update.period,
            Some((UnixMillis(T * 1000), UnixMillis((T + 2_592_000) * 1000)))
        );
        assert_eq!(update.started_at, Some(UnixMillis((T - 100) * 1000)));
        assert_eq!(update.customer.ours.as_deref(), Some("cus_ours"));
        assert!(!update.ends);

        // The period on the subscription itself (older API versions) wins.
        let mut old_api = subscription_object("price_team", "active");
        old_api["current_period_start"] = json!(T + 10);
        old_api["current_period_end"] = json!(T + 20);
        let Ok(Action::Subscription(update)) = read("customer.subscription.created", old_api)
        else {
            panic!("not a subscription update")
        };
        assert_eq!(
            update.period,
            Some((UnixMillis((T + 10) * 1000), UnixMillis((T + 20) * 1000)))
        );

        let Ok(Action::Subscription(deleted)) = read(
            "customer.subscription.deleted",
            subscription_object("price_team", "active"),
        ) else {
            panic!("not a subscription update")
        };
        assert_eq!(deleted.status, SubscriptionStatus::Canceled);
        assert!(deleted.ends);
    }

    #[test]
    fn events_of_one_second_are_ordered_by_type() {
        let at = |kind: &str| match read(kind, subscription_object("price_team", "active")) {
            Ok(Action::Subscription(update)) => update.event_at,
            other => panic!("{other:?}"),
        };
        assert!(at("customer.subscription.created") < at("customer.subscription.updated"));
        assert!(at("customer.subscription.updated") < at("customer.subscription.deleted"));
        assert!(at("customer.subscription.deleted") < UnixMillis((T + 1) * 1000));
    }

    #[test]
    fn subscriptions_with_unknown_prices_or_statuses_fail() {
        let unknown = read(
            "customer.subscription.updated",
            subscription_object("price_other", "active"),
        );
        match unknown {
            Err(e @ EventError::UnknownPrice(_)) => {
                assert!(e.to_string().contains("plan_prices"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let status = read(
            "customer.subscription.updated",
            subscription_object("price_team", "exploded"),
        );
        assert!(
            matches!(status, Err(EventError::UnknownStatus(_))),
            "{status:?}"
        );
        let no_items = read(
            "customer.subscription.updated",
            json!({ "id": "sub_1", "status": "active" }),
        );
        assert!(
            matches!(no_items, Err(EventError::Missing { .. })),
            "{no_items:?}"
        );
    }

    #[test]
    fn invoices_change_the_status_of_their_subscription() {
        // The newer API shape: the subscription under `parent`.
        let paid = read(
            "invoice.paid",
            json!({
                "id": "in_1", "object": "invoice", "customer": "cus_Stripe1",
                "parent": { "type": "subscription_details", "subscription_details": {
                    "subscription": "sub_1", "metadata": { "mcp_meter_customer_id": "cus_ours" }
                } },
                "lines": { "data": [
                    { "proration": true, "period": { "start": 1, "end": 2 } },
                    { "pricing": { "price_details": { "price": "price_team" } },
                      "period": { "start": T, "end": T + 100 } }
                ] }
            }),
        );
        let Ok(Action::Subscription(update)) = paid else {
            panic!("{paid:?}")
        };
        assert_eq!(update.status, SubscriptionStatus::Active);
        assert_eq!(update.plan, None);
        assert_eq!(update.fallback_plan.as_deref(), Some("team"));
        assert_eq!(update.external_id.as_deref(), Some("sub_1"));
        assert_eq!(update.customer.ours.as_deref(), Some("cus_ours"));
        assert_eq!(
            update.period,
            Some((UnixMillis(T * 1000), UnixMillis((T + 100) * 1000)))
        );

        // The older shape: `subscription` on the invoice.
        let failed = read(
            "invoice.payment_failed",
            json!({ "id": "in_2", "customer": "cus_Stripe1", "subscription": "sub_1",
                    "lines": { "data": [{ "period": { "start": T, "end": T + 100 } }] } }),
        );
        let Ok(Action::Subscription(update)) = failed else {
            panic!("{failed:?}")
        };
        assert_eq!(update.status, SubscriptionStatus::PastDue);
        assert_eq!(update.period, None);
        assert_eq!(update.customer.stripe.as_deref(), Some("cus_Stripe1"));

        let one_off = read("invoice.paid", json!({ "id": "in_3", "customer": "cus_S" }));
        assert!(matches!(one_off, Ok(Action::Nothing(_))), "{one_off:?}");
    }

    #[test]
    fn other_types_need_nothing_and_broken_payloads_fail() {
        assert!(matches!(
            read("customer.created", json!({ "id": "cus_1" })),
            Ok(Action::Nothing(_))
        ));
        let broken = interpret(&processor(), "invoice.paid", T, &json!({ "data": 1 }));
        assert!(matches!(broken, Err(EventError::Payload(_))), "{broken:?}");
    }
}
