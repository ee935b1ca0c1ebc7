//! How long the analytics queries and a CSV export take over a large
//! generated store (`cargo bench --bench analytics`).
//!
//! With no argument it generates into a fresh SQLite file in a temporary
//! directory; pass database URLs to measure those instead (each must be an
//! empty, disposable database). `ANALYTICS_BENCH_ROWS` sets the usage
//! records (default 10,000,000, over 90 days, 1,000 customers, 20 tools),
//! `ANALYTICS_BENCH_CHARGES` the per-call charges in the ledger (default
//! 1,000,000; inserted with plain SQL, their `charges_daily` roll-up
//! alongside, as the store's ledger writes would keep it). Each query runs
//! three times over the whole range (day-aligned), and the queries that
//! count exact instants also over 30 days cut into days at both ends (the
//! partial days read from the raw rows); the table shows the median. A
//! plain binary: it prints its own table.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mcp_meter::export::{Export, Format, Table};
use mcp_meter::store::{self, LedgerGroup, Span, Store, StoreOptions};
use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ports::{NewCustomer, UsageOutcome, UsageRecord};

const DAY: i64 = 86_400_000;
const DAYS: i64 = 90;
const START: i64 = 1_780_000_000_000 - 1_780_000_000_000 % DAY;
const CUSTOMERS: usize = 1_000;
const BATCH: usize = 10_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn record(n: usize, total: usize, customers: &[CustomerId]) -> UsageRecord {
    let at = START + (n as i64) * (DAYS * DAY / total as i64);
    let (outcome, reason) = match n % 50 {
        0 => (
            UsageOutcome::Refused,
            Some("insufficient_credits".to_owned()),
        ),
        1 | 2 => (UsageOutcome::ToolError, None),
        _ => (UsageOutcome::Ok, None),
    };
    UsageRecord {
        call_id: CallId::new(format!("call_b{n:010}")),
        customer_id: Some(customers[n % customers.len()].clone()),
        key_id: None,
        session_id: None,
        method: "tools/call".into(),
        tool: Some(format!("tool_{:02}", n % 20)),
        started_at: UnixMillis(at),
        duration_us: 1_000 + (n % 900) as i64,
        bytes_in: 200,
        bytes_out: 1_800,
        outcome,
        reason,
        units: 1,
    }
}

macro_rules! insert_charges {
    ($db:ty, $url:expr, $total:expr, $customers:expr) => {{
        use sqlx::Connection as _;
        let mut conn = <<$db as sqlx::Database>::Connection>::connect($url)
            .await
            .expect("connect for the charges");
        // (day, customer, plan, tool, currency) -> (amount, entries)
        let mut daily: BTreeMap<(String, String, &str, String, &str), (i64, i64)> = BTreeMap::new();
        let mut n = 0usize;
        while n < $total {
            let end = ($total).min(n + 1_000);
            let mut insert = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO ledger_entries (customer_id, kind, amount, unit, plan_id, tool, \
                 idempotency_key, created_at) ",
            );
            insert.push_values(n..end, |mut row, i| {
                let at = START + (i as i64) * (DAYS * DAY / $total as i64);
                let customer = $customers[i % $customers.len()].to_string();
                let amount = 1_000_i64 + (i % 7) as i64 * 250;
                let unit = if i % 10 == 0 { "eur" } else { "usd" };
                let plan = if i % 3 == 0 { "team" } else { "payg" };
                let tool = format!("tool_{:02}", i % 20);
                let sum = daily
                    .entry((day_of(at), customer.clone(), plan, tool.clone(), unit))
                    .or_default();
                sum.0 += amount;
                sum.1 += 1;
                row.push_bind(customer)
                    .push_bind("charge")
                    .push_bind(amount)
                    .push_bind(unit)
                    .push_bind(plan)
                    .push_bind(tool)
                    .push_bind(format!("charge:bench{i}"))
                    .push_bind(at);
            });
            insert
                .build()
                .execute(&mut conn)
                .await
                .expect("insert charges");
            n = end;
        }
        let daily: Vec<_> = daily.into_iter().collect();
        for chunk in daily.chunks(1_000) {
            let mut insert = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO charges_daily (day, customer_id, plan_id, tool, unit, amount, \
                 entries) ",
            );
            insert.push_values(
                chunk,
                |mut row, ((day, customer, plan, tool, unit), sum)| {
                    row.push_bind(day.clone())
                        .push_bind(customer.clone())
                        .push_bind(*plan)
                        .push_bind(tool.clone())
                        .push_bind(*unit)
                        .push_bind(sum.0)
                        .push_bind(sum.1);
                },
            );
            insert
                .build()
                .execute(&mut conn)
                .await
                .expect("insert the charges' roll-up");
        }
    }};
}

/// The UTC day of an instant, `YYYY-MM-DD`.
fn day_of(at: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .expect("a time")
        .format("%Y-%m-%d")
        .to_string()
}

