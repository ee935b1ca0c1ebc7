//! The SQL store against real databases: every scenario runs on SQLite (a
//! temporary file), PostgreSQL and MariaDB, each on a fresh database.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::db::{Kind, TestDb};
use mcp_meter::store::{
    self, Backend, DailyUsage, NewApiKey, OpenError, StoreOptions, UsageFilter,
};
use mcp_meter_plugin::identity::{CallId, CustomerId, CustomerStatus, KeyId, KeyScope, UnixMillis};
use mcp_meter_plugin::ports::{
    CustomerDirectory, NewCustomer, StoreError, UsageOutcome, UsageRecord,
};

/// 2026-03-14T00:00:00Z.
const DAY0: i64 = 1_773_446_400_000;
const DAY_MS: i64 = 86_400_000;

fn customer(name: &str) -> NewCustomer {
    NewCustomer {
        name: name.into(),
        email: Some(format!("{name}@example.com")),
        plan_id: Some("starter".into()),
        external_subject: None,
        metadata: serde_json::json!({"team": name, "seats": 3})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    }
}

fn with_subject(name: &str, subject: &str) -> NewCustomer {
    NewCustomer {
        external_subject: Some(subject.into()),
        ..customer(name)
    }
}

fn new_key(customer_id: &CustomerId, hash_byte: u8) -> NewApiKey {
    NewApiKey {
        customer_id: customer_id.clone(),
        key_hash: [hash_byte; 32],
        prefix: format!("mcp_{hash_byte:02x}ab"),
        name: Some("ci".into()),
        scope: KeyScope {
            tools: vec!["search_*".into()],
            methods: vec![],
        },
        expires_at: Some(UnixMillis(DAY0 + 30 * DAY_MS)),
    }
}

fn all(limit: u32) -> UsageFilter {
    UsageFilter {
        customer: None,
        since: None,
        until: None,
        limit,
        ..UsageFilter::default()
    }
}

const OUTCOMES: [UsageOutcome; 6] = [
    UsageOutcome::Ok,
    UsageOutcome::ToolError,
    UsageOutcome::UpstreamError,
    UsageOutcome::Refused,
    UsageOutcome::Timeout,
    UsageOutcome::Cancelled,
];

/// A varied record: customers, tools, outcomes and sizes cycle with `n`.
fn record(n: i64, customers: &[CustomerId], started_at: i64) -> UsageRecord {
    let customer = match n % 3 {
        0 => None,
        k => customers.get(k as usize - 1).cloned(),
    };
    let tool = match n % 4 {
        0 => None,
        1 => Some("echo".to_owned()),
        _ => Some("search_web".to_owned()),
    };
    let outcome = OUTCOMES[(n % 6) as usize];
    UsageRecord {
        call_id: CallId::new(format!("call_{n:06}")),
        customer_id: customer.clone(),
        key_id: customer.as_ref().map(|_| KeyId::new("key_test")),
        session_id: (n % 2 == 0).then(|| format!("session-{}", n % 5)),
        method: if tool.is_some() {
            "tools/call".into()
        } else {
            "tools/list".into()
        },
        tool,
        started_at: UnixMillis(started_at),
        duration_us: 100 + n * 7,
        bytes_in: 50 + n,
        bytes_out: if outcome == UsageOutcome::Refused {
            0
        } else {
            1_000 + n * 3
        },
        outcome,
        reason: (outcome == UsageOutcome::Refused).then(|| "out_of_scope".to_owned()),
        units: 1 + n % 3,
    }
}

