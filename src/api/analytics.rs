//! Analytics under `/analytics`: revenue, usage, top customers, active
//! customers, refusals and a dashboard, as exact integers.
//!
//! Every route takes `since` (inclusive) and `until` (exclusive), RFC 3339
//! times: by default the last 30 days up to now; at most 400 days. The
//! answer is `{"since", "until", "data": […]}`. Money is in micro-units of
//! its currency, always named, never added across currencies; credits are
//! their own unit.
//!
//! What comes from the daily roll-ups (`usage`, `top-customers?by=calls`,
//! `active-customers`, the dashboard's calls) counts whole UTC days: the
//! days from the one holding `since` to the one holding the millisecond
//! before `until`. Ledger sums and refusals count exactly `[since, until)`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use mcp_meter_plugin::identity::UnixMillis;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiQuery, range};
use crate::store::{GroupAmount, LedgerGroup, OutcomeCount, Span};

/// One day in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// The range when none is given, in days.
pub const DEFAULT_DAYS: i64 = 30;

/// The longest range, in days.
pub const MAX_DAYS: i64 = 400;

/// The most customers `top-customers` lists.
pub const MAX_TOP: u32 = 100;

/// The customers `top-customers` lists when `limit` is not given.
pub const DEFAULT_TOP: u32 = 10;

/// The routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/analytics/revenue", get(revenue))
        .route("/analytics/usage", get(usage))
        .route("/analytics/top-customers", get(top_customers))
        .route("/analytics/active-customers", get(active_customers))
        .route("/analytics/refusals", get(refusals))
        .route("/analytics/dashboard", get(dashboard))
}

/// `since` and `until` alone.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    since: Option<String>,
    until: Option<String>,
}

/// `since`, `until` and `group`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupQuery {
    since: Option<String>,
    until: Option<String>,
    group: Option<String>,
}

/// `since`, `until`, `by` and `limit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopQuery {
    since: Option<String>,
    until: Option<String>,
    by: Option<String>,
    limit: Option<u32>,
}

fn now() -> UnixMillis {
    UnixMillis(Utc::now().timestamp_millis())
}