/// The median of three runs of `query`.
async fn median<F, Fut, T>(mut query: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        std::hint::black_box(query().await);
        times.push(started.elapsed());
    }
    times.sort();
    times[1]
}

async fn bench(url: &str, rows: usize, charges: usize) {
    let store = store::open(&StoreOptions::new(url)).await.expect("open");
    let mut customers = Vec::with_capacity(CUSTOMERS);
    for c in 0..CUSTOMERS {
        let created = store
            .create_customer(NewCustomer {
                name: format!("bench {c}"),
                email: None,
                plan_id: None,
                external_subject: None,
                metadata: Default::default(),
            })
            .await
            .expect("customer");
        customers.push(created.id);
    }
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        let end = rows.min(n + BATCH);
        let batch: Vec<UsageRecord> = (n..end).map(|i| record(i, rows, &customers)).collect();
        store.record_usage(&batch).await.expect("record_usage");
        n = end;
    }
    let generated = started.elapsed();
    if url.starts_with("postgres") {
        insert_charges!(sqlx::Postgres, url, charges, customers);
    } else if url.starts_with("mysql") {
        insert_charges!(sqlx::MySql, url, charges, customers);
    } else {
        insert_charges!(sqlx::Sqlite, url, charges, customers);
    }
    let backend = store.backend().as_str();
    println!(
        "{backend}: {rows} usage records generated in {:.1} s ({:.0}/s), {charges} charges",
        generated.as_secs_f64(),
        rows as f64 / generated.as_secs_f64()
    );
    let span = Span {
        since: UnixMillis(START),
        until: UnixMillis(START + DAYS * DAY),
    };
    let (first, last) = span.days();
    let (first, last) = (first.as_str(), last.as_str());
    println!("{:<32} {:>10}", "query (whole 90 days)", "median ms");
    let row = |name: &str, took: Duration| {
        println!("{name:<32} {:>10.1}", took.as_secs_f64() * 1e3);
    };
    row(
        "revenue by day",
        median(|| store.charges(span, LedgerGroup::Day)).await,
    );
    row(
        "revenue by plan",
        median(|| store.charges(span, LedgerGroup::Plan)).await,
    );
    row(
        "revenue by tool",
        median(|| store.charges(span, LedgerGroup::Tool)).await,
    );
    row(
        "credits consumed by day",
        median(|| store.credits_consumed(span, LedgerGroup::Day)).await,
    );
    row(
        "usage by day",
        median(|| store.usage_totals(first, last, true, false)).await,
    );
    row(
        "usage by tool",
        median(|| store.usage_totals(first, last, false, true)).await,
    );
    row(
        "usage by day and tool",
        median(|| store.usage_totals(first, last, true, true)).await,
    );
    row(
        "top customers by calls",
        median(|| store.top_callers(first, last, 10)).await,
    );
    row(
        "top customers by spend",
        median(|| store.top_spenders(span, 10)).await,
    );
    row(
        "active customers",
        median(|| store.active_customers(first, last)).await,
    );
    row("refusals", median(|| store.outcomes(span)).await);
    // The last 30 days up to 12:34:56.789 (the API's default range is the
    // last 30 days up to now): two partial days from the raw rows.
    let until = START + (DAYS - 1) * DAY + 45_296_789;
    let cut = Span {
        since: UnixMillis(until - 30 * DAY),
        until: UnixMillis(until),
    };
    println!("{:<32} {:>10}", "query (30 days, edges cut)", "median ms");
    row(
        "revenue by day",
        median(|| store.charges(cut, LedgerGroup::Day)).await,
    );
    row(
        "top customers by spend",
        median(|| store.top_spenders(cut, 10)).await,
    );
    row("refusals", median(|| store.outcomes(cut)).await);
    let store: Arc<dyn Store> = store;
    let export = Export {
        table: Table::Usage,
        format: Format::Csv,
        customer: None,
        tool: None,
        outcome: None,
        since: None,
        until: None,
    };
    let started = Instant::now();
    let mut bytes = 0usize;
    let mut stream = Box::pin(export.stream(store.clone()));
    while let Some(chunk) = stream.next().await {
        bytes += chunk.expect("export chunk").len();
    }
    let took = started.elapsed();
    println!(
        "export usage CSV: {rows} rows, {:.0} MB in {:.1} s: {:.0} rows/s",
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let rows = env("ANALYTICS_BENCH_ROWS", 10_000_000);
    let charges = env("ANALYTICS_BENCH_CHARGES", 1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut urls: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.contains(':') && !a.starts_with("--"))
        .collect();
    if urls.is_empty() {
        urls.push(format!(
            "sqlite://{}",
            dir.path().join("analytics.db").display()
        ));
    }
    for url in urls {
        bench(&url, rows, charges).await;
    }
}
