//! The billing models of the SQL store against real databases: quota taken
//! and given back per call, metered usage with its outbox event, the meter
//! outbox's lifecycle, plans' periodic grants, subscriptions, and the
//! migration that adds them (schema 3) over a database holding schema 2
//! data. Every scenario runs on SQLite (a temporary file), PostgreSQL and
//! MariaDB, each on a fresh database; the concurrency scenarios fire
//! hundreds of writes at once and check exact totals.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::db::{Kind, TestDb};
use mcp_meter::store::{self, Store};
use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{
    Accrual, AccrueOutcome, BalanceChange, ChangeOutcome, ChargeKey, EntryKind, GrantMode,
    GrantOutcome, Ledger, LedgerEntry, LedgerFilter, MeterOutcome, MeteredUsage, PeriodicGrant,
    PriceSchedule, QuotaOutcome, QuotaRelease, QuotaTake, ReleaseOutcome, Reservation,
};
use mcp_meter_plugin::outbox::{MeterEvent, MeterOutbox, OutboxFilter, OutboxStatus};
use mcp_meter_plugin::ports::{NewCustomer, StoreError};
use mcp_meter_plugin::subscription::{
    Subscription, SubscriptionChange, SubscriptionStatus, Subscriptions,
};
use sqlx::Connection;

/// 2026-03-14T00:00:00Z.
const DAY0: i64 = 1_773_446_400_000;
const DAY_MS: i64 = 86_400_000;

async fn new_customer(store: &Arc<dyn Store>, name: &str) -> CustomerId {
    store
        .create_customer(NewCustomer {
            name: name.into(),
            plan_id: Some("free".into()),
            ..NewCustomer::default()
        })
        .await
        .expect("create customer")
        .id
}

async fn entries_of(ledger: &dyn Ledger, customer: &CustomerId) -> Vec<LedgerEntry> {
    ledger
        .entries(&LedgerFilter {
            customer: Some(customer.clone()),
            after_id: None,
            limit: 100_000,
        })
        .await
        .expect("entries")
}

fn keys_of(entries: &[LedgerEntry]) -> Vec<String> {
    entries.iter().map(|e| e.idempotency_key.clone()).collect()
}

/// The balance is the sum of the customer's credit entries, and each
/// credit entry's `balance_after` is the running sum up to it; entries in
/// other units carry no balance. Returns the balance.
async fn assert_ledger_adds_up(ledger: &dyn Ledger, customer: &CustomerId) -> i64 {
    let mut running = 0i64;
    for entry in entries_of(ledger, customer).await {
        if entry.unit != "credits" {
            assert_eq!(entry.balance_after, None, "{entry:?}");
            continue;
        }
        running += entry.amount;
        assert_eq!(entry.balance_after, Some(running), "{entry:?}");
    }
    let balance = ledger.balance(customer).await.expect("balance");
    assert_eq!(balance, running, "the balance is the sum of the entries");
    balance
}

/// The quota counter used by [`take`] is the sum of the customer's `calls`
/// entries in its period.
async fn calls_in_entries(ledger: &dyn Ledger, customer: &CustomerId) -> i64 {
    entries_of(ledger, customer)
        .await
        .iter()
        .filter(|e| e.unit == "calls")
        .map(|e| e.amount)
        .sum()
}

fn take(customer: &CustomerId, key: &str, units: i64, cap: Option<i64>) -> QuotaTake {
    QuotaTake {
        customer_id: customer.clone(),
        charge_key: ChargeKey::new(key),
        call_id: CallId::new(format!("call_{key}")),
        plan_id: "free".into(),
        tool: Some("search".into()),
        counter: "free".into(),
        period_start: UnixMillis(DAY0),
        units,
        cap,
        at: UnixMillis(DAY0 + 1_000),
    }
}

fn release(customer: &CustomerId, key: &str) -> QuotaRelease {
    QuotaRelease {
        customer_id: customer.clone(),
        charge_key: ChargeKey::new(key),
        reason: "upstream_error".into(),
        at: UnixMillis(DAY0 + 2_000),
    }
}

async fn counter(ledger: &dyn Ledger, customer: &CustomerId, period_start: i64) -> i64 {
    ledger
        .counter(customer, "free", UnixMillis(period_start))
        .await
        .expect("counter")
}

fn usage(customer: &CustomerId, key: &str, units: i64, at: i64) -> MeteredUsage {
    MeteredUsage {
        customer_id: customer.clone(),
        charge_key: ChargeKey::new(key),
        call_id: CallId::new(format!("call_{key}")),
        plan_id: "metered".into(),
        tool: Some("fetch".into()),
        event_name: "mcp_bytes".into(),
        unit: "bytes".into(),
        units,
        at: UnixMillis(at),
    }
}

fn all_events() -> OutboxFilter {
    OutboxFilter {
        limit: 100_000,
        ..OutboxFilter::default()
    }
}

async fn events(outbox: &dyn MeterOutbox, filter: OutboxFilter) -> Vec<MeterEvent> {
    outbox.meter_events(&filter).await.expect("meter events")
}

async fn event(outbox: &dyn MeterOutbox, id: i64) -> MeterEvent {
    events(outbox, all_events())
        .await
        .into_iter()
        .find(|e| e.id == id)
        .expect("event")
}

fn ids(events: &[MeterEvent]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

fn periodic(
    customer: &CustomerId,
    period_start: i64,
    amount: i64,
    mode: GrantMode,
) -> PeriodicGrant {
    PeriodicGrant {
        customer_id: customer.clone(),
        plan_id: "pro".into(),
        period_start: UnixMillis(period_start),
        amount,
        mode,
        at: UnixMillis(period_start + 1),
    }
}

async fn operator_grant(ledger: &dyn Ledger, customer: &CustomerId, amount: i64, key: &str) {
    let outcome = ledger
        .change_balance(&BalanceChange {
            customer_id: customer.clone(),
            kind: EntryKind::Grant,
            amount,
            idempotency_key: key.into(),
            reason: None,
            at: UnixMillis(DAY0),
        })
        .await
        .expect("grant");
    assert!(
        matches!(outcome, ChangeOutcome::Applied { .. }),
        "{outcome:?}"
    );
}

fn subscription_change(
    customer: &CustomerId,
    plan: &str,
    status: SubscriptionStatus,
    at: i64,
) -> SubscriptionChange {
    SubscriptionChange {
        customer_id: customer.clone(),
        plan_id: plan.into(),
        status,
        started_at: None,
        current_period: None,
        external_id: None,
        at: UnixMillis(at),
        provider_event_at: None,
    }
}

each_backend!(
    billing_migration_is_applied,
    the_migration_keeps_schema_2_data,
    quota_is_taken_under_the_cap_once_per_call,
    quota_takes_are_checked,
    concurrent_takes_never_pass_the_cap,
    concurrent_takes_of_one_call_take_once,
    released_quota_returns_to_its_period_once,
    concurrent_releases_of_one_call_release_once,
    metered_usage_is_recorded_once_with_its_event,
    metered_usage_is_checked,
    concurrent_recordings_of_one_call_record_once,
    outbox_events_are_due_failed_parked_retried_and_sent,
    outbox_events_are_filtered_and_paged,
    outbox_batches_are_claimed_once_failed_and_retried_whole,
    a_reset_grant_expires_the_balance,
    a_rollover_grant_carries_up_to_its_cap,
    a_rollover_grant_without_cap_carries_everything,
    periodic_grants_are_checked,
    concurrent_periodic_grants_apply_once,
    subscriptions_are_created_and_changed,
    subscription_statuses_round_trip,
    subscription_changes_are_checked,
    derived_idempotency_keys_are_refused_to_operators,
    only_a_failed_webhook_event_is_requeued,
    every_hot_path_write_at_once_stays_exact,
);

async fn billing_migration_is_applied(db: TestDb) {
    let report = store::migrate(&db.options()).await.expect("migrate");
    let applied: Vec<(i64, &str)> = report
        .applied_now
        .iter()
        .map(|m| (m.version, m.description.as_str()))
        .collect();
    assert_eq!(
        applied,
        [
            (1, "initial"),
            (2, "ledger"),
            (3, "billing models"),
            (4, "stripe webhooks"),
            (5, "stripe outbound"),
            (6, "analytics"),
            (7, "analytics rollups")
        ]
    );
    assert_eq!(report.current_version(), 7);
    let again = store::migrate(&db.options()).await.expect("migrate again");
    assert!(again.applied_now.is_empty(), "{again:?}");
    // The store is each port (trait upcasting, no helper needed).
    let store = db.open().await;
    let subscriptions: Arc<dyn Subscriptions> = store.clone();
    let outbox: Arc<dyn MeterOutbox> = store;
    assert_eq!(
        subscriptions
            .subscription(&CustomerId::new("cus_nobody"))
            .await
            .expect("subscription"),
        None
    );
    assert!(events(&*outbox, all_events()).await.is_empty());
}

/// Brings a fresh database to schema 2 with sqlx's own migrator (the
/// binary's migrations up to version 2, checksums and all).
async fn migrate_to_schema_2(db: &TestDb) {
    let outcome = match db.kind() {
        Kind::Sqlite => {
            let url = format!("{}?mode=rwc", db.url());
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            sqlx::migrate!("migrations/sqlite")
                .run_to(2, &mut conn)
                .await
        }
        Kind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(db.url())
                .await
                .expect("connect");
            sqlx::migrate!("migrations/postgres")
                .run_to(2, &mut conn)
                .await
        }
        Kind::MySql => {
            let mut conn = sqlx::MySqlConnection::connect(db.url())
                .await
                .expect("connect");
            sqlx::migrate!("migrations/mysql")
                .run_to(2, &mut conn)
                .await
        }
    };
    outcome.expect("migrate to schema 2");
}

