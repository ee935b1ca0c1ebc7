//! The ledger port: what the billing plugin needs from storage to charge a
//! call exactly once and to keep prepaid balances exact.
//!
//! Money here is always an integer count of a plan's smallest unit: whole
//! credits for prepaid plans, micro-units (millionths) of the currency for
//! priced plans. Nothing in this module may use floating point.
//!
//! Every write is one transaction and is idempotent: a reservation is keyed
//! by its [`ChargeKey`] (one logical call), a grant or adjustment by the
//! operator's idempotency key. A write that was already applied answers
//! with what it found instead of applying again, so a retried settlement,
//! a replayed grant or a client that repeats a request id is never charged
//! twice. A balance never goes below zero: a debit is a conditional update
//! that the database applies atomically, also with several mcp-meter
//! instances on one database.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::identity::{CallId, CustomerId, UnixMillis};
use crate::ports::StoreError;

/// Identifies one logical call for charging: a retry of the same call maps
/// to the same key, a different call never does. Built by the billing
/// plugin from the customer, the session and the request.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChargeKey(Arc<str>);

impl ChargeKey {
    /// Wraps a key.
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        Self(key.into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChargeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ChargeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EntryKind {
    /// Credits taken from the balance before a call is forwarded.
    Reservation,
    /// The final cost of a reserved call; its amount is what was returned
    /// to the balance when the actual cost was below the reservation.
    Settlement,
    /// A reserved call that failed: the whole reservation returned.
    Refund,
    /// Credits given by a plan's periodic grant or by the operator.
    Grant,
    /// Credits bought (a paid checkout).
    Purchase,
    /// A manual correction by the operator (positive or negative).
    Adjustment,
    /// A charge accrued to the customer's bill (priced plans): no balance
    /// moves, the amount is owed for the period.
    Charge,
    /// Credits that expired when a periodic grant reset the balance (or
    /// carried over more than a rollover cap).
    Expiry,
    /// Units counted on a plan without a balance: a call that used a free
    /// or included quota, or a call's metered units on a `usage` plan. The
    /// amount is the units, the unit their name (`calls`, `bytes`, …).
    Usage,
}

impl EntryKind {
    /// The snake_case name stored in the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryKind::Reservation => "reservation",
            EntryKind::Settlement => "settlement",
            EntryKind::Refund => "refund",
            EntryKind::Grant => "grant",
            EntryKind::Purchase => "purchase",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Charge => "charge",
            EntryKind::Expiry => "expiry",
            EntryKind::Usage => "usage",
        }
    }

    /// The kind stored as `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "reservation" => EntryKind::Reservation,
            "settlement" => EntryKind::Settlement,
            "refund" => EntryKind::Refund,
            "grant" => EntryKind::Grant,
            "purchase" => EntryKind::Purchase,
            "adjustment" => EntryKind::Adjustment,
            "charge" => EntryKind::Charge,
            "expiry" => EntryKind::Expiry,
            "usage" => EntryKind::Usage,
            _ => return None,
        })
    }
}

/// One row of the append-only ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerEntry {
    /// Position in the ledger (increasing).
    pub id: i64,
    /// Whose balance or bill.
    pub customer_id: CustomerId,
    /// What happened.
    pub kind: EntryKind,
    /// The signed change: to the balance for credits (a reservation is
    /// negative, a refund positive), or the amount owed for a charge.
    pub amount: i64,
    /// `credits`, or the ISO currency code (lower case) of a charge, whose
    /// amount is in micro-units.
    pub unit: String,
    /// The balance right after this entry (credits only).
    pub balance_after: Option<i64>,
    /// The call this entry belongs to, if any.
    pub call_id: Option<CallId>,
    /// The plan the call was charged under.
    pub plan_id: Option<String>,
    /// The tool, for a call.
    pub tool: Option<String>,
    /// The key that makes the entry unique (charge key with the entry kind,
    /// or the operator's idempotency key).
    pub idempotency_key: String,
    /// Why (a refund's failure kind, an adjustment's note).
    pub reason: Option<String>,
    /// When.
    pub created_at: UnixMillis,
}