/// The roll-up computed the slow way, from the raw records.
fn expected_daily(records: &[UsageRecord]) -> Vec<DailyUsage> {
    let mut groups: BTreeMap<(String, String, String, String), DailyUsage> = BTreeMap::new();
    for r in records {
        let day_index = (r.started_at.0 - DAY0).div_euclid(DAY_MS);
        let day = format!("2026-03-{:02}", 14 + day_index);
        let customer = r
            .customer_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let tool = r.tool.clone().unwrap_or_default();
        let row = groups
            .entry((day.clone(), customer, r.method.clone(), tool))
            .or_insert_with(|| DailyUsage {
                day,
                customer_id: r.customer_id.clone(),
                method: r.method.clone(),
                tool: r.tool.clone(),
                calls: 0,
                errors: 0,
                units: 0,
                duration_us: 0,
                bytes_in: 0,
                bytes_out: 0,
            });
        row.calls += 1;
        row.errors += i64::from(r.outcome != UsageOutcome::Ok);
        row.units += r.units;
        row.duration_us += r.duration_us;
        row.bytes_in += r.bytes_in;
        row.bytes_out += r.bytes_out;
    }
    groups.into_values().collect()
}

fn sorted(mut records: Vec<UsageRecord>) -> Vec<UsageRecord> {
    records.sort_by(|a, b| {
        (a.started_at, a.call_id.as_str()).cmp(&(b.started_at, b.call_id.as_str()))
    });
    records
}

fn backend_of(kind: Kind) -> Backend {
    match kind {
        Kind::Sqlite => Backend::Sqlite,
        Kind::Postgres => Backend::Postgres,
        Kind::MySql => Backend::MySql,
    }
}

each_backend!(
    migrations_apply_once,
    newer_database_is_refused,
    customers_page_and_change_status,
    keys_are_found_by_hash_and_revoked_once,
    provisioning_a_subject_yields_one_customer,
    touch_keys_keeps_the_latest_use,
    usage_batches_roll_up_exactly_once,
    concurrent_copies_of_a_batch_count_once,
    usage_across_midnight_lands_in_two_days,
    usage_records_and_roll_ups_are_filtered,
);

async fn migrations_apply_once(db: TestDb) {
    let first = store::migrate(&db.options()).await.expect("first migrate");
    assert_eq!(first.backend, backend_of(db.kind()));
    assert_eq!(
        first
            .applied_now
            .iter()
            .map(|m| m.version)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!(first.applied_now[0].description, "initial");
    assert_eq!(first.applied_now[1].description, "ledger");
    assert!(first.already_applied.is_empty());
    assert_eq!(first.current_version(), 7);

    let again = store::migrate(&db.options()).await.expect("second migrate");
    assert!(again.applied_now.is_empty(), "{again:?}");
    assert_eq!(again.already_applied, first.applied_now);

    // Opening applies nothing more and gives a working store, twice.
    for _ in 0..2 {
        let store = db.open().await;
        assert_eq!(store.backend(), backend_of(db.kind()));
        store.ping().await.expect("ping");
    }
}

async fn newer_database_is_refused(db: TestDb) {
    drop(db.open().await);
    let checksum = match db.kind() {
        Kind::Postgres => "'\\x00'::bytea",
        Kind::Sqlite | Kind::MySql => "X'00'",
    };
    db.execute(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, {checksum}, 0)"
    ))
    .await;

    for outcome in [
        store::open(&db.options()).await.map(|_| ()),
        store::migrate(&db.options()).await.map(|_| ()),
    ] {
        let error = outcome.expect_err("a newer database must be refused");
        assert!(
            matches!(
                error,
                OpenError::NewerSchema {
                    database: 9999,
                    binary: 7,
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("9999") && message.contains("up to 7"),
            "{message}"
        );
        assert!(message.contains("upgrade mcp-meter"), "{message}");
    }
}

async fn customers_page_and_change_status(db: TestDb) {
    let store = db.open().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let created = store
            .create_customer(customer(&format!("acme{n}")))
            .await
            .expect("create");
        assert!(CustomerId::parse(created.id.as_str()).is_some());
        assert_eq!(created.status, CustomerStatus::Active);
        assert_eq!(
            store.find_customer(&created.id).await.expect("find"),
            Some(created.clone())
        );
        ids.push(created.id);
    }
    ids.sort();

    let mut seen = Vec::new();
    let mut after: Option<CustomerId> = None;
    loop {
        let page = store.list_customers(after.as_ref(), 2).await.expect("list");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        seen.extend(page.into_iter().map(|c| c.id));
    }
    assert_eq!(seen, ids);
    assert!(
        store
            .list_customers(None, 0)
            .await
            .expect("list")
            .is_empty()
    );

    let before = store
        .find_customer(&ids[2])
        .await
        .expect("find")
        .expect("exists");
    let suspended = store
        .set_customer_status(&ids[2], CustomerStatus::Suspended)
        .await
        .expect("suspend");
    assert_eq!(suspended.status, CustomerStatus::Suspended);
    assert!(suspended.updated_at >= before.updated_at);
    assert_eq!(suspended.metadata, before.metadata);
    assert_eq!(
        store.find_customer(&ids[2]).await.expect("find"),
        Some(suspended)
    );
    let missing = store
        .set_customer_status(&CustomerId::new("cus_missing"), CustomerStatus::Active)
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    store
        .create_customer(with_subject("a", "auth0|1"))
        .await
        .expect("create with subject");
    let duplicate = store.create_customer(with_subject("b", "auth0|1")).await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict(_))),
        "{duplicate:?}"
    );
}

