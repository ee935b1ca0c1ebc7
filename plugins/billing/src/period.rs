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
}

impl Period {
    /// The period's name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Period::Month => "month",
            Period::Day => "day",
        }
    }

    /// The first millisecond of the period containing `at`.
    pub fn start_of(&self, at: UnixMillis) -> UnixMillis {
        let date = date_of(at);
        let first = match self {
            Period::Month => date.with_day(1).unwrap_or(date),
            Period::Day => date,
        };
        midnight(first)
    }

    /// The first millisecond of the next period after the one containing
    /// `at`.
    pub fn end_of(&self, at: UnixMillis) -> UnixMillis {
        let date = date_of(self.start_of(at));
        let next = match self {
            Period::Month => date.checked_add_months(chrono::Months::new(1)),
            Period::Day => date.succ_opt(),
        };
        next.map_or(UnixMillis(i64::MAX), midnight)
    }
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
}