/// Credits to take from a balance before a call is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Whose balance.
    pub customer_id: CustomerId,
    /// The logical call.
    pub charge_key: ChargeKey,
    /// The usage record of the call that makes the reservation.
    pub call_id: CallId,
    /// Credits to take (at least 1).
    pub amount: i64,
    /// The plan the call is charged under.
    pub plan_id: String,
    /// The tool called.
    pub tool: Option<String>,
    /// When.
    pub at: UnixMillis,
}

/// What a reservation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// The credits were taken; the call may go ahead.
    Reserved {
        /// Which attempt of the logical call this is (1 for the first; a
        /// call that was refunded and is retried reserves again).
        attempt: i64,
        /// The balance after the debit.
        balance_after: i64,
    },
    /// This logical call already holds a reservation or was settled: it is
    /// not charged again.
    AlreadyCharged,
    /// The balance is below the amount; nothing was taken.
    Insufficient {
        /// The balance as it is.
        balance: i64,
    },
}

/// The end of a reserved call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Whose balance.
    pub customer_id: CustomerId,
    /// The logical call.
    pub charge_key: ChargeKey,
    /// The attempt that holds the reservation.
    pub attempt: i64,
    /// What the call cost in the end: at most the reserved amount (the rest
    /// returns to the balance). Ignored for a refund.
    pub actual: i64,
    /// `None`: the call is settled at `actual`. `Some(reason)`: the call
    /// failed and the whole reservation is refunded, with this reason.
    pub refund_reason: Option<String>,
    /// When.
    pub at: UnixMillis,
}

/// What a settlement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Settled or refunded now.
    Applied {
        /// Credits returned to the balance.
        returned: i64,
        /// The balance afterwards.
        balance_after: i64,
    },
    /// The attempt was already settled or refunded; nothing changed.
    AlreadySettled,
    /// There is no reservation for this attempt.
    NoReservation,
}

/// Credits added or removed by the operator, a purchase or a plan's
/// periodic grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceChange {
    /// Whose balance.
    pub customer_id: CustomerId,
    /// [`EntryKind::Grant`], [`EntryKind::Purchase`] or
    /// [`EntryKind::Adjustment`].
    pub kind: EntryKind,
    /// Signed credits (only an adjustment may be negative).
    pub amount: i64,
    /// Makes the change apply once: a second change with the same key
    /// (for this customer) is answered with [`ChangeOutcome::AlreadyApplied`].
    pub idempotency_key: String,
    /// A note kept in the ledger.
    pub reason: Option<String>,
    /// When.
    pub at: UnixMillis,
}

/// What a balance change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Applied now.
    Applied {
        /// The balance afterwards.
        balance_after: i64,
    },
    /// A change with this idempotency key was applied before; nothing
    /// changed.
    AlreadyApplied {
        /// The balance as it is.
        balance: i64,
    },
    /// The change would take the balance below zero; nothing changed.
    WouldGoNegative {
        /// The balance as it is.
        balance: i64,
    },
}

/// How a period's call count prices one more call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PriceSchedule {
    /// Every call at one price.
    Flat {
        /// Micro-units per call.
        price: i64,
    },
    /// All of the period's calls at the price of the tier the count has
    /// reached: the `n`th call costs `n·p(n) − (n−1)·p(n−1)` so that the
    /// period's charges always add up to `count × price of its tier` (the
    /// call that enters a cheaper tier carries a negative difference).
    Volume {
        /// Tiers in increasing `up_to`; the last has `up_to: None`.
        tiers: Vec<Tier>,
    },
    /// Each call at the price of the tier its own number falls in.
    Graduated {
        /// Tiers in increasing `up_to`; the last has `up_to: None`.
        tiers: Vec<Tier>,
    },
}

/// One price tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tier {
    /// The last call number (in the period) this tier covers; `None` for
    /// the open-ended last tier.
    pub up_to: Option<i64>,
    /// Micro-units per call.
    pub price: i64,
}

