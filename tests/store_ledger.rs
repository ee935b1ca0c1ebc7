//! The ledger of the SQL store against real databases: balances,
//! reservations, settlements, charges and quota counters, every scenario on
//! SQLite (a temporary file), PostgreSQL and MariaDB, each on a fresh
//! database. The concurrency scenarios fire hundreds of writes at once from
//! a multi-threaded runtime (and from two pools, as two instances would)
//! and check exact totals: nothing overdrawn, nothing charged twice,
//! nothing numbered twice.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::join_all;

use common::db::TestDb;
use mcp_meter::store::{self, Store};
use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{
    Accrual, AccrueOutcome, BalanceChange, ChangeOutcome, ChargeKey, CounterOutcome, CounterStep,
    EntryKind, Ledger, LedgerEntry, LedgerFilter, PriceSchedule, QuotaOutcome, QuotaTake,
    Reservation, ReserveOutcome, SettleOutcome, Settlement, Tier,
};
use mcp_meter_plugin::ports::{NewCustomer, StoreError};

/// 2026-03-14T00:00:00Z.
const DAY0: i64 = 1_773_446_400_000;
const DAY_MS: i64 = 86_400_000;

async fn new_customer(store: &Arc<dyn Store>, name: &str) -> CustomerId {
    store
        .create_customer(NewCustomer {
            name: name.into(),
            plan_id: Some("prepaid".into()),
            ..NewCustomer::default()
        })
        .await
        .expect("create customer")
        .id
}

fn change(customer: &CustomerId, kind: EntryKind, amount: i64, key: &str) -> BalanceChange {
    BalanceChange {
        customer_id: customer.clone(),
        kind,
        amount,
        idempotency_key: key.into(),
        reason: Some(format!("note {key}")),
        at: UnixMillis(DAY0),
    }
}

async fn grant(ledger: &dyn Ledger, customer: &CustomerId, amount: i64, key: &str) -> i64 {
    match ledger
        .change_balance(&change(customer, EntryKind::Grant, amount, key))
        .await
        .expect("grant")
    {
        ChangeOutcome::Applied { balance_after } => balance_after,
        other => panic!("grant {key}: {other:?}"),
    }
}

fn reservation(customer: &CustomerId, key: &str, amount: i64) -> Reservation {
    Reservation {
        customer_id: customer.clone(),
        charge_key: ChargeKey::new(key),
        call_id: CallId::new(format!("call_{key}")),
        amount,
        plan_id: "prepaid".into(),
        tool: Some("search".into()),
        at: UnixMillis(DAY0 + 1_000),
    }
}

fn settlement(customer: &CustomerId, key: &str, attempt: i64, actual: i64) -> Settlement {
    Settlement {
        customer_id: customer.clone(),
        charge_key: ChargeKey::new(key),
        attempt,
        actual,
        refund_reason: None,
        at: UnixMillis(DAY0 + 2_000),
    }
}

