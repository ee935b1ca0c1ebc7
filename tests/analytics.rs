//! The analytics API over real HTTP on SQLite, PostgreSQL and MariaDB:
//! usage, charges in two currencies and credit reservations written through
//! the store over several weeks, then every endpoint checked against the
//! same figures computed here from the generated rows, over ranges whose
//! edges fall on UTC midnights and between them.
//!
//! The daily roll-ups of charges and outcomes, on every backend: the
//! store's charges, top spenders and outcomes equal what the raw rows
//! (read back with plain sqlx) give over day-aligned spans, spans cut into
//! days at both ends, spans inside one day and random millisecond spans;
//! the roll-ups written with the rows equal a grouping of the raw rows, and
//! so does what the migration fills in when a database is upgraded (its
//! SQL day matches the store's, also before 1970 and after 2100); and
//! concurrent charges and usage batches keep them exact.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use common::db::Kind;
use common::db::TestDb;
use common::{Proxy, bin};
use mcp_meter::store::{CustomerSpend, GroupAmount, LedgerGroup, OutcomeCount, Span, Store};
use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{
    Accrual, AccrueOutcome, BalanceChange, ChargeKey, EntryKind, PriceSchedule, Reservation,
    ReserveOutcome, SettleOutcome, Settlement,
};
use mcp_meter_plugin::ports::{NewCustomer, UsageOutcome, UsageRecord};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, Row};
use std::sync::Arc;

const TOKEN: &str = "adm_0123456789abcdef0123456789abcdef";
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

fn start(dir: &std::path::Path, db: &str) -> Proxy {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {db:?}\nmax_connections = 10\n\
         [[plans]]\nid = \"payg\"\nmodel = \"per_call\"\ncurrency = \"usd\"\nprices = {{ default = \"0.01\" }}\n\
         [api]\nadmin_tokens = [\"{TOKEN}\"]\n",
        bin()
    );
    let path = dir.join("mcp-meter.toml");
    std::fs::write(&path, toml).expect("write config");
    Proxy::start(
        &["serve", "--config", path.to_str().expect("utf-8 path")],
        &[],
    )
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(proxy: &Proxy) -> Api {
        let base = proxy.url.strip_suffix("/mcp").expect("ends with /mcp");
        Api {
            http: reqwest::Client::new(),
            base: format!("{base}/api/v1/analytics"),
        }
    }

    async fn send(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("API request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(path, Some(TOKEN)).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn rfc3339(at: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(at)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn day_of(at: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(at)
        .expect("a time")
        .format("%Y-%m-%d")
        .to_string()
}

/// A usage record as generated.
struct Call {
    call_id: String,
    customer: Option<String>,
    tool: Option<String>,
    at: i64,
    outcome: UsageOutcome,
    reason: Option<String>,
    units: i64,
}

/// A charge as generated.
struct Charge {
    customer: String,
    currency: String,
    plan: String,
    tool: Option<String>,
    at: i64,
    amount: i64,
}

/// A settled reservation as generated: the credits it consumed, on the
/// settlement's time.
struct Settled {
    plan: String,
    tool: Option<String>,
    at: i64,
    consumed: i64,
}

struct Data {
    calls: Vec<Call>,
    charges: Vec<Charge>,
    settled: Vec<Settled>,
}

/// A small deterministic generator.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n) as i64
    }
}

/// Times in the 45 days before `today` (midnight), with many on and right
/// around midnights, and some at `today` itself.
fn time(rng: &mut Lcg, today: i64, n: usize) -> i64 {
    if n.is_multiple_of(17) {
        return today;
    }
    let day = today - (1 + rng.next(45)) * DAY;
    match rng.next(5) {
        0 => day,
        1 => day + DAY - 1,
        2 => day + 1,
        _ => day + rng.next(DAY as u64),
    }
}

