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
use axum::extract::State;
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use mcp_meter_plugin::identity::{CustomerId, UnixMillis};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
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
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(revenue))
        .routes(routes!(usage))
        .routes(routes!(top_customers))
        .routes(routes!(active_customers))
        .routes(routes!(refusals))
        .routes(routes!(dashboard))
}

/// `since` and `until` alone.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RangeQuery {
    /// From this time (inclusive, RFC 3339); default: 30 days before
    /// `until`. At most 400 days before `until`.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Up to this time (exclusive, RFC 3339; after `since`); default: now.
    #[param(format = DateTime)]
    until: Option<String>,
}

/// The groups of `/analytics/revenue`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Only documents the strings `group` takes.
enum RevenueGroup {
    Day,
    Plan,
    Tool,
}

/// The groups of `/analytics/usage`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Only documents the strings `group` takes.
enum UsageGroup {
    Day,
    Tool,
    DayTool,
}

/// What `/analytics/top-customers` ranks by.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Only documents the strings `by` takes.
enum TopBy {
    Calls,
    Spend,
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
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TopQuery {
    /// From this time (inclusive, RFC 3339); default: 30 days before
    /// `until`. At most 400 days before `until`.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Up to this time (exclusive, RFC 3339; after `since`); default: now.
    #[param(format = DateTime)]
    until: Option<String>,
    /// Rank by calls (default) or by money charged.
    #[param(value_type = Option<TopBy>, inline)]
    by: Option<String>,
    /// How many customers, 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100)]
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

/// An amount of money in one currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Money {
    /// ISO 4217, lower case.
    pub currency: String,
    /// Micro-units of the currency.
    pub amount: i64,
    /// The charge entries it sums.
    pub charges: i64,
}

/// Credits consumed.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsConsumed {
    /// Always `credits`.
    #[schema(value_type = String)]
    pub unit: &'static str,
    /// Credits consumed by settled calls.
    pub consumed: i64,
    /// The settlements it sums.
    pub settlements: i64,
}

/// The money of `rows` of one group, per currency.
fn money(rows: &[&GroupAmount]) -> Vec<Money> {
    rows.iter()
        .map(|r| Money {
            currency: r.unit.clone(),
            amount: r.amount,
            charges: r.entries,
        })
        .collect()
}

/// Credits consumed of `rows` (all in credits): the total and the
/// settlements it sums.
fn credits(rows: &[&GroupAmount]) -> CreditsConsumed {
    CreditsConsumed {
        unit: crate::store::CREDITS_UNIT,
        consumed: rows.iter().map(|r| r.amount).sum::<i64>(),
        settlements: rows.iter().map(|r| r.entries).sum::<i64>(),
    }
}

/// The rows of the group `key`.
fn of_group<'a>(rows: &'a [GroupAmount], key: &Option<String>) -> Vec<&'a GroupAmount> {
    rows.iter().filter(|r| &r.group == key).collect()
}

/// Money charged and credits consumed, per day, plan or tool.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revenue {
    /// The range's start (RFC 3339, UTC).
    pub since: String,
    /// The range's end, exclusive (RFC 3339, UTC).
    pub until: String,
    /// `day`, `plan` or `tool`: which key each row has.
    #[schema(value_type = String)]
    pub group: &'static str,
    /// One row per group.
    pub data: Vec<RevenueRow>,
}

/// One group's revenue; the row has the key its group names.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevenueRow {
    /// The UTC day (`YYYY-MM-DD`), when grouped by day.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub day: Option<Option<String>>,
    /// The plan (`null`: none), when grouped by plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub plan: Option<Option<String>>,
    /// The tool (`null`: none), when grouped by tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tool: Option<Option<String>>,
    /// Money charged, per currency.
    pub charged: Vec<Money>,
    /// Credits consumed.
    pub credits: CreditsConsumed,
}

