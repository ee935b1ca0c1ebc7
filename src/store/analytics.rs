//! Analytics: sums over the ledger (money charged, credits consumed), the
//! daily roll-ups (calls, errors, units, active customers) and the usage
//! records (outcomes and reasons), written once for every backend.
//!
//! Money charged, top spenders and outcomes count exactly `[since, until)`
//! (millisecond instants) yet read few rows: the whole UTC days inside the
//! span come from the daily roll-ups (`charges_daily`, `outcomes_daily`,
//! kept in the transaction of the rows they summarise), and only the
//! partial days at its edges — `[since, first midnight)` and `[last
//! midnight, until)` — from the raw rows, by the indexes on
//! `ledger_entries (kind, created_at)` and `usage_records (started_at)`;
//! the parts are added up here. A plan, tool or reason that is empty
//! counts as none (the roll-ups store none as `''`).
//!
//! Every figure is an exact integer: sums are cast back to 64-bit integers
//! ([`Driver::INT_CAST`]); money stays in the micro-units of its currency
//! (the entry's `unit`) and is never added across currencies.
//!
//! Credits consumed are the net credits of settled reservations: a
//! reservation entry takes `R` credits (amount `-R`), its settlement gives
//! back what the call did not use (`R - actual`), so the call consumed
//! `R - returned`. Each settlement entry created in the range is joined
//! with its reservation entry (same customer; idempotency keys
//! `settle:{key}:{attempt}` and `reserve:{key}:{attempt}`) and counts
//! `-(reservation amount) - (settlement amount)` on the settlement's day,
//! plan and tool. Refunded reservations consumed nothing; reservations not
//! settled yet are not counted.

use std::collections::BTreeMap;

use async_trait::async_trait;
use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::EntryKind;
use mcp_meter_plugin::ports::StoreError;
use sqlx::Pool;

use super::Backend;
use super::driver::{Driver, Read};
use super::error::Fault;
use super::rollup::utc_day;
use super::statement::Statement;

/// The unit of credits in the ledger.
pub const CREDITS_UNIT: &str = "credits";

/// A time range: `since` inclusive, `until` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The first instant.
    pub since: UnixMillis,
    /// The first instant after the range.
    pub until: UnixMillis,
}

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

impl Span {
    /// The first and last UTC day (`YYYY-MM-DD`) the range touches: what
    /// the daily roll-ups can answer for it.
    pub fn days(&self) -> (String, String) {
        (
            utc_day(self.since),
            utc_day(UnixMillis(self.until.0.saturating_sub(1))),
        )
    }

    /// The range cut at UTC midnights: the first and last of the whole
    /// days inside it (none when it holds no whole day), and the partial
    /// days at its edges, in order, each non-empty.
    fn cut(&self) -> (Option<(String, String)>, Vec<Span>) {
        let (since, until) = (self.since.0, self.until.0);
        if since >= until {
            return (None, Vec::new());
        }
        let first = since.checked_add((DAY_MS - since.rem_euclid(DAY_MS)) % DAY_MS);
        let end = until.checked_sub(until.rem_euclid(DAY_MS));
        let (Some(first), Some(end)) = (first, end) else {
            return (None, vec![*self]);
        };
        if first >= end {
            return (None, vec![*self]);
        }
        let days = (utc_day(UnixMillis(first)), utc_day(UnixMillis(end - 1)));
        let edges = [(since, first), (end, until)]
            .into_iter()
            .filter(|(from, to)| from < to)
            .map(|(from, to)| Span {
                since: UnixMillis(from),
                until: UnixMillis(to),
            })
            .collect();
        (Some(days), edges)
    }
}

/// `Some(text)` unless it is empty (the roll-ups' `''` for none).
fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

/// Adds `(amount, count)` to a running total, refusing to wrap.
fn add(total: &mut (i64, i64), amount: i64, count: i64) -> Result<(), Fault> {
    match (total.0.checked_add(amount), total.1.checked_add(count)) {
        (Some(amount), Some(count)) => {
            *total = (amount, count);
            Ok(())
        }
        _ => Err(Fault::Store(StoreError::Other(
            "an analytics sum does not fit in 64 bits; ask for a shorter range".into(),
        ))),
    }
}

