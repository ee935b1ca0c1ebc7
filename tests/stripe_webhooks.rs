//! The Stripe webhook endpoint end to end: the real proxy (over its demo
//! upstream) with a `[stripe]` section, deliveries signed by Stripe's own
//! Python library (see `common/stripe_sign.rs`), and the effects read back
//! from the store on SQLite, PostgreSQL and MariaDB.

mod common;
#[path = "common/stripe_sign.rs"]
mod stripe_sign;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::billing::{add_customer, call, client, create_key};
use common::db::TestDb;
use common::{Proxy, bin};
use mcp_meter::store::{Store, WebhookEvent, WebhookFilter, WebhookStatus};
use mcp_meter_plugin::identity::CustomerId;
use mcp_meter_plugin::ledger::{EntryKind, LedgerFilter};
use mcp_meter_plugin::subscription::SubscriptionStatus;
use serde_json::{Value, json};
use stripe_sign::{sign, sign_all};

const SECRET: &str = "whsec_test_current0123456789";
const ROTATED: &str = "whsec_test_rotated9876543210";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A Stripe event around `object`.
fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2025-09-30.clover",
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "type": kind,
        "data": { "object": object },
    })
    .to_string()
}

fn pack_checkout(session: &str, customer: &str, pack: &str) -> Value {
    json!({
        "id": session,
        "object": "checkout.session",
        "mode": "payment",
        "payment_status": "paid",
        "status": "complete",
        "amount_total": 1000,
        "currency": "usd",
        "client_reference_id": customer,
        "customer": "cus_StripeBuyer1",
        "metadata": { "mcp_meter_credit_pack": pack },
    })
}

fn subscription(id: &str, customer: &str, price: &str, status: &str, period_start: i64) -> Value {
    json!({
        "id": id,
        "object": "subscription",
        "customer": format!("cus_Stripe{}", &customer[4..]),
        "status": status,
        "start_date": period_start,
        "metadata": { "mcp_meter_customer_id": customer },
        "items": { "object": "list", "data": [{
            "id": format!("si_{id}"),
            "price": { "id": price, "object": "price" },
            "current_period_start": period_start,
            "current_period_end": period_start + 30 * 86_400,
        }] },
    })
}

const PLANS: &str = r#"
[[plans]]
id = "team"
model = "subscription"
currency = "usd"
subscription = { included_calls = 100, grace_period_hours = 0 }

[[plans]]
id = "pro"
model = "subscription"
currency = "usd"
subscription = { included_calls = 1000 }

[[plans]]
id = "free"
model = "freemium"
freemium = { free_calls = 1 }

[[plans]]
id = "starter"
model = "credits"
prices = { default = 1 }
"#;

/// The proxy's configuration: the demo upstream, `db`, the plans, and
/// `[stripe]` with `secrets` (TOML strings, `${…}` allowed).
fn config(db: &str, secrets: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {db:?}\nmax_connections = 10\n{PLANS}\n\
         [stripe]\nwebhook_secrets = [{secrets}]\nplan_after_cancel = \"free\"\n\
         webhook_max_attempts = 2\n\
         plan_prices = {{ team = \"price_team\", pro = \"price_pro\" }}\n\
         credit_packs = [{{ id = \"pack-100\", credits = 100, price_id = \"price_pack100\" }}]\n",
        bin()
    )
}

/// Starts the proxy with `toml` and `envs`.
fn start(dir: &std::path::Path, toml: &str, envs: &[(&str, &str)]) -> Proxy {
    let path = dir.join("mcp-meter.toml");
    std::fs::write(&path, toml).expect("write config");
    Proxy::start(
        &["serve", "--config", path.to_str().expect("utf-8 path")],
        envs,
    )
}

/// Delivers to `POST /webhooks/stripe` of the proxy at `url` (its MCP URL).
struct Hook {
    http: reqwest::Client,
    url: String,
}

impl Hook {
    fn new(proxy: &Proxy) -> Hook {
        let base = proxy
            .url
            .strip_suffix("/mcp")
            .expect("the MCP URL ends with /mcp");
        Hook {
            http: reqwest::Client::new(),
            url: format!("{base}/webhooks/stripe"),
        }
    }