fn refund(customer: &CustomerId, key: &str, attempt: i64, reason: &str) -> Settlement {
    Settlement {
        refund_reason: Some(reason.into()),
        ..settlement(customer, key, attempt, 0)
    }
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

/// The balance is the sum of the customer's credit entries, and each
/// credit entry's `balance_after` is the running sum up to it (in id
/// order). Returns the balance.
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

fn tiers() -> Vec<Tier> {
    vec![
        Tier {
            up_to: Some(3),
            price: 1000,
        },
        Tier {
            up_to: None,
            price: 800,
        },
    ]
}

fn accrual(customer: &CustomerId, key: &str, schedule: PriceSchedule) -> Accrual {
    Accrual {
        customer_id: customer.clone(),
        charge_key: ChargeKey::new(key),
        call_id: CallId::new(format!("call_{key}")),
        plan_id: "metered".into(),
        tool: Some("search".into()),
        currency: "usd".into(),
        counter: "calls".into(),
        period_start: UnixMillis(DAY0),
        schedule,
        quantity: 1,
        at: UnixMillis(DAY0 + 5_000),
    }
}

async fn charge(ledger: &dyn Ledger, accrual: &Accrual) -> (i64, i64) {
    match ledger.accrue(accrual).await.expect("accrue") {
        AccrueOutcome::Charged { number, amount } => (number, amount),
        other => panic!("accrue {:?}: {other:?}", accrual.charge_key),
    }
}

fn step(customer: &CustomerId, delta: i64, cap: Option<i64>) -> CounterStep {
    CounterStep {
        customer_id: customer.clone(),
        counter: "free:day".into(),
        period_start: UnixMillis(DAY0),
        delta,
        cap,
    }
}

async fn counted(ledger: &dyn Ledger, step: &CounterStep) -> CounterOutcome {
    ledger.step_counter(step).await.expect("step")
}

each_backend!(
    ledger_migration_is_applied,
    balance_changes_apply_once,
    balance_changes_are_checked,
    settling_below_the_reservation_returns_the_difference,
    a_refund_returns_everything_and_the_call_may_reserve_again,
    settling_without_a_reservation_changes_nothing,
    an_insufficient_balance_writes_nothing,
    concurrent_reservations_never_overdraw,
    concurrent_reservations_of_one_call_charge_once,
    concurrent_grants_to_a_new_balance_apply_once_each,
    two_instances_share_one_balance_exactly,
    concurrent_writes_of_many_customers_settle_and_refund_exactly,
    one_refused_write_fails_alone,
    a_write_whose_caller_went_away_is_undone,
    a_pool_of_one_connection_serves_the_ledger_writer_and_the_rest,
    flat_accruals_number_calls_and_charge_once,
    volume_tiers_add_up_to_the_tier_reached,
    graduated_tiers_charge_each_call_at_its_own_tier,
    a_quantity_is_priced_on_both_sides_of_a_tier,
    concurrent_accruals_get_distinct_consecutive_numbers,
    counters_respect_their_cap_and_never_go_below_zero,
    concurrent_steps_never_pass_the_cap,
    entries_are_filtered_and_paged,
);

async fn ledger_migration_is_applied(db: TestDb) {
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
    // The store is a ledger (trait upcasting, no helper needed).
    let store = db.open().await;
    let ledger: Arc<dyn Ledger> = store;
    assert_eq!(
        ledger
            .balance(&CustomerId::new("cus_nobody"))
            .await
            .expect("balance"),
        0
    );
}

async fn balance_changes_apply_once(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let b = new_customer(&store, "b").await;
    assert_eq!(ledger.balance(&a).await.expect("balance"), 0);

    let outcome = |kind, amount, key: &'static str| {
        let a = a.clone();
        async move {
            ledger
                .change_balance(&change(&a, kind, amount, key))
                .await
                .expect("change")
        }
    };
    assert_eq!(
        outcome(EntryKind::Grant, 100, "g1").await,
        ChangeOutcome::Applied { balance_after: 100 }
    );
    // A replay (even with another amount) changes nothing.
    assert_eq!(
        outcome(EntryKind::Grant, 100, "g1").await,
        ChangeOutcome::AlreadyApplied { balance: 100 }
    );
    assert_eq!(
        outcome(EntryKind::Purchase, 999, "g1").await,
        ChangeOutcome::AlreadyApplied { balance: 100 }
    );
    assert_eq!(
        outcome(EntryKind::Purchase, 50, "p1").await,
        ChangeOutcome::Applied { balance_after: 150 }
    );
    assert_eq!(
        outcome(EntryKind::Adjustment, -30, "adj1").await,
        ChangeOutcome::Applied { balance_after: 120 }
    );
    assert_eq!(
        outcome(EntryKind::Adjustment, -30, "adj1").await,
        ChangeOutcome::AlreadyApplied { balance: 120 }
    );
    let before = entries_of(ledger, &a).await;
    // Past zero: refused, nothing written, and the key stays free.
    assert_eq!(
        outcome(EntryKind::Adjustment, -121, "adj2").await,
        ChangeOutcome::WouldGoNegative { balance: 120 }
    );
    assert_eq!(entries_of(ledger, &a).await, before);
    assert_eq!(
        outcome(EntryKind::Adjustment, -120, "adj2").await,
        ChangeOutcome::Applied { balance_after: 0 }
    );
    assert_eq!(
        outcome(EntryKind::Adjustment, -1, "adj3").await,
        ChangeOutcome::WouldGoNegative { balance: 0 }
    );

    // Keys are per customer: b's "g1" is its own.
    assert_eq!(grant(ledger, &b, 7, "g1").await, 7);
    assert_eq!(ledger.balance(&a).await.expect("balance"), 0);
    assert_eq!(ledger.balance(&b).await.expect("balance"), 7);

    let entries = entries_of(ledger, &a).await;
    let summary: Vec<(EntryKind, i64, Option<i64>, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.kind,
                e.amount,
                e.balance_after,
                e.idempotency_key.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (EntryKind::Grant, 100, Some(100), "g1"),
            (EntryKind::Purchase, 50, Some(150), "p1"),
            (EntryKind::Adjustment, -30, Some(120), "adj1"),
            (EntryKind::Adjustment, -120, Some(0), "adj2"),
        ]
    );
    for entry in &entries {
        assert_eq!(entry.customer_id, a);
        assert_eq!(entry.unit, "credits");
        assert_eq!(
            entry.reason.as_deref(),
            Some(&*format!("note {}", entry.idempotency_key))
        );
        assert_eq!(entry.created_at, UnixMillis(DAY0));
        assert_eq!(
            (&entry.call_id, &entry.plan_id, &entry.tool),
            (&None, &None, &None)
        );
    }
    assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 0);
    assert_eq!(assert_ledger_adds_up(ledger, &b).await, 7);
}

async fn balance_changes_are_checked(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;

    let refused = |c: BalanceChange| async move {
        match ledger.change_balance(&c).await {
            Err(StoreError::Other(message)) => message,
            other => panic!("{c:?} must be refused: {other:?}"),
        }
    };
    let message = refused(change(&a, EntryKind::Reservation, 5, "k1")).await;
    assert!(message.contains("reservation"), "{message}");
    let message = refused(change(&a, EntryKind::Charge, 5, "k1")).await;
    assert!(message.contains("charge"), "{message}");
    let message = refused(change(&a, EntryKind::Grant, -5, "k1")).await;
    assert!(message.contains("grant"), "{message}");
    let message = refused(change(&a, EntryKind::Purchase, -5, "k1")).await;
    assert!(message.contains("purchase"), "{message}");
    refused(change(&a, EntryKind::Grant, 5, "reserve:x:1")).await;
    refused(change(&a, EntryKind::Grant, 5, "")).await;
    refused(change(&a, EntryKind::Grant, 5, &"k".repeat(513))).await;
    assert!(entries_of(ledger, &a).await.is_empty());

    // The longest key fits every backend.
    let long = "é".repeat(512);
    assert_eq!(grant(ledger, &a, 5, &long).await, 5);
    assert_eq!(
        ledger
            .change_balance(&change(&a, EntryKind::Grant, 5, &long))
            .await
            .expect("replay"),
        ChangeOutcome::AlreadyApplied { balance: 5 }
    );

    let nobody = CustomerId::new("cus_nobody");
    match ledger
        .change_balance(&change(&nobody, EntryKind::Grant, 5, "g"))
        .await
    {
        Err(StoreError::NotFound(message)) => assert_eq!(message, "customer cus_nobody"),
        other => panic!("unknown customer: {other:?}"),
    }
    assert_eq!(ledger.balance(&nobody).await.expect("balance"), 0);
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 5);
}