/// How ledger sums are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerGroup {
    /// One total per currency.
    All,
    /// Per UTC day of the entry.
    Day,
    /// Per plan.
    Plan,
    /// Per tool.
    Tool,
}

/// A ledger sum of one group in one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAmount {
    /// The group (the day `YYYY-MM-DD`, the plan, the tool); `None` for
    /// [`LedgerGroup::All`] and for entries without a plan or tool.
    pub group: Option<String>,
    /// The currency, or `credits`.
    pub unit: String,
    /// The sum, in micro-units of the currency (or credits).
    pub amount: i64,
    /// How many entries it sums (calls charged or settled).
    pub entries: i64,
}

/// A customer's charges in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerSpend {
    /// Whose.
    pub customer_id: CustomerId,
    /// The currency.
    pub unit: String,
    /// The sum, in micro-units.
    pub amount: i64,
    /// How many charge entries.
    pub entries: i64,
}

/// Roll-up totals of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTotals {
    /// The day, when grouped by day.
    pub day: Option<String>,
    /// The tool, when grouped by tool (`None` also for calls without one).
    pub tool: Option<String>,
    /// The customer, when grouped by customer.
    pub customer_id: Option<CustomerId>,
    /// Calls.
    pub calls: i64,
    /// Calls whose outcome was neither `ok` nor `recovered`.
    pub errors: i64,
    /// Metered units.
    pub units: i64,
}

/// How many usage records ended with one outcome and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeCount {
    /// The outcome (`ok`, `refused`, `tool_error`, …).
    pub outcome: String,
    /// The reason, if the record has one.
    pub reason: Option<String>,
    /// How many calls.
    pub calls: i64,
}

/// The analytics queries.
#[async_trait]
pub trait Analytics: Send + Sync + 'static {
    /// Money charged (`charge` entries) in `span`, per group and currency.
    async fn charges(&self, span: Span, group: LedgerGroup)
    -> Result<Vec<GroupAmount>, StoreError>;

    /// Credits consumed by reservations settled in `span`, per group (see
    /// the module documentation); the unit is `credits`.
    async fn credits_consumed(
        &self,
        span: Span,
        group: LedgerGroup,
    ) -> Result<Vec<GroupAmount>, StoreError>;

    /// Roll-up totals over the UTC days `first..=last`, grouped by day
    /// and/or tool (one total when neither).
    async fn usage_totals(
        &self,
        first: &str,
        last: &str,
        by_day: bool,
        by_tool: bool,
    ) -> Result<Vec<UsageTotals>, StoreError>;

    /// The customers with the most calls over the UTC days `first..=last`
    /// (most first, then by id), at most `limit`.
    async fn top_callers(
        &self,
        first: &str,
        last: &str,
        limit: u32,
    ) -> Result<Vec<UsageTotals>, StoreError>;

    /// The customers charged the most in `span`, per currency (most first,
    /// then by id), at most `limit` per currency.
    async fn top_spenders(&self, span: Span, limit: u32) -> Result<Vec<CustomerSpend>, StoreError>;

    /// Distinct customers with a call over the UTC days `first..=last`:
    /// in all, and per day.
    async fn active_customers(
        &self,
        first: &str,
        last: &str,
    ) -> Result<(i64, Vec<(String, i64)>), StoreError>;

    /// Usage records started in `span`, counted per outcome and reason.
    async fn outcomes(&self, span: Span) -> Result<Vec<OutcomeCount>, StoreError>;
}

/// The SQL of the group column of a ledger sum over entries `e`.
fn ledger_group(group: LedgerGroup) -> &'static str {
    match group {
        LedgerGroup::All => "NULL",
        // The UTC midnight of the entry, in milliseconds (integer
        // arithmetic works alike everywhere; formatted here), floored also
        // before 1970 (`%` keeps the dividend's sign).
        LedgerGroup::Day => "(e.created_at - ((e.created_at % 86400000) + 86400000) % 86400000)",
        LedgerGroup::Plan => "e.plan_id",
        LedgerGroup::Tool => "e.tool",
    }
}

/// The SQL of the group column of a sum over `charges_daily`.
fn rollup_group(group: LedgerGroup) -> &'static str {
    match group {
        LedgerGroup::All => "''",
        LedgerGroup::Day => "day",
        LedgerGroup::Plan => "plan_id",
        LedgerGroup::Tool => "tool",
    }
}

