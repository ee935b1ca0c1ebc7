//! The daily roll-ups in memory: which UTC day a record falls on, and one
//! total per (day, customer, method, tool) — and one count per (day,
//! customer, tool, outcome, reason) — for a batch, so the database gets one
//! upsert per group instead of one per record. Pure code, no SQL.

use std::collections::BTreeMap;

use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ports::UsageRecord;

const MILLIS_PER_DAY: i64 = 86_400_000;

/// The longest method name stored (longer ones are cut, on every backend
/// alike, so a garbage method cannot make a batch fail).
pub(super) const METHOD_MAX_CHARS: usize = 128;
/// The longest tool name, session id or reason stored.
pub(super) const TEXT_MAX_CHARS: usize = 255;

/// The roll-up key: day, customer (`""` when anonymous), method, tool (`""`
/// when none). Ordered, so groups are always written in the same order
/// (fewer lock waits between concurrent batches).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct DayKey<'a> {
    pub(super) day: String,
    pub(super) customer: &'a str,
    pub(super) method: &'a str,
    pub(super) tool: &'a str,
}

/// The totals of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub(super) calls: i64,
    pub(super) errors: i64,
    pub(super) units: i64,
    pub(super) duration_us: i64,
    pub(super) bytes_in: i64,
    pub(super) bytes_out: i64,
}

/// Sums `records` per day, customer, method and tool.
pub(super) fn aggregate<'a>(
    records: impl IntoIterator<Item = &'a UsageRecord>,
) -> BTreeMap<DayKey<'a>, Totals> {
    let mut groups: BTreeMap<DayKey<'a>, Totals> = BTreeMap::new();
    for record in records {
        let key = DayKey {
            day: utc_day(record.started_at),
            customer: record.customer_id.as_ref().map_or("", |id| id.as_str()),
            method: fit(&record.method, METHOD_MAX_CHARS),
            tool: fit(record.tool.as_deref().unwrap_or(""), TEXT_MAX_CHARS),
        };
        let totals = groups.entry(key).or_default();
        totals.calls += 1;
        totals.errors += i64::from(record.outcome.is_error());
        totals.units = totals.units.saturating_add(record.units);
        totals.duration_us = totals.duration_us.saturating_add(record.duration_us);
        totals.bytes_in = totals.bytes_in.saturating_add(record.bytes_in);
        totals.bytes_out = totals.bytes_out.saturating_add(record.bytes_out);
    }
    groups
}

/// The outcome roll-up key: day, customer (`""` when anonymous), tool
/// (`""` when none), outcome, reason (`""` when none), as stored in the
/// usage records (cut alike). Ordered, like [`DayKey`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct OutcomeKey<'a> {
    pub(super) day: String,
    pub(super) customer: &'a str,
    pub(super) tool: &'a str,
    pub(super) outcome: &'static str,
    pub(super) reason: &'a str,
}

/// Counts `records` per day, customer, tool, outcome and reason.
pub(super) fn count_outcomes<'a>(
    records: impl IntoIterator<Item = &'a UsageRecord>,
) -> BTreeMap<OutcomeKey<'a>, i64> {
    let mut groups: BTreeMap<OutcomeKey<'a>, i64> = BTreeMap::new();
    for record in records {
        let key = OutcomeKey {
            day: utc_day(record.started_at),
            customer: record.customer_id.as_ref().map_or("", |id| id.as_str()),
            tool: fit(record.tool.as_deref().unwrap_or(""), TEXT_MAX_CHARS),
            outcome: record.outcome.as_str(),
            reason: fit(record.reason.as_deref().unwrap_or(""), TEXT_MAX_CHARS),
        };
        *groups.entry(key).or_default() += 1;
    }
    groups
}