/// A database that holds schema 2 data (entries of every schema 2 kind, a
/// balance, a reservation) is migrated to schema 3 when the store opens:
/// every row survives with its id (SQLite rebuilds `ledger_entries`), ids
/// are not handed out again, and the new kind is accepted.
async fn the_migration_keeps_schema_2_data(db: TestDb) {
    migrate_to_schema_2(&db).await;
    db.execute(
        "INSERT INTO customers (id, name, email, plan_id, status, stripe_customer_id, \
         external_subject, metadata, created_at, updated_at) \
         VALUES ('cus_old', 'old', NULL, 'prepaid', 'active', NULL, NULL, '{}', 1, 1)",
    )
    .await;
    let rows = [
        ("grant", 100, "credits", Some(100), None, "g1", None),
        (
            "reservation",
            -10,
            "credits",
            Some(90),
            Some("call_1"),
            "reserve:k1:1",
            None,
        ),
        (
            "settlement",
            4,
            "credits",
            Some(94),
            Some("call_1"),
            "settle:k1:1",
            None,
        ),
        (
            "reservation",
            -5,
            "credits",
            Some(89),
            Some("call_2"),
            "reserve:k2:1",
            None,
        ),
        (
            "refund",
            5,
            "credits",
            Some(94),
            Some("call_2"),
            "refund:k2:1",
            Some("timeout"),
        ),
        (
            "purchase",
            6,
            "credits",
            Some(100),
            None,
            "p1",
            Some("checkout"),
        ),
        (
            "adjustment",
            -1,
            "credits",
            Some(99),
            None,
            "a1",
            Some("fix"),
        ),
        ("expiry", -9, "credits", Some(90), None, "e1", None),
        (
            "charge",
            2_500,
            "usd",
            None,
            Some("call_3"),
            "charge:k3",
            None,
        ),
        ("grant", 1, "credits", Some(91), None, "deleted", None),
    ];
    for (n, (kind, amount, unit, balance_after, call_id, key, reason)) in rows.iter().enumerate() {
        let text = |value: Option<&str>| value.map_or("NULL".to_owned(), |v| format!("'{v}'"));
        db.execute(&format!(
            "INSERT INTO ledger_entries (customer_id, kind, amount, unit, balance_after, \
             call_id, plan_id, tool, idempotency_key, reason, created_at) VALUES \
             ('cus_old', '{kind}', {amount}, '{unit}', {}, {}, 'prepaid', {}, '{key}', {}, {})",
            balance_after.map_or("NULL".to_owned(), |b| b.to_string()),
            text(*call_id),
            text(call_id.map(|_| "search")),
            text(*reason),
            1_000 + n as i64,
        ))
        .await;
    }
    // The highest id is gone: a new entry must still get a higher one.
    db.execute("DELETE FROM ledger_entries WHERE idempotency_key = 'deleted'")
        .await;
    db.execute("INSERT INTO balances (customer_id, balance, updated_at) VALUES ('cus_old', 90, 1)")
        .await;

    let store = db.open().await;
    let old = CustomerId::new("cus_old");
    let entries = entries_of(&*store, &old).await;
    assert_eq!(
        entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<i64>>()
    );
    for (entry, (kind, amount, unit, balance_after, call_id, key, reason)) in
        entries.iter().zip(&rows)
    {
        assert_eq!(entry.kind.as_str(), *kind);
        assert_eq!(entry.amount, *amount);
        assert_eq!(entry.unit, *unit);
        assert_eq!(entry.balance_after, *balance_after);
        assert_eq!(entry.call_id.as_ref().map(|c| c.as_str()), *call_id);
        assert_eq!(entry.plan_id.as_deref(), Some("prepaid"));
        assert_eq!(
            entry.tool.as_deref(),
            call_id.map(|_| "search"),
            "{entry:?}"
        );
        assert_eq!(entry.idempotency_key, *key);
        assert_eq!(entry.reason.as_deref(), *reason);
        assert_eq!(entry.customer_id, old);
    }
    assert_eq!(entries[3].created_at, UnixMillis(1_003));
    assert_eq!(assert_ledger_adds_up(&*store, &old).await, 90);

    // The unique key still holds after the rebuild…
    let replay = store
        .change_balance(&BalanceChange {
            customer_id: old.clone(),
            kind: EntryKind::Grant,
            amount: 100,
            idempotency_key: "g1".into(),
            reason: None,
            at: UnixMillis(DAY0),
        })
        .await
        .expect("replay");
    assert_eq!(replay, ChangeOutcome::AlreadyApplied { balance: 90 });
    // …new entries continue after every id ever handed out, and `usage`
    // is a kind now.
    operator_grant(&*store, &old, 10, "g2").await;
    assert_eq!(
        store
            .take_quota(&take(&old, "k4", 1, None))
            .await
            .expect("take"),
        QuotaOutcome::Taken { used: 1 }
    );
    let entries = entries_of(&*store, &old).await;
    assert_eq!(entries.len(), 11);
    assert!(entries[9].id > 10, "{:?}", entries[9]);
    assert!(entries[10].id > entries[9].id);
    assert_eq!(entries[10].kind, EntryKind::Usage);
    assert_eq!(assert_ledger_adds_up(&*store, &old).await, 100);
    // A kind the schema does not know is still refused.
    let bogus = try_sql(
        &db,
        "INSERT INTO ledger_entries (customer_id, kind, amount, unit, idempotency_key, \
         created_at) VALUES ('cus_old', 'bogus', 1, 'credits', 'x', 1)",
    )
    .await;
    assert!(bogus.is_err(), "an unknown kind must be refused");
}

/// Runs one SQL statement on the test database, returning its error.
async fn try_sql(db: &TestDb, sql: &str) -> Result<(), sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db.kind() {
        Kind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(db.url()).await?;
            sqlx::raw_sql(sql).execute(&mut conn).await.map(drop)
        }
        Kind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(db.url()).await?;
            sqlx::raw_sql(sql).execute(&mut conn).await.map(drop)
        }
        Kind::MySql => {
            let mut conn = sqlx::MySqlConnection::connect(db.url()).await?;
            sqlx::raw_sql(sql).execute(&mut conn).await.map(drop)
        }
    }
}

async fn quota_is_taken_under_the_cap_once_per_call(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let cases = [
        ("k1", 1, QuotaOutcome::Taken { used: 1 }),
        ("k2", 1, QuotaOutcome::Taken { used: 2 }),
        // The cap would be passed: nothing written.
        ("k3", 2, QuotaOutcome::Exhausted { used: 2 }),
        // A call that holds its units does not take again.
        ("k1", 1, QuotaOutcome::AlreadyTaken { used: 2 }),
        ("k3", 1, QuotaOutcome::Taken { used: 3 }),
        ("k4", 1, QuotaOutcome::Exhausted { used: 3 }),
        ("k3", 1, QuotaOutcome::AlreadyTaken { used: 3 }),
    ];
    for (key, units, expected) in cases {
        assert_eq!(
            ledger
                .take_quota(&take(&a, key, units, Some(3)))
                .await
                .expect("take"),
            expected,
            "take {key}"
        );
    }
    assert_eq!(counter(ledger, &a, DAY0).await, 3);
    let entries = entries_of(ledger, &a).await;
    assert_eq!(
        keys_of(&entries),
        ["quota:k1:1", "quota:k2:1", "quota:k3:1"]
    );
    let first = &entries[0];
    assert_eq!(
        (
            first.kind,
            first.amount,
            first.unit.as_str(),
            first.balance_after
        ),
        (EntryKind::Usage, 1, "calls", None)
    );
    assert_eq!(first.call_id, Some(CallId::new("call_k1")));
    assert_eq!(first.plan_id.as_deref(), Some("free"));
    assert_eq!(first.tool.as_deref(), Some("search"));
    assert_eq!(first.reason.as_deref(), Some("free"));
    assert_eq!(first.created_at, UnixMillis(DAY0 + 1_000));
    assert_eq!(calls_in_entries(ledger, &a).await, 3);

    // Without a cap the counter only counts; other periods are separate.
    let uncapped = QuotaTake {
        period_start: UnixMillis(DAY0 + DAY_MS),
        ..take(&a, "k9", 1_000, None)
    };
    assert_eq!(
        ledger.take_quota(&uncapped).await.expect("take"),
        QuotaOutcome::Taken { used: 1_000 }
    );
    assert_eq!(counter(ledger, &a, DAY0).await, 3);
    assert_eq!(counter(ledger, &a, DAY0 + DAY_MS).await, 1_000);
    // A cap of 0 refuses everything.
    let b = new_customer(&store, "b").await;
    assert_eq!(
        ledger
            .take_quota(&take(&b, "k1", 1, Some(0)))
            .await
            .expect("take"),
        QuotaOutcome::Exhausted { used: 0 }
    );
    assert!(entries_of(ledger, &b).await.is_empty());
}

async fn quota_takes_are_checked(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    for bad in [
        take(&a, "k", 0, None),
        take(&a, "k", -1, Some(5)),
        take(&a, "k", 1, Some(-1)),
        take(&a, "", 1, None),
        take(&a, &"k".repeat(513), 1, None),
        QuotaTake {
            counter: String::new(),
            ..take(&a, "k", 1, None)
        },
    ] {
        assert!(
            matches!(ledger.take_quota(&bad).await, Err(StoreError::Other(_))),
            "{bad:?}"
        );
    }
    match ledger
        .take_quota(&take(&CustomerId::new("cus_nobody"), "k", 1, None))
        .await
    {
        Err(StoreError::NotFound(message)) => assert_eq!(message, "customer cus_nobody"),
        other => panic!("unknown customer: {other:?}"),
    }
    assert!(matches!(
        ledger.release_quota(&release(&a, "")).await,
        Err(StoreError::Other(_))
    ));
    assert!(entries_of(ledger, &a).await.is_empty());
    assert_eq!(counter(ledger, &a, DAY0).await, 0);
}