async fn keys_are_found_by_hash_and_revoked_once(db: TestDb) {
    let store = db.open().await;
    let owner = store
        .create_customer(customer("owner"))
        .await
        .expect("create");
    let other = store
        .create_customer(customer("other"))
        .await
        .expect("create");
    let key = store
        .create_api_key(new_key(&owner.id, 7))
        .await
        .expect("key");
    let other_key = store
        .create_api_key(new_key(&other.id, 8))
        .await
        .expect("key");
    assert!(KeyId::parse(key.id.as_str()).is_some());
    assert_eq!(key.customer_id, owner.id);
    assert_eq!(key.revoked_at, None);

    // The plugins get the store as their port.
    let directory: Arc<dyn CustomerDirectory> = store.clone();
    let grant = directory
        .find_key_by_hash(&[7; 32])
        .await
        .expect("find")
        .expect("a key with that hash");
    assert_eq!(grant.key, key);
    assert_eq!(grant.customer, owner);
    assert_eq!(store.find_key_by_hash(&[9; 32]).await.expect("find"), None);

    assert_eq!(
        store.list_api_keys(Some(&owner.id)).await.expect("list"),
        std::slice::from_ref(&key)
    );
    let everything = store.list_api_keys(None).await.expect("list");
    assert_eq!(everything.len(), 2);
    assert!(everything.contains(&other_key));

    let revoked = store
        .revoke_api_key(&key.id, UnixMillis(DAY0))
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at, Some(UnixMillis(DAY0)));
    let again = store
        .revoke_api_key(&key.id, UnixMillis(DAY0 + 5_000))
        .await
        .expect("revoke again");
    assert_eq!(again.revoked_at, Some(UnixMillis(DAY0)));
    let found = store.find_key_by_hash(&[7; 32]).await.expect("find");
    assert_eq!(
        found.map(|g| g.key.revoked_at),
        Some(Some(UnixMillis(DAY0)))
    );
    let missing = store
        .revoke_api_key(&KeyId::new("key_missing"), UnixMillis(DAY0))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    let orphan = store
        .create_api_key(new_key(&CustomerId::new("cus_nobody"), 10))
        .await;
    assert!(matches!(orphan, Err(StoreError::NotFound(_))), "{orphan:?}");
    let same_hash = store.create_api_key(new_key(&other.id, 7)).await;
    assert!(
        matches!(same_hash, Err(StoreError::Conflict(_))),
        "{same_hash:?}"
    );
}

