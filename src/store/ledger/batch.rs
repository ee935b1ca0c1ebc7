//! A batch of the hot path's ledger writes in one transaction: calls'
//! credits reservations and settlements, per-call charges, quota takes and
//! releases, and metered usage (the group commit, see `store::group_commit`).
//!
//! The credits writes are decided together (`reservations`), then every
//! other write runs in order with the same code as when it runs alone,
//! inside the batch's transaction. Each write takes the same locks, in the
//! same order, as alone, so instances sharing a database stay exact; a
//! lost race runs the whole batch again. On MySQL the batch runs at READ
//! COMMITTED, so that a plain read after a write's lock sees every commit
//! made before that lock was granted, as it does when the write runs in a
//! transaction of its own (REPEATABLE READ would keep the snapshot the
//! batch's first read took).

use mcp_meter_plugin::identity::CustomerId;
use mcp_meter_plugin::ledger::{
    Accrual, AccrueOutcome, MeterOutcome, MeteredUsage, QuotaOutcome, QuotaRelease, QuotaTake,
    ReleaseOutcome, Reservation, ReserveOutcome, SettleOutcome, Settlement,
};
use sqlx::Connection;

use super::super::driver::{Driver, Exec};
use super::super::error::Fault;
use super::metered::{check_usage, meter_in};
use super::quota::{accrue_in, check_accrual};
use super::quota_use::{check_release, check_take, release_in, take_in};
use super::reservations::{apply_in, check_reservation};
use super::{check_key, refused};

/// One write of the hot path.
#[derive(Debug, Clone)]
pub(in crate::store) enum LedgerWrite {
    /// Take a call's credits before it is forwarded.
    Reserve(Reservation),
    /// Keep or give back a reservation after the call.
    Settle(Settlement),
    /// Number a priced call in its period and charge it.
    Accrue(Accrual),
    /// Take a call's units from a quota counter.
    TakeQuota(QuotaTake),
    /// Give a call's quota units back.
    ReleaseQuota(QuotaRelease),
    /// Record a call's metered units and its outbox event.
    MeterUsage(MeteredUsage),
}

/// What a [`LedgerWrite`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::store) enum LedgerOutcome {
    /// The outcome of a reservation.
    Reserve(ReserveOutcome),
    /// The outcome of a settlement.
    Settle(SettleOutcome),
    /// The outcome of an accrual.
    Accrue(AccrueOutcome),
    /// The outcome of a quota take.
    TakeQuota(QuotaOutcome),
    /// The outcome of a quota release.
    ReleaseQuota(ReleaseOutcome),
    /// The outcome of metered usage.
    MeterUsage(MeterOutcome),
}

/// The most columns a row of a batch's multi-row statements binds (a
/// ledger entry).
const WIDEST_ROW: usize = 11;

/// The most writes one batch takes on `DB`, within its bind-parameter limit.
pub(in crate::store) fn max_batch<DB: Driver>() -> usize {
    (DB::MAX_PARAMS / WIDEST_ROW).clamp(1, 512)
}

impl LedgerWrite {
    /// Refuses a write no transaction could apply (bad keys, amounts or
    /// names), with the message it gets when it runs alone.
    pub(in crate::store) fn check(&self) -> Result<(), Fault> {
        match self {
            LedgerWrite::Reserve(r) => check_reservation(r),
            LedgerWrite::Settle(s) => check_key("charge key", s.charge_key.as_str()),
            LedgerWrite::Accrue(a) => check_accrual(a),
            LedgerWrite::TakeQuota(t) => check_take(t),
            LedgerWrite::ReleaseQuota(r) => check_release(r),
            LedgerWrite::MeterUsage(u) => check_usage(u),
        }
    }

    /// Whose ledger the write changes.
    pub(in crate::store) fn customer(&self) -> &CustomerId {
        match self {
            LedgerWrite::Reserve(r) => &r.customer_id,
            LedgerWrite::Settle(s) => &s.customer_id,
            LedgerWrite::Accrue(a) => &a.customer_id,
            LedgerWrite::TakeQuota(t) => &t.customer_id,
            LedgerWrite::ReleaseQuota(r) => &r.customer_id,
            LedgerWrite::MeterUsage(u) => &u.customer_id,
        }
    }

    /// The charge key of the call the write belongs to.
    pub(in crate::store) fn charge_key(&self) -> &str {
        match self {
            LedgerWrite::Reserve(r) => r.charge_key.as_str(),
            LedgerWrite::Settle(s) => s.charge_key.as_str(),
            LedgerWrite::Accrue(a) => a.charge_key.as_str(),
            LedgerWrite::TakeQuota(t) => t.charge_key.as_str(),
            LedgerWrite::ReleaseQuota(r) => r.charge_key.as_str(),
            LedgerWrite::MeterUsage(u) => u.charge_key.as_str(),
        }
    }

    /// Whether the write holds something for a call before it is forwarded
    /// (a reservation, a quota take): undone if its caller goes away first.
    pub(in crate::store) fn holds(&self) -> bool {
        matches!(self, LedgerWrite::Reserve(_) | LedgerWrite::TakeQuota(_))
    }

    fn is_credits(&self) -> bool {
        matches!(self, LedgerWrite::Reserve(_) | LedgerWrite::Settle(_))
    }
}

/// Applies `writes` in one transaction on `conn`: the outcome of each, or
/// the fault that refused it alone. `Err` when the transaction as a whole
/// failed and nothing was written.
pub(in crate::store) async fn apply<DB: Driver>(
    conn: &mut DB::Connection,
    writes: &[&LedgerWrite],
) -> Result<Vec<Result<LedgerOutcome, Fault>>, Fault> {
    if let Some(isolation) = DB::BATCH_ISOLATION {
        sqlx::raw_sql(isolation).execute(conn.executor()).await?;
    }
    let mut tx = conn.begin_with(DB::BEGIN_WRITE).await?;
    let credits: Vec<&LedgerWrite> = writes.iter().copied().filter(|w| w.is_credits()).collect();
    let mut credit_outcomes = apply_in::<DB>(&mut tx, &credits).await?.into_iter();
    let mut outcomes: Vec<Option<Result<LedgerOutcome, Fault>>> = writes
        .iter()
        .map(|write| write.is_credits().then(|| credit_outcomes.next()).flatten())
        .collect();
    // The other writes customer by customer (each customer's in the order
    // they came), so that two instances' batches take their rows' locks in
    // the same order as far as they can.
    let mut others: Vec<usize> = (0..writes.len())
        .filter(|&n| !writes[n].is_credits())
        .collect();
    others.sort_by_key(|&n| writes[n].customer().as_str());
    for n in others {
        let outcome = match writes[n] {
            LedgerWrite::Accrue(a) => LedgerOutcome::Accrue(accrue_in::<DB>(&mut tx, a).await?),
            LedgerWrite::TakeQuota(t) => LedgerOutcome::TakeQuota(take_in::<DB>(&mut tx, t).await?),
            LedgerWrite::ReleaseQuota(r) => {
                LedgerOutcome::ReleaseQuota(release_in::<DB>(&mut tx, r).await?)
            }
            LedgerWrite::MeterUsage(u) => {
                LedgerOutcome::MeterUsage(meter_in::<DB>(&mut tx, u).await?)
            }
            LedgerWrite::Reserve(_) | LedgerWrite::Settle(_) => continue,
        };
        outcomes[n] = Some(Ok(outcome));
    }
    let outcomes = outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|| Err(refused("a write has no outcome".into()))))
        .collect();
    tx.commit().await?;
    Ok(outcomes)
}
