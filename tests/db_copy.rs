//! `mcp-meter db copy` against real databases, through the real binary: a
//! store with every table filled through the store's own API (NULLs,
//! non-ASCII text, the extreme integers the API lets through) goes SQLite
//! → PostgreSQL → MariaDB → SQLite, and every row of every table of each
//! copy is compared with the original, read with plain sqlx in key order;
//! the ledger checksums printed by each run agree; each copy then takes
//! new writes without id collisions. Also: an unrelated non-empty target is
//! refused and left as it was; an interrupted copy resumes and ends
//! identical, and a target that differs from the source is refused; a
//! source of another schema version and bad URLs give clear errors.

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::time::Instant;

use common::db::{Kind, TestDb};
use mcp_meter::store::{NewApiKey, NewInvoiceItem, NewWebhookEvent, Store};
use mcp_meter_plugin::identity::{CallId, CustomerId, CustomerStatus, KeyId, KeyScope, UnixMillis};
use mcp_meter_plugin::ledger::{
    Accrual, BalanceChange, ChargeKey, EntryKind, GrantMode, LedgerFilter, MeteredUsage,
    PeriodicGrant, PriceSchedule, QuotaRelease, QuotaTake, Reservation, ReserveOutcome, Settlement,
    Tier,
};
use mcp_meter_plugin::outbox::OutboxFilter;
use mcp_meter_plugin::ports::{NewCustomer, UsageOutcome, UsageRecord};
use mcp_meter_plugin::subscription::{SubscriptionChange, SubscriptionStatus};
use sqlx::{AssertSqlSafe, Connection, Row};

/// 2026-03-14T00:00:00Z.
const T0: i64 = 1_773_446_400_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// Text that is not ASCII, with quotes, a backslash and a newline.
const ODD: &str = "Zoë «Ωmega» 日本語 🚀 \"q\" \\ ü\nß";

// ---------------------------------------------------------------------------
// Filling a store through its API.

async fn customer(store: &Arc<dyn Store>, n: usize, plan: Option<&str>) -> CustomerId {
    let mut metadata = serde_json::Map::new();
    if n.is_multiple_of(2) {
        metadata.insert(
            "note".into(),
            serde_json::Value::String(format!("{ODD} {n}")),
        );
        metadata.insert("n".into(), serde_json::json!(n));
    }
    store
        .create_customer(NewCustomer {
            name: format!("Client {n} — {ODD}"),
            email: (!n.is_multiple_of(3)).then(|| format!("client{n}@exämple.test")),
            plan_id: plan.map(str::to_owned),
            external_subject: n.is_multiple_of(4).then(|| format!("auth0|sübject-{n}")),
            metadata,
        })
        .await
        .expect("create customer")
        .id
}

async fn keys(store: &Arc<dyn Store>, customers: &[CustomerId]) {
    let mut used = Vec::new();
    for (n, customer) in customers.iter().enumerate() {
        for k in 0..2u8 {
            let mut hash = [0u8; 32];
            hash[0] = n as u8;
            hash[1] = k;
            hash[2] = 0xff;
            hash[31] = 0x00;
            hash[17] = 0x80;
            let key = store
                .create_api_key(NewApiKey {
                    customer_id: customer.clone(),
                    key_hash: hash,
                    prefix: format!("mk_{n}_{k}"),
                    name: (k == 0).then(|| format!("clé {ODD}")),
                    scope: if n % 2 == 0 {
                        KeyScope::default()
                    } else {
                        KeyScope {
                            tools: vec!["search*".into(), "überprüfen".into()],
                            methods: vec!["tools/*".into()],
                        }
                    },
                    expires_at: match (n + k as usize) % 3 {
                        0 => None,
                        1 => Some(UnixMillis(i64::MAX)),
                        _ => Some(UnixMillis(T0 + DAY)),
                    },
                })
                .await
                .expect("create key");
            if n % 5 == 1 && k == 1 {
                store
                    .revoke_api_key(&key.id, UnixMillis(T0 + 5))
                    .await
                    .expect("revoke");
            }
            if n % 3 == 0 {
                used.push((KeyId::new(key.id.as_str()), UnixMillis(T0 + n as i64)));
            }
        }
    }
    store.touch_keys(&used).await.expect("touch keys");
}