#[utoipa::path(get, path = "/analytics/revenue", tag = "analytics",
    summary = "Money charged and credits consumed in a range, per day, plan or tool",
    params(
        RangeQuery,
        ("group" = inline(Option<RevenueGroup>), Query, description = "The grouping (default `day`)."),
    ),
    responses(
        (status = 200, description = "The revenue", body = Revenue),
        (status = 400, description = "A bad range or `group`", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn revenue(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<GroupQuery>,
) -> Result<Json<Revenue>, ApiError> {
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
            let of = |g: LedgerGroup| (g == group).then(|| key.clone());
            RevenueRow {
                day: of(LedgerGroup::Day),
                plan: of(LedgerGroup::Plan),
                tool: of(LedgerGroup::Tool),
                charged: money(&of_group(&charged, key)),
                credits: credits(&of_group(&consumed, key)),
            }
        })
        .collect();
    Ok(Json(Revenue {
        since: rfc3339(span.since),
        until: rfc3339(span.until),
        group: name,
        data,
    }))
}

/// Calls, errors and units from the daily roll-ups.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// The range's start (RFC 3339, UTC).
    pub since: String,
    /// The range's end, exclusive (RFC 3339, UTC).
    pub until: String,
    /// `day`, `tool` or `day_tool`: which keys each row has.
    pub group: String,
    /// The first UTC day counted (`YYYY-MM-DD`).
    pub first_day: String,
    /// The last UTC day counted (`YYYY-MM-DD`).
    pub last_day: String,
    /// One row per group.
    pub data: Vec<UsageRow>,
}

/// One group's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRow {
    /// The UTC day, when grouped by day.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub day: Option<Option<String>>,
    /// The tool (`null`: calls without one), when grouped by tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tool: Option<Option<String>>,
    /// Calls.
    pub calls: i64,
    /// Calls whose outcome was neither `ok` nor `recovered`.
    pub errors: i64,
    /// Metered units.
    pub units: i64,
}

#[utoipa::path(get, path = "/analytics/usage", tag = "analytics",
    summary = "Calls, errors and units over whole UTC days, per day, tool or both",
    params(
        RangeQuery,
        ("group" = inline(Option<UsageGroup>), Query, description = "The grouping (default `day`)."),
    ),
    responses(
        (status = 200, description = "The usage", body = UsageReport),
        (status = 400, description = "A bad range or `group`", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn usage(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<GroupQuery>,
) -> Result<Json<UsageReport>, ApiError> {
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
        .map(|r| UsageRow {
            day: by_day.then_some(r.day),
            tool: by_tool.then_some(r.tool),
            calls: r.calls,
            errors: r.errors,
            units: r.units,
        })
        .collect();
    Ok(Json(UsageReport {
        since: rfc3339(span.since),
        until: rfc3339(span.until),
        group: group.to_owned(),
        first_day: first,
        last_day: last,
        data,
    }))
}

/// The customers who called most or spent most.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopCustomers {
    /// The range's start (RFC 3339, UTC).
    pub since: String,
    /// The range's end, exclusive (RFC 3339, UTC).
    pub until: String,
    /// `calls` or `spend`.
    pub by: String,
    /// The most rows.
    pub limit: u32,
    /// The customers, first the top one.
    pub data: Vec<TopCustomer>,
}

/// One customer of the top list: their calls, or their spend in one
/// currency.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TopCustomer {
    /// By spend.
    Spend {
        /// Whose.
        customer_id: CustomerId,
        /// ISO 4217, lower case.
        currency: String,
        /// Micro-units of the currency.
        amount: i64,
        /// The charge entries it sums.
        charges: i64,
    },
    /// By calls (whole UTC days, from the roll-ups).
    Calls {
        /// Whose (`null`: unauthenticated calls).
        customer_id: Option<CustomerId>,
        /// Calls.
        calls: i64,
        /// Calls whose outcome was neither `ok` nor `recovered`.
        errors: i64,
        /// Metered units.
        units: i64,
    },
}