/// `text` cut to at most `max` characters (on a character boundary).
pub(super) fn fit(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// The UTC calendar day of an instant, `YYYY-MM-DD`.
pub(super) fn utc_day(at: UnixMillis) -> String {
    let (year, month, day) = civil_from_days(at.0.div_euclid(MILLIS_PER_DAY));
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use mcp_meter_plugin::identity::{CallId, CustomerId};
    use mcp_meter_plugin::ports::UsageOutcome;

    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(utc_day(UnixMillis(0)), "1970-01-01");
        assert_eq!(utc_day(UnixMillis(-1)), "1969-12-31");
        assert_eq!(utc_day(UnixMillis(951_782_400_000)), "2000-02-29");
        assert_eq!(utc_day(UnixMillis(1_767_225_599_999)), "2025-12-31");
        assert_eq!(utc_day(UnixMillis(1_767_225_600_000)), "2026-01-01");
        assert_eq!(utc_day(UnixMillis(4_107_542_400_000)), "2100-03-01");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        assert_eq!(fit("tools/call", 128), "tools/call");
        assert_eq!(fit("ééé", 2), "éé");
        assert_eq!(fit("", 0), "");
    }

    fn record(n: u32, customer: Option<&str>, tool: Option<&str>, at: i64) -> UsageRecord {
        UsageRecord {
            call_id: CallId::new(format!("call_{n}")),
            customer_id: customer.map(CustomerId::new),
            key_id: None,
            session_id: None,
            method: "tools/call".into(),
            tool: tool.map(Into::into),
            started_at: UnixMillis(at),
            duration_us: 10,
            bytes_in: 100,
            bytes_out: 1_000,
            outcome: if n.is_multiple_of(2) {
                UsageOutcome::Ok
            } else {
                UsageOutcome::ToolError
            },
            reason: None,
            units: 2,
        }
    }

    #[test]
    fn outcomes_are_counted_per_day_customer_tool_outcome_and_reason() {
        let day = MILLIS_PER_DAY;
        let mut refused = record(4, Some("cus_a"), Some("echo"), day);
        refused.outcome = UsageOutcome::Refused;
        refused.reason = Some("quota_exceeded".into());
        let records = [
            record(0, Some("cus_a"), Some("echo"), day - 1),
            record(2, Some("cus_a"), Some("echo"), day - 2),
            record(1, Some("cus_a"), Some("echo"), day - 3),
            refused.clone(),
            refused,
            record(6, None, None, day),
        ];
        let counts: Vec<_> = count_outcomes(&records)
            .into_iter()
            .map(|(k, n)| (k.day, k.customer, k.tool, k.outcome, k.reason, n))
            .collect();
        assert_eq!(
            counts,
            [
                ("1970-01-01".into(), "cus_a", "echo", "ok", "", 2),
                ("1970-01-01".into(), "cus_a", "echo", "tool_error", "", 1),
                ("1970-01-02".into(), "", "", "ok", "", 1),
                (
                    "1970-01-02".into(),
                    "cus_a",
                    "echo",
                    "refused",
                    "quota_exceeded",
                    2
                ),
            ]
        );
    }

    #[test]
    fn records_are_summed_per_day_customer_method_and_tool() {
        let day = MILLIS_PER_DAY;
        let records = [
            record(0, Some("cus_a"), Some("echo"), day - 1),
            record(1, Some("cus_a"), Some("echo"), day - 2),
            record(2, Some("cus_a"), Some("echo"), day),
            record(3, None, None, day),
        ];
        let groups = aggregate(&records);
        let keys: Vec<_> = groups
            .keys()
            .map(|k| (k.day.as_str(), k.customer, k.tool))
            .collect();
        assert_eq!(
            keys,
            [
                ("1970-01-01", "cus_a", "echo"),
                ("1970-01-02", "", ""),
                ("1970-01-02", "cus_a", "echo"),
            ]
        );
        let first = groups.values().next().copied().unwrap_or_default();
        assert_eq!(
            first,
            Totals {
                calls: 2,
                errors: 1,
                units: 4,
                duration_us: 20,
                bytes_in: 200,
                bytes_out: 2_000
            }
        );
    }
}