async fn credits(store: &Arc<dyn Store>, customers: &[CustomerId]) {
    for (n, customer) in customers.iter().enumerate() {
        change(
            store,
            customer,
            EntryKind::Grant,
            1_000 + n as i64,
            &format!("grant-{n}-ü"),
        )
        .await;
        change(
            store,
            customer,
            EntryKind::Adjustment,
            -7,
            &format!("adjust-{n}"),
        )
        .await;
        for call in 0..25 {
            reserve_and_settle(store, customer, n, call).await;
        }
    }
}

async fn change(
    store: &Arc<dyn Store>,
    customer: &CustomerId,
    kind: EntryKind,
    amount: i64,
    key: &str,
) {
    store
        .change_balance(&BalanceChange {
            customer_id: customer.clone(),
            kind,
            amount,
            idempotency_key: key.into(),
            reason: (amount % 2 == 0).then(|| format!("why: {ODD}")),
            at: UnixMillis(T0 + amount.rem_euclid(1_000)),
        })
        .await
        .expect("change balance");
}

/// A reserved call: settled below the amount, refunded, or left held.
async fn reserve_and_settle(store: &Arc<dyn Store>, customer: &CustomerId, n: usize, call: usize) {
    let key = format!("{customer}:call-{call}:ключ");
    let at = T0 + (call as i64) * MINUTE;
    let outcome = store
        .reserve(&Reservation {
            customer_id: customer.clone(),
            charge_key: ChargeKey::new(key.as_str()),
            call_id: CallId::new(format!("call-{n}-{call}")),
            amount: 3,
            plan_id: "credits".into(),
            tool: (!call.is_multiple_of(3)).then(|| "überprüfen".to_owned()),
            at: UnixMillis(at),
        })
        .await
        .expect("reserve");
    let ReserveOutcome::Reserved { attempt, .. } = outcome else {
        panic!("not reserved: {outcome:?}");
    };
    if call % 7 == 6 {
        return;
    }
    store
        .settle(&Settlement {
            customer_id: customer.clone(),
            charge_key: ChargeKey::new(key.as_str()),
            attempt,
            actual: 2,
            refund_reason: (call % 5 == 4).then(|| "upstream_error".to_owned()),
            at: UnixMillis(at + 1_500),
        })
        .await
        .expect("settle");
}

async fn per_call_charges(store: &Arc<dyn Store>, customers: &[CustomerId]) {
    let schedule = PriceSchedule::Volume {
        tiers: vec![
            Tier {
                up_to: Some(5),
                price: 1_000_000,
            },
            Tier {
                up_to: None,
                price: 400_000,
            },
        ],
    };
    for (n, customer) in customers.iter().enumerate() {
        for call in 0..30 {
            store
                .accrue(&Accrual {
                    customer_id: customer.clone(),
                    charge_key: ChargeKey::new(format!("accrue-{n}-{call}")),
                    call_id: CallId::new(format!("acall-{n}-{call}")),
                    plan_id: "per-call".into(),
                    tool: (call % 2 == 0).then(|| "search".to_owned()),
                    currency: "eur".into(),
                    counter: "calls".into(),
                    period_start: UnixMillis(T0 + (call as i64 / 10) * DAY),
                    schedule: schedule.clone(),
                    quantity: 1,
                    at: UnixMillis(T0 + call as i64 * MINUTE),
                })
                .await
                .expect("accrue");
        }
    }
}

async fn quotas(store: &Arc<dyn Store>, customers: &[CustomerId]) {
    for (n, customer) in customers.iter().enumerate() {
        for call in 0..12 {
            let key = format!("quota-{n}-{call}");
            store
                .take_quota(&QuotaTake {
                    customer_id: customer.clone(),
                    charge_key: ChargeKey::new(key.as_str()),
                    call_id: CallId::new(format!("qcall-{n}-{call}")),
                    plan_id: "free".into(),
                    tool: (call % 2 == 1).then(|| format!("tool {ODD}")),
                    counter: if call % 3 == 0 {
                        "free:search".into()
                    } else {
                        "free".into()
                    },
                    period_start: UnixMillis(T0),
                    units: 1 + call as i64 % 3,
                    cap: Some(1_000),
                    at: UnixMillis(T0 + call as i64),
                })
                .await
                .expect("take quota");
            if call % 4 == 3 {
                store
                    .release_quota(&QuotaRelease {
                        customer_id: customer.clone(),
                        charge_key: ChargeKey::new(key.as_str()),
                        reason: "timeout".into(),
                        at: UnixMillis(T0 + call as i64 + 10),
                    })
                    .await
                    .expect("release quota");
            }
        }
    }
}