impl PriceSchedule {
    /// The charge for the period's `n`th call (`n ≥ 1`), saturating
    /// instead of overflowing.
    pub fn charge_for_call(&self, n: i64) -> i64 {
        match self {
            PriceSchedule::Flat { price } => *price,
            PriceSchedule::Graduated { tiers } => tier_price(tiers, n),
            PriceSchedule::Volume { tiers } => {
                let total = |k: i64| k.saturating_mul(tier_price(tiers, k));
                total(n).saturating_sub(total(n.saturating_sub(1)))
            }
        }
    }

    /// The charge for `quantity` more calls (or unit blocks) in a period
    /// that has counted `before` so far: what the period's total grows by,
    /// so a quantity that crosses a tier boundary is priced on both sides
    /// of it (and, with volume tiers, may be negative). Saturates instead
    /// of overflowing.
    pub fn charge_for(&self, before: i64, quantity: i64) -> i64 {
        let before = before.max(0);
        self.total_for_calls(before.saturating_add(quantity.max(0)))
            .saturating_sub(self.total_for_calls(before))
    }

    /// What the period's first `n` calls cost in all.
    pub fn total_for_calls(&self, n: i64) -> i64 {
        match self {
            PriceSchedule::Flat { price } => n.saturating_mul(*price),
            PriceSchedule::Volume { tiers } => n.saturating_mul(tier_price(tiers, n)),
            PriceSchedule::Graduated { tiers } => {
                let mut total = 0i64;
                let mut covered = 0i64;
                for tier in tiers {
                    let end = tier.up_to.unwrap_or(i64::MAX).min(n);
                    if end > covered {
                        total = total.saturating_add((end - covered).saturating_mul(tier.price));
                        covered = end;
                    }
                    if covered >= n {
                        break;
                    }
                }
                total
            }
        }
    }
}

/// The price of the tier call number `n` falls in (0 for `n ≤ 0`).
fn tier_price(tiers: &[Tier], n: i64) -> i64 {
    if n <= 0 {
        return 0;
    }
    tiers
        .iter()
        .find(|t| t.up_to.is_none_or(|up_to| n <= up_to))
        .or(tiers.last())
        .map_or(0, |t| t.price)
}

/// A call to put on a priced plan's bill, counted in its period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accrual {
    /// Whose bill.
    pub customer_id: CustomerId,
    /// The logical call (a charge is made once per key).
    pub charge_key: ChargeKey,
    /// The usage record of the call.
    pub call_id: CallId,
    /// The plan.
    pub plan_id: String,
    /// The tool.
    pub tool: Option<String>,
    /// The ISO currency code, lower case.
    pub currency: String,
    /// Which counter numbers the call within its period (e.g. `calls`).
    pub counter: String,
    /// The start of the period the call falls in.
    pub period_start: UnixMillis,
    /// How the call's number in the period prices it.
    pub schedule: PriceSchedule,
    /// How far the call moves the counter: 1 for a call; with a plan that
    /// meters units, the call's units in blocks of the plan's unit size
    /// (0 for a call that used none). The call is charged what the
    /// schedule's total grows by over those numbers.
    pub quantity: i64,
    /// When.
    pub at: UnixMillis,
}

/// What an accrual did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccrueOutcome {
    /// Counted and charged now.
    Charged {
        /// The counter after the call: its number in the period (or, with
        /// a unit meter, the period's units so far).
        number: i64,
        /// The amount charged (micro-units; negative when the call moved
        /// the period into a cheaper volume tier).
        amount: i64,
    },
    /// This logical call was charged before.
    AlreadyCharged,
}

/// A quota counter to move within one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterStep {
    /// Whose counter.
    pub customer_id: CustomerId,
    /// Which counter (e.g. `free:day` or `free:day:search`).
    pub counter: String,
    /// The start of the period (counters of other periods are separate).
    pub period_start: UnixMillis,
    /// How much to add (negative to give back).
    pub delta: i64,
    /// Refuse the step if the counter would go above this.
    pub cap: Option<i64>,
}

/// What a counter step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterOutcome {
    /// Applied; the counter's new value.
    Counted {
        /// The value after the step.
        used: i64,
    },
    /// The cap would be passed; nothing changed.
    CapReached {
        /// The value as it is.
        used: i64,
    },
}