async fn settling_below_the_reservation_returns_the_difference(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    grant(ledger, &a, 100, "g").await;

    assert_eq!(
        ledger
            .reserve(&reservation(&a, "k1", 10))
            .await
            .expect("reserve"),
        ReserveOutcome::Reserved {
            attempt: 1,
            balance_after: 90
        }
    );
    assert_eq!(ledger.balance(&a).await.expect("balance"), 90);
    assert_eq!(
        ledger
            .settle(&settlement(&a, "k1", 1, 4))
            .await
            .expect("settle"),
        SettleOutcome::Applied {
            returned: 6,
            balance_after: 96
        }
    );
    // A retried settlement (or a late refund) changes nothing.
    assert_eq!(
        ledger
            .settle(&settlement(&a, "k1", 1, 4))
            .await
            .expect("settle again"),
        SettleOutcome::AlreadySettled
    );
    assert_eq!(
        ledger
            .settle(&refund(&a, "k1", 1, "timeout"))
            .await
            .expect("refund after settle"),
        SettleOutcome::AlreadySettled
    );
    // Settled: the call is never charged again.
    assert_eq!(
        ledger
            .reserve(&reservation(&a, "k1", 10))
            .await
            .expect("reserve again"),
        ReserveOutcome::AlreadyCharged
    );
    assert_eq!(ledger.balance(&a).await.expect("balance"), 96);

    // The actual cost is clamped to the reservation: above it returns
    // nothing, below zero returns everything.
    ledger
        .reserve(&reservation(&a, "k2", 5))
        .await
        .expect("reserve");
    assert_eq!(
        ledger
            .settle(&settlement(&a, "k2", 1, 50))
            .await
            .expect("settle"),
        SettleOutcome::Applied {
            returned: 0,
            balance_after: 91
        }
    );
    ledger
        .reserve(&reservation(&a, "k3", 5))
        .await
        .expect("reserve");
    assert_eq!(
        ledger
            .settle(&settlement(&a, "k3", 1, -3))
            .await
            .expect("settle"),
        SettleOutcome::Applied {
            returned: 5,
            balance_after: 91
        }
    );

    let entries = entries_of(ledger, &a).await;
    let reserve = &entries[1];
    assert_eq!(reserve.kind, EntryKind::Reservation);
    assert_eq!(reserve.amount, -10);
    assert_eq!(reserve.balance_after, Some(90));
    assert_eq!(reserve.idempotency_key, "reserve:k1:1");
    assert_eq!(reserve.call_id, Some(CallId::new("call_k1")));
    assert_eq!(reserve.plan_id.as_deref(), Some("prepaid"));
    assert_eq!(reserve.tool.as_deref(), Some("search"));
    assert_eq!(reserve.unit, "credits");
    assert_eq!(reserve.created_at, UnixMillis(DAY0 + 1_000));
    let settled = &entries[2];
    assert_eq!(settled.kind, EntryKind::Settlement);
    assert_eq!(settled.amount, 6);
    assert_eq!(settled.balance_after, Some(96));
    assert_eq!(settled.idempotency_key, "settle:k1:1");
    assert_eq!(settled.call_id, Some(CallId::new("call_k1")));
    assert_eq!(settled.tool.as_deref(), Some("search"));
    assert_eq!(settled.reason, None);
    assert_eq!(settled.created_at, UnixMillis(DAY0 + 2_000));
    let kinds: Vec<(EntryKind, i64)> = entries.iter().map(|e| (e.kind, e.amount)).collect();
    assert_eq!(
        kinds,
        [
            (EntryKind::Grant, 100),
            (EntryKind::Reservation, -10),
            (EntryKind::Settlement, 6),
            (EntryKind::Reservation, -5),
            (EntryKind::Settlement, 0),
            (EntryKind::Reservation, -5),
            (EntryKind::Settlement, 5),
        ]
    );
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 91);
}

async fn a_refund_returns_everything_and_the_call_may_reserve_again(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    grant(ledger, &a, 20, "g").await;

    let reserve = || async { ledger.reserve(&reservation(&a, "k", 8)).await };
    assert_eq!(
        reserve().await.expect("reserve"),
        ReserveOutcome::Reserved {
            attempt: 1,
            balance_after: 12
        }
    );
    // Still reserved: a repeat is not charged again.
    let before = entries_of(ledger, &a).await;
    assert_eq!(
        reserve().await.expect("repeat"),
        ReserveOutcome::AlreadyCharged
    );
    assert_eq!(entries_of(ledger, &a).await, before);
    assert_eq!(ledger.balance(&a).await.expect("balance"), 12);

    assert_eq!(
        ledger
            .settle(&refund(&a, "k", 1, "upstream_error"))
            .await
            .expect("refund"),
        SettleOutcome::Applied {
            returned: 8,
            balance_after: 20
        }
    );
    assert_eq!(
        ledger
            .settle(&refund(&a, "k", 1, "upstream_error"))
            .await
            .expect("refund again"),
        SettleOutcome::AlreadySettled
    );
    assert_eq!(
        ledger
            .settle(&settlement(&a, "k", 1, 8))
            .await
            .expect("settle after refund"),
        SettleOutcome::AlreadySettled
    );

    // The retried call reserves again, as attempt 2.
    assert_eq!(
        reserve().await.expect("retry"),
        ReserveOutcome::Reserved {
            attempt: 2,
            balance_after: 12
        }
    );
    assert_eq!(
        reserve().await.expect("repeat"),
        ReserveOutcome::AlreadyCharged
    );
    // Attempt 1 ended in a refund; attempt 3 never reserved.
    assert_eq!(
        ledger
            .settle(&settlement(&a, "k", 1, 8))
            .await
            .expect("settle attempt 1"),
        SettleOutcome::AlreadySettled
    );
    assert_eq!(
        ledger
            .settle(&settlement(&a, "k", 3, 8))
            .await
            .expect("settle attempt 3"),
        SettleOutcome::NoReservation
    );
    assert_eq!(
        ledger
            .settle(&settlement(&a, "k", 2, 8))
            .await
            .expect("settle attempt 2"),
        SettleOutcome::Applied {
            returned: 0,
            balance_after: 12
        }
    );
    assert_eq!(
        reserve().await.expect("after settle"),
        ReserveOutcome::AlreadyCharged
    );

    let entries = entries_of(ledger, &a).await;
    let summary: Vec<(EntryKind, i64, &str, Option<&str>)> = entries
        .iter()
        .map(|e| {
            (
                e.kind,
                e.amount,
                e.idempotency_key.as_str(),
                e.reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (EntryKind::Grant, 20, "g", Some("note g")),
            (EntryKind::Reservation, -8, "reserve:k:1", None),
            (EntryKind::Refund, 8, "refund:k:1", Some("upstream_error")),
            (EntryKind::Reservation, -8, "reserve:k:2", None),
            (EntryKind::Settlement, 0, "settle:k:2", None),
        ]
    );
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 12);
}