/// An instant as RFC 3339 in UTC.
fn rfc3339(at: UnixMillis) -> String {
    DateTime::<Utc>::from_timestamp_millis(at.0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// The range asked for: `[since, until)`, the last [`DEFAULT_DAYS`] days
/// up to now by default (the 30 days before `until`, or from `since` up
/// to now, when only one is given), at most
/// [`MAX_DAYS`].
fn span(since: Option<&str>, until: Option<&str>, now: UnixMillis) -> Result<Span, ApiError> {
    let (since, until) = range(since, until)?;
    let default = DEFAULT_DAYS * DAY_MS;
    let (since, until) = match (since, until) {
        (Some(s), Some(u)) => (s, u),
        (Some(s), None) => (s, now),
        (None, Some(u)) => (UnixMillis(u.0.saturating_sub(default)), u),
        (None, None) => (UnixMillis(now.0 - default), now),
    };
    if since.0 >= until.0 {
        return Err(ApiError::invalid("`since` must be before `until`"));
    }
    if until.0 - since.0 > MAX_DAYS * DAY_MS {
        return Err(ApiError::invalid(format!(
            "the range is longer than {MAX_DAYS} days: narrow `since`/`until`"
        )));
    }
    Ok(Span { since, until })
}

/// `{"since", "until", "data"}` plus `extra` fields.
fn answer(span: Span, data: Vec<Value>, extra: Value) -> Json<Value> {
    let mut body = json!({
        "since": rfc3339(span.since),
        "until": rfc3339(span.until),
        "data": data,
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    Json(body)
}

/// The money of `rows` of one group, per currency.
fn money(rows: &[&GroupAmount]) -> Vec<Value> {
    rows.iter()
        .map(|r| json!({ "currency": r.unit, "amount": r.amount, "charges": r.entries }))
        .collect()
}

/// Credits consumed of `rows` (all in credits): the total and the
/// settlements it sums.
fn credits(rows: &[&GroupAmount]) -> Value {
    json!({
        "unit": crate::store::CREDITS_UNIT,
        "consumed": rows.iter().map(|r| r.amount).sum::<i64>(),
        "settlements": rows.iter().map(|r| r.entries).sum::<i64>(),
    })
}

/// The rows of the group `key`.
fn of_group<'a>(rows: &'a [GroupAmount], key: &Option<String>) -> Vec<&'a GroupAmount> {
    rows.iter().filter(|r| &r.group == key).collect()
}

async fn revenue(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<GroupQuery>,
) -> Result<Json<Value>, ApiError> {
    let span = span(query.since.as_deref(), query.until.as_deref(), now())?;
    let (group, name) = match query.group.as_deref().unwrap_or("day") {
        "day" => (LedgerGroup::Day, "day"),
        "plan" => (LedgerGroup::Plan, "plan"),
        "tool" => (LedgerGroup::Tool, "tool"),
        other => {
            return Err(ApiError::invalid(format!(
                "`group` must be day, plan or tool, not {other:?}"
            )));
        }
    };
    let charged = state.store.charges(span, group).await?;
    let consumed = state.store.credits_consumed(span, group).await?;
    let mut keys: Vec<&Option<String>> =
        charged.iter().chain(&consumed).map(|r| &r.group).collect();
    keys.sort();
    keys.dedup();
    let data = keys
        .into_iter()
        .map(|key| {
            json!({
                name: key,
                "charged": money(&of_group(&charged, key)),
                "credits": credits(&of_group(&consumed, key)),
            })
        })
        .collect();
    Ok(answer(span, data, json!({ "group": name })))
}

async fn usage(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<GroupQuery>,
) -> Result<Json<Value>, ApiError> {
    let span = span(query.since.as_deref(), query.until.as_deref(), now())?;
    let group = query.group.as_deref().unwrap_or("day");
    let (by_day, by_tool) = match group {
        "day" => (true, false),
        "tool" => (false, true),
        "day_tool" => (true, true),
        other => {
            return Err(ApiError::invalid(format!(
                "`group` must be day, tool or day_tool, not {other:?}"
            )));
        }
    };
    let (first, last) = span.days();
    let rows = state
        .store
        .usage_totals(&first, &last, by_day, by_tool)
        .await?;
    let data = rows
        .into_iter()
        .map(|r| {
            let mut row = json!({ "calls": r.calls, "errors": r.errors, "units": r.units });
            if by_day {
                row["day"] = json!(r.day);
            }
            if by_tool {
                row["tool"] = json!(r.tool);
            }
            row
        })
        .collect();
    Ok(answer(
        span,
        data,
        json!({ "group": group, "first_day": first, "last_day": last }),
    ))
}

async fn top_customers(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<TopQuery>,
) -> Result<Json<Value>, ApiError> {
    let span = span(query.since.as_deref(), query.until.as_deref(), now())?;
    let limit = match query.limit {
        None => DEFAULT_TOP,
        Some(n) if (1..=MAX_TOP).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "`limit` must be 1 to {MAX_TOP}, not {n}"
            )));
        }
    };
    let by = query.by.as_deref().unwrap_or("calls");
    let data = match by {
        "spend" => state
            .store
            .top_spenders(span, limit)
            .await?
            .into_iter()
            .map(|s| {
                json!({
                    "customer_id": s.customer_id,
                    "currency": s.unit,
                    "amount": s.amount,
                    "charges": s.entries,
                })
            })
            .collect(),
        "calls" => {
            let (first, last) = span.days();
            state
                .store
                .top_callers(&first, &last, limit)
                .await?
                .into_iter()
                .map(|c| {
                    json!({
                        "customer_id": c.customer_id,
                        "calls": c.calls,
                        "errors": c.errors,
                        "units": c.units,
                    })
                })
                .collect()
        }
        other => {
            return Err(ApiError::invalid(format!(
                "`by` must be spend or calls, not {other:?}"
            )));
        }
    };
    Ok(answer(span, data, json!({ "by": by, "limit": limit })))
}

