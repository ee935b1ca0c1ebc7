//! What an unclean stop (a killed process) leaves behind, found and
//! repaired: reservations still held by calls that will never end, and
//! settled calls whose usage record was lost because the recorder writes
//! records behind the call, in batches.
//!
//! The two scans only read; the caller (the billing plugin's sweeper)
//! decides what is old enough to be abandoned, and refunds a held
//! reservation through the ordinary settlement, which applies once. The
//! one write here, the usage record of a recovered call, goes through the
//! usage module's batch write, which skips a call id already stored and
//! adds what it inserts to the daily roll-up in the same transaction.

use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{ChargeKey, HeldReservation, UnrecordedCharge};
use mcp_meter_plugin::ports::{UsageOutcome, UsageRecord};
use sqlx::Pool;

use super::super::driver::{Driver, Read};
use super::super::error::Fault;
use super::super::statement::Statement;
use super::super::usage;

/// The `call_charges` state of a call that holds its reservation.
const RESERVED: &str = "reserved";
/// The `call_charges` state of a call charged for good.
const SETTLED: &str = "settled";
/// The method a recovered call is recorded under.
const RECOVERED_METHOD: &str = "tools/call";
/// The reason a recovered usage record carries.
const RECOVERED_REASON: &str = "recovered from the ledger after an unclean stop";

/// Reservations in state `reserved` whose row last changed before
/// `before`, oldest first, at most `limit`.
pub(in crate::store) async fn held_reservations<DB: Driver>(
    pool: &Pool<DB>,
    before: UnixMillis,
    limit: u32,
) -> Result<Vec<HeldReservation>, Fault> {
    let mut statement = Statement::<DB>::new(
        "SELECT customer_id, charge_key, attempt, call_id, amount, plan_id, tool, updated_at \
         FROM call_charges WHERE state = ",
    );
    statement
        .bind(RESERVED)
        .push(" AND updated_at < ")
        .bind(before)
        .push(" ORDER BY updated_at, customer_id, charge_key LIMIT ")
        .bind(i64::from(limit));
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    let held = found
        .iter()
        .map(|row| {
            Ok(HeldReservation {
                customer_id: CustomerId::new(row.text(0)?),
                charge_key: ChargeKey::new(row.text(1)?),
                attempt: row.int(2)?,
                call_id: CallId::new(row.text(3)?),
                amount: row.int(4)?,
                plan_id: row.text(5)?,
                tool: row.opt_text(6)?,
                reserved_at: UnixMillis(row.int(7)?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(held)
}

/// Settled calls whose row last changed in `[since, before)` and whose
/// call id has no usage record, oldest first, at most `limit`.
pub(in crate::store) async fn unrecorded_charges<DB: Driver>(
    pool: &Pool<DB>,
    since: UnixMillis,
    before: UnixMillis,
    limit: u32,
) -> Result<Vec<UnrecordedCharge>, Fault> {
    let mut statement = Statement::<DB>::new(
        "SELECT c.customer_id, c.call_id, c.plan_id, c.tool, c.amount, c.updated_at \
         FROM call_charges c WHERE c.state = ",
    );
    statement
        .one_off()
        .bind(SETTLED)
        .push(" AND c.updated_at >= ")
        .bind(since)
        .push(" AND c.updated_at < ")
        .bind(before)
        .push(
            " AND NOT EXISTS (SELECT 1 FROM usage_records u WHERE u.call_id = c.call_id) \
             ORDER BY c.updated_at, c.customer_id, c.charge_key LIMIT ",
        )
        .bind(i64::from(limit));
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    let unrecorded = found
        .iter()
        .map(|row| {
            Ok(UnrecordedCharge {
                customer_id: CustomerId::new(row.text(0)?),
                call_id: CallId::new(row.text(1)?),
                plan_id: row.text(2)?,
                tool: row.opt_text(3)?,
                amount: row.int(4)?,
                settled_at: UnixMillis(row.int(5)?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(unrecorded)
}

/// Writes the usage record a settled call lost (with its roll-up); `true`
/// when written now, `false` when the call id already had one.
pub(in crate::store) async fn record_recovered_call<DB: Driver>(
    pool: &Pool<DB>,
    charge: &UnrecordedCharge,
) -> Result<bool, Fault> {
    let record = recovered_record(charge);
    let inserted = usage::record(pool, std::slice::from_ref(&record)).await?;
    Ok(inserted > 0)
}

/// The usage record of a call known only from the ledger.
fn recovered_record(charge: &UnrecordedCharge) -> UsageRecord {
    UsageRecord {
        call_id: charge.call_id.clone(),
        customer_id: Some(charge.customer_id.clone()),
        key_id: None,
        session_id: None,
        method: RECOVERED_METHOD.to_owned(),
        tool: charge.tool.clone(),
        started_at: charge.settled_at,
        duration_us: 0,
        bytes_in: 0,
        bytes_out: 0,
        outcome: UsageOutcome::Recovered,
        reason: Some(RECOVERED_REASON.to_owned()),
        units: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovered_record_is_one_call_known_from_the_ledger() {
        let record = recovered_record(&UnrecordedCharge {
            customer_id: CustomerId::new("cus_a"),
            call_id: CallId::new("call_1"),
            plan_id: "starter".into(),
            tool: Some("echo".into()),
            amount: 3,
            settled_at: UnixMillis(1_000),
        });
        assert_eq!(record.outcome, UsageOutcome::Recovered);
        assert!(!record.outcome.is_error());
        assert_eq!(record.method, "tools/call");
        assert_eq!(record.started_at, UnixMillis(1_000));
        assert_eq!(record.units, 1);
        assert_eq!(record.reason.as_deref(), Some(RECOVERED_REASON));
    }
}
