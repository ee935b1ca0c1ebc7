//! Calls' credits: reserving before a call, settling or refunding after it,
//! for one call or for many at once, inside a batch's transaction (the
//! group commit of the hot path, see `batch` and `store::group_commit`).
//!
//! A logical call's reservation lives in `call_charges`, one row per charge
//! key holding its latest attempt: `reserved` until it is settled or
//! refunded; a refunded call may reserve again as the next attempt.
//!
//! A batch's credits writes lock the balance rows of every customer
//! in it (in customer order, so that two instances' batches queue instead
//! of deadlocking), reads the call charges its writes name, decides each
//! write in order in memory — each seeing what the writes before it left,
//! exactly as if they had run one after the other — and then writes what
//! changed: one balance update per customer, one upsert of the call
//! charges, one insert of the ledger entries. A write refused on its own
//! (a settlement whose customer has no balance) changes nothing and does
//! not hold up the others. This module must never take credits the balance
//! does not hold, never charge a call twice, and never return more than a
//! reservation took.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{EntryKind, Reservation, ReserveOutcome, SettleOutcome, Settlement};

use super::super::driver::{Driver, Read};
use super::super::error::Fault;
use super::super::rollup::{TEXT_MAX_CHARS, fit};
use super::super::statement::Statement;
use super::batch::{LedgerOutcome, LedgerWrite};
use super::{CALL_ID_MAX_CHARS, CREDITS, NewEntry, add_to_balance, append_all, check_key, refused};

/// Refuses a reservation no batch could apply: less than one credit, an
/// empty or overlong charge key.
pub(super) fn check_reservation(reservation: &Reservation) -> Result<(), Fault> {
    if reservation.amount < 1 {
        return Err(refused(format!(
            "a reservation takes at least 1 credit, not {}",
            reservation.amount
        )));
    }
    check_key("charge key", reservation.charge_key.as_str())
}

/// Where a call's latest attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reserved,
    Settled,
    Refunded,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Reserved => "reserved",
            State::Settled => "settled",
            State::Refunded => "refunded",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "reserved" => Some(State::Reserved),
            "settled" => Some(State::Settled),
            "refunded" => Some(State::Refunded),
            _ => None,
        }
    }
}

/// A `call_charges` row.
#[derive(Debug, Clone)]
struct CallCharge {
    attempt: i64,
    state: State,
    amount: i64,
    call_id: String,
    plan_id: String,
    tool: Option<String>,
    updated_at: UnixMillis,
}

/// A ledger entry a batch appends.
struct EntryRow {
    customer_id: CustomerId,
    kind: EntryKind,
    amount: i64,
    balance_after: i64,
    call_id: String,
    plan_id: String,
    tool: Option<String>,
    idempotency_key: String,
    reason: Option<String>,
    at: UnixMillis,
}

/// A (customer, charge key) pair.
type ChargeId = (String, String);

/// What a batch knows under its locks, as its writes so far left it.
#[derive(Default)]
struct Books {
    /// The balances of the customers that have a balance row.
    balances: HashMap<String, i64>,
    /// The balances as read, to write the difference.
    read: HashMap<String, i64>,
    /// When each changed balance last changed.
    changed_at: BTreeMap<String, UnixMillis>,
    /// The call charges read or written.
    charges: HashMap<ChargeId, CallCharge>,
    /// The call charges to write.
    touched: BTreeSet<ChargeId>,
    entries: Vec<EntryRow>,
}

/// Applies the credits writes (reservations and settlements) of a batch
/// in order inside the caller's transaction `conn`: the outcome of each,
/// or the fault that refused it alone. `Err` when the transaction as a
/// whole must fail. Other writes are refused (they are not this module's).
pub(super) async fn apply_in<DB: Driver>(
    conn: &mut DB::Connection,
    writes: &[&LedgerWrite],
) -> Result<Vec<Result<LedgerOutcome, Fault>>, Fault> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let customers: BTreeSet<&str> = writes.iter().map(|w| w.customer().as_str()).collect();
    let keys: BTreeSet<&str> = writes.iter().map(|w| w.charge_key()).collect();
    let balances = locked_balances::<DB>(&mut *conn, &customers).await?;
    let charges = call_charges::<DB>(&mut *conn, &customers, &keys).await?;
    let mut books = Books {
        read: balances.clone(),
        balances,
        charges,
        ..Books::default()
    };
    let outcomes = writes
        .iter()
        .map(|write| match write {
            LedgerWrite::Reserve(r) => Ok(LedgerOutcome::Reserve(books.reserve(r))),
            LedgerWrite::Settle(s) => books.settle(s).map(LedgerOutcome::Settle),
            other => Err(refused(format!("{other:?} is not a credits write"))),
        })
        .collect();
    books.write::<DB>(conn).await?;
    Ok(outcomes)
}