fn group_of<DB: Driver>(row: &DB::Row, group: LedgerGroup) -> Result<Option<String>, sqlx::Error> {
    Ok(match group {
        LedgerGroup::All => None,
        LedgerGroup::Day => Some(utc_day(UnixMillis(row.int(0)?))),
        LedgerGroup::Plan | LedgerGroup::Tool => non_empty(row.opt_text(0)?),
    })
}

fn amounts<DB: Driver>(
    found: &[DB::Row],
    group: LedgerGroup,
) -> Result<Vec<GroupAmount>, sqlx::Error> {
    found
        .iter()
        .map(|row| {
            Ok(GroupAmount {
                group: group_of::<DB>(row, group)?,
                unit: row.text(1)?,
                amount: row.int(2)?,
                entries: row.int(3)?,
            })
        })
        .collect()
}

/// Sorts by group (days in order), then unit.
fn sorted(mut rows: Vec<GroupAmount>) -> Vec<GroupAmount> {
    rows.sort_by(|a, b| (&a.group, &a.unit).cmp(&(&b.group, &b.unit)));
    rows
}

/// Charges per group and unit: the roll-up over whole days, the raw
/// entries over the partial days at the edges.
pub(super) async fn charges<DB: Driver>(
    pool: &Pool<DB>,
    span: Span,
    group: LedgerGroup,
) -> Result<Vec<GroupAmount>, Fault> {
    let (days, edges) = span.cut();
    let mut conn = pool.acquire().await?;
    let mut totals: BTreeMap<(Option<String>, String), (i64, i64)> = BTreeMap::new();
    if let Some((first, last)) = &days {
        let column = rollup_group(group);
        let mut statement = Statement::<DB>::new("SELECT ");
        statement.one_off().push(column).push(", unit, ");
        sum(&mut statement, "amount");
        statement.push(", ");
        sum(&mut statement, "entries");
        statement
            .push(" FROM charges_daily WHERE day >= ")
            .bind(first.as_str())
            .push(" AND day <= ")
            .bind(last.as_str())
            .push(" GROUP BY ");
        if group != LedgerGroup::All {
            statement.push(column).push(", ");
        }
        statement.push("unit");
        for row in statement.fetch_all(&mut conn).await? {
            let key = match group {
                LedgerGroup::All => None,
                _ => non_empty(Some(row.text(0)?)),
            };
            let total = totals.entry((key, row.text(1)?)).or_default();
            add(total, row.int(2)?, row.int(3)?)?;
        }
    }
    for edge in edges {
        for row in raw_charges::<DB>(&mut conn, edge, group).await? {
            let total = totals.entry((row.group, row.unit)).or_default();
            add(total, row.amount, row.entries)?;
        }
    }
    Ok(sorted(
        totals
            .into_iter()
            .map(|((group, unit), (amount, entries))| GroupAmount {
                group,
                unit,
                amount,
                entries,
            })
            .collect(),
    ))
}

/// Charges per group and unit summed from the ledger's entries.
async fn raw_charges<DB: Driver>(
    conn: &mut DB::Connection,
    span: Span,
    group: LedgerGroup,
) -> Result<Vec<GroupAmount>, sqlx::Error> {
    let column = ledger_group(group);
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .one_off()
        .push(column)
        .push(", e.unit, CAST(SUM(e.amount) AS ")
        .push(DB::INT_CAST)
        .push("), COUNT(*) FROM ledger_entries e WHERE e.kind = ")
        .bind(EntryKind::Charge.as_str())
        .push(" AND e.created_at >= ")
        .bind(span.since)
        .push(" AND e.created_at < ")
        .bind(span.until)
        .push(" GROUP BY ");
    if group != LedgerGroup::All {
        statement.push(column).push(", ");
    }
    statement.push("e.unit");
    let found = statement.fetch_all(conn).await?;
    amounts::<DB>(&found, group)
}

/// `'reserve:' || SUBSTR(s.idempotency_key, 8)` in the backend's dialect
/// (`settle:` is 7 characters).
fn reservation_key<DB: Driver>() -> &'static str {
    match DB::BACKEND {
        Backend::MySql => "CONCAT('reserve:', SUBSTR(e.idempotency_key, 8))",
        Backend::Sqlite | Backend::Postgres => "'reserve:' || SUBSTR(e.idempotency_key, 8)",
    }
}