async fn generate(db: &TestDb, today: i64) -> (Data, Vec<String>) {
    let store = db.open().await;
    let mut customers = Vec::new();
    for name in ["Ada", "Bob", "Cy", "Dee"] {
        let customer = store
            .create_customer(NewCustomer {
                name: name.into(),
                email: None,
                plan_id: None,
                external_subject: None,
                metadata: Default::default(),
            })
            .await
            .expect("customer");
        customers.push(customer.id.as_str().to_owned());
    }
    let mut rng = Lcg(7);
    let tools = [Some("echo"), Some("add"), None];
    let outcomes = [
        (UsageOutcome::Ok, None),
        (UsageOutcome::Ok, None),
        (UsageOutcome::Ok, None),
        (UsageOutcome::Recovered, None),
        (UsageOutcome::ToolError, None),
        (UsageOutcome::UpstreamError, Some("upstream exited")),
        (UsageOutcome::Timeout, None),
        (UsageOutcome::Refused, Some("insufficient_credits")),
        (UsageOutcome::Refused, Some("insufficient_credits")),
        (UsageOutcome::Refused, Some("quota_exceeded")),
    ];
    // Customers weighted so that totals rarely tie: Ada, Bob, Cy, anonymous.
    let who = [0, 0, 0, 0, 0, 1, 1, 1, 2, 3];
    let mut calls = Vec::new();
    for n in 0..600 {
        let (outcome, reason) = outcomes[rng.next(outcomes.len() as u64) as usize];
        let customer = match who[rng.next(who.len() as u64) as usize] {
            3 => None,
            c => Some(customers[c].clone()),
        };
        calls.push(Call {
            call_id: format!("call_{n:05}"),
            customer,
            tool: tools[rng.next(3) as usize].map(str::to_owned),
            at: time(&mut rng, today, n),
            outcome,
            reason: reason.map(str::to_owned),
            units: rng.next(4),
        });
    }
    let mut charges = Vec::new();
    for n in 0..200 {
        let customer = customers[[0, 0, 1, 1, 2][rng.next(5) as usize]].clone();
        let currency = if rng.next(3) == 0 { "eur" } else { "usd" };
        let plan = if rng.next(2) == 0 { "payg" } else { "pro" };
        let tool = tools[rng.next(3) as usize].map(str::to_owned);
        let at = time(&mut rng, today, n + 1);
        let price = 1_000 * (1 + rng.next(500));
        let outcome = store
            .accrue(&Accrual {
                customer_id: CustomerId::new(customer.clone()),
                charge_key: ChargeKey::new(format!("charge{n}")),
                call_id: CallId::new(format!("call_charge{n}")),
                plan_id: plan.into(),
                tool: tool.clone(),
                currency: currency.into(),
                counter: "calls".into(),
                period_start: UnixMillis(at - at.rem_euclid(DAY)),
                schedule: PriceSchedule::Flat { price },
                quantity: 1,
                at: UnixMillis(at),
            })
            .await
            .expect("accrue");
        let AccrueOutcome::Charged { amount, .. } = outcome else {
            panic!("charge {n}: {outcome:?}");
        };
        assert_eq!(amount, price);
        charges.push(Charge {
            customer,
            currency: currency.into(),
            plan: plan.into(),
            tool,
            at,
            amount,
        });
    }

    let mut settled = Vec::new();
    for customer in &customers[..2] {
        store
            .change_balance(&BalanceChange {
                customer_id: CustomerId::new(customer.clone()),
                kind: EntryKind::Grant,
                amount: 1_000_000,
                idempotency_key: "welcome".into(),
                reason: None,
                at: UnixMillis(today - 60 * DAY),
            })
            .await
            .expect("grant");
    }
    for n in 0..120 {
        let customer = customers[rng.next(2) as usize].clone();
        let plan = if rng.next(2) == 0 { "prepaid" } else { "pro" };
        let tool = tools[rng.next(3) as usize].map(str::to_owned);
        let reserved_at = time(&mut rng, today, n + 3) - 500;
        let amount = 1 + rng.next(50);
        let key = format!("credits{n}");
        let outcome = store
            .reserve(&Reservation {
                customer_id: CustomerId::new(customer.clone()),
                charge_key: ChargeKey::new(key.clone()),
                call_id: CallId::new(format!("call_{key}")),
                amount,
                plan_id: plan.into(),
                tool: tool.clone(),
                at: UnixMillis(reserved_at),
            })
            .await
            .expect("reserve");
        let ReserveOutcome::Reserved { attempt, .. } = outcome else {
            panic!("reserve {n}: {outcome:?}");
        };
        // The call's usage record (without it the proxy would take a
        // settled call for one whose record was lost, and recover it).
        calls.push(Call {
            call_id: format!("call_{key}"),
            customer: Some(customer.clone()),
            tool: tool.clone(),
            at: reserved_at,
            outcome: UsageOutcome::Ok,
            reason: None,
            units: 1,
        });
        // Settled a second later (often across midnight) or refunded.
        // (None is left reserved: the proxy would recover an old held
        // reservation at start as a call whose record was lost.)
        let settled_at = (reserved_at + 1_000).min(today);
        let actual = rng.next(amount as u64 + 10);
        let refund = (rng.next(5) == 0).then(|| "upstream failed".to_owned());
        let outcome = store
            .settle(&Settlement {
                customer_id: CustomerId::new(customer.clone()),
                charge_key: ChargeKey::new(key),
                attempt,
                actual,
                refund_reason: refund.clone(),
                at: UnixMillis(settled_at),
            })
            .await
            .expect("settle");
        assert!(
            matches!(outcome, SettleOutcome::Applied { .. }),
            "{outcome:?}"
        );
        if refund.is_none() {
            settled.push(Settled {
                plan: plan.into(),
                tool,
                at: settled_at,
                consumed: actual.min(amount),
            });
        }
    }
    let records: Vec<UsageRecord> = calls
        .iter()
        .map(|c| UsageRecord {
            call_id: CallId::new(c.call_id.clone()),
            customer_id: c.customer.as_deref().map(CustomerId::new),
            key_id: None,
            session_id: None,
            method: if c.tool.is_some() {
                "tools/call"
            } else {
                "tools/list"
            }
            .into(),
            tool: c.tool.clone(),
            started_at: UnixMillis(c.at),
            duration_us: 10,
            bytes_in: 1,
            bytes_out: 2,
            outcome: c.outcome,
            reason: c.reason.clone(),
            units: c.units,
        })
        .collect();
    // Several batches, as the recorder sends them.
    for batch in records.chunks(128) {
        store.record_usage(batch).await.expect("record usage");
    }

    (
        Data {
            calls,
            charges,
            settled,
        },
        customers,
    )
}

/// Whether a call counts as an error in the roll-ups.
fn is_error(outcome: UsageOutcome) -> bool {
    !matches!(outcome, UsageOutcome::Ok | UsageOutcome::Recovered)
}

/// The UTC days a range covers in the roll-ups.
fn days(since: i64, until: i64) -> (String, String) {
    (day_of(since), day_of(until - 1))
}