async fn metered(store: &Arc<dyn Store>, customers: &[CustomerId]) {
    for (n, customer) in customers.iter().enumerate() {
        for call in 0..20 {
            store
                .meter_usage(&MeteredUsage {
                    customer_id: customer.clone(),
                    charge_key: ChargeKey::new(format!("meter-{n}-{call}")),
                    call_id: CallId::new(format!("mcall-{n}-{call}")),
                    plan_id: "usage".into(),
                    tool: (call % 2 == 0).then(|| "search".to_owned()),
                    event_name: "api_calls".into(),
                    unit: "calls".into(),
                    units: if call == 0 { 0 } else { call as i64 },
                    at: UnixMillis(T0 + call as i64 * MINUTE),
                })
                .await
                .expect("meter usage");
        }
    }
    let events = store
        .meter_events(&OutboxFilter {
            limit: 10_000,
            ..OutboxFilter::default()
        })
        .await
        .expect("meter events");
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    store
        .mark_meter_events_sent(&ids[..20], UnixMillis(T0 + DAY))
        .await
        .expect("sent");
    store
        .claim_meter_batch(&ids[20..25], "mb_batch_1")
        .await
        .expect("claim");
    for (n, id) in ids[30..40].iter().enumerate() {
        let retry = (n % 2 == 0).then_some(UnixMillis(T0 + 2 * DAY));
        store
            .mark_meter_event_failed(*id, &format!("ошибка 💥 {n}"), retry)
            .await
            .expect("failed");
    }
}

async fn grants(store: &Arc<dyn Store>, customers: &[CustomerId]) {
    for (n, customer) in customers.iter().enumerate() {
        for period in 0..3 {
            store
                .periodic_grant(&PeriodicGrant {
                    customer_id: customer.clone(),
                    plan_id: "monthly".into(),
                    period_start: UnixMillis(T0 + period * 30 * DAY),
                    amount: 100,
                    mode: if n % 2 == 0 {
                        GrantMode::Reset
                    } else {
                        GrantMode::Rollover { cap: Some(50) }
                    },
                    at: UnixMillis(T0 + period * 30 * DAY + 1),
                })
                .await
                .expect("periodic grant");
        }
    }
}

async fn subscriptions(store: &Arc<dyn Store>, customers: &[CustomerId]) {
    use SubscriptionStatus::*;
    let statuses = [
        Active, Trialing, PastDue, Unpaid, Canceled, Incomplete, Paused,
    ];
    for (n, customer) in customers.iter().enumerate() {
        store
            .set_subscription(&SubscriptionChange {
                customer_id: customer.clone(),
                plan_id: format!("pro-{}", n % 3),
                status: statuses[n % statuses.len()],
                started_at: (n % 2 == 0).then_some(UnixMillis(T0 - DAY)),
                current_period: (n % 3 != 0).then_some((UnixMillis(T0), UnixMillis(T0 + 30 * DAY))),
                external_id: (n % 4 != 3).then(|| format!("sub_{n}")),
                at: UnixMillis(T0 + n as i64),
                provider_event_at: (n % 2 == 1).then_some(UnixMillis(T0 + 100)),
            })
            .await
            .expect("subscription");
    }
}