impl Books {
    fn reserve(&mut self, r: &Reservation) -> ReserveOutcome {
        let id = (r.customer_id.to_string(), r.charge_key.to_string());
        let attempt = match self.charges.get(&id) {
            None => 1,
            Some(charge) if charge.state == State::Refunded => charge.attempt + 1,
            Some(_) => return ReserveOutcome::AlreadyCharged,
        };
        // A customer without a balance row has 0, which holds no reservation.
        let balance = self.balances.get(&id.0).copied().unwrap_or(0);
        if balance < r.amount {
            return ReserveOutcome::Insufficient { balance };
        }
        let balance_after = balance - r.amount;
        self.set_balance(&id.0, balance_after, r.at);
        let charge = CallCharge {
            attempt,
            state: State::Reserved,
            amount: r.amount,
            call_id: fit(r.call_id.as_str(), CALL_ID_MAX_CHARS).to_owned(),
            plan_id: fit(&r.plan_id, TEXT_MAX_CHARS).to_owned(),
            tool: r.tool.as_deref().map(|t| fit(t, TEXT_MAX_CHARS).to_owned()),
            updated_at: r.at,
        };
        self.entries.push(EntryRow {
            customer_id: r.customer_id.clone(),
            kind: EntryKind::Reservation,
            amount: -r.amount,
            balance_after,
            call_id: charge.call_id.clone(),
            plan_id: charge.plan_id.clone(),
            tool: charge.tool.clone(),
            idempotency_key: format!("reserve:{}:{attempt}", id.1),
            reason: None,
            at: r.at,
        });
        self.put_charge(id, charge);
        ReserveOutcome::Reserved {
            attempt,
            balance_after,
        }
    }

    fn settle(&mut self, s: &Settlement) -> Result<SettleOutcome, Fault> {
        let customer = &s.customer_id;
        let id = (customer.to_string(), s.charge_key.to_string());
        let Some(charge) = self.charges.get(&id) else {
            return Ok(SettleOutcome::NoReservation);
        };
        // A later attempt exists only after this one was refunded.
        if s.attempt < charge.attempt {
            return Ok(SettleOutcome::AlreadySettled);
        }
        if s.attempt > charge.attempt {
            return Ok(SettleOutcome::NoReservation);
        }
        if charge.state != State::Reserved {
            return Ok(SettleOutcome::AlreadySettled);
        }
        let Some(&balance) = self.balances.get(&id.0) else {
            return Err(refused(format!(
                "customer {customer} holds a reservation for {:?} but has no balance",
                id.1
            )));
        };
        let (kind, state, returned, prefix) = match &s.refund_reason {
            Some(_) => (EntryKind::Refund, State::Refunded, charge.amount, "refund"),
            None => {
                let actual = s.actual.max(0).min(charge.amount);
                let returned = charge.amount - actual;
                (EntryKind::Settlement, State::Settled, returned, "settle")
            }
        };
        let balance_after = balance
            .checked_add(returned)
            .ok_or_else(|| refused(format!("the balance of customer {customer} would overflow")))?;
        let mut charge = charge.clone();
        if returned > 0 {
            self.set_balance(&id.0, balance_after, s.at);
        }
        charge.state = state;
        charge.updated_at = s.at;
        self.entries.push(EntryRow {
            customer_id: customer.clone(),
            kind,
            amount: returned,
            balance_after,
            call_id: charge.call_id.clone(),
            plan_id: charge.plan_id.clone(),
            tool: charge.tool.clone(),
            idempotency_key: format!("{prefix}:{}:{}", id.1, s.attempt),
            reason: s.refund_reason.clone(),
            at: s.at,
        });
        self.put_charge(id, charge);
        Ok(SettleOutcome::Applied {
            returned,
            balance_after,
        })
    }

    fn set_balance(&mut self, customer: &str, balance: i64, at: UnixMillis) {
        self.balances.insert(customer.to_owned(), balance);
        let latest = self.changed_at.entry(customer.to_owned()).or_insert(at);
        *latest = (*latest).max(at);
    }

    fn put_charge(&mut self, id: ChargeId, charge: CallCharge) {
        self.touched.insert(id.clone());
        self.charges.insert(id, charge);
    }