    async fn deliver(
        &self,
        body: impl Into<reqwest::Body>,
        signature: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json; charset=utf-8")
            .header(
                "user-agent",
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            )
            .body(body);
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        let response = request.send().await.expect("POST /webhooks/stripe");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
        (status, value)
    }

    /// Signs `body` with [`SECRET`] now and delivers it; expects `200`.
    async fn send(&self, body: &str) -> Value {
        let (status, answer) = self
            .deliver(body.to_owned(), Some(&sign(body, SECRET, now())))
            .await;
        assert_eq!(status, 200, "{answer}");
        answer
    }
}

/// Waits until the event is no longer pending (or has failed `attempts`
/// times), then returns it.
async fn settled(store: &Arc<dyn Store>, id: &str) -> WebhookEvent {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let event = store.webhook_event(id).await.expect("read the event");
        if let Some(event) = event
            && event.status != WebhookStatus::Pending
        {
            return event;
        }
        assert!(Instant::now() < deadline, "event {id} is still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn all_events(store: &Arc<dyn Store>) -> Vec<WebhookEvent> {
    store
        .webhook_events(&WebhookFilter {
            limit: 1000,
            ..WebhookFilter::default()
        })
        .await
        .expect("list events")
}

async fn purchases(store: &Arc<dyn Store>, customer: &CustomerId) -> Vec<String> {
    store
        .entries(&LedgerFilter {
            customer: Some(customer.clone()),
            after_id: None,
            limit: 1000,
        })
        .await
        .expect("ledger")
        .into_iter()
        .filter(|e| e.kind == EntryKind::Purchase)
        .map(|e| format!("{}:{}", e.idempotency_key, e.amount))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_against_stripes_own_library() {
    let db = TestDb::sqlite().await;
    let url = db.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let ours = CustomerId::new(add_customer(url, "Buyer", "starter"));
    // The secrets come from the environment (`${…}`), the second one being
    // the new secret of a rotation.
    let proxy = start(
        dir.path(),
        &config(url, "\"${MM_STRIPE_OLD}\", \"${MM_STRIPE_NEW}\""),
        &[("MM_STRIPE_OLD", SECRET), ("MM_STRIPE_NEW", ROTATED)],
    );
    let store = db.open().await;
    let hook = Hook::new(&proxy);

    let t = now();
    let body = event(
        "evt_sig_1",
        "checkout.session.completed",
        t,
        pack_checkout("cs_sig_1", ours.as_str(), "pack-100"),
    );
    let tampered = body.replace("\"amount_total\":1000", "\"amount_total\":1");
    assert_ne!(tampered, body);
    let headers = sign_all(&[
        (&body, SECRET, t),
        (&body, "whsec_someone_elses_secret", t),
        (&body, SECRET, t - 400),
        (&body, SECRET, t + 400),
        (&body, ROTATED, t),
    ]);
    let [valid, wrong_secret, stale, future, rotated] =
        <[String; 5]>::try_from(headers).expect("5");
    let only_v0 = valid.replace("v1=", "v0=");
    let no_timestamp = valid
        .split(',')
        .filter(|item| !item.starts_with("t="))
        .collect::<Vec<_>>()
        .join(",");
    let bad_timestamp = valid.replacen("t=", "t=later", 1);

    for (what, body, header, says) in [
        (
            "tampered body",
            tampered.as_str(),
            Some(valid.as_str()),
            "no v1 signature matches",
        ),
        (
            "wrong secret",
            &body,
            Some(wrong_secret.as_str()),
            "no v1 signature matches",
        ),
        ("stale timestamp", &body, Some(stale.as_str()), "tolerance"),
        (
            "future timestamp",
            &body,
            Some(future.as_str()),
            "tolerance",
        ),
        ("missing header", &body, None, "missing"),
        ("only v0", &body, Some(only_v0.as_str()), "no v1 signature"),
        (
            "no timestamp",
            &body,
            Some(no_timestamp.as_str()),
            "malformed",
        ),
        (
            "bad timestamp",
            &body,
            Some(bad_timestamp.as_str()),
            "malformed",
        ),
        ("garbage header", &body, Some("garbage"), "malformed"),
    ] {
        let (status, answer) = hook.deliver(body.to_owned(), header).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(
            answer["error"]["code"], "invalid_signature",
            "{what}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {message}");
    }
    // Nothing was stored or granted.
    assert!(all_events(&store).await.is_empty());
    assert_eq!(store.balance(&ours).await.expect("balance"), 0);

    // Signed by Stripe's library with the current secret: accepted.
    let (status, answer) = hook.deliver(body.clone(), Some(&valid)).await;
    assert_eq!(
        (status, answer.clone()),
        (200, json!({"received": true, "duplicate": false}))
    );
    assert_eq!(
        settled(&store, "evt_sig_1").await.status,
        WebhookStatus::Processed
    );
    assert_eq!(store.balance(&ours).await.expect("balance"), 100);

    // Rotation: a delivery signed with the second secret only, and one
    // with two v1 signatures of which only the second one matches.
    let second = event(
        "evt_sig_2",
        "customer.created",
        t,
        json!({"id": "cus_X", "object": "customer"}),
    );
    let rotated_second = sign(&second, ROTATED, t);
    let (status, answer) = hook.deliver(second.clone(), Some(&rotated_second)).await;
    assert_eq!(
        (status, &answer["duplicate"]),
        (200, &json!(false)),
        "{answer}"
    );
    let third = event(
        "evt_sig_3",
        "customer.created",
        t,
        json!({"id": "cus_Y", "object": "customer"}),
    );
    let pair = sign_all(&[(&third, "whsec_retired_secret", t), (&third, ROTATED, t)]);
    let v1_of = |header: &str| {
        header
            .split_once(",v1=")
            .map(|(_, v1)| v1.to_owned())
            .expect("v1")
    };
    let two = format!("t={t},v1={},v1={}", v1_of(&pair[0]), v1_of(&pair[1]));
    let (status, answer) = hook.deliver(third.clone(), Some(&two)).await;
    assert_eq!(status, 200, "{answer}");
    // The rotated header of the first body is valid too (same body).
    let (status, answer) = hook.deliver(body.clone(), Some(&rotated)).await;
    assert_eq!(
        (status, &answer["duplicate"]),
        (200, &json!(true)),
        "{answer}"
    );

    // Valid signature, but not a Stripe event: 400 malformed, nothing stored.
    for payload in [
        "not json at all",
        r#"{"object":"event","type":"x","created":1}"#,
    ] {
        let (status, answer) = hook
            .deliver(payload.to_owned(), Some(&sign(payload, SECRET, now())))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "malformed", "{answer}");
    }
    // Too large: 413 before anything else.
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let (status, answer) = hook.deliver(huge, Some(&valid)).await;
    assert_eq!(status, 413, "{answer}");

    let ids: Vec<String> = all_events(&store).await.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["evt_sig_1", "evt_sig_2", "evt_sig_3"]);
    assert_eq!(store.balance(&ours).await.expect("balance"), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stripe_the_endpoint_answers_not_configured() {
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = start(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n",
            bin()
        ),
        &[],
    );
    let hook = Hook::new(&proxy);
    let body = event("evt_1", "customer.created", now(), json!({}));
    let (status, answer) = hook
        .deliver(body.clone(), Some(&sign(&body, SECRET, now())))
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "not_configured", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("[stripe]"),
        "{answer}"
    );
}