/// One logical call taking units of a quota (free calls, included calls)
/// before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaTake {
    /// Whose quota.
    pub customer_id: CustomerId,
    /// The logical call (a call takes its units once per key).
    pub charge_key: ChargeKey,
    /// The usage record of the call.
    pub call_id: CallId,
    /// The plan whose quota it is.
    pub plan_id: String,
    /// The tool.
    pub tool: Option<String>,
    /// Which counter (e.g. `free` or `free:search`).
    pub counter: String,
    /// The start of the period the call falls in.
    pub period_start: UnixMillis,
    /// Units to take (at least 1).
    pub units: i64,
    /// Refuse when the counter would pass this (`None`: count only).
    pub cap: Option<i64>,
    /// When.
    pub at: UnixMillis,
}

/// What taking quota did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOutcome {
    /// Taken now; the counter's new value.
    Taken {
        /// Units used in the period, this call included.
        used: i64,
    },
    /// This logical call took its units before (and did not give them
    /// back); nothing changed.
    AlreadyTaken {
        /// Units used in the period.
        used: i64,
    },
    /// The cap would be passed; nothing changed.
    Exhausted {
        /// Units used in the period.
        used: i64,
    },
}

/// Units a failed call gives back to the quota it took them from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRelease {
    /// Whose quota.
    pub customer_id: CustomerId,
    /// The logical call that took the units (the store knows the counter
    /// and period it took them from).
    pub charge_key: ChargeKey,
    /// Why (the failure kind).
    pub reason: String,
    /// When.
    pub at: UnixMillis,
}

/// What giving quota back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Given back now; the counter's new value.
    Released {
        /// Units used in the period after the release.
        used: i64,
    },
    /// The call's units were given back before; nothing changed.
    AlreadyReleased,
    /// This call never took units; nothing changed.
    NotTaken,
}

/// A call's metered units on a `usage` plan: a ledger entry and, in the
/// same transaction, an event in the meter outbox for the payment
/// provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredUsage {
    /// Whose usage.
    pub customer_id: CustomerId,
    /// The logical call (its usage is recorded once per key).
    pub charge_key: ChargeKey,
    /// The usage record of the call; also the event's identifier at the
    /// payment provider.
    pub call_id: CallId,
    /// The plan.
    pub plan_id: String,
    /// The tool.
    pub tool: Option<String>,
    /// The payment provider's meter (event name).
    pub event_name: String,
    /// What the units are (`calls`, `bytes`, `ms`, `units`).
    pub unit: String,
    /// How many (zero or more).
    pub units: i64,
    /// When the call happened.
    pub at: UnixMillis,
}

/// What recording metered usage did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterOutcome {
    /// Recorded now, with its outbox event.
    Recorded,
    /// This logical call's usage was recorded before; nothing changed.
    AlreadyRecorded,
}

/// How a plan's periodic credit grant treats what is left of the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantMode {
    /// What is left expires; the balance becomes the grant.
    Reset,
    /// What is left carries over, at most `cap` of it (the rest expires),
    /// and the grant is added.
    Rollover {
        /// The most credits carried into the new period (`None`: all).
        cap: Option<i64>,
    },
}

/// A plan's grant of credits for one period, applied once per customer,
/// plan and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodicGrant {
    /// Whose balance.
    pub customer_id: CustomerId,
    /// The plan that grants.
    pub plan_id: String,
    /// The start of the period granted for.
    pub period_start: UnixMillis,
    /// Credits granted (at least 1).
    pub amount: i64,
    /// What happens to what is left.
    pub mode: GrantMode,
    /// When.
    pub at: UnixMillis,
}

/// What a periodic grant did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOutcome {
    /// Applied now.
    Granted {
        /// Credits that expired first.
        expired: i64,
        /// The balance after the grant.
        balance: i64,
    },
    /// This period's grant was applied before; nothing changed.
    AlreadyGranted,
}