async fn concurrent_takes_never_pass_the_cap(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    let cap = 50;
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let store = Arc::clone(&store);
            let t = take(&a, &format!("call-{n}"), 1, Some(cap));
            tokio::spawn(async move { store.take_quota(&t).await })
        })
        .collect();
    let mut taken = Vec::new();
    let mut exhausted = 0;
    for task in tasks {
        match task.await.expect("task").expect("take") {
            QuotaOutcome::Taken { used } => taken.push(used),
            QuotaOutcome::Exhausted { used } => {
                assert_eq!(used, cap);
                exhausted += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Each take saw the one before it: every count from 1 to the cap came
    // back exactly once.
    taken.sort_unstable();
    assert_eq!(taken, (1..=cap).collect::<Vec<i64>>());
    assert_eq!(exhausted, 150);
    assert_eq!(counter(&*store, &a, DAY0).await, cap);
    let entries = entries_of(&*store, &a).await;
    assert_eq!(entries.len(), 50);
    assert!(entries.iter().all(|e| e.kind == EntryKind::Usage));
    assert_eq!(calls_in_entries(&*store, &a).await, cap);
}

async fn concurrent_takes_of_one_call_take_once(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(&store);
            let t = take(&a, "the-call", 2, Some(100));
            tokio::spawn(async move { store.take_quota(&t).await })
        })
        .collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        let outcome = task.await.expect("task").expect("take");
        *outcomes.entry(format!("{outcome:?}")).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            (format!("{:?}", QuotaOutcome::AlreadyTaken { used: 2 }), 49),
            (format!("{:?}", QuotaOutcome::Taken { used: 2 }), 1),
        ])
    );
    assert_eq!(counter(&*store, &a, DAY0).await, 2);
    assert_eq!(
        keys_of(&entries_of(&*store, &a).await),
        ["quota:the-call:1"]
    );
}

async fn released_quota_returns_to_its_period_once(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let taken = |key: &str, units: i64| {
        let t = take(&a, key, units, Some(10));
        async move { ledger.take_quota(&t).await.expect("take") }
    };
    assert_eq!(taken("k1", 2).await, QuotaOutcome::Taken { used: 2 });
    assert_eq!(taken("k2", 1).await, QuotaOutcome::Taken { used: 3 });

    let released = |key: &str| {
        let r = release(&a, key);
        async move { ledger.release_quota(&r).await.expect("release") }
    };
    assert_eq!(released("k1").await, ReleaseOutcome::Released { used: 1 });
    assert_eq!(counter(ledger, &a, DAY0).await, 1);
    assert_eq!(released("k1").await, ReleaseOutcome::AlreadyReleased);
    assert_eq!(released("never").await, ReleaseOutcome::NotTaken);
    assert_eq!(
        ledger
            .release_quota(&release(&CustomerId::new("cus_nobody"), "k1"))
            .await
            .expect("release"),
        ReleaseOutcome::NotTaken
    );
    assert_eq!(counter(ledger, &a, DAY0).await, 1);

    // The released call takes again as its second attempt, and may give
    // that back too.
    assert_eq!(taken("k1", 2).await, QuotaOutcome::Taken { used: 3 });
    assert_eq!(taken("k1", 2).await, QuotaOutcome::AlreadyTaken { used: 3 });
    assert_eq!(released("k1").await, ReleaseOutcome::Released { used: 1 });
    assert_eq!(taken("k1", 2).await, QuotaOutcome::Taken { used: 3 });

    let entries = entries_of(ledger, &a).await;
    assert_eq!(
        keys_of(&entries),
        [
            "quota:k1:1",
            "quota:k2:1",
            "unquota:k1:1",
            "quota:k1:2",
            "unquota:k1:2",
            "quota:k1:3",
        ]
    );
    let refund = &entries[2];
    assert_eq!(
        (refund.kind, refund.amount, refund.unit.as_str()),
        (EntryKind::Refund, -2, "calls")
    );
    assert_eq!(refund.reason.as_deref(), Some("upstream_error"));
    assert_eq!(refund.call_id, Some(CallId::new("call_k1")));
    assert_eq!(refund.plan_id.as_deref(), Some("free"));
    assert_eq!(refund.balance_after, None);
    assert_eq!(refund.created_at, UnixMillis(DAY0 + 2_000));
    assert_eq!(calls_in_entries(ledger, &a).await, 3);

    // A release gives back to the counter and period the call took from,
    // even after the period turned.
    let yesterday = QuotaTake {
        period_start: UnixMillis(DAY0 - DAY_MS),
        ..take(&a, "old", 4, None)
    };
    assert_eq!(
        ledger.take_quota(&yesterday).await.expect("take"),
        QuotaOutcome::Taken { used: 4 }
    );
    let other_counter = QuotaTake {
        counter: "free:search".into(),
        ..take(&a, "other", 1, None)
    };
    ledger.take_quota(&other_counter).await.expect("take");
    assert_eq!(released("old").await, ReleaseOutcome::Released { used: 0 });
    assert_eq!(counter(ledger, &a, DAY0 - DAY_MS).await, 0);
    assert_eq!(counter(ledger, &a, DAY0).await, 3);
    assert_eq!(
        released("other").await,
        ReleaseOutcome::Released { used: 0 }
    );
    assert_eq!(
        ledger
            .counter(&a, "free:search", UnixMillis(DAY0))
            .await
            .expect("counter"),
        0
    );
    assert_eq!(counter(ledger, &a, DAY0).await, 3);
}

async fn concurrent_releases_of_one_call_release_once(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    for n in 0..3 {
        store
            .take_quota(&take(&a, &format!("k{n}"), 3, Some(100)))
            .await
            .expect("take");
    }
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(&store);
            let r = release(&a, "k1");
            tokio::spawn(async move { store.release_quota(&r).await })
        })
        .collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        let outcome = task.await.expect("task").expect("release");
        *outcomes.entry(format!("{outcome:?}")).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            (format!("{:?}", ReleaseOutcome::AlreadyReleased), 49),
            (format!("{:?}", ReleaseOutcome::Released { used: 6 }), 1),
        ])
    );
    assert_eq!(counter(&*store, &a, DAY0).await, 6);
    assert_eq!(calls_in_entries(&*store, &a).await, 6);
    assert_eq!(entries_of(&*store, &a).await.len(), 4);
}

async fn metered_usage_is_recorded_once_with_its_event(db: TestDb) {
    let store = db.open().await;
    let a = new_customer(&store, "a").await;
    let first = usage(&a, "k1", 2_048, DAY0 + 10);
    assert_eq!(
        store.meter_usage(&first).await.expect("meter"),
        MeterOutcome::Recorded
    );
    assert_eq!(
        store.meter_usage(&first).await.expect("meter"),
        MeterOutcome::AlreadyRecorded
    );
    // A replay with other numbers is still the same call.
    assert_eq!(
        store
            .meter_usage(&usage(&a, "k1", 1, DAY0 + 20))
            .await
            .expect("meter"),
        MeterOutcome::AlreadyRecorded
    );
    // Zero units are recorded (and reported) too.
    assert_eq!(
        store
            .meter_usage(&usage(&a, "k2", 0, DAY0 + 30))
            .await
            .expect("meter"),
        MeterOutcome::Recorded
    );

    let entries = entries_of(&*store, &a).await;
    assert_eq!(keys_of(&entries), ["usage:k1", "usage:k2"]);
    let entry = &entries[0];
    assert_eq!(
        (
            entry.kind,
            entry.amount,
            entry.unit.as_str(),
            entry.balance_after
        ),
        (EntryKind::Usage, 2_048, "bytes", None)
    );
    assert_eq!(entry.call_id, Some(CallId::new("call_k1")));
    assert_eq!(entry.plan_id.as_deref(), Some("metered"));
    assert_eq!(entry.tool.as_deref(), Some("fetch"));
    assert_eq!(entry.reason.as_deref(), Some("mcp_bytes"));
    assert_eq!(entry.created_at, UnixMillis(DAY0 + 10));

    let outbox = events(&*store, all_events()).await;
    assert_eq!(outbox.len(), 2);
    assert_eq!(
        outbox[0],
        MeterEvent {
            id: outbox[0].id,
            customer_id: a.clone(),
            event_name: "mcp_bytes".into(),
            value: 2_048,
            identifier: "call_k1".into(),
            occurred_at: UnixMillis(DAY0 + 10),
            status: OutboxStatus::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: UnixMillis(DAY0 + 10),
            sent_at: None,
            batch: None,
        }
    );
    assert_eq!(
        (outbox[1].value, outbox[1].identifier.as_str()),
        (0, "call_k2")
    );
    assert!(outbox[0].id < outbox[1].id);

    // Another call reusing a call id (the event's identifier) is refused,
    // and nothing of it is written.
    let reused = MeteredUsage {
        call_id: CallId::new("call_k1"),
        ..usage(&a, "k3", 5, DAY0 + 40)
    };
    assert!(matches!(
        store.meter_usage(&reused).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(entries_of(&*store, &a).await.len(), 2);
    assert_eq!(events(&*store, all_events()).await.len(), 2);
}

async fn metered_usage_is_checked(db: TestDb) {
    let store = db.open().await;
    let a = new_customer(&store, "a").await;
    let base = usage(&a, "k", 1, DAY0);
    for bad in [
        MeteredUsage {
            units: -1,
            ..base.clone()
        },
        MeteredUsage {
            event_name: String::new(),
            ..base.clone()
        },
        MeteredUsage {
            event_name: "e".repeat(101),
            ..base.clone()
        },
        MeteredUsage {
            unit: String::new(),
            ..base.clone()
        },
        MeteredUsage {
            unit: "u".repeat(17),
            ..base.clone()
        },
        MeteredUsage {
            charge_key: ChargeKey::new(""),
            ..base.clone()
        },
        MeteredUsage {
            call_id: CallId::new("c".repeat(129)),
            ..base.clone()
        },
    ] {
        assert!(
            matches!(store.meter_usage(&bad).await, Err(StoreError::Other(_))),
            "{bad:?}"
        );
    }
    // The longest names pass.
    let longest = MeteredUsage {
        event_name: "é".repeat(100),
        unit: "u".repeat(16),
        ..base.clone()
    };
    assert_eq!(
        store.meter_usage(&longest).await.expect("meter"),
        MeterOutcome::Recorded
    );
    match store
        .meter_usage(&usage(&CustomerId::new("cus_nobody"), "k", 1, DAY0))
        .await
    {
        Err(StoreError::NotFound(message)) => assert_eq!(message, "customer cus_nobody"),
        other => panic!("unknown customer: {other:?}"),
    }
    assert_eq!(entries_of(&*store, &a).await.len(), 1);
    assert_eq!(events(&*store, all_events()).await.len(), 1);
}

async fn concurrent_recordings_of_one_call_record_once(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    let mut tasks = Vec::new();
    for n in 0..150 {
        let store = Arc::clone(&store);
        // 50 copies of one call, and 100 other calls at the same time.
        let key = if n % 3 == 0 {
            "the-call".to_owned()
        } else {
            format!("call-{n}")
        };
        let u = usage(&a, &key, 7, DAY0 + n);
        tasks.push(tokio::spawn(async move {
            (key, store.meter_usage(&u).await.expect("meter"))
        }));
    }
    let mut outcomes: BTreeMap<(bool, String), usize> = BTreeMap::new();
    for task in tasks {
        let (key, outcome) = task.await.expect("task");
        *outcomes
            .entry((key == "the-call", format!("{outcome:?}")))
            .or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ((false, "Recorded".to_owned()), 100),
            ((true, "AlreadyRecorded".to_owned()), 49),
            ((true, "Recorded".to_owned()), 1),
        ])
    );
    let entries = entries_of(&*store, &a).await;
    assert_eq!(entries.len(), 101);
    let outbox = events(&*store, all_events()).await;
    assert_eq!(outbox.len(), 101);
    assert_eq!(
        outbox
            .iter()
            .filter(|e| e.identifier == "call_the-call")
            .count(),
        1
    );
    assert_eq!(outbox.iter().map(|e| e.value).sum::<i64>(), 7 * 101);
}