async fn active_customers(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> Result<Json<Value>, ApiError> {
    let span = span(query.since.as_deref(), query.until.as_deref(), now())?;
    let (first, last) = span.days();
    let (total, days) = state.store.active_customers(&first, &last).await?;
    let data = days
        .into_iter()
        .map(|(day, customers)| json!({ "day": day, "customers": customers }))
        .collect();
    Ok(answer(
        span,
        data,
        json!({ "customers": total, "first_day": first, "last_day": last }),
    ))
}

/// `numerator / denominator` exactly, and in per mille rounded half up
/// (0 when there is no call).
fn rate(numerator: i64, denominator: i64) -> Value {
    let per_mille = if denominator > 0 {
        let n = i128::from(numerator) * 1000 + i128::from(denominator) / 2;
        i64::try_from(n / i128::from(denominator)).unwrap_or(i64::MAX)
    } else {
        0
    };
    json!({ "numerator": numerator, "denominator": denominator, "per_mille": per_mille })
}

/// Whether an outcome counts as a failure (neither a success, a
/// recovered call, nor a refusal).
fn failed(outcome: &str) -> bool {
    !matches!(outcome, "ok" | "recovered" | "refused")
}

async fn refusals(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> Result<Json<Value>, ApiError> {
    let span = span(query.since.as_deref(), query.until.as_deref(), now())?;
    let counts: Vec<OutcomeCount> = state.store.outcomes(span).await?;
    let all: i64 = counts.iter().map(|c| c.calls).sum();
    let refused: i64 = counts
        .iter()
        .filter(|c| c.outcome == "refused")
        .map(|c| c.calls)
        .sum();
    let failures: i64 = counts
        .iter()
        .filter(|c| failed(&c.outcome))
        .map(|c| c.calls)
        .sum();
    let data = counts
        .iter()
        .filter(|c| c.outcome == "refused" || failed(&c.outcome))
        .map(|c| {
            json!({
                "kind": if c.outcome == "refused" { "refused" } else { "failed" },
                "outcome": c.outcome,
                "reason": c.reason,
                "calls": c.calls,
                "rate": rate(c.calls, all),
            })
        })
        .collect();
    Ok(answer(
        span,
        data,
        json!({
            "calls": all,
            "refused": { "calls": refused, "rate": rate(refused, all) },
            "failed": { "calls": failures, "rate": rate(failures, all) },
        }),
    ))
}

/// The UTC midnight starting the month `months` before the one of `day`.
fn month_start(day: NaiveDate, months: u32) -> UnixMillis {
    let mut year = day.year();
    let mut month = day.month();
    for _ in 0..months {
        if month == 1 {
            year -= 1;
            month = 12;
        } else {
            month -= 1;
        }
    }
    let start = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(day);
    UnixMillis(
        start
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis(),
    )
}

/// The dashboard's periods at `now`: today so far, this calendar month so
/// far, and the previous calendar month (all UTC).
pub fn periods(now: UnixMillis) -> [(&'static str, Span); 3] {
    let today = UnixMillis(now.0 - now.0.rem_euclid(DAY_MS));
    let day = DateTime::<Utc>::from_timestamp_millis(now.0)
        .map(|t| t.date_naive())
        .unwrap_or_default();
    let this_month = month_start(day, 0);
    let last_month = month_start(day, 1);
    // `until` is exclusive: a period "so far" ends a millisecond after now.
    let end = UnixMillis(now.0 + 1);
    [
        (
            "today",
            Span {
                since: today,
                until: end,
            },
        ),
        (
            "this_period",
            Span {
                since: this_month,
                until: end,
            },
        ),
        (
            "last_period",
            Span {
                since: last_month,
                until: this_month,
            },
        ),
    ]
}

async fn dashboard(
    State(state): State<ApiState>,
    ApiQuery(_query): ApiQuery<NoQuery>,
) -> Result<Json<Value>, ApiError> {
    let now = now();
    let periods = periods(now);
    let mut data = Vec::with_capacity(periods.len());
    for (name, span) in periods {
        let (first, last) = span.days();
        let totals = state
            .store
            .usage_totals(&first, &last, false, false)
            .await?;
        let (calls, errors) = totals.first().map_or((0, 0), |t| (t.calls, t.errors));
        let (active, _) = state.store.active_customers(&first, &last).await?;
        let charged = state.store.charges(span, LedgerGroup::All).await?;
        let consumed = state.store.credits_consumed(span, LedgerGroup::All).await?;
        data.push(json!({
            "period": name,
            "since": rfc3339(span.since),
            "until": rfc3339(span.until),
            "calls": calls,
            "errors": errors,
            "active_customers": active,
            "charged": money(&charged.iter().collect::<Vec<_>>()),
            "credits": credits(&consumed.iter().collect::<Vec<_>>()),
        }));
    }
    let whole = Span {
        since: periods[2].1.since,
        until: periods[0].1.until,
    };
    Ok(answer(whole, data, json!({ "now": rfc3339(now) })))
}

/// No parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_default_and_are_bounded() {
        let now = UnixMillis(1_000 * DAY_MS);
        let s = span(None, None, now).unwrap();
        assert_eq!((s.since.0, s.until.0), (970 * DAY_MS, 1_000 * DAY_MS));
        assert!(
            span(
                Some("2026-01-01T00:00:00Z"),
                Some("2027-03-01T00:00:00Z"),
                now
            )
            .is_err()
        );
        assert!(
            span(
                Some("2026-01-02T00:00:00Z"),
                Some("2026-01-01T00:00:00Z"),
                now
            )
            .is_err()
        );
    }

    #[test]
    fn rates_round_half_up() {
        assert_eq!(rate(1, 3)["per_mille"], 333);
        assert_eq!(rate(2, 3)["per_mille"], 667);
        assert_eq!(rate(1, 2000)["per_mille"], 1);
        assert_eq!(rate(0, 0)["per_mille"], 0);
    }

    #[test]
    fn periods_are_calendar_months() {
        // 2026-01-15T12:00:00Z
        let now = UnixMillis(1_768_478_400_000);
        let [today, this, last] = periods(now);
        assert_eq!(rfc3339(today.1.since), "2026-01-15T00:00:00Z");
        assert_eq!(rfc3339(this.1.since), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(last.1.since), "2025-12-01T00:00:00Z");
        assert_eq!(last.1.until, this.1.since);
    }
}