async fn settling_without_a_reservation_changes_nothing(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let b = new_customer(&store, "b").await;
    // Without a balance row, and with one.
    assert_eq!(
        ledger
            .settle(&settlement(&a, "nothing", 1, 1))
            .await
            .expect("settle"),
        SettleOutcome::NoReservation
    );
    grant(ledger, &a, 10, "g").await;
    for s in [
        settlement(&a, "nothing", 1, 1),
        refund(&a, "nothing", 1, "timeout"),
    ] {
        assert_eq!(
            ledger.settle(&s).await.expect("settle"),
            SettleOutcome::NoReservation
        );
    }
    // Another customer's reservation is not this one's.
    ledger
        .reserve(&reservation(&a, "k", 4))
        .await
        .expect("reserve");
    assert_eq!(
        ledger
            .settle(&settlement(&b, "k", 1, 1))
            .await
            .expect("settle"),
        SettleOutcome::NoReservation
    );
    assert_eq!(entries_of(ledger, &a).await.len(), 2);
    assert!(entries_of(ledger, &b).await.is_empty());
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 6);
}

async fn an_insufficient_balance_writes_nothing(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let broke = new_customer(&store, "broke").await;
    grant(ledger, &a, 5, "g").await;

    let before = entries_of(ledger, &a).await;
    assert_eq!(
        ledger
            .reserve(&reservation(&a, "k1", 6))
            .await
            .expect("reserve"),
        ReserveOutcome::Insufficient { balance: 5 }
    );
    assert_eq!(entries_of(ledger, &a).await, before);
    assert_eq!(ledger.balance(&a).await.expect("balance"), 5);
    // Nothing was held for k1 either: it settles nothing.
    assert_eq!(
        ledger
            .settle(&settlement(&a, "k1", 1, 0))
            .await
            .expect("settle"),
        SettleOutcome::NoReservation
    );

    assert_eq!(
        ledger
            .reserve(&reservation(&a, "k2", 5))
            .await
            .expect("reserve"),
        ReserveOutcome::Reserved {
            attempt: 1,
            balance_after: 0
        }
    );
    assert_eq!(
        ledger
            .reserve(&reservation(&a, "k3", 1))
            .await
            .expect("reserve"),
        ReserveOutcome::Insufficient { balance: 0 }
    );
    // No balance row at all, or no such customer: a balance of 0.
    for customer in [&broke, &CustomerId::new("cus_nobody")] {
        assert_eq!(
            ledger
                .reserve(&reservation(customer, "k", 1))
                .await
                .expect("reserve"),
            ReserveOutcome::Insufficient { balance: 0 }
        );
    }
    assert!(entries_of(ledger, &broke).await.is_empty());

    // Once credits arrive, k1 reserves as its first attempt.
    grant(ledger, &a, 10, "g2").await;
    assert_eq!(
        ledger
            .reserve(&reservation(&a, "k1", 6))
            .await
            .expect("reserve"),
        ReserveOutcome::Reserved {
            attempt: 1,
            balance_after: 4
        }
    );
    // Nonsense amounts are refused outright.
    for amount in [0, -5] {
        assert!(matches!(
            ledger.reserve(&reservation(&a, "k9", amount)).await,
            Err(StoreError::Other(_))
        ));
    }
    assert_eq!(assert_ledger_adds_up(ledger, &a).await, 4);
}

async fn concurrent_reservations_never_overdraw(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    grant(&*store, &a, 500, "g").await;

    let tasks: Vec<_> = (0..1000)
        .map(|n| {
            let store = Arc::clone(&store);
            let r = reservation(&a, &format!("call-{n}"), 1);
            tokio::spawn(async move { store.reserve(&r).await })
        })
        .collect();
    let mut after = Vec::new();
    let mut insufficient = 0;
    for task in tasks {
        match task.await.expect("task").expect("reserve") {
            ReserveOutcome::Reserved {
                attempt: 1,
                balance_after,
            } => after.push(balance_after),
            ReserveOutcome::Insufficient { balance: 0 } => insufficient += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(after.len(), 500);
    assert_eq!(insufficient, 500);
    // Each debit saw the one before it: every balance from 499 down to 0
    // came back exactly once.
    after.sort_unstable();
    assert_eq!(after, (0..500).collect::<Vec<i64>>());
    assert_eq!(store.balance(&a).await.expect("balance"), 0);
    let entries = entries_of(&*store, &a).await;
    assert_eq!(entries.len(), 501);
    assert_eq!(entries.iter().map(|e| e.amount).sum::<i64>(), 0);
    assert_eq!(assert_ledger_adds_up(&*store, &a).await, 0);
}

async fn concurrent_reservations_of_one_call_charge_once(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    grant(&*store, &a, 1000, "g").await;

    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let store = Arc::clone(&store);
            let r = reservation(&a, "the-call", 3);
            tokio::spawn(async move { store.reserve(&r).await })
        })
        .collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        let outcome = task.await.expect("task").expect("reserve");
        *outcomes.entry(format!("{outcome:?}")).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("AlreadyCharged".to_owned(), 199),
            (
                format!(
                    "{:?}",
                    ReserveOutcome::Reserved {
                        attempt: 1,
                        balance_after: 997
                    }
                ),
                1
            ),
        ])
    );
    assert_eq!(entries_of(&*store, &a).await.len(), 2);
    assert_eq!(assert_ledger_adds_up(&*store, &a).await, 997);
}