/// A reservation still held: a `call_charges` row in state `reserved`,
/// as [`Ledger::held_reservations`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReservation {
    /// Whose balance.
    pub customer_id: CustomerId,
    /// The logical call.
    pub charge_key: ChargeKey,
    /// The attempt that holds the reservation (settle it with this one).
    pub attempt: i64,
    /// The usage record of the call that reserved.
    pub call_id: CallId,
    /// Credits held.
    pub amount: i64,
    /// The plan the call is charged under.
    pub plan_id: String,
    /// The tool called.
    pub tool: Option<String>,
    /// When the reservation was made (the row's last change).
    pub reserved_at: UnixMillis,
}

/// A settled call whose usage record is missing, as
/// [`Ledger::unrecorded_charges`] finds it: its settlement was committed
/// but the usage record, written behind the call, was lost (the process
/// was killed before the recorder flushed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnrecordedCharge {
    /// Whose call.
    pub customer_id: CustomerId,
    /// The usage record the call's ledger entries name.
    pub call_id: CallId,
    /// The plan the call was charged under.
    pub plan_id: String,
    /// The tool called.
    pub tool: Option<String>,
    /// Credits reserved for the call (what a settlement may keep).
    pub amount: i64,
    /// When the call was settled (the row's last change).
    pub settled_at: UnixMillis,
}

/// Which ledger entries to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerFilter {
    /// Only this customer's entries.
    pub customer: Option<CustomerId>,
    /// Only entries after this position (for paging).
    pub after_id: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// The ledger: balances, reservations, settlements, charges and quota
/// counters.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Takes `amount` credits if the balance holds them, keyed by the
    /// logical call (see [`ReserveOutcome`]).
    async fn reserve(&self, reservation: &Reservation) -> Result<ReserveOutcome, StoreError>;

    /// Settles or refunds a reservation, once.
    async fn settle(&self, settlement: &Settlement) -> Result<SettleOutcome, StoreError>;

    /// Applies a grant, purchase or adjustment, once per idempotency key.
    async fn change_balance(&self, change: &BalanceChange) -> Result<ChangeOutcome, StoreError>;

    /// A customer's balance in credits (0 when none was ever granted).
    async fn balance(&self, customer: &CustomerId) -> Result<i64, StoreError>;

    /// Counts a call in its period and charges it, once per charge key,
    /// both in one transaction.
    async fn accrue(&self, accrual: &Accrual) -> Result<AccrueOutcome, StoreError>;

    /// Moves a quota counter, refusing to pass its cap.
    async fn step_counter(&self, step: &CounterStep) -> Result<CounterOutcome, StoreError>;

    /// A counter's value in a period (0 when never moved).
    async fn counter(
        &self,
        customer: &CustomerId,
        counter: &str,
        period_start: UnixMillis,
    ) -> Result<i64, StoreError>;

    /// Ledger entries in order.
    async fn entries(&self, filter: &LedgerFilter) -> Result<Vec<LedgerEntry>, StoreError>;

    /// Takes a call's units from a quota counter, refusing to pass its cap,
    /// once per charge key while taken: a call whose units were given back
    /// (it failed) may take them again as a new attempt. The ledger records
    /// each take as a [`EntryKind::Usage`] entry (idempotency key
    /// `quota:{charge_key}:{attempt}`).
    async fn take_quota(&self, take: &QuotaTake) -> Result<QuotaOutcome, StoreError>;

    /// Gives a failed call's units back to the counter and period they
    /// were taken from, once per attempt (a [`EntryKind::Refund`] entry
    /// keyed `unquota:{charge_key}:{attempt}`).
    async fn release_quota(&self, release: &QuotaRelease) -> Result<ReleaseOutcome, StoreError>;

    /// Records a call's metered units (a [`EntryKind::Usage`] entry keyed
    /// `usage:{charge_key}`) and its meter event in the outbox, in one
    /// transaction, once per charge key.
    async fn meter_usage(&self, usage: &MeteredUsage) -> Result<MeterOutcome, StoreError>;

    /// Applies a plan's credit grant for a period, once per customer, plan
    /// and period (keys `period-grant:{plan}:{period_start}` and
    /// `period-expiry:{plan}:{period_start}`), with the expiry of what
    /// does not carry over, in one transaction.
    async fn periodic_grant(&self, grant: &PeriodicGrant) -> Result<GrantOutcome, StoreError>;

    /// Reservations still held whose row last changed before `before`,
    /// oldest first, at most `limit`: calls reserved but neither settled
    /// nor refunded (in flight, or abandoned when a process was killed).
    /// Read only; the caller decides which to refund (with
    /// [`Ledger::settle`], which applies once, so a call that was in fact
    /// still running finds itself settled when it ends).
    async fn held_reservations(
        &self,
        before: UnixMillis,
        limit: u32,
    ) -> Result<Vec<HeldReservation>, StoreError>;

    /// Settled calls whose row last changed at or after `since` and
    /// before `before` and whose `call_id` has no usage record, oldest
    /// first, at most `limit`. Read only; [`Ledger::record_recovered_call`]
    /// writes what is missing. `since` bounds the scan (settled rows are
    /// the whole history of charged calls): a first look covers
    /// everything (`UnixMillis(i64::MIN)`), later ones only what may have
    /// changed since.
    async fn unrecorded_charges(
        &self,
        since: UnixMillis,
        before: UnixMillis,
        limit: u32,
    ) -> Result<Vec<UnrecordedCharge>, StoreError>;

    /// Writes the usage record a settled call lost, with its daily
    /// roll-up: customer, method `tools/call`, the tool, `started_at` =
    /// `settled_at`, no duration or bytes, 1 unit and outcome
    /// [`UsageOutcome::Recovered`](crate::ports::UsageOutcome::Recovered)
    /// (a call, not an error). `true` when written now; `false` when the
    /// call id already has a record (nothing changes).
    async fn record_recovered_call(&self, charge: &UnrecordedCharge) -> Result<bool, StoreError>;
}