async fn outbox_events_are_due_failed_parked_retried_and_sent(db: TestDb) {
    let store = db.open().await;
    let outbox: &dyn MeterOutbox = &*store;
    let a = new_customer(&store, "a").await;
    let b = new_customer(&store, "b").await;
    // Recorded out of time order: e3 happened before e2.
    for (customer, key, at) in [
        (&a, "e1", 100),
        (&a, "e2", 300),
        (&a, "e3", 200),
        (&b, "e4", 400),
    ] {
        store
            .meter_usage(&usage(customer, key, 1, DAY0 + at))
            .await
            .expect("meter");
    }
    let all = events(outbox, all_events()).await;
    let [e1, e2, e3, e4] = [all[0].id, all[1].id, all[2].id, all[3].id];
    let due = |now: i64, limit: u32| async move {
        ids(&outbox
            .due_meter_events(UnixMillis(DAY0 + now), limit)
            .await
            .expect("due"))
    };
    // Due by time, then id; nothing before its time.
    assert_eq!(due(99, 10).await, Vec::<i64>::new());
    assert_eq!(due(100, 10).await, [e1]);
    assert_eq!(due(300, 10).await, [e1, e3, e2]);
    assert_eq!(due(1_000, 10).await, [e1, e3, e2, e4]);
    assert_eq!(due(1_000, 2).await, [e1, e3]);
    assert_eq!(due(1_000, 0).await, Vec::<i64>::new());

    // A failure moves the event to its retry time.
    outbox
        .mark_meter_event_failed(e1, "503 from the provider", Some(UnixMillis(DAY0 + 500)))
        .await
        .expect("failed");
    let failed = event(outbox, e1).await;
    assert_eq!(failed.status, OutboxStatus::Pending);
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.last_error.as_deref(), Some("503 from the provider"));
    assert_eq!(failed.next_attempt_at, UnixMillis(DAY0 + 500));
    assert_eq!(failed.occurred_at, UnixMillis(DAY0 + 100));
    assert_eq!(due(499, 10).await, [e3, e2, e4]);
    assert_eq!(due(500, 10).await, [e3, e2, e4, e1]);

    // Failing again without a retry time parks it; a long error is cut.
    let long_error = "x".repeat(5_000);
    outbox
        .mark_meter_event_failed(e1, &long_error, None)
        .await
        .expect("failed");
    let parked = event(outbox, e1).await;
    assert_eq!(parked.status, OutboxStatus::Parked);
    assert_eq!(parked.attempts, 2);
    assert_eq!(parked.last_error.as_deref(), Some(&long_error[..1_000]));
    assert_eq!(due(10_000, 10).await, [e3, e2, e4]);
    // Only a pending event records a failure.
    outbox
        .mark_meter_event_failed(e1, "again", Some(UnixMillis(DAY0)))
        .await
        .expect("failed");
    assert_eq!(event(outbox, e1).await, parked);

    // The operator puts it back, due now; only a parked event comes back.
    assert!(
        outbox
            .retry_meter_event(e1, UnixMillis(DAY0 + 600))
            .await
            .expect("retry")
    );
    let retried = event(outbox, e1).await;
    assert_eq!(retried.status, OutboxStatus::Pending);
    assert_eq!(retried.next_attempt_at, UnixMillis(DAY0 + 600));
    assert_eq!(retried.attempts, 2);
    assert!(
        !outbox
            .retry_meter_event(e1, UnixMillis(DAY0 + 700))
            .await
            .expect("retry")
    );
    assert!(
        !outbox
            .retry_meter_event(e2, UnixMillis(DAY0 + 700))
            .await
            .expect("retry")
    );
    assert!(
        !outbox
            .retry_meter_event(999_999, UnixMillis(DAY0 + 700))
            .await
            .expect("retry")
    );
    assert_eq!(due(600, 10).await, [e3, e2, e4, e1]);

    // Sent: pending and parked events; a sent one keeps its first time.
    outbox
        .mark_meter_event_failed(e4, "bad request", None)
        .await
        .expect("park");
    outbox
        .mark_meter_events_sent(&[e3, e1, e4, e3], UnixMillis(DAY0 + 800))
        .await
        .expect("sent");
    outbox
        .mark_meter_events_sent(&[e1, 999_999], UnixMillis(DAY0 + 900))
        .await
        .expect("sent again");
    outbox
        .mark_meter_events_sent(&[], UnixMillis(DAY0 + 900))
        .await
        .expect("nothing sent");
    for id in [e1, e3, e4] {
        let sent = event(outbox, id).await;
        assert_eq!(sent.status, OutboxStatus::Sent, "{sent:?}");
        assert_eq!(sent.sent_at, Some(UnixMillis(DAY0 + 800)));
    }
    // A failure reported late does not undo a send.
    let sent = event(outbox, e1).await;
    outbox
        .mark_meter_event_failed(e1, "late", None)
        .await
        .expect("failed");
    assert_eq!(event(outbox, e1).await, sent);
    assert_eq!(due(10_000, 10).await, [e2]);
    outbox
        .mark_meter_events_sent(&[e2], UnixMillis(DAY0 + 1_000))
        .await
        .expect("sent");
    assert!(due(10_000, 10).await.is_empty());
    let last = event(outbox, e2).await;
    assert_eq!((last.attempts, last.last_error), (0, None));
}

async fn outbox_batches_are_claimed_once_failed_and_retried_whole(db: TestDb) {
    let store = db.open().await;
    let outbox: &dyn MeterOutbox = &*store;
    let a = new_customer(&store, "a").await;
    for (key, at) in [("b1", 100), ("b2", 200), ("b3", 300)] {
        store
            .meter_usage(&usage(&a, key, 2, DAY0 + at))
            .await
            .expect("meter");
    }
    let all = events(outbox, all_events()).await;
    let [e1, e2, e3] = [all[0].id, all[1].id, all[2].id];
    assert!(all.iter().all(|e| e.batch.is_none()));

    // Two workers claim overlapping events at once: each event ends in one
    // batch, and a batch holds what its worker got.
    let (claim_one, claim_two) = ([e1, e2], [e2, e3]);
    let (first, second) = tokio::join!(
        outbox.claim_meter_batch(&claim_one, "batch-one"),
        outbox.claim_meter_batch(&claim_two, "batch-two"),
    );
    first.expect("claim one");
    second.expect("claim two");
    let one = ids(&outbox.meter_batch("batch-one").await.expect("one"));
    let two = ids(&outbox.meter_batch("batch-two").await.expect("two"));
    let mut together = [one.clone(), two.clone()].concat();
    together.sort_unstable();
    assert_eq!(together, [e1, e2, e3], "one: {one:?}, two: {two:?}");
    assert!(one.contains(&e1) && two.contains(&e3));
    // A claimed event is not claimed again.
    outbox
        .claim_meter_batch(&[e1, e2, e3], "batch-three")
        .await
        .expect("claim three");
    assert!(
        outbox
            .meter_batch("batch-three")
            .await
            .expect("three")
            .is_empty()
    );
    assert!(
        outbox
            .meter_batch("no-such")
            .await
            .expect("none")
            .is_empty()
    );
    assert_eq!(event(outbox, e1).await.batch.as_deref(), Some("batch-one"));

    // A failed attempt moves the whole batch, and only that batch.
    outbox
        .mark_meter_batch_failed("batch-one", "503", Some(UnixMillis(DAY0 + 5_000)))
        .await
        .expect("failed");
    for event in outbox.meter_batch("batch-one").await.expect("one") {
        assert_eq!(
            (
                event.attempts,
                event.next_attempt_at,
                event.last_error.as_deref()
            ),
            (1, UnixMillis(DAY0 + 5_000), Some("503"))
        );
    }
    assert_eq!(event(outbox, e3).await.attempts, 0);
    // Parked as a whole; retrying any one of its events brings all back.
    outbox
        .mark_meter_batch_failed("batch-one", "400 bad", None)
        .await
        .expect("parked");
    let parked = outbox.meter_batch("batch-one").await.expect("one");
    assert!(parked.iter().all(|e| e.status == OutboxStatus::Parked));
    let last = *one.last().expect("one has events");
    assert!(
        outbox
            .retry_meter_event(last, UnixMillis(DAY0 + 9_000))
            .await
            .expect("retry")
    );
    for event in outbox.meter_batch("batch-one").await.expect("one") {
        assert_eq!(
            (event.status, event.next_attempt_at, event.attempts),
            (OutboxStatus::Pending, UnixMillis(DAY0 + 9_000), 2)
        );
    }
    // Sent events are not claimed, failed or retried any more.
    outbox
        .mark_meter_events_sent(&one, UnixMillis(DAY0 + 9_500))
        .await
        .expect("sent");
    outbox
        .mark_meter_batch_failed("batch-one", "late", None)
        .await
        .expect("no-op");
    assert!(
        outbox
            .meter_batch("batch-one")
            .await
            .expect("one")
            .iter()
            .all(|e| e.status == OutboxStatus::Sent && e.last_error.as_deref() == Some("400 bad"))
    );
}

