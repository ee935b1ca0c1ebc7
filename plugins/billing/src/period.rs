//! Billing periods: which period an instant falls in, computed on UTC
//! calendar boundaries from the injected clock's time, so a counter keyed by
//! the period start is exact at the boundary and survives restarts.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use mcp_meter_plugin::identity::UnixMillis;

/// A calendar period in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A calendar month.
    Month,
    /// A calendar day.
    Day,
    /// An hour.
    Hour,
}

impl Period {
    /// The period's name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Period::Month => "month",
            Period::Day => "day",
            Period::Hour => "hour",
        }
    }

    /// The period named `name` in the configuration, if it is one of
    /// `allowed`.
    pub fn parse(name: &str, allowed: &[Period]) -> Option<Period> {
        allowed.iter().copied().find(|p| p.name() == name)
    }

    /// The first millisecond of the period containing `at`.
    pub fn start_of(&self, at: UnixMillis) -> UnixMillis {
        if *self == Period::Hour {
            return UnixMillis(at.0 - at.0.rem_euclid(HOUR_MS));
        }
        let date = date_of(at);
        let first = match self {
            Period::Month => date.with_day(1).unwrap_or(date),
            Period::Day | Period::Hour => date,
        };
        midnight(first)
    }

    /// The first millisecond of the next period after the one containing
    /// `at`.
    pub fn end_of(&self, at: UnixMillis) -> UnixMillis {
        if *self == Period::Hour {
            return UnixMillis(self.start_of(at).0.saturating_add(HOUR_MS));
        }
        let date = date_of(self.start_of(at));
        let next = match self {
            Period::Month => date.checked_add_months(chrono::Months::new(1)),
            Period::Day | Period::Hour => date.succ_opt(),
        };
        next.map_or(UnixMillis(i64::MAX), midnight)
    }
}

/// Milliseconds in an hour.
const HOUR_MS: i64 = 3_600_000;

/// The period of a subscription plan: calendar, or anchored to the
/// customer's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingPeriod {
    /// A calendar period in UTC.
    Calendar(Period),
    /// Monthly from the day the subscription started (the payment
    /// provider's current period when it has reported one that covers the
    /// instant).
    Subscription,
}

impl BillingPeriod {
    /// The name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            BillingPeriod::Calendar(period) => period.name(),
            BillingPeriod::Subscription => "subscription",
        }
    }
}

/// The start and end of the monthly period, anchored at `anchor`, that
/// contains `at`: periods start on the anchor's day of the month and time
/// of day (on the month's last day when it is shorter).
pub fn anchored_month(anchor: UnixMillis, at: UnixMillis) -> (UnixMillis, UnixMillis) {
    let Some(start) = DateTime::<Utc>::from_timestamp_millis(anchor.0) else {
        return (Period::Month.start_of(at), Period::Month.end_of(at));
    };
    let nth = |months: i64| -> Option<i64> {
        let shifted = if months >= 0 {
            start.checked_add_months(chrono::Months::new(u32::try_from(months).ok()?))
        } else {
            start.checked_sub_months(chrono::Months::new(u32::try_from(-months).ok()?))
        };
        shifted.map(|t| t.timestamp_millis())
    };
    // A first guess from the calendar months between, then a step either way.
    let now = DateTime::<Utc>::from_timestamp_millis(at.0).unwrap_or(start);
    let mut months = i64::from(now.year() - start.year()) * 12 + i64::from(now.month())
        - i64::from(start.month());
    loop {
        match (nth(months), nth(months + 1)) {
            (Some(from), Some(_)) if from > at.0 => months -= 1,
            (Some(_), Some(to)) if to <= at.0 => months += 1,
            (Some(from), Some(to)) => return (UnixMillis(from), UnixMillis(to)),
            _ => return (Period::Month.start_of(at), Period::Month.end_of(at)),
        }
    }
}

/// `at` as an RFC 3339 UTC timestamp (`2026-03-01T00:00:00Z`), for
/// messages people read.
pub fn rfc3339(at: UnixMillis) -> String {
    DateTime::<Utc>::from_timestamp_millis(at.0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn date_of(at: UnixMillis) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(at.0)
        .unwrap_or_default()
        .date_naive()
}

fn midnight(date: NaiveDate) -> UnixMillis {
    UnixMillis(
        date.and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> UnixMillis {
        UnixMillis(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .timestamp_millis(),
        )
    }

    #[test]
    fn months_and_days_start_at_utc_midnight() {
        let at = ms("2026-02-28T23:59:59.999Z");
        assert_eq!(Period::Month.start_of(at), ms("2026-02-01T00:00:00Z"));
        assert_eq!(Period::Month.end_of(at), ms("2026-03-01T00:00:00Z"));
        assert_eq!(Period::Day.start_of(at), ms("2026-02-28T00:00:00Z"));
        assert_eq!(Period::Day.end_of(at), ms("2026-03-01T00:00:00Z"));
        // The boundary millisecond belongs to the new period.
        let boundary = ms("2026-03-01T00:00:00Z");
        assert_eq!(Period::Month.start_of(boundary), boundary);
        assert_eq!(
            Period::Month.end_of(ms("2026-12-31T12:00:00Z")),
            ms("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn hours_start_on_the_hour() {
        let at = ms("2026-02-28T23:59:59.999Z");
        assert_eq!(Period::Hour.start_of(at), ms("2026-02-28T23:00:00Z"));
        assert_eq!(Period::Hour.end_of(at), ms("2026-03-01T00:00:00Z"));
        let boundary = ms("2026-03-01T00:00:00Z");
        assert_eq!(Period::Hour.start_of(boundary), boundary);
    }

    #[test]
    fn anchored_months_follow_the_subscription_start() {
        let anchor = ms("2026-01-31T10:00:00Z");
        // Before the first anniversary: the first period.
        assert_eq!(
            anchored_month(anchor, ms("2026-02-15T00:00:00Z")),
            (anchor, ms("2026-02-28T10:00:00Z"))
        );
        // February is short: its period ends on its last day, and the next
        // one starts again on the 31st where the month has one.
        assert_eq!(
            anchored_month(anchor, ms("2026-03-01T00:00:00Z")),
            (ms("2026-02-28T10:00:00Z"), ms("2026-03-31T10:00:00Z"))
        );
        let boundary = ms("2026-03-31T10:00:00Z");
        assert_eq!(anchored_month(anchor, boundary).0, boundary);
        assert_eq!(
            anchored_month(anchor, ms("2026-03-31T09:59:59.999Z")).1,
            boundary
        );
        // Years later, and an instant before the anchor.
        assert_eq!(
            anchored_month(anchor, ms("2028-07-04T00:00:00Z")),
            (ms("2028-06-30T10:00:00Z"), ms("2028-07-31T10:00:00Z"))
        );
        assert_eq!(
            anchored_month(anchor, ms("2025-12-31T10:00:00Z")).0,
            ms("2025-12-31T10:00:00Z")
        );
    }
}