fn in_days(at: i64, since: i64, until: i64) -> bool {
    let (first, last) = days(since, until);
    let day = day_of(at);
    first <= day && day <= last
}

fn in_range(at: i64, since: i64, until: i64) -> bool {
    since <= at && at < until
}

fn query(since: i64, until: i64) -> String {
    format!(
        "since={}&until={}",
        rfc3339(since).replace('+', "%2B"),
        rfc3339(until).replace('+', "%2B")
    )
}

fn money_json(map: &BTreeMap<String, (i64, i64)>) -> Value {
    Value::Array(
        map.iter()
            .map(|(currency, (amount, charges))| {
                json!({ "currency": currency, "amount": amount, "charges": charges })
            })
            .collect(),
    )
}

fn credits_json(consumed: i64, settlements: i64) -> Value {
    json!({ "unit": "credits", "consumed": consumed, "settlements": settlements })
}

fn expected_revenue(data: &Data, since: i64, until: i64, group: &str) -> Value {
    let key = |plan: &str, tool: &Option<String>, at: i64| -> Option<String> {
        match group {
            "day" => Some(day_of(at)),
            "plan" => Some(plan.to_owned()),
            _ => tool.clone(),
        }
    };
    type Group = (BTreeMap<String, (i64, i64)>, (i64, i64));
    let mut groups: BTreeMap<Option<String>, Group> = BTreeMap::new();
    for c in data.charges.iter().filter(|c| in_range(c.at, since, until)) {
        let money = groups.entry(key(&c.plan, &c.tool, c.at)).or_default();
        let sum = money.0.entry(c.currency.clone()).or_default();
        sum.0 += c.amount;
        sum.1 += 1;
    }
    for s in data.settled.iter().filter(|s| in_range(s.at, since, until)) {
        let credits = &mut groups.entry(key(&s.plan, &s.tool, s.at)).or_default().1;
        credits.0 += s.consumed;
        credits.1 += 1;
    }
    Value::Array(
        groups
            .into_iter()
            .map(|(key, (money, credits))| {
                json!({
                    group: key,
                    "charged": money_json(&money),
                    "credits": credits_json(credits.0, credits.1),
                })
            })
            .collect(),
    )
}

fn expected_usage(data: &Data, since: i64, until: i64, group: &str) -> Value {
    // (day, tool) -> (calls, errors, units)
    type Key = (Option<String>, Option<String>);
    let mut groups: BTreeMap<Key, (i64, i64, i64)> = BTreeMap::new();
    for c in data.calls.iter().filter(|c| in_days(c.at, since, until)) {
        let day = (group != "tool").then(|| day_of(c.at));
        let tool = if group == "day" { None } else { c.tool.clone() };
        let sum = groups.entry((day, tool)).or_default();
        sum.0 += 1;
        sum.1 += i64::from(is_error(c.outcome));
        sum.2 += c.units;
    }
    Value::Array(
        groups
            .into_iter()
            .map(|((day, tool), (calls, errors, units))| {
                let mut row = json!({ "calls": calls, "errors": errors, "units": units });
                if group != "tool" {
                    row["day"] = json!(day);
                }
                if group != "day" {
                    row["tool"] = json!(tool);
                }
                row
            })
            .collect(),
    )
}

fn expected_top_calls(data: &Data, since: i64, until: i64, limit: usize) -> Value {
    let mut per: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for c in data.calls.iter().filter(|c| in_days(c.at, since, until)) {
        if let Some(customer) = &c.customer {
            let sum = per.entry(customer).or_default();
            sum.0 += 1;
            sum.1 += i64::from(is_error(c.outcome));
            sum.2 += c.units;
        }
    }
    let mut rows: Vec<_> = per.into_iter().collect();
    // Most first, ties by id (the map's order; the sort is stable).
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
    rows.truncate(limit);
    Value::Array(
        rows.into_iter()
            .map(|(customer, (calls, errors, units))| {
                json!({ "customer_id": customer, "calls": calls, "errors": errors, "units": units })
            })
            .collect(),
    )
}

fn expected_top_spend(data: &Data, since: i64, until: i64, limit: usize) -> Value {
    let mut per: BTreeMap<&str, BTreeMap<&str, (i64, i64)>> = BTreeMap::new();
    for c in data.charges.iter().filter(|c| in_range(c.at, since, until)) {
        let sum = per
            .entry(&c.currency)
            .or_default()
            .entry(&c.customer)
            .or_default();
        sum.0 += c.amount;
        sum.1 += 1;
    }
    let mut out = Vec::new();
    for (currency, customers) in per {
        let mut rows: Vec<_> = customers.into_iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
        rows.truncate(limit);
        for (customer, (amount, charges)) in rows {
            out.push(json!({ "customer_id": customer, "currency": currency,
                             "amount": amount, "charges": charges }));
        }
    }
    Value::Array(out)
}

fn expected_active(data: &Data, since: i64, until: i64) -> (i64, Value) {
    let mut all = BTreeSet::new();
    let mut per_day: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for c in data.calls.iter().filter(|c| in_days(c.at, since, until)) {
        if let Some(customer) = &c.customer {
            all.insert(customer.as_str());
            per_day.entry(day_of(c.at)).or_default().insert(customer);
        }
    }
    (
        all.len() as i64,
        Value::Array(
            per_day
                .into_iter()
                .map(|(day, set)| json!({ "day": day, "customers": set.len() }))
                .collect(),
        ),
    )
}