/// A checkout for a credit pack replayed 10 times, the same session under
/// another event, and another session delivered 5 times at once: one
/// purchase per session.
async fn credit_packs_are_granted_once(db: TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let ours = CustomerId::new(add_customer(url, "Buyer", "starter"));
    let proxy = start(dir.path(), &config(url, &format!("{SECRET:?}")), &[]);
    let store = db.open().await;
    let hook = Hook::new(&proxy);

    let t = now();
    let body = event(
        "evt_pack_1",
        "checkout.session.completed",
        t,
        pack_checkout("cs_pack_1", ours.as_str(), "pack-100"),
    );
    let header = sign(&body, SECRET, t);
    for n in 0..10 {
        let (status, answer) = hook.deliver(body.clone(), Some(&header)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["duplicate"], json!(n > 0), "delivery {n}: {answer}");
        if n == 0 {
            settled(&store, "evt_pack_1").await;
        }
    }
    // The same session again, under the event of a delayed payment.
    let later = event(
        "evt_pack_1b",
        "checkout.session.async_payment_succeeded",
        t + 1,
        pack_checkout("cs_pack_1", ours.as_str(), "pack-100"),
    );
    hook.send(&later).await;
    assert_eq!(
        settled(&store, "evt_pack_1b").await.status,
        WebhookStatus::Processed
    );

    // Another session, delivered 5 times concurrently.
    let concurrent = event(
        "evt_pack_2",
        "checkout.session.completed",
        t + 2,
        pack_checkout("cs_pack_2", ours.as_str(), "pack-100"),
    );
    let header = sign(&concurrent, SECRET, now());
    let answers = futures_util::future::join_all(
        (0..5).map(|_| hook.deliver(concurrent.clone(), Some(&header))),
    )
    .await;
    let fresh = answers
        .iter()
        .filter(|(status, answer)| {
            assert_eq!(*status, 200, "{answer}");
            answer["duplicate"] == json!(false)
        })
        .count();
    assert_eq!(fresh, 1, "{answers:?}");
    assert_eq!(
        settled(&store, "evt_pack_2").await.status,
        WebhookStatus::Processed
    );

    assert_eq!(store.balance(&ours).await.expect("balance"), 200);
    assert_eq!(
        purchases(&store, &ours).await,
        ["checkout:cs_pack_1:100", "checkout:cs_pack_2:100"]
    );
    // The Stripe customer of the session is now linked to ours.
    let linked = store
        .find_customer_by_stripe_id("cus_StripeBuyer1")
        .await
        .expect("lookup")
        .expect("linked");
    assert_eq!(linked.id, ours);
    assert_eq!(all_events(&store).await.len(), 3);
}