#[utoipa::path(get, path = "/analytics/top-customers", tag = "analytics",
    summary = "The customers with the most calls or the most spend",
    params(TopQuery),
    responses(
        (status = 200, description = "The top customers", body = TopCustomers),
        (status = 400, description = "A bad range, `by` or `limit`", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn top_customers(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<TopQuery>,
) -> Result<Json<TopCustomers>, ApiError> {
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
            .map(|s| TopCustomer::Spend {
                customer_id: s.customer_id,
                currency: s.unit,
                amount: s.amount,
                charges: s.entries,
            })
            .collect(),
        "calls" => {
            let (first, last) = span.days();
            state
                .store
                .top_callers(&first, &last, limit)
                .await?
                .into_iter()
                .map(|c| TopCustomer::Calls {
                    customer_id: c.customer_id,
                    calls: c.calls,
                    errors: c.errors,
                    units: c.units,
                })
                .collect()
        }
        other => {
            return Err(ApiError::invalid(format!(
                "`by` must be spend or calls, not {other:?}"
            )));
        }
    };
    Ok(Json(TopCustomers {
        since: rfc3339(span.since),
        until: rfc3339(span.until),
        by: by.to_owned(),
        limit,
        data,
    }))
}

/// Distinct customers with a call.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActiveCustomers {
    /// The range's start (RFC 3339, UTC).
    pub since: String,
    /// The range's end, exclusive (RFC 3339, UTC).
    pub until: String,
    /// Distinct customers over the whole range.
    pub customers: i64,
    /// The first UTC day counted (`YYYY-MM-DD`).
    pub first_day: String,
    /// The last UTC day counted (`YYYY-MM-DD`).
    pub last_day: String,
    /// Per day with calls.
    pub data: Vec<ActiveDay>,
}

/// Distinct customers of one UTC day.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActiveDay {
    /// The UTC day (`YYYY-MM-DD`).
    pub day: String,
    /// Distinct customers with a call that day.
    pub customers: i64,
}

#[utoipa::path(get, path = "/analytics/active-customers", tag = "analytics",
    summary = "Distinct customers with a call, over whole UTC days",
    params(RangeQuery),
    responses(
        (status = 200, description = "The active customers", body = ActiveCustomers),
        (status = 400, description = "A bad range", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn active_customers(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> Result<Json<ActiveCustomers>, ApiError> {
    let span = span(query.since.as_deref(), query.until.as_deref(), now())?;
    let (first, last) = span.days();
    let (total, days) = state.store.active_customers(&first, &last).await?;
    let data = days
        .into_iter()
        .map(|(day, customers)| ActiveDay { day, customers })
        .collect();
    Ok(Json(ActiveCustomers {
        since: rfc3339(span.since),
        until: rfc3339(span.until),
        customers: total,
        first_day: first,
        last_day: last,
        data,
    }))
}

/// A share of the calls: exactly, and in per mille.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rate {
    /// These calls.
    pub numerator: i64,
    /// All calls.
    pub denominator: i64,
    /// `numerator / denominator` in per mille, rounded half up (0 when
    /// there is no call).
    pub per_mille: i64,
}

/// `numerator / denominator` exactly, and in per mille rounded half up
/// (0 when there is no call).
fn rate(numerator: i64, denominator: i64) -> Rate {
    let per_mille = if denominator > 0 {
        let n = i128::from(numerator) * 1000 + i128::from(denominator) / 2;
        i64::try_from(n / i128::from(denominator)).unwrap_or(i64::MAX)
    } else {
        0
    };
    Rate {
        numerator,
        denominator,
        per_mille,
    }
}

/// Whether an outcome counts as a failure (neither a success, a
/// recovered call, nor a refusal).
fn failed(outcome: &str) -> bool {
    !matches!(outcome, "ok" | "recovered" | "refused")
}

/// Refused and failed calls.
#[derive(Debug, Serialize, ToSchema)]
pub struct Refusals {
    /// The range's start (RFC 3339, UTC).
    pub since: String,
    /// The range's end, exclusive (RFC 3339, UTC).
    pub until: String,
    /// All calls started in the range.
    pub calls: i64,
    /// The refused ones.
    pub refused: CallShare,
    /// The failed ones (neither ok, recovered nor refused).
    pub failed: CallShare,
    /// Per outcome and reason.
    pub data: Vec<RefusalRow>,
}

/// Some of the calls and their share.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallShare {
    /// Calls.
    pub calls: i64,
    /// Their share of all calls.
    pub rate: Rate,
}

/// The calls that ended with one outcome and reason.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefusalRow {
    /// `refused` or `failed`.
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// The outcome (`refused`, `tool_error`, …).
    pub outcome: String,
    /// The reason, if the records have one.
    pub reason: Option<String>,
    /// Calls.
    pub calls: i64,
    /// Their share of all calls.
    pub rate: Rate,
}