/// A customer's first grants race to create the balance row; each
/// idempotency key is sent twice at once.
async fn concurrent_grants_to_a_new_balance_apply_once_each(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    let tasks: Vec<_> = (0..60)
        .map(|n| {
            let store = Arc::clone(&store);
            let c = change(&a, EntryKind::Grant, 1 + n % 30, &format!("g{}", n % 30));
            tokio::spawn(async move { store.change_balance(&c).await })
        })
        .collect();
    let (mut applied, mut replayed) = (Vec::new(), 0);
    for task in tasks {
        match task.await.expect("task").expect("grant") {
            ChangeOutcome::Applied { balance_after } => applied.push(balance_after),
            ChangeOutcome::AlreadyApplied { .. } => replayed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((applied.len(), replayed), (30, 30));
    let total: i64 = (1..=30).sum();
    assert_eq!(applied.iter().max(), Some(&total));
    assert_eq!(assert_ledger_adds_up(&*store, &a).await, total);
    assert_eq!(entries_of(&*store, &a).await.len(), 30);
}

/// Two stores on one database (two pools, as two mcp-meter instances would
/// have) reserve from one balance at once, each call from both instances.
async fn two_instances_share_one_balance_exactly(db: TestDb) {
    let first = db.open_wide().await;
    let second = db.open_wide().await;
    let a = new_customer(&first, "a").await;
    grant(&*first, &a, 300, "g").await;

    let mut tasks = Vec::new();
    for n in 0..400 {
        for store in [&first, &second] {
            let store = Arc::clone(store);
            let r = reservation(&a, &format!("call-{n}"), 1);
            tasks.push(tokio::spawn(async move {
                (n, store.reserve(&r).await.expect("reserve"))
            }));
        }
    }
    let mut reserved: BTreeMap<i64, usize> = BTreeMap::new();
    let mut after = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            (
                n,
                ReserveOutcome::Reserved {
                    attempt: 1,
                    balance_after,
                },
            ) => {
                *reserved.entry(n).or_default() += 1;
                after.push(balance_after);
            }
            (_, ReserveOutcome::AlreadyCharged | ReserveOutcome::Insufficient { balance: 0 }) => {}
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(after.len(), 300);
    assert!(reserved.values().all(|&times| times == 1), "{reserved:?}");
    after.sort_unstable();
    assert_eq!(after, (0..300).collect::<Vec<i64>>());
    for store in [&first, &second] {
        assert_eq!(store.balance(&a).await.expect("balance"), 0);
    }
    assert_eq!(entries_of(&*second, &a).await.len(), 301);
    assert_eq!(assert_ledger_adds_up(&*second, &a).await, 0);
}

/// Reservations, settlements (each sent twice at once), refunds and
/// second attempts of five customers, all at once: the store writes them
/// in batches of many customers, and each customer's books come out as if
/// every write had run alone.
async fn concurrent_writes_of_many_customers_settle_and_refund_exactly(db: TestDb) {
    let store = db.open_wide().await;
    let mut customers = Vec::new();
    for n in 0..5 {
        let customer = new_customer(&store, &format!("c{n}")).await;
        grant(&*store, &customer, 100, "g").await;
        customers.push(customer);
    }
    let calls: Vec<(CustomerId, String)> = customers
        .iter()
        .flat_map(|c| (0..20).map(move |n| (c.clone(), format!("call-{n}"))))
        .collect();

    let reserved = join_all(calls.iter().map(|(c, key)| {
        let (store, r) = (Arc::clone(&store), reservation(c, key, 3));
        async move { store.reserve(&r).await }
    }))
    .await;
    for outcome in reserved {
        assert!(
            matches!(outcome, Ok(ReserveOutcome::Reserved { attempt: 1, .. })),
            "{outcome:?}"
        );
    }
    // Even calls settle at 1 of their 3 credits, odd ones are refunded;
    // each settlement is sent twice.
    let settle = |(c, key): &(CustomerId, String), n: usize| {
        if n.is_multiple_of(2) {
            settlement(c, key, 1, 1)
        } else {
            refund(c, key, 1, "upstream_error")
        }
    };
    let twice = calls
        .iter()
        .enumerate()
        .flat_map(|(n, call)| [settle(call, n % 20), settle(call, n % 20)]);
    let settled = join_all(twice.map(|s| {
        let store = Arc::clone(&store);
        async move { (s.refund_reason.is_some(), store.settle(&s).await) }
    }))
    .await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (refunded, outcome) in settled {
        let label = match outcome.expect("settle") {
            SettleOutcome::Applied { returned: 3, .. } if refunded => "refunded",
            SettleOutcome::Applied { returned: 2, .. } if !refunded => "settled",
            SettleOutcome::AlreadySettled => "replayed",
            other => panic!("unexpected {other:?}"),
        };
        *counts.entry(label.to_owned()).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([
            ("refunded".to_owned(), 50),
            ("replayed".to_owned(), 100),
            ("settled".to_owned(), 50),
        ])
    );
    // The refunded calls reserve again, as their second attempt.
    let again = join_all(calls.iter().enumerate().filter(|(n, _)| n % 2 == 1).map(
        |(_, (c, key))| {
            let (store, r) = (Arc::clone(&store), reservation(c, key, 3));
            async move { store.reserve(&r).await }
        },
    ))
    .await;
    for outcome in again {
        assert!(
            matches!(outcome, Ok(ReserveOutcome::Reserved { attempt: 2, .. })),
            "{outcome:?}"
        );
    }
    for customer in &customers {
        // 100 − 10 × 1 settled − 10 × 3 reserved again.
        assert_eq!(assert_ledger_adds_up(&*store, customer).await, 60);
        assert_eq!(entries_of(&*store, customer).await.len(), 1 + 20 + 20 + 10);
    }
}

/// A write the database refuses (here: its ledger entry's key is already
/// taken by an entry put there by hand) fails alone; the writes batched
/// with it are applied.
async fn one_refused_write_fails_alone(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    grant(&*store, &a, 100, "g").await;
    db.execute(&format!(
        "INSERT INTO ledger_entries (customer_id, kind, amount, unit, idempotency_key, \
         created_at) VALUES ('{a}', 'adjustment', 0, 'calls', 'reserve:poisoned:1', 0)"
    ))
    .await;

    let keys: Vec<String> = (0..40)
        .map(|n| match n {
            20 => "poisoned".to_owned(),
            n => format!("call-{n}"),
        })
        .collect();
    let outcomes = join_all(keys.iter().map(|key| {
        let (store, r) = (Arc::clone(&store), reservation(&a, key, 1));
        async move { store.reserve(&r).await }
    }))
    .await;
    for (key, outcome) in keys.iter().zip(outcomes) {
        match (key.as_str(), outcome) {
            ("poisoned", Err(StoreError::Conflict(_))) => {}
            (_, Ok(ReserveOutcome::Reserved { attempt: 1, .. })) if key != "poisoned" => {}
            (key, other) => panic!("{key}: unexpected {other:?}"),
        }
    }
    let entries = entries_of(&*store, &a).await;
    assert_eq!(
        entries.len(),
        1 + 1 + 39,
        "the grant, the hand-made entry, 39 reservations"
    );
    assert_eq!(assert_ledger_adds_up(&*store, &a).await, 61);
    // Nothing of the refused write is held: settling it finds nothing.
    assert_eq!(
        store
            .settle(&settlement(&a, "poisoned", 1, 1))
            .await
            .expect("settle"),
        SettleOutcome::NoReservation
    );
}

/// Callers that go away (a client cancelling its call) never forward
/// their call. A reservation or quota take still waiting in the writer's
/// queue is not written at all; one already in a transaction that waits
/// for a lock (held here from outside) is refunded or released once it
/// commits.
async fn a_write_whose_caller_went_away_is_undone(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    grant(&*store, &a, 1_000, "g").await;
    // The counter's row exists, to be locked.
    let setup = free_take(&a, "setup");
    assert!(matches!(
        store.take_quota(&setup).await,
        Ok(QuotaOutcome::Taken { used: 1 })
    ));

    // A reservation blocked on the balance lock, 200 writes queued behind it.
    let lock = db.hold_balance_lock(a.as_str()).await;
    let mut tasks = vec![{
        let (store, r) = (Arc::clone(&store), reservation(&a, "first", 2));
        tokio::spawn(async move { store.reserve(&r).await.map(|_| ()) })
    }];
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tasks.extend((0..200).map(|n| {
        let store = Arc::clone(&store);
        let key = format!("call-{n}");
        if n % 2 == 0 {
            let r = reservation(&a, &key, 2);
            tokio::spawn(async move { store.reserve(&r).await.map(|_| ()) })
        } else {
            let t = free_take(&a, &key);
            tokio::spawn(async move { store.take_quota(&t).await.map(|_| ()) })
        }
    }));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    abort_all(tasks).await;
    lock.release().await;
    flush(&*store, &a, "between").await;

    // A quota take blocked on its counter's lock.
    let lock = db
        .hold_lock(&format!(
            "SELECT used FROM period_counters WHERE customer_id = '{a}' FOR UPDATE"
        ))
        .await;
    let blocked = {
        let (store, t) = (Arc::clone(&store), free_take(&a, "blocked"));
        tokio::spawn(async move { store.take_quota(&t).await.map(|_| ()) })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    abort_all(vec![blocked]).await;
    lock.release().await;

    flush(&*store, &a, "last").await;
    assert_eq!(assert_ledger_adds_up(&*store, &a).await, 1_000);
    let counter = store.counter(&a, "free", UnixMillis(DAY0)).await;
    assert_eq!(
        counter.expect("counter"),
        1,
        "only the setup take is counted"
    );
    let entries = entries_of(&*store, &a).await;
    let mut keys: Vec<&str> = entries.iter().map(|e| e.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "g",
            "quota:blocked:1",
            "quota:setup:1",
            "refund:between:1",
            "refund:first:1",
            "refund:last:1",
            "reserve:between:1",
            "reserve:first:1",
            "reserve:last:1",
            "unquota:blocked:1",
        ]
    );
    for undone in ["refund:first:1", "unquota:blocked:1"] {
        let entry = entries.iter().find(|e| e.idempotency_key == undone);
        assert_eq!(entry.and_then(|e| e.reason.as_deref()), Some("not_served"));
    }
}

/// Waits until every write queued before it, and the writer's undoing
/// of them, is written: writes are applied in the order they are queued,
/// and the writer's own undoing goes ahead of the queue, so once a
/// reservation queued now and then its refund are answered, all is done.
async fn flush(ledger: &dyn Ledger, customer: &CustomerId, key: &str) {
    let reserved = ledger.reserve(&reservation(customer, key, 2)).await;
    assert!(
        matches!(reserved, Ok(ReserveOutcome::Reserved { attempt: 1, .. })),
        "{reserved:?}"
    );
    let refunded = ledger.settle(&refund(customer, key, 1, "test")).await;
    assert!(
        matches!(refunded, Ok(SettleOutcome::Applied { returned: 2, .. })),
        "{refunded:?}"
    );
}

/// Aborts every task and checks that none had finished.
async fn abort_all(tasks: Vec<tokio::task::JoinHandle<Result<(), StoreError>>>) {
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let cancelled = task.await.expect_err("no caller got an answer");
        assert!(cancelled.is_cancelled());
    }
}

/// A take of one free call from the `free` counter, uncapped.
fn free_take(customer: &CustomerId, key: &str) -> QuotaTake {
    QuotaTake {
        customer_id: customer.clone(),
        charge_key: ChargeKey::new(key),
        call_id: CallId::new(format!("call_{key}")),
        plan_id: "free".into(),
        tool: None,
        counter: "free".into(),
        period_start: UnixMillis(DAY0),
        units: 1,
        cap: None,
        at: UnixMillis(DAY0 + 1_000),
    }
}

/// With `max_connections = 1`, the ledger writer gives the one connection
/// back after each batch: reads and other writes between calls' credits
/// writes still get it within the acquire timeout.
async fn a_pool_of_one_connection_serves_the_ledger_writer_and_the_rest(db: TestDb) {
    let options = store::StoreOptions {
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(2),
        ..db.options()
    };
    let store = store::open(&options).await.expect("open");
    let a = new_customer(&store, "a").await;
    grant(&*store, &a, 10, "g").await;
    for n in 1..=5 {
        let key = format!("call-{n}");
        let reserved = store.reserve(&reservation(&a, &key, 2)).await;
        assert!(
            matches!(reserved, Ok(ReserveOutcome::Reserved { .. })),
            "{reserved:?}"
        );
        assert_eq!(
            store.balance(&a).await.expect("balance"),
            10 - 2 * n + (n - 1)
        );
        let settled = store.settle(&settlement(&a, &key, 1, 1)).await;
        assert!(
            matches!(settled, Ok(SettleOutcome::Applied { returned: 1, .. })),
            "{settled:?}"
        );
        assert_eq!(entries_of(&*store, &a).await.len(), 1 + 2 * n as usize);
    }
    assert_eq!(assert_ledger_adds_up(&*store, &a).await, 5);
}

async fn flat_accruals_number_calls_and_charge_once(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let flat = PriceSchedule::Flat { price: 2_500 };

    for (n, key) in ["c1", "c2", "c3"].iter().enumerate() {
        assert_eq!(
            charge(ledger, &accrual(&a, key, flat.clone())).await,
            (n as i64 + 1, 2_500)
        );
    }
    // A replay is not counted and not charged.
    assert_eq!(
        ledger
            .accrue(&accrual(&a, "c2", flat.clone()))
            .await
            .expect("replay"),
        AccrueOutcome::AlreadyCharged
    );
    assert_eq!(
        ledger
            .counter(&a, "calls", UnixMillis(DAY0))
            .await
            .expect("counter"),
        3
    );
    // The next period counts from 1 again.
    let next = Accrual {
        period_start: UnixMillis(DAY0 + DAY_MS),
        ..accrual(&a, "c4", flat.clone())
    };
    assert_eq!(charge(ledger, &next).await, (1, 2_500));
    assert_eq!(
        ledger
            .counter(&a, "calls", UnixMillis(DAY0 + DAY_MS))
            .await
            .expect("counter"),
        1
    );
    assert_eq!(
        ledger
            .counter(&a, "calls", UnixMillis(DAY0 + 2 * DAY_MS))
            .await
            .expect("counter"),
        0
    );

    let entries = entries_of(ledger, &a).await;
    assert_eq!(entries.len(), 4);
    let first = &entries[0];
    assert_eq!(first.kind, EntryKind::Charge);
    assert_eq!(first.amount, 2_500);
    assert_eq!(first.unit, "usd");
    assert_eq!(first.balance_after, None);
    assert_eq!(first.idempotency_key, "charge:c1");
    assert_eq!(first.call_id, Some(CallId::new("call_c1")));
    assert_eq!(first.plan_id.as_deref(), Some("metered"));
    assert_eq!(first.tool.as_deref(), Some("search"));
    assert_eq!(first.created_at, UnixMillis(DAY0 + 5_000));
    // Charges never touch the prepaid balance.
    assert_eq!(ledger.balance(&a).await.expect("balance"), 0);

    match ledger
        .accrue(&accrual(&CustomerId::new("cus_nobody"), "c1", flat))
        .await
    {
        Err(StoreError::NotFound(message)) => assert_eq!(message, "customer cus_nobody"),
        other => panic!("unknown customer: {other:?}"),
    }
}

async fn volume_tiers_add_up_to_the_tier_reached(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let volume = PriceSchedule::Volume { tiers: tiers() };
    let mut amounts = Vec::new();
    for n in 1..=5 {
        let (number, amount) = charge(ledger, &accrual(&a, &format!("v{n}"), volume.clone())).await;
        assert_eq!(number, n);
        amounts.push(amount);
    }
    // The 4th call moves all four calls to 800: 4×800 − 3×1000.
    assert_eq!(amounts, [1000, 1000, 1000, 200, 800]);
    let charged: i64 = entries_of(ledger, &a).await.iter().map(|e| e.amount).sum();
    assert_eq!(charged, 5 * 800);
    assert_eq!(charged, volume.total_for_calls(5));
}

async fn graduated_tiers_charge_each_call_at_its_own_tier(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let graduated = PriceSchedule::Graduated { tiers: tiers() };
    let mut amounts = Vec::new();
    for n in 1..=5 {
        amounts.push(
            charge(ledger, &accrual(&a, &format!("g{n}"), graduated.clone()))
                .await
                .1,
        );
    }
    assert_eq!(amounts, [1000, 1000, 1000, 800, 800]);
    let charged: i64 = entries_of(ledger, &a).await.iter().map(|e| e.amount).sum();
    assert_eq!(charged, 3 * 1000 + 2 * 800);
    assert_eq!(charged, graduated.total_for_calls(5));
}

/// A call metered in units moves the counter by its blocks; one that
/// crosses a tier boundary pays each block at its tier (graduated), or
/// moves the whole period to the new tier (volume).
async fn a_quantity_is_priced_on_both_sides_of_a_tier(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let graduated = PriceSchedule::Graduated { tiers: tiers() };
    let with = |key: &str, schedule: &PriceSchedule, quantity: i64| Accrual {
        quantity,
        counter: format!("units-{}", &key[..1]),
        ..accrual(&a, key, schedule.clone())
    };
    // 2 blocks, then 3 crossing the bound at 3 (1 at 1000, 2 at 800), then
    // a call that used nothing: counted as charged 0, the counter unmoved.
    assert_eq!(charge(ledger, &with("g1", &graduated, 2)).await, (2, 2000));
    assert_eq!(
        charge(ledger, &with("g2", &graduated, 3)).await,
        (5, 1000 + 1600)
    );
    assert_eq!(charge(ledger, &with("g3", &graduated, 0)).await, (5, 0));
    let volume = PriceSchedule::Volume { tiers: tiers() };
    assert_eq!(charge(ledger, &with("v1", &volume, 2)).await, (2, 2000));
    // 5 blocks at 800 in all: 4000 − 2000 already charged.
    assert_eq!(charge(ledger, &with("v2", &volume, 3)).await, (5, 2000));
    // Replaying a charge key charges nothing more, whatever its quantity.
    assert_eq!(
        ledger
            .accrue(&with("v2", &volume, 7))
            .await
            .expect("replay"),
        AccrueOutcome::AlreadyCharged
    );
    let charged: i64 = entries_of(ledger, &a).await.iter().map(|e| e.amount).sum();
    assert_eq!(
        charged,
        graduated.total_for_calls(5) + volume.total_for_calls(5)
    );
    // A negative quantity is refused and records nothing.
    match ledger.accrue(&with("n1", &graduated, -1)).await {
        Err(StoreError::Other(message)) => assert!(message.contains("negative"), "{message}"),
        other => panic!("negative quantity: {other:?}"),
    }
    assert_eq!(entries_of(ledger, &a).await.len(), 5);
}

async fn concurrent_accruals_get_distinct_consecutive_numbers(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    let volume = PriceSchedule::Volume { tiers: tiers() };
    let tasks: Vec<_> = (0..300)
        .map(|n| {
            let store = Arc::clone(&store);
            let accrual = accrual(&a, &format!("call-{n}"), volume.clone());
            tokio::spawn(async move { store.accrue(&accrual).await })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        match task.await.expect("task").expect("accrue") {
            AccrueOutcome::Charged { number, amount } => {
                assert_eq!(amount, volume.charge_for_call(number));
                numbers.push(number);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=300).collect::<Vec<i64>>());
    assert_eq!(
        store
            .counter(&a, "calls", UnixMillis(DAY0))
            .await
            .expect("counter"),
        300
    );
    let entries = entries_of(&*store, &a).await;
    assert_eq!(entries.len(), 300);
    assert_eq!(entries.iter().map(|e| e.amount).sum::<i64>(), 300 * 800);
}

async fn counters_respect_their_cap_and_never_go_below_zero(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let cases = [
        (5, Some(10), CounterOutcome::Counted { used: 5 }),
        (6, Some(10), CounterOutcome::CapReached { used: 5 }),
        (5, Some(10), CounterOutcome::Counted { used: 10 }),
        (1, Some(10), CounterOutcome::CapReached { used: 10 }),
        // A give-back is never refused by the cap, even above it.
        (-3, Some(5), CounterOutcome::Counted { used: 7 }),
        // …and stops at zero.
        (-100, Some(10), CounterOutcome::Counted { used: 0 }),
        (-1, None, CounterOutcome::Counted { used: 0 }),
        (1_000, None, CounterOutcome::Counted { used: 1_000 }),
        (0, Some(10), CounterOutcome::Counted { used: 1_000 }),
    ];
    for (delta, cap, expected) in cases {
        assert_eq!(
            counted(ledger, &step(&a, delta, cap)).await,
            expected,
            "step {delta} cap {cap:?}"
        );
    }
    assert_eq!(
        ledger
            .counter(&a, "free:day", UnixMillis(DAY0))
            .await
            .expect("counter"),
        1_000
    );
    // Other counters and other periods are separate.
    let other_period = CounterStep {
        period_start: UnixMillis(DAY0 + DAY_MS),
        ..step(&a, 2, Some(2))
    };
    assert_eq!(
        counted(ledger, &other_period).await,
        CounterOutcome::Counted { used: 2 }
    );
    let other_counter = CounterStep {
        counter: "free:day:search".into(),
        ..step(&a, 1, Some(1))
    };
    assert_eq!(
        counted(ledger, &other_counter).await,
        CounterOutcome::Counted { used: 1 }
    );
    // A give-back on a counter never moved writes nothing.
    let fresh = CounterStep {
        counter: "free:month".into(),
        ..step(&a, -1, None)
    };
    assert_eq!(
        counted(ledger, &fresh).await,
        CounterOutcome::Counted { used: 0 }
    );
    assert_eq!(
        ledger
            .counter(&a, "free:month", UnixMillis(DAY0))
            .await
            .expect("counter"),
        0
    );
    match ledger
        .step_counter(&step(&CustomerId::new("cus_nobody"), 1, None))
        .await
    {
        Err(StoreError::NotFound(message)) => assert_eq!(message, "customer cus_nobody"),
        other => panic!("unknown customer: {other:?}"),
    }
    // Counters are not ledger entries.
    assert!(entries_of(ledger, &a).await.is_empty());
}

async fn concurrent_steps_never_pass_the_cap(db: TestDb) {
    let store = db.open_wide().await;
    let a = new_customer(&store, "a").await;
    let cap = 37;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let store = Arc::clone(&store);
            let step = step(&a, 1, Some(cap));
            tokio::spawn(async move { store.step_counter(&step).await })
        })
        .collect();
    let mut counted = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("task").expect("step") {
            CounterOutcome::Counted { used } => counted.push(used),
            CounterOutcome::CapReached { used } => {
                assert_eq!(used, cap);
                refused += 1;
            }
        }
    }
    counted.sort_unstable();
    assert_eq!(counted, (1..=cap).collect::<Vec<i64>>());
    assert_eq!(refused, 200 - cap as usize);
    assert_eq!(
        store
            .counter(&a, "free:day", UnixMillis(DAY0))
            .await
            .expect("counter"),
        cap
    );
}