fn rate(numerator: i64, denominator: i64) -> Value {
    let per_mille = if denominator == 0 {
        0
    } else {
        (numerator * 1000 + denominator / 2) / denominator
    };
    json!({ "numerator": numerator, "denominator": denominator, "per_mille": per_mille })
}

fn expected_refusals(data: &Data, since: i64, until: i64) -> Value {
    let calls: Vec<&Call> = data
        .calls
        .iter()
        .filter(|c| in_range(c.at, since, until))
        .collect();
    let all = calls.len() as i64;
    let mut per: BTreeMap<(&str, Option<&str>), i64> = BTreeMap::new();
    for c in &calls {
        if is_error(c.outcome) {
            *per.entry((c.outcome.as_str(), c.reason.as_deref()))
                .or_default() += 1;
        }
    }
    let refused: i64 = per
        .iter()
        .filter(|(k, _)| k.0 == "refused")
        .map(|(_, n)| n)
        .sum();
    let failed: i64 = per
        .iter()
        .filter(|(k, _)| k.0 != "refused")
        .map(|(_, n)| n)
        .sum();
    json!({
        "calls": all,
        "refused": { "calls": refused, "rate": rate(refused, all) },
        "failed": { "calls": failed, "rate": rate(failed, all) },
        "data": per.into_iter().map(|((outcome, reason), n)| json!({
            "kind": if outcome == "refused" { "refused" } else { "failed" },
            "outcome": outcome,
            "reason": reason,
            "calls": n,
            "rate": rate(n, all),
        })).collect::<Vec<_>>(),
    })
}

/// Checks every endpoint over `[since, until)`.
async fn check_range(api: &Api, data: &Data, since: i64, until: i64) {
    let q = query(since, until);
    for group in ["day", "plan", "tool"] {
        let body = api.get(&format!("/revenue?{q}&group={group}")).await;
        assert_eq!(body["since"], rfc3339(since));
        assert_eq!(body["until"], rfc3339(until));
        assert_eq!(
            body["data"],
            expected_revenue(data, since, until, group),
            "revenue by {group} over {q}"
        );
    }
    for group in ["day", "tool", "day_tool"] {
        let body = api.get(&format!("/usage?{q}&group={group}")).await;
        assert_eq!(
            body["data"],
            expected_usage(data, since, until, group),
            "usage by {group} over {q}"
        );
    }
    for limit in [1, 2, 100] {
        let body = api
            .get(&format!("/top-customers?{q}&by=calls&limit={limit}"))
            .await;
        assert_eq!(
            body["data"],
            expected_top_calls(data, since, until, limit),
            "top callers over {q}"
        );
        let body = api
            .get(&format!("/top-customers?{q}&by=spend&limit={limit}"))
            .await;
        assert_eq!(
            body["data"],
            expected_top_spend(data, since, until, limit),
            "top spenders over {q}"
        );
    }
    let body = api.get(&format!("/active-customers?{q}")).await;
    let (total, per_day) = expected_active(data, since, until);
    assert_eq!(body["customers"], total, "active customers over {q}");
    assert_eq!(body["data"], per_day, "active customers per day over {q}");

    let body = api.get(&format!("/refusals?{q}")).await;
    let expected = expected_refusals(data, since, until);
    for field in ["calls", "refused", "failed", "data"] {
        assert_eq!(body[field], expected[field], "refusals {field} over {q}");
    }
}

fn month_start(day: NaiveDate, back: u32) -> i64 {
    let (mut year, mut month) = (day.year(), day.month());
    for _ in 0..back {
        (year, month) = if month == 1 {
            (year - 1, 12)
        } else {
            (year, month - 1)
        };
    }
    NaiveDate::from_ymd_opt(year, month, 1)
        .expect("a day")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp_millis()
}

async fn check_dashboard(api: &Api, data: &Data, now: i64) {
    let body = api.get("/dashboard").await;
    let today = now - now.rem_euclid(DAY);
    let date = DateTime::<Utc>::from_timestamp_millis(now)
        .expect("now")
        .date_naive();
    let this = month_start(date, 0);
    let last = month_start(date, 1);
    let periods = body["data"].as_array().expect("periods");
    assert_eq!(periods.len(), 3, "{body}");
    for (period, name, since, until) in [
        (&periods[0], "today", today, i64::MAX),
        (&periods[1], "this_period", this, i64::MAX),
        (&periods[2], "last_period", last, this),
    ] {
        assert_eq!(period["period"], name);
        assert_eq!(period["since"], rfc3339(since));
        // Every generated row is older than the request.
        let days_until = if until == i64::MAX { now + 1 } else { until };
        let calls: Vec<&Call> = data
            .calls
            .iter()
            .filter(|c| in_days(c.at, since, days_until))
            .collect();
        assert_eq!(period["calls"], calls.len(), "{name}: {period}");
        assert_eq!(
            period["errors"],
            calls.iter().filter(|c| is_error(c.outcome)).count(),
            "{name}"
        );
        let active: BTreeSet<&str> = calls.iter().filter_map(|c| c.customer.as_deref()).collect();
        assert_eq!(period["active_customers"], active.len(), "{name}");
        let mut money: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for c in data.charges.iter().filter(|c| in_range(c.at, since, until)) {
            let sum = money.entry(c.currency.clone()).or_default();
            sum.0 += c.amount;
            sum.1 += 1;
        }
        assert_eq!(period["charged"], money_json(&money), "{name}");
        let settled: Vec<&Settled> = data
            .settled
            .iter()
            .filter(|s| in_range(s.at, since, until))
            .collect();
        assert_eq!(
            period["credits"],
            credits_json(
                settled.iter().map(|s| s.consumed).sum(),
                settled.len() as i64
            ),
            "{name}"
        );
    }
}