/// `updated` delivered before its `created` (also within one second), then
/// `deleted`, then a late `updated`: the newest event's state wins.
async fn subscription_events_end_in_the_newest_state(db: TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = add_customer(url, "Alice", "free");
    let bob = add_customer(url, "Bob", "free");
    let proxy = start(dir.path(), &config(url, &format!("{SECRET:?}")), &[]);
    let store = db.open().await;
    let hook = Hook::new(&proxy);
    let t0 = now() - 3_600;

    // Alice: created at t0 (incomplete, team), updated at t0 + 5 (active,
    // pro, a new period); delivered newest first.
    let created = event(
        "evt_a_created",
        "customer.subscription.created",
        t0,
        subscription("sub_alice", &alice, "price_team", "incomplete", t0),
    );
    let updated = event(
        "evt_a_updated",
        "customer.subscription.updated",
        t0 + 5,
        subscription("sub_alice", &alice, "price_pro", "active", t0 + 5),
    );
    hook.send(&updated).await;
    settled(&store, "evt_a_updated").await;
    hook.send(&created).await;
    assert_eq!(
        settled(&store, "evt_a_created").await.status,
        WebhookStatus::Processed
    );
    let alice_id = CustomerId::new(alice.clone());
    let sub = store
        .subscription(&alice_id)
        .await
        .expect("read")
        .expect("a subscription");
    assert_eq!(
        (sub.status, sub.plan_id.as_str()),
        (SubscriptionStatus::Active, "pro"),
        "{sub:?}"
    );
    assert_eq!(sub.external_id.as_deref(), Some("sub_alice"));
    assert_eq!(
        sub.current_period_start.map(|at| at.0),
        Some((t0 + 5) * 1000)
    );
    assert_eq!(
        sub.current_period_end.map(|at| at.0),
        Some((t0 + 5 + 30 * 86_400) * 1000)
    );
    assert_eq!(sub.started_at.0, (t0 + 5) * 1000);
    let customer = store
        .find_customer(&alice_id)
        .await
        .expect("read")
        .expect("alice");
    assert_eq!(customer.plan_id.as_deref(), Some("pro"));
    assert_eq!(
        customer.stripe_customer_id.as_deref(),
        Some(format!("cus_Stripe{}", &alice[4..]).as_str())
    );

    // Bob: created and updated in the same second, updated delivered first.
    let bob_created = event(
        "evt_b_created",
        "customer.subscription.created",
        t0,
        subscription("sub_bob", &bob, "price_team", "incomplete", t0),
    );
    let bob_updated = event(
        "evt_b_updated",
        "customer.subscription.updated",
        t0,
        subscription("sub_bob", &bob, "price_team", "active", t0),
    );
    hook.send(&bob_updated).await;
    settled(&store, "evt_b_updated").await;
    hook.send(&bob_created).await;
    settled(&store, "evt_b_created").await;
    let bob_id = CustomerId::new(bob.clone());
    let sub = store
        .subscription(&bob_id)
        .await
        .expect("read")
        .expect("a subscription");
    assert_eq!(
        (sub.status, sub.plan_id.as_str()),
        (SubscriptionStatus::Active, "team"),
        "{sub:?}"
    );

    // Alice's subscription is deleted: canceled, and she is back on the
    // plan for after a cancellation. A late `updated` changes nothing.
    let deleted = event(
        "evt_a_deleted",
        "customer.subscription.deleted",
        t0 + 60,
        subscription("sub_alice", &alice, "price_pro", "canceled", t0 + 5),
    );
    hook.send(&deleted).await;
    assert_eq!(
        settled(&store, "evt_a_deleted").await.status,
        WebhookStatus::Processed
    );
    let late = event(
        "evt_a_late",
        "customer.subscription.updated",
        t0 + 30,
        subscription("sub_alice", &alice, "price_pro", "past_due", t0 + 5),
    );
    hook.send(&late).await;
    assert_eq!(
        settled(&store, "evt_a_late").await.status,
        WebhookStatus::Processed
    );
    let sub = store
        .subscription(&alice_id)
        .await
        .expect("read")
        .expect("a subscription");
    assert_eq!(
        (sub.status, sub.plan_id.as_str()),
        (SubscriptionStatus::Canceled, "pro"),
        "{sub:?}"
    );
    let customer = store
        .find_customer(&alice_id)
        .await
        .expect("read")
        .expect("alice");
    assert_eq!(customer.plan_id.as_deref(), Some("free"));

    // Every event delivered again: nothing changes.
    for body in [&created, &updated, &deleted, &late] {
        let answer = hook.send(body).await;
        assert_eq!(answer["duplicate"], json!(true), "{answer}");
    }
    let again = store
        .subscription(&alice_id)
        .await
        .expect("read")
        .expect("a subscription");
    assert_eq!(again.status, SubscriptionStatus::Canceled);
}