async fn entries_are_filtered_and_paged(db: TestDb) {
    let store = db.open().await;
    let ledger: &dyn Ledger = &*store;
    let a = new_customer(&store, "a").await;
    let b = new_customer(&store, "b").await;
    for n in 0..5 {
        grant(ledger, &a, 1, &format!("a{n}")).await;
        grant(ledger, &b, 1, &format!("b{n}")).await;
    }
    let page = |customer: Option<&CustomerId>, after_id: Option<i64>, limit: u32| {
        let filter = LedgerFilter {
            customer: customer.cloned(),
            after_id,
            limit,
        };
        async move { ledger.entries(&filter).await.expect("entries") }
    };
    let everything = page(None, None, 100).await;
    assert_eq!(everything.len(), 10);
    assert!(everything.windows(2).all(|w| w[0].id < w[1].id));
    let keys = |entries: &[LedgerEntry]| -> Vec<String> {
        entries.iter().map(|e| e.idempotency_key.clone()).collect()
    };
    assert_eq!(
        keys(&everything),
        ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"]
    );

    let first = page(Some(&b), None, 2).await;
    assert_eq!(keys(&first), ["b0", "b1"]);
    let next = page(Some(&b), first.last().map(|e| e.id), 2).await;
    assert_eq!(keys(&next), ["b2", "b3"]);
    let last = page(Some(&b), next.last().map(|e| e.id), 2).await;
    assert_eq!(keys(&last), ["b4"]);
    assert!(
        page(Some(&b), last.last().map(|e| e.id), 2)
            .await
            .is_empty()
    );
    assert!(page(None, None, 0).await.is_empty());
    let after = page(None, Some(everything[7].id), 100).await;
    assert_eq!(keys(&after), ["a4", "b4"]);
}