async fn outbox_events_are_filtered_and_paged(db: TestDb) {
    let store = db.open().await;
    let outbox: &dyn MeterOutbox = &*store;
    let a = new_customer(&store, "a").await;
    let b = new_customer(&store, "b").await;
    for n in 0..5 {
        store
            .meter_usage(&usage(&a, &format!("a{n}"), n, DAY0 + n))
            .await
            .expect("meter");
        store
            .meter_usage(&usage(&b, &format!("b{n}"), n, DAY0 + n))
            .await
            .expect("meter");
    }
    let everything = events(outbox, all_events()).await;
    assert_eq!(everything.len(), 10);
    assert!(everything.windows(2).all(|w| w[0].id < w[1].id));
    let identifiers = |events: &[MeterEvent]| -> Vec<String> {
        events.iter().map(|e| e.identifier.clone()).collect()
    };
    assert_eq!(
        identifiers(&everything),
        [
            "call_a0", "call_b0", "call_a1", "call_b1", "call_a2", "call_b2", "call_a3", "call_b3",
            "call_a4", "call_b4"
        ]
    );
    outbox
        .mark_meter_events_sent(&[everything[0].id, everything[3].id], UnixMillis(DAY0 + 10))
        .await
        .expect("sent");
    outbox
        .mark_meter_event_failed(everything[5].id, "gone", None)
        .await
        .expect("park");

    let page = |status: Option<OutboxStatus>,
                customer: Option<&CustomerId>,
                after_id: Option<i64>,
                limit: u32| {
        let filter = OutboxFilter {
            status,
            customer: customer.cloned(),
            after_id,
            limit,
        };
        async move { identifiers(&events(outbox, filter).await) }
    };
    assert_eq!(
        page(Some(OutboxStatus::Sent), None, None, 100).await,
        ["call_a0", "call_b1"]
    );
    assert_eq!(
        page(Some(OutboxStatus::Parked), None, None, 100).await,
        ["call_b2"]
    );
    assert_eq!(
        page(Some(OutboxStatus::Pending), None, None, 100)
            .await
            .len(),
        7
    );
    assert_eq!(
        page(Some(OutboxStatus::Pending), Some(&b), None, 100).await,
        ["call_b0", "call_b3", "call_b4"]
    );
    assert_eq!(page(None, Some(&a), None, 2).await, ["call_a0", "call_a1"]);
    assert_eq!(
        page(None, Some(&a), Some(everything[2].id), 2).await,
        ["call_a2", "call_a3"]
    );
    assert_eq!(
        page(None, None, Some(everything[7].id), 100).await,
        ["call_a4", "call_b4"]
    );
    assert!(page(None, None, None, 0).await.is_empty());
    assert!(
        page(None, Some(&CustomerId::new("cus_nobody")), None, 100)
            .await
            .is_empty()
    );
}

async fn a_reset_grant_expires_the_balance(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    operator_grant(ledger, &a, 30, "welcome").await;
    assert_eq!(
        ledger
            .periodic_grant(&periodic(&a, DAY0, 100, GrantMode::Reset))
            .await
            .expect("grant"),
        GrantOutcome::Granted {
            expired: 30,
            balance: 100
        }
    );
    assert_eq!(
        ledger
            .periodic_grant(&periodic(&a, DAY0, 100, GrantMode::Reset))
            .await
            .expect("grant"),
        GrantOutcome::AlreadyGranted
    );
    let entries = entries_of(ledger, &a).await;
    assert_eq!(
        keys_of(&entries),
        [
            "welcome",
            &format!("period-expiry:pro:{DAY0}"),
            &format!("period-grant:pro:{DAY0}")
        ]
    );
    let (expiry, grant) = (&entries[1], &entries[2]);
    assert_eq!(
        (expiry.kind, expiry.amount, expiry.balance_after),
        (EntryKind::Expiry, -30, Some(0))
    );
    assert_eq!(
        (grant.kind, grant.amount, grant.balance_after),
        (EntryKind::Grant, 100, Some(100))
    );
    for entry in [expiry, grant] {
        assert_eq!(entry.unit, "credits");
        assert_eq!(entry.plan_id.as_deref(), Some("pro"));
        assert_eq!(entry.created_at, UnixMillis(DAY0 + 1));
        assert_eq!(entry.call_id, None);
    }
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 100);

    // The next period resets again; spending in between expires less.
    let month = 30 * DAY_MS;
    operator_grant(ledger, &a, 5, "bonus").await;
    assert_eq!(
        ledger
            .periodic_grant(&periodic(&a, DAY0 + month, 100, GrantMode::Reset))
            .await
            .expect("grant"),
        GrantOutcome::Granted {
            expired: 105,
            balance: 100
        }
    );
    // Another plan's grant for the same period is a grant of its own.
    let other_plan = PeriodicGrant {
        plan_id: "addon".into(),
        ..periodic(&a, DAY0 + month, 7, GrantMode::Rollover { cap: None })
    };
    assert_eq!(
        ledger.periodic_grant(&other_plan).await.expect("grant"),
        GrantOutcome::Granted {
            expired: 0,
            balance: 107
        }
    );
    assert_eq!(entries_of(ledger, &a).await.len(), 7);
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 107);

    // A first grant creates the balance: nothing to expire.
    let b = new_customer(&store, "b").await;
    assert_eq!(
        ledger
            .periodic_grant(&periodic(&b, DAY0, 50, GrantMode::Reset))
            .await
            .expect("grant"),
        GrantOutcome::Granted {
            expired: 0,
            balance: 50
        }
    );
    assert_eq!(
        keys_of(&entries_of(ledger, &b).await),
        [format!("period-grant:pro:{DAY0}")]
    );
    assert_eq!(assert_ledger_adds_up(ledger, &b).await, 50);
}

async fn a_rollover_grant_carries_up_to_its_cap(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    operator_grant(ledger, &a, 70, "start").await;
    let rollover = GrantMode::Rollover { cap: Some(50) };
    assert_eq!(
        ledger
            .periodic_grant(&periodic(&a, DAY0, 100, rollover))
            .await
            .expect("grant"),
        GrantOutcome::Granted {
            expired: 20,
            balance: 150
        }
    );
    let entries = entries_of(ledger, &a).await;
    assert_eq!(entries.len(), 3);
    assert_eq!(
        (entries[1].kind, entries[1].amount, entries[1].balance_after),
        (EntryKind::Expiry, -20, Some(50))
    );
    assert_eq!(
        entries[1].idempotency_key,
        format!("period-expiry:pro:{DAY0}")
    );
    assert_eq!(
        (entries[2].kind, entries[2].amount, entries[2].balance_after),
        (EntryKind::Grant, 100, Some(150))
    );
    assert_eq!(
        ledger
            .periodic_grant(&periodic(&a, DAY0, 100, rollover))
            .await
            .expect("grant"),
        GrantOutcome::AlreadyGranted
    );
    // Under the cap nothing expires and there is no expiry entry.
    let next = DAY0 + 30 * DAY_MS;
    assert_eq!(
        ledger
            .periodic_grant(&periodic(
                &a,
                next,
                10,
                GrantMode::Rollover { cap: Some(500) }
            ))
            .await
            .expect("grant"),
        GrantOutcome::Granted {
            expired: 0,
            balance: 160
        }
    );
    assert_eq!(
        keys_of(&entries_of(ledger, &a).await)[3..],
        [format!("period-grant:pro:{next}")]
    );
    // A cap of 0 expires everything, like a reset.
    let third = next + 30 * DAY_MS;
    assert_eq!(
        ledger
            .periodic_grant(&periodic(
                &a,
                third,
                10,
                GrantMode::Rollover { cap: Some(0) }
            ))
            .await
            .expect("grant"),
        GrantOutcome::Granted {
            expired: 160,
            balance: 10
        }
    );
    assert_eq!(entries_of(ledger, &a).await.len(), 6);
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 10);
}

async fn a_rollover_grant_without_cap_carries_everything(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    operator_grant(ledger, &a, 70, "start").await;
    let rollover = GrantMode::Rollover { cap: None };
    assert_eq!(
        ledger
            .periodic_grant(&periodic(&a, DAY0, 100, rollover))
            .await
            .expect("grant"),
        GrantOutcome::Granted {
            expired: 0,
            balance: 170
        }
    );
    assert_eq!(
        ledger
            .periodic_grant(&periodic(&a, DAY0, 100, rollover))
            .await
            .expect("grant"),
        GrantOutcome::AlreadyGranted
    );
    let entries = entries_of(ledger, &a).await;
    assert_eq!(
        keys_of(&entries),
        ["start".to_owned(), format!("period-grant:pro:{DAY0}")]
    );
    assert_eq!(
        (entries[1].kind, entries[1].amount, entries[1].balance_after),
        (EntryKind::Grant, 100, Some(170))
    );
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 170);
}