/// A shared [`Ledger`].
pub type SharedLedger = Arc<dyn Ledger>;

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> Vec<Tier> {
        vec![
            Tier {
                up_to: Some(1000),
                price: 1000,
            },
            Tier {
                up_to: Some(10_000),
                price: 800,
            },
            Tier {
                up_to: None,
                price: 500,
            },
        ]
    }

    #[test]
    fn volume_charges_add_up_to_the_tier_reached() {
        let s = PriceSchedule::Volume { tiers: tiers() };
        let sum = |n: i64| (1..=n).map(|k| s.charge_for_call(k)).sum::<i64>();
        assert_eq!(sum(1000), 1000 * 1000);
        // The 1001st call moves all 1001 calls to 800.
        assert_eq!(s.charge_for_call(1001), 1001 * 800 - 1000 * 1000);
        assert_eq!(sum(1001), 1001 * 800);
        assert_eq!(sum(10_000), 10_000 * 800);
        assert_eq!(sum(10_001), 10_001 * 500);
        assert_eq!(s.total_for_calls(10_001), 10_001 * 500);
    }

    #[test]
    fn graduated_charges_each_call_at_its_own_tier() {
        let s = PriceSchedule::Graduated { tiers: tiers() };
        assert_eq!(s.charge_for_call(1000), 1000);
        assert_eq!(s.charge_for_call(1001), 800);
        assert_eq!(s.charge_for_call(10_001), 500);
        let sum: i64 = (1..=10_001).map(|k| s.charge_for_call(k)).sum();
        assert_eq!(sum, 1000 * 1000 + 9000 * 800 + 500);
        assert_eq!(s.total_for_calls(10_001), sum);
        assert_eq!(s.total_for_calls(0), 0);
    }

    #[test]
    fn flat_is_one_price() {
        let s = PriceSchedule::Flat { price: 500 };
        assert_eq!(s.charge_for_call(1), 500);
        assert_eq!(s.total_for_calls(10_000), 5_000_000);
    }

    #[test]
    fn entry_kinds_round_trip() {
        for kind in [
            EntryKind::Reservation,
            EntryKind::Settlement,
            EntryKind::Refund,
            EntryKind::Grant,
            EntryKind::Purchase,
            EntryKind::Adjustment,
            EntryKind::Charge,
            EntryKind::Expiry,
            EntryKind::Usage,
        ] {
            assert_eq!(EntryKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EntryKind::parse("bogus"), None);
    }
}