/// A subscription bought through Checkout, then a failed payment: past
/// due, refused at once (a grace of 0 hours); paid again: served.
async fn a_failed_payment_is_refused_after_the_grace(db: TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let ours = add_customer(url, "Payer", "free");
    let key = create_key(url, &ours);
    let proxy = start(dir.path(), &config(url, &format!("{SECRET:?}")), &[]);
    let store = db.open().await;
    let hook = Hook::new(&proxy);
    let t = now();

    let checkout = event(
        "evt_p_checkout",
        "checkout.session.completed",
        t - 100,
        json!({
            "id": "cs_sub_1", "object": "checkout.session", "mode": "subscription",
            "payment_status": "paid", "client_reference_id": ours,
            "customer": "cus_StripePayer", "subscription": "sub_payer",
            "metadata": { "mcp_meter_plan": "team" },
        }),
    );
    hook.send(&checkout).await;
    assert_eq!(
        settled(&store, "evt_p_checkout").await.status,
        WebhookStatus::Processed
    );
    let c = client(&proxy, &key).await;
    let served = c
        .post(&call(json!(1), "echo", json!({"message": "hi"})))
        .await
        .response();
    assert!(served["error"].is_null(), "{served}");

    // The invoice names only Stripe's customer and subscription.
    let invoice = |id: &str, kind: &str, created: i64, start: i64| {
        event(
            id,
            kind,
            created,
            json!({
                "id": format!("in_{id}"), "object": "invoice", "customer": "cus_StripePayer",
                "parent": { "type": "subscription_details",
                            "subscription_details": { "subscription": "sub_payer" } },
                "lines": { "object": "list", "data": [{
                    "id": "il_1", "object": "line_item",
                    "pricing": { "price_details": { "price": "price_team" } },
                    "period": { "start": start, "end": start + 30 * 86_400 },
                }] },
            }),
        )
    };
    hook.send(&invoice(
        "evt_p_failed",
        "invoice.payment_failed",
        t - 50,
        t - 50,
    ))
    .await;
    assert_eq!(
        settled(&store, "evt_p_failed").await.status,
        WebhookStatus::Processed
    );
    let id = CustomerId::new(ours.clone());
    let sub = store
        .subscription(&id)
        .await
        .expect("read")
        .expect("a subscription");
    assert_eq!(sub.status, SubscriptionStatus::PastDue);
    let refused = c
        .post(&call(json!(2), "echo", json!({"message": "hi"})))
        .await
        .response();
    assert_eq!(
        refused["error"]["data"]["reason"], "payment_required",
        "{refused}"
    );

    hook.send(&invoice("evt_p_paid", "invoice.paid", t - 10, t - 10))
        .await;
    assert_eq!(
        settled(&store, "evt_p_paid").await.status,
        WebhookStatus::Processed
    );
    let sub = store
        .subscription(&id)
        .await
        .expect("read")
        .expect("a subscription");
    assert_eq!(
        (sub.status, sub.plan_id.as_str()),
        (SubscriptionStatus::Active, "team")
    );
    assert_eq!(
        sub.current_period_start.map(|at| at.0),
        Some((t - 10) * 1000)
    );
    assert_eq!(sub.past_due_since, None);
    let served = c
        .post(&call(json!(3), "echo", json!({"message": "again"})))
        .await
        .response();
    assert!(served["error"].is_null(), "{served}");
}