#[utoipa::path(get, path = "/analytics/refusals", tag = "analytics",
    summary = "Refused and failed calls in a range, per outcome and reason",
    params(RangeQuery),
    responses(
        (status = 200, description = "The refusals and failures", body = Refusals),
        (status = 400, description = "A bad range", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn refusals(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> Result<Json<Refusals>, ApiError> {
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
        .map(|c| RefusalRow {
            kind: if c.outcome == "refused" {
                "refused"
            } else {
                "failed"
            },
            outcome: c.outcome.clone(),
            reason: c.reason.clone(),
            calls: c.calls,
            rate: rate(c.calls, all),
        })
        .collect();
    Ok(Json(Refusals {
        since: rfc3339(span.since),
        until: rfc3339(span.until),
        calls: all,
        refused: CallShare {
            calls: refused,
            rate: rate(refused, all),
        },
        failed: CallShare {
            calls: failures,
            rate: rate(failures, all),
        },
        data,
    }))
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

/// Today, this month and last month at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dashboard {
    /// The start of last month (RFC 3339, UTC).
    pub since: String,
    /// A millisecond after `now` (RFC 3339, UTC).
    pub until: String,
    /// When the dashboard was computed (RFC 3339, UTC).
    pub now: String,
    /// `today`, `this_period` and `last_period`.
    pub data: Vec<DashboardPeriod>,
}

/// One period of the dashboard.
#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardPeriod {
    /// `today`, `this_period` (this calendar month) or `last_period`.
    #[schema(value_type = String)]
    pub period: &'static str,
    /// The period's start (RFC 3339, UTC).
    pub since: String,
    /// The period's end, exclusive (RFC 3339, UTC).
    pub until: String,
    /// Calls (whole UTC days, from the roll-ups).
    pub calls: i64,
    /// Calls whose outcome was neither `ok` nor `recovered`.
    pub errors: i64,
    /// Distinct customers with a call.
    pub active_customers: i64,
    /// Money charged, per currency.
    pub charged: Vec<Money>,
    /// Credits consumed.
    pub credits: CreditsConsumed,
}

#[utoipa::path(get, path = "/analytics/dashboard", tag = "analytics",
    summary = "Calls, customers, charges and credits today, this month and last month",
    responses(
        (status = 200, description = "The dashboard", body = Dashboard),
        (status = 400, description = "A query parameter was given (there are none)", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]
async fn dashboard(
    State(state): State<ApiState>,
    ApiQuery(_query): ApiQuery<NoQuery>,
) -> Result<Json<Dashboard>, ApiError> {
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
        data.push(DashboardPeriod {
            period: name,
            since: rfc3339(span.since),
            until: rfc3339(span.until),
            calls,
            errors,
            active_customers: active,
            charged: money(&charged.iter().collect::<Vec<_>>()),
            credits: credits(&consumed.iter().collect::<Vec<_>>()),
        });
    }
    Ok(Json(Dashboard {
        since: rfc3339(periods[2].1.since),
        until: rfc3339(periods[0].1.until),
        now: rfc3339(now),
        data,
    }))
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
        assert_eq!(rate(1, 3).per_mille, 333);
        assert_eq!(rate(2, 3).per_mille, 667);
        assert_eq!(rate(1, 2000).per_mille, 1);
        assert_eq!(rate(0, 0).per_mille, 0);
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
