//! The billing models' periods, moved by a fake clock instead of sleeping:
//! a freemium window that rolls over, a subscription's grace period that
//! ends, a subscription-anchored period, and a monthly credit grant with
//! rollover. The billing layer runs over the real SQLite store, in front of
//! an upstream that answers every call.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use common::db::TestDb;
use mcp_meter::store::Store;
use mcp_meter_billing::plan::{BillingConfig, PlanConfig};
use mcp_meter_billing::{BillingLayer, Catalog, META_KEY};
use mcp_meter_plugin::identity::{Caller, CredentialKind, Customer, KeyId, UnixMillis};
use mcp_meter_plugin::jsonrpc::Message;
use mcp_meter_plugin::ledger::{EntryKind, LedgerFilter};
use mcp_meter_plugin::ports::{Clock, NewCustomer};
use mcp_meter_plugin::subscription::{SubscriptionChange, SubscriptionStatus};
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt, service_fn};

/// 2026-01-31T10:00:00Z.
const JAN_31: i64 = 1_769_853_600_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

#[derive(Debug, Clone)]
struct FakeClock(Arc<AtomicI64>);

impl FakeClock {
    fn set(&self, at: i64) {
        self.0.store(at, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(Ordering::SeqCst))
    }
}

struct Harness {
    store: Arc<dyn Store>,
    clock: FakeClock,
    layer: BillingLayer,
    _db: TestDb,
}

impl Harness {
    async fn new(plans: &str) -> Self {
        #[derive(serde::Deserialize)]
        struct File {
            plans: Vec<PlanConfig>,
        }
        let file: File = toml::from_str(plans).unwrap();
        let catalog = Catalog::compile(&BillingConfig::default(), &file.plans).unwrap();
        let db = TestDb::sqlite().await;
        let store = db.open().await;
        let clock = FakeClock(Arc::new(AtomicI64::new(JAN_31)));
        let layer = BillingLayer::new(
            Arc::new(catalog),
            store.clone(),
            store.clone(),
            Arc::new(clock.clone()),
        );
        Self {
            store,
            clock,
            layer,
            _db: db,
        }
    }

    async fn customer(&self, plan: &str) -> Customer {
        self.store
            .create_customer(NewCustomer {
                name: "Acme".into(),
                plan_id: Some(plan.into()),
                ..NewCustomer::default()
            })
            .await
            .unwrap()
    }

    /// One `tools/call` of `echo` by `customer`, as a new logical call.
    async fn call(&self, customer: &Customer) -> Value {
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}});
        let message = Message::parse(body.to_string().into_bytes().into()).unwrap();
        let mut request = McpRequest::new(message);
        request.extensions.insert(Arc::new(Caller {
            customer: customer.clone(),
            credential: CredentialKind::ApiKey(KeyId::new("key_test")),
        }));
        let upstream = service_fn(|request: McpRequest| async move {
            let id = request.message.id().cloned().unwrap();
            let result =
                serde_json::value::to_raw_value(&json!({"content":[{"type":"text","text":"ok"}]}))
                    .unwrap();
            Ok::<_, ProxyError>(McpResponse::new(Message::result_response(&id, &result)))
        });
        let mut service = self.layer.layer(upstream);
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        serde_json::from_slice(response.message.as_bytes()).unwrap()
    }
}

fn reason(response: &Value) -> &str {
    response["error"]["data"]["reason"]
        .as_str()
        .unwrap_or("served")
}

#[tokio::test]
async fn a_freemium_window_rolls_over_at_its_boundary() {
    let h = Harness::new(
        r#"
[[plans]]
id = "free"
model = "freemium"
freemium = { free_calls = 2, window = "hour" }
"#,
    )
    .await;
    let acme = h.customer("free").await;
    h.clock.set(JAN_31 + 59 * 60_000);
    let outcomes: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(reason(&h.call(&acme).await).to_owned());
        }
        v
    };
    assert_eq!(outcomes, ["served", "served", "quota_exceeded"]);
    // The refusal says when the window ends: one minute later.
    h.clock.set(JAN_31 + 59 * 60_000 + 1_000);
    let refused = h.call(&acme).await;
    assert_eq!(
        refused["error"]["data"]["retry_after_ms"], 59_000,
        "{refused}"
    );
    // The last millisecond of the hour is still refused; the next one is a
    // new window.
    h.clock.set(JAN_31 + HOUR - 1);
    assert_eq!(reason(&h.call(&acme).await), "quota_exceeded");
    h.clock.set(JAN_31 + HOUR);
    let served = h.call(&acme).await;
    assert_eq!(
        served["result"]["_meta"][META_KEY]["quota"]["used"], 1,
        "{served}"
    );
}