async fn usage(store: &Arc<dyn Store>, customers: &[CustomerId]) {
    let outcomes = [
        UsageOutcome::Ok,
        UsageOutcome::ToolError,
        UsageOutcome::UpstreamError,
        UsageOutcome::Refused,
        UsageOutcome::Timeout,
        UsageOutcome::Cancelled,
        UsageOutcome::Recovered,
    ];
    let methods = ["tools/call", "tools/list", "initialize"];
    let mut records: Vec<UsageRecord> = (0..2_000)
        .map(|i: usize| UsageRecord {
            call_id: CallId::new(format!("call-{i:05}")),
            customer_id: (!i.is_multiple_of(10)).then(|| customers[i % customers.len()].clone()),
            key_id: i.is_multiple_of(4).then(|| KeyId::new(format!("key_{i}"))),
            session_id: i.is_multiple_of(3).then(|| format!("session-{}", i / 50)),
            method: methods[i % 3].into(),
            tool: match i % 4 {
                0 => None,
                1 => Some("search".into()),
                _ => Some("überprüfen ✓".into()),
            },
            started_at: UnixMillis(T0 + i as i64 * MINUTE),
            duration_us: i as i64 * 37,
            bytes_in: 100 + i as i64,
            bytes_out: i as i64 * 3,
            outcome: outcomes[i % outcomes.len()],
            reason: (i % 7 == 3).then(|| "rate_limited".to_owned()),
            units: 1,
        })
        .collect();
    // The largest integers the roll-up can hold, alone in their day group.
    records.push(UsageRecord {
        call_id: CallId::new("call-edge-max"),
        customer_id: None,
        key_id: None,
        session_id: None,
        method: "edge/max".into(),
        tool: Some("edge-max".into()),
        started_at: UnixMillis(T0),
        duration_us: i64::MAX,
        bytes_in: i64::MAX,
        bytes_out: 0,
        outcome: UsageOutcome::Ok,
        reason: None,
        units: i64::MAX,
    });
    for batch in records.chunks(500) {
        store.record_usage(batch).await.expect("record usage");
    }
}

async fn invoices(store: &Arc<dyn Store>, customers: &[CustomerId]) {
    for (n, customer) in customers.iter().enumerate() {
        for period in 0..4i64 {
            store
                .queue_invoice_item(&NewInvoiceItem {
                    customer_id: customer.clone(),
                    plan_id: "per-call".into(),
                    period_start: UnixMillis(T0 + period * 30 * DAY),
                    period_end: UnixMillis(T0 + (period + 1) * 30 * DAY),
                    currency: "eur".into(),
                    charged: if period == 0 { 0 } else { 12_345_678 * period },
                    amount: if period == 0 { 500 } else { 1_235 * period },
                    minimum_applied: period == 0,
                    at: UnixMillis(T0 + (period + 1) * 30 * DAY),
                })
                .await
                .expect("queue invoice item");
        }
        let items = store
            .invoice_items(&OutboxFilter {
                customer: Some(customer.clone()),
                limit: 100,
                ..OutboxFilter::default()
            })
            .await
            .expect("invoice items");
        let external = (n % 2 == 0).then(|| format!("ii_{n}"));
        store
            .mark_invoice_item_sent(items[0].id, external.as_deref(), UnixMillis(T0 + DAY))
            .await
            .expect("sent");
        store
            .mark_invoice_item_failed(items[1].id, &format!("déclin 💳 {n}"), None)
            .await
            .expect("parked");
        store
            .mark_invoice_item_failed(items[2].id, "later", Some(UnixMillis(T0 + 3 * DAY)))
            .await
            .expect("failed");
    }
}

async fn webhooks(store: &Arc<dyn Store>) {
    for i in 0..60i64 {
        let id = format!("evt_{i:03}");
        let created = match i {
            0 => i64::MIN,
            1 => i64::MAX,
            _ => 1_773_446_400 + i,
        };
        store
            .insert_webhook_event(&NewWebhookEvent {
                id: id.clone(),
                event_type: "checkout.session.completed".into(),
                created,
                payload: format!("{{\"id\":\"{id}\",\"note\":{}}}", serde_json::json!(ODD)),
                received_at: UnixMillis(T0 + i),
            })
            .await
            .expect("webhook event");
        match i % 3 {
            0 => store
                .mark_webhook_event_processed(&id, UnixMillis(T0 + i + 5))
                .await
                .expect("processed"),
            1 => store
                .mark_webhook_event_failed(&id, &format!("échec {ODD}"), None)
                .await
                .expect("failed"),
            _ => {}
        }
    }
}