async fn provisioning_a_subject_yields_one_customer(db: TestDb) {
    let store = db.open().await;
    let first = store
        .provision_customer(with_subject("jwt", "idp|42"))
        .await
        .expect("provision");
    let again = store
        .provision_customer(with_subject("jwt again", "idp|42"))
        .await
        .expect("provision again");
    assert_eq!(again, first);

    let tasks: Vec<_> = (0..10)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .provision_customer(with_subject(&format!("racer{n}"), "idp|race"))
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        winners.push(task.await.expect("task").expect("provision").id);
    }
    winners.dedup();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let found = store
        .find_customer_by_subject("idp|race")
        .await
        .expect("find")
        .expect("provisioned");
    assert_eq!(found.id, winners[0]);
    let customers = store.list_customers(None, 100).await.expect("list");
    assert_eq!(customers.len(), 2, "{customers:?}");
}

async fn touch_keys_keeps_the_latest_use(db: TestDb) {
    let store = db.open().await;
    let owner = store
        .create_customer(customer("owner"))
        .await
        .expect("create");
    let a = store
        .create_api_key(new_key(&owner.id, 1))
        .await
        .expect("key");
    let b = store
        .create_api_key(new_key(&owner.id, 2))
        .await
        .expect("key");
    let last_used = |hash: u8| {
        let store = Arc::clone(&store);
        async move {
            store
                .find_key_by_hash(&[hash; 32])
                .await
                .expect("find")
                .expect("key")
                .key
                .last_used_at
        }
    };

    store
        .touch_keys(&[
            (a.id.clone(), UnixMillis(100)),
            (a.id.clone(), UnixMillis(50)),
            (b.id.clone(), UnixMillis(70)),
            (KeyId::new("key_gone"), UnixMillis(90)),
        ])
        .await
        .expect("touch");
    assert_eq!(last_used(1).await, Some(UnixMillis(100)));
    assert_eq!(last_used(2).await, Some(UnixMillis(70)));

    store
        .touch_keys(&[
            (a.id.clone(), UnixMillis(60)),
            (b.id.clone(), UnixMillis(200)),
        ])
        .await
        .expect("touch");
    assert_eq!(last_used(1).await, Some(UnixMillis(100)));
    assert_eq!(last_used(2).await, Some(UnixMillis(200)));
    store.touch_keys(&[]).await.expect("nothing to touch");
}

async fn usage_batches_roll_up_exactly_once(db: TestDb) {
    let store = db.open().await;
    let customers = [
        store
            .create_customer(customer("a"))
            .await
            .expect("create")
            .id,
        store
            .create_customer(customer("b"))
            .await
            .expect("create")
            .id,
    ];
    // 1200 records over two days: several INSERT chunks per batch.
    let records: Vec<UsageRecord> = (0..1200)
        .map(|n| record(n, &customers, DAY0 + n * 100_000))
        .collect();
    let (first, second) = records.split_at(700);

    store.record_usage(first).await.expect("record");
    assert_eq!(
        store.usage_records(&all(10_000)).await.expect("records"),
        sorted(first.to_vec())
    );
    assert_eq!(
        store.usage_daily(&all(1_000)).await.expect("daily"),
        expected_daily(first)
    );

    // A retried batch changes nothing; an overlapping one adds only what is
    // new.
    store.record_usage(first).await.expect("record again");
    store.record_usage(&records[600..]).await.expect("overlap");
    let stored = store.usage_records(&all(10_000)).await.expect("records");
    assert_eq!(stored, sorted(records.clone()));
    let daily = store.usage_daily(&all(1_000)).await.expect("daily");
    assert_eq!(daily, expected_daily(&records));
    assert_eq!(daily.iter().map(|d| d.calls).sum::<i64>(), 1200);
    assert!(second.iter().all(|r| stored.contains(r)));

    // Duplicates inside one batch count once.
    let late = record(5_000, &customers, DAY0 + 3_600_000);
    store
        .record_usage(&[late.clone(), late.clone()])
        .await
        .expect("record duplicates");
    let daily_after = store.usage_daily(&all(1_000)).await.expect("daily");
    assert_eq!(daily_after.iter().map(|d| d.calls).sum::<i64>(), 1201);
    store.record_usage(&[]).await.expect("empty batch");
}