async fn periodic_grants_are_checked(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    for bad in [
        periodic(&a, DAY0, 0, GrantMode::Reset),
        periodic(&a, DAY0, -5, GrantMode::Reset),
        periodic(&a, DAY0, 5, GrantMode::Rollover { cap: Some(-1) }),
        PeriodicGrant {
            plan_id: String::new(),
            ..periodic(&a, DAY0, 5, GrantMode::Reset)
        },
        PeriodicGrant {
            plan_id: "p".repeat(256),
            ..periodic(&a, DAY0, 5, GrantMode::Reset)
        },
    ] {
        assert!(
            matches!(ledger.periodic_grant(&bad).await, Err(StoreError::Other(_))),
            "{bad:?}"
        );
    }
    match ledger
        .periodic_grant(&periodic(
            &CustomerId::new("cus_nobody"),
            DAY0,
            5,
            GrantMode::Reset,
        ))
        .await
    {
        Err(StoreError::NotFound(message)) => assert_eq!(message, "customer cus_nobody"),
        other => panic!("unknown customer: {other:?}"),
    }
    assert!(entries_of(ledger, &a).await.is_empty());
    assert_eq!(ledger.balance(&a).await.expect("balance"), 0);
}

/// 50 copies of one period's grant at once, to a customer without a
/// balance row (they race to create it) and to one with a balance (they
/// queue on its row), while reservations-free operator grants also move it.
async fn concurrent_periodic_grants_apply_once(db: TestDb) {
    let store = db.open_wide().await;
    let fresh = new_customer(&store, "fresh").await;
    let funded = new_customer(&store, "funded").await;
    operator_grant(&*store, &funded, 40, "start").await;
    let mut tasks = Vec::new();
    for n in 0..50 {
        for (customer, mode) in [
            (&fresh, GrantMode::Rollover { cap: None }),
            (&funded, GrantMode::Reset),
        ] {
            let store = Arc::clone(&store);
            let g = periodic(customer, DAY0, 100, mode);
            let who = customer.clone();
            tasks.push(tokio::spawn(async move {
                (who, store.periodic_grant(&g).await.expect("grant"))
            }));
        }
        if n % 10 == 0 {
            let store = Arc::clone(&store);
            let funded = funded.clone();
            tasks.push(tokio::spawn(async move {
                operator_grant(&*store, &funded, 1, &format!("bonus{n}")).await;
                (funded, GrantOutcome::AlreadyGranted)
            }));
        }
    }
    let mut granted: BTreeMap<CustomerId, Vec<GrantOutcome>> = BTreeMap::new();
    let mut replays = 0;
    for task in tasks {
        match task.await.expect("task") {
            (who, outcome @ GrantOutcome::Granted { .. }) => {
                granted.entry(who).or_default().push(outcome)
            }
            (_, GrantOutcome::AlreadyGranted) => replays += 1,
        }
    }
    // 2 × 49 replays, plus the 5 operator grants counted with them.
    assert_eq!(replays, 98 + 5);
    assert_eq!(
        granted.get(&fresh),
        Some(&vec![GrantOutcome::Granted {
            expired: 0,
            balance: 100
        }])
    );
    assert_eq!(granted.get(&funded).map(Vec::len), Some(1));
    assert_eq!(assert_ledger_adds_up(&*store, &fresh).await, 100);
    assert_eq!(entries_of(&*store, &fresh).await.len(), 1);
    // The reset expired whatever the funded balance held when it ran, and
    // the operator grants after it are on top.
    let funded_balance = assert_ledger_adds_up(&*store, &funded).await;
    let entries = entries_of(&*store, &funded).await;
    let grants = entries
        .iter()
        .filter(|e| e.idempotency_key.starts_with("period-grant:"))
        .count();
    let expiries = entries
        .iter()
        .filter(|e| e.idempotency_key.starts_with("period-expiry:"))
        .count();
    assert_eq!((grants, expiries), (1, 1));
    assert_eq!(entries.len(), 1 + 5 + 2);
    let after_reset = entries
        .iter()
        .skip_while(|e| !e.idempotency_key.starts_with("period-grant:"))
        .count() as i64;
    assert_eq!(funded_balance, 100 + (after_reset - 1));
}

async fn subscriptions_are_created_and_changed(db: TestDb) {
    let store = db.open().await;
    let a = new_customer(&store, "a").await;
    let b = new_customer(&store, "b").await;
    assert_eq!(store.subscription(&a).await.expect("read"), None);

    let created = store
        .set_subscription(&SubscriptionChange {
            current_period: Some((UnixMillis(DAY0), UnixMillis(DAY0 + 30 * DAY_MS))),
            external_id: Some("sub_123".into()),
            ..subscription_change(&a, "pro", SubscriptionStatus::Trialing, DAY0 + 10)
        })
        .await
        .expect("create");
    assert_eq!(
        created,
        Subscription {
            customer_id: a.clone(),
            plan_id: "pro".into(),
            status: SubscriptionStatus::Trialing,
            started_at: UnixMillis(DAY0 + 10),
            past_due_since: None,
            current_period_start: Some(UnixMillis(DAY0)),
            current_period_end: Some(UnixMillis(DAY0 + 30 * DAY_MS)),
            external_id: Some("sub_123".into()),
            updated_at: UnixMillis(DAY0 + 10),
        }
    );
    assert_eq!(
        store.subscription(&a).await.expect("read"),
        Some(created.clone())
    );
    let customer = store
        .find_customer(&a)
        .await
        .expect("find")
        .expect("customer");
    assert_eq!(customer.plan_id.as_deref(), Some("pro"));
    assert_eq!(customer.updated_at, UnixMillis(DAY0 + 10));

    // Becomes past due: the time is set, the provider's fields are kept.
    let due = store
        .set_subscription(&subscription_change(
            &a,
            "pro",
            SubscriptionStatus::PastDue,
            DAY0 + 20,
        ))
        .await
        .expect("past due");
    assert_eq!(due.past_due_since, Some(UnixMillis(DAY0 + 20)));
    assert_eq!(due.started_at, UnixMillis(DAY0 + 10));
    assert_eq!(due.external_id.as_deref(), Some("sub_123"));
    assert_eq!(due.current_period_start, Some(UnixMillis(DAY0)));
    // Stays past due: the first time is kept.
    let still = store
        .set_subscription(&subscription_change(
            &a,
            "pro",
            SubscriptionStatus::PastDue,
            DAY0 + 30,
        ))
        .await
        .expect("still past due");
    assert_eq!(still.past_due_since, Some(UnixMillis(DAY0 + 20)));
    assert_eq!(still.updated_at, UnixMillis(DAY0 + 30));
    assert_eq!(store.subscription(&a).await.expect("read"), Some(still));
    // Paid, on another plan, in a new period: cleared.
    let paid = store
        .set_subscription(&SubscriptionChange {
            current_period: Some((
                UnixMillis(DAY0 + 30 * DAY_MS),
                UnixMillis(DAY0 + 60 * DAY_MS),
            )),
            ..subscription_change(&a, "team", SubscriptionStatus::Active, DAY0 + 40)
        })
        .await
        .expect("active");
    assert_eq!(paid.past_due_since, None);
    assert_eq!(paid.plan_id, "team");
    assert_eq!(
        paid.current_period_end,
        Some(UnixMillis(DAY0 + 60 * DAY_MS))
    );
    assert_eq!(store.subscription(&a).await.expect("read"), Some(paid));
    let customer = store
        .find_customer(&a)
        .await
        .expect("find")
        .expect("customer");
    assert_eq!(customer.plan_id.as_deref(), Some("team"));
    assert_eq!(customer.updated_at, UnixMillis(DAY0 + 40));
    // Past due again, then canceled: set anew, then cleared. A given start
    // and external id replace the stored ones.
    let again = store
        .set_subscription(&subscription_change(
            &a,
            "team",
            SubscriptionStatus::PastDue,
            DAY0 + 50,
        ))
        .await
        .expect("past due again");
    assert_eq!(again.past_due_since, Some(UnixMillis(DAY0 + 50)));
    let canceled = store
        .set_subscription(&SubscriptionChange {
            started_at: Some(UnixMillis(DAY0 - 5)),
            external_id: Some("sub_456".into()),
            ..subscription_change(&a, "team", SubscriptionStatus::Canceled, DAY0 + 60)
        })
        .await
        .expect("canceled");
    assert_eq!(canceled.past_due_since, None);
    assert_eq!(canceled.started_at, UnixMillis(DAY0 - 5));
    assert_eq!(canceled.external_id.as_deref(), Some("sub_456"));
    // The freed external id can be another customer's now; a taken one
    // cannot, and nothing of that change is written.
    let b_sub = store
        .set_subscription(&SubscriptionChange {
            external_id: Some("sub_123".into()),
            ..subscription_change(&b, "pro", SubscriptionStatus::Active, DAY0 + 70)
        })
        .await
        .expect("b");
    assert_eq!(b_sub.external_id.as_deref(), Some("sub_123"));
    let stolen = store
        .set_subscription(&SubscriptionChange {
            external_id: Some("sub_456".into()),
            ..subscription_change(&b, "team", SubscriptionStatus::Active, DAY0 + 80)
        })
        .await;
    assert!(matches!(stolen, Err(StoreError::Conflict(_))), "{stolen:?}");
    assert_eq!(store.subscription(&b).await.expect("read"), Some(b_sub));
    let customer_b = store
        .find_customer(&b)
        .await
        .expect("find")
        .expect("customer");
    assert_eq!(customer_b.plan_id.as_deref(), Some("pro"));
    assert_eq!(customer_b.updated_at, UnixMillis(DAY0 + 70));
    // A new customer's first change with its own external id.
    let c = new_customer(&store, "c").await;
    let conflict = store
        .set_subscription(&SubscriptionChange {
            external_id: Some("sub_123".into()),
            ..subscription_change(&c, "pro", SubscriptionStatus::Active, DAY0 + 90)
        })
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict(_))),
        "{conflict:?}"
    );
    assert_eq!(store.subscription(&c).await.expect("read"), None);

    match store
        .set_subscription(&subscription_change(
            &CustomerId::new("cus_nobody"),
            "pro",
            SubscriptionStatus::Active,
            DAY0,
        ))
        .await
    {
        Err(StoreError::NotFound(message)) => assert_eq!(message, "customer cus_nobody"),
        other => panic!("unknown customer: {other:?}"),
    }
    assert_eq!(
        store
            .subscription(&CustomerId::new("cus_nobody"))
            .await
            .expect("read"),
        None
    );
}