/// Fills every table of the store.
async fn populate(store: &Arc<dyn Store>) {
    let mut customers = Vec::new();
    for n in 0..30 {
        let plan = ["credits", "per-call", "usage"].get(n % 4).copied();
        customers.push(customer(store, n, plan).await);
    }
    store
        .set_customer_status(&customers[3], CustomerStatus::Suspended)
        .await
        .expect("suspend");
    for (n, c) in customers.iter().enumerate().filter(|(n, _)| n % 3 == 1) {
        store
            .attach_stripe_customer(c, &format!("cus_S{n}"), UnixMillis(T0))
            .await
            .expect("attach");
    }
    keys(store, &customers).await;
    credits(store, &customers[..20]).await;
    // The largest balance there can be.
    change(
        store,
        &customers[29],
        EntryKind::Purchase,
        i64::MAX,
        "max-purchase",
    )
    .await;
    per_call_charges(store, &customers[20..25]).await;
    quotas(store, &customers[..10]).await;
    store
        .step_counter(&mcp_meter_plugin::ledger::CounterStep {
            customer_id: customers[28].clone(),
            counter: "edge:max".into(),
            period_start: UnixMillis(i64::MIN),
            delta: i64::MAX,
            cap: None,
        })
        .await
        .expect("step counter");
    metered(store, &customers[25..29]).await;
    grants(store, &customers[10..16]).await;
    subscriptions(store, &customers[..14]).await;
    usage(store, &customers).await;
    invoices(store, &customers[20..25]).await;
    webhooks(store).await;
}

/// A small store: two customers, a few ledger entries.
async fn populate_small(store: &Arc<dyn Store>) -> CustomerId {
    let first = customer(store, 1, Some("credits")).await;
    let second = customer(store, 2, None).await;
    change(store, &first, EntryKind::Grant, 10, "g1").await;
    change(store, &second, EntryKind::Grant, 20, "g2").await;
    first
}

// ---------------------------------------------------------------------------
// Reading every row with plain sqlx.

/// A table as the schema has it: columns with their SQLite type, and the
/// primary key.
#[derive(Debug, Clone)]
struct TableShape {
    name: String,
    columns: Vec<(String, String)>,
    key: Vec<String>,
}

/// Every data table of a migrated SQLite database.
async fn schema_of(url: &str) -> Vec<TableShape> {
    let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT IN ('_sqlx_migrations', 'sqlite_sequence') ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .expect("tables");
    let mut shapes = Vec::new();
    for name in tables {
        let rows = sqlx::query("SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid")
            .bind(&name)
            .fetch_all(&mut conn)
            .await
            .expect("columns");
        let columns = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut key: Vec<(i64, String)> = rows
            .iter()
            .filter(|r| r.get::<i64, _>(2) > 0)
            .map(|r| (r.get(2), r.get(0)))
            .collect();
        key.sort();
        shapes.push(TableShape {
            name,
            columns,
            key: key.into_iter().map(|(_, c)| c).collect(),
        });
    }
    conn.close().await.ok();
    shapes
}

impl TableShape {
    fn select(&self) -> String {
        let columns: Vec<&str> = self.columns.iter().map(|(c, _)| c.as_str()).collect();
        format!(
            "SELECT {} FROM {} ORDER BY {}",
            columns.join(", "),
            self.name,
            self.key.join(", ")
        )
    }
}

/// Every row of every table, each value as text: `NULL`, `i:…`, `t:…`,
/// `b:<hex>`.
type Dump = BTreeMap<String, Vec<Vec<String>>>;

macro_rules! dump_rows {
    ($conn:ty, $url:expr, $schema:expr) => {{
        let mut conn = <$conn>::connect($url).await.expect("connect for dump");
        let mut dump = Dump::new();
        for table in $schema {
            let rows = sqlx::query(AssertSqlSafe(table.select()))
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("read {}: {e}", table.name));
            let mut out = Vec::new();
            for row in &rows {
                let mut cells = Vec::new();
                for (n, (column, kind)) in table.columns.iter().enumerate() {
                    let what = format!("{}.{column}", table.name);
                    cells.push(match kind.as_str() {
                        "INTEGER" => row
                            .try_get::<Option<i64>, _>(n)
                            .expect(&what)
                            .map_or("NULL".into(), |v| format!("i:{v}")),
                        "TEXT" => row
                            .try_get::<Option<String>, _>(n)
                            .expect(&what)
                            .map_or("NULL".into(), |v| format!("t:{v}")),
                        "BLOB" => row
                            .try_get::<Option<Vec<u8>>, _>(n)
                            .expect(&what)
                            .map_or("NULL".into(), |v| format!("b:{}", hex(&v))),
                        other => panic!("unknown column type {other} of {what}"),
                    });
                }
                out.push(cells);
            }
            dump.insert(table.name.clone(), out);
        }
        conn.close().await.ok();
        dump
    }};
}