async fn concurrent_copies_of_a_batch_count_once(db: TestDb) {
    let store = db.open().await;
    let customers = [store
        .create_customer(customer("a"))
        .await
        .expect("create")
        .id];
    let records: Arc<Vec<UsageRecord>> = Arc::new(
        (0..300)
            .map(|n| record(n, &customers, DAY0 + n * 1_000))
            .collect(),
    );
    let tasks: Vec<_> = (0..6)
        .map(|n| {
            let store = Arc::clone(&store);
            let records = Arc::clone(&records);
            // Overlapping slices of the same records, sent at once.
            tokio::spawn(async move { store.record_usage(&records[n * 20..]).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("record");
    }
    assert_eq!(
        store.usage_records(&all(10_000)).await.expect("records"),
        sorted(records.to_vec())
    );
    assert_eq!(
        store.usage_daily(&all(1_000)).await.expect("daily"),
        expected_daily(&records)
    );
}

async fn usage_across_midnight_lands_in_two_days(db: TestDb) {
    let store = db.open().await;
    let owner = store
        .create_customer(customer("owl"))
        .await
        .expect("create");
    let customers = [owner.id.clone()];
    let mut before = record(1, &customers, DAY0 + DAY_MS - 1);
    before.outcome = UsageOutcome::Ok;
    let mut after = record(4, &customers, DAY0 + DAY_MS);
    after.tool = Some("echo".into());
    after.customer_id = Some(owner.id.clone());
    after.outcome = UsageOutcome::Ok;
    store
        .record_usage(&[after.clone(), before.clone()])
        .await
        .expect("record");
    let daily = store.usage_daily(&all(10)).await.expect("daily");
    let days: Vec<(&str, i64)> = daily.iter().map(|d| (d.day.as_str(), d.calls)).collect();
    assert_eq!(days, [("2026-03-14", 1), ("2026-03-15", 1)]);
    assert_eq!(daily, expected_daily(&[before, after]));
}

async fn usage_records_and_roll_ups_are_filtered(db: TestDb) {
    let store = db.open().await;
    let customers = [
        store
            .create_customer(customer("a"))
            .await
            .expect("create")
            .id,
        store
            .create_customer(customer("b"))
            .await
            .expect("create")
            .id,
    ];
    let records: Vec<UsageRecord> = (0..60)
        .map(|n| record(n, &customers, DAY0 + n * 3_600_000))
        .collect();
    store.record_usage(&records).await.expect("record");

    let filter = UsageFilter {
        customer: Some(customers[0].clone()),
        since: Some(UnixMillis(DAY0 + 10 * 3_600_000)),
        until: Some(UnixMillis(DAY0 + 40 * 3_600_000)),
        limit: 1_000,
        ..UsageFilter::default()
    };
    let expected: Vec<UsageRecord> = records
        .iter()
        .filter(|r| r.customer_id.as_ref() == Some(&customers[0]))
        .filter(|r| {
            r.started_at.0 >= DAY0 + 10 * 3_600_000 && r.started_at.0 < DAY0 + 40 * 3_600_000
        })
        .cloned()
        .collect();
    assert_eq!(
        store.usage_records(&filter).await.expect("records"),
        expected
    );
    let limited = UsageFilter {
        limit: 3,
        ..filter.clone()
    };
    assert_eq!(
        store.usage_records(&limited).await.expect("records"),
        expected[..3]
    );

    // Days overlapping [since, until): the 14th and the 15th.
    let mine: Vec<UsageRecord> = records
        .iter()
        .filter(|r| r.customer_id.as_ref() == Some(&customers[0]))
        .filter(|r| r.started_at.0 < DAY0 + 2 * DAY_MS)
        .cloned()
        .collect();
    assert_eq!(
        store.usage_daily(&filter).await.expect("daily"),
        expected_daily(&mine)
    );
}

/// A URL on a port nothing listens on, with a password that must not leak.
fn unreachable_url(scheme: &str) -> String {
    format!("{scheme}://meter:hunter2@127.0.0.1:1/meter")
}

#[tokio::test]
async fn open_fails_fast_on_an_unreachable_server_and_hides_the_password() {
    for scheme in ["postgres", "mysql"] {
        let options = StoreOptions {
            acquire_timeout: Duration::from_secs(2),
            ..StoreOptions::new(unreachable_url(scheme))
        };
        let started = Instant::now();
        let error = store::open(&options)
            .await
            .map(|_| ())
            .expect_err("unreachable");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(error, OpenError::Unreachable { .. }), "{error:?}");
        let message = error.to_string();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(
            message.contains(&format!("{scheme}://meter:***@127.0.0.1:1/meter")),
            "{message}"
        );
        let migrate = store::migrate(&options).await.expect_err("unreachable");
        assert!(
            matches!(migrate, OpenError::Unreachable { .. }),
            "{migrate:?}"
        );
    }
}

#[tokio::test]
async fn open_names_bad_credentials_and_missing_databases() {
    let cases = [
        (
            "postgres://mm_no_such_role:pw@127.0.0.1:5432/test",
            "credentials",
        ),
        (
            "mysql://root:wrong-password@127.0.0.1:3306/test",
            "credentials",
        ),
        (
            "postgres://postgres@127.0.0.1:5432/mm_no_such_db",
            "missing",
        ),
        ("mysql://root@127.0.0.1:3306/mm_no_such_db", "missing"),
    ];
    for (url, expected) in cases {
        let error = store::open(&StoreOptions::new(url))
            .await
            .map(|_| ())
            .expect_err(url);
        let ok = match expected {
            "credentials" => matches!(error, OpenError::Credentials { .. }),
            _ => matches!(error, OpenError::MissingDatabase { .. }),
        };
        assert!(ok, "{url}: {error:?}");
        assert!(!error.to_string().contains("wrong-password"), "{error}");
    }
}

#[tokio::test]
async fn open_refuses_unknown_schemes_and_unopenable_files() {
    let error = store::open(&StoreOptions::new("redis://:secret@localhost/0"))
        .await
        .map(|_| ())
        .expect_err("unsupported");
    assert!(
        matches!(error, OpenError::UnsupportedUrl { .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("secret"), "{error}");

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/missing/dir/x.db", dir.path().display());
    let error = store::open(&StoreOptions::new(url))
        .await
        .map(|_| ())
        .expect_err("no such directory");
    assert!(
        matches!(error, OpenError::CannotOpenFile { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn sqlite_url_forms_work_and_the_file_is_set_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("forms.db");
    let urls = [
        format!("sqlite://{}", path.display()),
        format!("sqlite:{}", path.display()),
        "sqlite::memory:".to_owned(),
    ];
    for url in urls {
        let store = store::open(&StoreOptions::new(url.as_str()))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let created = store.create_customer(customer("c")).await.expect("create");
        assert_eq!(
            store.find_customer(&created.id).await.expect("find"),
            Some(created)
        );
    }
    assert!(path.exists());

    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

/// Connections the server killed are not handed out again: the next call
/// gets a fresh one.
async fn survives_killed_connections(db: TestDb) {
    let store = db.open().await;
    store.ping().await.expect("ping");
    let name = db.url().rsplit('/').next().unwrap_or_default().to_owned();
    match db.kind() {
        Kind::Postgres => {
            db.execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ))
            .await
        }
        Kind::MySql => {
            db.execute(&format!(
                "BEGIN NOT ATOMIC \
                 FOR c IN (SELECT id FROM information_schema.processlist \
                           WHERE db = '{name}' AND id <> CONNECTION_ID()) DO \
                   KILL CONNECTION c.id; \
                 END FOR; \
                 END"
            ))
            .await
        }
        Kind::Sqlite => unreachable!("SQLite has no server"),
    }
    for _ in 0..3 {
        store.ping().await.expect("ping after the kill");
        store
            .list_customers(None, 10)
            .await
            .expect("query after the kill");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_killed_connections() {
    survives_killed_connections(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_survives_killed_connections() {
    survives_killed_connections(TestDb::mysql().await).await;
}