async fn subscription_statuses_round_trip(db: TestDb) {
    let store = db.open().await;
    let a = new_customer(&store, "a").await;
    for (n, status) in SubscriptionStatus::ALL.into_iter().enumerate() {
        let set = store
            .set_subscription(&subscription_change(&a, "pro", status, DAY0 + n as i64))
            .await
            .expect("set");
        assert_eq!(set.status, status);
        assert_eq!(store.subscription(&a).await.expect("read"), Some(set));
    }
}

async fn subscription_changes_are_checked(db: TestDb) {
    let store = db.open().await;
    let a = new_customer(&store, "a").await;
    for bad in [
        subscription_change(&a, "", SubscriptionStatus::Active, DAY0),
        subscription_change(&a, &"p".repeat(256), SubscriptionStatus::Active, DAY0),
        SubscriptionChange {
            external_id: Some(String::new()),
            ..subscription_change(&a, "pro", SubscriptionStatus::Active, DAY0)
        },
        SubscriptionChange {
            current_period: Some((UnixMillis(DAY0), UnixMillis(DAY0 - 1))),
            ..subscription_change(&a, "pro", SubscriptionStatus::Active, DAY0)
        },
    ] {
        assert!(
            matches!(
                store.set_subscription(&bad).await,
                Err(StoreError::Other(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(store.subscription(&a).await.expect("read"), None);
    let customer = store
        .find_customer(&a)
        .await
        .expect("find")
        .expect("customer");
    assert_eq!(customer.plan_id.as_deref(), Some("free"));
}

async fn derived_idempotency_keys_are_refused_to_operators(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    for key in [
        "quota:k:1",
        "unquota:k:1",
        "usage:k",
        "period-grant:pro:1",
        "period-expiry:pro:1",
        "reserve:k:1",
    ] {
        let outcome = ledger
            .change_balance(&BalanceChange {
                customer_id: a.clone(),
                kind: EntryKind::Grant,
                amount: 5,
                idempotency_key: key.into(),
                reason: None,
                at: UnixMillis(DAY0),
            })
            .await;
        assert!(
            matches!(outcome, Err(StoreError::Other(_))),
            "{key}: {outcome:?}"
        );
    }
    // A key that only looks alike is the operator's.
    operator_grant(ledger, &a, 5, "quota-bonus").await;
    assert_eq!(keys_of(&entries_of(ledger, &a).await), ["quota-bonus"]);
}

/// What an unclean stop leaves behind, found and repaired by the store:
/// reservations still held, settled calls whose usage record was lost.
mod recovery {
    use std::sync::Arc;

    use mcp_meter::store::{Store, UsageFilter};
    use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
    use mcp_meter_plugin::ledger::{
        ChargeKey, HeldReservation, Ledger, Reservation, ReserveOutcome, SettleOutcome, Settlement,
        UnrecordedCharge,
    };
    use mcp_meter_plugin::ports::{UsageOutcome, UsageRecord, UsageSink};

    use super::{DAY0, new_customer, operator_grant};
    use crate::common::db::TestDb;
    use crate::each_backend;

    const EVERYTHING: UnixMillis = UnixMillis(i64::MIN);

    each_backend!(
        held_reservations_are_oldest_first_before_the_horizon,
        unrecorded_charges_are_settled_calls_without_a_record,
        a_recovered_call_is_recorded_once,
    );

    async fn reserve(ledger: &dyn Ledger, customer: &CustomerId, key: &str, at: i64) -> i64 {
        let outcome = ledger
            .reserve(&Reservation {
                customer_id: customer.clone(),
                charge_key: ChargeKey::new(key),
                call_id: CallId::new(format!("call_{key}")),
                amount: 2,
                plan_id: "starter".into(),
                tool: Some("echo".into()),
                at: UnixMillis(DAY0 + at),
            })
            .await
            .expect("reserve");
        match outcome {
            ReserveOutcome::Reserved { attempt, .. } => attempt,
            other => panic!("{key}: {other:?}"),
        }
    }

    async fn settle(
        ledger: &dyn Ledger,
        customer: &CustomerId,
        key: &str,
        attempt: i64,
        refund: Option<&str>,
        at: i64,
    ) -> SettleOutcome {
        ledger
            .settle(&Settlement {
                customer_id: customer.clone(),
                charge_key: ChargeKey::new(key),
                attempt,
                actual: 2,
                refund_reason: refund.map(Into::into),
                at: UnixMillis(DAY0 + at),
            })
            .await
            .expect("settle")
    }

    async fn held(ledger: &dyn Ledger, before: i64, limit: u32) -> Vec<(String, i64)> {
        ledger
            .held_reservations(UnixMillis(DAY0 + before), limit)
            .await
            .expect("held reservations")
            .into_iter()
            .map(|h| (h.charge_key.to_string(), h.attempt))
            .collect()
    }

    async fn unrecorded(ledger: &dyn Ledger, since: UnixMillis, before: i64) -> Vec<String> {
        ledger
            .unrecorded_charges(since, UnixMillis(DAY0 + before), 100)
            .await
            .expect("unrecorded charges")
            .into_iter()
            .map(|c| c.call_id.to_string())
            .collect()
    }

    async fn held_reservations_are_oldest_first_before_the_horizon(db: TestDb) {
        let store = db.open().await;
        let ledger: &dyn Ledger = &*store;
        let a = new_customer(&store, "a").await;
        let b = new_customer(&store, "b").await;
        operator_grant(ledger, &a, 100, "a-start").await;
        operator_grant(ledger, &b, 100, "b-start").await;
        reserve(ledger, &a, "k1", 3_000).await;
        reserve(ledger, &b, "k2", 1_000).await;
        reserve(ledger, &a, "k3", 2_000).await;
        reserve(ledger, &a, "k4", 5_000).await;
        settle(ledger, &a, "k3", 1, None, 2_500).await;

        // Oldest first, strictly before the horizon, settled ones left out.
        assert_eq!(
            held(ledger, 5_000, 10).await,
            [("k2".to_owned(), 1), ("k1".to_owned(), 1)]
        );
        assert_eq!(held(ledger, 5_001, 1).await, [("k2".to_owned(), 1)]);
        assert!(held(ledger, 1_000, 10).await.is_empty());
        let all = ledger
            .held_reservations(UnixMillis(DAY0 + 1_001), 10)
            .await
            .expect("held");
        assert_eq!(
            all,
            [HeldReservation {
                customer_id: b.clone(),
                charge_key: ChargeKey::new("k2"),
                attempt: 1,
                call_id: CallId::new("call_k2"),
                amount: 2,
                plan_id: "starter".into(),
                tool: Some("echo".into()),
                reserved_at: UnixMillis(DAY0 + 1_000),
            }]
        );

        // Refunded as abandoned it is no longer held, once; the call may
        // reserve again, and that attempt is held from its own time.
        assert!(matches!(
            settle(ledger, &a, "k1", 1, Some("abandoned"), 9_000).await,
            SettleOutcome::Applied { returned: 2, .. }
        ));
        assert_eq!(
            settle(ledger, &a, "k1", 1, None, 9_001).await,
            SettleOutcome::AlreadySettled
        );
        assert_eq!(
            held(ledger, 9_000, 10).await,
            [("k2".to_owned(), 1), ("k4".to_owned(), 1)]
        );
        assert_eq!(reserve(ledger, &a, "k1", 10_000).await, 2);
        assert_eq!(
            held(ledger, 20_000, 10).await,
            [
                ("k2".to_owned(), 1),
                ("k4".to_owned(), 1),
                ("k1".to_owned(), 2)
            ]
        );
        assert_eq!(ledger.balance(&a).await.expect("balance"), 100 - 2 - 2 - 2);
    }

    /// Settles `key` (reserved at `at`) at `at + 500`.
    async fn charged(ledger: &dyn Ledger, customer: &CustomerId, key: &str, at: i64) {
        let attempt = reserve(ledger, customer, key, at).await;
        settle(ledger, customer, key, attempt, None, at + 500).await;
    }

    async fn record_real(store: &Arc<dyn Store>, customer: &CustomerId, key: &str, at: i64) {
        let sink: &dyn UsageSink = &**store;
        sink.record_usage(&[UsageRecord {
            call_id: CallId::new(format!("call_{key}")),
            customer_id: Some(customer.clone()),
            key_id: None,
            session_id: None,
            method: "tools/call".into(),
            tool: Some("echo".into()),
            started_at: UnixMillis(DAY0 + at),
            duration_us: 1_000,
            bytes_in: 10,
            bytes_out: 20,
            outcome: UsageOutcome::Ok,
            reason: None,
            units: 1,
        }])
        .await
        .expect("record usage");
    }

    async fn unrecorded_charges_are_settled_calls_without_a_record(db: TestDb) {
        let store = db.open().await;
        let ledger: &dyn Ledger = &*store;
        let a = new_customer(&store, "a").await;
        operator_grant(ledger, &a, 100, "start").await;
        charged(ledger, &a, "c1", 500).await; // settled at 1,000
        charged(ledger, &a, "c2", 1_500).await; // settled at 2,000, recorded
        charged(ledger, &a, "c3", 2_500).await; // settled at 3,000
        reserve(ledger, &a, "c4", 100).await; // still held
        let attempt = reserve(ledger, &a, "c5", 200).await;
        settle(ledger, &a, "c5", attempt, Some("error"), 1_200).await; // refunded
        record_real(&store, &a, "c2", 1_500).await;

        assert_eq!(
            unrecorded(ledger, EVERYTHING, 10_000).await,
            ["call_c1", "call_c3"]
        );
        // The horizon is strict, `since` inclusive.
        assert_eq!(unrecorded(ledger, EVERYTHING, 3_000).await, ["call_c1"]);
        assert_eq!(
            unrecorded(ledger, UnixMillis(DAY0 + 3_000), 10_000).await,
            ["call_c3"]
        );
        assert!(
            unrecorded(ledger, UnixMillis(DAY0 + 3_001), 10_000)
                .await
                .is_empty()
        );
        let first = ledger
            .unrecorded_charges(EVERYTHING, UnixMillis(DAY0 + 10_000), 1)
            .await
            .expect("unrecorded");
        assert_eq!(
            first,
            [UnrecordedCharge {
                customer_id: a.clone(),
                call_id: CallId::new("call_c1"),
                plan_id: "starter".into(),
                tool: Some("echo".into()),
                amount: 2,
                settled_at: UnixMillis(DAY0 + 1_000),
            }]
        );
    }

    async fn a_recovered_call_is_recorded_once(db: TestDb) {
        let store = db.open().await;
        let ledger: &dyn Ledger = &*store;
        let a = new_customer(&store, "a").await;
        operator_grant(ledger, &a, 100, "start").await;
        charged(ledger, &a, "c1", 500).await;
        charged(ledger, &a, "c2", 1_500).await;
        record_real(&store, &a, "c2", 1_500).await;
        let lost = ledger
            .unrecorded_charges(EVERYTHING, UnixMillis(DAY0 + 10_000), 10)
            .await
            .expect("unrecorded");
        assert_eq!(lost.len(), 1, "{lost:?}");

        assert!(
            ledger
                .record_recovered_call(&lost[0])
                .await
                .expect("record")
        );
        assert!(!ledger.record_recovered_call(&lost[0]).await.expect("again"));
        assert!(
            unrecorded(ledger, EVERYTHING, 10_000).await.is_empty(),
            "nothing is left to recover"
        );
        // A call with its own record keeps it.
        let c2 = UnrecordedCharge {
            call_id: CallId::new("call_c2"),
            ..lost[0].clone()
        };
        assert!(!ledger.record_recovered_call(&c2).await.expect("recorded"));

        let filter = UsageFilter {
            customer: Some(a.clone()),
            since: None,
            until: None,
            limit: 100,
            ..UsageFilter::default()
        };
        let records = store.usage_records(&filter).await.expect("records");
        let outcomes: Vec<(&str, UsageOutcome)> = records
            .iter()
            .map(|r| (r.call_id.as_str(), r.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("call_c1", UsageOutcome::Recovered),
                ("call_c2", UsageOutcome::Ok)
            ]
        );
        let recovered = &records[0];
        assert_eq!(recovered.customer_id.as_ref(), Some(&a));
        assert_eq!(recovered.method, "tools/call");
        assert_eq!(recovered.tool.as_deref(), Some("echo"));
        assert_eq!(recovered.started_at, UnixMillis(DAY0 + 1_000));
        assert_eq!(
            (
                recovered.duration_us,
                recovered.bytes_in,
                recovered.bytes_out
            ),
            (0, 0, 0)
        );
        assert_eq!(recovered.units, 1);
        assert_eq!(
            recovered.reason.as_deref(),
            Some("recovered from the ledger after an unclean stop")
        );
        // The roll-up counts it as a call, not an error.
        let daily = store.usage_daily(&filter).await.expect("daily");
        assert_eq!(daily.len(), 1, "{daily:?}");
        assert_eq!((daily[0].calls, daily[0].errors, daily[0].units), (2, 0, 2));
    }
}

/// `retry_webhook_event` puts a failed event back in the queue, due at
/// once with its failed attempts kept; a pending or processed event, or
/// an unknown id, is left alone and answered `false`.
async fn only_a_failed_webhook_event_is_requeued(db: TestDb) {
    use mcp_meter::store::{NewWebhookEvent, WebhookStatus};
    let store = db.open().await;
    for id in ["evt_failed", "evt_pending", "evt_done"] {
        let stored = store
            .insert_webhook_event(&NewWebhookEvent {
                id: id.into(),
                event_type: "invoice.paid".into(),
                created: 1_773_446_400,
                payload: format!("{{\"id\":\"{id}\"}}"),
                received_at: UnixMillis(1_000),
            })
            .await
            .expect("insert");
        assert!(stored);
    }
    store
        .mark_webhook_event_failed("evt_failed", "boom", None)
        .await
        .expect("failed");
    store
        .mark_webhook_event_processed("evt_done", UnixMillis(2_000))
        .await
        .expect("processed");
    assert!(
        store
            .due_webhook_events(UnixMillis(5_000), 10)
            .await
            .expect("due")
            .iter()
            .all(|e| e.id != "evt_failed")
    );

    for id in ["evt_pending", "evt_done", "evt_nobody"] {
        assert!(
            !store
                .retry_webhook_event(id, UnixMillis(5_000))
                .await
                .expect("retry"),
            "{id}"
        );
    }
    assert!(
        store
            .retry_webhook_event("evt_failed", UnixMillis(5_000))
            .await
            .expect("retry")
    );
    // Once pending again, a second retry has nothing to do.
    assert!(
        !store
            .retry_webhook_event("evt_failed", UnixMillis(6_000))
            .await
            .expect("retry")
    );
    let event = store
        .webhook_event("evt_failed")
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(event.status, WebhookStatus::Pending);
    assert_eq!(event.attempts, 1);
    let due: Vec<String> = store
        .due_webhook_events(UnixMillis(5_000), 10)
        .await
        .expect("due")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(due.contains(&"evt_failed".to_owned()), "{due:?}");
    let done = store
        .webhook_event("evt_done")
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(done.status, WebhookStatus::Processed);
}

/// What one call of a hot path's write came to, for counting.
fn label<T: std::fmt::Debug>(outcome: &T) -> String {
    let text = format!("{outcome:?}");
    text.split([' ', '(', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every kind of hot-path write — reservations, charges, quota takes and
/// releases, metered usage, with replays — of three customers at once:
/// the store batches them together, and every customer's books come out
/// as if each write had run alone.
async fn every_hot_path_write_at_once_stays_exact(db: TestDb) {
    let store = db.open_wide().await;
    let mut customers = Vec::new();
    for n in 0..3 {
        let customer = new_customer(&store, &format!("c{n}")).await;
        let grant = BalanceChange {
            customer_id: customer.clone(),
            kind: EntryKind::Grant,
            amount: 100,
            idempotency_key: "g".into(),
            reason: None,
            at: UnixMillis(DAY0),
        };
        store.change_balance(&grant).await.expect("grant");
        customers.push(customer);
    }
    let mut writes = Vec::new();
    for c in &customers {
        for n in 0..30 {
            let (store, c) = (Arc::clone(&store), c.clone());
            writes.push(tokio::spawn(async move {
                let reservation = Reservation {
                    customer_id: c.clone(),
                    charge_key: ChargeKey::new(format!("r{n}")),
                    call_id: CallId::new(format!("call_r{n}")),
                    amount: 1,
                    plan_id: "prepaid".into(),
                    tool: None,
                    at: UnixMillis(DAY0 + 1_000),
                };
                let accrual = Accrual {
                    customer_id: c.clone(),
                    charge_key: ChargeKey::new(format!("a{}", n % 25)),
                    call_id: CallId::new(format!("call_a{n}")),
                    plan_id: "per-call".into(),
                    tool: None,
                    currency: "usd".into(),
                    counter: "calls".into(),
                    period_start: UnixMillis(DAY0),
                    schedule: PriceSchedule::Flat { price: 10 },
                    quantity: 1,
                    at: UnixMillis(DAY0 + 1_000),
                };
                let quota = take(&c, &format!("q{n}"), 1, Some(20));
                // Call ids are unique across customers (the meter event's
                // identifier at the payment provider).
                let metered = usage(&c, &format!("{c}-u{}", n % 25), n % 25, DAY0 + 1_000);
                let (reserved, accrued, taken, metered) = tokio::join!(
                    store.reserve(&reservation),
                    store.accrue(&accrual),
                    store.take_quota(&quota),
                    store.meter_usage(&metered),
                );
                [
                    label(&reserved.expect("reserve")),
                    label(&accrued.expect("accrue")),
                    label(&taken.expect("take")),
                    label(&metered.expect("meter")),
                ]
            }));
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for write in writes {
        for outcome in write.await.expect("task") {
            *counts.entry(outcome).or_default() += 1;
        }
    }
    // Per customer: 30 reservations; 25 charges and 5 replays of them; 20
    // takes under the cap and 10 refused; 25 usages and 5 replays.
    let expected = [
        ("Reserved".to_owned(), 90),
        ("Charged".to_owned(), 75),
        (label(&AccrueOutcome::AlreadyCharged), 15),
        ("Taken".to_owned(), 60),
        (label(&QuotaOutcome::Exhausted { used: 0 }), 30),
        (label(&MeterOutcome::Recorded), 75),
        (label(&MeterOutcome::AlreadyRecorded), 15),
    ];
    assert_eq!(counts, BTreeMap::from(expected));

    // Every take released at once, each twice.
    let releases = customers.iter().flat_map(|c| {
        (0..30).flat_map(move |n| [release(c, &format!("q{n}")), release(c, &format!("q{n}"))])
    });
    let released: Vec<_> = releases
        .map(|r| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { label(&store.release_quota(&r).await.expect("release")) })
        })
        .collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for release in released {
        *counts.entry(release.await.expect("task")).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([
            ("AlreadyReleased".to_owned(), 60),
            ("NotTaken".to_owned(), 60),
            ("Released".to_owned(), 60),
        ])
    );
    for c in &customers {
        assert_eq!(assert_ledger_adds_up(&*store, c).await, 70);
        assert_eq!(counter(&*store, c, DAY0).await, 0);
        assert_eq!(
            store
                .counter(c, "calls", UnixMillis(DAY0))
                .await
                .expect("counter"),
            25
        );
        let entries = entries_of(&*store, c).await;
        let charged: i64 = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Charge)
            .map(|e| e.amount)
            .sum();
        assert_eq!(charged, 250);
        let filter = OutboxFilter {
            customer: Some(c.clone()),
            ..all_events()
        };
        let events = events(&*store, filter).await;
        assert_eq!(events.len(), 25);
        assert_eq!(
            events.iter().map(|e| e.value).sum::<i64>(),
            (0..25).sum::<i64>()
        );
    }
}