pub(super) async fn credits_consumed<DB: Driver>(
    pool: &Pool<DB>,
    span: Span,
    group: LedgerGroup,
) -> Result<Vec<GroupAmount>, Fault> {
    let column = ledger_group(group);
    let mut statement = Statement::<DB>::new("SELECT ");
    statement
        .one_off()
        .push(column)
        .push(", e.unit, CAST(SUM(-r.amount - e.amount) AS ")
        .push(DB::INT_CAST)
        .push("), COUNT(*) FROM ledger_entries e JOIN ledger_entries r ON r.customer_id = e.customer_id AND r.idempotency_key = ")
        .push(reservation_key::<DB>())
        .push(" AND r.kind = ")
        .bind(EntryKind::Reservation.as_str())
        .push(" WHERE e.kind = ")
        .bind(EntryKind::Settlement.as_str())
        .push(" AND e.unit = ")
        .bind(CREDITS_UNIT)
        .push(" AND e.created_at >= ")
        .bind(span.since)
        .push(" AND e.created_at < ")
        .bind(span.until)
        .push(" GROUP BY ");
    if group != LedgerGroup::All {
        statement.push(column).push(", ");
    }
    statement.push("e.unit");
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    Ok(sorted(amounts::<DB>(&found, group)?))
}

/// `CAST(SUM(column) AS <int>)`.
fn sum<DB: Driver>(statement: &mut Statement<DB>, column: &str) {
    statement
        .push("CAST(SUM(")
        .push(column)
        .push(") AS ")
        .push(DB::INT_CAST)
        .push(")");
}

pub(super) async fn usage_totals<DB: Driver>(
    pool: &Pool<DB>,
    first: &str,
    last: &str,
    by_day: bool,
    by_tool: bool,
) -> Result<Vec<UsageTotals>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT ");
    statement.one_off();
    statement.push(if by_day { "day, " } else { "'', " });
    statement.push(if by_tool { "tool, " } else { "'', " });
    sum(&mut statement, "calls");
    statement.push(", ");
    sum(&mut statement, "errors");
    statement.push(", ");
    sum(&mut statement, "units");
    statement
        .push(" FROM usage_daily WHERE day >= ")
        .bind(first)
        .push(" AND day <= ")
        .bind(last);
    let keys: Vec<&str> = [(by_day, "day"), (by_tool, "tool")]
        .into_iter()
        .filter_map(|(on, key)| on.then_some(key))
        .collect();
    if !keys.is_empty() {
        let keys = keys.join(", ");
        statement
            .push(" GROUP BY ")
            .push(&keys)
            .push(" ORDER BY ")
            .push(&keys);
    }
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    let mut rows = Vec::with_capacity(found.len());
    for row in &found {
        // SUM over no rows is NULL: no total at all.
        let Some(calls) = row.opt_int(2)? else {
            continue;
        };
        let tool = row.text(1)?;
        rows.push(UsageTotals {
            day: by_day.then(|| row.text(0)).transpose()?,
            tool: (by_tool && !tool.is_empty()).then_some(tool),
            customer_id: None,
            calls,
            errors: row.opt_int(3)?.unwrap_or(0),
            units: row.opt_int(4)?.unwrap_or(0),
        });
    }
    Ok(rows)
}