async fn dump(db: &TestDb, schema: &[TableShape]) -> Dump {
    match db.kind() {
        Kind::Sqlite => dump_rows!(sqlx::SqliteConnection, db.url(), schema),
        Kind::Postgres => dump_rows!(sqlx::PgConnection, db.url(), schema),
        Kind::MySql => dump_rows!(sqlx::MySqlConnection, db.url(), schema),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_same(expected: &Dump, actual: &Dump, what: &str) {
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "{what}: tables"
    );
    for (table, rows) in expected {
        let theirs = &actual[table];
        assert_eq!(rows.len(), theirs.len(), "{what}: rows of {table}");
        for (n, (ours, theirs)) in rows.iter().zip(theirs).enumerate() {
            assert_eq!(ours, theirs, "{what}: row {n} of {table}");
        }
    }
}

// ---------------------------------------------------------------------------
// Running the command.

async fn db_copy(from: &str, to: &str, extra: &[&str]) -> Output {
    let started = Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-meter"))
        .args(["db", "copy", "--from", from, "--to", to])
        .args(extra)
        .env_remove("MCP_METER_COPY_FROM")
        .env_remove("MCP_METER_COPY_TO")
        .output()
        .await
        .expect("run mcp-meter db copy");
    eprintln!(
        "db copy {from} -> {to} {extra:?}: {:?} in {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        started.elapsed(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a copy that must succeed; returns its (source, target) ledger
/// checksums.
async fn copy_ok(from: &TestDb, to: &TestDb, extra: &[&str]) -> (String, String, Output) {
    let output = db_copy(from.url(), to.url(), extra).await;
    assert!(
        output.status.success(),
        "db copy failed: {}",
        stderr(&output)
    );
    let out = stdout(&output);
    let checksum = |side: &str| {
        let prefix = format!("ledger checksum (sha256), {side}: ");
        out.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {side} checksum in {out}"))
            .to_owned()
    };
    let (source, target) = (checksum("source"), checksum("target"));
    assert_eq!(source.len(), 64, "{source}");
    assert_eq!(source, target);
    assert!(out.contains("verified: every table's row count and the ledger checksum match"));
    assert!(stderr(&output).contains("ledger_entries: "));
    (source, target, output)
}

async fn max_id(store: &Arc<dyn Store>) -> (i64, i64, i64) {
    let entries = store
        .entries(&LedgerFilter {
            limit: 1_000_000,
            ..LedgerFilter::default()
        })
        .await
        .expect("entries");
    let events = store
        .meter_events(&OutboxFilter {
            limit: 1_000_000,
            ..OutboxFilter::default()
        })
        .await
        .expect("events");
    let items = store
        .invoice_items(&OutboxFilter {
            limit: 1_000_000,
            ..OutboxFilter::default()
        })
        .await
        .expect("items");
    let top = |ids: Vec<i64>| ids.into_iter().max().unwrap_or(0);
    (
        top(entries.iter().map(|e| e.id).collect()),
        top(events.iter().map(|e| e.id).collect()),
        top(items.iter().map(|i| i.id).collect()),
    )
}

/// The copy takes new rows: a customer, a ledger entry, a meter event and
/// an invoice item, each with an id past the ones copied.
async fn takes_new_writes(db: &TestDb) {
    let store = db.open().await;
    let (ledger, meter, invoice) = max_id(&store).await;
    assert!(ledger > 0 && meter > 0 && invoice > 0);
    let fresh = customer(&store, 1_000, Some("usage")).await;
    change(&store, &fresh, EntryKind::Grant, 42, "after-copy").await;
    store
        .meter_usage(&MeteredUsage {
            customer_id: fresh.clone(),
            charge_key: ChargeKey::new("after-copy"),
            call_id: CallId::new("after-copy"),
            plan_id: "usage".into(),
            tool: None,
            event_name: "api_calls".into(),
            unit: "calls".into(),
            units: 1,
            at: UnixMillis(T0 + 9 * DAY),
        })
        .await
        .expect("meter usage after the copy");
    let queued = store
        .queue_invoice_item(&NewInvoiceItem {
            customer_id: fresh,
            plan_id: "per-call".into(),
            period_start: UnixMillis(T0),
            period_end: UnixMillis(T0 + DAY),
            currency: "usd".into(),
            charged: 1,
            amount: 1,
            minimum_applied: false,
            at: UnixMillis(T0 + DAY),
        })
        .await
        .expect("queue after the copy");
    assert!(queued);
    let (ledger_after, meter_after, invoice_after) = max_id(&store).await;
    assert!(
        ledger_after > ledger,
        "{:?}: new ledger ids continue",
        db.kind()
    );
    assert!(
        meter_after > meter,
        "{:?}: new outbox ids continue",
        db.kind()
    );
    assert!(
        invoice_after > invoice,
        "{:?}: new invoice ids continue",
        db.kind()
    );
}

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_to_mariadb_to_sqlite_keeps_every_row() {
    let started = Instant::now();
    let first = TestDb::sqlite().await;
    populate(&first.open().await).await;
    eprintln!("populated in {:?}", started.elapsed());
    let schema = schema_of(first.url()).await;
    let original = dump(&first, &schema).await;
    for (table, rows) in &original {
        assert!(!rows.is_empty(), "the test fills {table}");
    }
    let total: usize = original.values().map(Vec::len).sum();
    assert!(total > 3_000, "a few thousand rows: {total}");
    assert_eq!(original.len(), 15, "every data table");

    let postgres = TestDb::postgres().await;
    let mariadb = TestDb::mysql().await;
    let last = TestDb::sqlite().await;
    let (sum1, _, output) = copy_ok(&first, &postgres, &[]).await;
    let err = stderr(&output);
    assert!(
        err.contains("ledger_entries: ") && err.contains("rows/s") && err.contains(" done in "),
        "progress per table with a rate: {err}"
    );
    let (sum2, _, _) = copy_ok(&postgres, &mariadb, &["--batch", "333"]).await;
    let (sum3, _, _) = copy_ok(&mariadb, &last, &["--batch", "7"]).await;
    assert_eq!(sum1, sum2);
    assert_eq!(sum2, sum3);

    assert_same(&original, &dump(&postgres, &schema).await, "postgres");
    assert_same(&original, &dump(&mariadb, &schema).await, "mariadb");
    assert_same(&original, &dump(&last, &schema).await, "last sqlite");

    // Running the finished copy again changes nothing and verifies again.
    let (again, _, output) = copy_ok(&mariadb, &last, &[]).await;
    assert_eq!(again, sum1);
    assert!(stdout(&output).contains("0 copied by this run"));
    assert!(stderr(&output).contains("resuming: customers complete"));

    for db in [&postgres, &mariadb, &last] {
        takes_new_writes(db).await;
    }
    eprintln!("round trip in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_non_empty_target_is_refused_and_left_alone() {
    let source = TestDb::sqlite().await;
    populate_small(&source.open().await).await;
    let schema = schema_of(source.url()).await;
    for target in [TestDb::mysql().await, TestDb::sqlite().await] {
        populate_small(&target.open().await).await;
        let before = dump(&target, &schema).await;
        let output = db_copy(source.url(), target.url(), &[]).await;
        assert_eq!(output.status.code(), Some(1));
        let err = stderr(&output);
        assert!(
            err.contains("is not empty and does not hold an interrupted copy of this source")
                && err.contains("table customers")
                && err.contains("nothing was written"),
            "{err}"
        );
        assert_same(&before, &dump(&target, &schema).await, "refused target");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_resumes_and_ends_identical() {
    let source = TestDb::sqlite().await;
    let store = source.open().await;
    populate(&store).await;
    let ids: Vec<i64> = store
        .entries(&LedgerFilter {
            limit: 1_000_000,
            ..LedgerFilter::default()
        })
        .await
        .expect("entries")
        .iter()
        .map(|e| e.id)
        .collect();
    let schema = schema_of(source.url()).await;
    let original = dump(&source, &schema).await;
    let target = TestDb::postgres().await;
    let (checksum, _, _) = copy_ok(&source, &target, &["--batch", "100"]).await;

    // As if the copy stopped inside ledger_entries: its tail and every table
    // after it are missing.
    let cut = ids[ids.len() / 2];
    target
        .execute(&format!(
            "DELETE FROM webhook_events; DELETE FROM invoice_outbox; DELETE FROM meter_outbox; \
             DELETE FROM outcomes_daily; DELETE FROM charges_daily; \
             DELETE FROM usage_daily; DELETE FROM usage_records; DELETE FROM quota_uses; \
             DELETE FROM period_counters; DELETE FROM call_charges; \
             DELETE FROM ledger_entries WHERE id > {cut}"
        ))
        .await;
    let output = db_copy(source.url(), target.url(), &["--batch", "100"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("resuming: customers complete, api_keys complete")
            && err.contains(&format!(
                "ledger_entries after id {cut} ({} of {} rows)",
                ids.len() / 2 + 1,
                ids.len()
            )),
        "{err}"
    );
    assert!(stdout(&output).contains(&format!("ledger checksum (sha256), target: {checksum}")));
    assert_same(&original, &dump(&target, &schema).await, "resumed copy");
    takes_new_writes(&target).await;

    // A target whose rows differ from the source's is not a copy of it.
    let other = TestDb::mysql().await;
    copy_ok(&source, &other, &[]).await;
    other.execute("DELETE FROM webhook_events").await;
    other
        .execute("UPDATE usage_records SET units = 2 WHERE call_id = 'call-00005'")
        .await;
    let before = dump(&other, &schema).await;
    let output = db_copy(source.url(), other.url(), &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("table usage_records holds the row call_id \"call-00005\" with other values"),
        "{err}"
    );
    assert_same(&before, &dump(&other, &schema).await, "refused resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_of_another_schema_version_is_refused() {
    let source = TestDb::sqlite().await;
    populate_small(&source.open().await).await;
    let target_dir = tempfile::tempdir().expect("temp dir");
    let target_file = target_dir.path().join("target.db");
    let target = format!("sqlite://{}", target_file.display());

    source
        .execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'from the future', 1, X'00', 0)",
        )
        .await;
    let output = db_copy(source.url(), &target, &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("has schema version 99, newer than this mcp-meter knows (7)"),
        "{err}"
    );
    assert!(!target_file.exists(), "the target is not touched");

    source
        .execute("DELETE FROM _sqlx_migrations WHERE version >= 5")
        .await;
    let output = db_copy(source.url(), &target, &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("is at schema version 4, this mcp-meter at 7")
            && err.contains("mcp-meter migrate --database-url"),
        "{err}"
    );
    assert!(!target_file.exists(), "the target is not touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_give_clear_errors() {
    let source = TestDb::sqlite().await;
    populate_small(&source.open().await).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.db");
    let missing_url = format!("sqlite://{}", missing.display());
    let target_url = format!("sqlite://{}", dir.path().join("target.db").display());

    let output = db_copy(source.url(), "redis://127.0.0.1/0", &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("cannot open the target database (--to): unsupported database URL"),
        "{err}"
    );

    let output = db_copy(&missing_url, &target_url, &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("cannot open the source database (--from)"),
        "{err}"
    );
    assert!(!missing.exists(), "a missing source is not created");

    let output = db_copy(
        source.url(),
        "postgres://postgres:s3cr3t-pw@127.0.0.1:1/meter",
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("cannot reach the database at `postgres://postgres:***@127.0.0.1:1/meter`"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t") && !stdout(&output).contains("s3cr3t"));

    let output = db_copy(source.url(), source.url(), &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--from and --to name the same database"));

    let output = db_copy(source.url(), &target_url, &["--batch", "0"]).await;
    assert_eq!(output.status.code(), Some(2), "clap refuses --batch 0");
}