    /// Writes what the batch changed: balances, call charges, entries.
    async fn write<DB: Driver>(&self, conn: &mut DB::Connection) -> Result<(), Fault> {
        for (customer, at) in &self.changed_at {
            let now = self.balances.get(customer).copied().unwrap_or(0);
            let was = self.read.get(customer).copied().unwrap_or(0);
            if now != was {
                add_to_balance::<DB>(conn, &CustomerId::new(customer.clone()), now - was, *at)
                    .await?;
            }
        }
        if !self.touched.is_empty() {
            self.upsert_charges::<DB>(conn).await?;
        }
        let entries: Vec<NewEntry<'_>> = self
            .entries
            .iter()
            .map(|e| NewEntry {
                customer_id: &e.customer_id,
                kind: e.kind,
                amount: e.amount,
                unit: CREDITS,
                balance_after: Some(e.balance_after),
                call_id: Some(&e.call_id),
                plan_id: Some(&e.plan_id),
                tool: e.tool.as_deref(),
                idempotency_key: &e.idempotency_key,
                reason: e.reason.as_deref(),
                at: e.at,
            })
            .collect();
        append_all::<DB>(conn, &entries).await
    }

    /// Inserts or replaces the touched call charges (the balance locks keep
    /// every other writer of these rows out).
    async fn upsert_charges<DB: Driver>(&self, conn: &mut DB::Connection) -> Result<(), Fault> {
        let mut upsert = Statement::<DB>::new(
            "INSERT INTO call_charges (customer_id, charge_key, attempt, state, amount, \
             call_id, plan_id, tool, created_at, updated_at) VALUES ",
        );
        let rows = self
            .touched
            .iter()
            .filter_map(|id| self.charges.get(id).map(|charge| (id, charge)));
        upsert.tuples(rows, |t, ((customer, key), charge)| {
            t.bind(customer.as_str())
                .bind(key.as_str())
                .bind(charge.attempt)
                .bind(charge.state.as_str())
                .bind(charge.amount)
                .bind(charge.call_id.as_str())
                .bind(charge.plan_id.as_str())
                .bind(charge.tool.as_deref())
                .bind(charge.updated_at)
                .bind(charge.updated_at);
        });
        upsert.push(DB::REPLACE_CALL_CHARGE);
        Ok(upsert.execute(conn).await?)
    }
}

/// The balances of `customers` that have a row, locked until the
/// transaction ends, in customer order.
async fn locked_balances<DB: Driver>(
    conn: &mut DB::Connection,
    customers: &BTreeSet<&str>,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut statement =
        Statement::<DB>::new("SELECT customer_id, balance FROM balances WHERE customer_id IN (");
    in_list(&mut statement, customers);
    statement
        .push(") ORDER BY customer_id")
        .push(DB::FOR_UPDATE);
    let rows = statement.fetch_all(conn).await?;
    rows.iter()
        .map(|row| Ok((row.text(0)?, row.int(1)?)))
        .collect()
}

/// The call charges of these customers under these keys. Read after the
/// balance rows are locked, so they are the latest committed state (every
/// writer of a customer's call charges holds its balance lock).
async fn call_charges<DB: Driver>(
    conn: &mut DB::Connection,
    customers: &BTreeSet<&str>,
    keys: &BTreeSet<&str>,
) -> Result<HashMap<ChargeId, CallCharge>, sqlx::Error> {
    let mut statement = Statement::<DB>::new(
        "SELECT customer_id, charge_key, attempt, state, amount, call_id, plan_id, tool, \
         updated_at FROM call_charges WHERE customer_id IN (",
    );
    in_list(&mut statement, customers);
    statement.push(") AND charge_key IN (");
    in_list(&mut statement, keys);
    statement.push(")");
    let rows = statement.fetch_all(conn).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let key = row.text(1)?;
        let state = row.text(3)?;
        let charge = CallCharge {
            attempt: row.int(2)?,
            state: State::parse(&state).ok_or_else(|| {
                sqlx::Error::Decode(format!("call charge {key:?}: unknown state {state:?}").into())
            })?,
            amount: row.int(4)?,
            call_id: row.text(5)?,
            plan_id: row.text(6)?,
            tool: row.opt_text(7)?,
            updated_at: UnixMillis(row.int(8)?),
        };
        found.insert((row.text(0)?, key), charge);
    }
    Ok(found)
}

/// Appends `?, ?, …` bound to `values`.
fn in_list<DB: Driver>(statement: &mut Statement<DB>, values: &BTreeSet<&str>) {
    for (n, value) in values.iter().enumerate() {
        if n > 0 {
            statement.push(", ");
        }
        statement.bind(*value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [State::Reserved, State::Settled, State::Refunded] {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::parse("pending"), None);
    }
}