async fn analytics_match_the_generated_rows(db: TestDb) {
    let now = now_ms();
    let today = now - now.rem_euclid(DAY);
    let (data, _customers) = generate(&db, today).await;
    // The generated rows hold what the checks are about.
    let currencies: BTreeSet<&str> = data.charges.iter().map(|c| c.currency.as_str()).collect();
    assert_eq!(currencies, BTreeSet::from(["eur", "usd"]));
    assert!(data.settled.iter().any(|s| s.consumed > 0));
    // Settled just after a midnight, reserved just before it.
    assert!(
        data.settled
            .iter()
            .any(|s| s.at % DAY < 1_000 && s.at < today)
    );
    assert!(
        data.calls
            .iter()
            .any(|c| c.outcome == UsageOutcome::Refused)
    );
    assert!(data.calls.iter().any(|c| c.at == today - 30 * DAY));
    assert!(data.calls.iter().any(|c| c.at % DAY == DAY - 1));
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(dir.path(), db.url());
    let api = Api::new(&proxy);

    // Midnight to midnight; midnight to a minute before midnight; edges
    // between midnights; one day; everything.
    for (since, until) in [
        (today - 30 * DAY, today - 3 * DAY),
        (today - 20 * DAY, today - DAY - 60_000),
        (today - 40 * DAY + 6 * HOUR, today - 10 * DAY + 18 * HOUR),
        (today - 5 * DAY, today - 4 * DAY),
        (today - 5 * DAY + 1, today - 4 * DAY + 1),
        (today - 7 * DAY + 1, today - 6 * DAY - 1),
        (today - 50 * DAY, now + 1),
    ] {
        check_range(&api, &data, since, until).await;
    }

    // The default range: the last 30 days up to now.
    let body = api.get("/usage?group=day").await;
    let until = chrono::DateTime::parse_from_rfc3339(body["until"].as_str().expect("until"))
        .expect("until")
        .timestamp_millis();
    let since = chrono::DateTime::parse_from_rfc3339(body["since"].as_str().expect("since"))
        .expect("since")
        .timestamp_millis();
    assert_eq!(until - since, 30 * DAY);
    assert!(until >= now);
    assert_eq!(body["data"], expected_usage(&data, since, until, "day"));

    check_dashboard(&api, &data, now).await;
}