/// An unknown type is stored and acknowledged; an event that cannot be
/// applied is retried with backoff and ends `failed`.
async fn unknown_types_are_kept_and_failures_retried(db: TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let ours = CustomerId::new(add_customer(url, "Buyer", "starter"));
    let proxy = start(dir.path(), &config(url, &format!("{SECRET:?}")), &[]);
    let store = db.open().await;
    let hook = Hook::new(&proxy);
    let t = now();

    let unknown = event(
        "evt_unknown",
        "radar.early_fraud_warning.created",
        t,
        json!({"id": "issfr_1"}),
    );
    let answer = hook.send(&unknown).await;
    assert_eq!(answer, json!({"received": true, "duplicate": false}));
    let stored = settled(&store, "evt_unknown").await;
    assert_eq!(
        (stored.status, stored.attempts),
        (WebhookStatus::Processed, 0)
    );
    assert_eq!(stored.payload, unknown);
    assert_eq!(stored.created, t);

    let unknown_pack = event(
        "evt_bad_pack",
        "checkout.session.completed",
        t,
        pack_checkout("cs_bad", ours.as_str(), "pack-999"),
    );
    hook.send(&unknown_pack).await;
    // Two attempts (webhook_max_attempts = 2), one second apart.
    let failed = settled(&store, "evt_bad_pack").await;
    assert_eq!(
        (failed.status, failed.attempts),
        (WebhookStatus::Failed, 2),
        "{failed:?}"
    );
    let error = failed.last_error.unwrap_or_default();
    assert!(
        error.contains("pack-999") && error.contains("credit_packs"),
        "{error}"
    );
    assert_eq!(store.balance(&ours).await.expect("balance"), 0);

    let failed_only = store
        .webhook_events(&WebhookFilter {
            status: Some(WebhookStatus::Failed),
            limit: 10,
            ..WebhookFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(failed_only.len(), 1);
    let after = store
        .webhook_events(&WebhookFilter {
            after_id: Some("evt_bad_pack".into()),
            limit: 10,
            ..WebhookFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        after.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["evt_unknown"]
    );
}

each_backend!(
    credit_packs_are_granted_once,
    subscription_events_end_in_the_newest_state,
    a_failed_payment_is_refused_after_the_grace,
    unknown_types_are_kept_and_failures_retried,
);