pub(super) async fn top_callers<DB: Driver>(
    pool: &Pool<DB>,
    first: &str,
    last: &str,
    limit: u32,
) -> Result<Vec<UsageTotals>, Fault> {
    let mut statement = Statement::<DB>::new("SELECT customer_id, ");
    statement.one_off();
    sum(&mut statement, "calls");
    statement.push(", ");
    sum(&mut statement, "errors");
    statement.push(", ");
    sum(&mut statement, "units");
    statement
        .push(" FROM usage_daily WHERE day >= ")
        .bind(first)
        .push(" AND day <= ")
        .bind(last)
        .push(" AND customer_id <> '' GROUP BY customer_id ORDER BY 2 DESC, customer_id LIMIT ")
        .bind(i64::from(limit));
    let mut conn = pool.acquire().await?;
    let found = statement.fetch_all(&mut conn).await?;
    found
        .iter()
        .map(|row| {
            Ok(UsageTotals {
                day: None,
                tool: None,
                customer_id: Some(CustomerId::new(row.text(0)?)),
                calls: row.int(1)?,
                errors: row.int(2)?,
                units: row.int(3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Fault::from)
}

/// The customers charged the most, per currency: the roll-up over whole
/// days and the raw entries over the partial days at the edges are summed
/// per currency and customer, then ranked here.
pub(super) async fn top_spenders<DB: Driver>(
    pool: &Pool<DB>,
    span: Span,
    limit: u32,
) -> Result<Vec<CustomerSpend>, Fault> {
    let (days, edges) = span.cut();
    let mut conn = pool.acquire().await?;
    let mut totals: BTreeMap<String, BTreeMap<String, (i64, i64)>> = BTreeMap::new();
    let mut parts = Vec::new();
    if let Some((first, last)) = &days {
        let mut statement = Statement::<DB>::new("SELECT unit, customer_id, ");
        statement.one_off();
        sum(&mut statement, "amount");
        statement.push(", ");
        sum(&mut statement, "entries");
        statement
            .push(" FROM charges_daily WHERE day >= ")
            .bind(first.as_str())
            .push(" AND day <= ")
            .bind(last.as_str())
            .push(" GROUP BY unit, customer_id");
        parts.push(statement);
    }
    for edge in edges {
        let mut statement = Statement::<DB>::new("SELECT unit, customer_id, CAST(SUM(amount) AS ");
        statement
            .one_off()
            .push(DB::INT_CAST)
            .push("), COUNT(*) FROM ledger_entries WHERE kind = ")
            .bind(EntryKind::Charge.as_str())
            .push(" AND created_at >= ")
            .bind(edge.since)
            .push(" AND created_at < ")
            .bind(edge.until)
            .push(" GROUP BY unit, customer_id");
        parts.push(statement);
    }
    for statement in parts {
        for row in statement.fetch_all(&mut conn).await? {
            let total = totals
                .entry(row.text(0)?)
                .or_default()
                .entry(row.text(1)?)
                .or_default();
            add(total, row.int(2)?, row.int(3)?)?;
        }
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut spenders = Vec::new();
    for (unit, customers) in totals {
        let mut ranked: Vec<(String, (i64, i64))> = customers.into_iter().collect();
        // Most first; the map's order (by id) breaks ties, the sort being
        // stable.
        ranked.sort_by_key(|(_, (amount, _))| std::cmp::Reverse(*amount));
        spenders.extend(
            ranked
                .into_iter()
                .take(limit)
                .map(|(customer, (amount, entries))| CustomerSpend {
                    customer_id: CustomerId::new(customer),
                    unit: unit.clone(),
                    amount,
                    entries,
                }),
        );
    }
    Ok(spenders)
}

pub(super) async fn active_customers<DB: Driver>(
    pool: &Pool<DB>,
    first: &str,
    last: &str,
) -> Result<(i64, Vec<(String, i64)>), Fault> {
    let mut conn = pool.acquire().await?;
    // In all, distinct customers as a grouped subquery rather than
    // COUNT(DISTINCT): PostgreSQL then hashes the customers instead of
    // sorting every row.
    let mut total = Statement::<DB>::new(
        "SELECT COUNT(*) FROM (SELECT customer_id FROM usage_daily WHERE customer_id <> '' AND calls > 0 AND day >= ",
    );
    total
        .one_off()
        .bind(first)
        .push(" AND day <= ")
        .bind(last)
        .push(" GROUP BY customer_id) active");
    let total = match total.fetch_optional(&mut conn).await? {
        Some(row) => row.int(0)?,
        None => 0,
    };
    // Per day, COUNT(DISTINCT) walks the key (day, customer_id, …) in
    // order and counts small groups: faster than a subquery here.
    let mut per_day = Statement::<DB>::new(
        "SELECT day, COUNT(DISTINCT customer_id) FROM usage_daily WHERE customer_id <> '' AND calls > 0 AND day >= ",
    );
    per_day
        .one_off()
        .bind(first)
        .push(" AND day <= ")
        .bind(last)
        .push(" GROUP BY day ORDER BY day");
    let days = per_day
        .fetch_all(&mut conn)
        .await?
        .iter()
        .map(|row| Ok((row.text(0)?, row.int(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    Ok((total, days))
}

/// Usage records per outcome and reason: the roll-up over whole days,
/// the raw records over the partial days at the edges.
pub(super) async fn outcomes<DB: Driver>(
    pool: &Pool<DB>,
    span: Span,
) -> Result<Vec<OutcomeCount>, Fault> {
    let (days, edges) = span.cut();
    let mut conn = pool.acquire().await?;
    let mut parts = Vec::new();
    if let Some((first, last)) = &days {
        let mut statement = Statement::<DB>::new("SELECT outcome, reason, ");
        statement.one_off();
        sum(&mut statement, "calls");
        statement
            .push(" FROM outcomes_daily WHERE day >= ")
            .bind(first.as_str())
            .push(" AND day <= ")
            .bind(last.as_str())
            .push(" GROUP BY outcome, reason");
        parts.push(statement);
    }
    for edge in edges {
        let mut statement = Statement::<DB>::new(
            "SELECT outcome, reason, COUNT(*) FROM usage_records WHERE started_at >= ",
        );
        statement
            .one_off()
            .bind(edge.since)
            .push(" AND started_at < ")
            .bind(edge.until)
            .push(" GROUP BY outcome, reason");
        parts.push(statement);
    }
    let mut counts: BTreeMap<(String, Option<String>), (i64, i64)> = BTreeMap::new();
    for statement in parts {
        for row in statement.fetch_all(&mut conn).await? {
            let total = counts
                .entry((row.text(0)?, non_empty(row.opt_text(1)?)))
                .or_default();
            add(total, row.int(2)?, 0)?;
        }
    }
    Ok(counts
        .into_iter()
        .map(|((outcome, reason), (calls, _))| OutcomeCount {
            outcome,
            reason,
            calls,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(since: i64, until: i64) -> Span {
        Span {
            since: UnixMillis(since),
            until: UnixMillis(until),
        }
    }

    fn days(first: &str, last: &str) -> Option<(String, String)> {
        Some((first.to_owned(), last.to_owned()))
    }

    #[test]
    fn a_span_is_cut_into_whole_days_and_partial_edges() {
        // Midnight to midnight: whole days only.
        assert_eq!(
            span(DAY_MS, 3 * DAY_MS).cut(),
            (days("1970-01-02", "1970-01-03"), vec![])
        );
        // Cut into days at both ends.
        assert_eq!(
            span(DAY_MS - 5, 3 * DAY_MS + 7).cut(),
            (
                days("1970-01-02", "1970-01-03"),
                vec![span(DAY_MS - 5, DAY_MS), span(3 * DAY_MS, 3 * DAY_MS + 7)]
            )
        );
        // Inside one day, or across one midnight without a whole day: raw
        // rows only.
        assert_eq!(
            span(DAY_MS + 1, 2 * DAY_MS - 1).cut(),
            (None, vec![span(DAY_MS + 1, 2 * DAY_MS - 1)])
        );
        assert_eq!(
            span(DAY_MS + 1, 2 * DAY_MS + 1).cut(),
            (None, vec![span(DAY_MS + 1, 2 * DAY_MS + 1)])
        );
        // Exactly one day; before 1970; empty; the extremes.
        assert_eq!(
            span(DAY_MS, 2 * DAY_MS).cut(),
            (days("1970-01-02", "1970-01-02"), vec![])
        );
        assert_eq!(
            span(-DAY_MS - 1, 1).cut(),
            (
                days("1969-12-31", "1969-12-31"),
                vec![span(-DAY_MS - 1, -DAY_MS), span(0, 1)]
            )
        );
        assert_eq!(span(5, 5).cut(), (None, vec![]));
        let (whole, edges) = span(i64::MIN, i64::MAX).cut();
        assert!(whole.is_some());
        assert_eq!(edges.first().map(|e| e.since.0), Some(i64::MIN));
        assert_eq!(edges.last().map(|e| e.until.0), Some(i64::MAX));
        assert_eq!(
            span(i64::MAX - 1, i64::MAX).cut(),
            (None, vec![span(i64::MAX - 1, i64::MAX)])
        );
    }

    #[test]
    fn a_span_covers_the_days_it_touches() {
        let span = Span {
            since: UnixMillis(DAY_MS),
            until: UnixMillis(3 * DAY_MS),
        };
        assert_eq!(
            span.days(),
            ("1970-01-02".to_owned(), "1970-01-03".to_owned())
        );
    }
}