async fn bad_requests_are_refused(db: TestDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(dir.path(), db.url());
    let api = Api::new(&proxy);
    for path in [
        "/revenue?group=week",
        "/usage?group=plan",
        "/top-customers?by=name",
        "/top-customers?limit=0",
        "/top-customers?limit=101",
        "/top-customers?limit=ten",
        "/usage?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        "/usage?since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        "/refusals?since=2025-01-01T00:00:00Z&until=2026-02-05T00:00:01Z",
        "/active-customers?since=yesterday",
        "/dashboard?since=2026-01-01T00:00:00Z",
        "/refusals?colour=red",
    ] {
        let (status, body) = api.send(path, Some(TOKEN)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: {body}"
        );
    }
    // 400 days exactly is accepted.
    let (status, body) = api
        .send(
            "/refusals?since=2025-01-01T00:00:00Z&until=2026-02-05T00:00:00Z",
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["calls"], 0);
    assert_eq!(body["data"], json!([]));
    for path in [
        "/revenue",
        "/usage",
        "/top-customers",
        "/active-customers",
        "/refusals",
        "/dashboard",
    ] {
        let (status, body) = api.send(path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
        let (status, _) = api.send(path, Some("adm_wrong")).await;
        assert_eq!(status, 401, "{path}");
        let (status, body) = api.send(path, Some(TOKEN)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body["data"].is_array(), "{path}: {body}");
    }
}

// ---------------------------------------------------------------------------
// The roll-ups against the raw rows.

/// A row read with plain sqlx: its text columns, then its integer ones.
type RawRow = (Vec<Option<String>>, Vec<i64>);

macro_rules! read_rows {
    ($conn:ty, $url:expr, $sql:expr, $texts:expr) => {{
        let mut conn = <$conn>::connect($url).await.expect("connect for rows");
        let rows = sqlx::query(AssertSqlSafe($sql.to_owned()))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", $sql));
        let out: Vec<RawRow> = rows
            .iter()
            .map(|row| {
                let texts = (0..$texts)
                    .map(|n| row.try_get::<Option<String>, _>(n).expect("text"))
                    .collect();
                let ints = ($texts..row.len())
                    .map(|n| row.try_get::<i64, _>(n).expect("integer"))
                    .collect();
                (texts, ints)
            })
            .collect();
        conn.close().await.ok();
        out
    }};
}

/// The rows of `sql`: the first `texts` columns as nullable text, the rest
/// as 64-bit integers.
async fn raw_rows(db: &TestDb, sql: &str, texts: usize) -> Vec<RawRow> {
    match db.kind() {
        Kind::Sqlite => read_rows!(sqlx::SqliteConnection, db.url(), sql, texts),
        Kind::Postgres => read_rows!(sqlx::PgConnection, db.url(), sql, texts),
        Kind::MySql => read_rows!(sqlx::MySqlConnection, db.url(), sql, texts),
    }
}

/// A charge entry as stored.
struct RawCharge {
    customer: String,
    plan: Option<String>,
    tool: Option<String>,
    unit: String,
    amount: i64,
    at: i64,
}

/// A usage record's outcome as stored.
struct RawCall {
    customer: Option<String>,
    tool: Option<String>,
    outcome: String,
    reason: Option<String>,
    at: i64,
}

async fn raw_charges(db: &TestDb) -> Vec<RawCharge> {
    raw_rows(
        db,
        "SELECT customer_id, plan_id, tool, unit, amount, created_at FROM ledger_entries \
         WHERE kind = 'charge'",
        4,
    )
    .await
    .into_iter()
    .map(|(t, i)| RawCharge {
        customer: t[0].clone().expect("customer"),
        plan: t[1].clone(),
        tool: t[2].clone(),
        unit: t[3].clone().expect("unit"),
        amount: i[0],
        at: i[1],
    })
    .collect()
}

async fn raw_calls(db: &TestDb) -> Vec<RawCall> {
    raw_rows(
        db,
        "SELECT customer_id, tool, outcome, reason, started_at FROM usage_records",
        4,
    )
    .await
    .into_iter()
    .map(|(t, i)| RawCall {
        customer: t[0].clone(),
        tool: t[1].clone(),
        outcome: t[2].clone().expect("outcome"),
        reason: t[3].clone(),
        at: i[0],
    })
    .collect()
}

/// A roll-up table: its key columns, then its sums.
type Rollup = BTreeMap<Vec<String>, Vec<i64>>;

async fn rollup(db: &TestDb, sql: &str) -> Rollup {
    raw_rows(db, sql, 5)
        .await
        .into_iter()
        .map(|(key, sums)| {
            let key = key
                .into_iter()
                .map(|k| k.expect("roll-up keys are never NULL"))
                .collect();
            (key, sums)
        })
        .collect()
}

async fn charges_daily(db: &TestDb) -> Rollup {
    rollup(
        db,
        "SELECT day, customer_id, plan_id, tool, unit, amount, entries FROM charges_daily",
    )
    .await
}

async fn outcomes_daily(db: &TestDb) -> Rollup {
    rollup(
        db,
        "SELECT day, customer_id, tool, outcome, reason, calls FROM outcomes_daily",
    )
    .await
}

/// `charges_daily` as a grouping of the raw charges would have it (days
/// by chrono, not by the store's code).
fn charges_grouped(charges: &[RawCharge]) -> Rollup {
    let mut groups = Rollup::new();
    for c in charges {
        let key = vec![
            day_of(c.at),
            c.customer.clone(),
            c.plan.clone().unwrap_or_default(),
            c.tool.clone().unwrap_or_default(),
            c.unit.clone(),
        ];
        let sums = groups.entry(key).or_insert_with(|| vec![0, 0]);
        sums[0] += c.amount;
        sums[1] += 1;
    }
    groups
}

/// `outcomes_daily` as a grouping of the raw records would have it.
fn outcomes_grouped(calls: &[RawCall]) -> Rollup {
    let mut groups = Rollup::new();
    for c in calls {
        let key = vec![
            day_of(c.at),
            c.customer.clone().unwrap_or_default(),
            c.tool.clone().unwrap_or_default(),
            c.outcome.clone(),
            c.reason.clone().unwrap_or_default(),
        ];
        *groups
            .entry(key)
            .or_insert_with(|| vec![0])
            .first_mut()
            .expect("calls") += 1;
    }
    groups
}

fn raw_group_amounts(charges: &[RawCharge], span: Span, group: LedgerGroup) -> Vec<GroupAmount> {
    let mut sums: BTreeMap<(Option<String>, String), (i64, i64)> = BTreeMap::new();
    for c in charges
        .iter()
        .filter(|c| in_range(c.at, span.since.0, span.until.0))
    {
        let key = match group {
            LedgerGroup::All => None,
            LedgerGroup::Day => Some(day_of(c.at)),
            LedgerGroup::Plan => c.plan.clone(),
            LedgerGroup::Tool => c.tool.clone(),
        };
        let sum = sums.entry((key, c.unit.clone())).or_default();
        sum.0 += c.amount;
        sum.1 += 1;
    }
    sums.into_iter()
        .map(|((group, unit), (amount, entries))| GroupAmount {
            group,
            unit,
            amount,
            entries,
        })
        .collect()
}

fn raw_top_spenders(charges: &[RawCharge], span: Span, limit: usize) -> Vec<CustomerSpend> {
    let mut per: BTreeMap<&str, BTreeMap<&str, (i64, i64)>> = BTreeMap::new();
    for c in charges
        .iter()
        .filter(|c| in_range(c.at, span.since.0, span.until.0))
    {
        let sum = per
            .entry(&c.unit)
            .or_default()
            .entry(&c.customer)
            .or_default();
        sum.0 += c.amount;
        sum.1 += 1;
    }
    let mut out = Vec::new();
    for (unit, customers) in per {
        let mut rows: Vec<_> = customers.into_iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
        for (customer, (amount, entries)) in rows.into_iter().take(limit) {
            out.push(CustomerSpend {
                customer_id: CustomerId::new(customer),
                unit: unit.to_owned(),
                amount,
                entries,
            });
        }
    }
    out
}

fn raw_outcomes(calls: &[RawCall], span: Span) -> Vec<OutcomeCount> {
    let mut per: BTreeMap<(String, Option<String>), i64> = BTreeMap::new();
    for c in calls
        .iter()
        .filter(|c| in_range(c.at, span.since.0, span.until.0))
    {
        *per.entry((c.outcome.clone(), c.reason.clone()))
            .or_default() += 1;
    }
    per.into_iter()
        .map(|((outcome, reason), calls)| OutcomeCount {
            outcome,
            reason,
            calls,
        })
        .collect()
}

/// Checks the store's roll-up answers over `span` against the raw rows.
async fn check_span(store: &Arc<dyn Store>, charges: &[RawCharge], calls: &[RawCall], span: Span) {
    for group in [
        LedgerGroup::All,
        LedgerGroup::Day,
        LedgerGroup::Plan,
        LedgerGroup::Tool,
    ] {
        assert_eq!(
            store.charges(span, group).await.expect("charges"),
            raw_group_amounts(charges, span, group),
            "charges by {group:?} over {span:?}"
        );
    }
    for limit in [1, 2, 100] {
        assert_eq!(
            store.top_spenders(span, limit).await.expect("top spenders"),
            raw_top_spenders(charges, span, limit as usize),
            "top {limit} spenders over {span:?}"
        );
    }
    assert_eq!(
        store.outcomes(span).await.expect("outcomes"),
        raw_outcomes(calls, span),
        "outcomes over {span:?}"
    );
}

fn span(since: i64, until: i64) -> Span {
    Span {
        since: UnixMillis(since),
        until: UnixMillis(until),
    }
}

async fn rollups_answer_like_the_raw_rows(db: TestDb) {
    let now = now_ms();
    let today = now - now.rem_euclid(DAY);
    generate(&db, today).await;
    let store = db.open().await;
    let charges = raw_charges(&db).await;
    let calls = raw_calls(&db).await;
    assert_eq!(charges.len(), 200);
    assert_eq!(calls.len(), 720);
    // What the writers put in the roll-ups is the grouping of the rows.
    assert_eq!(charges_daily(&db).await, charges_grouped(&charges));
    assert_eq!(outcomes_daily(&db).await, outcomes_grouped(&calls));

    let mut spans = vec![
        // Day-aligned.
        span(today - 30 * DAY, today - 3 * DAY),
        span(today - 5 * DAY, today - 4 * DAY),
        // Cut into days at both ends, by a millisecond and by hours.
        span(today - 30 * DAY - 1, today - 3 * DAY + 1),
        span(today - 30 * DAY + 1, today - 3 * DAY - 1),
        span(today - 40 * DAY + 6 * HOUR, today - 10 * DAY + 18 * HOUR),
        // Inside one day; across one midnight without a whole day.
        span(today - 7 * DAY + 1, today - 6 * DAY - 1),
        span(today - 7 * DAY + 2 * HOUR, today - 7 * DAY + 3 * HOUR),
        span(today - 7 * DAY - HOUR, today - 7 * DAY + HOUR),
        // A single millisecond on a midnight; everything.
        span(today - 9 * DAY, today - 9 * DAY + 1),
        span(today - 50 * DAY, now + 1),
    ];
    let mut rng = Lcg(11);
    for _ in 0..30 {
        let since = today - 48 * DAY + rng.next(48 * DAY as u64);
        spans.push(span(since, since + 1 + rng.next(12 * DAY as u64)));
    }
    for span in spans {
        check_span(&store, &charges, &calls, span).await;
    }
}

/// Instants whose UTC day is easy to get wrong: before 1970, on and
/// around midnights, a leap day, after 2100.
const ODD_TIMES: [i64; 8] = [
    -DAY - 1,
    -1,
    0,
    DAY - 1,
    951_782_400_000,
    951_868_799_999,
    4_107_542_399_999,
    4_107_542_400_000,
];

async fn the_migration_backfills_the_rollups(db: TestDb) {
    let store = db.open().await;
    let mut customers = Vec::new();
    for name in ["Ada", "Bob"] {
        let customer = store
            .create_customer(NewCustomer {
                name: name.into(),
                email: None,
                plan_id: None,
                external_subject: None,
                metadata: Default::default(),
            })
            .await
            .expect("customer");
        customers.push(customer.id);
    }
    let mut records = Vec::new();
    for (n, at) in ODD_TIMES.into_iter().enumerate() {
        for k in 0..3 {
            let customer = customers[(n + k) % 2].clone();
            let tool = [Some("echo"), None, Some("add")][k].map(str::to_owned);
            store
                .accrue(&Accrual {
                    customer_id: customer.clone(),
                    charge_key: ChargeKey::new(format!("odd{n}-{k}")),
                    call_id: CallId::new(format!("call_odd{n}-{k}")),
                    plan_id: ["payg", "pro"][k % 2].into(),
                    tool: tool.clone(),
                    currency: ["usd", "eur"][n % 2].into(),
                    counter: format!("calls{k}"),
                    period_start: UnixMillis(at - at.rem_euclid(DAY)),
                    schedule: PriceSchedule::Flat {
                        price: 1_000 * (n as i64 + 1),
                    },
                    quantity: 1,
                    at: UnixMillis(at + k as i64),
                })
                .await
                .expect("accrue");
            let (outcome, reason) = [
                (UsageOutcome::Ok, None),
                (UsageOutcome::Refused, Some("quota_exceeded")),
                (UsageOutcome::UpstreamError, Some("upstream exited")),
            ][k];
            records.push(UsageRecord {
                call_id: CallId::new(format!("call_odd{n}-{k}")),
                customer_id: (k != 1).then(|| customer.clone()),
                key_id: None,
                session_id: None,
                method: "tools/call".into(),
                tool,
                started_at: UnixMillis(at + k as i64),
                duration_us: 1,
                bytes_in: 1,
                bytes_out: 1,
                outcome,
                reason: reason.map(str::to_owned),
                units: 1,
            });
        }
    }
    store.record_usage(&records).await.expect("record usage");
    let charges = raw_charges(&db).await;
    let calls = raw_calls(&db).await;
    let written = (charges_daily(&db).await, outcomes_daily(&db).await);
    assert_eq!(written.0, charges_grouped(&charges));
    assert_eq!(written.1, outcomes_grouped(&calls));
    assert!(written.0.keys().any(|k| k[0] == "1969-12-31"));
    assert!(written.1.keys().any(|k| k[0] == "2100-03-01"));
    assert!(written.1.keys().any(|k| k[0] == "2000-02-29"));
    drop(store);

    // As a database of schema 6 with these rows: no roll-ups yet.
    for sql in [
        "DROP TABLE charges_daily",
        "DROP TABLE outcomes_daily",
        "DELETE FROM _sqlx_migrations WHERE version = 7",
    ] {
        db.execute(sql).await;
    }
    let store = db.open().await;
    let filled = (charges_daily(&db).await, outcomes_daily(&db).await);
    assert_eq!(filled.0, written.0, "charges_daily filled by the migration");
    assert_eq!(
        filled.1, written.1,
        "outcomes_daily filled by the migration"
    );
    for (since, until) in [
        (-2 * DAY, 2 * DAY),
        (-DAY - 1, DAY),
        (-1, 1),
        (951_782_400_000 - 1, 4_107_542_400_001),
        (951_782_400_001, 4_107_542_400_000),
    ] {
        check_span(&store, &charges, &calls, span(since, until)).await;
    }
}

async fn concurrent_writes_keep_the_rollups_exact(db: TestDb) {
    let store = db.open_wide().await;
    let mut customers = Vec::new();
    for name in ["Ada", "Bob"] {
        let customer = store
            .create_customer(NewCustomer {
                name: name.into(),
                email: None,
                plan_id: None,
                external_subject: None,
                metadata: Default::default(),
            })
            .await
            .expect("customer");
        customers.push(customer.id);
    }
    let t0 = 1_780_012_800_000 - 1_780_012_800_000 % DAY;
    // Many charges on few roll-up rows (same day, customer, plan, tool and
    // currency) under different counters, so they do not queue on one
    // counter row first; some across midnight.
    let tasks: Vec<_> = (0..160)
        .map(|n: i64| {
            let store = store.clone();
            let customer = customers[(n % 2) as usize].clone();
            tokio::spawn(async move {
                let at = t0 + DAY - 40 + n;
                store
                    .accrue(&Accrual {
                        customer_id: customer,
                        charge_key: ChargeKey::new(format!("hot{n}")),
                        call_id: CallId::new(format!("call_hot{n}")),
                        plan_id: "payg".into(),
                        tool: (n % 3 != 0).then(|| "echo".to_owned()),
                        currency: "usd".into(),
                        counter: format!("calls{}", n % 8),
                        period_start: UnixMillis(t0),
                        schedule: PriceSchedule::Flat { price: 10 + n },
                        quantity: 1,
                        at: UnixMillis(at),
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.expect("task").expect("accrue");
        assert!(
            matches!(outcome, AccrueOutcome::Charged { .. }),
            "{outcome:?}"
        );
    }
    // Usage batches at once, overlapping (a batch sent again).
    let batches: Vec<Vec<UsageRecord>> = (0..12)
        .map(|b: i64| {
            (0..40)
                .map(|i: i64| {
                    let n = (b % 6) * 40 + i;
                    UsageRecord {
                        call_id: CallId::new(format!("call_u{n}")),
                        customer_id: (n % 5 != 0).then(|| customers[(n % 2) as usize].clone()),
                        key_id: None,
                        session_id: None,
                        method: "tools/call".into(),
                        tool: Some(["echo", "add"][(n % 2) as usize].into()),
                        started_at: UnixMillis(t0 + DAY - 100 + n),
                        duration_us: 1,
                        bytes_in: 1,
                        bytes_out: 1,
                        outcome: [UsageOutcome::Ok, UsageOutcome::Refused][(n % 3 == 0) as usize],
                        reason: (n % 3 == 0).then(|| "insufficient_credits".to_owned()),
                        units: 1,
                    }
                })
                .collect()
        })
        .collect();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            let store = store.clone();
            tokio::spawn(async move { store.record_usage(&batch).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("record usage");
    }
    let charges = raw_charges(&db).await;
    let calls = raw_calls(&db).await;
    assert_eq!(charges.len(), 160);
    assert_eq!(calls.len(), 240);
    let daily = charges_daily(&db).await;
    assert_eq!(daily, charges_grouped(&charges));
    assert_eq!(daily.values().map(|s| s[1]).sum::<i64>(), 160);
    assert_eq!(
        daily.values().map(|s| s[0]).sum::<i64>(),
        (10..170).sum::<i64>()
    );
    assert_eq!(outcomes_daily(&db).await, outcomes_grouped(&calls));
    check_span(&store, &charges, &calls, span(t0, t0 + 2 * DAY)).await;
    check_span(&store, &charges, &calls, span(t0 + DAY - 30, t0 + DAY + 30)).await;
}

each_backend!(
    analytics_match_the_generated_rows,
    bad_requests_are_refused,
    rollups_answer_like_the_raw_rows,
    the_migration_backfills_the_rollups,
    concurrent_writes_keep_the_rollups_exact,
);