#[tokio::test]
async fn a_past_due_subscription_is_served_until_its_grace_ends() {
    let h = Harness::new(
        r#"
[[plans]]
id = "team"
model = "subscription"
currency = "usd"
subscription = { included_calls = 100, grace_period_hours = 24 }
"#,
    )
    .await;
    let acme = h.customer("team").await;
    h.store
        .set_subscription(&SubscriptionChange {
            customer_id: acme.id.clone(),
            plan_id: "team".into(),
            status: SubscriptionStatus::PastDue,
            started_at: None,
            current_period: None,
            external_id: None,
            at: UnixMillis(JAN_31),
            provider_event_at: None,
        })
        .await
        .unwrap();
    h.clock.set(JAN_31 + DAY - 1);
    let late = h.call(&acme).await;
    assert_eq!(
        late["result"]["_meta"][META_KEY]["warnings"][0]["grace_ends_at_ms"],
        JAN_31 + DAY,
        "{late}"
    );
    h.clock.set(JAN_31 + DAY);
    let refused = h.call(&acme).await;
    assert_eq!(reason(&refused), "payment_required", "{refused}");
}

#[tokio::test]
async fn subscription_anchored_periods_start_on_the_subscription_day() {
    let h = Harness::new(
        r#"
[[plans]]
id = "team"
model = "subscription"
currency = "usd"
subscription = { included_calls = 1, period = "subscription" }
"#,
    )
    .await;
    let acme = h.customer("team").await;
    h.store
        .set_subscription(&SubscriptionChange {
            customer_id: acme.id.clone(),
            plan_id: "team".into(),
            status: SubscriptionStatus::Active,
            started_at: Some(UnixMillis(JAN_31)),
            current_period: None,
            external_id: None,
            at: UnixMillis(JAN_31),
            provider_event_at: None,
        })
        .await
        .unwrap();
    // February 1st is still in the period that started on January 31st.
    h.clock.set(JAN_31 + DAY);
    assert_eq!(reason(&h.call(&acme).await), "served");
    h.clock.set(JAN_31 + 27 * DAY);
    let refused = h.call(&acme).await;
    assert_eq!(reason(&refused), "quota_exceeded");
    // The next period starts on February 28th (the month is short) at 10:00.
    let feb_28 = JAN_31 + 28 * DAY;
    assert_eq!(
        refused["error"]["data"]["resets_at_ms"], feb_28,
        "{refused}"
    );
    h.clock.set(feb_28 - 1);
    assert_eq!(reason(&h.call(&acme).await), "quota_exceeded");
    h.clock.set(feb_28);
    assert_eq!(reason(&h.call(&acme).await), "served");
    // A period the payment provider reported wins over the anchor.
    h.store
        .set_subscription(&SubscriptionChange {
            customer_id: acme.id.clone(),
            plan_id: "team".into(),
            status: SubscriptionStatus::Active,
            started_at: None,
            current_period: Some((UnixMillis(feb_28 + HOUR), UnixMillis(feb_28 + 2 * DAY))),
            external_id: None,
            at: UnixMillis(feb_28),
            provider_event_at: None,
        })
        .await
        .unwrap();
    h.clock.set(feb_28 + HOUR);
    assert_eq!(reason(&h.call(&acme).await), "served");
}

#[tokio::test]
async fn monthly_grants_reset_or_roll_over_with_a_cap() {
    let h = Harness::new(
        r#"
[[plans]]
id = "rollover"
model = "credits"
prices = { default = 1 }
credits = { grant = 10, grant_mode = "rollover", rollover_cap = 5 }

[[plans]]
id = "reset"
model = "credits"
prices = { default = 1 }
credits = { grant = 10 }
"#,
    )
    .await;
    let carry = h.customer("rollover").await;
    let reset = h.customer("reset").await;
    let balance_after = |r: &Value| r["result"]["_meta"][META_KEY]["balance"].as_i64().unwrap();
    // January: granted 10, one call each.
    assert_eq!(balance_after(&h.call(&carry).await), 9);
    assert_eq!(balance_after(&h.call(&reset).await), 9);
    // February: 5 of the 9 carry over (4 expire), plus 10; or all 9 expire.
    h.clock.set(JAN_31 + DAY);
    assert_eq!(balance_after(&h.call(&carry).await), 5 + 10 - 1);
    assert_eq!(balance_after(&h.call(&reset).await), 10 - 1);
    let entries = h
        .store
        .entries(&LedgerFilter {
            customer: Some(carry.id.clone()),
            limit: 100,
            ..LedgerFilter::default()
        })
        .await
        .unwrap();
    let moves: Vec<(EntryKind, i64)> = entries.iter().map(|e| (e.kind, e.amount)).collect();
    assert_eq!(
        moves,
        [
            (EntryKind::Grant, 10),
            (EntryKind::Reservation, -1),
            (EntryKind::Settlement, 0),
            (EntryKind::Expiry, -4),
            (EntryKind::Grant, 10),
            (EntryKind::Reservation, -1),
            (EntryKind::Settlement, 0),
        ]
    );
    assert_eq!(h.store.balance(&carry.id).await.unwrap(), 14);
}
